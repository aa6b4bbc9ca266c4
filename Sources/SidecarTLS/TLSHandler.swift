import NIOCore

/// Events the TLS handler sends up the pipeline.
public enum TLSEvent: Sendable, Equatable {
    /// The handshake finished; writes now flow.
    case handshakeCompleted(alpn: String?, resumed: Bool, version: String)
}

/// TLS over a NIO channel through the system OpenSSL, plumbing only: bytes move between the socket
/// and the `SSLConnection`'s memory BIOs; every decision is the `TLSStateMachine`'s.
///
/// The same handler serves both roles: `TLSHandler(client:...)` for upstream connections and
/// `TLSHandler(server:...)` for the tests' fake upstream.
public final class TLSHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let connection: SSLConnection
    private var state = TLSStateMachine()
    private var buffered: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    private var bufferedFlush = false
    private let handshakeTimeout: TimeAmount?
    private var timeoutTask: Scheduled<Void>?
    private var readBuffer: ByteBuffer?
    /// Plaintext written since the last flush: encrypted as one record on flush (one AEAD
    /// operation and one record header per flush, not per write). Reused, so no allocation.
    private var plaintext: ByteBuffer?
    private var plaintextPromise: EventLoopPromise<Void>?

    /// A client connection to `serverName` (SNI and verification; an IP literal is verified as IP).
    public convenience init(client context: SSLContext, serverName: String?, handshakeTimeout: TimeAmount? = nil) throws {
        try self.init(connection: SSLConnection(context: context, serverName: serverName), handshakeTimeout: handshakeTimeout)
    }

    /// A server connection.
    public convenience init(server context: SSLContext, handshakeTimeout: TimeAmount? = nil) throws {
        try self.init(connection: SSLConnection(context: context), handshakeTimeout: handshakeTimeout)
    }

    public init(connection: SSLConnection, handshakeTimeout: TimeAmount?) {
        self.connection = connection
        self.handshakeTimeout = handshakeTimeout
    }

    /// What was negotiated, once the handshake is done.
    public var negotiatedALPN: String? { connection.negotiatedALPN }
    public var sessionReused: Bool { connection.sessionReused }

    // MARK: lifecycle

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard state.channelActive() == .beginHandshake else { return }
        if let handshakeTimeout {
            timeoutTask = context.eventLoop.assumeIsolated().scheduleTask(in: handshakeTimeout) { [self] in
                self.handshakeTimedOut(context: context, after: handshakeTimeout)
            }
        }
        advanceHandshake(context: context)
    }

    private func handshakeTimedOut(context: ChannelHandlerContext, after: TimeAmount) {
        guard state.state == .handshaking else { return }
        let ms = after.nanoseconds / 1_000_000
        let error = TLSError(.handshakeTimeout, "TLS handshake did not finish within \(ms) ms")
        _ = state.handshakeStep(.failed(error))
        failBuffered(error)
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        timeoutTask?.cancel()
        switch state.channelInactive() {
        case .failHandshake:
            let error = TLSError(.closedDuringHandshake, "the peer closed the connection during the TLS handshake")
            failBuffered(error)
            context.fireErrorCaught(error)
        case .failBufferedWrites:
            failBuffered(ChannelError.ioOnClosedChannel)
        case .none:
            failBuffered(ChannelError.ioOnClosedChannel)
        }
        context.fireChannelInactive()
    }

    // MARK: inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let cipher = unwrapInboundIn(data)
        switch state.ciphertextReceived() {
        case .discard:
            return
        case .continueHandshake:
            connection.feed(cipher)
            advanceHandshake(context: context)
        case .readApplicationData:
            connection.feed(cipher)
            readApplicationData(context: context)
        }
    }

    private func advanceHandshake(context: ChannelHandlerContext) {
        let step = connection.handshake()
        switch state.handshakeStep(step) {
        case .ignore:
            return
        case .flushAndWait:
            flushCiphertext(context: context, promise: nil)
        case .completed:
            timeoutTask?.cancel()
            timeoutTask = nil
            connection.handshakeCompleted()
            flushCiphertext(context: context, promise: nil)
            context.fireUserInboundEventTriggered(TLSEvent.handshakeCompleted(
                alpn: connection.negotiatedALPN, resumed: connection.sessionReused, version: connection.protocolVersion))
            let pending = buffered
            buffered.removeAll()
            for (data, promise) in pending { gather(data, context: context, promise: promise) }
            if bufferedFlush || !pending.isEmpty {
                encryptGathered(context: context)
                context.flush()
            }
            bufferedFlush = false
            // Application data can ride along with the handshake's last flight.
            readApplicationData(context: context)
        case .failed(let error):
            timeoutTask?.cancel()
            timeoutTask = nil
            flushCiphertext(context: context, promise: nil)  // the alert, so the peer learns why
            failBuffered(error)
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }

    private func readApplicationData(context: ChannelHandlerContext) {
        while true {
            var buffer = readBuffer.take() ?? context.channel.allocator.buffer(capacity: 16_384)
            let result = connection.readPlaintext(into: &buffer)
            switch result {
            case .data:
                context.fireChannelRead(wrapInboundOut(buffer))
                continue
            case .wantIO:
                buffer.clear()
                readBuffer = buffer
                flushCiphertext(context: context, promise: nil)  // e.g. a key update reply
                return
            case .closed:
                state.peerClosed()
                flushCiphertext(context: context, promise: nil)
                context.close(promise: nil)
                return
            case .failed(let error):
                context.fireErrorCaught(error)
                context.close(promise: nil)
                return
            }
        }
    }

    // MARK: outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let plain = unwrapOutboundIn(data)
        switch state.write() {
        case .buffer: buffered.append((plain, promise))
        case .encrypt: gather(plain, context: context, promise: promise)
        case .fail: promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    private func gather(_ plain: ByteBuffer, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        if plaintext == nil { plaintext = context.channel.allocator.buffer(capacity: max(4096, plain.readableBytes)) }
        plaintext!.writeImmutableBuffer(plain)
        if let promise {
            if let combined = plaintextPromise { combined.futureResult.cascade(to: promise) } else { plaintextPromise = promise }
        }
    }

    /// Encrypts what was gathered since the last flush.
    private func encryptGathered(context: ChannelHandlerContext) {
        guard var buffer = plaintext, buffer.readableBytes > 0 else { return }
        plaintext = nil  // drop our reference while OpenSSL reads it, so clear() below does not copy
        let promise = plaintextPromise
        plaintextPromise = nil
        encrypt(buffer, context: context, promise: promise)
        buffer.clear()
        plaintext = buffer
    }

    private func encrypt(_ plain: ByteBuffer, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        switch connection.write(plain) {
        case .complete, .wantIO:
            if let cipher = connection.drainCiphertext(allocator: context.channel.allocator) {
                context.write(wrapOutboundOut(cipher), promise: promise)
            } else {
                promise?.succeed(())
            }
        case .failed(let error):
            promise?.fail(error)
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }

    public func flush(context: ChannelHandlerContext) {
        if state.write() == .buffer {
            bufferedFlush = true
            return
        }
        encryptGathered(context: context)
        context.flush()
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch state.closeRequested() {
        case .sendCloseNotifyThenClose:
            encryptGathered(context: context)
            connection.shutdown()
            if let cipher = connection.drainCiphertext(allocator: context.channel.allocator) {
                context.writeAndFlush(wrapOutboundOut(cipher), promise: nil)
            }
            context.close(mode: mode, promise: promise)
        case .closeNow, .alreadyClosed:
            failBuffered(ChannelError.ioOnClosedChannel)
            context.close(mode: mode, promise: promise)
        }
    }

    private func flushCiphertext(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        if let cipher = connection.drainCiphertext(allocator: context.channel.allocator) {
            context.writeAndFlush(wrapOutboundOut(cipher), promise: promise)
        } else {
            promise?.succeed(())
        }
    }

    private func failBuffered(_ error: Error) {
        let pending = buffered
        buffered.removeAll()
        for (_, promise) in pending { promise?.fail(error) }
        plaintext?.clear()
        if let p = plaintextPromise {
            plaintextPromise = nil
            p.fail(error)
        }
    }
}

extension Optional {
    fileprivate mutating func take() -> Wrapped? {
        defer { self = nil }
        return self
    }
}
