import Foundation
import NIOCore
import SidecarCore
import SidecarProxy
import SidecarTestSupport
import XCTest

/// Active health checks end to end: two FakeUpstreams behind one group, probed every 50 ms.
final class HealthCheckTests: XCTestCase {
    var upstreams: [FakeUpstream] = []
    var harness: ProxyHarness!

    override func tearDown() async throws {
        await harness?.stop()
        for u in upstreams { await u.stop() }
    }

    private func start(beforeStart: (FakeUpstream, FakeUpstream) -> Void) async throws {
        for _ in 0..<2 { upstreams.append(try await FakeUpstream.start()) }
        beforeStart(upstreams[0], upstreams[1])
        let urls = upstreams.map(\.url)
        harness = try await ProxyHarness(upstreamURL: urls[0], configure: { c in
            c.cache.mode = .off
            var check = SidecarConfiguration.HealthCheck()
            check.path = "/v1/models"
            check.interval = .milliseconds(50)
            check.timeout = .milliseconds(50)
            let all = zip(["a", "b"], urls).compactMap { name, url -> SidecarConfiguration.Upstream? in
                guard case .success(let u) = UpstreamURL.parse(url) else { return nil }
                var up = SidecarConfiguration.Upstream(name: name, url: u)
                up.healthCheck = check
                return up
            }
            c = SidecarConfiguration(server: c.server, upstreams: all, log: c.log, cache: c.cache)
            c.server.defaultUpstream = nil
            c.models = [.init(name: "m", deployments: [.init(upstream: "a", model: "m"), .init(upstream: "b", model: "m")])]
        })
    }

    private func chats(to upstream: FakeUpstream) -> Int { upstream.requests.filter { $0.method == "POST" }.count }

    private func deployment(_ name: String) async throws -> [String: Any] {
        let r = try await harness.request("GET", "/stats")
        let stats = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any])
        let routing = try XCTUnwrap(stats["routing"] as? [String: Any], r.body)
        let group = try XCTUnwrap(routing["m"] as? [[String: Any]], r.body)
        return try XCTUnwrap(group.first { $0["deployment"] as? String == name }, r.body)
    }

    private func checkStatus(_ name: String) async throws -> String? {
        (try await deployment(name)["health_check"] as? [String: Any])?["status"] as? String
    }

    /// A deployment whose probe answers 503 from the start never gets a client request; once its
    /// probe passes `healthy` times it takes requests again, and a 503 again takes it out.
    func testAProbeAnswering503KeepsClientRequestsAwayAndRecoveryBringsThemBack() async throws {
        try await start { _, b in b.forcedStatus.withLockedValue { $0 = (503, nil) } }
        for _ in 0..<10 {
            let r = try await harness.request(body: #"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.header("x-sidecar-deployment"), "a/m")
            XCTAssertEqual(r.header("x-sidecar-attempts"), "1", "no attempt failed on b first")
        }
        XCTAssertEqual(chats(to: upstreams[1]), 0, "no client request reached the deployment that is down")
        XCTAssertGreaterThan(upstreams[1].requests.count, 0, "b was probed")
        XCTAssertTrue(upstreams[1].requests.allSatisfy { $0.method == "GET" && $0.uri == "/v1/models" })
        let b = try await deployment("b/m")
        XCTAssertEqual(b["health"] as? String, "down")
        XCTAssertEqual((b["health_check"] as? [String: Any])?["last_failure"] as? String, "answered 503")
        let metrics = try await harness.request("GET", "/metrics").body
        XCTAssertTrue(metrics.contains(#"llm_sidecar_upstream_health_check_up{upstream="b"} 0"#), metrics)
        XCTAssertTrue(metrics.contains(#"llm_sidecar_upstream_health_check_up{upstream="a"} 1"#), metrics)

        // Back: the probe passes; least-connections sends b its share.
        upstreams[1].forcedStatus.withLockedValue { $0 = nil }
        var up = false
        let deadline = Date().addingTimeInterval(5)
        while !up, Date() < deadline {
            up = try await checkStatus("b/m") == "up"
            if !up { try await Task.sleep(nanoseconds: 20_000_000) }
        }
        XCTAssertTrue(up, "b is marked up again")
        for _ in 0..<10 {
            try await expectEqual(try await harness.request(body: #"{"model":"m","messages":[]}"#).status, 200)
        }
        XCTAssertGreaterThan(chats(to: upstreams[1]), 0, "b takes requests again")

        // Down again while running: after `unhealthy` failed probes, no new request goes there.
        upstreams[1].forcedStatus.withLockedValue { $0 = (503, nil) }
        var down = false
        let deadline2 = Date().addingTimeInterval(5)
        while !down, Date() < deadline2 {
            down = try await checkStatus("b/m") == "down"
            if !down { try await Task.sleep(nanoseconds: 20_000_000) }
        }
        XCTAssertTrue(down, "b is marked down again")
        let before = chats(to: upstreams[1])
        for _ in 0..<10 {
            let r = try await harness.request(body: #"{"model":"m","messages":[]}"#)
            XCTAssertEqual(r.header("x-sidecar-deployment"), "a/m")
        }
        XCTAssertEqual(chats(to: upstreams[1]), before)
    }

    /// A probe that gets no answer within `timeout` fails like a 503: the slow deployment is
    /// down before a client request waits on it.
    func testAProbeWithoutAnAnswerInTimeIsAFailure() async throws {
        try await start { _, b in b.extraDelayMs.withLockedValue { $0 = 500 } }
        let r = try await harness.request(body: #"{"model":"m","messages":[]}"#)
        XCTAssertEqual(r.header("x-sidecar-deployment"), "a/m")
        let b = try await deployment("b/m")
        XCTAssertEqual(b["health"] as? String, "down")
        XCTAssertEqual((b["health_check"] as? [String: Any])?["last_failure"] as? String, "no answer within 50ms")
        XCTAssertEqual(chats(to: upstreams[1]), 0)
    }

    /// When every deployment is down the group answers 429 at once rather than sending a request
    /// where no probe passed.
    func testWhenEveryDeploymentIsDownTheGroupRefusesAtOnce() async throws {
        try await start { a, b in
            a.forcedStatus.withLockedValue { $0 = (500, nil) }
            b.forcedStatus.withLockedValue { $0 = (503, nil) }
        }
        let r = try await harness.request(body: #"{"model":"m","messages":[]}"#)
        XCTAssertEqual(r.status, 429, r.body)
        XCTAssertEqual(chats(to: upstreams[0]) + chats(to: upstreams[1]), 0)
    }
}
