import Foundation
import SidecarCore
import SidecarTestSupport
import XCTest

/// Traces end to end: a loopback OTLP/HTTP receiver decodes what the sidecar sends with the
/// `opentelemetry-proto` package (the protocol's own definitions), one JSON line per span.
final class TracingTests: XCTestCase {
    var upstreams: [FakeUpstream] = []
    var harness: ProxyHarness!
    var receiver: Process?
    var spansFile = ""

    override func tearDown() async throws {
        await harness?.stop()
        for u in upstreams { await u.stop() }
        if let r = receiver, r.isRunning { kill(r.processIdentifier, SIGKILL) }
    }

    static let receiverScript = """
    import sys, json
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    out = open(sys.argv[1], "a")
    def value(v):
        k = v.WhichOneof("value")
        return getattr(v, k) if k else None
    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                resource = {a.key: value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.write(json.dumps({"name": s.name, "kind": s.kind, "trace": s.trace_id.hex(), "id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(), "status": s.status.code, "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano, "service": resource.get("service.name"),
                            "attributes": {a.key: value(a.value) for a in s.attributes},
                            "content_type": self.headers["content-type"], "path": self.path}) + "\\n")
            out.flush()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()
        def log_message(self, *a):
            pass
    server = HTTPServer(("127.0.0.1", 0), H)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """

    /// Starts the receiver; its port.
    func startReceiver(_ python: String) throws -> Int {
        spansFile = ProxyHarness.temporaryDirectory() + "/spans.jsonl"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", Self.receiverScript, spansFile]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        receiver = p
        var line = ""
        while !line.contains("\n") {
            let data = out.fileHandleForReading.availableData
            if data.isEmpty { break }
            line += String(decoding: data, as: UTF8.self)
        }
        return try XCTUnwrap(Int(line.trimmingCharacters(in: .whitespacesAndNewlines)), "receiver did not start: \(line)")
    }

    func spans() -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: spansFile, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    func start(otelPort: Int, captureContent: Bool = false) async throws {
        for _ in 0..<2 { upstreams.append(try await FakeUpstream.start()) }
        let urls = upstreams.map(\.url)
        harness = try await ProxyHarness(upstreamURL: urls[0], configure: { c in
            guard case .success(let b) = UpstreamURL.parse(urls[1]) else { return }
            var second = SidecarConfiguration.Upstream(name: "second", url: b)
            second.apiKey = .environment("FAKE_KEY")
            c.upstreams.append(second)
            c.models = [.init(name: "team", deployments: [.init(upstream: "fake", model: "gpt-4o-mini"), .init(upstream: "second", model: "gpt-4o-mini")])]
            var otel = SidecarConfiguration.OTel(endpoint: UpstreamURL(tls: false, host: "127.0.0.1", port: otelPort, pathPrefix: "/v1/traces"))
            otel.exportInterval = .milliseconds(100)
            otel.captureContent = captureContent
            c.otel = otel
        }, upstream: { $0.apiKey = .environment("FAKE_KEY") })
    }

