import Foundation
import NIOCore
import SidecarCore
import SidecarProxy
import SidecarTestSupport
import XCTest

/// The dashboard (`GET /ui` over `GET /stats/live`) in real headless Chromium, and the Grafana
/// board over `/metrics`, after real traffic through a real sidecar.
final class DashboardTests: XCTestCase {
    /// The test venv's Python (with selenium), set up by `make test`.
    static var python: String? { ProcessInfo.processInfo.environment["LLM_SIDECAR_TEST_PYTHON"] }
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// A sidecar whose default upstream is a FakeUpstream ("fake"), with a group "team" over it
    /// and over "b", an upstream nobody listens on; budgets set, the cache on.
    private func start() async throws -> (ProxyHarness, FakeUpstream, SidecarConfiguration) {
        let upstream = try await FakeUpstream.start()
        let closed = try await FakeUpstream.start()
        let deadPort = closed.port
        await closed.stop()
        var configured: SidecarConfiguration?
        let h = try await ProxyHarness(upstreamURL: upstream.url, configure: { c in
            guard case .success(let dead) = UpstreamURL.parse("http://127.0.0.1:\(deadPort)") else { return }
            c.upstreams.append(.init(name: "b", url: dead))
            c.models = [.init(name: "team", deployments: [.init(upstream: "fake", model: "gpt-4o-mini"), .init(upstream: "b", model: "gpt-4o-mini")])]
            c.budgets.limits.dailyUSD = 1
            c.budgets.limits.monthlyUSD = 10
            configured = c
        })
        return (h, upstream, try XCTUnwrap(configured))
    }

    /// What the traffic below should make the page show.
    struct Expected: Codable {
        var finished: Int
        var hit_ratio: Double
        var errors: Int
        var shared: Int
        var upstreamAnswers: Int
    }

