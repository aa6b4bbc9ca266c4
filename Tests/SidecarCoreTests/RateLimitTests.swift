import NIOCore
import SidecarCore
import XCTest

/// Token buckets and the per-client limiter against a manual clock.
final class RateLimitTests: XCTestCase {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func testABucketRefillsContinuouslyAndSaysWhenToComeBack() {
        var b = TokenBucket(capacity: 2, perMinute: 60, now: t0)  // one token per second
        XCTAssertEqual(b.take(now: t0), .allowed(remaining: 1))
        XCTAssertEqual(b.take(now: t0), .allowed(remaining: 0))
        XCTAssertEqual(b.take(now: t0), .limited(retryAfter: .seconds(1)))
        XCTAssertEqual(b.take(now: t0 + .milliseconds(400)), .limited(retryAfter: .milliseconds(600)))
        XCTAssertEqual(b.take(now: t0 + .seconds(1)), .allowed(remaining: 0))
        XCTAssertEqual(b.timeToFull(now: t0 + .seconds(1)), .seconds(2))
        XCTAssertEqual(b.take(now: t0 + .seconds(100)), .allowed(remaining: 1), "never more than the capacity")
        XCTAssertFalse(b.isFull(now: t0 + .seconds(100)))
        XCTAssertTrue(b.isFull(now: t0 + .seconds(101)))
    }

    func testClientsHaveTheirOwnBucketsAndIdleOnesAreForgotten() {
        var limiter = ClientRateLimiter(perMinute: 60, burst: 1)
        XCTAssertTrue(limiter.request(client: "a", now: t0).allowed)
        let second = limiter.request(client: "a", now: t0)
        XCTAssertFalse(second.allowed)
        XCTAssertEqual(second.retryAfter, .seconds(1))
        XCTAssertTrue(limiter.request(client: "b", now: t0).allowed, "another credential has its own budget")
        // Thousands of one-off clients; two minutes later their buckets are full again and swept.
        for i in 0..<3_000 { _ = limiter.request(client: "c\(i)", now: t0) }
        XCTAssertEqual(limiter.clients, 3_002)
        for _ in 0..<5_000 { _ = limiter.request(client: "busy", now: t0 + .seconds(120)) }
        XCTAssertLessThan(limiter.clients, 10, "memory follows the clients active in the last minute")
    }

    func testLimitsUnderManyConcurrentClientsNeverExceedTheBudget() {
        var limiter = ClientRateLimiter(perMinute: 600, burst: 10)
        var allowed = 0
        // 100 requests in the same instant, then 1 s later: 10 + 10.
        for _ in 0..<100 where limiter.request(client: "x", now: t0).allowed { allowed += 1 }
        for _ in 0..<100 where limiter.request(client: "x", now: t0 + .seconds(1)).allowed { allowed += 1 }
        XCTAssertEqual(allowed, 20)
    }

    func testLimitsConfiguration() throws {
        let base = "[upstreams.a]\nurl = \"http://x\"\n"
        let c = try SidecarConfiguration.load(toml: base + "[limits]\nclient_rpm = 600\nclient_burst = 20\n", file: "c.toml", environment: [:], fileExists: { _ in true })
        XCTAssertEqual(c.limits.clientRPM, 600)
        XCTAssertEqual(c.limits.clientBurst, 20)
        XCTAssertThrowsError(try SidecarConfiguration.load(toml: base + "[limits]\nclient_burst = 20\n", file: "c.toml", environment: [:], fileExists: { _ in true })) {
            XCTAssertEqual("\($0)", "c.toml:4: limits.client_burst: needs client_rpm")
        }
    }

    func testTokenEstimatesAreCorrectedByUsage() {
        var tpm = TokenBucket(capacity: 1_000, perMinute: 1_000, now: t0)
        XCTAssertEqual(tpm.take(800, now: t0), .allowed(remaining: 200))
        XCTAssertFalse(tpm.has(500, now: t0))
        tpm.adjust(by: -700, now: t0)  // the answer used 100, not 800
        XCTAssertTrue(tpm.has(500, now: t0))
        tpm.adjust(by: 1_500, now: t0)  // an underestimate is paid back, below zero
        XCTAssertEqual(tpm.timeUntil(1, now: t0), .milliseconds(36_060))
    }

    func testOpenAIDurationFormat() {
        XCTAssertEqual(ClientRateLimiter.openAIDuration(.milliseconds(120)), "120ms")
        XCTAssertEqual(ClientRateLimiter.openAIDuration(.seconds(1)), "1s")
        XCTAssertEqual(ClientRateLimiter.openAIDuration(.milliseconds(1500)), "1.5s")
        XCTAssertEqual(ClientRateLimiter.openAIDuration(.seconds(360)), "6m0s")
    }
}
