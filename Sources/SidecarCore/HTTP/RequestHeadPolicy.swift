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

    public static func check(_ head: HTTPRequestHead) -> Verdict {
        var head = head
        switch TargetPath.check(head.uri) {
        case .unchanged: break
        case .normalised(let target): head.uri = target
        case .escapes(let resolved): return .refuse(.pathTraversal(head.uri, resolved: resolved))
        }
        return .route(head)
    }
}
