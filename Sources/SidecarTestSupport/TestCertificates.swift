import Foundation
import SidecarTLS

/// Certificates made at test time, and the files a configuration needs to point at.
public struct TestPKI: Sendable {
    public let ca: CertificateIssuer
    /// A directory under the system temp dir, removed by `cleanUp()`.
    public let directory: String

    public init() throws {
        ca = try CertificateIssuer(commonName: "llm-sidecar test CA \(UInt32.random(in: 0...UInt32.max))")
        directory = NSTemporaryDirectory() + "llm-sidecar-test-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    /// Writes `text` to a file in the test directory and returns its path.
    public func write(_ name: String, _ text: String) throws -> String {
        let path = directory + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// The CA certificate as a file, for `ca_file`.
    public func caFile() throws -> String { try write("ca.pem", ca.authority.certificatePEM) }

    /// A server TLS configuration for `names`, signed by this CA.
    public func serverTLS(names: [String] = ["localhost", "127.0.0.1"], validFrom: Int = -3600, validUntil: Int = 86_400,
                          maximumVersion: TLSConfiguration.Version? = nil, requireClientCertificates: Bool = false) throws -> TLSConfiguration {
        let leaf = try ca.issue(commonName: names.first ?? "localhost", names: names, validFrom: validFrom, validUntil: validUntil)
        var config = TLSConfiguration.server(identity: leaf.identity, clientTrustRoots: requireClientCertificates ? .pem(ca.authority.certificatePEM) : nil)
        if let maximumVersion {
            config.maximumVersion = maximumVersion
            if maximumVersion == .tls1_1 { config.minimumVersion = .tls1_1 }
        }
        return config
    }

    public func cleanUp() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}
