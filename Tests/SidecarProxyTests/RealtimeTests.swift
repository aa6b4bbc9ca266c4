import Foundation
import NIOCore
import SidecarCore
import SidecarStore
import SidecarTestSupport
import XCTest

/// WebSocket sessions (the Realtime API) relayed over real TLS to NIO's own WebSocket server,
/// with the official `openai` SDK and the `websockets` package as clients.
final class RealtimeTests: XCTestCase {
    var pki: TestPKI!
    var upstream: FakeRealtime!
    var harness: ProxyHarness!

    override func setUp() async throws {
        pki = try TestPKI()
    }

    override func tearDown() async throws {
        await harness?.stop()
        await upstream?.stop()
        pki.cleanUp()
    }

    func start(key: Bool = true, configure: @escaping (inout SidecarConfiguration) -> Void = { _ in }) async throws -> String {
        guard let python = AdminTests.python else {
            throw XCTSkip("run through `make test`, which installs openai and websockets (LLM_SIDECAR_TEST_PYTHON)")
        }
        upstream = try await FakeRealtime.start(tls: pki.serverTLS())
        let ca = try pki.caFile()
        harness = try await ProxyHarness(upstreamURL: upstream.url, configure: configure) { u in
            u.caFile = ca
            if key { u.apiKey = .environment("FAKE_KEY") }
        }
        return python
    }

    /// Runs `script` with the sidecar's port; its stdout is one JSON object.
    func run(_ python: String, _ script: String) throws -> [String: Any] {
        try DialectProxyTests.runJSON(python, script, String(harness.port))
    }

    func testTheOfficialClientTalksToTheUpstreamWithItsKeyAndTheResponseIsPriced() async throws {
        let python = try await start()
        let json = try run(python, """
        import sys, json
        from openai import OpenAI
        client = OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", websocket_base_url=f"ws://127.0.0.1:{sys.argv[1]}/v1",
                api_key="sk-client", max_retries=0)
        out = {"deltas": []}
        with client.realtime.connect(model="gpt-realtime") as conn:
            out["first"] = conn.recv().type
            conn.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})
            conn.response.create()
            for event in conn:
                if event.type == "response.output_text.delta":
                    out["deltas"].append(event.delta)
                if event.type == "response.done":
                    out["usage"] = [event.response.usage.input_tokens, event.response.usage.output_tokens]
                    break
        print(json.dumps(out))
        """)
        XCTAssertEqual(json["first"] as? String, "session.created")
        XCTAssertEqual(json["deltas"] as? [String], ["tok0 ", "tok1 ", "tok2 "])
        XCTAssertEqual(json["usage"] as? [Int], [40, 12])
        let session = try XCTUnwrap(upstream.sessions.withLockedValue { $0.first })
        XCTAssertEqual(session.uri, "/v1/realtime?model=gpt-realtime")
        XCTAssertEqual(session.header("authorization"), "Bearer \(ProxyHarness.upstreamKey)", "the upstream's key, not the client's")
        XCTAssertNil(session.header("sec-websocket-extensions"), "no compression: the sidecar reads the messages")
        XCTAssertEqual(session.messages.count, 2)
        let reached = await eventually { self.upstream.sessions.withLockedValue { $0.first?.closeCodes } == [1000] }
        XCTAssertTrue(reached, "the client's close reached the upstream")
        await harness.server.flushCache()
        let spend = try ResponseCacheStore(path: harness.cachePath).spend(since: "2000-01-01")
        let (key, s) = try XCTUnwrap(spend.first)
        XCTAssertEqual(key.model, "gpt-realtime", "priced as the model the URL names")
        XCTAssertEqual(s.requests, 1)
        XCTAssertEqual(s.promptTokens, 40)
        XCTAssertEqual(s.cachedTokens, 32)
        XCTAssertEqual(s.completionTokens, 12)
        let usd: Double = 8 * 32 + 32 * 0.40 + 12 * 64  // gpt-realtime at its audio rates
        XCTAssertEqual(s.usd, usd / 1_000_000, accuracy: 1e-12)
    }

    func testABrowsersKeyInTheSubprotocolIsReplacedByTheUpstreamsKey() async throws {
        let python = try await start()
        let json = try run(python, """
        import sys, json
        from websockets.sync.client import connect
        url = f"ws://127.0.0.1:{sys.argv[1]}/v1/realtime?model=gpt-realtime"
        with connect(url, subprotocols=["realtime", "openai-insecure-api-key.sk-browser", "openai-beta.realtime-v1"]) as ws:
            first = json.loads(ws.recv())
            print(json.dumps({"protocol": ws.subprotocol, "first": first["type"]}))
        """)
        XCTAssertEqual(json["protocol"] as? String, "realtime")
        XCTAssertEqual(json["first"] as? String, "session.created")
        let session = try XCTUnwrap(upstream.sessions.withLockedValue { $0.first })
        XCTAssertEqual(session.header("sec-websocket-protocol"), "realtime, openai-beta.realtime-v1", "the key left the subprotocols")
        XCTAssertEqual(session.header("authorization"), "Bearer \(ProxyHarness.upstreamKey)")
    }

