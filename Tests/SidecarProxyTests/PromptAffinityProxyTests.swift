import Foundation
import NIOCore
import SidecarCore
import SidecarProxy
import SidecarStore
import SidecarTestSupport
import XCTest

/// Prompt-cache affinity end to end: four FakeUpstreams, each with its own prompt cache that
/// reports cached tokens as OpenAI does, behind one model group.
final class PromptAffinityProxyTests: XCTestCase {
    var upstreams: [FakeUpstream] = []
    var harness: ProxyHarness!

    override func tearDown() async throws {
        await harness?.stop()
        for u in upstreams { await u.stop() }
    }

    private func start(affinity: Bool) async throws {
        for _ in 0..<4 {
            let u = try await FakeUpstream.start()
            u.promptCache.enable()
            upstreams.append(u)
        }
        let urls = upstreams.map(\.url)
        harness = try await ProxyHarness(upstreamURL: urls[0], configure: { c in
            c.cache.mode = .off
            var all: [SidecarConfiguration.Upstream] = []
            for (i, url) in urls.enumerated() {
                guard case .success(let u) = UpstreamURL.parse(url) else { continue }
                all.append(.init(name: "d\(i)", url: u))
            }
            c = SidecarConfiguration(server: c.server, upstreams: all, log: c.log, cache: c.cache)
            var group = SidecarConfiguration.ModelGroup(name: "agent", deployments: (0..<4).map { .init(upstream: "d\($0)", model: "gpt-4.1") })
            if !affinity { group.promptCache = nil }
            c.models = [group]
        })
    }

    /// Conversation `c`'s request at `turn`: a long system prompt of its own, then the turns so far.
    private func body(_ c: Int, turn: Int) -> String {
        var messages = [#"{"role":"system","content":"conversation \#(c): \#(String(repeating: "rules ", count: 1_000))"}"#]
        for t in 0...turn {
            messages.append(#"{"role":"user","content":"question \#(t)"}"#)
            if t < turn { messages.append(#"{"role":"assistant","content":"ok"}"#) }
        }
        return #"{"model":"agent","messages":[\#(messages.joined(separator: ","))]}"#
    }

    func testEachConversationStaysWithItsCacheAndStatsShowWhatItSaved() async throws {
        try await start(affinity: true)
        var homes: [Int: Set<String>] = [:]
        for turn in 0..<4 {
            for c in 0..<8 {
                let r = try await harness.request("POST", "/v1/chat/completions", body: body(c, turn: turn))
                XCTAssertEqual(r.status, 200)
                homes[c, default: []].insert(r.header("x-sidecar-deployment") ?? "-")
            }
        }
        for c in 0..<8 { XCTAssertEqual(homes[c]?.count, 1, "conversation \(c) stayed on one deployment") }
        XCTAssertGreaterThan(Set(homes.values.compactMap(\.first)).count, 1, "conversations are spread")
        let prompt = upstreams.reduce(0) { $0 + $1.promptCache.totals.prompt }
        let cached = upstreams.reduce(0) { $0 + $1.promptCache.totals.cached }
        // Every turn after the first reads its whole previous prompt: the ideal.
        var ideal = 0
        for c in 0..<8 { for turn in 1..<4 { ideal += Array(body(c, turn: turn - 1).utf8).count / 4 } }
        XCTAssertGreaterThanOrEqual(Double(cached), 0.9 * Double(ideal))

        let stats = try JSONSerialization.jsonObject(with: Data(try await harness.request("GET", "/stats").body.utf8)) as? [String: Any]
        let totals = (stats?["provider_cache"] as? [String: Any])?["totals"] as? [String: Any]
        XCTAssertEqual(totals?["prompt_tokens"] as? Int, prompt)
        XCTAssertEqual(totals?["cached_tokens"] as? Int, cached)
        XCTAssertEqual(totals?["hit_ratio"] as? Double ?? 0, Double(cached) / Double(prompt), accuracy: 0.0001)
        // gpt-4.1: $2.00 fresh, $0.50 cached per million tokens.
        XCTAssertEqual(totals?["usd_saved"] as? Double ?? 0, Double(cached) * 1.5 / 1_000_000, accuracy: 1e-9)
        let metrics = try await harness.request("GET", "/metrics").body
        XCTAssertTrue(metrics.contains(#"llm_sidecar_provider_cache_tokens_total{deployment="d0/gpt-4.1",kind="cached"}"#), metrics)
        XCTAssertTrue(metrics.contains(#"llm_sidecar_prompt_affinity_total{result="kept"} 24"#))
        XCTAssertTrue(metrics.contains(#"llm_sidecar_prompt_affinity_total{result="new"} 8"#))
    }

    func testTheConversationsOfAFailingDeploymentMoveAndKeepTheirNewHome() async throws {
        try await start(affinity: true)
        var home: [Int: String] = [:]
        for c in 0..<8 {
            home[c] = try await harness.request("POST", "/v1/chat/completions", body: body(c, turn: 0)).header("x-sidecar-deployment")
        }
        let down = try XCTUnwrap(home[0])
        let index = try XCTUnwrap(Int(down.dropFirst().prefix { $0 != "/" }))
        upstreams[index].forcedStatus.withLockedValue { $0 = (503, nil) }
        for c in 0..<8 {
            let r = try await harness.request("POST", "/v1/chat/completions", body: body(c, turn: 1))
            XCTAssertEqual(r.status, 200, "retried elsewhere")
            XCTAssertNotEqual(r.header("x-sidecar-deployment"), down)
            if home[c] != down { XCTAssertEqual(r.header("x-sidecar-deployment"), home[c], "the others stay") }
            home[c] = r.header("x-sidecar-deployment")
        }
        upstreams[index].forcedStatus.withLockedValue { $0 = nil }
        for c in 0..<8 {
            let r = try await harness.request("POST", "/v1/chat/completions", body: body(c, turn: 2))
            XCTAssertEqual(r.header("x-sidecar-deployment"), home[c], "a moved conversation stays where its prefix is cached now")
        }
    }

    /// `llm-sidecar stats` and `spend` read the same tallies from the spend rows, priced at the
    /// deployment's model.
    func testSpendRowsBecomeProviderCacheTallies() {
        var s = ResponseCacheStore.Spend()
        s.requests = 2
        s.promptTokens = 1_000
        s.cachedTokens = 800
        var other = ResponseCacheStore.Spend()
        other.requests = 1
        other.promptTokens = 1_000
        let rows = [ResponseCacheStore.SpendKey(model: "agent", deployment: "d0/gpt-4.1", client: "a"): s,
                    ResponseCacheStore.SpendKey(model: "agent", deployment: "d0/gpt-4.1", client: "b"): other]
        let t = CacheStatsReport.providerCache(rows, prices: PriceTable())["d0/gpt-4.1"]
        XCTAssertEqual(t?.answers, 3)
        XCTAssertEqual(t?.hitRatio ?? 0, 0.4, accuracy: 1e-12)
        XCTAssertEqual(t?.usdSaved ?? 0, 800 * 1.5 / 1_000_000, accuracy: 1e-12)
    }
}
