import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore
import SidecarStore
import SidecarTLS
import Foundation

/// One client request on its way through the proxy, in named phases:
///
///   `start` (choose the upstream, rewrite the head) -> `lease` (a pooled connection)
///   -> `send` (head, body so far, then the rest as it arrives) -> `upstreamResponse*` (stream back)
///   -> `finish` (release the connection, end the client's response)
///
/// A failure in any phase goes to `fail`, the single exit that either answers with an
/// OpenAI-shaped error (nothing was sent to the client yet) or cuts the client's response (something
/// was, so the client must see an abnormal end, never a fake complete answer).
///
/// A request the cache may answer goes through more phases first (docs/caching.md):
///
///   `collecting` (the whole body: the key is a hash of it) -> `decide` -> a hot-tier hit is
///   replayed at once; an identical request in flight is followed (`following`); otherwise this
///   request leads a flight: `lookingUp` (SQLite, off the loop) -> replay a hit, or go upstream and
///   publish the answer to the followers as it arrives, then store it if it is complete.
///
/// Lives on the client connection's event loop, as does its pooled upstream connection.
final class ProxyExchange: UpstreamResponseDelegate {
    private enum Phase {
        case collecting
        case lookingUp
        case following(Flight, Int)
        case waitingForConnection(ConnectionPoolStateMachine.WaiterID)
        case forwarding(UpstreamPool.Lease)
        /// Waiting out the backoff before the next attempt on another deployment.
        case backingOff(Scheduled<Void>)
        /// Every deployment of the group is at `max_concurrency`: queued for the first free one.
        case waitingForDeployment(ModelRoute, id: Int, timer: Scheduled<Void>)
        case done
    }

    /// The cache's view of this request; nil when the cache is off or the request is not a candidate.
    private struct CacheState {
        let cache: ResponseCache
        let settings: SidecarConfiguration.Cache
        let method: String
        let path: String
        let cacheControl: [String]
        let ttlHeader: String?
        /// `CacheScope`'s name (credential and tenant headers, or "shared"), computed only when a key is.
        var scope = ""
        let headers: HTTPHeaders
        var key: CacheKey?
        var model = "-"
        var ttl = 0
        /// The flight this request leads (its answer is recorded for the followers and the store).
        var flight: Flight?
        /// Registered in the flight table (a `no-cache` request records but is not joinable).
        var registered = false
        var status = 0
        var contentType: String?
        var framed = false
        var encoded = false
    }

    private let downstream: DownstreamHandler
    /// Where the request goes: the default upstream, or (routed) the chosen deployment's. nil
    /// until routing decides when there is no default upstream.
    private var group: UpstreamGroup?
    private var pool: UpstreamPool?
    private let clientHead: HTTPRequestHead
    private let defaultGroup: UpstreamGroup?
    /// `[[models]]` groups of the snapshot this request started with.
    private let routes: [String: ModelRoute]
    /// The group this request's model names, once the body is read.
    private var route: ModelRoute?
    /// The deployment slot taken for this request: given back exactly once (`releaseSlot`).
    private var slot: (route: ModelRoute, index: Int)?
    private var responseStatus = 0
    /// The answer came in a content coding (`Content-Encoding` other than identity) although the
    /// sidecar asked for none: forwarded as it is, never cached, its usage unread.
    private var encodedAnswer = false
    private var retryAfter: TimeAmount?
    private let maxBodyBytes: Int
    private let metrics: SidecarMetrics
    private var upstreamHead: HTTPRequestHead
    // Timings, for the metrics: start, request sent upstream, response head, first body byte.
    private let started = NIODeadline.now()
    private var sentAt: NIODeadline?
    private var headAt: NIODeadline?
    private var firstBodyAt: NIODeadline?
    private var isStream = false
    private var phase: Phase {
        didSet { if case .done = phase, retainedWhileDetached != nil { releaseRetentionIfStillDone() } }
    }
    /// A detached leader is referenced by nobody else (the upstream connection's delegate is weak):
    /// it keeps itself alive until its answer is complete.
    private var retainedWhileDetached: ProxyExchange?

    /// Lets a detached leader go once it has stayed `.done` to the end of the current event.
    /// Not at once: a stale-connection replay, a retry on another deployment, or a rate or queue
    /// wait pass through `.done` on their way to the next phase, and a leader released there was
    /// freed holding a leased connection while its followers waited forever.
    private func releaseRetentionIfStillDone() {
        downstream.eventLoop.assumeIsolated().execute { [self] in
            if case .done = phase { retainedWhileDetached = nil }
        }
    }
    /// Body parts received so far, kept (by reference, not copied) until the response starts so
    /// that a request that hit a stale keep-alive connection can be replayed once. Only the first
    /// `maxReplayBytes` are kept: a larger body is streamed without a replay safety net.
    private var body: [ByteBuffer] = []
    private var replayable = true
    static let maxReplayBytes = 1 << 20
    /// A cache candidate's body is held until its end to compute the key; a larger body is
    /// forwarded as it arrives instead (uncached), so a huge upload keeps its backpressure.
    static let maxKeyedBodyBytes = 8 << 20
    private var bodyBytes = 0
    private var requestEnded = false
    private var replayed = false
    private(set) var responseStarted = false
    private var cacheState: CacheState?
    /// `[budgets]`: the shared ledger (nil without budgets), the limits, and this request's reservation.
    private let budget: BudgetBox?
    private let budgets: SidecarConfiguration.Budgets
    private let logger: Logger?
    private var reservation: BudgetLedger.Reservation?
    private var budgetChecked = false
    private var downgradedFrom: String?
    /// Where spend is recorded (the cache's database); nil without one.
    private let accounting: ResponseCache?
    private let prices: PriceTable
    /// The request's model, for spend: the body's top-level `model`.
    private var requestModel: String?
    /// A streamed chat completion whose client did not ask for usage: the usage chunk (which the
    /// sidecar asks upstream for, to account for the stream) is removed from what it receives.
    private var usageFilter: SSEUsageFilter?
    /// The answer's usage, once read (handed to the cache, which would otherwise parse it again).
    private var answerUsage: ResponseInspector.Usage?
    /// The last parts of a 2xx answer: where its `usage` is (for spend accounting).
    private var usageTail: Deque<ByteBuffer> = []
    private var usageTailBytes = 0
    static let usageTailBytes = 16 << 10
    /// `x-sidecar-cache` of the answer.
    private var cacheLabel = "bypass"
    /// The leader's client went away while followers still wait: the call goes on without it.
    private var detached = false

