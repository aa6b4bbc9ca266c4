import Foundation
import NIOCore
import NIOPosix
import SidecarCore
import SidecarProxy
import SidecarTLS
import SidecarTestSupport
import XCTest

/// Forwarding over TLS: bytes, headers, keys, keep-alive reuse, the pool's bounds, streaming.
final class PassThroughTests: XCTestCase {
    var pki: TestPKI!
    var upstream: FakeUpstream!
    var harness: ProxyHarness!

    override func setUp() async throws {
        pki = try TestPKI()
    }

    override func tearDown() async throws {
        await harness?.stop()
        await upstream?.stop()
        pki.cleanUp()
    }

    private func start(tls: Bool = true, threads: Int = 2, key: Bool = true,
                       configure: (inout SidecarConfiguration) -> Void = { _ in },
                       upstreamConfig: (inout SidecarConfiguration.Upstream) -> Void = { _ in }) async throws {
        upstream = try await FakeUpstream.start(tls: tls ? pki.serverTLS() : nil)
        let ca = try pki.caFile()
        harness = try await ProxyHarness(upstreamURL: upstream.url, threads: threads, configure: configure) { u in
            if tls { u.caFile = ca }
            if key { u.apiKey = .environment("FAKE_KEY") }
            upstreamConfig(&u)
        }
    }

    func testBodiesAndHeadersPassThroughByteForByte() async throws {
        try await start()
        // Odd spacing and key order must survive untouched: the proxy never re-encodes a body.
        let body = "{ \"model\" :\"gpt-4o-mini\",\n  \"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9llo \\ud83d\\ude00\"}] , \"temperature\":0 }"
        let response = try await harness.request(headers: [
            ("authorization", "Bearer sk-client-key"),
            ("x-custom-trace", "abc123"),
            ("connection", "keep-alive, x-hop-named"),
            ("x-hop-named", "must-not-pass"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("upgrade", "websocket"),
            ("x-fake-keep-alive", "timeout=30"),
        ], body: body)
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.body, FakeUpstream.chatCompletion)
        XCTAssertTrue(response.complete)
        XCTAssertEqual(response.header("content-type"), "application/json")
        XCTAssertNil(response.header("keep-alive"), "hop-by-hop Keep-Alive from the upstream must not reach the client")

        let seen = try XCTUnwrap(upstream.requests.first)
        XCTAssertEqual(seen.method, "POST")
        XCTAssertEqual(seen.uri, "/v1/chat/completions")
        XCTAssertEqual(seen.body, Array(body.utf8))
        XCTAssertEqual(seen.header("authorization"), "Bearer \(ProxyHarness.upstreamKey)")
        XCTAssertEqual(seen.header("host"), "127.0.0.1:\(upstream.port)")
        XCTAssertEqual(seen.header("x-custom-trace"), "abc123")
        XCTAssertEqual(seen.header("content-length"), String(body.utf8.count))
        for hop in ["x-hop-named", "keep-alive", "te", "proxy-authorization", "upgrade", "connection", "transfer-encoding"] {
            XCTAssertNil(seen.header(hop), "\(hop) is hop-by-hop and must not be forwarded")
        }
        XCTAssertEqual(seen.headers.filter { $0.0.lowercased() == "authorization" }.count, 1)
    }

    func testClientAuthorizationPassesThroughWhenNoUpstreamKey() async throws {
        try await start(key: false)
        let response = try await harness.request(headers: [("authorization", "Bearer sk-client-own")])
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(upstream.requests.first?.header("authorization"), "Bearer sk-client-own")
    }

