import Logging
import NIOConcurrencyHelpers
import NIOCore
import SidecarCore
import Synchronization

/// One configuration snapshot: the configuration and the upstream groups built from it.
/// Immutable; a reload builds a new one. A request keeps the snapshot it started with, so
/// in-flight requests finish on the old configuration while new ones use the new.
final class ProxyRuntime: Sendable {
    let configuration: SidecarConfiguration
    let groups: [String: UpstreamGroup]
    let defaultUpstream: UpstreamGroup?
    /// Per client dialect, the upstream of that dialect a request goes to when no `[[models]]`
    /// group names its model: `server.default_upstream` if it speaks it, else (for the dialects
    /// other than OpenAI's, whose requests only ever went to the default) the only upstream that
    /// does; none when several do and none is the default.
    let dialectUpstreams: [APIDialect: UpstreamGroup]
    /// `[[models]]` groups by name; empty when none is configured.
    let routes: [String: ModelRoute]
    /// Built-in prices with the file's `[prices]` on top (for spend).
    let priceTable: PriceTable
    /// `[limits] client_rpm`, shared by all loops; nil when there is no limit.
    let clientLimits: ClientLimits?
    let maxBodyBytes: Int
    let maxHeaderFields: Int
    let clientIdleTimeout: TimeAmount
    /// `Bearer TOKEN` that lets a non-loopback client use the admin endpoints; nil: loopback only.
    let adminAuthorization: String?
    /// `[otel]`: the tracer whose spans go to the collector; nil: no tracing, no spans.
    let tracer: SidecarTracer?

    init(configuration: SidecarConfiguration, groups: [String: UpstreamGroup], adminToken: String?, previous: ProxyRuntime? = nil,
         tracer: SidecarTracer? = nil) {
        self.configuration = configuration
        self.tracer = tracer
        self.adminAuthorization = adminToken.map { "Bearer \($0)" }
        self.groups = groups
        let defaultUpstream = configuration.server.defaultUpstream.flatMap { groups[$0] }
        self.defaultUpstream = defaultUpstream
        var dialectUpstreams: [APIDialect: UpstreamGroup] = [:]
        for dialect in APIDialect.allCases {
            let speakers = configuration.upstreams.filter { $0.api == dialect }
            if let d = defaultUpstream, d.configuration.api == dialect {
                dialectUpstreams[dialect] = d
            } else if dialect != .openai, speakers.count == 1 {
                dialectUpstreams[dialect] = groups[speakers[0].name]
            }
        }
        self.dialectUpstreams = dialectUpstreams
        var routes: [String: ModelRoute] = [:]
        for m in configuration.models {
            // Validation guarantees every deployment names an upstream.
            routes[m.name] = ModelRoute(group: m, upstreams: m.deployments.compactMap { groups[$0.upstream] })
        }
        self.routes = routes
        self.priceTable = configuration.priceTable
        if let rpm = configuration.limits.clientRPM {
            // A reload that leaves the limits alone keeps the buckets (a reload is no way around a limit).
            if let old = previous?.clientLimits, previous?.configuration.limits == configuration.limits {
                clientLimits = old
            } else {
                clientLimits = ClientLimits(perMinute: rpm, burst: configuration.limits.clientBurst ?? rpm)
            }
        } else {
            clientLimits = nil
        }
        self.maxBodyBytes = configuration.server.maxBodyBytes
        self.maxHeaderFields = configuration.server.maxHeaderFields
        self.clientIdleTimeout = configuration.server.clientIdleTimeout
    }

    /// The upstream a request of `dialect` goes to without a `[[models]]` group. A `/v1` request
    /// in a dialect no upstream declares goes to the default upstream, as every `/v1` request did
    /// before upstreams had dialects (clients' own keys pass through to it unchanged).
    func upstream(for dialect: APIDialect) -> UpstreamGroup? {
        if let u = dialectUpstreams[dialect] { return u }
        return dialect == .openai || dialect == .anthropic ? defaultUpstream : nil
    }
}

/// What every client connection shares for the server's whole life: the current snapshot (swapped
/// by reloads) and the counters. Per request: one relaxed atomic load (the snapshot's generation;
/// the lock is taken only after a reload) and the in-flight counters.
final class ServerState: Sendable {
    private let current: NIOLockedValueBox<ProxyRuntime>
    /// Bumped by every `swap`, after the new snapshot is in place.
    private let generation = Atomic<Int>(0)
    private let inFlight = Atomic<Int>(0)
    private let draining = Atomic<Bool>(false)
    private let total = Atomic<Int>(0)
    let metrics: SidecarMetrics
    let logger: Logger
    /// The response cache; nil when the daemon started with `cache.mode = "off"`.
    let cache: ResponseCache?
    /// What was spent and reserved today and this month, for `[budgets]`.
    let budget = BudgetBox()
    /// `[fleet]`: budgets, limits, spend and the shared cache tier through PostgreSQL; nil: alone.
    let fleet: FleetAgent?

