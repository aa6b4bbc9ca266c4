import Foundation
import NIOCore
import NIOPosix
import SidecarCore
import SidecarProxy
import SidecarTestSupport
import XCTest

/// `[[models]]` groups end to end: several FakeUpstreams behind one model name.
final class RoutingTests: XCTestCase {
    var upstreams: [FakeUpstream] = []
    var harness: ProxyHarness!

    override func tearDown() async throws {
        await harness?.stop()
        for u in upstreams { await u.stop() }
    }

    /// Starts `count` upstreams named a, b, c… and a sidecar whose default upstream is "a" (or none).
    private func start(_ count: Int, defaultUpstream: Bool = true, models: [SidecarConfiguration.ModelGroup]) async throws {
        for _ in 0..<count { upstreams.append(try await FakeUpstream.start()) }
        let urls = upstreams.map(\.url)
        harness = try await ProxyHarness(upstreamURL: urls[0], configure: { c in
            c.cache.mode = .off
            var all: [SidecarConfiguration.Upstream] = []
            for (i, url) in urls.enumerated() {
                guard case .success(let u) = UpstreamURL.parse(url) else { continue }
                all.append(.init(name: String(UnicodeScalar(UInt8(97 + i))), url: u))
            }
            c = SidecarConfiguration(server: c.server, upstreams: all, log: c.log, cache: c.cache)
            c.server.defaultUpstream = defaultUpstream ? "a" : nil
            c.models = models
        })
    }

    private func post(_ body: String, headers: [(String, String)] = []) async throws -> TestResponse {
        try await harness.request("POST", "/v1/chat/completions", headers: headers, body: body)
    }

    func testModelRewriteIsByteExactAndTheAnswerNamesItsDeployment() async throws {
        try await start(2, models: [.init(name: "team-model", deployments: [.init(upstream: "b", model: "gpt-4o-mini-2024-07-18")])])
        let body = #"{ "messages" : [ {"role":"user","content":"\"model\": keep me"} ],"model" :  "team-model" , "temperature": 1.0e0 }"#
        let r = try await post(body)
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.header("x-sidecar-deployment"), "b/gpt-4o-mini-2024-07-18")
        XCTAssertEqual(upstreams[0].counters.requests, 0)
        let sent = try XCTUnwrap(upstreams[1].requests.first)
        XCTAssertEqual(String(decoding: sent.body, as: UTF8.self),
                       #"{ "messages" : [ {"role":"user","content":"\"model\": keep me"} ],"model" :  "gpt-4o-mini-2024-07-18" , "temperature": 1.0e0 }"#,
                       "only the model's value changes")
        XCTAssertEqual(sent.header("content-length"), String(sent.body.count))

        // A model no group names goes to the default upstream unchanged.
        let other = #"{"model":"gpt-4o","messages":[]}"#
        let r2 = try await post(other)
        XCTAssertEqual(r2.status, 200)
        XCTAssertNil(r2.header("x-sidecar-deployment"))
        XCTAssertEqual(upstreams[0].requests.first.map { String(decoding: $0.body, as: UTF8.self) }, other)