    init(downstream: DownstreamHandler, head: HTTPRequestHead, group: UpstreamGroup?, routes: [String: ModelRoute], maxBodyBytes: Int,
         metrics: SidecarMetrics, cache: ResponseCache?, cacheSettings: SidecarConfiguration.Cache, prices: PriceTable = PriceTable(),
         budget: BudgetBox? = nil, budgets: SidecarConfiguration.Budgets = .init(), logger: Logger? = nil) {
        self.metrics = metrics
        self.budget = budgets.limits.isEmpty ? nil : budget
        self.budgets = budgets
        self.logger = logger
        self.accounting = cache
        self.prices = prices
        self.downstream = downstream
        self.clientHead = head
        self.routes = routes
        self.maxBodyBytes = maxBodyBytes
        self.upstreamHead = head
        self.phase = .done
        self.defaultGroup = group
        // A routed request is aimed once its body names the model (`decide`); others now.
        if let group, routes.isEmpty || head.method != .POST { target(group) }
        if let cache, cacheSettings.mode != .off, head.method == .POST, CachePolicy.cacheablePaths.contains(Self.barePath(head.uri)) {
            cacheState = CacheState(
                cache: cache, settings: cacheSettings, method: head.method.rawValue, path: head.uri,
                cacheControl: head.headers[canonicalForm: "cache-control"].map(String.init),
                ttlHeader: head.headers.first(name: "x-sidecar-cache-ttl"), headers: head.headers)
            phase = .collecting
        } else {
            metrics.cacheResult("bypass")
            // Counted in /stats too (as model "-": the body is not read), so that /stats and
            // /metrics count the same requests.
            if let cache, cacheSettings.mode != .off { cache.count(model: "-") { $0.bypasses += 1 } }
            // Routing needs the body's model before it can choose where to send the request, and a
            // budget needs it (and max_tokens) to reserve the most the request can cost.
            if head.method == .POST, !routes.isEmpty || self.budget != nil { phase = .collecting }
        }
    }

    /// Sends this request to `group`: its host, key and path prefix.
    private func target(_ group: UpstreamGroup) {
        self.group = group
        self.pool = group.pool(on: downstream.eventLoop)
        let prefix = group.configuration.url.pathPrefix
        upstreamHead = HTTPRequestHead(
            version: .http1_1, method: clientHead.method, uri: prefix.isEmpty ? clientHead.uri : prefix + clientHead.uri,
            headers: HeaderPolicy.upstreamRequestHeaders(from: clientHead.headers, host: group.hostHeader, authorization: group.authorization))
    }

    static func barePath(_ uri: String) -> String {
        guard let q = uri.utf8.firstIndex(of: UInt8(ascii: "?")) else { return uri }
        return String(uri[..<q])
    }

    /// A scope's name in keys, the store, limits and spend: its material hashed (SHA-256).
    static func name(of scope: CacheScope) -> String {
        scope.name { SHA256.hash($0) }
    }

    // MARK: phases

    /// Asks the pool for a connection (the grant may arrive before this returns), or, for a
    /// cache candidate, waits for the whole body first.
    func start() {
        if listModelsIfNeeded() { return }
        if case .collecting = phase { return }
        lease(fresh: false)
    }

    /// The whole body is here: look it up, follow an identical request, or go upstream.
    private func decide() {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(bodyBytes)
        for part in body { bytes += part.readableBytesView }
        if budget != nil, clientHead.method == .POST {
            // The whole body, as the upstream will read it, prices the reservation (never a sniff
            // of the first read: the model may come after a long `messages`).
            switch PricedRequest.read(bytes) {
            case .success(let priced):
                requestModel = priced.model
                requestMaxTokens = priced.maxTokens
                if downstream.accessLogOn { downstream.access.model = priced.model }
            case .failure:
                cacheState = nil
                return fail(.badRequest("the request body is not strict JSON (a repeated key, or a value the sidecar cannot read), so its cost cannot be reserved against [budgets]; it was not sent"))
            }
        } else if requestModel == nil, accounting != nil || downstream.accessLogOn {
            requestModel = Self.topLevelString("model", in: bytes)
            if downstream.accessLogOn { downstream.access.model = requestModel }
        }
        if !routes.isEmpty {
            let model = Self.topLevelString("model", in: bytes)
            if let model, let r = routes[model] {
                route = r
                if r.group.firstTokenTimeout != nil, let v = JSONTopLevel.value(of: "stream", in: bytes) {
                    wantsStream = bytes[v].elementsEqual("true".utf8)
                }
                downstream.access.model = model
            } else if let defaultGroup {
                target(defaultGroup)
            } else {
                cacheState = nil
                return fail(.modelNotFound(model))
            }
        }
        if accounting != nil || budget != nil, Self.barePath(clientHead.uri) == "/v1/chat/completions",
           let stream = JSONTopLevel.value(of: "stream", in: bytes), bytes[stream].elementsEqual("true".utf8) {
            let options = JSONTopLevel.value(of: "stream_options", in: bytes)
            let asked = options.flatMap { CanonicalJSON.parse(Array(bytes[$0])) }?["include_usage"] == .bool(true)
            if !asked { usageFilter = SSEUsageFilter() }
            if options == nil, let open = bytes.firstIndex(of: UInt8(ascii: "{")) {
                // Ask for the usage chunk, so this stream can be accounted for.
                var injected = bytes
                injected.insert(contentsOf: Array(#""stream_options":{"include_usage":true}"#.utf8) + (bytes[(open + 1)...].contains { $0 != 0x20 && $0 != 0x0A && $0 != 0x0D && $0 != 0x09 && $0 != UInt8(ascii: "}") } ? [UInt8(ascii: ",")] : []), at: open + 1)
                body = [ByteBuffer(bytes: injected)]
                bodyBytes = injected.count
                bodyRewritten = true
            }
        }
        guard var c = cacheState else { return lease(fresh: false) }
        let policy = CachePolicy(mode: c.settings.mode, defaultTTL: c.settings.ttlSeconds)
        if policy.certainlySampled(path: Self.barePath(c.path), body: bytes) {
            cacheState = nil
            metrics.cacheResult("bypass")
            c.cache.count(model: ModelSniffer.model(in: bytes) ?? "-") { $0.bypasses += 1 }
            return lease(fresh: false)
        }
        let parsed = CanonicalJSON.parse(bytes)
        if case .string(let m)? = parsed?["model"] { c.model = m }
        let decision = policy
            .decide(method: c.method, path: Self.barePath(c.path), body: parsed, cacheControl: c.cacheControl, ttlHeader: c.ttlHeader)
        let ttl: Int
        let lookup: Bool
        switch decision {
        case .bypass:
            cacheState = nil
            metrics.cacheResult("bypass")
            c.cache.count(model: c.model) { $0.bypasses += 1 }
            return lease(fresh: false)
        case .storeOnly(let t): (ttl, lookup) = (t, false)
        case .lookupAndStore(let t): (ttl, lookup) = (t, true)
        }
        c.scope = downstream.cacheScope(of: c.headers, shared: c.settings.scope == .shared)
        guard let parsed, let material = CanonicalRequest.keyMaterial(
            method: c.method, path: c.path, modelGroup: c.model, scope: c.scope, parsed: parsed) else {
            cacheState = nil
            metrics.cacheResult("bypass")
            c.cache.count(model: c.model) { $0.bypasses += 1 }  // /stats counts what /metrics counts
            return lease(fresh: false)
        }
        let key = CacheKey(digest: SHA256.hash(material))
        c.key = key
        c.ttl = ttl
        downstream.access.cacheKey = key
        let now = c.cache.clock()
        if lookup, let answer = c.cache.hotLookup(key, now: now) {
            cacheState = nil
            countHit(c.cache, answer)
            return replay(answer, age: now - answer.createdAt)
        }
        if !lookup {
            // `Cache-Control: no-cache`: a fresh answer, recorded for the store, shared with nobody.
            c.flight = Flight(key: key, maxBytes: c.settings.maxEntryBytes)
            cacheState = c
            cacheLabel = "miss"
            metrics.cacheResult("miss")
            c.cache.count(model: c.model) { $0.misses += 1 }
            return lease(fresh: false)
        }
        switch c.cache.flight(for: key) {
        case .follower(let flight):
            cacheState = nil
            follow(flight, cache: c.cache, model: c.model)
        case .leader(let flight):
            c.flight = flight
            c.registered = true
            cacheState = c
            phase = .lookingUp
            // A key the database certainly does not hold: a miss now, no trip to SQLite's thread.
            guard c.cache.mayBeStored(key) else { return lookedUp(nil, now: now) }
            c.cache.diskLookup(key, now: now, on: downstream.eventLoop).assumeIsolated().whenSuccess { [self] answer in
                self.lookedUp(answer, now: now)
            }
        }
    }

    private func countHit(_ cache: ResponseCache, _ answer: CachedAnswer) {
        cache.count(model: answer.model) { d in
            d.hits += 1
            d.bytesServed += Int64(answer.body.readableBytes)
            d.promptTokensSaved += answer.promptTokens
            d.completionTokensSaved += answer.completionTokens
        }
    }

    /// The SQLite lookup of a flight leader came back.
    private func lookedUp(_ answer: CachedAnswer?, now: Int64) {
        guard case .lookingUp = phase, let c = cacheState, let flight = c.flight else { return }
        if let answer {
            // Followers that joined meanwhile get the stored answer too.
            var headers = HTTPHeaders()
            Self.addReplayHeaders(answer, to: &headers)
            flight.publish(.head(HTTPResponseStatus(statusCode: answer.status), headers))
            flight.publish(.body(answer.body))
            flight.publish(.end)
            c.cache.endFlight(flight)
            cacheState = nil
            countHit(c.cache, answer)
            if detached { phase = .done; return }
            return replay(answer, age: now - answer.createdAt)
        }
        cacheLabel = "miss"
        metrics.cacheResult("miss")
        c.cache.count(model: c.model) { $0.misses += 1 }
        if detached, flight.leaderLeft() {
            c.cache.endFlight(flight)
            cacheState = nil
            phase = .done
            return
        }
        lease(fresh: false)
    }

    /// Answers from memory: the stored status, content type and exact bytes.
    private func replay(_ answer: CachedAnswer, age: Int64) {
        phase = .done
        responseStarted = true
        cacheLabel = "hit"
        metrics.cacheResult("hit")
        downstream.access.cache = "hit"
        var answer = answer
        if answer.isStream, var filter = usageFilter {
            // Stored with the usage chunk; this client did not ask for it.
            var bytes = filter.feed(answer.body.readableBytesView)
            bytes += filter.finish()
            answer.body = ByteBuffer(bytes: bytes)
        } else {
            // The stored bytes as they are: the prepared head, our two headers, the body, in one
            // writev past the HTTP encoder.
            var head = answer.headPrefix
            head.writeString("x-sidecar-cache: hit\r\nage: \(max(0, age))\r\n")
            head.writeString(downstream.keepAlive ? "\r\n" : "connection: close\r\n\r\n")
            if downstream.writePreparedResponse(status: answer.status, head: head, body: answer.body) { return }
        }
        var headers = HTTPHeaders()
        Self.addReplayHeaders(answer, to: &headers)
        headers.add(name: "x-sidecar-cache", value: "hit")
        headers.add(name: "age", value: String(max(0, age)))
        if !downstream.keepAlive { headers.add(name: "connection", value: "close") }
        downstream.writeResponseHead(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: answer.status), headers: headers))
        downstream.writeResponseBody(answer.body)
        downstream.finishResponse(trailers: nil)
    }

