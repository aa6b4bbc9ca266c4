import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore
import SidecarStore
import SidecarTLS
import Foundation

/// One client request on its way through the proxy. Where it is and what has happened to it is
/// `ExchangeStateMachine` (SidecarCore, pure, tested on its own); this class is its IO shell: it
/// holds the leases, timers, buffers and flights, tells the machine what happened, and carries
/// out what it decides. The phases:
///
///   `start` (choose the upstream, rewrite the head) -> `lease` (a pooled connection)
///   -> `send` (head, body so far, then the rest as it arrives) -> `upstreamResponse*` (stream back)
///   -> `finish` (release the connection, end the client's response)
///
/// A failure in any phase goes to `fail`, the single exit that either answers with an
/// OpenAI-shaped error (nothing was sent to the client yet) or cuts the client's response (something
/// was, so the client must see an abnormal end, never a fake complete answer). A failed attempt
/// first asks the machine's one retry policy (`attemptFailed`): replay once on a fresh connection,
/// another deployment, or that exit.
///
/// A request the cache may answer goes through more phases first (docs/caching.md):
///
///   `collectingBody` (the key is a hash of it) -> `decide` -> a hot-tier hit is replayed at once;
///   an identical request in flight is followed (`followingFlight`); otherwise this request leads a
///   flight: `cacheLookup` (SQLite, off the loop) -> replay a hit, or go upstream and publish the
///   answer to the followers as it arrives, then store it if it is complete.
///
/// Lives on the client connection's event loop, as does its pooled upstream connection.
///
/// This file holds the request's state and start; each phase is a file of its own:
/// `+Admit` (key it: look up, follow or go upstream), `+Cache` (replay, follow a flight),
/// `+Routing` (choose a deployment, wait, retry elsewhere), `+Upstream` (lease, send, the
/// response), `+Models` (the merged model list), `+Budget` (reserve, settle, spend), `+Client`
/// (the client's side and the single exit for failures).
final class ProxyExchange: UpstreamResponseDelegate {
    /// The cache's view of this request; nil when the cache is off or the request is not a candidate.
    struct CacheState {
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
        /// The body asks for a stream (`"stream": true`): never claimed in the shared tier.
        var stream = false
        /// The shared tier was asked already (after the local miss).
        var sharedAsked = false
    }

    let downstream: DownstreamHandler
    /// The API the client speaks (from its path and headers): how its answer's usage and end are read.
    let dialect: APIDialect
    /// Whether the provider bills this request (`APIDialect.isBilled`): token counting is free.
    let billed: Bool
    /// Where the request goes: the default upstream, or (routed) the chosen deployment's. nil
    /// until routing decides when there is no default upstream.
    var group: UpstreamGroup?
    var pool: UpstreamPool?
    let clientHead: HTTPRequestHead
    let defaultGroup: UpstreamGroup?
    /// `[[models]]` groups of the snapshot this request started with.
    let routes: [String: ModelRoute]
    /// The group this request's model names, once the body is read.
    var route: ModelRoute?
    /// The deployment slot taken for this request: given back exactly once (`releaseSlot`).
    var slot: (route: ModelRoute, index: Int)?
    var responseStatus = 0
    /// The answer came in a content coding (`Content-Encoding` other than identity) although the
    /// sidecar asked for none: forwarded as it is, never cached, its usage unread.
    var encodedAnswer = false
    var retryAfter: TimeAmount?
    let maxBodyBytes: Int
    let metrics: SidecarMetrics
    /// The head sent upstream: the client's, until `target` aims the request at a group; then
    /// the group's (host, key, path prefix), built when first used (a cache hit never builds it).
    var upstreamHead: HTTPRequestHead {
        get {
            if let head = builtUpstreamHead { return head }
            let head = group.map(upstreamHead(for:)) ?? clientHead
            builtUpstreamHead = head
            return head
        }
        set { builtUpstreamHead = newValue }
    }
    private var builtUpstreamHead: HTTPRequestHead?
    // Timings, for the metrics: start, request sent upstream, response head, first body byte.
    let started = NIODeadline.now()
    var sentAt: NIODeadline?
    var headAt: NIODeadline?
    var firstBodyAt: NIODeadline?
    var isStream = false
    /// Where the request is and what has happened to it (`ExchangeStateMachine`): this class
    /// holds only the IO handles below, and carries out what the machine decides.
    var machine: ExchangeStateMachine {
        didSet { if machine.isFinished, retainedWhileDetached != nil { releaseRetentionIfStillDone() } }
    }
    // The IO each phase holds, given up by `giveUp` when the machine says so.
    /// `waitingForConnection`: the pool's ticket.
    var connectionWaiter: ConnectionPoolStateMachine.WaiterID?
    /// `upstreamRequestSent` / `responseStreaming`: the leased connection.
    var upstream: UpstreamPool.Lease?
    /// `backingOff`: the timer of the next attempt.
    var backoffTimer: Scheduled<Void>?
    /// `waitingForDeployment`: the group's queue ticket and its timeout.
    var deploymentWait: (route: ModelRoute, id: Int, timer: Scheduled<Void>)?
    /// `followingFlight`: the flight and this follower's id in it.
    var followed: (flight: Flight, id: Int)?
    /// A detached leader is referenced by nobody else (the upstream connection's delegate is weak):
    /// it keeps itself alive until its answer is complete.
    var retainedWhileDetached: ProxyExchange?

