import COpenSSL
import NIOCore

/// One `SSL*` over a pair of memory BIOs: ciphertext goes in with `feed`, comes out with
/// `drainCiphertext`; plaintext goes through `write` / `readPlaintext`. Every OpenSSL return code is
/// translated here, once, into `complete` / `wantIO` / `failed`.
///
/// Not thread-safe: owned by one channel handler on one event loop.
public final class SSLConnection {
    public enum Step: Equatable {
        case complete
        /// OpenSSL needs more ciphertext from the peer (or has output to send first).
        case wantIO
        case failed(TLSError)
    }

    public enum ReadResult: Equatable {
        /// Bytes of plaintext appended.
        case data(Int)
        /// Nothing more until the peer sends more ciphertext.
        case wantIO
        /// The peer sent close_notify.
        case closed
        case failed(TLSError)
    }

    let context: SSLContext
    private let ssl: OpaquePointer
    private let rbio: OpaquePointer
    private let wbio: OpaquePointer
    private var sessionStored = false

    /// - Parameters:
    ///   - serverName: (client) the name to send in SNI and to verify; an IP literal is verified
    ///     as an IP address and sends no SNI (RFC 6066 §3 forbids literal addresses there).
    public init(context: SSLContext, serverName: String? = nil) throws {
        self.context = context
        ERR_clear_error()
        guard let ssl = SSL_new(context.ctx) else { throw OpenSSLError.drain("creating SSL") }
        guard let rbio = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw OpenSSLError.drain("creating memory BIOs")
        }
        guard let wbio = BIO_new(BIO_s_mem()) else {
            BIO_free(rbio)
            SSL_free(ssl)
            throw OpenSSLError.drain("creating memory BIOs")
        }
        // An empty read BIO means "no data yet" (retry), not end of file.
        _ = sidecar_BIO_set_mem_eof_return(rbio, -1)
        _ = sidecar_BIO_set_mem_eof_return(wbio, -1)
        SSL_set_bio(ssl, rbio, wbio)  // ssl now owns both
        self.ssl = ssl
        self.rbio = rbio
        self.wbio = wbio

        if context.configuration.role == .client {
            SSL_set_connect_state(ssl)
            if let name = serverName {
                if Self.isIPAddress(name) {
                    guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1 else {
                        throw OpenSSLError.drain("setting the IP address to verify")
                    }
                } else {
                    guard sidecar_SSL_set_tlsext_host_name(ssl, name) == 1, SSL_set1_host(ssl, name) == 1 else {
                        throw OpenSSLError.drain("setting the server name")
                    }
                }
            }
            if let session = context.takeSessionForReuse() {
                _ = SSL_set_session(ssl, session)
                SSL_SESSION_free(session)
            }
        } else {
            SSL_set_accept_state(ssl)
        }
    }

    deinit { SSL_free(ssl) }

    static func isIPAddress(_ s: String) -> Bool {
        if s.contains(":") { return true }
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
    }

    // MARK: ciphertext in and out

    /// Hands ciphertext received from the network to OpenSSL.
    public func feed(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = BIO_write(rbio, bytes.baseAddress! + offset, Int32(bytes.count - offset))
                if n <= 0 { break }
                offset += Int(n)
            }
        }
    }

    /// Bytes OpenSSL has produced for the network.
    public var pendingCiphertext: Int { Int(sidecar_BIO_pending(wbio)) }

    /// Takes everything OpenSSL has produced for the network (nil if nothing).
    public func drainCiphertext(allocator: ByteBufferAllocator) -> ByteBuffer? {
        let pending = pendingCiphertext
        guard pending > 0 else { return nil }
        var out = allocator.buffer(capacity: pending)
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: pending) { ptr in
            let n = BIO_read(wbio, ptr.baseAddress!, Int32(pending))
            return n > 0 ? Int(n) : 0
        }
        return out
    }

    // MARK: handshake, data, shutdown

    public func handshake() -> Step {
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 { return .complete }
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return .wantIO
        default: return .failed(handshakeFailure())
        }
    }

    /// What went wrong in a failed handshake, e.g. "certificate verify failed (hostname mismatch)".
    private func handshakeFailure() -> TLSError {
        var reasons = OpenSSLError.drainReasons()
        let verify = SSL_get_verify_result(ssl)
        if verify != X509_V_OK, let s = X509_verify_cert_error_string(verify) {
            // The verification result says it all; the queue's other entries are its echoes.
            return TLSError(.handshakeFailed, "certificate verify failed (\(String(cString: s)))")
        }
        if reasons.isEmpty { reasons = ["the peer closed the connection or sent no TLS"] }
        return TLSError(.handshakeFailed, reasons.joined(separator: "; "))
    }

    /// Decrypts as much as is available into `buffer` (growing it up to `limit` bytes).
    public func readPlaintext(into buffer: inout ByteBuffer, limit: Int = 16_384) -> ReadResult {
        ERR_clear_error()
        var total = 0
        while total < limit {
            var rc: Int32 = 0
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 4096) { ptr in
                rc = SSL_read(ssl, ptr.baseAddress!, Int32(min(ptr.count, limit - total)))
                return rc > 0 ? Int(rc) : 0
            }
            if rc > 0 { total += Int(rc); continue }
            let err = SSL_get_error(ssl, rc)
            rememberSessionIfResumable()
            if total > 0 { return .data(total) }
            switch err {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return .wantIO
            case SSL_ERROR_ZERO_RETURN: return .closed
            default:
                let reasons = OpenSSLError.drainReasons()
                return .failed(TLSError(.ioFailed, reasons.isEmpty ? "TLS read failed" : reasons.joined(separator: "; ")))
            }
        }
        return .data(total)
    }

    /// Encrypts all of `buffer` (OpenSSL writes whole records into the memory BIO, which never blocks).
    public func write(_ buffer: ByteBuffer) -> Step {
        ERR_clear_error()
        var failed: TLSError?
        buffer.withUnsafeReadableBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = SSL_write(ssl, bytes.baseAddress! + offset, Int32(bytes.count - offset))
                if n <= 0 {
                    let reasons = OpenSSLError.drainReasons()
                    failed = TLSError(.ioFailed, reasons.isEmpty ? "TLS write failed" : reasons.joined(separator: "; "))
                    return
                }
                offset += Int(n)
            }
        }
        return failed.map { .failed($0) } ?? .complete
    }

    /// Queues close_notify (unidirectional shutdown: we do not wait for the peer's, RFC 8446 §6.1).
    public func shutdown() {
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }

    // MARK: what was negotiated

    public var negotiatedALPN: String? {
        var data: UnsafePointer<UInt8>?
        var len: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &len)
        guard let data, len > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(len)), as: UTF8.self)
    }

    /// True when this connection resumed an earlier session (no full handshake).
    public var sessionReused: Bool { SSL_session_reused(ssl) == 1 }

    /// "TLSv1.3", "TLSv1.2".
    public var protocolVersion: String { String(cString: SSL_get_version(ssl)) }

    /// Client: once the server's session ticket has arrived (TLS 1.3 sends it after the handshake),
    /// keep the session for the next connection's resumption.
    private func rememberSessionIfResumable() {
        guard !sessionStored, context.configuration.role == .client, SSL_is_init_finished(ssl) == 1,
              let s = SSL_get_session(ssl), SSL_SESSION_is_resumable(s) == 1 else { return }
        sessionStored = true
        SSL_SESSION_up_ref(s)
        context.storeSession(s)
    }

    /// Called after the handshake too: with TLS 1.2 the session is resumable right away.
    func handshakeCompleted() { rememberSessionIfResumable() }
}
