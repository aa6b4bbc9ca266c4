import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore

/// The admin endpoints: /healthz, /readyz, /metrics, /stats, and the dashboard's /ui and
/// /stats/live (loopback and unix-socket clients, or the admin token).
extension DownstreamHandler {
    func admin(_ head: HTTPRequestHead, path: Substring) {
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
            if runtime.defaultUpstream == nil, runtime.dialectUpstreams.isEmpty { reasons.append("no default upstream is configured") }
            if !runtime.configuration.budgets.limits.isEmpty, let why = state.budget.unavailable { reasons.append(why) }
            for (name, group) in runtime.groups.sorted(by: { $0.key < $1.key }) {
                if let problem = group.health.problem { reasons.append("upstream \(name): \(problem)") }
            }
            // The fleet database away: with on_unavailable = "reject" the node refuses spending
            // requests (not ready); with "local" it serves on (ready, and says it is degraded).
            var degraded: [String] = []
            if let fleet = state.fleet, let why = fleet.problem {
                let line = "fleet database unavailable: \(why)"
                if fleet.settings.onUnavailable == .reject { reasons.append(line) } else { degraded.append(line + " (serving from local state and the leases held)") }
            }
            var json = reasons.isEmpty ? #"{"status":"ready""# : #"{"status":"not ready","reasons":["#
            for (i, r) in reasons.enumerated() {
                if i > 0 { json += "," }
                JSONString.append(r, to: &json)
            }
            json += reasons.isEmpty ? "" : "]"
            if !degraded.isEmpty {
                json += #","degraded":["#
                for (i, r) in degraded.enumerated() {
                    if i > 0 { json += "," }
                    JSONString.append(r, to: &json)
                }
                json += "]"
            }
            json += "}"
            respondLocally(status: reasons.isEmpty ? .ok : .serviceUnavailable, contentType: "application/json",
                           body: ByteBuffer(string: json), headOnly: headOnly)
        case "/ui":
            serveDashboard(headOnly: headOnly)
        case "/stats/live":
            serveLiveStats(headOnly: headOnly)
        case "/stats":
            let configuration = runtime.configuration
            var groups: [String: any Sendable] = [:]
            let providerCache = state.metrics.providerCacheTotals
            for (name, route) in runtime.routes {
                groups[name] = route.snapshot.map { d -> [String: any Sendable] in
                    var f: [String: any Sendable] = ["deployment": d.name, "in_flight": d.inFlight, "health": d.health]
                    if let p = providerCache[d.name] { f["provider_cache"] = p.fields }
                    if let check = d.check {
                        var c: [String: any Sendable] = ["status": check.status.rawValue]
                        if let problem = check.lastProblem { c["last_failure"] = problem }
                        f["health_check"] = c
                    }
                    return f
                }
            }
            let routing = groups
            let fleet = state.fleet?.report(limits: configuration.budgets.limits)
            guard let cache = state.cache, let context else {
                var report = CacheStatsReport(database: "", entries: 0, bytes: 0, models: [:], days: [], prices: configuration.priceTable,
                                              live: ["mode": "off"])
                report.routing = routing
                report.providerCache = providerCache
                respondLocally(status: .ok, contentType: "application/json", body: ByteBuffer(string: report.json()), headOnly: headOnly)
                return
            }
            // The database part is read on the database thread; the answer is written when it is back.
            context.eventLoop.makeFutureWithTask {
                var report = await cache.report(prices: configuration.priceTable, mode: configuration.cache.mode.rawValue,
                                                scope: configuration.cache.scope.rawValue)
                report.routing = routing
                report.providerCache = providerCache
                report.fleet = fleet
                return report.json()
            }.assumeIsolated().whenSuccess { [self] json in
                self.respondLocally(status: .ok, contentType: "application/json", body: ByteBuffer(string: json), headOnly: headOnly)
            }
        default:
            respondLocally(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8",
                           body: ByteBuffer(bytes: state.metrics.render()), headOnly: headOnly)
        }
    }
}
