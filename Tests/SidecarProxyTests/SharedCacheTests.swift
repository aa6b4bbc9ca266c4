import Foundation
import NIOCore
import SidecarCore
import SidecarProxy
import SidecarTestSupport
import XCTest

/// Fleet mode's shared cache tier end to end: two in-process sidecars (nodes A and B, each with its
/// own cache file) sharing one private PostgreSQL, in front of one FakeUpstream.
final class SharedCacheTests: XCTestCase {

    var upstream: FakeUpstream!
    var nodes: [ProxyHarness] = []

    override func tearDown() async throws {
        for n in nodes { await n.stop() }
        nodes = []
        await upstream?.stop()
    }

    static let deterministic = #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"shared?"}]}"#

    func pg() throws -> PostgresServer { try TestPostgres.server() }

    /// Nodes A and B on a fresh database of the calling test.
    func startNodes(_ function: String = #function, timeout: TimeAmount = .seconds(2), coalesceWait: TimeAmount = .seconds(10),
                    configure: @escaping (inout SidecarConfiguration) -> Void = { _ in }) async throws -> (ProxyHarness, ProxyHarness) {
        let name = "s_" + function.lowercased().filter { $0.isLetter || $0.isNumber }
        let url = try pg().createDatabase(name)
        let dir = ProxyHarness.temporaryDirectory()
        let urlFile = dir + "/postgres-url"
        try url.write(toFile: urlFile, atomically: true, encoding: .utf8)
        upstream = try await FakeUpstream.start()
        for node in ["a", "b"] {
            let h = try await ProxyHarness(upstreamURL: upstream.url, configure: { config in
                var fleet = SidecarConfiguration.Fleet(postgresURL: .file(urlFile), sharedCacheMaxBytes: 1 << 30)
                fleet.node = node
                fleet.sharedCacheTimeout = timeout
                fleet.coalesceWait = coalesceWait
                config.fleet = fleet
                configure(&config)
            })
            nodes.append(h)
            let ready = await eventually(10) { h.server.sharedCacheReady == true }
            XCTAssertTrue(ready, "node \(node)'s fleet database was migrated")
        }
        return (nodes[0], nodes[1])
    }

    func post(_ node: ProxyHarness, _ body: String = deterministic, headers: [(String, String)] = [("authorization", "Bearer client-a")]) async throws -> TestResponse {
        try await node.request("POST", "/v1/chat/completions", headers: headers, body: body)
    }

    /// Until node's answers were written behind (`stored` reached `n`).
    func writtenBehind(_ node: ProxyHarness, _ n: Int) async -> Bool {
        await node.server.flushCache()
        return await eventually(10) { (node.server.sharedCacheCounts?["stored"] ?? 0) >= n }
    }