        // GET /v1/models: the default upstream's list plus the groups.
        let models = try await harness.request("GET", "/v1/models")
        let ids = ((try JSONSerialization.jsonObject(with: Data(models.body.utf8)) as? [String: Any])?["data"] as? [[String: Any]])?.compactMap { $0["id"] as? String }
        XCTAssertEqual(ids, ["gpt-4o-mini", "team-model"])
    }

    func testUnknownModelWithoutADefaultUpstreamIs404ModelNotFound() async throws {
        try await start(1, defaultUpstream: false, models: [.init(name: "m", deployments: [.init(upstream: "a", model: "m")])])
        let r = try await post(#"{"model":"nope","messages":[]}"#)
        XCTAssertEqual(r.status, 404)
        let e = openAIError(r.body)
        XCTAssertEqual(e?.code, "model_not_found")
        XCTAssertEqual(e?.type, "invalid_request_error")
        XCTAssertTrue(e?.message.contains("`nope`") ?? false, r.body)
        XCTAssertEqual(upstreams[0].counters.requests, 0)
        try await expectEqual(try await post(#"{"model":"m","messages":[]}"#).status, 200)
        let list = try await harness.request("GET", "/v1/models")
        XCTAssertEqual(list.status, 200)
        XCTAssertTrue(list.body.contains(#""id":"m""#), list.body)
    }

    /// The merged model list never fails silently: an upstream list that cannot be read is a 502
    /// naming the cause (it was an empty 200), and the list is asked for unencoded (issue 11, item 11).
    func testAModelListThatCannotBeMergedIsAnErrorNotAnEmptyAnswer() async throws {
        try await start(1, models: [.init(name: "team-model", deployments: [.init(upstream: "a", model: "gpt-4o-mini")])])
        for body in ["not json", #"{"object":"list"}"#, #"[1,2]"#] {
            let r = try await harness.request("GET", "/v1/models", headers: [("x-fake-body", body)])
            XCTAssertEqual(r.status, 502, "\(body): \(r.body)")
            XCTAssertEqual(openAIError(r.body)?.code, "upstream_invalid_response")
            XCTAssertTrue(openAIError(r.body)?.message.contains("/v1/models") == true, r.body)
        }
        let ok = try await harness.request("GET", "/v1/models", headers: [("accept-encoding", "gzip, br")])
        XCTAssertEqual(ok.status, 200)
        XCTAssertTrue(ok.body.contains(#""id":"team-model""#), ok.body)
        let sent = try XCTUnwrap(upstreams[0].requests.last)
        XCTAssertFalse(sent.headers.contains { $0.0.lowercased() == "accept-encoding" }, "\(sent.headers)")
        let metrics = try await harness.request("GET", "/metrics").body
        XCTAssertTrue(metrics.contains(#"llm_sidecar_errors_total{code="upstream_invalid_response"} 3"#), metrics)
    }

    func testWeightedLeastConnectionsSharesSlowRequestsByWeight() async throws {
        try await start(2, models: [.init(name: "g", deployments: [
            .init(upstream: "a", model: "g-a", weight: 3), .init(upstream: "b", model: "g-b", weight: 1),
        ])])
        let harness = self.harness!
        let results = try await withThrowingTaskGroup(of: TestResponse.self) { group in
            for _ in 0..<40 {
                group.addTask {
                    try await harness.request("POST", "/v1/chat/completions", headers: [("x-fake-delay-ms", "400")],
                                              body: #"{"model":"g","messages":[]}"#)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        XCTAssertTrue(results.allSatisfy { $0.status == 200 })
        let a = upstreams[0].counters.requests, b = upstreams[1].counters.requests
        XCTAssertEqual(a + b, 40)
        XCTAssertTrue((26...34).contains(a), "3:1 weights under saturation: a=\(a) b=\(b)")
    }

    func testMaxConcurrencyOverflowsToTheFallbackGroupThenQueuesThen429() async throws {
        var main = SidecarConfiguration.ModelGroup(name: "main", fallbacks: ["backup"], deployments: [.init(upstream: "a", model: "main", maxConcurrency: 1)])
        main.queueTimeout = .milliseconds(500)
        try await start(2, models: [main, .init(name: "backup", deployments: [.init(upstream: "b", model: "backup-model", maxConcurrency: 1)])])
        let harness = self.harness!
        let slow = { @Sendable (ms: Int) in
            try await harness.request("POST", "/v1/chat/completions", headers: [("x-fake-delay-ms", String(ms))], body: #"{"model":"main","messages":[]}"#)
        }
        async let first = slow(1_000)
        try await Task.sleep(nanoseconds: 100_000_000)
        async let second = slow(1_000)
        try await Task.sleep(nanoseconds: 100_000_000)
        let started = Date()
        let third = try await post(#"{"model":"main","messages":[]}"#)
        XCTAssertEqual(third.status, 429, "both deployments stayed at max_concurrency for the whole queue_timeout")
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(started), 0.49, "it waited in the queue first")
        XCTAssertEqual(third.header("retry-after"), "1")
        XCTAssertEqual(openAIError(third.body)?.code, "deployments_busy")
        // A queued request is served as soon as a slot frees (the first ends at about 1.0 s; this
        // one queues at about 0.7 s and would give up at 1.2 s).
        async let fourth = slow(0)
        let (r1, r2, r4) = try await (first, second, fourth)
        XCTAssertEqual(r1.header("x-sidecar-deployment"), "a/main")
        XCTAssertEqual(r2.header("x-sidecar-deployment"), "b/backup-model", "the fallback group took the overflow")
        XCTAssertEqual(r4.status, 200, "queued, then served when the first finished")
        XCTAssertEqual(upstreams[1].requests.first.map { String(decoding: $0.body, as: UTF8.self) }, #"{"model":"backup-model","messages":[]}"#)
        // Slots came back exactly once: both deployments take requests again, nothing is in flight.
        try await expectEqual(try await post(#"{"model":"main","messages":[]}"#).header("x-sidecar-deployment"), "a/main")
        let metrics = try await harness.request("GET", "/metrics").body
        XCTAssertTrue(metrics.contains(#"llm_sidecar_deployment_in_flight{deployment="a/main"} 0"#), metrics)
        XCTAssertTrue(metrics.contains(#"llm_sidecar_deployment_in_flight{deployment="b/backup-model"} 0"#), metrics)
    }

    func testAClientThatLeavesGivesItsSlotBackExactlyOnce() async throws {
        try await start(1, models: [.init(name: "g", deployments: [.init(upstream: "a", model: "g", maxConcurrency: 1)])])
        let harness = self.harness!
        // One request holds the only slot; a second waits in the queue; both clients hang up.
        let holder = try await harness.connection()
        let waiter = try await harness.connection()
        async let h = try? holder.request("POST", "/v1/chat/completions", headers: [("x-fake-delay-ms", "300"), ("content-type", "application/json")],
                                          body: #"{"model":"g","messages":[]}"#, timeout: .milliseconds(100))
        try await Task.sleep(nanoseconds: 30_000_000)
        async let w = try? waiter.request("POST", "/v1/chat/completions", headers: [("content-type", "application/json")],
                                          body: #"{"model":"g","messages":[]}"#, timeout: .milliseconds(100))
        _ = await (h, w)
        try await Task.sleep(nanoseconds: 400_000_000)
        let metrics = try await harness.request("GET", "/metrics").body
        XCTAssertTrue(metrics.contains(#"llm_sidecar_deployment_in_flight{deployment="a/g"} 0"#), metrics)
        try await expectEqual(try await post(#"{"model":"g","messages":[]}"#).status, 200)
    }

    func testADeadDeploymentIsEjectedAfterThreeFailures() async throws {
        // A port nobody listens on: connection refused.
        let probe = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let deadPort = probe.localAddress!.port!
        try await probe.close()
        try await start(1, models: [.init(name: "g", deployments: [.init(upstream: "a", model: "g"), .init(upstream: "dead", model: "g")])])
        await harness.stop()
        let url = upstreams[0].url
        harness = try await ProxyHarness(upstreamURL: url, configure: { c in
            c.cache.mode = .off
            guard case .success(let dead) = UpstreamURL.parse("http://127.0.0.1:\(deadPort)") else { return }
            c.upstreams.append(.init(name: "dead", url: dead))
            c.upstreams[0] = .init(name: "a", url: c.upstreams[0].url)
            c.server.defaultUpstream = "a"
            c.models = [.init(name: "g", deployments: [.init(upstream: "a", model: "g"), .init(upstream: "dead", model: "g")])]
        })
        for _ in 0..<30 {
            let r = try await post(#"{"model":"g","messages":[]}"#)
            XCTAssertEqual(r.status, 200, "a refused connection is retried on the other deployment")
        }
        XCTAssertEqual(upstreams[0].counters.requests, 30)
        let stats = try await harness.request("GET", "/stats").body
        XCTAssertTrue(stats.contains(#""deployment" : "dead/g""#) && stats.contains(#""health" : "ejected""#), stats)
        let metrics = try await harness.request("GET", "/metrics").body
        XCTAssertTrue(metrics.contains(#"llm_sidecar_deployment_ejected{deployment="dead/g"} 1"#), metrics)
        XCTAssertTrue(metrics.contains(#"llm_sidecar_deployment_in_flight{deployment="a/g"} 0"#), "every slot was given back")
        let connectRetries = metrics.split(separator: "\n").first { $0.hasPrefix(#"llm_sidecar_routing_retries_total{reason="connect"}"#) }
        XCTAssertEqual(connectRetries.map { $0.split(separator: " ").last.map(String.init) }, "3",
                       "the dead deployment cost three failed attempts in all, then it was ejected")
    }

    private func twoDeployments(fallbackOnly: Bool = false, maxAttempts: Int = 3) async throws {
        var main = SidecarConfiguration.ModelGroup(name: "g", deployments: [.init(upstream: "a", model: "g-a")])
        main.maxAttempts = maxAttempts
        if fallbackOnly {
            main.fallbacks = ["backup"]
            try await start(2, models: [main, .init(name: "backup", deployments: [.init(upstream: "b", model: "g-b")])])
        } else {
            main.deployments.append(.init(upstream: "b", model: "g-b"))
            try await start(2, models: [main])
        }
    }

    func testA500IsRetriedElsewhereAndTheFailingDeploymentIsEjected() async throws {
        try await twoDeployments()
        upstreams[0].forcedStatus.withLockedValue { $0 = (500, nil) }
        var attempts: [String] = []
        for _ in 0..<20 {
            let r = try await post(#"{"model":"g","messages":[]}"#)
            XCTAssertEqual(r.status, 200, "the client never sees the 500")
            XCTAssertEqual(r.header("x-sidecar-deployment"), "b/g-b")
            attempts.append(r.header("x-sidecar-attempts") ?? "?")
        }
        XCTAssertEqual(upstreams[0].counters.requests, 3, "three 500s eject it; later requests do not touch it")
        XCTAssertEqual(attempts.filter { $0 == "2" }.count, 3)
        XCTAssertEqual(upstreams[1].counters.requests, 20)
    }

    func testA429WithRetryAfterMovesTrafficAwayForThatLong() async throws {
        try await twoDeployments()
        upstreams[0].forcedStatus.withLockedValue { $0 = (429, "2") }
        // Deployment a is tried first at some point (ties are random); once it says 429 it rests 2 s.
        var sawA = 0
        let start = Date()
        while sawA == 0, Date().timeIntervalSince(start) < 1 {
            let r = try await post(#"{"model":"g","messages":[]}"#)
            XCTAssertEqual(r.status, 200)
            sawA = upstreams[0].counters.requests
        }
        XCTAssertEqual(sawA, 1)
        let rested = Date()
        upstreams[0].forcedStatus.withLockedValue { $0 = nil }
        while Date().timeIntervalSince(rested) < 1.7 {
            _ = try await post(#"{"model":"g","messages":[]}"#)
        }
        XCTAssertEqual(upstreams[0].counters.requests, 1, "no request reached the rate-limited deployment within its Retry-After")
        // Ejection lasts at least the Retry-After, and at least the base ejection (5 s) the first time.
        try await Task.sleep(nanoseconds: 3_500_000_000)
        for _ in 0..<10 { _ = try await post(#"{"model":"g","messages":[]}"#) }
        XCTAssertGreaterThan(upstreams[0].counters.requests, 1, "afterwards a probe goes through and it takes traffic again")
    }

    func testTheFallbackGroupAnswersWhenTheWholeGroupIsDown() async throws {
        try await twoDeployments(fallbackOnly: true)
        upstreams[0].forcedStatus.withLockedValue { $0 = (503, nil) }
        let r = try await post(#"{"model":"g","messages":[]}"#)
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.header("x-sidecar-deployment"), "b/g-b")
        XCTAssertEqual(r.header("x-sidecar-attempts"), "2")
        XCTAssertEqual(upstreams[1].requests.first.map { String(decoding: $0.body, as: UTF8.self) }, #"{"model":"g-b","messages":[]}"#)
    }

    func testRequestErrorsAreNotRetriedAndAttemptsAreBounded() async throws {
        try await twoDeployments(maxAttempts: 2)
        upstreams[0].forcedStatus.withLockedValue { $0 = (400, nil) }
        upstreams[1].forcedStatus.withLockedValue { $0 = (400, nil) }
        let bad = try await post(#"{"model":"g","messages":[]}"#)
        XCTAssertEqual(bad.status, 400)
        XCTAssertEqual(bad.header("x-sidecar-attempts"), "1", "a 400 says the request is wrong: never retried")
        XCTAssertEqual(upstreams[0].counters.requests + upstreams[1].counters.requests, 1)
        upstreams[0].forcedStatus.withLockedValue { $0 = (503, nil) }
        upstreams[1].forcedStatus.withLockedValue { $0 = (502, nil) }
        let down = try await post(#"{"model":"g","messages":[]}"#)
        XCTAssertTrue([502, 503].contains(down.status), "the last upstream's own answer")
        XCTAssertTrue(down.body.contains("fake upstream error"), down.body)
        XCTAssertEqual(down.header("x-sidecar-attempts"), "2")
    }

    func testASlowFirstTokenMovesTheStreamElsewhere() async throws {
        var g = SidecarConfiguration.ModelGroup(name: "g", deployments: [.init(upstream: "a", model: "g-a", weight: 10), .init(upstream: "b", model: "g-b")])
        g.firstTokenTimeout = .milliseconds(200)
        try await start(2, models: [g])
        upstreams[0].extraDelayMs.withLockedValue { $0 = 2_000 }
        let started = Date()
        let r = try await post(#"{"model":"g","stream":true,"messages":[]}"#)
        XCTAssertEqual(r.status, 200)
        XCTAssertTrue(r.complete && r.body.hasSuffix("data: [DONE]\n\n"))
        XCTAssertEqual(r.header("x-sidecar-deployment"), "b/g-b")
        XCTAssertEqual(r.header("x-sidecar-attempts"), "2")
        XCTAssertLessThan(Date().timeIntervalSince(started), 1.5, "it did not wait for the slow deployment")
        XCTAssertEqual(upstreams[0].counters.requests, 1)
        // Not a stream: no first-token timeout, the slow answer is awaited.
        let plain = try await post(#"{"model":"g","messages":[]}"#)
        XCTAssertEqual(plain.status, 200)
    }

    func testADeploymentOverItsRPMIsTreatedAsFullThenWaitedFor() async throws {
        var limited = SidecarConfiguration.ModelGroup.Deployment(upstream: "a", model: "g-a", weight: 10)
        limited.rpm = 2
        try await start(2, models: [.init(name: "g", deployments: [limited, .init(upstream: "b", model: "g-b")])])
        var names: [String] = []
        for _ in 0..<5 { names.append(try await post(#"{"model":"g","messages":[]}"#).header("x-sidecar-deployment") ?? "?") }
        XCTAssertEqual(names, ["a/g-a", "a/g-a", "b/g-b", "b/g-b", "b/g-b"], "a's two requests a minute, then b: no 429 from a")
        await harness.stop()
        for u in upstreams { await u.stop() }
        upstreams = []

        // One deployment at 60 requests a minute (one a second): the next request waits for it.
        var only = SidecarConfiguration.ModelGroup(name: "g", deployments: [.init(upstream: "a", model: "g")])
        only.deployments[0].rpm = 60
        only.deployments[0].tpm = 1_000_000
        only.queueTimeout = .seconds(5)
        try await start(1, models: [only])
        for _ in 0..<60 { _ = try await post(#"{"model":"g","max_tokens":5,"messages":[]}"#) }
        let started = Date()
        let r = try await post(#"{"model":"g","max_tokens":5,"messages":[]}"#)
        XCTAssertEqual(r.status, 200)
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(started), 0.5, "it waited for the deployment's rate, not a 429")
        XCTAssertEqual(upstreams[0].counters.requests, 61)
    }

    func testAFailureAfterTheFirstStreamedByteIsNotRetried() async throws {
        try await twoDeployments()
        let r = try await post(#"{"model":"g","stream":true,"messages":[]}"#, headers: [("x-fake-cut-after", "2")])
        XCTAssertEqual(r.status, 200)
        XCTAssertFalse(r.complete, "the client sees its stream end abnormally")
        XCTAssertEqual(upstreams[0].counters.requests + upstreams[1].counters.requests, 1, "never retried once bytes reached the client")
    }
}

extension RoutingTests {
    /// A Responses API request that continues an answer (`previous_response_id`) goes to the
    /// deployment that stored it, whatever the load; others are spread as before.
    func testAContinuedResponseGoesToTheDeploymentThatStoredIt() async throws {
        try await start(3, models: [.init(name: "m", deployments: ["a", "b", "c"].map { .init(upstream: $0, model: "gpt-4o-mini") })])
        var homes: [String: String] = [:]
        for i in 0..<6 {
            let r = try await harness.request("POST", "/v1/responses", body: #"{"model":"m","input":"turn \#(i)"}"#)
            XCTAssertEqual(r.status, 200, r.body)
            let id = try XCTUnwrap(ResponseID.find(in: Array(r.body.utf8)), r.body)
            homes[id] = try XCTUnwrap(r.header("x-sidecar-deployment"))
        }
        XCTAssertEqual(Set(homes.values).count, 3, "new conversations are spread over the deployments")
        for (id, home) in homes {
            for turn in 0..<3 {
                let body = #"{"model":"m","previous_response_id":"\#(id)","input":"again \#(turn)"}"#
                let r = try await harness.request("POST", "/v1/responses", body: body)
                XCTAssertEqual(r.header("x-sidecar-deployment"), home, "\(id) lives on \(home)")
            }
        }
        // Streamed answers are remembered too (the id is in response.created).
        let streamed = try await harness.request("POST", "/v1/responses", body: #"{"model":"m","stream":true,"input":"s"}"#)
        let id = try XCTUnwrap(ResponseID.find(in: Array(streamed.body.utf8)))
        let next = try await harness.request("POST", "/v1/responses", body: #"{"model":"m","previous_response_id":"\#(id)","input":"t"}"#)
        XCTAssertEqual(next.header("x-sidecar-deployment"), streamed.header("x-sidecar-deployment"))
    }
}