    /// Cacheable misses and their repeats, an upstream 503, 25 answers 40 ms slow, five requests
    /// to "team" (its dead deployment is tried until it is ejected; each is answered by the
    /// other) and two 404s, one with a key in its query. Every request carries a client key.
    private func traffic(_ h: ProxyHarness) async throws -> Expected {
        let auth = [("authorization", "Bearer sk-client-SECRETSECRETSECRET")]
        func cached(_ i: Int) -> String { #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"q\#(i)"}]}"# }
        var misses = 0, shared = 0, finished = 0, upstreamAnswers = 0
        for i in 0..<3 {
            let r = try await h.request(headers: auth, body: cached(i))
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.header("x-sidecar-cache"), "miss")
            misses += 1; finished += 1; upstreamAnswers += 1
        }
        for i in 0..<3 {
            let r = try await h.request(headers: auth, body: cached(i))
            XCTAssertEqual(r.status, 200)
            XCTAssertTrue(["hit", "coalesced"].contains(r.header("x-sidecar-cache") ?? ""), "\(r.headers)")
            shared += 1; finished += 1
        }
        let failed = try await h.request(headers: auth + [("x-fake-status", "503")], body: cached(99))
        XCTAssertEqual(failed.status, 503)
        XCTAssertEqual(failed.header("x-sidecar-cache"), "miss")
        misses += 1; finished += 1
        for i in 0..<25 {
            let r = try await h.request(headers: auth + [("x-fake-delay-ms", "40")], body: #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"slow \#(i)"}]}"#)
            XCTAssertEqual(r.status, 200)
            finished += 1; upstreamAnswers += 1
        }
        for i in 0..<5 {
            let r = try await h.request(headers: auth, body: #"{"model":"team","messages":[{"role":"user","content":"team \#(i)"}]}"#)
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.header("x-sidecar-deployment"), "fake/gpt-4o-mini")
            finished += 1; upstreamAnswers += 1
        }
        let nowhere = try await h.request("GET", "/nowhere", headers: auth)
        XCTAssertEqual(nowhere.status, 404)
        let keyInQuery = try await h.request("GET", "/v2/x?key=sk-test-SECRETSECRETSECRET1234", headers: auth)
        XCTAssertEqual(keyInQuery.status, 404)
        return Expected(finished: finished, hit_ratio: Double(shared) / Double(shared + misses), errors: 3, shared: shared,
                        upstreamAnswers: upstreamAnswers)
    }

    func testTheDashboardShowsTheTrafficInHeadlessChromiumAndSurvivesAReload() async throws {
        guard let python = Self.python else {
            throw XCTSkip("run through `make test`, which installs selenium and chromium (LLM_SIDECAR_TEST_PYTHON)")
        }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium"), FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver") else {
            throw XCTSkip("`make test` installs Debian's chromium and chromium-driver")
        }
        let (h, upstream, configuration) = try await start()
        defer { Task { await h.stop(); await upstream.stop() } }
        let shared = ProxyHarness.temporaryDirectory()
        let build = Self.packageRoot.appendingPathComponent(".build").path
        let shot = build + "/ui-dashboard.png", phoneShot = build + "/ui-dashboard-phone.png"
        for f in [shot, phoneShot] { try? FileManager.default.removeItem(atPath: f) }

        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", DashboardDriver.script, "http://127.0.0.1:\(h.port)/ui?every=300", shared, shot, phoneShot]
        let out = Pipe()
        p.standardOutput = out
        XCTAssertTrue(FileManager.default.createFile(atPath: shared + "/stderr", contents: nil))
        p.standardError = FileHandle(forWritingAtPath: shared + "/stderr")
        try p.run()
        defer { if p.isRunning { p.terminate() } }
        func driverLog() -> String { (try? String(contentsOfFile: shared + "/stderr", encoding: .utf8)) ?? "" }
        func signal(_ name: String, _ text: String = "") throws {
            try text.write(toFile: shared + "/" + name + ".tmp", atomically: false, encoding: .utf8)
            try FileManager.default.moveItem(atPath: shared + "/" + name + ".tmp", toPath: shared + "/" + name)
        }

        let ready = await eventually(40) { FileManager.default.fileExists(atPath: shared + "/page-ready") || !p.isRunning }
        guard ready, p.isRunning else { return XCTFail("the page did not come up: \(driverLog())") }
        let expected = try await traffic(h)
        try signal("traffic-done", String(decoding: try JSONEncoder().encode(expected), as: UTF8.self))

        let checked = await eventually(40) { FileManager.default.fileExists(atPath: shared + "/checked") || !p.isRunning }
        guard checked, p.isRunning else { return XCTFail("the page did not show the traffic: \(driverLog())") }
        var next = configuration
        next.models.append(.init(name: "later", deployments: [.init(upstream: "fake", model: "gpt-4o")]))
        try h.server.reload(configuration: next, apiKeys: try APIKeys.resolve(next, environment: [:]))
        try signal("reloaded")

        let exited = await eventually(40) { !p.isRunning }
        XCTAssertTrue(exited, "the driver did not finish: \(driverLog())")
        let output = out.fileHandleForReading.readDataToEndOfFile()
        XCTAssertEqual(p.terminationStatus, 0, driverLog())
        let page = try XCTUnwrap(try JSONSerialization.jsonObject(with: output) as? [String: Any], String(decoding: output, as: UTF8.self))
        try checkPage(page, expected)
    }

