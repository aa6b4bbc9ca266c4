import NIOHTTP1

/// Which headers cross the proxy, in each direction (RFC 9110 §7.6.1).
///
/// Hop-by-hop headers describe one connection, not the message: `Connection` and every header it
/// names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`. They are never
/// forwarded; framing is re-done by our own encoder on each side.
public enum HeaderPolicy {
    /// True when `name` must not be forwarded, given the tokens of the message's `Connection` header.
    /// Compares ASCII case-insensitively without allocating (this runs for every header).
    public static func isHopByHop(_ name: String, connectionTokens: [Substring]) -> Bool {
        if isAlwaysHopByHop(name) { return true }
        for token in connectionTokens where equalsIgnoringASCIICase(name, token) { return true }
        return false
    }

    static func isAlwaysHopByHop(_ name: String) -> Bool {
        switch name.utf8.count {
        case 2: return equalsIgnoringASCIICase(name, "te")
        case 7: return equalsIgnoringASCIICase(name, "trailer") || equalsIgnoringASCIICase(name, "upgrade")
        case 10: return equalsIgnoringASCIICase(name, "connection") || equalsIgnoringASCIICase(name, "keep-alive")
        case 17: return equalsIgnoringASCIICase(name, "transfer-encoding")
        default: return name.utf8.count > 6 && hasPrefixIgnoringASCIICase(name, "proxy-")
        }
    }

    /// ASCII case-insensitive equality of header names (RFC 9110 §5.1: field names are case-insensitive).
    public static func equalsIgnoringASCIICase<A: StringProtocol, B: StringProtocol>(_ a: A, _ b: B) -> Bool {
        guard a.utf8.count == b.utf8.count else { return false }
        // Native strings are contiguous UTF-8: compare the buffers (no iterator pair per byte).
        if let r = a.utf8.withContiguousStorageIfAvailable({ x in b.utf8.withContiguousStorageIfAvailable { y in equalsIgnoringASCIICase(x, y) } }), let r {
            return r
        }
        return zip(a.utf8, b.utf8).allSatisfy { x, y in sameIgnoringASCIICase(x, y) }
    }

    @inline(__always)
    static func sameIgnoringASCIICase(_ x: UInt8, _ y: UInt8) -> Bool {
        x == y || (x | 0x20 == y | 0x20 && (x | 0x20) >= 0x61 && (x | 0x20) <= 0x7A)
    }

    static func equalsIgnoringASCIICase(_ x: UnsafeBufferPointer<UInt8>, _ y: UnsafeBufferPointer<UInt8>) -> Bool {
        guard x.count == y.count else { return false }
        for i in 0..<x.count where !sameIgnoringASCIICase(x[i], y[i]) { return false }
        return true
    }

    static func hasPrefixIgnoringASCIICase(_ s: String, _ prefix: String) -> Bool {
        var i = s.utf8.makeIterator()
        for p in prefix.utf8 {
            guard let c = i.next(), c == p || (c | 0x20 == p && p >= 0x61 && p <= 0x7A) else { return false }
        }
        return true
    }

    /// The comma-separated tokens of every `Connection` header (empty when there is none).
    /// As `headers[canonicalForm: "connection"]`, trimmed, without the empty ones: one pass, and
    /// no allocation when there is no `Connection` header (most messages).
    public static func connectionTokens(_ headers: HTTPHeaders) -> [Substring] {
        var tokens: [Substring] = []
        for (name, value) in headers where name.utf8.count == 10 && equalsIgnoringASCIICase(name, "connection") {
            for part in value.split(separator: ",") {
                let t = part.trimmingSpaces()
                if !t.isEmpty { tokens.append(t) }
            }
        }
        return tokens
    }

