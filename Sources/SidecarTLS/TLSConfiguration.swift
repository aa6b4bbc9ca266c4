/// What one TLS endpoint (a client to one upstream, or a test server) needs. Immutable; one
/// `SSLContext` is built from it and shared by every connection with the same configuration.
public struct TLSConfiguration: Sendable, Hashable {
    public enum Role: Sendable, Hashable { case client, server }

    /// Where trusted CA certificates come from.
    public enum TrustRoots: Sendable, Hashable {
        /// The system store (`/etc/ssl/certs` through OpenSSL's default paths).
        case system
        /// A PEM bundle on disk (`ca_file`).
        case file(String)
        /// PEM text in memory (tests).
        case pem(String)
    }

    /// A certificate chain and its private key, from files or from PEM text.
    public enum Identity: Sendable, Hashable {
        case files(certificateChain: String, privateKey: String)
        case pem(certificateChain: String, privateKey: String)
    }

    public enum Version: Sendable, Hashable { case tls1_1, tls1_2, tls1_3 }

    public var role: Role
    /// Lowest version offered or accepted. TLS 1.2 unless set higher (client); tests may lower the
    /// server's to prove the client refuses.
    public var minimumVersion: Version = .tls1_2
    /// Highest version (nil: the library's highest).
    public var maximumVersion: Version? = nil
    /// For a client: whom to trust (nil disables verification, which only tests may do).
    /// For a server: set to require and verify client certificates (mTLS).
    public var trustRoots: TrustRoots?
    /// For a server: its certificate. For a client: the mTLS client certificate, optional.
    public var identity: Identity?
    /// ALPN protocols offered (client) or accepted (server). We speak HTTP/1.1 only.
    public var alpnProtocols: [String] = ["http/1.1"]

    public static func client(trustRoots: TrustRoots = .system, identity: Identity? = nil, minimumVersion: Version = .tls1_2) -> TLSConfiguration {
        TLSConfiguration(role: .client, minimumVersion: minimumVersion, trustRoots: trustRoots, identity: identity)
    }

    public static func server(identity: Identity, clientTrustRoots: TrustRoots? = nil) -> TLSConfiguration {
        TLSConfiguration(role: .server, trustRoots: clientTrustRoots, identity: identity)
    }
}
