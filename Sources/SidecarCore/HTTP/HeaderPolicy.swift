import NIOHTTP1

/// Which headers cross the proxy, in each direction (RFC 9110 §7.6.1).
///
/// Hop-by-hop headers describe one connection, not the message: `Connection` and every header it
/// names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`. They are never
/// forwarded; framing is re-done by our own encoder on each side.
public enum HeaderPolicy {
    /// Lower-cased names that are always hop-by-hop.
    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
        "proxy-connection", "proxy-authenticate", "proxy-authorization",
    ]

    /// True when `name` must not be forwarded, given the tokens of the message's `Connection` header.
    public static func isHopByHop(_ name: String, connectionTokens: [Substring]) -> Bool {
        let lower = name.lowercased()
        if hopByHop.contains(lower) || lower.hasPrefix("proxy-") { return true }
        for token in connectionTokens where token.lowercased() == lower { return true }
        return false
    }

    /// The comma-separated tokens of every `Connection` header (empty when there is none).
    public static func connectionTokens(_ headers: HTTPHeaders) -> [Substring] {
        var tokens: [Substring] = []
        for value in headers[canonicalForm: "connection"] {
            let t = value.trimmingSpaces()
            if !t.isEmpty { tokens.append(t) }
        }
        return tokens
    }

    /// The headers sent upstream for a client request: hop-by-hop removed, `Host` set to the
    /// upstream's authority, `Authorization` replaced when the upstream has its own key.
    /// `Content-Length` is kept (the body is forwarded byte for byte); without it the encoder chunks.
    public static func upstreamRequestHeaders(
        from client: HTTPHeaders, host: String, authorization: String?
    ) -> HTTPHeaders {
        let tokens = connectionTokens(client)
        var out = HTTPHeaders()
        out.reserveCapacity(client.count + 1)
        out.add(name: "host", value: host)
        for (name, value) in client {
            if name.utf8.count == 4, name.lowercased() == "host" { continue }
            if authorization != nil, name.lowercased() == "authorization" { continue }
            if isHopByHop(name, connectionTokens: tokens) { continue }
            out.add(name: name, value: value)
        }
        if let authorization { out.add(name: "authorization", value: authorization) }
        return out
    }

    /// The headers sent to the client for an upstream response: hop-by-hop removed.
    public static func downstreamResponseHeaders(from upstream: HTTPHeaders) -> HTTPHeaders {
        let tokens = connectionTokens(upstream)
        var out = HTTPHeaders()
        out.reserveCapacity(upstream.count + 2)
        for (name, value) in upstream where !isHopByHop(name, connectionTokens: tokens) {
            out.add(name: name, value: value)
        }
        return out
    }

    /// The `timeout=` of an upstream's `Keep-Alive` header, in seconds (RFC 2068 §19.7.1.1).
    public static func keepAliveTimeoutSeconds(_ headers: HTTPHeaders) -> Int? {
        for value in headers["keep-alive"] {
            for part in value.split(separator: ",") {
                let kv = part.split(separator: "=", maxSplits: 1)
                if kv.count == 2, kv[0].trimmingSpaces().lowercased() == "timeout",
                   let n = Int(kv[1].trimmingSpaces()), n >= 0 {
                    return n
                }
            }
        }
        return nil
    }
}

extension StringProtocol {
    func trimmingSpaces() -> Substring {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return s
    }
}
