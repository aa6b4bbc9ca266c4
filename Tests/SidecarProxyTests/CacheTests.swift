import Foundation
import NIOConcurrencyHelpers
import NIOCore
import SidecarCore
import SidecarProxy
import SidecarStore
import SidecarTestSupport
import XCTest

/// The response cache end to end: a real sidecar, a real FakeUpstream, a real SQLite file.
final class CacheTests: XCTestCase {
    var upstream: FakeUpstream!
    var harness: ProxyHarness!
    var cachePath = ""
    let clock = NIOLockedValueBox<Int64>(1_800_000_000)

    static let deterministic = #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#

    override func tearDown() async throws {
        await harness?.stop()
        await upstream?.stop()
    }

    private func start(threads: Int = 2, path: String? = nil, configure: @escaping (inout SidecarConfiguration) -> Void = { _ in }) async throws {
        if upstream == nil { upstream = try await FakeUpstream.start() }
        let clock = self.clock
        harness = try await ProxyHarness(upstreamURL: upstream.url, threads: threads, cachePath: path, cacheClock: { clock.withLockedValue { $0 } },
                                         configure: configure)
        cachePath = harness.cachePath
    }

    private func post(_ body: String = deterministic, path: String = "/v1/chat/completions", headers: [(String, String)] = [("authorization", "Bearer client-a")]) async throws -> TestResponse {
        try await harness.request("POST", path, headers: headers, body: body)
    }

