import Foundation
import NIOCore
import NIOPosix
import SidecarStore
import SidecarTestSupport
import XCTest

/// The cache file removed, then replaced, under the real binary: the daemon notices, says so
/// once each time, counts it, keeps serving, and what it stores afterwards is in the file now at
/// the path and there after a restart (it used to go on writing to the unlinked file).
final class CacheFileChangeTests: XCTestCase {
    func testRemovedAndReplacedCacheFileIsNoticedReopenedAndKept() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let state = ProxyHarness.temporaryDirectory()
        let database = state + "/llm-sidecar/cache.sqlite3"
        let arguments = ["serve", "--upstream", upstream.url, "--listen", "127.0.0.1:0", "--threads", "1"]
        var sidecar = try LaunchedSidecar.launch(arguments, environment: ["XDG_STATE_HOME": state])
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

        let r1 = try await Self.ask(1, port: sidecar.port, group: group)
        XCTAssertEqual(r1, "miss")
        let stored = await eventually(5) { Self.entries(in: database) == 1 }
        XCTAssertTrue(stored, "the first answer reached the file")

        // rm of the database alone (its -wal and -shm stay, as after `rm cache.sqlite3`).
        XCTAssertEqual(unlink(database), 0)
        let noticedRemoval = await Self.metric(#"llm_sidecar_cache_reopened_total{reason="removed"}"#, is: 1, port: sidecar.port, group: group)
        XCTAssertTrue(noticedRemoval, "the removal is counted")
        let r2 = try await Self.ask(2, port: sidecar.port, group: group)
        XCTAssertEqual(r2, "miss", "the daemon keeps serving")
        let inNewFile = await eventually(5) { Self.entries(in: database) == 1 }
        XCTAssertTrue(inNewFile, "the answer stored after the removal is in a new file at the path, alone: \(String(describing: Self.entries(in: database)))")
        XCTAssertEqual(try Self.quickCheck(database), "ok", "the old WAL was not replayed into the new file")

        // mv of another (empty) cache database over the path.
        let other = state + "/other.sqlite3"
        _ = try ResponseCacheStore(path: other)
        XCTAssertEqual(rename(other, database), 0)
        let noticedReplacement = await Self.metric(#"llm_sidecar_cache_reopened_total{reason="replaced"}"#, is: 1, port: sidecar.port, group: group)
        XCTAssertTrue(noticedReplacement, "the replacement is counted")
        let r3 = try await Self.ask(3, port: sidecar.port, group: group)
        XCTAssertEqual(r3, "miss")
        let inReplacement = await eventually(5) { Self.entries(in: database) == 1 }
        XCTAssertTrue(inReplacement, "the answer stored after the replacement is in the replacing file")

        let log = sidecar.lines.all
        for change in ["change=removed", "change=replaced"] {
            let lines = log.split(separator: "\n").filter { $0.contains("cache database file changed") && $0.contains(change) }
            XCTAssertEqual(lines.count, 1, "one warning for \(change):\n\(log)")
        }
        XCTAssertFalse(log.contains("cache database unusable"), "no failure on the way:\n\(log)")

        kill(sidecar.process.processIdentifier, SIGTERM)
        sidecar.process.waitUntilExit()
        XCTAssertEqual(sidecar.process.terminationStatus, 0)
        sidecar = try LaunchedSidecar.launch(arguments, environment: ["XDG_STATE_HOME": state])
        let r4 = try await Self.ask(3, port: sidecar.port, group: group)
        XCTAssertEqual(r4, "hit", "the answer survives a restart")
        let r5 = try await Self.ask(2, port: sidecar.port, group: group)
        XCTAssertEqual(r5, "miss", "what the replaced file had is gone with it")
        kill(sidecar.process.processIdentifier, SIGTERM)
        sidecar.process.waitUntilExit()
        try await group.shutdownGracefully()
    }

    /// Asks a cacheable question numbered `n`; returns `x-sidecar-cache`.
    static func ask(_ n: Int, port: Int, group: EventLoopGroup) async throws -> String? {
        let c = try await TestHTTPConnection.connect(port: port, group: group)
        defer { Task { await c.close() } }
        let r = try await c.request("POST", "/v1/chat/completions", body: CacheBinaryTests.body(n))
        XCTAssertEqual(r.status, 200)
        return r.header("x-sidecar-cache")
    }

    /// Polls /metrics until the sample `series` reads `value`.
    static func metric(_ series: String, is value: Int, port: Int, group: EventLoopGroup) async -> Bool {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let c = try? await TestHTTPConnection.connect(port: port, group: group) {
                let body = (try? await c.request("GET", "/metrics"))?.body ?? ""
                await c.close()
                if body.split(separator: "\n").contains(where: { $0 == "\(series) \(value)" }) { return true }
            }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        return false
    }

    /// Answers in the file at `path` now, read with our own binding (nil: no file there).
    static func entries(in path: String) -> Int64? {
        guard access(path, F_OK) == 0, let store = try? ResponseCacheStore(path: path),
              let s = try? store.connection.prepare("SELECT count(*) FROM responses"), (try? s.step()) == true else { return nil }
        return s.int(0)
    }

    static func quickCheck(_ path: String) throws -> String {
        try ResponseCacheStore(path: path).quickCheck()
    }
}
