import Foundation
import NIOCore
import SidecarCore
import SidecarStore

/// The JSON of `GET /stats/live`, which the dashboard (`GET /ui`) polls. Counters only grow from
/// the server's start (`started`), so a client computes rates and percentiles from the
/// difference between two polls; everything else is the state at `now_ms`. The shape is in
/// docs/observability.md. Nothing in it comes from a request's headers or body except the model
/// names and the paths (without their queries) of recent errors.
struct LiveStatsReport: Sendable {
    /// Days of cache counters shown (today and the six before).
    static let days = 7

    struct Deployment: Sendable {
        var group: String
        var name: String
        var inFlight: Int
        var health: String
        /// While ejected: how long until it is tried again.
        var ejectedForMilliseconds: Int64?
        var latencyEWMA: Double
        var weight: Int
        var maxConcurrency: Int?
    }

    var now: Double
    var started: Double
    var draining: Bool
    var requestsStarted: Int
    var inFlight: Int
    var tally: RequestTally
    var errors: (recent: [ErrorRing.Entry], recorded: Int)
    var deployments: [Deployment] = []
    var queues: [String: Int] = [:]
    var upstreams: [(name: String, problem: String?)] = []
    var cacheMode: String
    var limits: BudgetLedger.Limits
    var alertPercent: Int
    var ledger: (day: Double, month: Double, reservedDay: Double, reservedMonth: Double)
    var budgetsClosed: String?
    /// The UTC day the cache counts in (its clock), "YYYY-MM-DD".
    var today: String
    /// What the database says; nil when the cache is off.
    var stored: ResponseCache.DashboardFigures?

    init(state: ServerState, runtime: ProxyRuntime) {
        let live = state.metrics.live
        now = Date().timeIntervalSince1970
        started = live.started
        draining = state.isDraining
        requestsStarted = state.requestsTotal
        inFlight = state.requestsInFlight
        tally = live.counts
        errors = live.errors
        let deadline = NIODeadline.now()
        for (group, route) in runtime.routes.sorted(by: { $0.key < $1.key }) {
            for d in route.snapshot {
                let configured = route.group.deployments[d.deployment]
                deployments.append(.init(
                    group: group, name: d.name, inFlight: d.inFlight, health: d.health,
                    ejectedForMilliseconds: d.ejectedUntil.map { max(0, ($0 - deadline).nanoseconds / 1_000_000) },
                    latencyEWMA: d.latencyEWMA, weight: configured.weight, maxConcurrency: configured.maxConcurrency))
            }
            queues[group] = route.waiting
        }
        upstreams = runtime.groups.sorted(by: { $0.key < $1.key }).map { ($0.key, $0.value.health.problem) }
        cacheMode = state.cache == nil ? "off" : runtime.configuration.cache.mode.rawValue
        limits = runtime.configuration.budgets.limits
        alertPercent = runtime.configuration.budgets.limits.alertPercent
        ledger = state.budget.totals
        budgetsClosed = limits.isEmpty ? nil : state.budget.unavailable
        today = UTCDay.day(state.cache?.clock() ?? Int64(now))
    }

    /// Dollars rounded to 1e-10 (as `/stats` does): sums of float prices lose digits far below.
    private static func usd(_ x: Double) -> Double { (x * 1e10).rounded() / 1e10 }

