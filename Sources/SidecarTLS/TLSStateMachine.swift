/// The life of one TLS connection, apart from IO: the handler feeds it events and carries out the
/// actions it returns. Pure, so every path (including the odd ones: writes before the handshake,
/// the peer closing mid-handshake, a close during the handshake) is unit-tested without sockets.
public struct TLSStateMachine: Sendable {
    public enum State: Sendable, Equatable { case idle, handshaking, active, closing, closed }
    public private(set) var state: State = .idle

    public init() {}

    public enum StartAction: Equatable { case beginHandshake, none }
    /// The channel is active (or the handler was added to an active channel).
    public mutating func channelActive() -> StartAction {
        guard state == .idle else { return .none }
        state = .handshaking
        return .beginHandshake
    }

    public enum HandshakeAction: Equatable {
        /// Send what OpenSSL produced and wait for the peer.
        case flushAndWait
        /// Done: send pending output, announce it, write what was buffered, read application data
        /// that rode along with the last flight.
        case completed
        /// Failed: send the alert OpenSSL produced, report `error`, close.
        case failed(TLSError)
        /// The handshake result arrived after we already closed; ignore it.
        case ignore
    }
    public mutating func handshakeStep(_ step: SSLConnection.Step) -> HandshakeAction {
        guard state == .handshaking else { return .ignore }
        switch step {
        case .wantIO: return .flushAndWait
        case .complete:
            state = .active
            return .completed
        case .failed(let e):
            state = .closed
            return .failed(e)
        }
    }

    public enum ReadAction: Equatable { case continueHandshake, readApplicationData, discard }
    /// Ciphertext arrived.
    public mutating func ciphertextReceived() -> ReadAction {
        switch state {
        case .handshaking: return .continueHandshake
        case .active, .closing: return .readApplicationData
        case .idle, .closed: return .discard
        }
    }

    public enum WriteAction: Equatable { case buffer, encrypt, fail }
    /// The application wrote plaintext.
    public func write() -> WriteAction {
        switch state {
        case .idle, .handshaking: return .buffer
        case .active: return .encrypt
        case .closing, .closed: return .fail
        }
    }

    public enum CloseAction: Equatable { case sendCloseNotifyThenClose, closeNow, alreadyClosed }
    /// The application asked to close.
    public mutating func closeRequested() -> CloseAction {
        switch state {
        case .active:
            state = .closing
            return .sendCloseNotifyThenClose
        case .idle, .handshaking:
            state = .closed
            return .closeNow
        case .closing, .closed:
            return .alreadyClosed
        }
    }

    public enum InactiveAction: Equatable { case failHandshake, failBufferedWrites, none }
    /// The TCP connection went away.
    public mutating func channelInactive() -> InactiveAction {
        let old = state
        state = .closed
        switch old {
        case .handshaking: return .failHandshake
        case .idle: return .failBufferedWrites
        case .active, .closing, .closed: return .none
        }
    }

    /// The peer sent close_notify.
    public mutating func peerClosed() {
        if state == .active { state = .closing }
    }
}
