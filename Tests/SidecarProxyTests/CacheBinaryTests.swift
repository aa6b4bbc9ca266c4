import Foundation
import NIOCore
import NIOPosix
import SidecarStore
import SidecarTestSupport
import XCTest

/// The cache through the real binary: `stats`, `cache purge`, `cache prune`, and `kill -9`.
final class CacheBinaryTests: XCTestCase {
    static func body(_ n: Int) -> String {
        #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"question \#(n)"}]}"#
    }

    func testStatsMatchesWhatHappenedAndPurgeAndPruneWork() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let state = ProxyHarness.temporaryDirectory()
        let database = state + "/llm-sidecar/cache.sqlite3"
        let sidecar = try LaunchedSidecar.launch(["serve", "--upstream", upstream.url, "--listen", "127.0.0.1:0", "--threads", "1"],
                                                 environment: ["XDG_STATE_HOME": state])
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let c = try await TestHTTPConnection.connect(port: sidecar.port, group: group)
        for n in [1, 1, 1, 2, 2] { _ = try await c.request("POST", "/v1/chat/completions", body: Self.body(n)) }
        _ = try await c.request("POST", "/v1/embeddings", body: #"{"model":"text-embedding-3-small","input":"x"}"#)
        _ = try await c.request("POST", "/v1/chat/completions", body: #"{"model":"gpt-4o-mini","messages":[]}"#)  // sampled: bypass
        await c.close()
        try await group.shutdownGracefully()
        // Counters are written back within a second; `stats` works while the daemon runs.
        try await Task.sleep(nanoseconds: 1_500_000_000)
        let env = ["XDG_STATE_HOME": state]
        let r = try BinaryTests.run(["stats", "--json", "--config", "/nonexistent-is-fine-with-database", "--database", database], env: env)
        XCTAssertEqual(r.status, 78, "an explicit --config that does not exist is an error: \(r.stderr)")
        let live = try BinaryTests.run(["stats", "--json"], env: env)
        XCTAssertEqual(live.status, 0, live.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(live.stdout.utf8)) as? [String: Any], live.stdout)
        let totals = try XCTUnwrap(json["totals"] as? [String: Any])
        XCTAssertEqual(totals["hits"] as? Int, 3)
        XCTAssertEqual(totals["misses"] as? Int, 3)
        XCTAssertEqual(totals["bypasses"] as? Int, 1)
        XCTAssertEqual(totals["requests"] as? Int, 7)
        XCTAssertEqual(totals["hit_ratio"] as? Double, 0.5)
        XCTAssertEqual(totals["prompt_tokens_saved"] as? Int, 3 * 19)
        XCTAssertEqual((json["cache"] as? [String: Any])?["entries"] as? Int, 3)
        let models = try XCTUnwrap(json["models"] as? [String: Any])
        XCTAssertEqual((models["gpt-4o-mini"] as? [String: Any])?["entries"] as? Int, 2)
        XCTAssertEqual((models["gpt-4o-mini"] as? [String: Any])?["hits"] as? Int, 3)

        let table = try BinaryTests.run(["stats"], env: env)
        XCTAssertEqual(table.status, 0)
        XCTAssertTrue(table.stdout.contains("hit ratio"), table.stdout)
        XCTAssertTrue(table.stdout.contains("50.0%"), table.stdout)
        XCTAssertTrue(table.stdout.contains("gpt-4o-mini"), table.stdout)

        // Purge while the daemon runs: its in-memory copy goes too.
        let usage = try BinaryTests.run(["cache", "purge"], env: env)
        XCTAssertNotEqual(usage.status, 0)
        XCTAssertTrue(usage.stderr.contains("--model, --older-than, or --all"), usage.stderr)
        let purge = try BinaryTests.run(["cache", "purge", "--model", "gpt-4o-mini"], env: env)
        XCTAssertEqual(purge.status, 0, purge.stderr)
        XCTAssertTrue(purge.stdout.hasPrefix("purged 2 entries"), purge.stdout)
        try await Task.sleep(nanoseconds: 1_500_000_000)
        let group2 = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let c2 = try await TestHTTPConnection.connect(port: sidecar.port, group: group2)
        let after = try await c2.request("POST", "/v1/chat/completions", body: Self.body(1))
        XCTAssertEqual(after.header("x-sidecar-cache"), "miss", "a purged answer is not served from memory either")
        await c2.close()
        try await group2.shutdownGracefully()
        let prune = try BinaryTests.run(["cache", "prune"], env: env)
        XCTAssertEqual(prune.status, 0, prune.stderr)
        XCTAssertTrue(prune.stdout.contains("0 expired"), prune.stdout)

        kill(sidecar.process.processIdentifier, SIGTERM)
        sidecar.process.waitUntilExit()
        XCTAssertEqual(sidecar.process.terminationStatus, 0)
        let missing = try BinaryTests.run(["stats", "--database", state + "/nope.sqlite3"], env: env)
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.contains("no cache database at"), missing.stderr)
    }

    /// 16 clients writing distinct answers as fast as they can, until the sidecar goes away.
    static func hammer(port: Int, group: EventLoopGroup) async {
        await withTaskGroup(of: Void.self) { tasks in
            for w in 0..<16 {
                tasks.addTask {
                    guard let c = try? await TestHTTPConnection.connect(port: port, group: group) else { return }
                    for i in 0..<100_000 {
                        guard (try? await c.request("POST", "/v1/chat/completions", body: Self.body(w * 1_000_000 + i))) != nil else { return }
                    }
                }
            }
        }
    }

    func testKill9DuringHeavyWritesLeavesAConsistentDatabase() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let state = ProxyHarness.temporaryDirectory()
        let sidecar = try LaunchedSidecar.launch(["serve", "--upstream", upstream.url, "--listen", "127.0.0.1:0", "--threads", "2"],
                                                 environment: ["XDG_STATE_HOME": state])
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let port = sidecar.port
        // SIGKILL lands in the middle of the writes.
        async let writers: Void = Self.hammer(port: port, group: group)
        try await Task.sleep(nanoseconds: 1_500_000_000)
        kill(sidecar.process.processIdentifier, SIGKILL)
        sidecar.process.waitUntilExit()
        await writers
        try await group.shutdownGracefully()
        XCTAssertGreaterThan(upstream.counters.requests, 100, "the kill landed during heavy writes")

        let store = try ResponseCacheStore(path: state + "/llm-sidecar/cache.sqlite3")
        XCTAssertEqual(try store.quickCheck(), "ok")
        let (entries, _) = try store.sizes()
        let counted = try store.connection.prepare("SELECT count(*) FROM responses")
        XCTAssertTrue(try counted.step())
        XCTAssertEqual(entries, counted.int(0), "the trigger-kept totals agree with the table")
        XCTAssertGreaterThan(entries, 50)
    }
}
