import COpenSSL

/// Makes X.509 certificates at run time through OpenSSL: a CA, and leaf certificates it signs for
/// given DNS names or IP addresses, valid (or already expired) as asked. Tests and `make bench` use
/// it so no key material is ever committed.
public struct CertificateIssuer: Sendable {
    /// A certificate and its private key, both as PEM text.
    public struct Issued: Sendable, Hashable {
        public var certificatePEM: String
        public var privateKeyPEM: String
        public var identity: TLSConfiguration.Identity { .pem(certificateChain: certificatePEM, privateKey: privateKeyPEM) }
    }

    /// The CA's own certificate and key.
    public let authority: Issued

    /// A new self-signed CA named `commonName`.
    public init(commonName: String = "llm-sidecar test CA") throws {
        authority = try Self.make(commonName: commonName, names: [], isCA: true, validFor: (-3600, 86_400 * 30), signer: nil)
    }

    /// A leaf certificate for `names` (DNS names and IP literals), signed by this CA.
    /// `validFrom`/`validUntil` are seconds relative to now (negative = in the past).
    public func issue(commonName: String, names: [String], validFrom: Int = -3600, validUntil: Int = 86_400 * 7) throws -> Issued {
        try Self.make(commonName: commonName, names: names, isCA: false, validFor: (validFrom, validUntil), signer: authority)
    }

    private static func make(commonName: String, names: [String], isCA: Bool, validFor: (Int, Int), signer: Issued?) throws -> Issued {
        ERR_clear_error()
        guard let key = sidecar_EVP_EC_gen_P256() else { throw OpenSSLError.drain("generating a P-256 key") }
        defer { EVP_PKEY_free(key) }
        guard let x509 = X509_new() else { throw OpenSSLError.drain("creating a certificate") }
        defer { X509_free(x509) }
        _ = sidecar_X509_set_version3(x509)
        var serial = UInt64.random(in: 1...UInt64(Int64.max))
        let bn = withUnsafeBytes(of: &serial) { BN_bin2bn($0.bindMemory(to: UInt8.self).baseAddress, 8, nil) }
        _ = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x509))
        BN_free(bn)
        X509_gmtime_adj(X509_getm_notBefore(x509), validFor.0)
        X509_gmtime_adj(X509_getm_notAfter(x509), validFor.1)
        X509_set_pubkey(x509, key)

        let subject = X509_get_subject_name(x509)
        _ = X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, commonName, -1, -1, 0)
        _ = X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_ASC, "llm-sidecar", -1, -1, 0)

        var issuerKey: OpaquePointer? = nil
        var issuerCert: OpaquePointer? = nil
        defer {
            if let issuerKey { EVP_PKEY_free(issuerKey) }
            if let issuerCert { X509_free(issuerCert) }
        }
        if let signer {
            issuerCert = try PEM.certificates(signer.certificatePEM, what: "issuer certificate")[0]
            issuerKey = try PEM.privateKey(signer.privateKeyPEM)
            X509_set_issuer_name(x509, X509_get_subject_name(issuerCert))
        } else {
            X509_set_issuer_name(x509, subject)
        }

        var extensions = isCA
            ? [(NID_basic_constraints, "critical,CA:TRUE"), (NID_key_usage, "critical,keyCertSign,cRLSign")]
            : [(NID_basic_constraints, "critical,CA:FALSE"), (NID_key_usage, "critical,digitalSignature"), (NID_ext_key_usage, "serverAuth,clientAuth")]
        if !names.isEmpty {
            let san = names.map { SSLConnection.isIPAddress($0) ? "IP:\($0)" : "DNS:\($0)" }.joined(separator: ",")
            extensions.append((NID_subject_alt_name, san))
        }
        var v3 = X509V3_CTX()
        X509V3_set_ctx(&v3, issuerCert ?? x509, x509, nil, nil, 0)
        for (nid, value) in extensions {
            guard let ext = X509V3_EXT_conf_nid(nil, &v3, nid, value) else { throw OpenSSLError.drain("making extension \(value)") }
            X509_add_ext(x509, ext, -1)
            X509_EXTENSION_free(ext)
        }
        guard X509_sign(x509, issuerKey ?? key, EVP_sha256()) > 0 else { throw OpenSSLError.drain("signing the certificate") }

        return Issued(certificatePEM: try pemText { PEM_write_bio_X509($0, x509) },
                      privateKeyPEM: try pemText { PEM_write_bio_PrivateKey($0, key, nil, nil, 0, nil, nil) })
    }

    private static func pemText(_ write: (OpaquePointer) -> Int32) throws -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { throw OpenSSLError.drain("creating a memory BIO") }
        defer { BIO_free(bio) }
        guard write(bio) == 1 else { throw OpenSSLError.drain("writing PEM") }
        var data: UnsafeMutablePointer<CChar>? = nil
        let len = sidecar_PEM_write_mem_size(bio, &data)
        guard let data, len > 0 else { throw OpenSSLError.drain("reading PEM") }
        return String(decoding: UnsafeRawBufferPointer(start: data, count: Int(len)), as: UTF8.self)
    }
}
