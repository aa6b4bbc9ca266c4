import Foundation
import NIOCore
import NIOHTTP1
import SidecarCore

/// What the dashboard sees of each request (its end, its errors) and the two admin endpoints it
/// is made of: `GET /ui`, the page, and `GET /stats/live`, the JSON the page polls.
extension DownstreamHandler {
    // MARK: the request's end and its errors

    /// The current request's exchange is over: it leaves the in-flight count, and the dashboard's
    /// tally counts it with the status the client got (`complete: false`: cut short or abandoned).
    func exchangeEnded(status: Int, complete: Bool) {
        endRequestSpan(status: status, complete: complete)
        state.requestFinished()
        state.metrics.live.finished(status: status, complete: complete, nanoseconds: (NIODeadline.now() - access.started).nanoseconds)
    }

    /// Records an error the sidecar answered (or a response it had to cut) in the dashboard's
    /// ring: the request's path and model, never its headers or body.
    func recordError(_ error: ProxyError, model: String?, cut: Bool = false) {
        state.metrics.live.error(.init(
            time: Self.unixMilliseconds(), status: cut ? 0 : error.status, code: error.codeString,
            message: cut ? "response cut short: " + error.message : error.message,
            model: model, path: access.path, upstream: access.upstream))
    }

    /// An upstream's own error answer (4xx or 5xx) went through to the client: recorded with its
    /// status; its body is the client's business and is not read.
    func recordUpstreamError(status: Int, model: String?) {
        state.metrics.live.error(.init(
            time: Self.unixMilliseconds(), status: status, code: "upstream_status",
            message: "the upstream answered \(status) \(HTTPResponseStatus(statusCode: status).reasonPhrase)",
            model: model, path: access.path, upstream: access.upstream))
    }

    static func unixMilliseconds() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    // MARK: the endpoints

    /// `GET /ui`: the page, from the binary. Its script and styles are inline and it fetches
    /// nothing but `stats/live` from the same origin; the policy below says so to the browser.
    func serveDashboard(headOnly: Bool) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "text/html; charset=utf-8")
        headers.add(name: "content-length", value: String(DashboardPage.bytes.readableBytes))
        headers.add(name: "cache-control", value: "no-store")
        headers.add(name: "content-security-policy",
                    value: "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; frame-ancestors 'none'")
        headers.add(name: "x-content-type-options", value: "nosniff")
        headers.add(name: "referrer-policy", value: "no-referrer")
        if !keepAlive { headers.add(name: "connection", value: "close") }
        writeLocal(head: HTTPResponseHead(version: .http1_1, status: .ok, headers: headers), body: headOnly ? nil : DashboardPage.bytes)
    }

    /// `GET /stats/live`: counts, configuration and, with the cache on, what the database says
    /// (read on its thread; the answer is written when it is back, as for `/stats`).
    func serveLiveStats(headOnly: Bool) {
        let report = LiveStatsReport(state: state, runtime: runtime)
        guard let cache = state.cache, let context else {
            return respondLocally(status: .ok, contentType: "application/json", body: ByteBuffer(string: report.json()), headOnly: headOnly)
        }
        let prices = runtime.priceTable
        context.eventLoop.makeFutureWithTask {
            var report = report
            report.stored = await cache.dashboardFigures(prices: prices, days: LiveStatsReport.days)
            return report.json()
        }.assumeIsolated().whenSuccess { [self] json in
            self.respondLocally(status: .ok, contentType: "application/json", body: ByteBuffer(string: json), headOnly: headOnly)
        }
    }
}
