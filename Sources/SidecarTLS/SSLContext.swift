import COpenSSL
import NIOConcurrencyHelpers

/// One `SSL_CTX`, built once from a `TLSConfiguration` and shared (read-only) by every connection
/// made with it. Also keeps the most recent resumable client session, so reconnects to the same
/// upstream resume instead of doing a full handshake.
public final class SSLContext: Sendable {
    nonisolated(unsafe) let ctx: OpaquePointer
    public let configuration: TLSConfiguration
    /// `SSL_SESSION*` of the last resumable session (client only), retained.
    private let lastSession = NIOLockedValueBox<Session?>(nil)

    /// A retained `SSL_SESSION*`; immutable once made, so it may cross threads.
    private struct Session: @unchecked Sendable { let pointer: OpaquePointer }

    public init(configuration: TLSConfiguration) throws {
        self.configuration = configuration
        let method = configuration.role == .client ? TLS_client_method() : TLS_server_method()
        guard let ctx = SSL_CTX_new(method) else { throw OpenSSLError.drain("creating SSL_CTX") }
        do {
            try Self.configure(ctx, configuration)
        } catch {
            SSL_CTX_free(ctx)
            throw error
        }
        // Assigned last: a throwing init whose properties are all set would also run deinit.
        self.ctx = ctx
    }

    deinit {
        if let s = lastSession.withLockedValue({ $0 }) { SSL_SESSION_free(s.pointer) }
        SSL_CTX_free(ctx)
    }

    private static func versionConstant(_ v: TLSConfiguration.Version) -> Int32 {
        switch v {
        case .tls1_1: return TLS1_1_VERSION
        case .tls1_2: return TLS1_2_VERSION
        case .tls1_3: return TLS1_3_VERSION
        }
    }

    private static func configure(_ ctx: OpaquePointer, _ c: TLSConfiguration) throws {
        ERR_clear_error()
        sidecar_SSL_CTX_set_options(ctx, sidecar_SSL_OP_NO_RENEGOTIATION() | sidecar_SSL_OP_NO_COMPRESSION())
        sidecar_SSL_CTX_set_mode(ctx, sidecar_SSL_MODE_RELEASE_BUFFERS() | sidecar_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER())
        if c.minimumVersion == .tls1_1 {
            // Debian's system policy is SECLEVEL=2 with TLS >= 1.2; a deliberately old test server
            // has to lower both to offer TLS 1.1 at all.
            _ = SSL_CTX_set_cipher_list(ctx, "DEFAULT:@SECLEVEL=0")
        }
        guard sidecar_SSL_CTX_set_min_proto_version(ctx, versionConstant(c.minimumVersion)) == 1 else {
            throw OpenSSLError.drain("setting the minimum TLS version")
        }
        if let max = c.maximumVersion {
            guard sidecar_SSL_CTX_set_max_proto_version(ctx, versionConstant(max)) == 1 else {
                throw OpenSSLError.drain("setting the maximum TLS version")
            }
        }
        switch c.trustRoots {
        case nil:
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
        case .some(let roots):
            try loadTrust(ctx, roots)
            let mode = c.role == .client ? SSL_VERIFY_PEER : (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT)
            SSL_CTX_set_verify(ctx, mode, nil)
        }
        if let identity = c.identity { try loadIdentity(ctx, identity) }
        switch c.role {
        case .client:
            var wire: [UInt8] = []
            for p in c.alpnProtocols { wire.append(UInt8(p.utf8.count)); wire.append(contentsOf: p.utf8) }
            if !wire.isEmpty, SSL_CTX_set_alpn_protos(ctx, wire, UInt32(wire.count)) != 0 {
                throw OpenSSLError.drain("setting ALPN protocols")
            }
            sidecar_SSL_CTX_set_session_cache_mode(ctx, sidecar_SSL_SESS_CACHE_CLIENT() | sidecar_SSL_SESS_CACHE_NO_INTERNAL_STORE())
        case .server:
            sidecar_SSL_CTX_select_alpn_http11(ctx)
            sidecar_SSL_CTX_set_session_cache_mode(ctx, sidecar_SSL_SESS_CACHE_SERVER())
            _ = sidecar_SSL_CTX_set_session_id_context(ctx, "llm-sidecar")
        }
    }

