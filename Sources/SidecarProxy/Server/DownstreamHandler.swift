import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore

/// The proxy's per-client-connection handler, right after NIO's HTTP/1.1 decoder and encoder.
/// Checks each request head first (`RequestHeadPolicy`: refusals close the connection), then
/// routes it (admin endpoint, `/v1/...` to an exchange, or 404), writes responses, and turns
/// malformed HTTP into a 400 with an OpenAI-shaped body before closing the connection.
///
/// Pipelined requests are queued here and served in order. (NIO's `HTTPServerPipelineHandler`
/// would do that by pausing reads around every response, which costs two `epoll_ctl` calls per
/// request; we only stop reading when the queue is long.)
final class DownstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Queued parts of pipelined requests beyond which we stop reading from the client.
    private static let maxQueuedParts = 64

    private let state: ServerState
    /// The snapshot of the request being served (taken when its head arrives).
    private var runtime: ProxyRuntime
    private var context: ChannelHandlerContext?
    private var exchange: ProxyExchange?
    /// The current request's `Connection` semantics (HTTP/1.0 and `Connection: close` end the connection).
    private(set) var keepAlive = true
    /// The current request's head arrived and its end has not.
    private var requestOpen = false
    /// The current request's response is not finished.
    private var responseOpen = false
    private var closeAfterResponse = false
    private var queued: Deque<HTTPServerRequestPart> = []
    private var readPending = false
    private var idleTimer: Scheduled<Void>?
    private var quiescing = false

    init(state: ServerState) {
        self.state = state
        self.runtime = state.runtime
    }

    /// What the access line of the current request says.
    struct AccessRecord {
        var method = ""
        var path = ""
        var started = NIODeadline.now()
        var status = 0
        var upstream: String?
        var model: String?
        var attempts = 0
        var upstreamNanos: Int64?
        var outcome = "ok"
        /// `x-sidecar-cache` of the answer, and the key when there was one.
        var cache = "-"
        var cacheKey: CacheKey?
    }
    var access = AccessRecord()
    var accessLogOn: Bool { runtime.configuration.log.access }

    /// One info line per request: static message, data in metadata, never keys or bodies.
    private func logAccess(outcome: String? = nil) {
        guard accessLogOn, access.status != 0 || outcome != nil else { return }
        let total = (NIODeadline.now() - access.started).nanoseconds
        var m: Logger.Metadata = [
            "method": .string(access.method),
            "path": .string(String(access.path.prefix(200))),
            "status": .stringConvertible(access.status),
            "total_ms": .string(Self.milliseconds(total)),
            "cache": .string(access.cache),
        ]
        if let key = access.cacheKey { m["cache_key"] = .string(String(key.description.prefix(16))) }
        if let u = access.upstream { m["deployment"] = .string(u) }
        if let model = access.model { m["model"] = .string(model) }
        if access.attempts > 0 { m["attempts"] = .stringConvertible(access.attempts) }
        if let n = access.upstreamNanos { m["upstream_ms"] = .string(Self.milliseconds(n)) }
        if let outcome { m["outcome"] = .string(outcome) }
        state.logger.info("request", metadata: m)
        access.status = 0
    }

    static func milliseconds(_ nanos: Int64) -> String {
        let tenths = nanos / 100_000
        return "\(tenths / 10).\(tenths % 10)"
    }

    /// The last scopes named on this connection: a client sends the same key (and organization
    /// and project) on every request of a keep-alive connection, so they are hashed once, not
    /// per request.
    private var lastClient: (scope: CacheScope, name: String)?
    private var lastCacheScope: (scope: CacheScope, name: String)?

    /// The client a request counts against for `[limits]` and spend: its credential, hashed.
    func scope(of headers: HTTPHeaders) -> String {
        Self.name(CacheScope.client(of: headers), memo: &lastClient)
    }

    /// The request's cache scope: credential (unless `shared`), organization and project.
    func cacheScope(of headers: HTTPHeaders, shared: Bool) -> String {
        Self.name(CacheScope.cache(of: headers, shared: shared), memo: &lastCacheScope)
    }

    private static func name(_ scope: CacheScope, memo: inout (scope: CacheScope, name: String)?) -> String {
        if let last = memo, last.scope == scope { return last.name }
        let name = ProxyExchange.name(of: scope)
        memo = (scope, name)
        return name
    }

    /// Loopback and unix-socket clients may use the admin endpoints without a token.
    private var trustedClient = false

    /// The client connection's loop (set before any request is handled).
    private(set) var eventLoop: EventLoop!

    /// The HTTP response encoder's context: prepared responses are written on it, past the encoder.
    private var encoderContext: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        encoderContext = try? context.pipeline.syncOperations.context(handlerType: HTTPResponseEncoder.self)
        self.eventLoop = context.eventLoop
        trustedClient = Self.isLocal(context.channel.remoteAddress)
        armIdleTimer()
    }

    static func isLocal(_ address: SocketAddress?) -> Bool {
        switch address {
        case .unixDomainSocket: return true
        case .v4:
            return address?.ipAddress?.hasPrefix("127.") ?? false
        case .v6:
            let ip = address?.ipAddress ?? ""
            return ip == "::1" || ip.hasPrefix("::ffff:127.")
        case nil: return false
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        self.context = nil
    }

    // MARK: requests

    /// Between a read and the end of its burst: upstream writes wait for `channelReadComplete`.
    private(set) var inReadBurst = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if lingering { return }
        inReadBurst = true
        let part = unwrapInboundIn(data)
        // A part belongs to a later request when the current one is complete but not yet answered.
        if !queued.isEmpty || (!requestOpen && responseOpen) {
            queued.append(part)
            return
        }
        handle(part)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // One flush of the upstream request per client read burst (head, body and end together).
        inReadBurst = false
        exchange?.flushUpstream()
        context.fireChannelReadComplete()
    }

    private func handle(_ part: HTTPServerRequestPart) {
        switch part {
        case .head(let head):
            idleDeadline = nil
            requestOpen = true
            responseOpen = true
            runtime = state.runtime
            access = AccessRecord(method: head.method.rawValue, path: head.uri)
            keepAlive = head.isKeepAlive && !state.isDraining && !quiescing
            closeAfterResponse = false
            switch RequestHeadPolicy.check(head, maxHeaderFields: runtime.maxHeaderFields) {
            case .route(let checked): route(checked)
            case .refuse(let error): refuse(error, method: head.method)
            }
        case .body(let buffer):
            exchange?.requestBody(buffer)  // bodies of locally answered requests are dropped
        case .end:
            requestOpen = false
            if let exchange {
                exchange.requestEnd()
            } else if !responseOpen {
                requestCycleDone()
            }
        }
    }

    /// Admin endpoints: answered on the main listener, to loopback/unix clients, or to others that
    /// present `server.admin_token` as a bearer token.
    private static let adminPaths: Set<Substring> = ["/healthz", "/readyz", "/metrics", "/stats"]

    private func route(_ head: HTTPRequestHead) {
        let path = head.uri
        let bare = path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        if Self.adminPaths.contains(bare) {
            return admin(head, path: bare)
        }
        guard path.hasPrefix("/v1/") || path == "/v1" || path.hasPrefix("/v1?") else {
            return respondWithError(.notFound(path: path), closeAfter: false)
        }
        if let length = head.headers.first(name: "content-length").flatMap({ Int($0) }), length > runtime.maxBodyBytes {
            return respondWithError(.payloadTooLarge(limit: runtime.maxBodyBytes), closeAfter: true)
        }
        guard let context, runtime.defaultUpstream != nil || !runtime.routes.isEmpty else {
            return respondWithError(.notFound(path: path), closeAfter: false)
        }
        if let limits = runtime.clientLimits {
            let verdict = limits.request(client: scope(of: head.headers))
            if !verdict.allowed {
                // OpenAI's own headers, so SDKs back off the way they do with OpenAI.
                let wait = ClientRateLimiter.openAIDuration(verdict.retryAfter)
                return respondWithError(.rateLimited(limit: limits.perMinute, retryAfter: wait), closeAfter: false, extraHeaders: [
                    ("retry-after", String((verdict.retryAfter.nanoseconds + 999_999_999) / 1_000_000_000)),
                    ("x-ratelimit-limit-requests", String(limits.perMinute)),
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", ClientRateLimiter.openAIDuration(verdict.reset)),
                ])
            }
        }
        let group = runtime.defaultUpstream
        if head.headers[canonicalForm: "expect"].contains(where: { HeaderPolicy.equalsIgnoringASCIICase($0, "100-continue") }) {
            // The client waits for this before sending its body (curl does, for bodies over 1 KiB).
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
        }
        let exchange = ProxyExchange(
            downstream: self, head: head, group: group, routes: runtime.routes, maxBodyBytes: runtime.maxBodyBytes,
            metrics: state.metrics, cache: state.cache, cacheSettings: runtime.configuration.cache, prices: runtime.priceTable,
            budget: state.budget, budgets: runtime.configuration.budgets, logger: state.logger)
        self.exchange = exchange
        access.upstream = group?.configuration.name
        state.requestStarted()
        exchange.start()
    }

    private func admin(_ head: HTTPRequestHead, path: Substring) {
        guard trustedClient || (runtime.adminAuthorization != nil && head.headers.first(name: "authorization") == runtime.adminAuthorization) else {
            return respondWithError(.forbidden(
                "admin endpoints answer loopback and unix-socket clients only; set server.admin_token_env or admin_token_file for remote access"),
                closeAfter: false)
        }
        guard head.method == .GET || head.method == .HEAD else {
            return respondWithError(.methodNotAllowed(head.method.rawValue, path: String(path), allow: "GET, HEAD"), closeAfter: false)
        }
        let headOnly = head.method == .HEAD
        switch path {
        case "/healthz":
            respondLocally(status: .ok, contentType: "application/json", body: ByteBuffer(string: #"{"status":"ok"}"#), headOnly: headOnly)
        case "/readyz":
            var reasons: [String] = []
            if state.isDraining { reasons.append("draining: the sidecar is stopping") }
            if runtime.defaultUpstream == nil { reasons.append("no default upstream is configured") }
            if !runtime.configuration.budgets.limits.isEmpty, let why = state.budget.unavailable { reasons.append(why) }
            for (name, group) in runtime.groups.sorted(by: { $0.key < $1.key }) {
                if let problem = group.health.problem { reasons.append("upstream \(name): \(problem)") }
            }
            var json = reasons.isEmpty ? #"{"status":"ready""# : #"{"status":"not ready","reasons":["#
            for (i, r) in reasons.enumerated() {
                if i > 0 { json += "," }
                JSONString.append(r, to: &json)
            }
            json += reasons.isEmpty ? "}" : "]}"
            respondLocally(status: reasons.isEmpty ? .ok : .serviceUnavailable, contentType: "application/json",
                           body: ByteBuffer(string: json), headOnly: headOnly)
        case "/stats":
            let configuration = runtime.configuration
            var groups: [String: any Sendable] = [:]
            for (name, route) in runtime.routes {
                groups[name] = route.snapshot.map { d -> [String: any Sendable] in ["deployment": d.name, "in_flight": d.inFlight, "health": d.health] }
            }
            let routing = groups
            guard let cache = state.cache, let context else {
                var report = CacheStatsReport(database: "", entries: 0, bytes: 0, models: [:], days: [], prices: configuration.priceTable,
                                              live: ["mode": "off"])
                report.routing = routing
                respondLocally(status: .ok, contentType: "application/json", body: ByteBuffer(string: report.json()), headOnly: headOnly)
                return
            }
            // The database part is read on the database thread; the answer is written when it is back.
            context.eventLoop.makeFutureWithTask {
                var report = await cache.report(prices: configuration.priceTable, mode: configuration.cache.mode.rawValue,
                                                scope: configuration.cache.scope.rawValue)
                report.routing = routing
                return report.json()
            }.assumeIsolated().whenSuccess { [self] json in
                self.respondLocally(status: .ok, contentType: "application/json", body: ByteBuffer(string: json), headOnly: headOnly)
            }
        default:
            respondLocally(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8",
                           body: ByteBuffer(bytes: state.metrics.render()), headOnly: headOnly)
        }
    }

    // MARK: responses (called by the exchange)

    func writeResponseHead(_ head: HTTPResponseHead) {
        access.status = Int(head.status.code)
        context?.write(wrapOutboundOut(.head(head)), promise: nil)
    }

    func writeResponseBody(_ buffer: ByteBuffer) {
        context?.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    /// The response is complete.
    func finishResponse(trailers: HTTPHeaders?) {
        guard let context else { return }
        if exchange != nil { state.requestFinished() }
        exchange = nil
        logAccess()
        let done = context.writeAndFlush(wrapOutboundOut(.end(trailers)))
        responseFinished(done)
    }

    /// A whole response already in wire form (a cache hit): written past the HTTP encoder, on
    /// its context (the encoder keeps no state between responses), head and body in one flush.
    /// False (nothing written) when there is no encoder to write past: the caller writes parts.
    func writePreparedResponse(status: Int, head: ByteBuffer, body: ByteBuffer) -> Bool {
        guard context != nil, let raw = encoderContext else { return false }
        access.status = status
        if exchange != nil { state.requestFinished() }
        exchange = nil
        logAccess()
        raw.write(NIOAny(head), promise: nil)
        responseFinished(raw.writeAndFlush(NIOAny(body)))
        return true
    }

    /// Something was already sent and the rest cannot be: end the connection so the client sees a
    /// truncated response (no fake end of stream).
    func abortResponse() {
        logAccess(outcome: "aborted")
        if exchange != nil { state.requestFinished() }
        exchange = nil
        responseOpen = false
        queued.removeAll()
        // What was already written still goes out; then the connection ends.
        context?.flush()
        context?.close(promise: nil)
    }

    /// Answers the current request with `error`'s OpenAI-shaped body.
    func respondWithError(_ error: ProxyError, closeAfter: Bool, extraHeaders: [(String, String)] = []) {
        if exchange == nil { state.metrics.error(error.codeString) }  // the exchange counts its own
        if exchange != nil { state.requestFinished() }
        exchange = nil
        if closeAfter { closeAfterResponse = true }
        let (head, body) = ErrorResponses.head(for: error, keepAlive: keepAlive && !closeAfterResponse, extra: extraHeaders)
        writeLocal(head: head, body: body)
    }

    /// Refuses the current request and closes the connection once the answer is written.
    private func refuse(_ error: ProxyError, method: HTTPMethod) {
        if method == .CONNECT {
            // NIO's encoder writes any response to a CONNECT without framing or body (what a 2xx,
            // the start of a tunnel, needs); a refusal is an ordinary response (RFC 9110 §9.3.6)
            // and keeps its Content-Length and body, so it is written past the encoder.
            closeAfterResponse = true
            let (head, body) = ErrorResponses.head(for: error, keepAlive: false)
            if writePreparedResponse(status: error.status, head: ErrorResponses.wireForm(head), body: body) {
                state.metrics.error(error.codeString)
                return
            }
        }
        respondWithError(error, closeAfter: true)
    }

    private func respondLocally(status: HTTPResponseStatus, contentType: String, body: ByteBuffer, headOnly: Bool) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: contentType)
        headers.add(name: "content-length", value: String(body.readableBytes))
        if !keepAlive { headers.add(name: "connection", value: "close") }
        writeLocal(head: HTTPResponseHead(version: .http1_1, status: status, headers: headers), body: headOnly ? nil : body)
    }

    private func writeLocal(head: HTTPResponseHead, body: ByteBuffer?) {
        guard let context else { return }
        access.status = Int(head.status.code)
        logAccess()
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if let body { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        responseFinished(context.writeAndFlush(wrapOutboundOut(.end(nil))))
    }

    /// The current response is written: close if the request asked for it, else serve what was
    /// queued or wait for the next request.
    private func responseFinished(_ written: EventLoopFuture<Void>) {
        responseOpen = false
        guard let context else { return }
        if pendingRefusal != nil, queued.isEmpty {
            // Bad bytes followed this request: their answer is next, and closes the connection.
            return refuseWhenDue()
        }
        if !keepAlive || closeAfterResponse {
            queued.removeAll()
            if requestOpen {
                // The client may still be sending (a body we refused, or garbage): closing with
                // unread input makes the kernel send a RST that can destroy our answer before the
                // client reads it. Close our side only, drain theirs for a moment, then close.
                written.assumeIsolated().whenComplete { [self] _ in self.lingeringClose(context: context) }
            } else {
                written.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            }
            return
        }
        if !requestOpen { requestCycleDone() }
    }

    /// Request and response are both done: take the next queued request, or go idle.
    private func requestCycleDone() {
        readsPausedByUpstream = false
        while !requestOpen && !responseOpen, let next = queued.popFirst() {
            handle(next)
        }
        // Parts of the request now current that were queued behind it.
        while !queued.isEmpty && !(!requestOpen && responseOpen) {
            handle(queued.removeFirst())
        }
        if readPending, mayRead, let context {
            readPending = false
            context.read()
        }
        // The last request queued before bad bytes may now be current, its body never to come.
        if pendingRefusal != nil { return refuseWhenDue() }
        if !requestOpen && !responseOpen {
            if quiescing { context?.close(promise: nil); return }
            armIdleTimer()
        }
    }

    /// After a final answer: input is read and dropped, the output half is closed, and the
    /// connection is closed when the client closes or after two seconds (nginx's lingering close).
    private var lingering = false

    private func lingeringClose(context: ChannelHandlerContext) {
        lingering = true
        context.close(mode: .output, promise: nil)
        context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(2)) {
            context.close(promise: nil)
        }
        context.read()
    }

    // MARK: connection events

    /// Set while the upstream cannot take more of the request body.
    private var readsPausedByUpstream = false

    func setReadsPaused(_ paused: Bool) {
        readsPausedByUpstream = paused
        if !paused, readPending, mayRead, let context {
            readPending = false
            context.read()
        }
    }

    func read(context: ChannelHandlerContext) {
        if !mayRead || readsPausedByUpstream { readPending = true } else { context.read() }
    }

    /// Not while the queue is long, nor while a decoder error waits for its turn (all the decoder
    /// would do with more input is report it as another error).
    private var mayRead: Bool { queued.count < Self.maxQueuedParts && pendingRefusal == nil }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if lingering {
            if error is HTTPParserError || error is ByteToMessageDecoderError { return }  // input being drained
            context.close(promise: nil)
            return
        }
        // Malformed HTTP from the client: answered (400, or 431 for an oversized head) in its turn,
        // after the requests before it, then the connection is closed. Other clients are
        // unaffected: each connection has its own decoder.
        guard error is HTTPParserError || error is ByteToMessageDecoderError else {
            context.close(promise: nil)
            return
        }
        // The decoder reports every later read as an error too: the first error is the answer.
        guard pendingRefusal == nil else { return }
        pendingRefusal = Self.refusal(for: error)
        refuseWhenDue()
    }

    /// What the decoder rejected, waiting for the requests before it to be answered.
    private var pendingRefusal: ProxyError?

    /// Answers `pendingRefusal` once every request the decoder delivered before the bad bytes
    /// is answered, and closes the connection. Called when the error arrives and whenever a
    /// response finishes.
    private func refuseWhenDue() {
        guard let refusal = pendingRefusal, queued.isEmpty, let context else { return }
        let inBody = requestOpen
        if requestOpen, let exchange {
            // The bad bytes are in this request's body: its upstream request is abandoned.
            guard !exchange.responseStarted else {
                // Its answer is already under way and cannot end well: cut it.
                context.close(promise: nil)
                return
            }
            self.exchange = nil
            state.requestFinished()
            exchange.downstreamClosed()
            responseOpen = false
        }
        guard !responseOpen else { return }  // a request before the bad bytes is still being answered
        pendingRefusal = nil
        keepAlive = false
        closeAfterResponse = true
        responseOpen = true
        requestOpen = true  // whatever follows the bad bytes is unread input
        if !inBody { access = AccessRecord(method: "-", path: "-") }  // bad bytes where a request head should be
        state.metrics.error(refusal.codeString)
        let (head, body) = ErrorResponses.head(for: refusal, keepAlive: false)
        writeLocal(head: head, body: body)
    }

    /// What a request the HTTP decoder rejected is answered with.
    static func refusal(for error: Error) -> ProxyError {
        if let e = error as? HTTPParserError, e == .headerOverflow {
            // NIO's limits (NIOHTTPDecoderLimitConfiguration): 80 KiB for one field and for all of
            // them, 65,534 fields.
            return .headerFieldsTooLarge("the request's header fields exceed 80 KiB (one field, or all of them together)")
        }
        return .badRequest("malformed HTTP request: \(describe(error))")
    }

    static func describe(_ error: Error) -> String {
        guard let e = error as? HTTPParserError else { return "\(error)" }
        switch e {
        case .invalidContentLength: return "invalid Content-Length"
        case .unexpectedContentLength: return "both Content-Length and Transfer-Encoding"
        case .invalidChunkSize: return "invalid chunk size"
        case .invalidMethod: return "invalid method"
        case .invalidURL: return "invalid request target"
        case .invalidVersion: return "invalid HTTP version"
        case .invalidHeaderToken: return "invalid header"
        default: return "\(e)"
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        encoderContext = nil
        idleTimer?.cancel()
        queued.removeAll()
        if let exchange {
            self.exchange = nil
            state.requestFinished()
            exchange.downstreamClosed()
            logAccess(outcome: "client_closed")
        }
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        exchange?.downstreamWritabilityChanged(writable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed {
            // The client finished sending (half-close). Answer what is under way, then close.
            if lingering || (!requestOpen && !responseOpen && queued.isEmpty) {
                context.close(promise: nil)
            } else {
                closeAfterResponse = true
            }
            return
        }
        if event is ChannelShouldQuiesceEvent {
            // Graceful stop: finish the current request, then close.
            quiescing = true
            keepAlive = false
            if !requestOpen && !responseOpen { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// When the connection, idle since the last response, should be closed.
    private var idleDeadline: NIODeadline?

    /// Starts the idle period. Lazily: one scheduled task per connection, re-armed when it fires
    /// early, instead of cancel + schedule around every request.
    private func armIdleTimer() {
        guard let context else { return }
        let deadline = NIODeadline.now() + runtime.clientIdleTimeout
        idleDeadline = deadline
        if idleTimer == nil { scheduleIdleCheck(at: deadline, context: context) }
    }

    private func scheduleIdleCheck(at when: NIODeadline, context: ChannelHandlerContext) {
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: when) { [self] in
            self.idleTimer = nil
            guard let deadline = self.idleDeadline, self.exchange == nil, !self.requestOpen, !self.responseOpen else { return }
            if NIODeadline.now() < deadline {
                self.scheduleIdleCheck(at: deadline, context: context)
            } else {
                context.close(promise: nil)
            }
        }
    }

}
