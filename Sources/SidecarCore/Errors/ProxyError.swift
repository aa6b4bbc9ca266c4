/// Every failure the sidecar itself produces, with where it came from, whether it may be retried,
/// and ONE mapping to an HTTP status and an OpenAI-shaped JSON body (`{"error":{"message","type","code"}}`).
///
/// A struct with a private code rather than a public enum, so new kinds never break callers
/// (the lesson of AsyncHTTPClient's `HTTPClientError`).
public struct ProxyError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Who caused the failure: the downstream client, the upstream provider, or the sidecar.
    public enum Source: String, Sendable { case client, upstream, `internal` }

    /// Which timeout fired; named in the message so an operator knows which knob to turn.
    public enum Timeout: String, Sendable {
        case connect = "connect"
        case tlsHandshake = "TLS handshake"
        case firstByte = "first byte"
        case readIdle = "read idle"
        case poolQueue = "connection pool queue"
    }

    private enum Code: Hashable, Sendable {
        case badRequest, payloadTooLarge, notFound, forbidden, pathTraversal, invalidFraming, headerFieldsTooLarge
        case notImplemented, httpVersionNotSupported
        case methodNotAllowed(allow: String)
        case upstreamConnect, upstreamTLS, upstreamClosed, upstreamProtocol, upstreamTimeout(Timeout)
        case poolExhausted, shuttingDown, internalError
        case modelNotFound, deploymentsBusy, rateLimited, budgetExceeded, modelNotPriced, budgetUnavailable, fleetUnavailable
    }

    private let code: Code
    /// The human-readable cause. Never contains keys or bodies.
    public let message: String

    private init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    // MARK: client errors
    public static func badRequest(_ why: String) -> ProxyError { .init(.badRequest, why) }
    public static func payloadTooLarge(limit: Int) -> ProxyError {
        .init(.payloadTooLarge, "request body exceeds server.max_body_bytes (\(limit) bytes)")
    }
    public static func notFound(path: String) -> ProxyError {
        .init(.notFound, "no route for \(path.prefix(200)): the sidecar forwards /v1/..., /v1beta/... and /openai/... and serves /healthz")
    }
    /// A request in a dialect no configured upstream speaks (and no `[[models]]` group serves).
    public static func noUpstream(for dialect: APIDialect, path: String) -> ProxyError {
        .init(.notFound, "no upstream speaks the \(dialect.displayName) API that \(path.prefix(200)) belongs to: add an [upstreams.NAME] with api = \"\(dialect.rawValue)\"")
    }
    /// A request whose model names a `[[models]]` group of another dialect: its body would be
    /// sent in a format the group's deployments do not read.
    public static func dialectMismatch(model: String, group: APIDialect, request: APIDialect) -> ProxyError {
        .init(.badRequest, "model \"\(model.prefix(200))\" is served by \(group.displayName) deployments (api = \"\(group.rawValue)\"), but this is a \(request.displayName) API request")
    }
    public static func forbidden(_ why: String) -> ProxyError { .init(.forbidden, why) }
    /// A request head with more header fields than `server.max_header_fields`, or more bytes of
    /// them than the HTTP decoder takes.
    public static func headerFieldsTooLarge(_ why: String) -> ProxyError { .init(.headerFieldsTooLarge, why) }
    /// A request whose body framing cannot be trusted: where it ends, and so where the next
    /// request starts, is ambiguous (request smuggling).
    public static func invalidFraming(_ why: String) -> ProxyError { .init(.invalidFraming, why) }
    /// A request in a transfer coding the sidecar does not decode (RFC 9112 §6.1: 501).
    public static func notImplemented(_ why: String) -> ProxyError { .init(.notImplemented, why) }
    /// A well-formed HTTP version other than 1.0 and 1.1 (RFC 9110 §15.6.6: 505).
    public static func httpVersionNotSupported(_ why: String) -> ProxyError { .init(.httpVersionNotSupported, why) }
    /// A request target whose dot segments lead outside `/v1` (`TargetPath`).
    public static func pathTraversal(_ target: String, resolved: String) -> ProxyError {
        .init(.pathTraversal, "the request target \(target.prefix(200)) resolves to \(resolved.prefix(200)) once its dot segments are removed (RFC 3986 §5.2.4): the sidecar forwards only /v1/...")
    }
    /// `allow`: the methods the target does take, for the `Allow` header a 405 must carry (RFC 9110 §15.5.6).
    public static func methodNotAllowed(_ method: String, path: String, allow: String, why: String? = nil) -> ProxyError {
        .init(.methodNotAllowed(allow: allow), "method \(method.prefix(40)) is not allowed on \(path.prefix(200))" + (why.map { ": " + $0 } ?? ""))
    }

    // MARK: upstream errors
    public static func upstreamConnect(_ why: String) -> ProxyError {
        .init(.upstreamConnect, "upstream connect failed: \(why)")
    }
    public static func upstreamTLS(_ why: String) -> ProxyError {
        .init(.upstreamTLS, "upstream TLS handshake failed: \(why)")
    }
    public static func upstreamClosed(_ why: String) -> ProxyError { .init(.upstreamClosed, why) }
    public static func upstreamProtocol(_ why: String) -> ProxyError {
        .init(.upstreamProtocol, "upstream sent an invalid HTTP response: \(why)")
    }
    public static func upstreamTimeout(_ which: Timeout, after: String) -> ProxyError {
        .init(.upstreamTimeout(which), "upstream \(which.rawValue) timeout fired after \(after)")
    }

    // MARK: internal errors
    public static func poolExhausted(_ why: String) -> ProxyError { .init(.poolExhausted, why) }
    public static let shuttingDown = ProxyError(.shuttingDown, "the sidecar is shutting down")
    public static func internalError(_ why: String) -> ProxyError { .init(.internalError, why) }
    /// A model that no `[[models]]` group names, with no default upstream to send it to.
    public static func modelNotFound(_ model: String?) -> ProxyError {
        guard let model else {
            return .init(.modelNotFound, "the request names no model, and there is no server.default_upstream to send it to")
        }
        return .init(.modelNotFound, "The model `\(model.prefix(200))` does not exist: no [[models]] group is named so, and there is no server.default_upstream")
    }
    /// A request for a model without a price while a budget is set (`budgets.unpriced = "reject"`):
    /// it cannot be reserved against the budget, so it is not sent.
    public static func modelNotPriced(_ model: String) -> ProxyError {
        let m = model.prefix(200)
        return .init(.modelNotPriced, "The model `\(m)` has no price and a budget is set ([budgets]), so its cost cannot be reserved; it was not sent. Add [prices.\"\(m)\"] with input_per_mtok and output_per_mtok, or set budgets.unpriced = \"allow\"")
    }
    /// Spend could not be restored at start, so no budget can be checked: nothing is sent.
    public static func budgetUnavailable(_ why: String) -> ProxyError { .init(.budgetUnavailable, why) }
    /// The fleet database cannot be reached and this node holds no lease that covers the request
    /// (or `fleet.on_unavailable = "reject"`): a fleet budget or limit cannot be checked.
    public static func fleetUnavailable(_ why: String) -> ProxyError {
        .init(.fleetUnavailable, "The fleet database is unavailable (\(why)), so the fleet's budgets and rate limits cannot be checked; the request was not sent")
    }
    /// A request that would overshoot a `[budgets]` cap.
    public static func budgetExceeded(_ refusal: BudgetLedger.Refusal) -> ProxyError {
        let which: String
        switch refusal {
        case .daily(let l): which = "the daily budget ($\(l))"
        case .monthly(let l): which = "the monthly budget ($\(l))"
        case .clientDaily(let l): which = "this client's daily budget ($\(l))"
        case .fleetSlice(let scope, _):
            let name = scope.scope == "day" ? "daily" : scope.scope == "month" ? "monthly" : "this client's daily"
            return .init(.budgetExceeded, "This request would exceed the \(name) budget shared by the fleet ([budgets] with [fleet]: every node's spend counts); it was not sent")
        }
        return .init(.budgetExceeded, "This request would exceed \(which) set on the sidecar ([budgets]); it was not sent")
    }
    /// The client's credential is over `limits.client_rpm`; worded like OpenAI's own.
    public static func rateLimited(limit: Int, retryAfter: String) -> ProxyError {
        .init(.rateLimited, "Rate limit reached for requests per minute (RPM) on this sidecar: Limit \(limit). Please try again in \(retryAfter).")
    }
    /// Every deployment of a group (and of its fallbacks) is at `max_concurrency` or ejected.
    public static func deploymentsBusy(_ group: String) -> ProxyError {
        .init(.deploymentsBusy, "every deployment of model group \(group) (and of its fallbacks) is at max_concurrency or ejected; retry shortly")
    }

    // MARK: the one mapping

    public var source: Source {
        switch code {
        case .badRequest, .payloadTooLarge, .notFound, .methodNotAllowed, .forbidden, .pathTraversal, .invalidFraming,
             .headerFieldsTooLarge, .notImplemented, .httpVersionNotSupported: return .client
        case .upstreamConnect, .upstreamTLS, .upstreamClosed, .upstreamProtocol: return .upstream
        case .upstreamTimeout(let t): return t == .poolQueue ? .internal : .upstream
        case .poolExhausted, .shuttingDown, .internalError, .budgetUnavailable, .fleetUnavailable: return .internal
        case .modelNotFound, .modelNotPriced: return .client
        case .rateLimited, .budgetExceeded: return .client
        case .deploymentsBusy: return .internal
        }
    }

    /// When a request that failed this way may be sent again: a property of the failure, so
    /// that one policy (`RetryPolicy`) decides every retry.
    public enum Retry: Sendable, Equatable {
        /// Never: the client caused it, or the provider may already have the request (first-byte
        /// and read timeouts, an invalid response: a POST that reached it may be billed).
        case never
        /// The provider never saw the request (connect, TLS, the pool's queue full or timed out,
        /// a pool being retired): any deployment.
        case beforeSending
        /// The connection closed before any response byte: on a reused keep-alive connection
        /// it is the known close race (one replay on a fresh connection is safe); otherwise the
        /// deployment is failing and another may be tried.
        case connectionClosed
    }

    public var retry: Retry {
        switch code {
        case .upstreamConnect, .upstreamTLS, .poolExhausted, .shuttingDown: return .beforeSending
        case .upstreamTimeout(let t): return t == .connect || t == .tlsHandshake || t == .poolQueue ? .beforeSending : .never
        case .upstreamClosed: return .connectionClosed
        default: return .never
        }
    }

    /// The HTTP status the client receives.
    public var status: Int {
        switch code {
        case .badRequest, .pathTraversal, .invalidFraming: return 400
        case .forbidden: return 403
        case .notFound: return 404
        case .methodNotAllowed: return 405
        case .payloadTooLarge: return 413
        case .headerFieldsTooLarge: return 431
        case .notImplemented: return 501
        case .httpVersionNotSupported: return 505
        case .upstreamConnect, .upstreamTLS, .upstreamClosed, .upstreamProtocol: return 502
        case .upstreamTimeout(let t): return t == .poolQueue ? 503 : 504
        case .poolExhausted, .shuttingDown, .budgetUnavailable, .fleetUnavailable: return 503
        case .internalError: return 500
        case .modelNotFound: return 404
        case .modelNotPriced: return 400
        case .deploymentsBusy, .rateLimited, .budgetExceeded: return 429
        }
    }

    /// OpenAI's `error.type`.
    public var type: String {
        if case .rateLimited = code { return "requests" }  // what OpenAI's own RPM errors say
        if case .budgetExceeded = code { return "insufficient_quota" }  // what OpenAI says when the money is gone
        switch source {
        case .client: return "invalid_request_error"
        case .upstream: return "upstream_error"
        case .internal: return "server_error"
        }
    }

    /// OpenAI's `error.code`: stable, machine-readable.
    public var codeString: String {
        switch code {
        case .badRequest: return "bad_request"
        case .pathTraversal: return "path_traversal"
        case .invalidFraming: return "invalid_framing"
        case .headerFieldsTooLarge: return "request_header_fields_too_large"
        case .notImplemented: return "transfer_coding_not_implemented"
        case .httpVersionNotSupported: return "http_version_not_supported"
        case .payloadTooLarge: return "request_too_large"
        case .forbidden: return "forbidden"
        case .notFound: return "not_found"
        case .methodNotAllowed: return "method_not_allowed"
        case .upstreamConnect: return "upstream_connect_failed"
        case .upstreamTLS: return "upstream_tls_failed"
        case .upstreamClosed: return "upstream_connection_closed"
        case .upstreamProtocol: return "upstream_invalid_response"
        case .upstreamTimeout(let t):
            switch t {
            case .connect: return "upstream_connect_timeout"
            case .tlsHandshake: return "upstream_tls_timeout"
            case .firstByte: return "upstream_first_byte_timeout"
            case .readIdle: return "upstream_read_timeout"
            case .poolQueue: return "pool_queue_timeout"
            }
        case .poolExhausted: return "pool_exhausted"
        case .shuttingDown: return "shutting_down"
        case .internalError: return "internal_error"
        case .modelNotFound: return "model_not_found"
        case .deploymentsBusy: return "deployments_busy"
        case .rateLimited: return "rate_limit_exceeded"
        case .budgetExceeded: return "budget_exceeded"
        case .modelNotPriced: return "model_not_priced"
        case .budgetUnavailable: return "budget_unavailable"
        case .fleetUnavailable: return "fleet_unavailable"
        }
    }

    /// The `Allow` header of a 405: the methods the target takes.
    public var allow: String? {
        if case .methodNotAllowed(let allow) = code { return allow }
        return nil
    }

    /// Seconds the client should wait before trying again, for the statuses where that helps.
    public var retryAfterSeconds: Int? {
        switch code {
        case .poolExhausted, .shuttingDown, .deploymentsBusy: return 1
        case .budgetUnavailable, .fleetUnavailable: return 5
        case .upstreamTimeout(.poolQueue): return 1
        default: return nil
        }
    }

    /// The OpenAI-shaped body, e.g. `{"error":{"message":"...","type":"upstream_error","code":"upstream_tls_failed"}}`.
    public var jsonBody: String {
        var out = #"{"error":{"message":"#
        JSONString.append(message, to: &out)
        out += #","type":"#
        JSONString.append(type, to: &out)
        out += #","code":"#
        JSONString.append(codeString, to: &out)
        out += "}}"
        return out
    }

    public var description: String { "\(codeString): \(message)" }
}

/// Minimal JSON string writer (RFC 8259 §7), so error bodies need no Foundation encoder.
public enum JSONString {
    public static func append(_ s: String, to out: inout String) {
        out.append("\"")
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out.append("\"")
    }
}