    private static func addReplayHeaders(_ answer: CachedAnswer, to headers: inout HTTPHeaders) {
        if let type = answer.contentType { headers.add(name: "content-type", value: type) }
        headers.add(name: "content-length", value: String(answer.body.readableBytes))
    }

    // MARK: routing

    /// The value of a top-level string member without escapes (model names have none).
    static func topLevelString(_ key: StaticString, in bytes: [UInt8]) -> String? {
        guard let range = JSONTopLevel.value(of: key, in: bytes) else { return nil }
        let raw = bytes[range]
        guard raw.count >= 2, raw.first == UInt8(ascii: "\""), raw.last == UInt8(ascii: "\""), !raw.contains(UInt8(ascii: "\\")) else { return nil }
        return String(decoding: raw.dropFirst().dropLast(), as: UTF8.self)
    }

    /// Takes a deployment of the request's group, else of its fallbacks in order, and aims the
    /// request at it: its upstream, and the body's `model` rewritten to the deployment's, every
    /// other byte unchanged. False (and answered 429) when all are full or ejected.
    private func bindDeployment() -> Bool {
        guard let route else { return true }
        if let (r, i) = nextDeployment() {
            install(r, i)
            return true
        }
        // Full everywhere: wait in the group's queue for the first deployment with room.
        let bound = NIOLoopBound(self, eventLoop: downstream.eventLoop)
        switch route.acquireOrWait(loop: downstream.eventLoop, tokens: needsTokens(route) ? estimatedTokens : 0,
                                   grant: { i in bound.value.deploymentGranted(route, i) }) {
        case .acquired(let i):
            install(route, i)
            return true
        case .queued(let id):
            let timer = downstream.eventLoop.assumeIsolated().scheduleTask(in: route.group.queueTimeout) { [self] in
                guard case .waitingForDeployment(let r, let id, _) = self.phase, r.cancel(waiter: id) else { return }
                self.phase = .done
                self.fail(.deploymentsBusy(r.group.name))
            }
            phase = .waitingForDeployment(route, id: id, timer: timer)
            return false
        case .refused:
            // Out of rate everywhere (rpm/tpm): wait for the first deployment to have room again,
            // within queue_timeout; else 429.
            let deadline = rateWaitDeadline ?? NIODeadline.now() + route.group.queueTimeout
            rateWaitDeadline = deadline
            if let wait = route.rateLimitWait(tokens: needsTokens(route) ? estimatedTokens : 0), NIODeadline.now() + wait <= deadline {
                let timer = downstream.eventLoop.assumeIsolated().scheduleTask(in: wait) { [self] in
                    guard case .backingOff = self.phase else { return }
                    self.phase = .done
                    self.lease(fresh: false)
                }
                phase = .backingOff(timer)
                return false
            }
            fail(.deploymentsBusy(route.group.name))
            return false
        }
    }

