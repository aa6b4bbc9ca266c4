import COpenSSL

/// An OpenSSL failure, with OpenSSL's error queue drained into one readable sentence.
///
/// The queue is per thread and sticky: every failed call drains it at once, so a later error never
/// carries an earlier one's reasons.
public struct OpenSSLError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What we were doing, e.g. "loading ca_file /etc/x.pem".
    public var operation: String
    /// OpenSSL's reasons, most specific last, e.g. ["certificate verify failed"].
    public var reasons: [String]

    public init(operation: String, reasons: [String]) {
        self.operation = operation
        self.reasons = reasons
    }

    /// Drains the thread's error queue.
    public static func drain(_ operation: String) -> OpenSSLError {
        OpenSSLError(operation: operation, reasons: drainReasons())
    }

    static func drainReasons() -> [String] {
        var reasons: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            if let r = ERR_reason_error_string(code) {
                let text = String(cString: r)
                if reasons.last != text { reasons.append(text) }
            } else {
                reasons.append("OpenSSL error \(sidecar_ERR_GET_LIB(code)):\(sidecar_ERR_GET_REASON(code))")
            }
        }
        return reasons
    }

    public var description: String {
        reasons.isEmpty ? operation : "\(operation): \(reasons.joined(separator: "; "))"
    }
}

/// Why a TLS connection failed, in words an operator can act on.
public struct TLSError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable { case handshakeFailed, handshakeTimeout, closedDuringHandshake, ioFailed, uncleanShutdown }
    public var kind: Kind
    /// e.g. "certificate verify failed (hostname mismatch)" or "unsupported protocol".
    public var reason: String

    public init(_ kind: Kind, _ reason: String) {
        self.kind = kind
        self.reason = reason
    }

    public var description: String { reason }
}