    private static func loadTrust(_ ctx: OpaquePointer, _ roots: TLSConfiguration.TrustRoots) throws {
        switch roots {
        case .system:
            guard SSL_CTX_set_default_verify_paths(ctx) == 1 else { throw OpenSSLError.drain("loading the system trust store") }
        case .file(let path):
            guard SSL_CTX_load_verify_locations(ctx, path, nil) == 1 else { throw OpenSSLError.drain("loading CA file \(path)") }
        case .pem(let text):
            let store = SSL_CTX_get_cert_store(ctx)
            let certs = try PEM.certificates(text, what: "CA certificates")
            defer { certs.forEach { X509_free($0) } }
            for cert in certs where X509_STORE_add_cert(store, cert) != 1 {
                throw OpenSSLError.drain("adding a CA certificate")
            }
        }
    }

    private static func loadIdentity(_ ctx: OpaquePointer, _ identity: TLSConfiguration.Identity) throws {
        switch identity {
        case .files(let chain, let key):
            guard SSL_CTX_use_certificate_chain_file(ctx, chain) == 1 else { throw OpenSSLError.drain("loading certificate chain \(chain)") }
            guard SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1 else { throw OpenSSLError.drain("loading private key \(key)") }
        case .pem(let chain, let key):
            let certs = try PEM.certificates(chain, what: "certificate chain")
            defer { certs.forEach { X509_free($0) } }
            guard SSL_CTX_use_certificate(ctx, certs[0]) == 1 else { throw OpenSSLError.drain("using the certificate") }
            for extra in certs.dropFirst() {
                guard X509_up_ref(extra) == 1, sidecar_SSL_CTX_add0_chain_cert(ctx, extra) == 1 else {
                    throw OpenSSLError.drain("adding a chain certificate")
                }
            }
            let pkey = try PEM.privateKey(key)
            defer { EVP_PKEY_free(pkey) }
            guard SSL_CTX_use_PrivateKey(ctx, pkey) == 1 else { throw OpenSSLError.drain("using the private key") }
        }
        guard SSL_CTX_check_private_key(ctx) == 1 else { throw OpenSSLError.drain("the private key does not match the certificate") }
    }

    // MARK: client session resumption

    /// The session to offer on the next connection, retained for the caller (nil if none).
    func takeSessionForReuse() -> OpaquePointer? {
        lastSession.withLockedValue { s in
            if let s { SSL_SESSION_up_ref(s.pointer) }
            return s?.pointer
        }
    }

    /// Remembers `session` (already retained by the caller) as the one to resume next.
    func storeSession(_ session: OpaquePointer) {
        let old = lastSession.withLockedValue { current -> OpaquePointer? in
            let old = current
            current = Session(pointer: session)
            return old?.pointer
        }
        if let old { SSL_SESSION_free(old) }
    }
}

/// Reading PEM text through memory BIOs.
enum PEM {
    static func certificates(_ text: String, what: String) throws -> [OpaquePointer] {
        guard let bio = text.withCString({ BIO_new_mem_buf($0, Int32(strlen($0))) }) else { throw OpenSSLError.drain("reading \(what)") }
        defer { BIO_free(bio) }
        var out: [OpaquePointer] = []
        while let x = PEM_read_bio_X509(bio, nil, nil, nil) { out.append(x) }
        ERR_clear_error()  // the loop ends on a "no start line" error
        if out.isEmpty { throw OpenSSLError(operation: "reading \(what)", reasons: ["no PEM certificate found"]) }
        return out
    }

    static func privateKey(_ text: String) throws -> OpaquePointer {
        guard let bio = text.withCString({ BIO_new_mem_buf($0, Int32(strlen($0))) }) else { throw OpenSSLError.drain("reading the private key") }
        defer { BIO_free(bio) }
        guard let key = PEM_read_bio_PrivateKey(bio, nil, nil, nil) else { throw OpenSSLError.drain("reading the private key") }
        return key
    }
}
