import Foundation
import Logging
import NIOCore
import SidecarCore
import SidecarFleet

/// `llm-sidecar fleet status`, `spend --fleet` and `stats --fleet`: the fleet database read
/// directly (the daemon need not run here). Errors name the cause, never the URL.
public enum FleetReport {
    /// Connects with the configuration's `[fleet]`, runs `body`, disconnects.
    static func with<T: Sendable>(_ configuration: SidecarConfiguration, _ body: @escaping @Sendable (FleetDatabase) async throws -> T) async throws -> T {
        guard let f = configuration.fleet else { throw FleetError(.other, "the configuration has no [fleet] table (docs/fleet.md)") }
        var logger = Logger(label: "llm-sidecar.fleet")
        logger.logLevel = .critical
        let database = try SidecarServer.openFleetDatabase(f, poolSize: 1, logger: logger)
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { await database.run(); return nil }
            group.addTask { try await body(database) }
            defer { group.cancelAll() }
            while let next = try await group.next() {
                if let value = next { return value }
            }
            throw FleetError(.unreachable, "fleet database unreachable: the connection ended")
        }
    }

    /// The nodes (last heartbeat, outbox applied) and every budget's slices per node.
    public static func status(_ configuration: SidecarConfiguration, json: Bool) async throws -> String {
        let (nodes, budgets) = try await with(configuration) { db in (try await db.nodes(), try await db.budgets()) }
        let window = 3 * Double(configuration.fleet?.leasePeriod.nanoseconds ?? 30_000_000_000) / 1e9
        if json {
            let object: [String: Any] = [
                "nodes": nodes.map { ["node": $0.node, "version": $0.version, "started_at": $0.startedAt, "seconds_since_seen": round1($0.secondsSinceSeen),
                                      "alive": $0.secondsSinceSeen < window, "outbox_applied_seq": $0.pushedSequence] as [String: Any] },
                "budgets": budgets.map { b -> [String: Any] in
                    ["scope": b.scope.scope, "period": b.scope.period, "limit_usd": b.limit, "granted_usd": b.granted,
                     "leases": b.leases.mapValues { ["allotment_usd": $0.allotment, "used_usd": $0.used, "expires_in_seconds": round1($0.expiresIn)] }]
                },
            ]
            return jsonText(object)
        }
        var out = "llm-sidecar fleet: \(nodes.count) node(s), \(nodes.filter { $0.secondsSinceSeen < window }.count) alive\n\n"
        out += "NODE".padding(toLength: 28, withPad: " ", startingAt: 0) + "VERSION".padding(toLength: 10, withPad: " ", startingAt: 0) + "LAST SEEN".padding(toLength: 14, withPad: " ", startingAt: 0) + "OUTBOX SEQ\n"
        for n in nodes.sorted(by: { $0.node < $1.node }) {
            out += String(n.node.prefix(27)).padding(toLength: 28, withPad: " ", startingAt: 0) + String(n.version.prefix(9)).padding(toLength: 10, withPad: " ", startingAt: 0)
                + String(format: "%.0f s ago", n.secondsSinceSeen).padding(toLength: 14, withPad: " ", startingAt: 0) + "\(n.pushedSequence)\n"
        }
        if !budgets.isEmpty {
            out += "\nBUDGET                        PERIOD       LIMIT      GRANTED   (node: slice / used, lease)\n"
            for b in budgets.sorted(by: { $0.scope < $1.scope }) {
                out += String(b.scope.scope.prefix(29)).padding(toLength: 30, withPad: " ", startingAt: 0) + b.scope.period.padding(toLength: 11, withPad: " ", startingAt: 0)
                    + String(format: "$%9.4f  $%9.4f", b.limit, b.granted) + "\n"
                for (node, l) in b.leases.sorted(by: { $0.key < $1.key }) {
                    out += "    \(node): $" + String(format: "%.4f / $%.4f, %@", l.allotment, l.used, l.expiresIn > 0 ? String(format: "%.0f s left", l.expiresIn) : "lapsed") + "\n"
                }
            }
        }
        return out
    }

    /// Spend today and this month (UTC) for the whole fleet, by node, model and client.
    public static func spend(_ configuration: SidecarConfiguration, json: Bool) async throws -> String {
        let today = UTCDay.day(Int64(Date().timeIntervalSince1970))
        let rows = try await with(configuration) { db in try await db.spend(since: UTCDay.firstOfMonth(ofDay: today)) }.filter { $0.client != "-" || $0.requests > 0 }
        let periods: [(String, [FleetSpendRow])] = [("today", rows.filter { $0.day == today }), ("month", rows)]
        func group(_ rows: [FleetSpendRow], _ key: (FleetSpendRow) -> String) -> [String: (requests: Int64, usd: Double)] {
            rows.reduce(into: [:]) { acc, r in acc[key(r), default: (0, 0)].requests += r.requests; acc[key(r), default: (0, 0)].usd += r.usd }
        }
        if json {
            var object: [String: Any] = ["day": today, "month": UTCDay.month(ofDay: today)]
            for (name, rs) in periods {
                func fields(_ g: [String: (requests: Int64, usd: Double)]) -> [String: Any] { g.mapValues { ["requests": $0.requests, "usd": ($0.usd * 1e8).rounded() / 1e8] } }
                object[name] = ["total": ["requests": rs.reduce(0) { $0 + $1.requests }, "usd": (rs.reduce(0) { $0 + $1.usd } * 1e8).rounded() / 1e8],
                                "by_node": fields(group(rs) { $0.node }), "by_model": fields(group(rs) { $0.model }), "by_client": fields(group(rs) { $0.client })]
            }
            return jsonText(object)
        }
        var out = "llm-sidecar spend --fleet\n"
        for (name, rs) in periods {
            out += "\n\(name == "today" ? "today (\(today), UTC)" : "this month (\(UTCDay.month(ofDay: today)))"): "
                + String(format: "$%.4f", rs.reduce(0) { $0 + $1.usd }) + " for \(rs.reduce(0) { $0 + $1.requests }) requests\n"
            for (title, g) in [("NODE", group(rs) { $0.node }), ("MODEL", group(rs) { $0.model }), ("CLIENT", group(rs) { $0.client })] {
                out += "  " + title.padding(toLength: 40, withPad: " ", startingAt: 0) + "REQUESTS".leftPad(10) + "USD".leftPad(12) + "\n"
                for (k, v) in g.sorted(by: { $0.value.usd > $1.value.usd }).prefix(20) {
                    out += "  " + String(k.prefix(39)).padding(toLength: 40, withPad: " ", startingAt: 0) + "\(v.requests)".leftPad(10) + String(format: "$%.4f", v.usd).leftPad(12) + "\n"
                }
            }
        }
        return out
    }

    /// What the caches of the whole fleet did over the last `days` days, by node and model.
    public static func stats(_ configuration: SidecarConfiguration, days: Int, json: Bool) async throws -> String {
        let from = UTCDay.day(Int64(Date().timeIntervalSince1970) - Int64(max(days, 1) - 1) * 86_400)
        let rows = try await with(configuration) { db in try await db.spend(since: from) }
        struct Tally { var hits: Int64 = 0, misses: Int64 = 0, coalesced: Int64 = 0, bypasses: Int64 = 0, saved: Int64 = 0 }
        func group(_ key: (FleetSpendRow) -> String) -> [String: Tally] {
            rows.reduce(into: [:]) { acc, r in
                var t = acc[key(r)] ?? Tally()
                t.hits += r.hits; t.misses += r.misses; t.coalesced += r.coalesced; t.bypasses += r.bypasses
                t.saved += r.promptTokensSaved + r.completionTokensSaved
                acc[key(r)] = t
            }
        }
        let byNode = group { $0.node }, byModel = group { $0.model }
        if json {
            func fields(_ g: [String: Tally]) -> [String: Any] {
                g.mapValues { ["hits": $0.hits, "misses": $0.misses, "coalesced": $0.coalesced, "bypasses": $0.bypasses, "tokens_saved": $0.saved] }
            }
            return jsonText(["since": from, "by_node": fields(byNode), "by_model": fields(byModel.filter { $0.value.hits + $0.value.misses + $0.value.coalesced + $0.value.bypasses > 0 })])
        }
        var out = "llm-sidecar stats --fleet (since \(from), UTC)\n"
        for (title, g) in [("NODE", byNode), ("MODEL", byModel)] {
            out += "\n" + title.padding(toLength: 36, withPad: " ", startingAt: 0) + "HITS".leftPad(10) + "MISSES".leftPad(10) + "COALESCED".leftPad(11) + "BYPASS".leftPad(10) + "HIT RATE".leftPad(10) + "\n"
            for (k, t) in g.sorted(by: { $0.key < $1.key }) where t.hits + t.misses + t.coalesced + t.bypasses > 0 {
                let rate = Double(t.hits + t.coalesced) / Double(max(1, t.hits + t.misses + t.coalesced)) * 100
                out += String(k.prefix(35)).padding(toLength: 36, withPad: " ", startingAt: 0) + "\(t.hits)".leftPad(10) + "\(t.misses)".leftPad(10)
                    + "\(t.coalesced)".leftPad(11) + "\(t.bypasses)".leftPad(10) + String(format: "%.1f%%", rate).leftPad(10) + "\n"
            }
        }
        return out
    }

    static func round1(_ x: Double) -> Double { (x * 10).rounded() / 10 }

    static func jsonText(_ object: [String: Any]) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])) ?? Data()
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}

extension String {
    fileprivate func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