    func testSpansFollowTheGenAIConventionsForCachedUncachedRetriedAndStreamedRequests() async throws {
        guard let python = AdminTests.python else { throw XCTSkip("run through `make test`, which installs opentelemetry-proto") }
        try await start(otelPort: try startReceiver(python))
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        let deterministic = #"{"model":"gpt-4o-mini","temperature":0,"max_tokens":50,"messages":[{"role":"user","content":"secret prompt"}]}"#
        let miss = try await harness.request(headers: [("traceparent", parent)], body: deterministic)
        XCTAssertEqual(miss.header("x-sidecar-cache"), "miss")
        let hitResponse = try await harness.request(body: deterministic)
        XCTAssertEqual(hitResponse.header("x-sidecar-cache"), "hit")
        _ = try await harness.request(body: #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#)
        // Retried: one deployment answers 503 (forcedStatus), the other serves it.
        upstreams[0].forcedStatus.withLockedValue { $0 = (503, nil) }
        upstreams[1].forcedStatus.withLockedValue { $0 = nil }
        for _ in 0..<4 { _ = try await harness.request(body: #"{"model":"team","messages":[{"role":"user","content":"retry"}]}"#) }
        upstreams[0].forcedStatus.withLockedValue { $0 = nil }
        let streamed = try await harness.request(headers: [("x-fake-events", "3"), ("x-fake-interval-ms", "20")],
                                                 body: #"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"s"}]}"#)
        XCTAssertTrue(streamed.body.hasSuffix("data: [DONE]\n\n"))
        let sent = upstreams[0].requests.first
        let reached = await eventually(10) { self.spans().filter { $0["kind"] as? Int == 2 }.count >= 8 }
        XCTAssertTrue(reached, "\(spans().count) spans")
        let all = spans()
        let servers = all.filter { $0["kind"] as? Int == 2 }  // SPAN_KIND_SERVER: one per request

        // The cached miss: continues the client's trace; GenAI attributes; its children.
        let first = try XCTUnwrap(servers.first { $0["trace"] as? String == "0af7651916cd43dd8448eb211c80319c" })
        XCTAssertEqual(first["parent"] as? String, "b7ad6b7169203331", "the incoming traceparent is continued")
        XCTAssertEqual(first["name"] as? String, "chat gpt-4o-mini")
        XCTAssertEqual(first["service"] as? String, "llm-sidecar")
        XCTAssertEqual(first["content_type"] as? String, "application/x-protobuf")
        let a = try XCTUnwrap(first["attributes"] as? [String: Any])
        XCTAssertEqual(a["gen_ai.operation.name"] as? String, "chat")
        XCTAssertEqual(a["gen_ai.provider.name"] as? String, "openai")
        XCTAssertEqual(a["gen_ai.request.model"] as? String, "gpt-4o-mini")
        XCTAssertEqual(a["gen_ai.response.model"] as? String, "gpt-4o-mini-2024-07-18")
        XCTAssertEqual(a["gen_ai.request.temperature"] as? Double, 0)
        XCTAssertEqual(a["gen_ai.request.max_tokens"] as? Int, 50)
        XCTAssertEqual(a["gen_ai.usage.input_tokens"] as? Int, 19)
        XCTAssertEqual(a["gen_ai.usage.output_tokens"] as? Int, 28)
        XCTAssertEqual(a["llm_sidecar.cache"] as? String, "miss")
        XCTAssertEqual(a["http.response.status_code"] as? Int, 200)
        XCTAssertEqual(a["server.address"] as? String, "127.0.0.1")
        XCTAssertEqual(try XCTUnwrap(a["llm_sidecar.cost_usd"] as? Double), (19 * 0.15 + 28 * 0.60) / 1_000_000, accuracy: 1e-12)
        XCTAssertNotNil(a["llm_sidecar.overhead_ms"])
        XCTAssertNil(a["gen_ai.input.messages"], "no content without capture_content")
        XCTAssertFalse(all.description.contains("secret prompt"))
        let children = all.filter { $0["parent"] as? String == first["id"] as? String }
        XCTAssertEqual(Set(children.compactMap { $0["name"] as? String }), ["cache lookup", "chat gpt-4o-mini"])
        let attempt = try XCTUnwrap(children.first { $0["kind"] as? Int == 3 }, "the upstream attempt is a client span")
        XCTAssertEqual(sent?.header("traceparent"), "00-0af7651916cd43dd8448eb211c80319c-\(attempt["id"] as? String ?? "")-01",
                       "the upstream gets the attempt's context")
        XCTAssertEqual((children.first { $0["name"] as? String == "cache lookup" }?["attributes"] as? [String: Any])?["llm_sidecar.cache.result"] as? String, "miss")

        // The hit: a cache lookup that hit, no attempt.
        let hit = try XCTUnwrap(servers.first { ($0["attributes"] as? [String: Any])?["llm_sidecar.cache"] as? String == "hit" })
        XCTAssertEqual(all.filter { $0["parent"] as? String == hit["id"] as? String }.compactMap { $0["name"] as? String }, ["cache lookup"])

        // Retried: two attempts under one request, the first an error, on different deployments.
        let retried = servers.filter { (($0["attributes"] as? [String: Any])?["llm_sidecar.attempts"] as? Int ?? 0) == 2 }
        XCTAssertFalse(retried.isEmpty, "some routed request met the 503 first: \(servers.map { $0["attributes"] ?? "" })")
        if let r = retried.first {
            let attempts = all.filter { $0["parent"] as? String == r["id"] as? String && $0["kind"] as? Int == 3 }
                .sorted { ($0["start"] as? Int ?? 0) < ($1["start"] as? Int ?? 0) }
            XCTAssertEqual(attempts.map { ($0["attributes"] as? [String: Any])?["http.response.status_code"] as? Int }, [503, 200])
            XCTAssertEqual(attempts.map { $0["status"] as? Int }, [2, 0], "the failed attempt is an error")
            XCTAssertEqual(Set(attempts.compactMap { ($0["attributes"] as? [String: Any])?["llm_sidecar.deployment"] as? String }).count, 2)
        }

        // Streamed: the attempt has a first-token child that starts with the send.
        let stream = try XCTUnwrap(servers.first { ($0["attributes"] as? [String: Any])?["llm_sidecar.stream"] as? Bool == true })
        let streamAttempt = try XCTUnwrap(all.first { $0["parent"] as? String == stream["id"] as? String && $0["kind"] as? Int == 3 })
        let firstToken = try XCTUnwrap(all.first { $0["parent"] as? String == streamAttempt["id"] as? String })
        XCTAssertEqual(firstToken["name"] as? String, "first token")
        XCTAssertEqual(firstToken["start"] as? Int ?? 0, streamAttempt["start"] as? Int ?? -1, accuracy: 5_000_000)
        XCTAssertGreaterThan(firstToken["end"] as? Int ?? 0, firstToken["start"] as? Int ?? 0)
    }

    func testContentIsRecordedOnlyWhenAskedFor() async throws {
        guard let python = AdminTests.python else { throw XCTSkip("run through `make test`, which installs opentelemetry-proto") }
        try await start(otelPort: try startReceiver(python), captureContent: true)
        _ = try await harness.request(body: #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"the prompt"}]}"#)
        let reached = await eventually(10) { self.spans().contains { $0["kind"] as? Int == 2 } }
        XCTAssertTrue(reached)
        let a = spans().first { $0["kind"] as? Int == 2 }?["attributes"] as? [String: Any]
        XCTAssertTrue((a?["gen_ai.input.messages"] as? String)?.contains("the prompt") ?? false)
        XCTAssertTrue((a?["gen_ai.output.messages"] as? String)?.contains("canned answer") ?? false)
    }

    /// A collector that is gone changes no request's outcome: spans are dropped and counted.
    func testADeadCollectorChangesNoRequest() async throws {
        let listener = try await FakeUpstream.start()
        let port = listener.port
        await listener.stop()  // nothing listens there any more
        try await start(otelPort: port)
        for i in 0..<40 {
            let r = try await harness.request(body: #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"n\#(i)"}]}"#)
            XCTAssertEqual(r.status, 200)
        }
        var metrics = ""
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            metrics = try await harness.request("GET", "/metrics").body
            if let line = metrics.split(separator: "\n").first(where: { $0.hasPrefix(#"llm_sidecar_otel_spans_total{outcome="dropped"}"#) }),
               let n = Double(line.split(separator: " ").last ?? ""), n > 0 { return }
            try await Task.sleep(nanoseconds: 50_000_000)  // polling a condition, not waiting for time
        }
        XCTFail("no dropped spans counted: \(metrics)")
    }
}
