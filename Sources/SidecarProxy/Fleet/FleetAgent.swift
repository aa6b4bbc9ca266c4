import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import SidecarCore
import SidecarFleet
import SidecarStore

/// Fleet mode's IO layer (docs/fleet.md): owns the connection to the fleet database and runs one
/// sync round every `sync_interval` (heartbeat, budget slices renewed with this node's use,
/// client tokens given back or charged, outbox pushed). The decisions are the pure state
/// machines' (`FleetBudgetLeases`, `FleetRateLeases`); this class only sends their claims and
/// feeds the answers back. Nothing here runs per request except `admit` (a lock and a lookup).
final class FleetAgent: Sendable {
    let database: FleetDatabase
    let settings: SidecarConfiguration.Fleet
    let node: String
    let logger: Logger
    let metrics: FleetMetrics
    private let budgetLeases: NIOLockedValueBox<FleetBudgetLeases>
    private let rateLeases: NIOLockedValueBox<(rpm: Int, burst: Int, state: FleetRateLeases)?>
    /// While the database is away (`on_unavailable = "local"`): each node admits its share of a
    /// client's limit (`client_rpm` / nodes seen alive), so the fleet stays within the limit.
    private let fallback: NIOLockedValueBox<(nodes: Int, limiter: ClientRateLimiter?)>
    private let link = NIOLockedValueBox(Link())
    /// Requests waiting for an answer about their client's tokens.
    private let rateWaiters = NIOLockedValueBox<[String: [@Sendable (ClientRateLimiter.Verdict) -> Void]]>([:])
    private let round = NIOLockedValueBox(Round())
    /// What the agent reads of the server: the budget ledger, the configuration, the cache database.
    private let source: NIOLockedValueBox<Source?>

    struct Source {
        var budget: BudgetBox
        var limits: @Sendable () -> BudgetLedger.Limits
        var cache: ResponseCache?
    }

    /// Whether the database answers, and since when it does not.
    struct Link {
        var up = false
        var since: Date?
        var problem: String? = "not connected yet"
        var pushed: Int64?
        var migrated = false
        var nodesAlive = 1
        /// A clean stop began: every round from now on gives the slices back.
        var stopping = false
    }

    /// The budget round in flight and who waits for one.
    struct Round {
        var running = false
        /// Wait for the round after the running one (their need was not in it).
        var next: [@Sendable (Bool) -> Void] = []
        var current: [@Sendable (Bool) -> Void] = []
    }

    init(database: FleetDatabase, settings: SidecarConfiguration.Fleet, node: String, logger: Logger, metrics: FleetMetrics) {
        self.database = database
        self.settings = settings
        self.node = node
        self.logger = logger
        self.metrics = metrics
        budgetLeases = NIOLockedValueBox(FleetBudgetLeases(settings: .init(
            leasePeriod: settings.leasePeriod, slice: settings.budgetSlice, idleAfter: .nanoseconds(2 * settings.syncInterval.nanoseconds))))
        rateLeases = NIOLockedValueBox(nil)
        fallback = NIOLockedValueBox((1, nil))
        source = NIOLockedValueBox(nil)
    }

    func attach(budget: BudgetBox, limits: @escaping @Sendable () -> BudgetLedger.Limits, cache: ResponseCache?) {
        source.withLockedValue { $0 = Source(budget: budget, limits: limits, cache: cache) }
        cache?.writesOutbox.withLockedValue { $0 = true }
    }

    // MARK: state

    /// nil while the database answers; else why not (for `/readyz`, errors and logs).
    var problem: String? { link.withLockedValue { $0.up ? nil : $0.problem } }
    var isUp: Bool { link.withLockedValue { $0.up } }

    /// Whether a request that needs the fleet's budgets or limits is refused outright now.
    var rejects: String? {
        guard settings.onUnavailable == .reject else { return nil }
        return problem
    }

    func connected() {
        let was = link.withLockedValue { l -> Bool in
            defer { l.up = true; l.problem = nil; l.since = nil }
            return l.up
        }
        metrics.connected.set(1)
        if !was { logger.notice("fleet database connected: budgets, limits, spend and cache are shared", metadata: ["node": "\(node)"]) }
    }