    private func checkPage(_ page: [String: Any], _ expected: Expected) throws {
        let figures = try XCTUnwrap(page["figures"] as? [String: [String: String]])
        func value(_ id: String) -> Double? { figures[id]?["value"].flatMap(Double.init) }
        XCTAssertEqual(value("requests-total"), Double(expected.finished))
        XCTAssertEqual(value("errors-total"), Double(expected.errors))
        XCTAssertEqual(value("in-flight"), 0)
        XCTAssertEqual(value("hit-ratio") ?? -1, expected.hit_ratio, accuracy: 1e-9)
        XCTAssertEqual(figures["hit-ratio"]?["text"], String(format: "%.1f%%", expected.hit_ratio * 100))
        // Each answer's usage is 19 + 28 tokens (the fake's); hits and shared calls saved them.
        let price = try XCTUnwrap(PriceTable().price(of: "gpt-4o-mini"))
        let perAnswer = price.cost(promptTokens: 19, completionTokens: 28)
        XCTAssertEqual(value("saved-today-tokens"), Double(expected.shared * 47))
        XCTAssertEqual(value("saved-today-usd") ?? -1, Double(expected.shared) * perAnswer, accuracy: 1e-9)
        XCTAssertEqual(value("spend-today") ?? -1, Double(expected.upstreamAnswers) * perAnswer, accuracy: 1e-9)
        XCTAssertEqual(value("spend-month") ?? -1, Double(expected.upstreamAnswers) * perAnswer, accuracy: 1e-9)
        XCTAssertEqual(value("budget-day") ?? -1, Double(expected.upstreamAnswers) * perAnswer / 1, accuracy: 1e-9, "of a $1 daily budget")
        XCTAssertTrue((page["budget_text"] as? String)?.contains("of $1.00") ?? false, "\(page["budget_text"] ?? "")")
        // 25 of the 37 answers took 40 ms or more: the median and the 99th percentile are among
        // them (how much more depends on the machine's load: only the floor is certain).
        let p50 = try XCTUnwrap(value("p50")), p99 = try XCTUnwrap(value("p99"))
        XCTAssertTrue(p50 > 25 && p50 < 1_000, "p50 \(p50) ms")
        XCTAssertTrue(p99 >= p50, "p99 \(p99) ms, p50 \(p50) ms")
        XCTAssertGreaterThan(value("rps") ?? 0, 0)

        let deployments = try XCTUnwrap(page["deployments"] as? [[String: Any]])
        XCTAssertEqual(deployments.map { $0["deployment"] as? String }, ["fake/gpt-4o-mini", "b/gpt-4o-mini"])
        XCTAssertEqual(deployments.map { $0["health"] as? String }, ["healthy", "ejected"])
        let healthyCells = deployments.first?["cells"] as? [String] ?? []
        XCTAssertTrue(healthyCells.count == 7 && healthyCells[4].hasSuffix("ms"), "EWMA latency shown: \(healthyCells)")
        let ejectedCells = deployments.last?["cells"] as? [String] ?? []
        XCTAssertTrue(ejectedCells.count == 7 && ejectedCells[5].hasSuffix("s"), "ejected for: \(ejectedCells)")

        let errors = try XCTUnwrap(page["errors"] as? [[String: Any]])
        XCTAssertEqual(errors.map { $0["code"] as? String }, ["not_found", "not_found", "upstream_status"], "newest first")
        XCTAssertEqual(errors.map { $0["status"] as? String }, ["404", "404", "503"])
        let paths = errors.compactMap { ($0["cells"] as? [String]).map { $0[5] } }
        XCTAssertEqual(paths, ["/v2/x", "/nowhere", "/v1/chat/completions"])
        XCTAssertEqual(page["source_mentions_secret"] as? Bool, false, "no key, from a header or a query, reaches the page")

        let days = try XCTUnwrap(page["cache_days"] as? [[String: Any]])
        XCTAssertEqual(days.compactMap { $0["model"] as? String }, ["gpt-4o-mini", "team"], "per day and model (bypasses counted too)")
        let mini = days.first?["cells"] as? [String] ?? []  // day, model, hits, shared, misses, ratio, tokens, dollars
        XCTAssertEqual(mini.count, 8)
        if mini.count == 8 {
            XCTAssertEqual((Int(mini[2]) ?? 0) + (Int(mini[3]) ?? 0), expected.shared)
            XCTAssertEqual(mini[4], String(expected.shared + 1), "the 503 was a miss too")
            XCTAssertEqual(mini[6], String(expected.shared * 47))
        }
        let spend = try XCTUnwrap(page["spend_models"] as? [[String: Any]])
        XCTAssertEqual(spend.compactMap { $0["model"] as? String }, ["gpt-4o-mini", "team"])

        let after = try XCTUnwrap(page["after_reload"] as? [String: Any])
        XCTAssertEqual(after["groups"] as? [String], ["later", "team"], "the reloaded configuration is shown")
        XCTAssertEqual(after["requests_total"] as? String, String(expected.finished), "counts survive a reload")
        XCTAssertTrue((after["status"] as? String)?.hasPrefix("live") ?? false, "\(after)")
        XCTAssertLessThanOrEqual(page["phone_overflow"] as? Int ?? 1, 0, "nothing wider than a phone's screen")
        let console = try XCTUnwrap(page["console"] as? [[String: Any]])
        XCTAssertEqual(console.filter { ($0["level"] as? String) == "SEVERE" }.count, 0, "console errors: \(console)")
        for f in ["ui-dashboard.png", "ui-dashboard-phone.png"] {
            let png = FileManager.default.contents(atPath: Self.packageRoot.appendingPathComponent(".build/" + f).path) ?? Data()
            XCTAssertEqual(Array(png.prefix(4)), [0x89, 0x50, 0x4E, 0x47], "\(f) is a PNG")
        }
    }