    func testEveryMethodAndPathUnderV1IsForwarded() async throws {
        try await start()
        let models = try await harness.request("GET", "/v1/models")
        XCTAssertEqual(models.status, 200)
        XCTAssertTrue(models.body.contains("gpt-4o-mini"))
        let embeddings = try await harness.request("POST", "/v1/embeddings", body: #"{"model":"text-embedding-3-small","input":"hi"}"#)
        XCTAssertEqual(embeddings.status, 200)
        XCTAssertTrue(embeddings.body.contains("embedding"))
        let deleted = try await harness.request("DELETE", "/v1/files/file-abc?x=1", body: nil)
        XCTAssertEqual(deleted.status, 404)  // the fake has no such file; the proxy forwarded it as is
        XCTAssertEqual(upstream.requests.last?.method, "DELETE")
        XCTAssertEqual(upstream.requests.last?.uri, "/v1/files/file-abc?x=1")
        XCTAssertTrue(deleted.body.contains("fake upstream has no"))
    }

    func testUpstreamErrorsPassThroughUnchanged() async throws {
        try await start()
        let response = try await harness.request(headers: [("x-fake-status", "429")])
        XCTAssertEqual(response.status, 429)
        XCTAssertTrue(response.body.contains("fake upstream error 429"))
    }

    func testSequentialRequestsShareOneUpstreamConnection() async throws {
        try await start()
        for _ in 0..<20 {
            let r = try await harness.request()
            XCTAssertEqual(r.status, 200)
        }
        let c = upstream.counters
        XCTAssertEqual(c.requests, 20)
        XCTAssertLessThanOrEqual(c.connectionsAccepted, 2, "one connection per event loop at most")
        XCTAssertEqual(c.handshakes, c.connectionsAccepted)
    }

    func testSequentialRequestsOnOneThreadUseExactlyOneConnection() async throws {
        try await start(threads: 1)
        let client = try await harness.connection()
        for _ in 0..<10 {
            let r = try await client.request("POST", "/v1/chat/completions", body: "{}")
            XCTAssertEqual(r.status, 200)
        }
        await client.close()
        XCTAssertEqual(upstream.counters.connectionsAccepted, 1)
        XCTAssertEqual(upstream.counters.requests, 10)
    }

    func testConcurrentRequestsNeverExceedMaxConnections() async throws {
        try await start(upstreamConfig: { $0.maxConnections = 4 })
        let h: ProxyHarness = harness
        let results = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<40 {
                group.addTask { try await h.request(headers: [("x-fake-delay-ms", "30")]).status }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        XCTAssertEqual(results.count, 40)
        XCTAssertTrue(results.allSatisfy { $0 == 200 }, "\(results)")
        XCTAssertLessThanOrEqual(upstream.counters.maxConnectionsOpen, 4)
        XCTAssertEqual(upstream.counters.requests, 40)
    }

    func testQueueFullGives503WithRetryAfter() async throws {
        try await start(threads: 1, upstreamConfig: { $0.maxConnections = 1; $0.queueSize = 0 })
        let h: ProxyHarness = harness
        async let slow = h.request(headers: [("x-fake-delay-ms", "800")])
        try await Task.sleep(nanoseconds: 200_000_000)
        let rejected = try await harness.request()
        XCTAssertEqual(rejected.status, 503)
        XCTAssertEqual(rejected.header("retry-after"), "1")
        XCTAssertEqual(openAIError(rejected.body)?.code, "pool_exhausted")
        let first = try await slow
        XCTAssertEqual(first.status, 200)
    }

    func testQueueTimeoutGives503() async throws {
        try await start(threads: 1, upstreamConfig: { $0.maxConnections = 1; $0.queueTimeout = .milliseconds(300) })
        let h: ProxyHarness = harness
        async let slow = h.request(headers: [("x-fake-delay-ms", "1500")])
        try await Task.sleep(nanoseconds: 100_000_000)
        let waited = try await harness.request()
        XCTAssertEqual(waited.status, 503)
        XCTAssertEqual(openAIError(waited.body)?.code, "pool_queue_timeout")
        let slowStatus = try await slow.status
        XCTAssertEqual(slowStatus, 200)
    }

    func testStaleReusedConnectionIsReplayedOnceOnAFreshOne() async throws {
        try await start(threads: 1)
        let first = try await harness.request()
        XCTAssertEqual(first.status, 200)
        // From now on the upstream drops any second request on a connection without answering,
        // as a server does when it closes an idle connection just as we reuse it.
        upstream.closeReusedConnections.withLockedValue { $0 = true }
        let second = try await harness.request()
        XCTAssertEqual(second.status, 200, second.body)
        XCTAssertEqual(upstream.counters.connectionsAccepted, 2)
        XCTAssertEqual(upstream.counters.requests, 2, "the dropped attempt was never answered; the replay was")
    }

    func testFailureOnAFreshConnectionIsNotReplayed() async throws {
        try await start(threads: 1)
        let response = try await harness.request(headers: [("x-fake-reset", "1")])
        XCTAssertEqual(response.status, 502)
        XCTAssertEqual(openAIError(response.body)?.code, "upstream_connection_closed")
        XCTAssertEqual(upstream.counters.connectionsAccepted, 1, "a POST that may have reached the provider is never replayed")
    }

    func testConnectionCloseFromUpstreamIsHonoured() async throws {
        try await start(threads: 1)
        _ = try await harness.request(headers: [("x-fake-close", "1")])
        _ = try await harness.request()
        XCTAssertEqual(upstream.counters.connectionsAccepted, 2)
    }

    func testShortUpstreamKeepAliveTimeoutIsHonoured() async throws {
        try await start(threads: 1)
        _ = try await harness.request(headers: [("x-fake-keep-alive", "timeout=1")])
        _ = try await harness.request()
        XCTAssertEqual(upstream.counters.connectionsAccepted, 2, "a 1 s keep-alive leaves no safe window to reuse")
    }

    func testTLSSessionIsResumedOnReconnect() async throws {
        try await start(threads: 1)
        for _ in 0..<3 {
            let r = try await harness.request(headers: [("x-fake-close", "1")])
            XCTAssertEqual(r.status, 200)
        }
        let c = upstream.counters
        XCTAssertEqual(c.handshakes, 3)
        XCTAssertGreaterThanOrEqual(c.resumedHandshakes, 1, "reconnects must resume the TLS session")
    }

    func testSSEEventsReachTheClientBeforeTheUpstreamFinishes() async throws {
        try await start()
        let response = try await harness.request(
            headers: [("x-fake-events", "5"), ("x-fake-interval-ms", "150")],
            body: #"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#)
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.header("content-type"), "text/event-stream")
        XCTAssertTrue(response.complete)
        XCTAssertTrue(response.body.hasSuffix("data: [DONE]\n\n"))
        XCTAssertGreaterThanOrEqual(response.parts.count, 5, "events must be flushed one by one, not buffered")
        let first = response.parts.first!.0, last = response.parts.last!.0
        XCTAssertGreaterThan(last - first, 450_000_000, "the first event arrived long before the stream ended")
        var expected = ""
        for i in 0..<5 { expected += FakeUpstreamEvents.event(i) }
        XCTAssertEqual(response.body, expected + "data: [DONE]\n\n")
    }

    func testClientDisconnectCancelsTheUpstreamRequest() async throws {
        try await start(threads: 1)
        let response = try await harness.request(
            headers: [("x-fake-events", "100"), ("x-fake-interval-ms", "50")],
            body: #"{"stream":true}"#, closeAfterParts: 2)
        XCTAssertFalse(response.complete)
        let freed = await eventually { self.upstream.counters.streamsAbandoned == 1 && self.upstream.counters.connectionsOpen == 0 }
        XCTAssertTrue(freed, "the upstream stream must be cancelled and its connection closed, not pooled: \(upstream.counters)")
        // And the pool still works.
        let next = try await harness.request()
        XCTAssertEqual(next.status, 200)
    }

    func testUpstreamBreakingMidStreamEndsTheClientStreamAbnormally() async throws {
        try await start()
        let response = try await harness.request(
            headers: [("x-fake-events", "10"), ("x-fake-cut-after", "3")], body: #"{"stream":true}"#)
        XCTAssertEqual(response.status, 200)
        XCTAssertFalse(response.complete, "no fake end of stream")
        XCTAssertFalse(response.body.contains("[DONE]"))
        XCTAssertTrue(response.body.contains("tok2"))
    }

    func testSlowClientSlowsTheUpstreamInsteadOfBeingBuffered() async throws {
        try await start(threads: 1)
        // ~40 MB of events. The client reads nothing for a while: the sidecar must stop reading
        // the upstream (whose socket then fills up), not pull the whole stream into memory.
        let events = 200_000
        let body = #"{"stream":true}"#
        let request = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
            "x-fake-events: \(events)\r\nConnection: close\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body
        let reader = try await PausedReader.send(port: harness.port, request: request, group: harness.clientGroup)
        let upstream = self.upstream!
        let pushedBack = await eventually(10) { upstream.counters.backpressureSeen > 0 }
        XCTAssertTrue(pushedBack, "the upstream never felt backpressure: the sidecar kept reading for a client that did not")
        try await Task.sleep(nanoseconds: 300_000_000)
        XCTAssertEqual(upstream.counters.streamsCompleted, 0, "the stream cannot finish while the client does not read")
        let text = try await reader.readToEnd()
        XCTAssertEqual(upstream.counters.streamsCompleted, 1)
        let received = try XCTUnwrap(dechunk(text), "the chunked framing is intact")
        XCTAssertTrue(received.hasSuffix("data: [DONE]\n\n"))
        XCTAssertEqual(received.components(separatedBy: "data: {").count - 1, events, "every event arrived, in full")
    }
}

/// The body of a raw HTTP/1.1 response with chunked framing, or nil if the framing is broken.
func dechunk(_ raw: String) -> String? {
    let bytes = Array(raw.utf8)
    guard let headEnd = raw.range(of: "\r\n\r\n")?.upperBound else { return nil }
    var i = raw.utf8.distance(from: raw.startIndex, to: headEnd)
    var out: [UInt8] = []
    while true {
        var j = i
        while j + 1 < bytes.count, !(bytes[j] == 13 && bytes[j + 1] == 10) { j += 1 }
        guard j + 1 < bytes.count, let size = Int(String(decoding: bytes[i..<j], as: UTF8.self), radix: 16) else { return nil }
        i = j + 2
        if size == 0 { return String(decoding: out, as: UTF8.self) }
        guard i + size + 2 <= bytes.count else { return nil }
        out += bytes[i..<(i + size)]
        i += size + 2
    }
}

/// The fake's SSE event text, for byte-exact comparisons.
enum FakeUpstreamEvents {
    static func event(_ i: Int) -> String {
        #"data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"tok\#(i) "},"finish_reason":null}]}"# + "\n\n"
    }
}