    init(runtime: ProxyRuntime, metrics: SidecarMetrics, logger: Logger, cache: ResponseCache?, fleet: FleetAgent? = nil) {
        current = NIOLockedValueBox(runtime)
        self.fleet = fleet
        self.metrics = metrics
        self.logger = logger
        self.cache = cache
    }

    var runtime: ProxyRuntime { current.withLockedValue { $0 } }

    /// The current snapshot and its generation, read together.
    var snapshot: (runtime: ProxyRuntime, generation: Int) {
        current.withLockedValue { ($0, generation.load(ordering: .relaxed)) }
    }

    /// `snapshot` if `held` is not the current generation, else nil (keep the one held): a
    /// connection already holding the current snapshot does not take the lock.
    func runtime(ifNewerThan held: Int) -> (runtime: ProxyRuntime, generation: Int)? {
        guard generation.load(ordering: .acquiring) != held else { return nil }
        return snapshot
    }

    /// Installs `runtime` for new requests; returns the one it replaces.
    func swap(_ runtime: ProxyRuntime) -> ProxyRuntime {
        current.withLockedValue { old in
            let previous = old
            old = runtime
            generation.wrappingAdd(1, ordering: .releasing)
            return previous
        }
    }

    func requestStarted() {
        inFlight.wrappingAdd(1, ordering: .relaxed)
        total.wrappingAdd(1, ordering: .relaxed)
    }

    func requestFinished() { inFlight.wrappingSubtract(1, ordering: .relaxed) }

    var requestsInFlight: Int { inFlight.load(ordering: .relaxed) }
    var requestsTotal: Int { total.load(ordering: .relaxed) }

    var isDraining: Bool { draining.load(ordering: .relaxed) }
    func startDraining() { draining.store(true, ordering: .relaxed) }
}

/// The per-client request limiter behind one short lock.
final class ClientLimits: Sendable {
    let perMinute: Int
    let burst: Int
    private let limiter: NIOLockedValueBox<ClientRateLimiter>

    init(perMinute: Int, burst: Int) {
        self.perMinute = perMinute
        self.burst = burst
        limiter = NIOLockedValueBox(ClientRateLimiter(perMinute: perMinute, burst: burst))
    }

    func request(client: String, now: NIODeadline = .now()) -> ClientRateLimiter.Verdict {
        limiter.withLockedValue { $0.request(client: client, now: now) }
    }
}

/// The budget ledger behind one short lock, for every loop, for the server's whole life (a
/// reload changes the limits, never what was spent).
final class BudgetBox: Sendable {
    private let ledger = NIOLockedValueBox(BudgetLedger())
    /// Why spend could not be restored from the database, while it cannot: budgets are then
    /// closed (a budget that restarted from $0 could be spent twice over), never silently reset.
    private let problem = NIOLockedValueBox<String?>(nil)

    /// Non-nil while budgets are closed because spend was not restored.
    var unavailable: String? { problem.withLockedValue { $0 } }

    func close(_ why: String) { problem.withLockedValue { $0 = why } }

    func reserve(_ amount: Double, client: String, limits: BudgetLedger.Limits, now: Int64,
                 fleet: FleetAgent? = nil) -> Result<BudgetLedger.Reservation, BudgetLedger.RefusalError> {
        let day = ResponseCache.day(now)
        let month = UTCDay.month(ofDay: day)
        // The client's slice only under a per-client budget (its scope name is built per lookup).
        let allotments = fleet?.allotments(day: day, month: month, client: limits.clientDailyUSD == nil ? nil : client)
        return ledger.withLockedValue { $0.reserve(amount, client: client, limits: limits, day: day, month: month, fleet: allotments) }
    }

    func settle(_ r: BudgetLedger.Reservation, actual: Double, limits: BudgetLedger.Limits) -> [String] {
        ledger.withLockedValue { $0.settle(r, actual: actual, limits: limits) }
    }

    func load(day: String, spentDay: Double, spentMonth: Double, clients: [String: Double]) {
        ledger.withLockedValue { $0.load(day: day, month: UTCDay.month(ofDay: day), spentDay: spentDay, spentMonth: spentMonth, clients: clients) }
        problem.withLockedValue { $0 = nil }
    }

    var totals: (day: Double, month: Double, reservedDay: Double, reservedMonth: Double) { ledger.withLockedValue { $0.totals } }

    /// This node's use of each fleet budget scope (`[fleet]`).
    func fleetUse(limits: BudgetLedger.Limits) -> [FleetBudgetScope: Double] { ledger.withLockedValue { $0.fleetUse(limits: limits) } }
}