    func lost(_ error: any Error) {
        // Every caller's sentence names the fleet database already ("fleet database unavailable: ...").
        let why = (error as? FleetError)?.reason ?? "\(error)"
        let was = link.withLockedValue { l -> Bool in
            defer {
                l.up = false
                l.problem = why
                if l.since == nil { l.since = Date() }
            }
            return l.up || l.since == nil
        }
        metrics.connected.set(0)
        metrics.errors.increment()
        if was {
            logger.error("fleet database unavailable", metadata: [
                "node": "\(node)", "reason": "\(why)", "on_unavailable": "\(settings.onUnavailable.rawValue)",
                "effect": "\(settings.onUnavailable == .local ? "serving from local state and the leases held until they lapse" : "requests under fleet budgets or limits get 503 fleet_unavailable")"])
        }
    }

    var isMigrated: Bool { link.withLockedValue { $0.migrated } }
    var isStopping: Bool { link.withLockedValue { $0.stopping } }
    func markStopping() { link.withLockedValue { $0.stopping = true } }
    func markMigrated() { link.withLockedValue { $0.migrated = true } }
    var pushedSequence: Int64? { link.withLockedValue { $0.pushed } }
    func setPushed(_ seq: Int64) { link.withLockedValue { $0.pushed = seq } }
    var cacheForOutbox: ResponseCache? { source.withLockedValue { $0?.cache } }
    /// Nodes that sent a heartbeat within three lease periods (the fallback rate limit's divisor).
    func setNodesAlive(_ n: Int) {
        link.withLockedValue { $0.nodesAlive = max(1, n) }
        fallback.withLockedValue { f in
            if f.nodes != max(1, n) { f = (max(1, n), nil) }
        }
    }

    // MARK: budgets

    /// This node's usable slices now (expired ones are $0).
    func allotments(day: String, month: String, client: String?) -> BudgetLedger.Allotments {
        let now = NIODeadline.now()
        return budgetLeases.withLockedValue { $0.allotments(day: day, month: month, client: client, now: now) }
    }

    /// Whether asking the fleet for `scope` again can help a reservation of `need` in all.
    func mayGrant(_ scope: FleetBudgetScope, need: Double) -> Bool {
        isUp && budgetLeases.withLockedValue { $0.fleetHasRoom(scope, beyond: need - ($0.allotment(scope) ?? 0)) }
    }

    /// The `fleet` section of `/stats`: this node, whether the database answers, its budget slices.
    func report(limits: BudgetLedger.Limits) -> [String: any Sendable] {
        var out: [String: any Sendable] = ["node": node, "connected": isUp, "on_unavailable": settings.onUnavailable.rawValue]
        if let problem { out["problem"] = problem }
        if let seq = pushedSequence { out["outbox_applied_seq"] = seq }
        let now = Int64(Date().timeIntervalSince1970)
        let day = UTCDay.day(now), month = UTCDay.month(ofDay: day)
        let slices = budgetLeases.withLockedValue { l -> [String: any Sendable] in
            var s: [String: any Sendable] = [:]
            if limits.dailyUSD != nil, let a = l.allotment(.init(scope: "day", period: day)) { s["day_usd"] = a }
            if limits.monthlyUSD != nil, let a = l.allotment(.init(scope: "month", period: month)) { s["month_usd"] = a }
            return s
        }
        if !slices.isEmpty { out["budget_slices"] = slices }
        return out
    }

    /// Why a reservation of `scope` was refused, for the log line.
    func describe(_ scope: FleetBudgetScope, need: Double, asked: Bool) -> Logger.Metadata {
        budgetLeases.withLockedValue { l in
            var m: Logger.Metadata = ["scope": "\(scope.scope)", "period": "\(scope.period)", "need_usd": "\(need)", "asked": "\(asked)"]
            if let a = l.allotment(scope) { m["slice_usd"] = "\(a)" }
            if let f = l.fleet[scope] { m["fleet_granted_usd"] = "\(f.granted)"; m["limit_usd"] = "\(f.limit)" }
            return m
        }
    }