    /// etc/grafana/llm-sidecar.json is importable as is (one `DS_PROMETHEUS` input, every query
    /// on it) and every metric its PromQL names is in `/metrics` after the same traffic.
    func testTheGrafanaBoardQueriesOnlyMetricsTheDaemonExports() async throws {
        let board = try XCTUnwrap(try JSONSerialization.jsonObject(
            with: Data(contentsOf: Self.packageRoot.appendingPathComponent("etc/grafana/llm-sidecar.json"))) as? [String: Any])
        let inputs = try XCTUnwrap(board["__inputs"] as? [[String: Any]])
        XCTAssertEqual(inputs.map { $0["name"] as? String }, ["DS_PROMETHEUS"])
        XCTAssertEqual(board["uid"] as? String, "llm-sidecar")
        let panels = try XCTUnwrap(board["panels"] as? [[String: Any]]).filter { $0["type"] as? String != "row" }
        XCTAssertGreaterThanOrEqual(panels.count, 20)
        var expressions: [String] = []
        for panel in panels {
            XCTAssertEqual((panel["datasource"] as? [String: Any])?["uid"] as? String, "${DS_PROMETHEUS}", "\(panel["title"] ?? "")")
            let targets = try XCTUnwrap(panel["targets"] as? [[String: Any]])
            XCTAssertFalse(targets.isEmpty)
            expressions += targets.compactMap { $0["expr"] as? String }
        }
        let variables = (board["templating"] as? [String: Any])?["list"] as? [[String: Any]] ?? []
        expressions += variables.compactMap { $0["definition"] as? String }
        let pattern = try NSRegularExpression(pattern: "llm_sidecar_[a-z0-9_]+")
        var queried: Set<String> = []
        for e in expressions {
            for m in pattern.matches(in: e, range: NSRange(e.startIndex..., in: e)) { queried.insert(String(e[Range(m.range, in: e)!])) }
        }
        XCTAssertGreaterThanOrEqual(queried.count, 25)

        let (h, upstream, _) = try await start()
        defer { Task { await h.stop(); await upstream.stop() } }
        let expected = try await traffic(h)
        let streamed = try await h.request(headers: [("x-fake-events", "2")], body: #"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#)
        XCTAssertEqual(streamed.status, 200)
        await h.server.flushCache()
        let metrics = try await h.request("GET", "/metrics").body
        // Sample names: a histogram's are its _bucket, _sum and _count, as PromQL names them.
        let exported = Set(metrics.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { line in
            String(line.prefix { $0 != "{" && $0 != " " })
        })
        for name in queried.sorted() {
            XCTAssertTrue(exported.contains(name), "the board queries \(name), which /metrics does not have")
        }
        // The token and dollar counters follow the answers' usage: 19 + 28 tokens each, and the
        // stream's, which the sidecar asked the upstream for (the fake's: 11, and one per event).
        func sample(_ prefix: String) -> Double? {
            metrics.split(separator: "\n").first { $0.hasPrefix(prefix + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        XCTAssertEqual(sample(#"llm_sidecar_upstream_tokens_total{kind="prompt"}"#), Double(expected.upstreamAnswers * 19 + 11))
        XCTAssertEqual(sample(#"llm_sidecar_upstream_tokens_total{kind="completion"}"#), Double(expected.upstreamAnswers * 28 + 2))
        let price = try XCTUnwrap(PriceTable().price(of: "gpt-4o-mini"))
        let dollars = Double(expected.upstreamAnswers) * price.cost(promptTokens: 19, completionTokens: 28) + price.cost(promptTokens: 11, completionTokens: 2)
        XCTAssertEqual(sample("llm_sidecar_upstream_spent_usd_total") ?? -1, dollars, accuracy: 1e-9)
    }
}