    /// Lets a detached leader go once it has stayed finished to the end of the current event.
    /// (A stale-connection replay, a retry on another deployment, or a rate or queue wait no
    /// longer pass through the end on their way to the next phase: `finished` is terminal. The
    /// release still waits for the end of the event, so nothing runs on a freed leader.)
    func releaseRetentionIfStillDone() {
        downstream.eventLoop.assumeIsolated().execute { [self] in
            if machine.isFinished { retainedWhileDetached = nil }
        }
    }
    /// Body parts received so far, kept (by reference, not copied) until the response starts so
    /// that a request that hit a stale keep-alive connection can be replayed once. Only the first
    /// `maxReplayBytes` are kept: a larger body is streamed without a replay safety net.
    var body: [ByteBuffer] = []
    static let maxReplayBytes = 1 << 20
    /// A cache candidate's body is held until its end to compute the key; a larger body is
    /// forwarded as it arrives instead (uncached), so a huge upload keeps its backpressure.
    static let maxKeyedBodyBytes = 8 << 20
    var bodyBytes = 0
    /// Response bytes reached the client (or the followers): read by the client's handler too.
    var responseStarted: Bool { machine.responseStarted }
    var requestEnded: Bool { machine.requestReceived }
    var cacheState: CacheState?
    /// `[budgets]`: the shared ledger (nil without budgets), the limits, and this request's reservation.
    let budget: BudgetBox?
    let budgets: SidecarConfiguration.Budgets
    let logger: Logger?
    var reservation: BudgetLedger.Reservation?
    /// This request already asked the fleet for a larger budget slice (it asks once).
    var askedFleet = false
    /// `[fleet]` client limit: the request waits for the fleet's answer about its client's
    /// tokens; nothing is looked up or sent until `admitted()`.
    var admissionPending = false
    var decideDeferred = false
    var leaseDeferred = false
    /// ... and that round did not reach the fleet database (a refusal is then 503, not 429).
    var fleetRoundFailed = false
    var downgradedFrom: String?
    /// Where spend is recorded (the cache's database); nil without one.
    let accounting: ResponseCache?
    let prices: PriceTable
    /// The request's model, for spend: the body's top-level `model`.
    var requestModel: String?
    /// A streamed chat completion whose client did not ask for usage: the usage chunk (which the
    /// sidecar asks upstream for, to account for the stream) is removed from what it receives.
    var usageFilter: SSEUsageFilter?
    /// The answer's usage, once read (handed to the cache, which would otherwise parse it again).
    var answerUsage: ResponseInspector.Usage?
    /// The last parts of a 2xx answer: where its `usage` is (for spend accounting).
    var usageTail: Deque<ByteBuffer> = []
    var usageTailBytes = 0
    static let usageTailBytes = 16 << 10
    /// The first bytes of an Anthropic stream: its `message_start` states the input tokens, and a
    /// long stream's tail no longer holds it.
    var usageHead: [UInt8] = []
    static let usageHeadBytes = 8 << 10
    /// `x-sidecar-cache` of the answer.
    var cacheLabel = "bypass"
    /// The leader's client went away while followers still wait: the call goes on without it.
    var detached: Bool { machine.detached }

    init(downstream: DownstreamHandler, head: HTTPRequestHead, dialect: APIDialect = .openai, group: UpstreamGroup?, routes: [String: ModelRoute],
         maxBodyBytes: Int, metrics: SidecarMetrics, cache: ResponseCache?, cacheSettings: SidecarConfiguration.Cache, prices: PriceTable = PriceTable(),
         budget: BudgetBox? = nil, budgets: SidecarConfiguration.Budgets = .init(), logger: Logger? = nil,
         span: SidecarSpan? = nil, tracer: SidecarTracer? = nil) {
        self.metrics = metrics
        self.span = span
        self.tracer = tracer
        self.dialect = dialect
        // Token counting is free: no reservation, no spend.
        let bare = Self.barePath(head.uri)
        self.billed = APIDialect.isBilled(path: bare)
        self.budget = budgets.limits.isEmpty || !billed ? nil : budget
        self.budgets = budgets
        self.logger = logger
        self.accounting = cache
        self.prices = prices
        self.downstream = downstream
        self.clientHead = head
        self.routes = routes
        self.maxBodyBytes = maxBodyBytes
        self.defaultGroup = group
        // The whole body first: a cache candidate's key is its hash, routing needs its model, and
        // a budget needs it (and max_tokens) to reserve the most the request can cost. Except an
        // upload (`multipart/form-data`: audio, files), which streams through as it arrives: it
        // is never cached, names no JSON model (it goes to the default upstream), and is not
        // priced by tokens (docs/dialects.md, "Uploads").
        let upload = head.headers.first(name: "content-type").map { $0.utf8.count >= 10 && HeaderPolicy.equalsIgnoringASCIICase($0.prefix(10), "multipart/") } ?? false
        let cacheCandidate = !upload && cache != nil && cacheSettings.mode != .off && CachePolicy.isCacheable(path: bare)
        self.machine = ExchangeStateMachine(collectsBody: head.method == .POST && !upload && (cacheCandidate || !routes.isEmpty || self.budget != nil))
        // A routed request is aimed once its body names the model (`decide`); others now.
        if let group, routes.isEmpty || head.method != .POST || upload { target(group) }
        if let cache, cacheCandidate, head.method == .POST {
            cacheState = CacheState(
                cache: cache, settings: cacheSettings, method: head.method.rawValue, path: head.uri,
                cacheControl: head.headers.contains(name: "cache-control") ? head.headers[canonicalForm: "cache-control"].map(String.init) : [],
                ttlHeader: head.headers.first(name: "x-sidecar-cache-ttl"), headers: head.headers)
        } else {
            metrics.cacheResult("bypass")
            // Counted in /stats too (as model "-": the body is not read), so that /stats and
            // /metrics count the same requests.
            if let cache, cacheSettings.mode != .off { cache.count(model: "-") { $0.bypasses += 1 } }
        }
    }

