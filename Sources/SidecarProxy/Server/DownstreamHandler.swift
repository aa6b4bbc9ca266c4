import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore

/// The proxy's per-client-connection handler, the only one in the connection's pipeline: it
/// reads requests with our own strict framing (`DownstreamRequestReader`) and writes responses as
/// bytes (`HTTPResponseWriter`), with no HTTP codec handlers between it and the socket.
/// Checks each request head first (`RequestHeadPolicy`: refusals close the connection), then
/// routes it (admin endpoint, `/v1/...` to an exchange, or 404), writes responses, and turns
/// malformed HTTP into a 400 with an OpenAI-shaped body before closing the connection.
///
/// Pipelined requests are queued here and served in order. (NIO's `HTTPServerPipelineHandler`
/// would do that by pausing reads around every response, which costs two `epoll_ctl` calls per
/// request; we only stop reading when the queue is long.)
final class DownstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let state: ServerState
    /// The snapshot of the request being served (taken when its head arrives).
    var runtime: ProxyRuntime
    var context: ChannelHandlerContext?
    var exchange: ProxyExchange?
    /// The request/response cycle, pipelining, the refusal's turn, reads, idleness and the close.
    var connection = ClientConnectionStateMachine(now: .now())
    /// The parts of pipelined requests waiting behind the answer being written (`connection`
    /// counts them and says when the next may go).
    var queued: Deque<HTTPServerRequestPart> = []
    var idleTimer: Scheduled<Void>?
    /// Frames the client's bytes into request parts.
    var reader: DownstreamRequestReader
    /// Encodes response heads and frames response bodies.
    var writer = HTTPResponseWriter()
    /// The method of the request being answered (HEAD's answer has no body); nil when the answer
    /// is to bytes that were not a request.
    var respondingTo: HTTPMethod?

    /// Whether the current answer lets the connection serve another request (else it says
    /// `Connection: close`).
    var keepAlive: Bool { connection.keepAlive }

    /// The generation of `runtime` (`ServerState.snapshot`).
    var runtimeGeneration: Int

    init(state: ServerState) {
        self.state = state
        (self.runtime, self.runtimeGeneration) = state.snapshot
        self.reader = DownstreamRequestReader(maxFieldCount: runtime.maxHeaderFields)
    }

    var access = AccessRecord()
    var accessLogOn: Bool { runtime.configuration.log.access }
    /// The client a request counts against for `[limits]` and spend: its credential, hashed.
    func scope(of headers: HTTPHeaders) -> String {
        Self.name(CacheScope.client(of: headers), memo: &lastClient)
    }

    /// The request's cache scope: credential (unless `shared`), organization and project.
    func cacheScope(of headers: HTTPHeaders, shared: Bool) -> String {
        Self.name(CacheScope.cache(of: headers, shared: shared), memo: &lastCacheScope)
    }

    static func name(_ scope: CacheScope, memo: inout (scope: CacheScope, name: String)?) -> String {
        if let last = memo, last.scope == scope { return last.name }
        let name = ProxyExchange.name(of: scope)
        memo = (scope, name)
        return name
    }

    /// Loopback and unix-socket clients may use the admin endpoints without a token.
    var trustedClient = false

    /// The client connection's loop (set before any request is handled).
    private(set) var eventLoop: EventLoop!

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.eventLoop = context.eventLoop
        trustedClient = Self.isLocal(context.channel.remoteAddress)
        armIdleTimer(deadline: .now() + runtime.clientIdleTimeout)
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
        if let tunnel { return tunnel.fromClient(unwrapInboundIn(data)) }
        guard connection.readsRequests else { return }  // lingering: read and dropped
        inReadBurst = true
        reader.append(unwrapInboundIn(data))
        readParts()
    }

    /// Takes every complete part out of the reader: handled now, or queued behind the request
    /// being answered. Bad bytes stop reading; they are answered in their turn.
    func readParts() {
        while connection.readsRequests {
            let part: HTTPServerRequestPart?
            do {
                part = try reader.next()
            } catch {
                return framingFailed(error)
            }
            guard let part else { return }
            switch connection.receive() {
            case .deliver: handle(part)
            case .queue: queued.append(part)
            case .drop: return
            }
            if let tunnel, case .end = part {
                // The upgrade's request is whole: what follows is WebSocket frames, not requests.
                if let rest = reader.takeBuffered() { tunnel.fromClient(rest) }
                return
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // One flush of the upstream request per client read burst (head, body and end together).
        inReadBurst = false
        exchange?.flushUpstream()
        context.fireChannelReadComplete()
    }

    func handle(_ part: HTTPServerRequestPart) {
        switch part {
        case .head(let head):
            respondingTo = head.method
            if let (newer, generation) = state.runtime(ifNewerThan: runtimeGeneration) {
                runtime = newer
                runtimeGeneration = generation
                reader.maxFieldCount = newer.maxHeaderFields
            }
            access = AccessRecord(method: head.method.rawValue, path: head.uri)
            connection.headDelivered(keepAlive: HeaderPolicy.isKeepAlive(head.headers, version: head.version) && !state.isDraining)
            switch RequestHeadPolicy.check(head, maxHeaderFields: runtime.maxHeaderFields) {
            case .route(let checked): route(checked)
            case .refuse(let error): refuse(error)
            }
        case .body(let buffer):
            exchange?.requestBody(buffer)  // bodies of locally answered requests are dropped
        case .end:
            if tunnel != nil {
                _ = connection.endDelivered(now: .now())  // answered by the session (101, or an error)
            } else if let exchange {
                _ = connection.endDelivered(now: .now())  // its answer is under way: no clock read
                exchange.requestEnd()
            } else if let next = connection.endDelivered(now: .now()) {
                after(next)
            }
        }
    }

    /// Admin endpoints: answered on the main listener, to loopback/unix clients, or to others that
    /// present `server.admin_token` as a bearer token.
    static let adminPaths: Set<Substring> = ["/healthz", "/readyz", "/metrics", "/stats", "/stats/live", "/ui"]

    func route(_ head: HTTPRequestHead) {
        let path = head.uri
        let bare = path.utf8.firstIndex(of: UInt8(ascii: "?")).map { path[..<$0] } ?? path[...]
        if Self.adminPaths.contains(bare) {
            return admin(head, path: bare)
        }
        guard let dialect = APIDialect.of(path: bare, hasAnthropicVersion: head.headers.contains(name: "anthropic-version")) else {
            return respondWithError(.notFound(path: path), closeAfter: false)
        }
        if let length = head.headers.first(name: "content-length").flatMap({ Int($0) }), length > runtime.maxBodyBytes {
            return respondWithError(.payloadTooLarge(limit: runtime.maxBodyBytes), closeAfter: true)
        }
        let group = runtime.upstream(for: dialect)
        guard context != nil, group != nil || !runtime.routes.isEmpty else {
            return respondWithError(dialect == .openai ? .notFound(path: path) : .noUpstream(for: dialect, path: String(bare)), closeAfter: false)
        }
        var admissionPending = false
        if let limits = runtime.clientLimits {
            let client = scope(of: head.headers)
            var verdict: ClientRateLimiter.Verdict?
            if let fleet = state.fleet, let loop = context?.eventLoop {
                // The limit is the fleet's (docs/fleet.md): admitted from this node's slice of the
                // client's tokens, or after the node has asked the fleet for some.
                if let why = fleet.rejects { return respondWithError(.fleetUnavailable(why), closeAfter: false) }
                admissionSerial &+= 1
                let serial = admissionSerial
                switch fleet.admit(client: client, perMinute: limits.perMinute, burst: limits.burst, resume: {
                    let me = NIOLoopBound(self, eventLoop: loop)
                    return { v in loop.execute { me.value.admissionDecided(v, limits: limits, serial: serial) } }
                }) {
                case .decided(let v): verdict = v
                case .waiting: admissionPending = !RealtimeSession.isUpgrade(head)
                }
            } else {
                verdict = limits.request(client: client)
            }
            if let verdict, !verdict.allowed { return refuseRateLimited(verdict, limits: limits) }
        }
        if RealtimeSession.isUpgrade(head) {
            guard let group else { return respondWithError(.noUpstream(for: dialect, path: String(bare)), closeAfter: true) }
            let session = RealtimeSession(downstream: self, group: group, head: head, settings: runtime.configuration.server)
            tunnel = session
            access.upstream = group.configuration.name
            return session.start()
        }
        if head.headers.contains(name: "expect"), head.headers[canonicalForm: "expect"].contains(where: { HeaderPolicy.equalsIgnoringASCIICase($0, "100-continue") }) {
            // The client waits for this before sending its body (curl does, for bodies over 1 KiB).
            writeInterim(HTTPResponseHead(version: head.version, status: .continue))
        }
        let span = runtime.tracer.map { startRequestSpan($0, head: head, path: bare, upstream: group) }
        let exchange = ProxyExchange(
            downstream: self, head: head, dialect: dialect, group: group, routes: runtime.routes, maxBodyBytes: runtime.maxBodyBytes,
            metrics: state.metrics, cache: state.cache, cacheSettings: runtime.configuration.cache, prices: runtime.priceTable,
            budget: state.budget, budgets: runtime.configuration.budgets, logger: state.logger, span: span, tracer: runtime.tracer)
        self.exchange = exchange
        access.upstream = group?.configuration.name
        state.requestStarted()
        if admissionPending {
            exchange.admissionPending = true  // started when the fleet has answered
        } else {
            exchange.start()
        }
    }

    /// 429 `rate_limit_exceeded` with OpenAI's own headers, so SDKs back off the way they do with OpenAI.
    func refuseRateLimited(_ verdict: ClientRateLimiter.Verdict, limits: ClientLimits) {
        let wait = ClientRateLimiter.openAIDuration(verdict.retryAfter)
        respondWithError(.rateLimited(limit: limits.perMinute, retryAfter: wait), closeAfter: false, extraHeaders: [
            ("retry-after", String((verdict.retryAfter.nanoseconds + 999_999_999) / 1_000_000_000)),
            ("x-ratelimit-limit-requests", String(limits.perMinute)),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", ClientRateLimiter.openAIDuration(verdict.reset)),
        ])
    }

    /// The fleet answered for a request that waited for its client's tokens (`[fleet]`).
    func admissionDecided(_ verdict: ClientRateLimiter.Verdict, limits: ClientLimits, serial: Int) {
        guard serial == admissionSerial, let exchange, exchange.admissionPending else { return }  // gone meanwhile
        if verdict.allowed {
            exchange.admitted()
        } else {
            refuseRateLimited(verdict, limits: limits)
        }
    }


    // MARK: state used by the other DownstreamHandler files

    /// The last scopes named on this connection: a client sends the same key (and organization
    /// and project) on every request of a keep-alive connection, so they are hashed once, not
    /// per request.
    var lastClient: (scope: CacheScope, name: String)?
    /// Numbers the requests that wait for the fleet's admission, so a late answer finds its own.
    var admissionSerial = 0
    var lastCacheScope: (scope: CacheScope, name: String)?
    /// What bad bytes in the input are answered with, waiting for the requests before them.
    var pendingRefusal: ProxyError?
    /// A WebSocket session this connection was upgraded to: it owns the connection's bytes.
    var tunnel: RealtimeSession?
    /// `[otel]`: the span of the request being served, ended with its exchange.
    var requestSpan: SidecarSpan?
}
