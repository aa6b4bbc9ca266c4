import Foundation
import SidecarCore
import SidecarStore

/// "What did my cache save me": the same report for `GET /stats` (live, from the daemon) and
/// `llm-sidecar stats` (from the SQLite file, whether or not the daemon runs).
///
/// Dollars are priced when the report is made, from the token counts per model and the price
/// table (built-in defaults plus `[prices]`), so a corrected price corrects history too.
/// The hit ratio is (hits + coalesced) / (hits + coalesced + misses): of the requests the cache
/// could have answered, the share that did not go upstream. Bypasses are not in it.
public struct CacheStatsReport: Sendable {
    public typealias Counters = ResponseCacheStore.CounterDelta

    public var database: String
    public var entries: Int64
    public var bytes: Int64
    public var models: [String: Counters]
    public var days: [(day: String, counters: Counters)]
    /// Stored entries per model (only the CLI pays for that scan).
    public var entriesByModel: [String: (entries: Int64, bytes: Int64)]?
    public var prices: PriceTable
    /// What only a running daemon knows.
    public var live: [String: any Sendable]?
    /// The daemon's model groups: per deployment, in-flight requests and health.
    public var routing: [String: any Sendable]?
    /// `[fleet]`: this node, its link to the fleet database and its budget slices.
    public var fleet: [String: any Sendable]?
    /// The providers' own prompt caches, per deployment: since the daemon started (`/stats`), or
    /// over the last 7 days of spend (`llm-sidecar stats`).
    public var providerCache: [String: ProviderCacheTally]?

    public var totals: Counters { models.values.reduce(into: Counters()) { $0 += $1 } }

    public func dollarsSaved(_ model: String, _ c: Counters) -> Double {
        prices.cost(model: model, promptTokens: c.promptTokensSaved, completionTokens: c.completionTokensSaved)
    }

    public var totalDollarsSaved: Double { models.reduce(0) { $0 + dollarsSaved($1.key, $1.value) } }

    static func hitRatio(_ c: Counters) -> Double {
        let answerable = c.hits + c.coalesced + c.misses
        return answerable == 0 ? 0 : Double(c.hits + c.coalesced) / Double(answerable)
    }

    private func fields(_ c: Counters, dollars: Double) -> [String: Any] {
        [
            "requests": c.hits + c.misses + c.coalesced + c.bypasses,
            "hits": c.hits, "misses": c.misses, "coalesced": c.coalesced, "bypasses": c.bypasses,
            "hit_ratio": (Self.hitRatio(c) * 10_000).rounded() / 10_000,
            "bytes_served": c.bytesServed,
            "prompt_tokens_saved": c.promptTokensSaved, "completion_tokens_saved": c.completionTokensSaved,
            "usd_saved": (dollars * 1e10).rounded() / 1e10,
        ]
    }