    /// A queued request got a deployment (on this loop).
    private func deploymentGranted(_ r: ModelRoute, _ i: Int) {
        guard case .waitingForDeployment(_, _, let timer) = phase else {
            r.release(i, .neutral)  // we left meanwhile: give it to the next one
            return
        }
        timer.cancel()
        phase = .done
        install(r, i)
        if let c = charged { charged = (c.route, c.index, 0) }  // a granted slot charged no tokens
        lease(fresh: false)
    }

    /// The request's estimated tokens (prompt at 4 bytes a token, plus its max_tokens or 4,096),
    /// charged to a deployment's `tpm` and corrected by the answer's usage.
    private lazy var estimatedTokens: Double = {
        let t = BudgetLedger.tokens(bodyBytes: bodyBytes, maxTokens: requestMaxTokens)
        return Double(t.prompt + t.completion)
    }()
    /// The body's `max_tokens` (or `max_completion_tokens` / `max_output_tokens`), read once.
    private lazy var requestMaxTokens: Int? = Self.maxTokens(in: body.reduce(into: [UInt8]()) { $0 += $1.readableBytesView })
    /// The deployment this request's tokens were charged to.
    private var charged: (route: ModelRoute, index: Int, tokens: Double)?
    /// When a request that waits for a deployment's rate gives up.
    private var rateWaitDeadline: NIODeadline?

    static func maxTokens(in bytes: [UInt8]) -> Int? {
        for range in [JSONTopLevel.value(of: "max_tokens", in: bytes), JSONTopLevel.value(of: "max_completion_tokens", in: bytes),
                      JSONTopLevel.value(of: "max_output_tokens", in: bytes)] {
            if let r = range, let n = Int(String(decoding: bytes[r], as: UTF8.self)) { return n }
        }
        return nil
    }

    /// Deployments this request has tried, by group.
    private var tried: [(group: ObjectIdentifier, index: Int)] = []
    /// Attempts made on deployments (routed requests).
    private var attempt = 0
    private var random = SystemRandomNumberGenerator()
    /// Pause before trying another deployment: full jitter, 50 ms doubling to 2 s.
    static let retryBackoff = Backoff(base: .milliseconds(50), cap: .seconds(2))

    /// A slot on a deployment not tried yet: the group's, then its fallbacks' in order.
    private func nextDeployment() -> (ModelRoute, Int)? {
        guard let route else { return nil }
        let tokens = needsTokens(route) ? estimatedTokens : 0
        if let i = route.acquire(excluding: excluded(route), tokens: tokens) { return (route, i) }
        for name in route.group.fallbacks {
            guard let r = routes[name] else { continue }
            if let i = r.acquire(excluding: excluded(r), tokens: needsTokens(r) ? estimatedTokens : 0) { return (r, i) }
        }
        return nil
    }

    private func needsTokens(_ r: ModelRoute) -> Bool { r.group.deployments.contains { $0.tpm != nil } }

    private func excluded(_ r: ModelRoute) -> Set<Int> {
        if tried.isEmpty { return [] }
        let id = ObjectIdentifier(r)
        return Set(tried.lazy.filter { $0.group == id }.map(\.index))
    }

    private func install(_ r: ModelRoute, _ i: Int) {
        slot = (r, i)
        charged = r.group.deployments[i].tpm != nil ? (r, i, estimatedTokens) : nil
        tried.append((ObjectIdentifier(r), i))
        attempt += 1
        target(r.upstreams[i])
        downstream.access.upstream = r.name(i)
        rewriteModel(to: r.group.deployments[i].model)
    }

    /// Whether another attempt may start: routed, nothing sent to the client yet, the body kept,
    /// attempts and the group's deadline left.
    private var mayRetry: Bool {
        guard let route, !detached, requestEnded, !body.isEmpty || bodyBytes == 0 else { return false }
        return attempt < route.group.maxAttempts && NIODeadline.now() - started < route.group.retryDeadline
    }

    /// Closes a leased connection whose response will not be read to its end (never pooled).
    private func drop(_ lease: UpstreamPool.Lease) {
        lease.connection.delegate = nil
        pool?.release(lease.connection, reusable: false, keepAlive: nil)
    }

    /// Gives up the current attempt before anything reached the client (its connection closed
    /// unread, its slot given back with `outcome`) and starts the next on `next`.
    private func moveAttempt(off lease: UpstreamPool.Lease, outcome: DeploymentSelector.Outcome, reason: String, to next: (ModelRoute, Int)) {
        drop(lease)
        releaseSlot(outcome)
        phase = .done
        _ = retryElsewhere(reason: reason, next: next)
    }