    // (a)
    func testAnAnswerCachedThroughAIsAHitOnB() async throws {
        let (a, b) = try await startNodes()
        let first = try await post(a)
        XCTAssertEqual(first.status, 200)
        XCTAssertEqual(first.header("x-sidecar-cache"), "miss")
        let stored = await writtenBehind(a, 1)
        XCTAssertTrue(stored, "A wrote its answer behind: \(String(describing: a.server.sharedCacheCounts))")
        let second = try await post(b)
        XCTAssertEqual(second.status, 200)
        XCTAssertEqual(second.header("x-sidecar-cache"), "hit")
        XCTAssertEqual(second.body, first.body)
        XCTAssertEqual(upstream.counters.requests, 1)
        XCTAssertEqual(b.server.sharedCacheCounts?["hit"], 1)
        let metrics = try await b.request("GET", "/metrics").body
        XCTAssertTrue(metrics.contains(#"llm_sidecar_fleet_cache_total{result="hit"} 1"#), metrics)
        // Adopted locally: B's next one is a local hit, and B writes nothing behind.
        let third = try await post(b)
        XCTAssertEqual(third.header("x-sidecar-cache"), "hit")
        XCTAssertEqual(b.server.sharedCacheCounts?["hit"], 1, "the second hit on B was local")
        await b.server.flushCache()
        try await Task.sleep(nanoseconds: 200_000_000)
        XCTAssertNil(b.server.sharedCacheCounts?["stored"], "an adopted answer is not written behind again")
        XCTAssertEqual(upstream.counters.requests, 1)
    }

    // (b)
    func testAnotherClientsCredentialMissesOnB() async throws {
        let (a, b) = try await startNodes(configure: { $0.cache.scope = .client })
        let first = try await post(a, headers: [("authorization", "Bearer client-a")])
        XCTAssertEqual(first.status, 200)
        let stored = await writtenBehind(a, 1)
        XCTAssertTrue(stored)
        let other = try await post(b, headers: [("authorization", "Bearer client-b")])
        XCTAssertEqual(other.status, 200)
        XCTAssertEqual(other.header("x-sidecar-cache"), "miss")
        XCTAssertEqual(upstream.counters.requests, 2)
        // The same client on B: a hit.
        let same = try await post(b, headers: [("authorization", "Bearer client-a")])
        XCTAssertEqual(same.header("x-sidecar-cache"), "hit")
        XCTAssertEqual(upstream.counters.requests, 2)
    }

    // (c)
    func testIdenticalRequestsOnTwoNodesAtOnceCostOneUpstreamCall() async throws {
        let (a, b) = try await startNodes()
        // Warm both nodes' pools to the database (a different request), so the race below is
        // between the two lookups and not connection set-up.
        _ = try await post(a, #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"warm a"}]}"#)
        _ = try await post(b, #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"warm b"}]}"#)
        let before = upstream.counters.requests
        let slow: [(String, String)] = [("authorization", "Bearer client-a"), ("x-fake-delay-ms", "1500")]
        let body = Self.deterministic
        async let ra = a.request("POST", "/v1/chat/completions", headers: slow, body: body)
        async let rb = b.request("POST", "/v1/chat/completions", headers: slow, body: body)
        let (x, y) = try await (ra, rb)
        XCTAssertEqual(x.status, 200)
        XCTAssertEqual(y.status, 200)
        XCTAssertEqual(x.body, y.body)
        XCTAssertEqual(upstream.counters.requests - before, 1, "one upstream call for both nodes: \(x.header("x-sidecar-cache") ?? "-"), \(y.header("x-sidecar-cache") ?? "-")")
        XCTAssertEqual(Set([x.header("x-sidecar-cache"), y.header("x-sidecar-cache")]), Set(["miss", "hit"]))
        let followerHits = (a.server.sharedCacheCounts?["follower_hit"] ?? 0) + (b.server.sharedCacheCounts?["follower_hit"] ?? 0)
        XCTAssertEqual(followerHits, 1)
    }

    // (d)
    func testADatabaseThatIsDownNeverStopsRequests() async throws {
        let pg = try pg()
        let (a, b) = try await startNodes(timeout: .milliseconds(25))
        try pg.stop()
        defer { try? pg.startAgain() }
        for (i, node) in [a, b, a, b].enumerated() {
            let started = Date()
            let r = try await post(node, #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"down \#(i)"}]}"#)
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.header("x-sidecar-cache"), "miss")
            XCTAssertLessThan(Date().timeIntervalSince(started), 2, "a miss is slowed by the shared timeout only")
        }
        XCTAssertEqual(upstream.counters.requests, 4)
        // Local hits still work.
        let again = try await post(a, #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"down 0"}]}"#)
        XCTAssertEqual(again.header("x-sidecar-cache"), "hit")
        let counted = (a.server.sharedCacheCounts ?? [:]).filter { ["timeout", "error"].contains($0.key) }.values.reduce(0, +)
        XCTAssertEqual(counted, 2, "A's two misses were a timeout or an error in the shared tier: \(String(describing: a.server.sharedCacheCounts))")
    }

    // (e)
    func testAStreamedAnswerIsSharedOnceComplete() async throws {
        let (a, b) = try await startNodes()
        let stream = #"{"model":"gpt-4o-mini","temperature":0,"stream":true,"messages":[{"role":"user","content":"stream me"}]}"#
        let first = try await post(a, stream)
        XCTAssertEqual(first.status, 200)
        XCTAssertEqual(first.header("content-type")?.hasPrefix("text/event-stream"), true)
        let stored = await writtenBehind(a, 1)
        XCTAssertTrue(stored)
        let second = try await post(b, stream)
        XCTAssertEqual(second.header("x-sidecar-cache"), "hit")
        XCTAssertEqual(second.body, first.body)
        XCTAssertEqual(upstream.counters.requests, 1)

        // A stream cut short is not stored, so it is not shared.
        let cut = #"{"model":"gpt-4o-mini","temperature":0,"stream":true,"messages":[{"role":"user","content":"cut me"}]}"#
        _ = try? await post(a, cut, headers: [("authorization", "Bearer client-a"), ("x-fake-cut-after", "2")])
        await a.server.flushCache()
        try await Task.sleep(nanoseconds: 300_000_000)
        XCTAssertEqual(a.server.sharedCacheCounts?["stored"], 1)
        let afterCut = try await post(b, cut)
        XCTAssertEqual(afterCut.header("x-sidecar-cache"), "miss")
    }

    // A leader whose answer is not stored releases its claim: the follower on the other node goes
    // upstream at once rather than after `coalesce_wait`.
    func testALeaderThatFailsReleasesItsClaim() async throws {
        let (a, b) = try await startNodes(coalesceWait: .seconds(20))
        _ = try await post(a, #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"warm a"}]}"#)
        _ = try await post(b, #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"warm b"}]}"#)
        let before = upstream.counters.requests
        let failing: [(String, String)] = [("authorization", "Bearer client-a"), ("x-fake-delay-ms", "500"), ("x-fake-status", "500")]
        let body = Self.deterministic
        let started = Date()
        async let ra = a.request("POST", "/v1/chat/completions", headers: failing, body: body)
        async let rb = b.request("POST", "/v1/chat/completions", headers: failing, body: body)
        let (x, y) = try await (ra, rb)
        XCTAssertEqual(x.status, 500)
        XCTAssertEqual(y.status, 500)
        XCTAssertLessThan(Date().timeIntervalSince(started), 10, "the follower did not wait out coalesce_wait")
        XCTAssertEqual(upstream.counters.requests - before, 2, "an error is not shared: each node asked")
        let waited = (a.server.sharedCacheCounts?["follower_timeout"] ?? 0) + (b.server.sharedCacheCounts?["follower_timeout"] ?? 0)
        XCTAssertEqual(waited, 1)
    }

    // A client leaving while its node follows another node's claim: nothing is left behind, and
    // the node answers the same request from the shared tier afterwards.
    func testAClientLeavingWhileFollowingAnotherNode() async throws {
        let (a, b) = try await startNodes()
        _ = try await post(a, #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"warm a"}]}"#)
        _ = try await post(b, #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"warm b"}]}"#)
        let before = upstream.counters.requests
        let body = Self.deterministic
        let leader = Task { try await a.request("POST", "/v1/chat/completions", headers: [("authorization", "Bearer client-a"), ("x-fake-delay-ms", "1500")], body: body) }
        let upstreamNow = upstream
        let claimed = await eventually(5) { (upstreamNow?.counters.requests ?? 0) > before }
        XCTAssertTrue(claimed, "A's leader reached the upstream")
        let request = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer client-a\r\ncontent-type: application/json\r\ncontent-length: \(body.utf8.count)\r\n\r\n" + body
        let gone = try FlightLeaderTests.rawSend(port: b.port, request)
        try await Task.sleep(nanoseconds: 200_000_000)  // B is waiting for A's answer
        FlightLeaderTests.reset(gone)
        let answered = try await leader.value
        XCTAssertEqual(answered.status, 200)
        let followed = await eventually(5) { b.server.sharedCacheCounts?["follower_hit"] == 1 }
        XCTAssertTrue(followed, "B's left request had followed A's claim: \(String(describing: b.server.sharedCacheCounts))")
        let again = try await post(b)
        XCTAssertEqual(again.status, 200)
        XCTAssertEqual(again.header("x-sidecar-cache"), "hit")
        XCTAssertEqual(again.body, answered.body)
        XCTAssertEqual(upstream.counters.requests - before, 1)
        let flightsLeft = try await b.request("GET", "/metrics").body.contains("llm_sidecar_cache_flights_in_progress 0")
        XCTAssertTrue(flightsLeft)
    }
}
