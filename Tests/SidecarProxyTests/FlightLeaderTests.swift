import Foundation
import SidecarCore
import SidecarTestSupport
import XCTest

/// A flight leader whose client left keeps going for its followers, through every phase it
/// passes on the way (issue 11, item 10).
final class FlightLeaderTests: XCTestCase {
    /// The leader's client hangs up while it waits for a connection; the connection it then gets
    /// was closed by the upstream (a stale keep-alive), so it is replayed on a fresh one. Before
    /// the fix the leader's self-retention was dropped when its phase passed through `.done` on
    /// the way to the replay: the leader was freed, its leased connection never released, and the
    /// follower waited for an answer that never came.
    func testADetachedLeaderSurvivesAStaleConnectionReplay() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        upstream.closeReusedConnections.withLockedValue { $0 = true }
        let harness = try await ProxyHarness(upstreamURL: upstream.url, threads: 1, upstream: { $0.maxConnections = 1 })
        defer { Task { await harness.stop() } }
        func metric(_ line: String) async throws -> Bool { try await harness.request("GET", "/metrics").body.contains(line) }
        func until(_ what: String, _ condition: () async throws -> Bool) async throws {
            let deadline = Date() + 10
            while try await !condition() {
                guard Date() < deadline else { return XCTFail("timed out waiting for \(what)") }
                try await Task.sleep(for: .milliseconds(10))  // polling a condition
            }
        }

        // One loop, so one pool: the only connection is busy for 1.5 s with an uncacheable request.
        let blocker = Task { try await harness.request(headers: [("x-fake-delay-ms", "1500")]) }
        try await until("the blocker upstream") { upstream.requests.count == 1 }
        // The leader waits for that connection; a follower joins its flight; the leader's client leaves.
        let body = #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"detached"}]}"#
        let request = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: \(body.utf8.count)\r\n\r\n" + body
        let leader = try Self.rawSend(port: harness.port, request)
        try await until("the leader's flight") { try await metric("llm_sidecar_cache_flights_in_progress 1") }
        let follower = Task { try await harness.request(body: body) }
        try await until("the follower to join") { try await metric(#"llm_sidecar_cache_requests_total{result="coalesced"} 1"#) }
        Self.reset(leader)  // gone, not half-closed: a half-closed client still gets its answer

        let answered = try await follower.value
        let blocked = try await blocker.value
        XCTAssertEqual(blocked.status, 200)
        XCTAssertEqual(answered.status, 200, answered.body)
        XCTAssertEqual(answered.header("x-sidecar-cache"), "coalesced")
        XCTAssertTrue(answered.complete)
        let metrics = try await harness.request("GET", "/metrics").body
        let replayed = metrics.contains(#"llm_sidecar_retries_total{upstream="fake",reason="stale_connection"} 1"#)
        XCTAssertTrue(replayed, "the leader's request met the stale connection and was replayed")
        XCTAssertEqual(upstream.requests.count, 2, "blocker and the replayed leader (the dropped one is not counted)")
        // Nothing leaked: the connection went back to the pool and serves the next request.
        upstream.closeReusedConnections.withLockedValue { $0 = false }
        try await expectEqual(try await harness.request(body: #"{"model":"gpt-4o-mini","messages":[]}"#).status, 200)
    }

    /// A blocking client socket that has sent `request`.
    static func rawSend(port: Int, _ request: String) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw POSIXError(.ECONNREFUSED) }
        let bytes = Array(request.utf8)
        guard write(fd, bytes, bytes.count) == bytes.count else { throw POSIXError(.EIO) }
        return fd
    }

    /// Closes with an RST (SO_LINGER 0): the client is gone.
    static func reset(_ fd: Int32) {
        var l = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        Glibc.close(fd)
    }
}
