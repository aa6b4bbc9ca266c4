import NIOHTTP1

/// What the sidecar refuses in a request head, before routing it (docs/operations.md, "What is
/// refused"). Every refusal is answered with an OpenAI-shaped error and the connection is closed:
/// a client that sends such a head is broken or probing, and for some of them (framing) where
/// the next request would start cannot be known.
public enum RequestHeadPolicy {
    public enum Verdict: Equatable, Sendable {
        /// Route this head: the client's, with its target's dot segments resolved (`TargetPath`).
        case route(HTTPRequestHead)
        case refuse(ProxyError)
    }

    /// The methods the sidecar forwards under `/v1` (any but CONNECT and TRACE; these are the
    /// ones the OpenAI-compatible APIs use), for the `Allow` header of a 405.
    public static let forwardedMethods = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

    /// - Parameter maxHeaderFields: `server.max_header_fields`.
    public static func check(_ head: HTTPRequestHead, maxHeaderFields: Int) -> Verdict {
        if head.headers.count > maxHeaderFields {
            // Each field costs memory here and again upstream, and no SDK sends more than a few
            // dozen: ten thousand tiny ones (60 KB, under the decoder's byte limit) are an attack.
            return .refuse(.headerFieldsTooLarge("the request has \(head.headers.count) header fields; server.max_header_fields is \(maxHeaderFields)"))
        }
        if head.version == .http1_0, head.headers.contains(name: "transfer-encoding") {
            // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding must be treated as having
            // faulty framing, and the connection closed. An HTTP/1.0 hop before us would have read
            // its body by another rule than ours: the request behind it may be hidden in it.
            return .refuse(.invalidFraming("an HTTP/1.0 request with Transfer-Encoding has untrustworthy framing (RFC 9112 §6.1)"))
        }
        switch head.method {
        case .CONNECT, .TRACE:
            return .refuse(refusal(method: head.method.rawValue, target: head.uri))
        default:
            break
        }
        var head = head
        switch TargetPath.check(head.uri) {
        case .unchanged: break
        case .normalised(let target): head.uri = target
        case .escapes(let resolved): return .refuse(.pathTraversal(head.uri, resolved: resolved))
        }
        return .route(head)
    }

    /// The 405 for CONNECT and TRACE, whatever their target (the framing refuses their
    /// authority-form and `*` targets before a head exists, and answers with this too).
    public static func refusal(method: String, target: String) -> ProxyError {
        if method == "CONNECT" {
            // Whatever follows a CONNECT head would be tunnel bytes, so this connection can
            // serve nothing else.
            return .methodNotAllowed("CONNECT", path: target, allow: forwardedMethods, why: "the sidecar forwards /v1/... requests; it opens no tunnels")
        }
        // TRACE echoes the request back, credentials included (RFC 9110 §9.3.8): never forwarded.
        return .methodNotAllowed(method, path: target, allow: forwardedMethods, why: "it would echo the request, credentials included")
    }
}