    /// A reservation did not fit this node's slice of `scope`: a budget round is run now (or the
    /// one after the running one), and `then` is called when it has answered (or failed).
    /// `then` learns whether the round reached the database.
    func ask(_ scope: FleetBudgetScope, total: Double, then: @escaping @Sendable (Bool) -> Void) {
        budgetLeases.withLockedValue { $0.need(scope, total: total) }
        askRound(then: then)
    }

    /// Runs a budget round (or joins the running one) with no new need: the periodic renewal.
    func askRound(then: @escaping @Sendable (Bool) -> Void) {
        let start = round.withLockedValue { r -> Bool in
            if r.running {
                r.next.append(then)
                return false
            }
            r.running = true
            r.current.append(then)
            return true
        }
        if start { Task { await self.budgetRound() } }
    }

    func releaseRates() -> [FleetRateClaim] { rateLeases.withLockedValue { $0?.state.releaseAll() ?? [] } }

    /// The periodic round of client tokens: idle clients' tokens go back, debts are charged.
    func syncRates() async {
        let claims = rateLeases.withLockedValue { $0?.state.sync(now: .now()) ?? [] }
        await leaseRates(claims)
    }

    /// One budget round: this node's use of every scope goes to the fleet with the headroom it
    /// wants; the answer replaces its slices.
    private func budgetRound() async {
        while true {
            let reached = await leaseBudgets(releasing: isStopping)
            let waiters = round.withLockedValue { r -> [@Sendable (Bool) -> Void] in
                let done = r.current
                r.current = r.next
                r.next = []
                if r.current.isEmpty { r.running = false }
                return done
            }
            waiters.forEach { $0(reached) }
            if round.withLockedValue({ !$0.running }) { return }
        }
    }

    /// Whether the database answered (true when there was nothing to ask).
    @discardableResult
    func leaseBudgets(releasing: Bool = false) async -> Bool {
        guard let src = source.withLockedValue({ $0 }) else { return true }
        let limits = src.limits()
        guard !limits.isEmpty else { return true }
        let use = src.budget.fleetUse(limits: limits)
        let now = NIODeadline.now()
        let claims = budgetLeases.withLockedValue { $0.claims(use: use, limit: { Self.limit(of: $0, in: limits) }, now: now, releasing: releasing) }
        guard !claims.isEmpty else { return true }
        let sent = NIODeadline.now()
        do {
            metrics.statements.increment()
            let grants = try await database.leaseBudgets(claims, leaseSeconds: Double(settings.leasePeriod.nanoseconds) / 1e9)
            budgetLeases.withLockedValue { $0.granted(grants, sentAt: sent) }
            for g in grants where g.scope.scope == "day" || g.scope.scope == "month" {
                metrics.allotment(g.scope.scope).set(g.allotment)
                metrics.fleetGranted(g.scope.scope).set(g.fleetGranted)
            }
            connected()
            return true
        } catch {
            budgetLeases.withLockedValue { $0.roundFailed(needs: claims) }
            lost(error)
            return false
        }
    }

    static func limit(of scope: FleetBudgetScope, in limits: BudgetLedger.Limits) -> Double? {
        switch scope.scope {
        case "day": return limits.dailyUSD
        case "month": return limits.monthlyUSD
        default: return scope.scope.hasPrefix("client:") ? limits.clientDailyUSD : nil
        }
    }

    // MARK: client rate limits

    /// What `admit` decided: now, or later (through `resume`, called once, on any thread).
    enum Admission {
        case decided(ClientRateLimiter.Verdict)
        case waiting
    }