    /// Starts the next attempt on another deployment, after a backoff, if one may go and a
    /// deployment can take it. The current attempt's slot must already be given back.
    private func retryElsewhere(reason: String, next: (ModelRoute, Int)? = nil) -> Bool {
        guard mayRetry, let (r, i) = next ?? nextDeployment() else { return false }
        install(r, i)
        metrics.retry(reason)
        let delay = Self.retryBackoff.delay(attempt: attempt - 2, random: &random)
        let timer = downstream.eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
            guard case .backingOff = self.phase else { return }
            self.phase = .done
            self.lease(fresh: false)
        }
        phase = .backingOff(timer)
        return true
    }

    private var bodyRewritten = false

    // MARK: first-token timeout (streams)

    private var wantsStream = false
    private var firstTokenTimer: Scheduled<Void>?
    /// The response head of a stream whose first event has not arrived yet: nothing reaches the
    /// client (or a flight's followers) before it, so the attempt can still move elsewhere.
    private var deferredHead: HTTPResponseHead?

    private func armFirstTokenTimer() {
        firstTokenTimer?.cancel()
        firstTokenTimer = nil
        guard wantsStream, let timeout = slot?.route.group.firstTokenTimeout else { return }
        firstTokenTimer = downstream.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            self.firstTokenTimer = nil
            guard case .forwarding(let lease) = self.phase, !self.responseStarted, self.mayRetry, let next = self.nextDeployment() else {
                return  // nowhere else to go: keep waiting on this one
            }
            self.deferredHead = nil
            self.moveAttempt(off: lease, outcome: .failure, reason: "first_token", to: next)
        }
    }

    /// The first event (or the end) arrived: the deferred head goes out now.
    private func releaseDeferredHead() {
        firstTokenTimer?.cancel()
        firstTokenTimer = nil
        guard let head = deferredHead else { return }
        deferredHead = nil
        processResponseHead(head)
    }

    private func rewriteModel(to model: String) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(bodyBytes)
        for part in body { bytes += part.readableBytesView }
        if let range = JSONTopLevel.value(of: "model", in: bytes) {
            var value = ""
            JSONString.append(model, to: &value)
            if !bytes[range].elementsEqual(value.utf8) {
                bytes.replaceSubrange(range, with: Array(value.utf8))
                body = [ByteBuffer(bytes: bytes)]
                bodyBytes = bytes.count
                bodyRewritten = true
            }
        }
        if bodyRewritten {
            upstreamHead.headers.remove(name: "transfer-encoding")
            upstreamHead.headers.replaceOrAdd(name: "content-length", value: String(bodyBytes))
        }
    }

    /// Gives the deployment slot back, once, saying how the request went.
    private func releaseSlot(_ outcome: DeploymentSelector.Outcome) {
        guard let s = slot else { return }
        slot = nil
        s.route.release(s.index, outcome)
    }

    /// `Retry-After` in seconds: a number, or an HTTP date (RFC 9110 §10.2.3).
    static func retryAfterSeconds(_ value: String) -> Int64? {
        let v = value.trimmingCharacters(in: .whitespaces)
        if let n = Int64(v) { return max(0, n) }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = f.date(from: v) else { return nil }
        return max(0, Int64(date.timeIntervalSinceNow.rounded(.up)))
    }

    /// What an upstream answer says about its deployment.
    private var outcome: DeploymentSelector.Outcome {
        switch responseStatus {
        case 429: return .rateLimited(retryAfter: retryAfter)
        case 500...599: return .failure
        case 200..<500: return .success(latency: sentAt.map { .nanoseconds((NIODeadline.now() - $0).nanoseconds) } ?? .zero)
        default: return .neutral
        }
    }

    // MARK: following an identical request

    private func follow(_ flight: Flight, cache: ResponseCache, model: String) {
        let bound = NIOLoopBound(self, eventLoop: downstream.eventLoop)
        let loop: EventLoop = downstream.eventLoop
        cacheLabel = "coalesced"
        downstream.access.cache = "coalesced"
        phase = .following(flight, -1)
        let joined = flight.join({ events in loop.execute { bound.value.flightEvents(events) } })
        if joined == -1 {
            // The answer was complete (and is being stored) when we joined: a hit, not a shared call.
            cacheLabel = "hit"
            downstream.access.cache = "hit"
            metrics.cacheResult("hit")
            cache.count(model: model) { $0.hits += 1 }
            cache.touch(flight.key, now: cache.clock())
            return
        }
        guard let id = joined else {
            // The leader's answer outgrew what is kept for late joiners: go on our own.
            cacheLabel = "miss"
            downstream.access.cache = "miss"
            metrics.cacheResult("miss")
            cache.count(model: model) { $0.misses += 1 }
            return lease(fresh: false)
        }
        metrics.cacheResult("coalesced")
        if case .following = phase { phase = .following(flight, id) }
    }

    /// The leader's answer, as it arrives (on this request's loop).
    private func flightEvents(_ events: [Flight.Event]) {
        guard case .following = phase else { return }
        for event in events {
            switch event {
            case .head(let status, var headers):
                responseStarted = true
                if cacheLabel == "hit", !(200..<300).contains(Int(status.code)) { cacheLabel = "coalesced" }  // an error is never a hit
                headers.replaceOrAdd(name: "x-sidecar-cache", value: cacheLabel)
                if !downstream.keepAlive { headers.replaceOrAdd(name: "connection", value: "close") }
                if !(headers.first(name: "content-type")?.hasPrefix("text/event-stream") ?? false) { usageFilter = nil }
                if usageFilter != nil { headers.remove(name: "content-length") }
                downstream.writeResponseHead(HTTPResponseHead(version: .http1_1, status: status, headers: headers))
            case .body(let buffer):
                writeFiltered(buffer)
            case .end:
                phase = .done
                flushFilter()
                downstream.finishResponse(trailers: nil)
                return
            case .failed(let error):
                phase = .done
                answer(error)
                return
            case .aborted:
                phase = .done
                downstream.abortResponse()
                return
            case .withdrawn:
                // The leader was refused for a reason of its own: this request goes on alone.
                phase = .done
                cacheLabel = "miss"
                downstream.access.cache = "miss"
                return lease(fresh: false)
            }
        }
        downstream.flush()
    }

    private func lease(fresh: Bool) {
        if !budgetChecked {
            budgetChecked = true
            guard reserveBudget() else { return }
        }
        if route != nil, slot == nil, !bindDeployment() { return }
        guard let pool else { return fail(.modelNotFound(nil)) }
        var granted = false
        let waiter = pool.lease(fresh: fresh) { [self] result in
            granted = true
            switch result {
            case .success(let lease): self.send(on: lease)
            case .failure(let error):
                // Connect, TLS and pool-queue failures: the deployment could not take the request,
                // and the provider never saw it: safe to try another.
                self.releaseSlot(error.source == .upstream ? .failure : .neutral)
                self.phase = .done
                if RetryPolicy.afterFailure(error, responseStarted: false, reusedConnection: false, replayedAlready: self.replayed,
                                            bodyKept: self.replayable) == .tryElsewhere,
                   self.retryElsewhere(reason: "connect") { return }
                self.fail(error)
            }
        }
        if !granted { phase = .waitingForConnection(waiter) }
    }

    /// Sends the head, what body has arrived, and the end if it has arrived too.
    private func send(on lease: UpstreamPool.Lease) {
        phase = .forwarding(lease)
        let connection = lease.connection
        connection.delegate = self
        sentAt = .now()
        downstream.access.attempts += 1
        armFirstTokenTimer()
        if bodyRewritten {
            upstreamHead.headers.remove(name: "transfer-encoding")
            upstreamHead.headers.replaceOrAdd(name: "content-length", value: String(bodyBytes))
        }
        connection.send(head: upstreamHead)
        for part in body { connection.sendBody(part) }
        if bodyBytes > Self.maxReplayBytes, route == nil {
            // Routed requests keep their (already collected) body for attempts elsewhere.
            replayable = false
            body.removeAll()
        }
        // Flushed at the end of this read burst (`flushUpstream`), or by `sendEnd`.
        if requestEnded { connection.sendEnd() } else if !downstream.inReadBurst { connection.flush() }
    }

    /// The client's read burst is over: send what was written upstream in it, in one write.
    func flushUpstream() {
        if case .forwarding(let lease) = phase { lease.connection.flush() }
    }

    /// More of the client's body.
    func requestBody(_ buffer: ByteBuffer) {
        if bodyBytes == 0, downstream.accessLogOn || accounting != nil || budget != nil {
            requestModel = ModelSniffer.model(in: buffer.readableBytesView)
            if downstream.accessLogOn { downstream.access.model = requestModel }
        }
        bodyBytes += buffer.readableBytes
        if bodyBytes > maxBodyBytes {
            fail(.payloadTooLarge(limit: maxBodyBytes))
            return
        }
        if case .collecting = phase {
            body.append(buffer)
            if bodyBytes > Self.maxKeyedBodyBytes, let c = cacheState {
                // Too large to hold for a key: forward it as it streams, uncached, with backpressure.
                cacheState = nil
                metrics.cacheResult("bypass")
                c.cache.count(model: "-") { $0.bypasses += 1 }
                if routes.isEmpty, budget == nil {
                    phase = .done
                    lease(fresh: false)
                }  // else routing needs the whole body to read its model, and a budget to price it
            }
            return
        }
        if !responseStarted {
            if case .forwarding = phase {
                if replayable { keepForReplay(buffer) }
            } else {
                body.append(buffer)  // not sent yet: kept until a connection is granted
            }
        }
        if case .forwarding(let lease) = phase { lease.connection.sendBody(buffer) }  // flushed by `flushUpstream`
    }

    /// The client's request is complete.
    func requestEnd() {
        requestEnded = true
        if case .collecting = phase { return decide() }
        if case .forwarding(let lease) = phase { lease.connection.sendEnd() }
    }

    // MARK: the response

    func upstreamResponseHead(_ head: HTTPResponseHead) {
        let status = Int(head.status.code)
        if let s = slot, s.route.group.retryOn.contains(status), mayRetry, let next = nextDeployment(), case .forwarding(let lease) = phase {
            // A status the group retries, and another deployment is free: this answer is dropped
            // (its connection closed unread) and never reaches the client.
            responseStatus = status
            retryAfter = status == 429 ? head.headers.first(name: "retry-after").flatMap(Self.retryAfterSeconds).map { .seconds($0) } : nil
            group?.metrics.response(status: status)
            moveAttempt(off: lease, outcome: outcome, reason: "status_\(status)", to: next)
            return
        }
        if firstTokenTimer != nil {
            deferredHead = head
            return
        }
        processResponseHead(head)
    }

    private func processResponseHead(_ head: HTTPResponseHead) {
        responseStarted = true
        body.removeAll()
        let now = NIODeadline.now()
        headAt = now
        if let sentAt { group?.metrics.firstByte.recordNanoseconds((now - sentAt).nanoseconds) }
        group?.metrics.response(status: Int(head.status.code))
        let contentType = head.headers.first(name: "content-type")
        isStream = contentType?.hasPrefix("text/event-stream") ?? false
        responseStatus = Int(head.status.code)
        encodedAnswer = HeaderPolicy.isEncoded(head.headers)
        if responseStatus == 429 { retryAfter = head.headers.first(name: "retry-after").flatMap(Self.retryAfterSeconds).map { .seconds($0) } }
        var headers = HeaderPolicy.downstreamResponseHeaders(from: head.headers)
        headers.add(name: "x-sidecar-cache", value: cacheLabel)
        if let from = downgradedFrom { headers.add(name: "x-sidecar-downgraded-from", value: from) }
        if let s = slot {
            headers.add(name: "x-sidecar-deployment", value: s.route.name(s.index))
            headers.add(name: "x-sidecar-attempts", value: String(attempt))
        }
        if var c = cacheState, let flight = c.flight {
            c.status = Int(head.status.code)
            c.contentType = contentType
            c.framed = head.headers.contains(name: "content-length")
                || head.headers[canonicalForm: "transfer-encoding"].contains { HeaderPolicy.equalsIgnoringASCIICase($0, "chunked") }
            c.encoded = encodedAnswer
            cacheState = c
            flight.publish(.head(head.status, headers))
        }
        downstream.access.cache = cacheLabel
        if detached { return }
        if !isStream { usageFilter = nil }
        if usageFilter != nil { headers.remove(name: "content-length") }  // bytes are removed: chunked framing
        if !downstream.keepAlive { headers.add(name: "connection", value: "close") }
        if modelsToMerge != nil, responseStatus == 200 {
            heldHead = HTTPResponseHead(version: .http1_1, status: head.status, headers: headers)  // sent with the merged list
            return
        }
        modelsToMerge = nil
        downstream.writeResponseHead(HTTPResponseHead(version: .http1_1, status: head.status, headers: headers))
    }

    // MARK: GET /v1/models with [[models]] groups

    /// The group names to add to the default upstream's `GET /v1/models` answer; nil otherwise.
    private var modelsToMerge: [String]?
    private var heldHead: HTTPResponseHead?
    private var heldBody: [UInt8] = []

    /// `GET /v1/models` lists the configured groups, merged into the default upstream's list
    /// (answered locally when there is no default upstream).
    func listModelsIfNeeded() -> Bool {
        guard clientHead.method == .GET, Self.barePath(clientHead.uri) == "/v1/models", !routes.isEmpty else { return false }
        let names = routes.keys.sorted()
        if defaultGroup != nil {
            modelsToMerge = names
            // The list is read and rewritten here: ask for it unencoded.
            upstreamHead.headers.remove(name: "accept-encoding")
            return false
        }
        phase = .done
        responseStarted = true
        // Our own list of plain strings always serialises.
        let body = ByteBuffer(bytes: Self.mergeModels(names, into: nil) ?? Array(#"{"object":"list","data":[]}"#.utf8))
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.readableBytes))
        if !downstream.keepAlive { headers.add(name: "connection", value: "close") }
        downstream.writeResponseHead(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))
        downstream.writeResponseBody(body)
        downstream.finishResponse(trailers: nil)
        return true
    }

    /// An OpenAI model list with `names` added (those not already listed), after `upstream`'s;
    /// nil when `upstream` is not a JSON object with a `data` array (the caller answers 502).
    static func mergeModels(_ names: [String], into upstream: [UInt8]?) -> [UInt8]? {
        var object: [String: Any] = ["object": "list"]
        if let upstream {
            guard let parsed = try? JSONSerialization.jsonObject(with: Data(upstream)) as? [String: Any],
                  parsed["data"] is [[String: Any]] else { return nil }
            object = parsed
        }
        var data = object["data"] as? [[String: Any]] ?? []
        let present = Set(data.compactMap { $0["id"] as? String })
        for name in names where !present.contains(name) {
            data.append(["id": name, "object": "model", "created": 0, "owned_by": "llm-sidecar"])
        }
        object["data"] = data
        return (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])).map(Array.init)
    }

    func upstreamResponseBody(_ body: ByteBuffer) {
        if deferredHead != nil || firstTokenTimer != nil { releaseDeferredHead() }
        if isStream, firstBodyAt == nil, let sentAt {
            let now = NIODeadline.now()
            firstBodyAt = now
            group?.metrics.streamFirstToken.recordNanoseconds((now - sentAt).nanoseconds)
        }
        if accounting != nil || budget != nil || charged != nil, (200..<300).contains(responseStatus) {
            // By reference, no copy: the last parts that cover `usageTailBytes`.
            usageTail.append(body)
            usageTailBytes += body.readableBytes
            while let first = usageTail.first, usageTailBytes - first.readableBytes >= Self.usageTailBytes {
                usageTailBytes -= first.readableBytes
                usageTail.removeFirst()
            }
        }
        cacheState?.flight?.publish(.body(body))
        if heldHead != nil {
            heldBody += body.readableBytesView
            return
        }
        if !detached { writeFiltered(body) }
    }

    /// Writes an answer's bytes to this client, without the usage chunk it did not ask for.
    private func writeFiltered(_ buffer: ByteBuffer) {
        guard usageFilter != nil else { return downstream.writeResponseBody(buffer) }
        let out = usageFilter!.feed(buffer.readableBytesView)
        if !out.isEmpty { downstream.writeResponseBody(ByteBuffer(bytes: out)) }
    }

    private func flushFilter() {
        guard usageFilter != nil else { return }
        let rest = usageFilter!.finish()
        if !rest.isEmpty { downstream.writeResponseBody(ByteBuffer(bytes: rest)) }
    }

    func upstreamReadComplete() {
        if !detached, heldHead == nil { downstream.flush() }
    }

    func upstreamResponseEnd(_ trailers: HTTPHeaders?) {
        guard case .forwarding(let lease) = phase else { return }
        releaseDeferredHead()
        phase = .done
        let keepAlive = lease.connection.lastResponseKeepAlive
        // A connection whose request was not sent to its end cannot carry another request.
        pool?.release(lease.connection, reusable: keepAlive.reusable && requestEnded, keepAlive: keepAlive.timeout)
        let deployment = slot.map { $0.route.name($0.index) } ?? group?.configuration.name ?? "-"
        let billedModel = slot.map { $0.route.group.deployments[$0.index].model } ?? requestModel
        releaseSlot(outcome)
        recordCompletion()
        recordSpend(deployment: deployment, billedModel: billedModel)
        settleBudget(actual: 0)  // not a 2xx answer: nothing billed
        if let c = cacheState, let flight = c.flight, let key = c.key {
            flight.publish(.end)
            c.cache.finish(.init(
                key: key, scope: c.scope, model: c.model, endpoint: Self.barePath(c.path), status: c.status, contentType: c.contentType,
                isStream: isStream, framed: c.framed, encoded: c.encoded, ttl: c.ttl, body: flight.recordedBody, coalesced: flight.joinedCount,
                usage: answerUsage, flight: c.registered ? flight : nil))
            cacheState = nil
        }
        if var head = heldHead, let names = modelsToMerge {
            heldHead = nil
            guard let list = Self.mergeModels(names, into: heldBody) else {
                // Nothing was written to the client yet: it gets a proper error, not an empty 200.
                responseStarted = false
                return answer(.upstreamProtocol("the default upstream's GET /v1/models answer is not a JSON model list (an object with a `data` array), so the [[models]] groups could not be added to it"))
            }
            let merged = ByteBuffer(bytes: list)
            head.headers.remove(name: "transfer-encoding")
            head.headers.replaceOrAdd(name: "content-length", value: String(merged.readableBytes))
            downstream.writeResponseHead(head)
            downstream.writeResponseBody(merged)
        }
        if !detached {
            flushFilter()
            downstream.finishResponse(trailers: trailers)
        }
    }

    // MARK: budgets

    /// Reserves this request's most possible cost against `[budgets]` before anything is sent.
    /// Over budget: 429 `budget_exceeded`, or (`on_exhausted = "downgrade:MODEL"`) the request
    /// goes as MODEL instead, if that fits. False when the request was answered here.
    private func reserveBudget() -> Bool {
        guard let budget else { return true }
        if let why = budget.unavailable {
            withdrawFromFlight()
            fail(.budgetUnavailable(why))
            return false
        }
        let maxTokens = requestMaxTokens
        let client = downstream.scope(of: clientHead.headers)
        let now = accounting?.clock() ?? Int64(Date().timeIntervalSince1970)
        func attempt(_ model: String?) -> Result<BudgetLedger.Reservation, BudgetLedger.RefusalError> {
            let price = prices.price(of: billedModel(for: model) ?? "")
            return budget.reserve(BudgetLedger.estimate(bodyBytes: bodyBytes, maxTokens: maxTokens, price: price), client: client,
                                  limits: budgets.limits, now: now)
        }
        if let model = requestModel, prices.price(of: billedModel(for: model) ?? model) == nil {
            // No price: the reservation would be $0 and the spend unseen by the budget.
            let allow = budgets.unpriced == .allow
            if metrics.unpriced(allow ? "allowed" : "rejected", model: model) {
                logger?.warning("request for a model without a price under a budget", metadata: [
                    "model": "\(model.prefix(200))", "budgets.unpriced": "\(budgets.unpriced.rawValue)",
                    "fix": "add [prices.\"\(model.prefix(200))\"]"])
            }
            if !allow {
                withdrawFromFlight()
                fail(.modelNotPriced(model))
                return false
            }
        }
        switch attempt(requestModel) {
        case .success(let r):
            reservation = r
            return true
        case .failure(let refusal):
            if case .downgrade(let cheaper) = budgets.onExhausted, cheaper != requestModel, case .success(let r) = attempt(cheaper) {
                reservation = r
                downgrade(to: cheaper)
                return true
            }
            withdrawFromFlight()
            fail(.budgetExceeded(refusal.refusal))
            return false
        }
    }

    /// This request will not go upstream, for a reason of its own (its budget, its model's price):
    /// a flight it leads is withdrawn, and its followers go on alone, each against its own budget.
    /// (Ending the request without this left the flight registered: every identical request
    /// after a budget refusal joined it and waited forever.)
    private func withdrawFromFlight() {
        guard let c = cacheState else { return }
        cacheState = nil
        guard let flight = c.flight else { return }
        flight.publish(.withdrawn)
        if c.registered { c.cache.endFlight(flight) }
    }

    /// The model a request for `model` is billed as: its group's first deployment's, else itself.
    private func billedModel(for model: String?) -> String? {
        guard let model else { return nil }
        return routes[model]?.group.deployments.first?.model ?? model
    }

    /// Sends the request as `model` (a group, or a model for the default upstream) instead.
    private func downgrade(to model: String) {
        downgradedFrom = requestModel
        logger?.notice("budget exhausted: request downgraded", metadata: ["from": "\(requestModel ?? "-")", "to": "\(model)"])
        if let r = routes[model] {
            route = r
        } else {
            route = nil
            if let defaultGroup { target(defaultGroup) }
            rewriteModel(to: model)
        }
        requestModel = model
    }

    /// The upstream began a 2xx answer whose usage cannot be read (cut short by either side, or in
    /// a content coding the sidecar does not read): the provider billed something, and nothing
    /// says how little, so the budget keeps the whole reservation (the most the request could
    /// cost) and spend records it, so a restart restores the same total. Before any 2xx head
    /// (an error, a refusal, a retry elsewhere) nothing was billed: the reservation is returned.
    private func settleUnmetered(deployment: String? = nil) {
        guard let r = reservation else { return }
        guard (200..<300).contains(responseStatus) else { return settleBudget(actual: 0) }
        settleBudget(actual: r.amount)
        guard r.amount > 0 else { return }
        metrics.unmeteredAnswer()
        logger?.notice("answer without readable usage: charged its reservation", metadata: [
            "model": "\(requestModel?.prefix(200) ?? "-")", "usd": "\(r.amount)", "encoded": "\(encodedAnswer)"])
        var spend = ResponseCacheStore.Spend()
        spend.requests = 1
        spend.usd = r.amount
        let deployment = deployment ?? slot.map { $0.route.name($0.index) } ?? group?.configuration.name ?? "-"
        accounting?.recordSpend(.init(model: requestModel ?? "-", deployment: deployment, client: downstream.scope(of: clientHead.headers)), spend)
    }

    /// Replaces the reservation with what the request really cost, once.
    private func settleBudget(actual: Double) {
        guard let r = reservation, let budget else { return }
        reservation = nil
        for period in budget.settle(r, actual: actual, limits: budgets.limits) {
            logger?.warning("budget alert threshold crossed", metadata: ["period": "\(period)", "alert_percent": "\(budgets.limits.alertPercent)"])
        }
    }

    /// The answer's usage and cost, for `llm-sidecar spend` (only answers from upstream: a cache
    /// hit or a coalesced follower costs nothing).
    private func recordSpend(deployment: String, billedModel: String?) {
        guard accounting != nil || budget != nil || charged != nil, (200..<300).contains(responseStatus) else { return }
        var tail: [UInt8] = []
        tail.reserveCapacity(usageTailBytes)
        for part in usageTail { tail += part.readableBytesView }
        usageTail = []
        guard !encodedAnswer, let usage = ResponseInspector.usage(body: tail, isStream: isStream) else {
            return settleUnmetered(deployment: deployment)
        }
        answerUsage = usage
        var spend = ResponseCacheStore.Spend()
        spend.requests = 1
        spend.promptTokens = usage.promptTokens
        spend.completionTokens = usage.completionTokens
        spend.cachedTokens = usage.cachedTokens
        spend.usd = prices.cost(model: billedModel ?? "", promptTokens: usage.promptTokens, completionTokens: usage.completionTokens)
        settleBudget(actual: spend.usd)
        if let c = charged {
            charged = nil
            c.route.correctTokens(c.index, by: Double(usage.promptTokens + usage.completionTokens) - c.tokens)
        }
        accounting?.recordSpend(.init(model: requestModel ?? "-", deployment: deployment, client: downstream.scope(of: clientHead.headers)), spend)
    }

    private func recordCompletion() {
        let now = NIODeadline.now()
        let total = (now - started).nanoseconds
        group?.metrics.duration.recordNanoseconds(total)
        if let sentAt {
            metrics.overhead.recordNanoseconds(max(0, total - (now - sentAt).nanoseconds))
            downstream.access.upstreamNanos = (now - sentAt).nanoseconds
        }
        if isStream, let headAt { group?.metrics.streamDuration.recordNanoseconds((now - headAt).nanoseconds) }
    }

    func upstreamFailed(_ error: ProxyError, beforeResponse: Bool) {
        firstTokenTimer?.cancel()
        firstTokenTimer = nil
        deferredHead = nil

        guard case .forwarding(let lease) = phase else { return }
        pool?.release(lease.connection, reusable: false, keepAlive: nil)
        // The server may close a keep-alive connection just as we reuse it: nothing reached the
        // provider's application, so one replay on a fresh connection is safe. Closed, refused or
        // broken before any response byte: another deployment may be tried. Nothing else is
        // retried (a POST that reached the provider may already be billed).
        let decision = RetryPolicy.afterFailure(error, responseStarted: !beforeResponse, reusedConnection: lease.reused,
                                                replayedAlready: replayed, bodyKept: replayable)
        if decision == .replayOnFreshConnection {
            replayed = true
            group?.metrics.staleConnectionRetries.increment()
            phase = .done
            self.lease(fresh: true)
            return
        }
        phase = .done
        releaseSlot(beforeResponse ? .failure : outcome)
        if decision == .tryElsewhere, retryElsewhere(reason: "connection") { return }
        answer(error)
    }

    // MARK: the client

    /// Keeps a sent part for the one replay, up to `maxReplayBytes`; beyond that, gives up the
    /// replay and the memory.
    private func keepForReplay(_ buffer: ByteBuffer) {
        if bodyBytes <= Self.maxReplayBytes {
            body.append(buffer)
        } else {
            replayable = false
            body.removeAll()
        }
    }

    /// Backpressure the other way: an upstream that cannot take more pauses reading the client's body.
    func upstreamWritabilityChanged(writable: Bool) {
        if !detached { downstream.setReadsPaused(!writable) }
    }

    /// Backpressure: a client that cannot take more pauses reading from the upstream. (A flight's
    /// followers do not pause it: what they have not read yet waits in their own buffers, at most
    /// `max_entry_bytes` for late joiners.)
    func downstreamWritabilityChanged(writable: Bool) {
        if case .forwarding(let lease) = phase, !detached { lease.connection.setReadsPaused(!writable) }
    }

    /// The client went away: stop waiting, or close the upstream connection (never pool a
    /// connection whose response was not read to its end). A flight leader with followers goes on
    /// without its client: the followers still need the answer.
    func downstreamClosed() {
        switch phase {
        case .following(let flight, let id):
            flight.leave(id)
            phase = .done
            return
        case .lookingUp, .waitingForConnection, .forwarding:
            if let c = cacheState, c.registered, let flight = c.flight {
                if !flight.leaderLeft() {
                    detached = true
                    retainedWhileDetached = self
                    if case .forwarding(let lease) = phase { lease.connection.setReadsPaused(false) }
                    return
                }
                c.cache.endFlight(flight)
                cacheState = nil
            }
            if case .lookingUp = phase { phase = .done; return }
        default:
            break
        }
        abandonUpstream()
    }

    /// Stops waiting for a connection, or closes the leased one (never pooled half-read).
    private func abandonUpstream() {
        firstTokenTimer?.cancel()
        firstTokenTimer = nil
        switch phase {
        case .waitingForConnection(let waiter):
            pool?.cancel(waiter)
        case .forwarding(let lease):
            drop(lease)
        case .backingOff(let timer):
            timer.cancel()
        case .waitingForDeployment(let r, let id, let timer):
            timer.cancel()
            _ = r.cancel(waiter: id)  // if already granted, the grant sees we left and gives it back
        case .done, .collecting, .lookingUp:
            break
        case .following(let flight, let id):
            flight.leave(id)
        }
        phase = .done
        releaseSlot(.neutral)
        settleUnmetered()
    }

    // MARK: the single exit for failures

    private func fail(_ error: ProxyError) {
        abandonUpstream()
        answer(error)
    }

    private func answer(_ error: ProxyError) {
        settleUnmetered()
        if let c = cacheState, let flight = c.flight {
            // Followers get the same end: the same error, or the same cut.
            flight.publish(responseStarted ? .aborted : .failed(error))
            if c.registered { c.cache.endFlight(flight) }
            if flight.joinedCount > 0 { c.cache.finish(.init(
                key: flight.key, scope: c.scope, model: c.model, endpoint: "", status: 0, contentType: nil, isStream: false, framed: false,
                ttl: 0, body: nil, coalesced: flight.joinedCount, usage: nil, flight: nil)) }
            cacheState = nil
        }
        if detached { return }
        metrics.error(error.codeString)
        if !responseStarted { group?.metrics.response(status: error.status) }
        if responseStarted {
            downstream.abortResponse()
        } else {
            // 413: the rest of a too-large body is not worth reading; close instead.
            downstream.respondWithError(error, closeAfter: error.status == 413,
                                        extraHeaders: attempt > 0 ? [("x-sidecar-attempts", String(attempt))] : [])
        }
    }
}