    /// Sends this request to `group`: its host, key and path prefix.
    func target(_ group: UpstreamGroup) {
        self.group = group
        self.pool = group.pool(on: downstream.eventLoop)
        builtUpstreamHead = nil  // built for this group when used
    }

    private func upstreamHead(for group: UpstreamGroup) -> HTTPRequestHead {
        let prefix = group.configuration.url.pathPrefix
        return HTTPRequestHead(
            version: .http1_1, method: clientHead.method, uri: prefix.isEmpty ? clientHead.uri : prefix + clientHead.uri,
            headers: HeaderPolicy.upstreamRequestHeaders(from: clientHead.headers, host: group.hostHeader, credential: group.credential,
                                                         dialect: group.configuration.api))
    }

    static func barePath(_ uri: String) -> Substring {
        guard let q = uri.utf8.firstIndex(of: UInt8(ascii: "?")) else { return uri[...] }
        return uri[..<q]
    }

    /// A scope's name in keys, the store, limits and spend: its material hashed (SHA-256).
    static func name(of scope: CacheScope) -> String {
        scope.name { SHA256.hash($0) }
    }

    // MARK: state of the later phases (their code is in the ProxyExchange+*.swift files)

    /// The request's estimated tokens (prompt at 4 bytes a token, plus its max_tokens or 4,096),
    /// charged to a deployment's `tpm` and corrected by the answer's usage.
    lazy var estimatedTokens: Double = {
        let t = BudgetLedger.tokens(bodyBytes: bodyBytes, maxTokens: requestMaxTokens)
        return Double(t.prompt + t.completion)
    }()
    /// The body's `max_tokens` (or `max_completion_tokens` / `max_output_tokens`), read once.
    lazy var requestMaxTokens: Int? = Self.maxTokens(in: body.reduce(into: [UInt8]()) { $0 += $1.readableBytesView })
    /// The deployment this request's tokens were charged to.
    var charged: (route: ModelRoute, index: Int, tokens: Double)?
    /// When a request that waits for a deployment's rate gives up.
    var rateWaitDeadline: NIODeadline?
    /// Deployments this request has tried, by group.
    var tried: [(group: ObjectIdentifier, index: Int)] = []
    /// Attempts made on deployments (routed requests).
    var attempt: Int { machine.attempts }
    /// A routed request's limits on attempts elsewhere; nil when not routed.
    var retryLimits: ExchangeStateMachine.RetryLimits? {
        route.map { .init(maxAttempts: $0.group.maxAttempts, deadline: $0.group.retryDeadline) }
    }
    var random = SystemRandomNumberGenerator()
    var bodyRewritten = false
    var wantsStream = false
    var firstTokenTimer: Scheduled<Void>?
    /// The response head of a stream whose first event has not arrived yet: nothing reaches the
    /// client (or a flight's followers) before it, so the attempt can still move elsewhere.
    var deferredHead: HTTPResponseHead?
    /// The group names to add to the default upstream's `GET /v1/models` answer; nil otherwise.
    var modelsToMerge: [String]?
    var heldHead: HTTPResponseHead?
    /// A routed Responses API request: the answer it continues (`previous_response_id`), and
    /// whether its own answer's id is still to be remembered for the requests that will continue it.
    var previousResponseID: String?
    var remembersResponseID = false
    /// `[otel]`: the request's span (the connection's handler ends it) and the tracer of its
    /// children: the cache lookup's and the current attempt's, while they last.
    let span: SidecarSpan?
    let tracer: SidecarTracer?
    var cacheSpan: SidecarSpan?
    var attemptSpan: SidecarSpan?
    var sentWallNanos: UInt64 = 0
    /// A routed request's prompt prefix, for prompt-cache affinity (nil: none, or affinity off).
    var promptPrefix: PromptPrefix?
    var heldBody: [UInt8] = []
}