    /// Whether a message keeps its connection open, as NIO's `HTTPHeaders.isKeepAlive(version:)`
    /// decides it (`close` wins, two `keep-alive`s are `close`, else HTTP/1.1 keeps it), without
    /// its canonical-form allocations when there is no `Connection` header.
    public static func isKeepAlive(_ headers: HTTPHeaders, version: HTTPVersion) -> Bool {
        var state: Bool?  // nil: not said; false: close; true: keep-alive
        for word in connectionTokens(headers) {
            if equalsIgnoringASCIICase(word, "close") {
                state = false
            } else if equalsIgnoringASCIICase(word, "keep-alive") {
                state = state == nil
            }
        }
        return state ?? (version.major == 1 && version.minor >= 1)
    }

    /// The headers sent upstream for a client request: hop-by-hop removed, `Host` set to the
    /// upstream's authority, and, when the upstream has its own key (`credential`, in its
    /// dialect's header: `APIDialect.authorization(key:)`), every credential header a client SDK
    /// may send (`APIDialect.credentialHeaders`) replaced by it. An Anthropic upstream gets
    /// `anthropic-version` when the client sent none. Every other header passes as sent
    /// (`anthropic-beta`, `OpenAI-Beta`, `OpenAI-Organization`, ...).
    /// `Content-Length` is kept (the body is forwarded byte for byte); without it the encoder chunks.
    ///
    /// `Accept-Encoding` is always `identity`, whatever the client asked: the sidecar reads every
    /// answer (usage for spend and budgets, the stream's end, the bytes it caches and replays), and
    /// a compressed answer would be unreadable to all of it (an SDK's default `gzip` made answers
    /// cost $0 against a budget, and cached gzip bytes would be replayed without their
    /// `Content-Encoding`). Identity is always acceptable to the client (RFC 9110 §12.5.3).
    public static func upstreamRequestHeaders(
        from client: HTTPHeaders, host: String, credential: (name: String, value: String)?, dialect: APIDialect = .openai
    ) -> HTTPHeaders {
        let tokens = connectionTokens(client)
        // Built in one go (names from an `HTTPHeaders` or ours: already checked by NIO).
        var out: [(String, String)] = []
        out.reserveCapacity(client.count + 3)
        out.append(("host", host))
        var versioned = false
        for (name, value) in client {
            if equalsIgnoringASCIICase(name, "host") { continue }
            // The sidecar answers `Expect: 100-continue` itself (the body is already on its way
            // by the time the upstream could answer), so it is not forwarded.
            if equalsIgnoringASCIICase(name, "expect") { continue }
            if equalsIgnoringASCIICase(name, "accept-encoding") { continue }
            if credential != nil, CacheScope.isCredentialHeader(name) { continue }
            if isHopByHop(name, connectionTokens: tokens) { continue }
            if equalsIgnoringASCIICase(name, "anthropic-version") { versioned = true }
            out.append((name, value))
        }
        if let credential { out.append((credential.name, credential.value)) }
        if dialect == .anthropic, !versioned { out.append(("anthropic-version", APIDialect.defaultAnthropicVersion)) }
        out.append(("accept-encoding", "identity"))
        return HTTPHeaders(out)
    }

    /// Whether an answer's body is in a content coding the sidecar cannot read (anything but none
    /// or `identity`): such an answer is forwarded as it is, never cached, and its usage unknown.
    public static func isEncoded(_ headers: HTTPHeaders) -> Bool {
        headers[canonicalForm: "content-encoding"].contains { !equalsIgnoringASCIICase($0, "identity") }
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
    /// Without the spaces and tabs at either end (as NIO's canonical form trims; by bytes, so a
    /// combining mark after a space is kept).
    func trimmingSpaces() -> Substring {
        let u = Substring(self).utf8
        func ws(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 }
        var start = u.startIndex, end = u.endIndex
        while start < end, ws(u[start]) { u.formIndex(after: &start) }
        while end > start, ws(u[u.index(before: end)]) { u.formIndex(before: &end) }
        return Substring(u[start..<end])
    }
}
