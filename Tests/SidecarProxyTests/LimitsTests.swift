import Foundation
import SidecarCore
import SidecarProxy
import SidecarTestSupport
import XCTest

/// `[limits] client_rpm` end to end, and the official Python `openai` client backing off from it.
final class LimitsTests: XCTestCase {
    var upstream: FakeUpstream!
    var harness: ProxyHarness!

    override func tearDown() async throws {
        await harness?.stop()
        await upstream?.stop()
    }

    private func start(rpm: Int, burst: Int) async throws {
        upstream = try await FakeUpstream.start()
        harness = try await ProxyHarness(upstreamURL: upstream.url, configure: { c in
            c.cache.mode = .off
            c.limits.clientRPM = rpm
            c.limits.clientBurst = burst
        })
    }

    func testAClientOverItsLimitGets429WithOpenAIsHeaders() async throws {
        try await start(rpm: 60, burst: 2)
        let a = [("authorization", "Bearer client-a")]
        try await expectEqual(try await harness.request(headers: a).status, 200)
        try await expectEqual(try await harness.request(headers: a).status, 200)
        let limited = try await harness.request(headers: a)
        XCTAssertEqual(limited.status, 429)
        XCTAssertEqual(limited.header("retry-after"), "1")
        XCTAssertEqual(limited.header("x-ratelimit-limit-requests"), "60")
        XCTAssertEqual(limited.header("x-ratelimit-remaining-requests"), "0")
        XCTAssertNotNil(limited.header("x-ratelimit-reset-requests"))
        let e = openAIError(limited.body)
        XCTAssertEqual(e?.code, "rate_limit_exceeded")
        XCTAssertEqual(e?.type, "requests")
        XCTAssertEqual(upstream.counters.requests, 2, "a limited request never reaches the upstream")
        try await expectEqual(try await harness.request(headers: [("authorization", "Bearer client-b")]).status, 200,
                              "another credential is not affected")
        try await Task.sleep(nanoseconds: 1_050_000_000)
        try await expectEqual(try await harness.request(headers: a).status, 200, "one token came back after a second")
    }

    func testTheOfficialOpenAIClientBacksOffAndSucceeds() async throws {
        guard let python = AdminTests.python else {
            throw XCTSkip("run through `make test`, which installs the openai package (LLM_SIDECAR_TEST_PYTHON)")
        }
        try await start(rpm: 60, burst: 1)
        let script = """
        import sys, time
        from openai import OpenAI
        client = OpenAI(base_url=sys.argv[1], api_key="sk-client", max_retries=5)
        t0 = time.monotonic()
        for i in range(3):
            r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}])
            print(r.choices[0].message.content[:5])
        print(f"elapsed {time.monotonic() - t0:.2f}")
        """
        let (status, output, errors) = try runPython(python, script, ["http://127.0.0.1:\(harness.port)/v1"])
        XCTAssertEqual(status, 0, "the SDK gave up: \(errors)")
        XCTAssertEqual(output.split(separator: "\n").filter { $0 == "Hello" }.count, 3, output)
        let elapsed = Double(output.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
        XCTAssertGreaterThanOrEqual(elapsed, 1.5, "it waited for the limit (Retry-After), it was not let through: \(output)")
        XCTAssertEqual(upstream.counters.requests, 3, "only the allowed attempts reached the upstream")
    }
}
