import Foundation
import SidecarCore
import SidecarStore
import SidecarTestSupport
import XCTest

/// Spend accounting end to end: usage from JSON and streamed answers, priced, per model,
/// deployment and client; cache hits cost nothing; `llm-sidecar spend --json` reads it back.
final class SpendTests: XCTestCase {
    func testUpstreamCallsArePricedAndHitsAreFree() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let harness = try await ProxyHarness(upstreamURL: upstream.url)
        defer { Task { await harness.stop() } }
        let a = [("authorization", "Bearer client-a")], b = [("authorization", "Bearer client-b")]
        let sampled = #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#
        let cached = #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#
        _ = try await harness.request(headers: a, body: sampled)
        _ = try await harness.request(headers: b, body: sampled)
        try await expectEqual(try await harness.request(headers: a, body: cached).header("x-sidecar-cache"), "miss")
        try await expectEqual(try await harness.request(headers: a, body: cached).header("x-sidecar-cache"), "hit")
        let stream = #"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#
        let streamed = try await harness.request(headers: a + [("x-fake-events", "4")], body: stream)
        XCTAssertTrue(streamed.body.contains(#""usage":{"prompt_tokens":11"#))
        _ = try await harness.request(headers: a + [("x-fake-status", "500")], body: sampled)  // errors cost nothing
        await harness.server.flushCache()

        let r = try BinaryTests.run(["spend", "--json", "--database", harness.cachePath])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        let today = try XCTUnwrap(json["today"] as? [String: Any])
        let total = try XCTUnwrap(today["total"] as? [String: Any])
        XCTAssertEqual(total["requests"] as? Int, 4, "three JSON answers and one stream reached upstream; the hit and the 500 cost nothing")
        XCTAssertEqual(total["prompt_tokens"] as? Int, 3 * 19 + 11)
        XCTAssertEqual(total["completion_tokens"] as? Int, 3 * 28 + 4)
        // gpt-4o-mini: $0.15 in, $0.60 out per million tokens.
        XCTAssertEqual(try XCTUnwrap(total["usd"] as? Double), (68 * 0.15 + 88 * 0.60) / 1_000_000, accuracy: 1e-9)
        let clients = try XCTUnwrap(today["by_client"] as? [String: [String: Any]])
        XCTAssertEqual(clients.count, 2, "spend is kept per client credential (hashed)")
        XCTAssertEqual(clients.values.map { $0["requests"] as? Int ?? 0 }.sorted(), [1, 3])
        XCTAssertFalse(r.stdout.contains("client-a"), "credentials are never stored, only their hash")
        let table = try BinaryTests.run(["spend", "--database", harness.cachePath])
        XCTAssertTrue(table.stdout.contains("gpt-4o-mini"), table.stdout)
    }
}

extension SpendTests {
    /// Streams are accounted for even when the client did not ask for usage: the sidecar asks the
    /// upstream, and removes the extra chunk from what that client receives (also on cache replays).
    func testStreamingUsageIsCountedAndTheExtraChunkIsInvisible() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let harness = try await ProxyHarness(upstreamURL: upstream.url)
        defer { Task { await harness.stop() } }
        let plain = #"{"model":"gpt-4o-mini","temperature":0,"stream":true,"messages":[]}"#
        let r = try await harness.request(headers: [("x-fake-events", "3")], body: plain)
        XCTAssertEqual(r.body, (0..<3).map { FakeUpstream.event($0) }.joined() + "data: [DONE]\n\n", "no usage chunk for a client that did not ask")
        XCTAssertEqual(upstream.requests.last.map { String(decoding: $0.body, as: UTF8.self) },
                       #"{"stream_options":{"include_usage":true},"model":"gpt-4o-mini","temperature":0,"stream":true,"messages":[]}"#,
                       "the upstream was asked for usage")
        // A client that asks gets the chunk, here from the cache (stream_options is not part of the key).
        let asking = #"{"model":"gpt-4o-mini","temperature":0,"stream":true,"stream_options":{"include_usage":true},"messages":[]}"#
        let hit = try await harness.request(headers: [("x-fake-events", "3")], body: asking)
        XCTAssertEqual(hit.header("x-sidecar-cache"), "hit")
        XCTAssertTrue(hit.body.hasSuffix(FakeUpstream.usageEvent(3) + "data: [DONE]\n\n"), hit.body)
        let replay = try await harness.request(headers: [("x-fake-events", "3")], body: plain)
        XCTAssertEqual(replay.header("x-sidecar-cache"), "hit")
        XCTAssertEqual(replay.body, r.body, "and a replay to a client that did not ask has none")
        await harness.server.flushCache()
        let store = try ResponseCacheStore(path: harness.cachePath)
        let spend = try store.spend(since: "2000-01-01").values.reduce(into: ResponseCacheStore.Spend()) { $0 += $1 }
        XCTAssertEqual(spend.requests, 1, "one upstream call")
        XCTAssertEqual(spend.promptTokens, 11)
        XCTAssertEqual(spend.completionTokens, 3, "the fake counts one completion token per event")
    }

    /// A tiny budget stops (or downgrades) at exactly the request that would overshoot it.
    func testABudgetStopsOrDowngradesAtTheRightRequest() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let body = #"{"model":"gpt-4o-mini","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#
        let price = PriceTable().price(of: "gpt-4o-mini")!
        let actual = price.cost(promptTokens: 19, completionTokens: 28)  // what each answer's usage says
        let estimate = BudgetLedger.estimate(bodyBytes: body.utf8.count, maxTokens: 10, price: price)
        let budget = 0.0001
        var expectedOK = 0
        while Double(expectedOK) * actual + estimate <= budget { expectedOK += 1 }

        for downgrade in [false, true] {
            let harness = try await ProxyHarness(upstreamURL: upstream.url, configure: { c in
                c.cache.mode = .off
                c.budgets.limits.dailyUSD = budget
                if downgrade {
                    c.budgets.onExhausted = .downgrade("my-cheap-model")
                    c.prices["my-cheap-model"] = .init(inputPerMTok: 0, outputPerMTok: 0)
                }
            })
            var statuses: [Int] = []
            var downgraded: [String?] = []
            for _ in 0..<(expectedOK + 3) {
                let r = try await harness.request(body: body)
                statuses.append(r.status)
                downgraded.append(r.header("x-sidecar-downgraded-from"))
                if r.status == 429 { XCTAssertEqual(openAIError(r.body)?.code, "budget_exceeded") }
            }
            let metrics = try await harness.request("GET", "/metrics").body
            XCTAssertTrue(metrics.contains(#"llm_sidecar_budget_used_ratio{period="day"}"#), metrics)
            await harness.stop()
            XCTAssertEqual(Array(statuses.prefix(expectedOK)), Array(repeating: 200, count: expectedOK), "downgrade: \(downgrade)")
            if downgrade {
                XCTAssertEqual(Array(statuses.suffix(3)), [200, 200, 200], "the cheaper model goes on")
                XCTAssertEqual(Array(downgraded.suffix(3)), ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini"])
                XCTAssertEqual(upstream.requests.last.map { String(decoding: $0.body, as: UTF8.self) }?.contains(#""model":"my-cheap-model""#), true)
            } else {
                XCTAssertEqual(Array(statuses.suffix(3)), [429, 429, 429], "stops at request \(expectedOK + 1)")
            }
        }
    }
}