    /// The JSON of `/stats` and `stats --json` (keys sorted, so it diffs well).
    public func json() -> String {
        var models: [String: Any] = [:]
        for (m, c) in self.models {
            var f = fields(c, dollars: dollarsSaved(m, c))
            if let e = entriesByModel?[m] { f["entries"] = e.entries; f["bytes"] = e.bytes }
            models[m] = f
        }
        var cache: [String: Any] = ["database": database, "entries": entries, "bytes": bytes]
        for (k, v) in live ?? [:] { cache[k] = v }
        var object: [String: Any] = [
            "cache": cache,
            "totals": fields(totals, dollars: totalDollarsSaved),
            "models": models,
            "days": days.map { d -> [String: Any] in
                var f = fields(d.counters, dollars: 0)
                f.removeValue(forKey: "usd_saved")
                f["day"] = d.day
                return f
            },
        ]
        if let routing { object["routing"] = routing }
        if let fleet { object["fleet"] = fleet }
        if let providerCache {
            let total = providerCache.values.reduce(into: ProviderCacheTally()) { $0 += $1 }
            object["provider_cache"] = ["totals": total.fields, "deployments": providerCache.mapValues(\.fields)] as [String: Any]
        }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// The readable table of `llm-sidecar stats`.
    public func table(topModels: Int = 10) -> String {
        let t = totals
        var out = "llm-sidecar cache: \(database)\n\n"
        func row(_ label: String, _ value: String) { out += label.padding(toLength: 26, withPad: " ", startingAt: 0) + value + "\n" }
        row("entries", "\(entries) (\(Self.size(bytes)))")
        row("requests", "\(t.hits + t.misses + t.coalesced + t.bypasses)")
        row("  from cache (hits)", "\(t.hits)")
        row("  shared in flight", "\(t.coalesced)")
        row("  upstream (misses)", "\(t.misses)")
        row("  not cacheable", "\(t.bypasses)")
        row("hit ratio", String(format: "%.1f%%", Self.hitRatio(t) * 100))
        row("bytes served from cache", Self.size(t.bytesServed))
        row("tokens saved", "\(t.promptTokensSaved) prompt + \(t.completionTokensSaved) completion")
        row("dollars saved", String(format: "$%.4f", totalDollarsSaved))
        if let providerCache, !providerCache.isEmpty {
            // Next to ours: what the providers' prompt caches did for the answers that went upstream.
            let p = providerCache.values.reduce(into: ProviderCacheTally()) { $0 += $1 }
            row("provider prompt cache", String(format: "%.1f%% of %lld input tokens read from it, $%.4f saved (7 days)", p.hitRatio * 100, p.promptTokens, p.usdSaved))
            for (d, t) in providerCache.sorted(by: { $0.key < $1.key }).prefix(topModels) {
                row("  " + String(d.prefix(23)), String(format: "%.1f%%, $%.4f saved", t.hitRatio * 100, t.usdSaved))
            }
        }
        let top = models.sorted { (dollarsSaved($0.key, $0.value), $0.value.hits + $0.value.coalesced) > (dollarsSaved($1.key, $1.value), $1.value.hits + $1.value.coalesced) }.prefix(topModels)
        if !top.isEmpty {
            out += "\n" + "MODEL".padding(toLength: 28, withPad: " ", startingAt: 0)
                + "HITS".leftPadded(8) + "SHARED".leftPadded(8) + "MISSES".leftPadded(8) + "RATIO".leftPadded(8)
                + "TOKENS SAVED".leftPadded(14) + "SAVED".leftPadded(12) + "\n"
            for (m, c) in top {
                out += String(m.prefix(27)).padding(toLength: 28, withPad: " ", startingAt: 0)
                    + "\(c.hits)".leftPadded(8) + "\(c.coalesced)".leftPadded(8) + "\(c.misses)".leftPadded(8)
                    + String(format: "%.1f%%", Self.hitRatio(c) * 100).leftPadded(8)
                    + "\(c.promptTokensSaved + c.completionTokensSaved)".leftPadded(14)
                    + String(format: "$%.4f", dollarsSaved(m, c)).leftPadded(12) + "\n"
            }
        }
        return out
    }

    static func size(_ bytes: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(bytes)
        var i = 0
        while v >= 1024, i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(bytes) B" : String(format: "%.1f %@", v, units[i])
    }

    /// Reads the report straight from the database file (for the CLI; safe while the daemon runs).
    public static func read(path: String, prices: PriceTable, days: Int = 7) throws -> CacheStatsReport {
        let store = try ResponseCacheStore(path: path)
        let (entries, bytes) = try store.sizes()
        return CacheStatsReport(
            database: path, entries: entries, bytes: bytes, models: try store.counterTotals(), days: try store.dailyTotals(days: days),
            entriesByModel: try store.entriesByModel(), prices: prices, live: nil, routing: nil,
            providerCache: providerCache(try store.spend(since: UTCDay.day(Int64(Date().timeIntervalSince1970) - Int64(days - 1) * 86_400)), prices: prices))
    }

    /// Spend rows as provider-cache tallies per deployment, the savings priced at the deployment's
    /// model (`UPSTREAM/MODEL`), else the row's.
    public static func providerCache(_ rows: [ResponseCacheStore.SpendKey: ResponseCacheStore.Spend], prices: PriceTable) -> [String: ProviderCacheTally] {
        var out: [String: ProviderCacheTally] = [:]
        for (k, s) in rows where s.promptTokens > 0 {
            let model = k.deployment.split(separator: "/", maxSplits: 1).last.map(String.init) ?? k.model
            let usage = ResponseInspector.Usage(promptTokens: s.promptTokens, completionTokens: s.completionTokens,
                                                cachedTokens: s.cachedTokens, cacheWriteTokens: s.cacheWriteTokens)
            var t = ProviderCacheTally()
            t.add(usage, saved: (prices.price(of: model) ?? prices.price(of: k.model))?.promptCacheSavings(usage) ?? 0)
            t.answers = s.requests
            out[k.deployment, default: .init()] += t
        }
        return out
    }
}


extension ResponseCache {
    /// The live report of `GET /stats`: the database's figures plus what is not written back yet.
    func report(prices: PriceTable, mode: String, scope: String) async -> CacheStatsReport {
        let path = database.path
        let stored = try? await database.run { store in
            (try store.sizes(), try store.counterTotals(), try store.dailyTotals(days: 7))
        }
        var models = stored?.1 ?? [:]
        for (m, d) in pendingCounters { models[m, default: .init()] += d }
        var days = stored?.2 ?? []
        let today = Self.day(clock())
        let pendingTotal = pendingCounters.values.reduce(into: ResponseCacheStore.CounterDelta()) { $0 += $1 }
        if !pendingTotal.isEmpty {
            if let i = days.firstIndex(where: { $0.day == today }) { days[i].counters += pendingTotal } else { days.insert((today, pendingTotal), at: 0) }
        }
        let health = database.health
        let hot = hotTier
        var dbState: [String: any Sendable] = ["ok": health.ok, "errors": health.errors, "reopened": health.reopened]
        if let e = health.lastError { dbState["last_error"] = e }
        return CacheStatsReport(
            database: path, entries: stored?.0.0 ?? 0, bytes: stored?.0.1 ?? 0, models: models, days: days, entriesByModel: nil,
            prices: prices,
            live: [
                "mode": mode, "scope": scope, "max_bytes": settings.maxBytes,
                "database_state": dbState,
                "memory": ["entries": hot.entries, "bytes": hot.bytes, "max_bytes": hot.capacity] as [String: any Sendable],
                "flights_in_progress": flightsInProgress,
                // Keys the in-memory index says the database may hold (-1: not read yet).
                "indexed_keys": indexedKeys ?? -1,
            ])
    }
}