    private func stats() async throws -> [String: Any] {
        let r = try await harness.request("GET", "/stats")
        XCTAssertEqual(r.status, 200)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any], r.body)
    }

    private func totals() async throws -> [String: Any] {
        let s = try await stats()
        return try XCTUnwrap(s["totals"] as? [String: Any])
    }

    /// A stored answer keeps its own exact copy, not a slice of the buffer TLS decrypted it into
    /// (a 16 KiB record buffer per 600-byte answer was 7.5 KB of RSS each, counted as 1 KB), and
    /// the hot tier charges what the entry keeps allocated.
    func testTheHotTierHoldsExactCopiesAndCountsWhatTheyHold() async throws {
        try await start()
        for n in 0..<20 {
            let r = try await post(#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"hi \#(n)"}]}"#)
            XCTAssertEqual(r.header("x-sidecar-cache"), "miss")
        }
        let report = try await stats()
        let cache = try XCTUnwrap(report["cache"] as? [String: Any], "\(report)")
        let memory = try XCTUnwrap(cache["memory"] as? [String: Any], "\(cache)")
        let entries = try XCTUnwrap(memory["entries"] as? Int)
        let bytes = try XCTUnwrap(memory["bytes"] as? Int)
        XCTAssertEqual(entries, 20)
        let body = FakeUpstream.chatCompletion.utf8.count
        // Body rounded up to a power of two, head prefix (128), bookkeeping (256).
        XCTAssertLessThanOrEqual(bytes / entries, 2 * body + 128 + 256, "per entry: \(bytes / entries) bytes for a \(body)-byte answer")
        XCTAssertGreaterThanOrEqual(bytes / entries, body + 256)
    }

    func testSecondIdenticalRequestIsAHitAndTheUpstreamSawOne() async throws {
        try await start()
        let first = try await post()
        XCTAssertEqual(first.status, 200)
        XCTAssertEqual(first.header("x-sidecar-cache"), "miss")
        clock.withLockedValue { $0 += 7 }
        let second = try await post()
        XCTAssertEqual(second.status, 200)
        XCTAssertEqual(second.header("x-sidecar-cache"), "hit")
        XCTAssertEqual(second.header("age"), "7")
        XCTAssertEqual(second.header("content-type"), "application/json")
        XCTAssertEqual(second.body, first.body, "a hit replays the exact bytes, usage included")
        XCTAssertEqual(upstream.counters.requests, 1)
        // Reordered keys, other whitespace, other number spellings: the same request.
        let respaced = try await post(#"{ "messages" : [ {"content":"hi", "role":"user"} ],"temperature":0.0e0,  "model":"gpt-4o-mini" }"#)
        XCTAssertEqual(respaced.header("x-sidecar-cache"), "hit")
        // `user`, `metadata` and `stream_options` cannot change the answer.
        let tagged = try await post(#"{"model":"gpt-4o-mini","temperature":0,"user":"u-42","metadata":{"a":"b"},"messages":[{"role":"user","content":"hi"}]}"#)
        XCTAssertEqual(tagged.header("x-sidecar-cache"), "hit")
        XCTAssertEqual(upstream.counters.requests, 1)

        let t = try await totals()
        XCTAssertEqual(t["hits"] as? Int, 3)
        XCTAssertEqual(t["misses"] as? Int, 1)
        XCTAssertEqual(t["prompt_tokens_saved"] as? Int, 3 * 19, "the fake's usage: 19 prompt tokens")
        XCTAssertEqual(t["completion_tokens_saved"] as? Int, 3 * 28)
        let metrics = try await harness.request("GET", "/metrics").body
        XCTAssertTrue(metrics.contains(#"llm_sidecar_cache_requests_total{result="hit"} 3"#), metrics)
        XCTAssertTrue(metrics.contains(#"llm_sidecar_cache_requests_total{result="miss"} 1"#))
        XCTAssertTrue(metrics.contains("llm_sidecar_cache_database_up 1"))
        XCTAssertTrue(metrics.contains("llm_sidecar_cache_write_queue_bytes 0"), "/stats waited for the answer's write")
        // gpt-4o-mini: $0.15 in, $0.60 out per million tokens.
        XCTAssertEqual(try XCTUnwrap(t["usd_saved"] as? Double), (57 * 0.15 + 84 * 0.60) / 1_000_000, accuracy: 1e-9)
    }

    /// One key, one body: another organization or project is another tenant at the provider, and
    /// never sees this one's answers (issue 11, item 12).
    func testOrganizationAndProjectScopeTheCache() async throws {
        try await start()
        let key = ("authorization", "Bearer client-a")
        func post(_ extra: [(String, String)]) async throws -> String? {
            let r = try await self.post(headers: [key] + extra)
            XCTAssertEqual(r.status, 200)
            return r.header("x-sidecar-cache")
        }
        let orgA = try await post([("OpenAI-Organization", "org-A")])
        XCTAssertEqual(orgA, "miss")
        let orgB = try await post([("OpenAI-Organization", "org-B")])
        XCTAssertEqual(orgB, "miss", "another organization is not served org-A's answer")
        XCTAssertEqual(upstream.counters.requests, 2, "the upstream was called for each")
        let orgAAgain = try await post([("openai-organization", "org-A")])
        XCTAssertEqual(orgAAgain, "hit", "the same organization hits (the header name in any case)")
        let projectA = try await post([("OpenAI-Organization", "org-A"), ("OpenAI-Project", "proj-A")])
        XCTAssertEqual(projectA, "miss")
        let projectB = try await post([("OpenAI-Organization", "org-A"), ("OpenAI-Project", "proj-B")])
        XCTAssertEqual(projectB, "miss")
        let projectAAgain = try await post([("OpenAI-Project", "proj-A"), ("OpenAI-Organization", "org-A")])
        XCTAssertEqual(projectAAgain, "hit")
        let noTenant = try await post([])
        XCTAssertEqual(noTenant, "miss", "no organization is the key's default one, not org-A")
        XCTAssertEqual(upstream.counters.requests, 5)
        XCTAssertEqual(upstream.requests.map { $0.header("openai-organization") }, ["org-A", "org-B", "org-A", "org-A", nil],
                       "the headers themselves still reach the provider")
    }

    func testOrganizationScopesASharedCacheToo() async throws {
        try await start { $0.cache.scope = .shared }
        let a = try await post(headers: [("authorization", "Bearer client-a"), ("OpenAI-Organization", "org-A")])
        XCTAssertEqual(a.header("x-sidecar-cache"), "miss")
        let otherKey = try await post(headers: [("authorization", "Bearer client-b"), ("OpenAI-Organization", "org-A")])
        XCTAssertEqual(otherKey.header("x-sidecar-cache"), "hit", "a shared cache is shared between keys")
        let otherOrg = try await post(headers: [("authorization", "Bearer client-a"), ("OpenAI-Organization", "org-B")])
        XCTAssertEqual(otherOrg.header("x-sidecar-cache"), "miss", "but not between organizations")
        XCTAssertEqual(upstream.counters.requests, 2)
    }

    func testAnyChangeOfMeaningIsAMiss() async throws {
        try await start()
        _ = try await post()
        let variants = [
            #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"hi!"}]}"#,
            #"{"model":"gpt-4o-mini","temperature":0,"seed":1,"messages":[{"role":"user","content":"hi"}]}"#,
            #"{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
            #"{"model":"gpt-4o-mini","temperature":0,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
            #"{"model":"gpt-4o-mini","temperature":0,"some_future_param":true,"messages":[{"role":"user","content":"hi"}]}"#,
        ]
        for (i, v) in variants.enumerated() {
            let r = try await post(v)
            XCTAssertEqual(r.header("x-sidecar-cache"), "miss", "variant \(i)")
        }
        // Another credential never reads this one's entries.
        let other = try await post(headers: [("authorization", "Bearer client-b")])
        XCTAssertEqual(other.header("x-sidecar-cache"), "miss")
        let anonymous = try await post(headers: [])
        XCTAssertEqual(anonymous.header("x-sidecar-cache"), "miss")
        XCTAssertEqual(upstream.counters.requests, 1 + variants.count + 2)
        try await expectEqual(try await post().header("x-sidecar-cache"), "hit")
    }

    /// Every bypass is counted in /stats as in /metrics: requests that are not cache candidates
    /// (GET /v1/models, other paths) were counted only in /metrics (issue 11, item 11).
    func testEveryBypassIsCountedInStatsAsInMetrics() async throws {
        try await start()
        for body in ["not json", #"{"model":"gpt-4o-mini","temperature":0,"temperature":0,"messages":[]}"#] {
            try await expectEqual(try await post(body).header("x-sidecar-cache"), "bypass")
        }
        try await expectEqual(try await harness.request("GET", "/v1/models").header("x-sidecar-cache"), "bypass")
        try await expectEqual(try await post(path: "/v1/audio/speech").header("x-sidecar-cache"), "bypass")
        await harness.server.flushCache()
        let report = try await stats()
        let totals = try XCTUnwrap(report["totals"] as? [String: Any])
        XCTAssertEqual(totals["bypasses"] as? Int, 4, "\(totals)")
        let metrics = try await harness.request("GET", "/metrics").body
        XCTAssertTrue(metrics.contains(#"llm_sidecar_cache_requests_total{result="bypass"} 4"#), metrics)
    }

    func testSampledRequestsAndCacheControlBypass() async throws {
        try await start()
        let sampled = #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#
        for _ in 0..<2 { try await expectEqual(try await post(sampled).header("x-sidecar-cache"), "bypass", "no temperature means 1, not 0") }
        try await expectEqual(try await post(#"{"model":"gpt-4o-mini","temperature":0.7,"messages":[]}"#).header("x-sidecar-cache"), "bypass")
        try await expectEqual(try await harness.request("GET", "/v1/models").header("x-sidecar-cache"), "bypass")
        try await expectEqual(try await post("not json").header("x-sidecar-cache"), "bypass")
        // no-store: neither looked up nor stored.
        try await expectEqual(try await post(headers: [("authorization", "Bearer a"), ("cache-control", "no-store")]).header("x-sidecar-cache"), "bypass")
        try await expectEqual(try await post(headers: [("authorization", "Bearer a")]).header("x-sidecar-cache"), "miss")
        // no-cache: a fresh answer even though one is stored, and that answer is stored.
        try await expectEqual(try await post(headers: [("authorization", "Bearer a"), ("cache-control", "no-cache")]).header("x-sidecar-cache"), "miss")
        try await expectEqual(try await post(headers: [("authorization", "Bearer a")]).header("x-sidecar-cache"), "hit")
        XCTAssertEqual(upstream.counters.requests, 8)
        // Embeddings are deterministic whatever the body says.
        let emb = #"{"model":"text-embedding-3-small","input":"hello"}"#
        try await expectEqual(try await post(emb, path: "/v1/embeddings").header("x-sidecar-cache"), "miss")
        try await expectEqual(try await post(emb, path: "/v1/embeddings").header("x-sidecar-cache"), "hit")
    }

    func testModeAllAndOff() async throws {
        try await start { $0.cache.mode = .all }
        let sampled = #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#
        try await expectEqual(try await post(sampled).header("x-sidecar-cache"), "miss")
        try await expectEqual(try await post(sampled).header("x-sidecar-cache"), "hit")
        await harness.stop()
        try await start { $0.cache.mode = .off }
        try await expectEqual(try await post().header("x-sidecar-cache"), "bypass")
        try await expectEqual(try await post().header("x-sidecar-cache"), "bypass")
        XCTAssertFalse(FileManager.default.fileExists(atPath: cachePath), "mode off creates no database")
    }

    func testErrorsAndCutStreamsAreNotCached() async throws {
        try await start()
        for _ in 0..<2 {
            let r = try await post(headers: [("authorization", "Bearer a"), ("x-fake-status", "500")])
            XCTAssertEqual(r.status, 500)
            XCTAssertEqual(r.header("x-sidecar-cache"), "miss")
        }
        XCTAssertEqual(upstream.counters.requests, 2)
        let stream = #"{"model":"gpt-4o-mini","temperature":0,"stream":true,"messages":[{"role":"user","content":"cut"}]}"#
        let cut = try await post(stream, headers: [("authorization", "Bearer a"), ("x-fake-cut-after", "2")])
        XCTAssertFalse(cut.complete, "the client sees the cut")
        let again = try await post(stream, headers: [("authorization", "Bearer a")])
        XCTAssertEqual(again.header("x-sidecar-cache"), "miss", "a stream cut before its final event was not stored")
        XCTAssertTrue(again.body.hasSuffix("data: [DONE]\n\n"))
        await harness.server.flushCache()
        let replay = try await post(stream, headers: [("authorization", "Bearer a")])
        XCTAssertEqual(replay.header("x-sidecar-cache"), "hit")
        XCTAssertEqual(replay.header("content-type"), "text/event-stream")
        XCTAssertEqual(replay.body, again.body, "streams replay their exact SSE bytes")
        XCTAssertEqual(upstream.counters.requests, 4)
    }

    func testConcurrentIdenticalRequestsShareOneUpstreamCall() async throws {
        try await start(threads: 2)
        let harness = self.harness!
        let plain = try await withThrowingTaskGroup(of: TestResponse.self) { group in
            for _ in 0..<50 {
                group.addTask {
                    try await harness.request("POST", "/v1/chat/completions",
                                              headers: [("authorization", "Bearer a"), ("x-fake-delay-ms", "400")], body: Self.deterministic)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        XCTAssertEqual(upstream.counters.requests, 1, "50 identical requests, one upstream call")
        XCTAssertEqual(plain.count, 50)
        XCTAssertTrue(plain.allSatisfy { $0.status == 200 && $0.body == FakeUpstream.chatCompletion }, "every client gets the full answer")
        let labels = Dictionary(grouping: plain, by: { $0.header("x-sidecar-cache") ?? "none" }).mapValues(\.count)
        XCTAssertEqual(labels["miss"], 1, "\(labels)")
        XCTAssertEqual((labels["coalesced"] ?? 0) + (labels["hit"] ?? 0), 49, "\(labels)")

        // Streaming: followers get the leader's events as they arrive, not at the end.
        let stream = #"{"model":"gpt-4o-mini","temperature":0,"stream":true,"messages":[{"role":"user","content":"tee"}]}"#
        let streamed = try await withThrowingTaskGroup(of: TestResponse.self) { group in
            for _ in 0..<50 {
                group.addTask {
                    try await harness.request("POST", "/v1/chat/completions",
                                              headers: [("authorization", "Bearer a"), ("x-fake-events", "6"), ("x-fake-interval-ms", "100")], body: stream)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        XCTAssertEqual(upstream.counters.requests, 2)
        let expected = (0..<6).map { FakeUpstream.event($0) }.joined() + "data: [DONE]\n\n"
        XCTAssertTrue(streamed.allSatisfy { $0.complete && $0.body == expected }, "every client gets every event and the end")
        let coalesced = streamed.filter { $0.header("x-sidecar-cache") == "coalesced" }
        XCTAssertGreaterThan(coalesced.count, 40)
        // A follower that joined early saw the events spread over the ~600 ms, not in one burst.
        let spread = coalesced.map { r in (r.parts.last?.0 ?? 0) - (r.parts.first?.0 ?? 0) }.max() ?? 0
        XCTAssertGreaterThan(spread, 300_000_000, "followers are fed as the leader's events arrive")
        let t = try await totals()
        XCTAssertEqual((t["coalesced"] as? Int ?? 0) + (t["hits"] as? Int ?? 0), 98)
    }

    func testLeaderFailureIsSharedAndALeaderThatLeavesDoesNotStrandFollowers() async throws {
        try await start()
        let harness = self.harness!
        let failing = #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"fail"}]}"#
        let results = try await withThrowingTaskGroup(of: TestResponse.self) { group in
            for _ in 0..<10 {
                group.addTask {
                    try await harness.request("POST", "/v1/chat/completions",
                                              headers: [("x-fake-status", "503"), ("x-fake-delay-ms", "300")], body: failing)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        XCTAssertEqual(upstream.counters.requests, 1, "followers get the leader's error, not N upstream retries")
        XCTAssertTrue(results.allSatisfy { $0.status == 503 && $0.body.contains("fake upstream error 503") })

        // The leader's client hangs up; the follower still gets the whole stream.
        let stream = #"{"model":"gpt-4o-mini","temperature":0,"stream":true,"messages":[{"role":"user","content":"leave"}]}"#
        let headers = [("x-fake-events", "5"), ("x-fake-interval-ms", "80")]
        let leader = Task { try await harness.request("POST", "/v1/chat/completions", headers: headers, body: stream, closeAfterParts: 1) }
        try await Task.sleep(nanoseconds: 50_000_000)
        let follower = try await harness.request("POST", "/v1/chat/completions", headers: headers, body: stream)
        _ = try? await leader.value
        XCTAssertEqual(follower.header("x-sidecar-cache"), "coalesced")
        XCTAssertTrue(follower.complete)
        XCTAssertTrue(follower.body.hasSuffix("data: [DONE]\n\n"))
        XCTAssertEqual(upstream.counters.requests, 2)
        // And the answer the leader's client abandoned was stored.
        await harness.server.flushCache()
        try await expectEqual(try await harness.request("POST", "/v1/chat/completions", body: stream).header("x-sidecar-cache"), "hit")
    }

    func testHitsSurviveARestartAndTTLExpires() async throws {
        let dir = ProxyHarness.temporaryDirectory()
        try await start(path: dir + "/c.sqlite3")
        try await expectEqual(try await post().header("x-sidecar-cache"), "miss")
        try await expectEqual(try await post(#"{"model":"gpt-4o-mini","temperature":0,"messages":[]}"#, headers: [("x-sidecar-cache-ttl", "60")]).header("x-sidecar-cache"), "miss")
        await harness.stop()
        let mode = try FileManager.default.attributesOfItem(atPath: dir + "/c.sqlite3")[.posixPermissions] as? NSNumber
        XCTAssertEqual(mode?.intValue, 0o600)

        try await start(path: dir + "/c.sqlite3")
        try await expectEqual(try await post().header("x-sidecar-cache"), "hit", "the answer survived the restart (from SQLite)")
        try await expectEqual(try await post().header("x-sidecar-cache"), "hit", "(from memory)")
        clock.withLockedValue { $0 += 61 }
        try await expectEqual(try await post(#"{"model":"gpt-4o-mini","temperature":0,"messages":[]}"#).header("x-sidecar-cache"), "miss",
                       "x-sidecar-cache-ttl: 60 expired")
        try await expectEqual(try await post().header("x-sidecar-cache"), "hit", "the default TTL is a day")
        clock.withLockedValue { $0 += 86_400 }
        try await expectEqual(try await post().header("x-sidecar-cache"), "miss")
        // Counters were written back at the stop and survive too.
        let t = try await totals()
        XCTAssertEqual(t["hits"] as? Int, 3)
        XCTAssertEqual(t["misses"] as? Int, 4)
    }

    func testSizeCapEvictsLeastRecentlyHit() async throws {
        try await start { c in
            c.cache.maxBytes = 1_200  // the fake's answer is ~560 bytes: two fit
            c.cache.memoryBytes = 0
        }
        func body(_ n: Int) -> String { #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"\#(n)"}]}"# }
        for n in 0..<2 { try await expectEqual(try await post(body(n)).header("x-sidecar-cache"), "miss") }
        clock.withLockedValue { $0 += 10 }
        try await expectEqual(try await post(body(0)).header("x-sidecar-cache"), "hit")  // 0 is now more recent than 1
        await harness.server.flushCache()  // hit times reach SQLite within a second
        try await expectEqual(try await post(body(2)).header("x-sidecar-cache"), "miss")
        // The client has the whole answer as soon as its last byte is written, a moment before the
        // proxy stores it: wait for the store (and its eviction).
        let store = try ResponseCacheStore(path: cachePath)
        let newest = try store.connection.prepare("SELECT count(*) FROM responses WHERE created_at = 1800000010")
        let stored = await eventually {
            defer { try? newest.bind([]) }
            return (try? newest.step()) == true && newest.int(0) == 1
        }
        XCTAssertTrue(stored)
        let (entries, bytes) = try store.sizes()
        XCTAssertEqual(entries, 2)
        XCTAssertLessThanOrEqual(bytes, 1_200)
        try await expectEqual(try await post(body(0)).header("x-sidecar-cache"), "hit", "recently hit: kept")
        try await expectEqual(try await post(body(1)).header("x-sidecar-cache"), "miss", "least recently hit: evicted")
    }

    func testCorruptOrUnusableDatabaseDegradesToPassThroughAndRecovers() async throws {
        let dir = ProxyHarness.temporaryDirectory()
        let path = dir + "/c.sqlite3"
        try Data(repeating: 0x42, count: 8192).write(to: URL(fileURLWithPath: path))
        try await start(path: path) { $0.cache.memoryBytes = 0 }
        for _ in 0..<3 {
            let r = try await post()
            XCTAssertEqual(r.status, 200, "a corrupt cache never fails a request")
            XCTAssertEqual(r.body, FakeUpstream.chatCompletion)
        }
        let s = try await stats()
        let db = try XCTUnwrap((s["cache"] as? [String: Any])?["database_state"] as? [String: Any])
        XCTAssertEqual(db["ok"] as? Bool, false)
        XCTAssertGreaterThan(db["errors"] as? Int ?? 0, 0)
        XCTAssertTrue((db["last_error"] as? String ?? "").contains("not a database"), "\(db)")
        // The operator removes the broken file: the cache comes back by itself.
        try FileManager.default.removeItem(atPath: path)
        var recovered = false
        for _ in 0..<60 where !recovered {
            try await Task.sleep(nanoseconds: 200_000_000)
            recovered = try await post().header("x-sidecar-cache") == "hit"
        }
        XCTAssertTrue(recovered, "entries are stored and served again once the file is usable")
        await harness.stop()
        harness = nil

        // A path that cannot be a database at all (its directory is a file).
        let blocker = dir + "/file"
        _ = FileManager.default.createFile(atPath: blocker, contents: Data("x".utf8))
        try await start(path: blocker + "/c.sqlite3")
        try await expectEqual(try await post().status, 200)
        try await expectEqual(try await post().status, 200)
    }

    func testStatsCommandAndPurge() async throws {
        try await start()
        _ = try await post()
        _ = try await post()
        _ = try await post(#"{"model":"text-embedding-3-small","input":"x"}"#, path: "/v1/embeddings")
        _ = try await post(#"{"model":"gpt-4o-mini","messages":[]}"#)  // bypass
        await harness.stop()
        harness = nil

        let report = try CacheStatsReport.read(path: cachePath, prices: PriceTable())
        XCTAssertEqual(report.entries, 2)
        XCTAssertEqual(report.totals.hits, 1)
        XCTAssertEqual(report.totals.misses, 2)
        XCTAssertEqual(report.totals.bypasses, 1)
        XCTAssertEqual(report.models["gpt-4o-mini"]?.promptTokensSaved, 19)
        XCTAssertTrue(report.table().contains("gpt-4o-mini"))
        let store = try ResponseCacheStore(path: cachePath)
        XCTAssertEqual(try store.purge(model: "text-embedding-3-small", createdBefore: nil), 1)
        XCTAssertEqual(try store.sizes().0, 1)
    }
}

/// `XCTAssertEqual` for an awaited value (XCTest's autoclosures cannot await).
func expectEqual<T: Equatable>(_ value: @autoclosure () async throws -> T, _ expected: T, _ message: String = "",
                               file: StaticString = #filePath, line: UInt = #line) async throws {
    let v = try await value()
    XCTAssertEqual(v, expected, message, file: file, line: line)
}

extension CacheTests {
    func testPurgeFromAnotherProcessIsSeenByTheDaemon() async throws {
        try await start()
        _ = try await post()
        try await expectEqual(try await post().header("x-sidecar-cache"), "hit")
        await harness.server.flushCache()
        let other = try ResponseCacheStore(path: cachePath)  // as `llm-sidecar cache purge` does
        XCTAssertEqual(try other.purge(model: nil, createdBefore: nil), 1)
        await harness.server.flushCache()
        try await expectEqual(try await post().header("x-sidecar-cache"), "miss", "neither memory nor SQLite serves a purged answer")
    }
}

extension CacheTests {
    /// The in-memory key index follows the database: it learns each stored answer, forgets
    /// purged ones at the next flush, and a restart reads it back (issue 10, item 4).
    func testTheKeyIndexFollowsTheDatabase() async throws {
        func indexed() async throws -> Int? { (try await stats()["cache"] as? [String: Any])?["indexed_keys"] as? Int }
        try await start()
        _ = try await post()
        _ = try await post(#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"two"}]}"#)
        await harness.server.flushCache()
        try await expectEqual(try await indexed(), 2)
        let other = try ResponseCacheStore(path: cachePath)  // as `llm-sidecar cache purge` does
        XCTAssertEqual(try other.purge(model: nil, createdBefore: nil), 2)
        await harness.server.flushCache()
        try await expectEqual(try await indexed(), 0)
        try await expectEqual(try await post().header("x-sidecar-cache"), "miss")
        await harness.server.flushCache()
        try await expectEqual(try await indexed(), 1)
        // A restart serves what is stored: the index starts unknown ("maybe") and is read back.
        await harness.stop()
        try await start(path: cachePath)
        try await expectEqual(try await post().header("x-sidecar-cache"), "hit")
        await harness.server.flushCache()
        try await expectEqual(try await indexed(), 1)
    }
}

extension CacheTests {
    /// A hit is the stored bytes in wire form, written past the HTTP encoder in one flush: the
    /// exact head (status, content-type, content-length, our two headers), the exact body, and
    /// pipelined requests behind it answered in order, the last one closing (issue 10, item 3).
    func testAHitIsOnePreparedWriteInWireForm() async throws {
        try await start()
        let miss = try await post()
        XCTAssertEqual(miss.header("x-sidecar-cache"), "miss")
        // The client has every byte of the miss a moment before the sidecar has stored it: until
        // then an identical request shares the flight ("coalesced"). Wait for the first hit.
        var stored = false
        for _ in 0..<200 where !stored {
            stored = try await post().header("x-sidecar-cache") == "hit"
            if !stored { try await Task.sleep(nanoseconds: 10_000_000) }  // polling a condition, not waiting for time
        }
        XCTAssertTrue(stored)
        let body = Self.deterministic
        let one = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer client-a\r\ncontent-type: application/json\r\ncontent-length: \(body.utf8.count)\r\n\r\n\(body)"
        let last = one.replacingOccurrences(of: "host: x\r\n", with: "host: x\r\nconnection: close\r\n")
        let raw = try await RawTCP.exchange(port: harness.port, bytes: Array((one + one + last).utf8), group: harness.clientGroup)
        let responses = raw.components(separatedBy: "HTTP/1.1 ").dropFirst()
        XCTAssertEqual(responses.count, 3, raw)
        for (i, r) in responses.enumerated() {
            let parts = r.components(separatedBy: "\r\n\r\n")
            let head = parts[0].lowercased()
            XCTAssertTrue(head.hasPrefix("200 ok\r\ncontent-type: application/json"), head)
            XCTAssertTrue(head.contains("\r\ncontent-length: \(miss.body.utf8.count)"), head)
            XCTAssertTrue(head.contains("\r\nx-sidecar-cache: hit\r\nage: 0"), head)
            XCTAssertEqual(head.contains("connection: close"), i == 2, head)
            XCTAssertEqual(parts.dropFirst().joined(separator: "\r\n\r\n"), miss.body, "the stored body, byte for byte")
        }
    }
}
