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