    func json() -> String {
        var byClass: [String: Any] = [:]
        for (i, n) in tally.byClass.enumerated() { byClass["\(i + 1)xx"] = n }
        var results: [String: Any] = [:]
        for (i, name) in RequestTally.cacheResults.enumerated() { results[name] = tally.cache[i] }
        var cache: [String: Any] = ["mode": cacheMode, "results": results]
        var spend: [String: Any] = ["day": today, "month": UTCDay.month(ofDay: today)]
        if let stored {
            cache["database_ok"] = stored.databaseOK
            cache["days"] = stored.days.map { row -> [String: Any] in
                let c = row.counters
                return ["day": row.day, "model": row.model, "hits": c.hits, "misses": c.misses, "coalesced": c.coalesced,
                        "bypasses": c.bypasses, "hit_ratio": (CacheStatsReport.hitRatio(c) * 10_000).rounded() / 10_000,
                        "prompt_tokens_saved": c.promptTokensSaved, "completion_tokens_saved": c.completionTokensSaved,
                        "usd_saved": Self.usd(row.usdSaved)]
            }
            let models = Set(stored.spendToday.keys).union(stored.spendMonth.keys).sorted()
            spend["models"] = models.map { m -> [String: Any] in
                let t = stored.spendToday[m] ?? .init(), mo = stored.spendMonth[m] ?? .init()
                return ["model": m, "today_usd": Self.usd(t.usd), "month_usd": Self.usd(mo.usd), "today_requests": t.requests,
                        "today_prompt_tokens": t.promptTokens, "today_completion_tokens": t.completionTokens, "month_requests": mo.requests]
            }
            spend["today_usd"] = Self.usd(stored.spendToday.values.reduce(0) { $0 + $1.usd })
            spend["month_usd"] = Self.usd(stored.spendMonth.values.reduce(0) { $0 + $1.usd })
            spend["source"] = "database"
        } else if !limits.isEmpty {
            spend["today_usd"] = Self.usd(ledger.day)
            spend["month_usd"] = Self.usd(ledger.month)
            spend["source"] = "budget ledger"
        } else {
            spend["source"] = "none"  // the cache is off and no budget is set: nothing counts spend
        }
        var budgets: [String: Any] = ["alert_percent": alertPercent]
        if let d = limits.dailyUSD { budgets["daily_usd"] = d }
        if let m = limits.monthlyUSD { budgets["monthly_usd"] = m }
        if let c = limits.clientDailyUSD { budgets["client_daily_usd"] = c }
        if !limits.isEmpty {
            budgets["spent_day_usd"] = Self.usd(ledger.day)
            budgets["reserved_day_usd"] = Self.usd(ledger.reservedDay)
            budgets["spent_month_usd"] = Self.usd(ledger.month)
            budgets["reserved_month_usd"] = Self.usd(ledger.reservedMonth)
        }
        if let budgetsClosed { budgets["closed"] = budgetsClosed }
        spend["budgets"] = budgets

        let object: [String: Any] = [
            "version": 1,
            "now_ms": (now * 1000).rounded(),
            "started": started.rounded(),
            "draining": draining,
            "requests": ["started": requestsStarted, "in_flight": inFlight, "finished": tally.finished, "cut": tally.cut, "by_class": byClass],
            "latency": ["bounds_ms": RequestTally.boundsMilliseconds, "buckets": tally.buckets, "count": tally.timed,
                        "sum_ms": Double(tally.sumNanoseconds) / 1e6],
            "cache": cache,
            "spend": spend,
            "deployments": deployments.map { d -> [String: Any] in
                var o: [String: Any] = ["group": d.group, "deployment": d.name, "in_flight": d.inFlight, "health": d.health,
                                        "ewma_ms": (d.latencyEWMA * 10).rounded() / 10, "weight": d.weight]
                if let e = d.ejectedForMilliseconds { o["ejected_for_ms"] = e }
                if let c = d.maxConcurrency { o["max_concurrency"] = c }
                return o
            },
            "queues": queues,
            "upstreams": upstreams.map { u -> [String: Any] in
                var o: [String: Any] = ["name": u.name]
                if let p = u.problem { o["problem"] = p }
                return o
            },
            "errors": ["recorded": errors.recorded, "recent": errors.recent.map { e -> [String: Any] in
                var o: [String: Any] = ["time_ms": e.time, "status": e.status, "code": e.code, "message": e.message, "path": e.path]
                if let m = e.model { o["model"] = m }
                if let u = e.upstream { o["upstream"] = u }
                return o
            }],
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}

extension ResponseCache {
    /// The database's part of `/stats/live`, with what is not written back yet added in.
    struct DashboardFigures: Sendable {
        /// Per day and model, the newest day first, with the dollars the saved tokens are worth.
        var days: [(day: String, model: String, counters: ResponseCacheStore.CounterDelta, usdSaved: Double)]
        /// Upstream spend by model, today and this month (UTC).
        var spendToday: [String: ResponseCacheStore.Spend]
        var spendMonth: [String: ResponseCacheStore.Spend]
        var databaseOK: Bool
    }

    func dashboardFigures(prices: PriceTable, days: Int) async -> DashboardFigures {
        let now = clock()
        let today = Self.day(now)
        let from = Self.day(now - Int64(days - 1) * 86_400)
        let month = UTCDay.firstOfMonth(ofDay: today)
        // What is not written back yet is read on the database thread, with the tables: a flush
        // takes it and queues its write in one step on a loop, so the write is either in the
        // tables already or still in `pending` (only the instant between the two is missed).
        let read = try? await database.run { [self] store in
            (try store.dailyModelTotals(since: from), try store.spend(since: today), try store.spend(since: month),
             self.pendingCounters, self.pendingSpend)
        }
        var rows = read?.0 ?? []
        for (model, d) in read?.3 ?? [:] where !d.isEmpty {
            if let i = rows.firstIndex(where: { $0.day == today && $0.model == model }) {
                rows[i].counters += d
            } else {
                rows.insert((today, model, d), at: 0)
            }
        }
        rows.sort { ($0.day, $1.model) > ($1.day, $0.model) }
        func byModel(_ spend: [ResponseCacheStore.SpendKey: ResponseCacheStore.Spend]) -> [String: ResponseCacheStore.Spend] {
            var out: [String: ResponseCacheStore.Spend] = [:]
            for (k, s) in spend { out[k.model, default: .init()] += s }
            return out
        }
        var spendToday = byModel(read?.1 ?? [:]), spendMonth = byModel(read?.2 ?? [:])
        for (k, s) in read?.4 ?? [:] {
            spendToday[k.model, default: .init()] += s
            spendMonth[k.model, default: .init()] += s
        }
        return DashboardFigures(
            days: rows.map { r in
                (r.day, r.model, r.counters, prices.cost(model: r.model, promptTokens: r.counters.promptTokensSaved,
                                                         completionTokens: r.counters.completionTokensSaved))
            },
            spendToday: spendToday, spendMonth: spendMonth, databaseOK: read != nil && database.health.ok)
    }
}