    func testAResponseOverBudgetIsNotSentAndTheClientGetsTheAPIsErrorEvent() async throws {
        let python = try await start { c in c.budgets.limits.dailyUSD = 0.000_001 }
        let json = try run(python, """
        import sys, json
        from websockets.sync.client import connect
        with connect(f"ws://127.0.0.1:{sys.argv[1]}/v1/realtime?model=gpt-realtime", additional_headers={"Authorization": "Bearer sk-client"}) as ws:
            ws.recv()
            ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 100}}))
            print(json.dumps(json.loads(ws.recv())))
        """)
        XCTAssertEqual(json["type"] as? String, "error")
        let error = try XCTUnwrap(json["error"] as? [String: Any])
        XCTAssertEqual(error["code"] as? String, "budget_exceeded")
        XCTAssertTrue((error["message"] as? String)?.contains("daily budget") ?? false, "\(error)")
        let reached = await eventually { self.upstream.sessions.withLockedValue { $0.first?.messages.count } == 1 }
        XCTAssertTrue(reached, "close codes the upstream got: \(upstream.sessions.withLockedValue { $0.map(\.closeCodes) })")
        XCTAssertEqual(upstream.sessions.withLockedValue { $0.first?.messages }, [#"{"type": "input_audio_buffer.clear"}"#],
                       "the response.create never reached the upstream; other messages did")
    }

    func testAnIdleSessionIsClosedWith1001OnBothSides() async throws {
        let python = try await start { c in c.server.websocketIdleTimeout = .milliseconds(300) }
        let json = try run(python, """
        import sys, json
        from websockets.sync.client import connect
        from websockets.exceptions import ConnectionClosed
        with connect(f"ws://127.0.0.1:{sys.argv[1]}/v1/realtime?model=gpt-realtime") as ws:
            ws.recv()
            try:
                ws.recv(timeout=10)
                print(json.dumps({"closed": False}))
            except ConnectionClosed as e:
                print(json.dumps({"code": e.rcvd.code, "reason": e.rcvd.reason}))
        """)
        XCTAssertEqual(json["code"] as? Int, 1001)
        XCTAssertEqual(json["reason"] as? String, "no frame for server.websocket_idle_timeout")
        let reached = await eventually { self.upstream.sessions.withLockedValue { $0.first?.closeCodes } == [1001] }
        XCTAssertTrue(reached, "close codes the upstream got: \(upstream.sessions.withLockedValue { $0.map(\.closeCodes) })")
    }

    func testAStopWaitsForSessionsThenClosesThemWith1001() async throws {
        let python = try await start()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", """
        import sys, json
        from websockets.sync.client import connect
        from websockets.exceptions import ConnectionClosed
        with connect(f"ws://127.0.0.1:{sys.argv[1]}/v1/realtime?model=gpt-realtime") as ws:
            ws.recv()
            print("open", flush=True)
            try:
                while True:
                    ws.recv(timeout=10)
            except ConnectionClosed as e:
                print(json.dumps({"code": e.rcvd.code, "reason": e.rcvd.reason}), flush=True)
        """, String(harness.port)]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let reader = out.fileHandleForReading
        var text = ""
        while !text.contains("open\n") {
            let data = reader.availableData
            if data.isEmpty { break }
            text += String(decoding: data, as: UTF8.self)
        }
        XCTAssertTrue(text.contains("open"), text)
        let started = Date()
        await harness.server.shutdown(drainTimeout: .milliseconds(400))
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(started), 0.35, "the stop waited for the session")
        text += String(decoding: reader.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertTrue(text.contains(#"{"code": 1001, "reason": "the sidecar is stopping"}"#), text)
        let reached = await eventually { self.upstream.sessions.withLockedValue { $0.first?.closeCodes } == [1001] }
        XCTAssertTrue(reached, "close codes the upstream got: \(upstream.sessions.withLockedValue { $0.map(\.closeCodes) })")
        harness = nil
    }

    func testAClientThatDoesNotReadHoldsTheUpstreamBack() async throws {
        let python = try await start()
        let json = try run(python, """
        import sys, json, time
        from websockets.sync.client import connect
        with connect(f"ws://127.0.0.1:{sys.argv[1]}/v1/realtime?model=gpt-realtime", max_size=None, max_queue=1) as ws:
            ws.recv()
            ws.send(json.dumps({"type": "test.flood", "bytes": 256 << 20}))
            time.sleep(1.5)  # not reading: the flood must stop at the relay's and the kernel's buffers
            got = 0
            while got < (1 << 20):
                got += len(ws.recv(timeout=10))
            print(json.dumps({"got": got}))
        """)
        XCTAssertGreaterThanOrEqual(json["got"] as? Int ?? 0, 1 << 20, "the flood flows again once the client reads")
        XCTAssertGreaterThan(upstream.backpressureSeen.withLockedValue { $0 }, 0, "the upstream was made to wait")
    }

    func testAnUpstreamThatRefusesTheUpgradeIsAnsweredWithItsOwnStatus() async throws {
        let python = try await start()
        let json = try run(python, """
        import sys, json
        from websockets.sync.client import connect
        from websockets.exceptions import InvalidStatus
        try:
            with connect(f"ws://127.0.0.1:{sys.argv[1]}/v1/not-realtime") as ws:
                print(json.dumps({"status": 101}))
        except InvalidStatus as e:
            print(json.dumps({"status": e.response.status_code}))
        """)
        XCTAssertEqual(json["status"] as? Int, 404, "the upstream's own status")
        XCTAssertTrue(upstream.sessions.withLockedValue { $0.isEmpty })
    }
}