    /// Admits one request of `client` under `client_rpm` for the whole fleet: from this node's
    /// slice of the client's tokens (no database trip; a new slice is asked for in the background
    /// when it runs low), or, holding none, after the node's ask for some has been answered.
    /// `resume` makes the callback of a request that waits: it is called only then, so an
    /// admission decided at once (nearly all of them) allocates nothing.
    func admit(client: String, perMinute: Int, burst: Int, resume: () -> @Sendable (ClientRateLimiter.Verdict) -> Void) -> Admission {
        let now = NIODeadline.now()
        if !isUp, link.withLockedValue({ $0.migrated || $0.since != nil }) {
            return .decided(fallbackVerdict(client: client, perMinute: perMinute, burst: burst, now: now))
        }
        let verdict = rateLeases.withLockedValue { r -> FleetRateLeases.Verdict in
            if r == nil || r!.rpm != perMinute || r!.burst != burst { r = (perMinute, burst, FleetRateLeases(perMinute: perMinute, burst: burst)) }
            let v = r!.state.admit(client: client, now: now)
            if case .wait = v {
                let callback = resume()
                rateWaiters.withLockedValue { $0[client, default: []].append(callback) }
            }
            return v
        }
        switch verdict {
        case .allowed(let ask):
            if let ask { Task { await self.leaseRates([ask]) } }
            return .decided(.init(allowed: true, remaining: 0, retryAfter: .zero, reset: .seconds(60)))
        case .limited(let wait, let ask):
            if let ask { Task { await self.leaseRates([ask]) } }
            return .decided(.init(allowed: false, remaining: 0, retryAfter: wait, reset: .seconds(60)))
        case .wait(let ask):
            if let ask { Task { await self.leaseRates([ask]) } }
            return .waiting
        }
    }

    /// Away: this node's share of the limit (`client_rpm` / nodes alive), until the database is back.
    private func fallbackVerdict(client: String, perMinute: Int, burst: Int, now: NIODeadline) -> ClientRateLimiter.Verdict {
        fallback.withLockedValue { f in
            let n = max(1, f.nodes)
            if f.limiter == nil || f.limiter?.perMinute != max(1, perMinute / n) {
                f.limiter = ClientRateLimiter(perMinute: max(1, perMinute / n), burst: max(1, burst / n))
            }
            return f.limiter!.request(client: client, now: now)
        }
    }

    /// The requests of `client` that waited for an answer are admitted again, in order.
    private func wake(_ client: String, perMinute: Int, burst: Int, failed: Bool) {
        let waiting = rateWaiters.withLockedValue { $0.removeValue(forKey: client) ?? [] }
        guard !waiting.isEmpty else { return }
        let now = NIODeadline.now()
        var asks: [FleetRateClaim] = []
        for resume in waiting {
            if failed {
                rateLeases.withLockedValue { $0?.state.stopWaiting(client: client) }
                resume(fallbackVerdict(client: client, perMinute: perMinute, burst: burst, now: now))
                continue
            }
            let v = rateLeases.withLockedValue { r -> FleetRateLeases.Verdict? in
                r?.state.stopWaiting(client: client)
                let v = r?.state.admit(client: client, now: now)
                if case .wait = v { rateWaiters.withLockedValue { $0[client, default: []].append(resume) } }
                return v
            }
            switch v {
            case .allowed(let ask)?:
                if let ask { asks.append(ask) }
                resume(.init(allowed: true, remaining: 0, retryAfter: .zero, reset: .seconds(60)))
            case .limited(let wait, let ask)?:
                if let ask { asks.append(ask) }
                resume(.init(allowed: false, remaining: 0, retryAfter: wait, reset: .seconds(60)))
            case .wait(let ask)?:
                if let ask { asks.append(ask) }
            case nil:
                resume(.init(allowed: true, remaining: 0, retryAfter: .zero, reset: .seconds(60)))
            }
        }
        if !asks.isEmpty { Task { await self.leaseRates(asks) } }
    }

    private func leaseRates(_ claims: [FleetRateClaim]) async {
        guard !claims.isEmpty else { return }
        do {
            metrics.statements.increment()
            let granted = try await database.leaseRates(claims)
            let now = NIODeadline.now()
            rateLeases.withLockedValue { r in
                for c in claims { r?.state.answered(client: c.client, granted: granted[c.client] ?? 0, wanted: c.want, now: now) }
            }
            connected()
            for c in claims { wake(c.client, perMinute: c.perMinute, burst: c.burst, failed: false) }
        } catch {
            rateLeases.withLockedValue { r in for c in claims { r?.state.askFailed(c) } }
            lost(error)
            for c in claims { wake(c.client, perMinute: c.perMinute, burst: c.burst, failed: true) }
        }
    }
}
