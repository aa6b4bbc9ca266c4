import Foundation
import SidecarCore
import SidecarStore
import SidecarTestSupport
import XCTest

/// Anthropic, Gemini and Azure requests end to end: routed to the upstream of their dialect with
/// its key in its header, counted, priced, cached and budgeted as chat completions are.
final class DialectProxyTests: XCTestCase {
    var openai: FakeUpstream!
    var other: FakeUpstream!
    var harness: ProxyHarness!

    override func tearDown() async throws {
        await harness?.stop()
        await openai?.stop()
        await other?.stop()
    }

    /// The default upstream speaks OpenAI; `other` speaks `api`, with its own key.
    func start(_ api: APIDialect, configure: @escaping (inout SidecarConfiguration) -> Void = { _ in }) async throws {
        openai = try await FakeUpstream.start()
        other = try await FakeUpstream.start()
        let otherURL = other.url
        harness = try await ProxyHarness(upstreamURL: openai.url, configure: { c in
            guard case .success(let url) = UpstreamURL.parse(otherURL) else { return }
            var u = SidecarConfiguration.Upstream(name: "other", url: url)
            u.api = api
            u.apiKey = .environment("FAKE_KEY")
            c.upstreams.append(u)
            configure(&c)
        }, upstream: { $0.apiKey = .environment("FAKE_KEY") })
    }

    func spend() async throws -> ResponseCacheStore.Spend {
        await harness.server.flushCache()
        let store = try ResponseCacheStore(path: harness.cachePath)
        return try store.spend(since: "2000-01-01").values.reduce(into: ResponseCacheStore.Spend()) { $0 += $1 }
    }

    static let message = #"{"model":"claude-sonnet-4-5","max_tokens":100,"temperature":0,"messages":[{"role":"user","content":"hi"}]}"#

    func testAnthropicMessagesGoToTheAnthropicUpstreamWithItsKeyAndAreCachedAndPriced() async throws {
        try await start(.anthropic)
        let client = [("x-api-key", "sk-ant-client"), ("anthropic-version", "2023-06-01")]
        let first = try await harness.request("POST", "/v1/messages", headers: client + [("x-fake-cache-read", "1000"), ("x-fake-cache-write", "100")], body: Self.message)
        XCTAssertEqual(first.status, 200, first.body)
        XCTAssertEqual(first.header("x-sidecar-cache"), "miss")
        XCTAssertEqual(openai.counters.requests, 0, "nothing went to the OpenAI upstream")
        let sent = try XCTUnwrap(other.requests.last)
        XCTAssertEqual(sent.header("x-api-key"), ProxyHarness.upstreamKey, "the upstream's key, in Anthropic's header")
        XCTAssertNil(sent.header("authorization"))
        XCTAssertEqual(sent.header("anthropic-version"), "2023-06-01")
        let hit = try await harness.request("POST", "/v1/messages", headers: client, body: Self.message)
        XCTAssertEqual(hit.header("x-sidecar-cache"), "hit")
        XCTAssertEqual(hit.body, first.body)
        let beta = try await harness.request("POST", "/v1/messages", headers: client + [("anthropic-beta", "extended-cache-ttl-2025-04-11")], body: Self.message)
        XCTAssertEqual(beta.header("x-sidecar-cache"), "miss", "a beta feature can change the answer: another key")
        XCTAssertEqual(other.requests.last?.header("anthropic-beta"), "extended-cache-ttl-2025-04-11", "and it is passed on")
        let noVersion = try await harness.request("POST", "/v1/messages", headers: [("x-api-key", "sk-ant-client")],
                                                  body: Self.message.replacingOccurrences(of: "\"hi\"", with: "\"hello\""))
        XCTAssertEqual(noVersion.status, 200)
        XCTAssertEqual(other.requests.last?.header("anthropic-version"), APIDialect.defaultAnthropicVersion)

        let s = try await spend()
        XCTAssertEqual(s.requests, 3, "three upstream calls; the hit cost nothing")
        XCTAssertEqual(s.promptTokens, 3 * 25 + 1100, "fresh input plus the cache's reads and writes")
        XCTAssertEqual(s.cachedTokens, 1000)
        XCTAssertEqual(s.cacheWriteTokens, 100)
        XCTAssertEqual(s.completionTokens, 3 * 12)
        // claude-sonnet-4-5: $3 in, $0.30 cached, $3.75 written, $15 out.
        let usd: Double = 3 * 25 * 3 + 1000 * 0.30 + 100 * 3.75 + 36 * 15
        XCTAssertEqual(s.usd, usd / 1_000_000, accuracy: 1e-12)
    }

    func testAnthropicStreamsAreCountedFromStartAndDeltaAndCachedOnlyWhenTheyStop() async throws {
        try await start(.anthropic)
        let stream = Self.message.replacingOccurrences(of: #""temperature":0"#, with: #""temperature":0,"stream":true"#)
        let headers = [("x-api-key", "sk-ant-client"), ("anthropic-version", "2023-06-01")]
        let cut = try await harness.request("POST", "/v1/messages", headers: headers + [("x-fake-events", "400"), ("x-fake-cut-after", "200")], body: stream)
        XCTAssertFalse(cut.body.contains("message_stop"))
        let full = try await harness.request("POST", "/v1/messages", headers: headers + [("x-fake-events", "400")], body: stream)
        XCTAssertEqual(full.header("x-sidecar-cache"), "miss", "the cut stream was not stored")
        XCTAssertTrue(full.body.hasSuffix("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"))
        XCTAssertGreaterThan(full.body.utf8.count, ProxyExchangeLimits.usageTail, "long enough that message_start is out of the tail")
        let again = try await harness.request("POST", "/v1/messages", headers: headers + [("x-fake-events", "400")], body: stream)
        XCTAssertEqual(again.header("x-sidecar-cache"), "hit")
        XCTAssertEqual(again.body, full.body)
        let s = try await spend()
        // The cut stream stated its input (message_start) but never its output (message_delta): its
        // usage is unknown, so without a budget it is not recorded (under one, it is charged its
        // reservation: BudgetBypassTests).
        XCTAssertEqual(s.requests, 1)
        XCTAssertEqual(s.promptTokens, 25, "from message_start, which only the stream's head still held")
        XCTAssertEqual(s.completionTokens, 400, "from message_delta")
    }

    func testTokenCountingIsNeverBilledOrReserved() async throws {
        try await start(.anthropic) { c in
            c.budgets.limits.dailyUSD = 0.000_001  // less than any message costs
        }
        let headers = [("x-api-key", "sk-ant-client"), ("anthropic-version", "2023-06-01")]
        let count = try await harness.request("POST", "/v1/messages/count_tokens", headers: headers,
                                              body: #"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}"#)
        XCTAssertEqual(count.status, 200, count.body)
        XCTAssertEqual(count.body, #"{"input_tokens":25}"#)
        let message = try await harness.request("POST", "/v1/messages", headers: headers, body: Self.message)
        XCTAssertEqual(message.status, 429, "the budget is real: a message is refused")
        XCTAssertEqual(openAIError(message.body)?.code, "budget_exceeded")
        let s = try await spend()
        XCTAssertEqual(s.requests, 0)
    }

    func testGeminiAndAzureRequestsArePricedByTheModelInTheirPath() async throws {
        try await start(.gemini)
        let gemini = "/v1beta/models/gemini-2.5-flash:generateContent"
        let body = #"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"temperature":0}}"#
        let r = try await harness.request("POST", gemini, headers: [("x-goog-api-key", "client-key"), ("x-fake-cache-read", "100")], body: body)
        XCTAssertEqual(r.status, 200, r.body)
        XCTAssertEqual(other.requests.last?.header("x-goog-api-key"), ProxyHarness.upstreamKey)
        let hit = try await harness.request("POST", gemini, headers: [("x-goog-api-key", "client-key")], body: body)
        XCTAssertEqual(hit.header("x-sidecar-cache"), "hit")
        let streamPath = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        let streamed = try await harness.request("POST", streamPath, headers: [("x-goog-api-key", "client-key"), ("x-fake-events", "4")], body: body)
        XCTAssertTrue(streamed.body.contains(#""finishReason":"STOP""#), streamed.body)
        let streamHit = try await harness.request("POST", streamPath, headers: [("x-goog-api-key", "client-key")], body: body)
        XCTAssertEqual(streamHit.header("x-sidecar-cache"), "hit", "a stream that reached its finishReason is cached")
        let s = try await spend()
        XCTAssertEqual(s.requests, 2)
        XCTAssertEqual(s.promptTokens, 125 + 25)
        XCTAssertEqual(s.cachedTokens, 100)
        XCTAssertEqual(s.completionTokens, 7 + 4)
        let usd: Double = (25 + 25) * 0.30 + 100 * 0.03 + 11 * 2.50  // gemini-2.5-flash
        XCTAssertEqual(s.usd, usd / 1_000_000, accuracy: 1e-12)
        let missing = try await harness.request("POST", "/openai/deployments/d/chat/completions?api-version=2024-10-21", body: "{}")
        XCTAssertEqual(missing.status, 404)
        XCTAssertTrue(openAIError(missing.body)?.message.contains(#"api = "azure""#) ?? false, missing.body)
    }

    func testAzureDeploymentPaths() async throws {
        try await start(.azure) { c in
            c.prices["prod-4o-mini"] = .init(inputPerMTok: 0.15, outputPerMTok: 0.60)
        }
        let path = "/openai/deployments/prod-4o-mini/chat/completions?api-version=2024-10-21"
        let r = try await harness.request("POST", path, headers: [("api-key", "client-key")], body: #"{"messages":[{"role":"user","content":"hi"}]}"#)
        XCTAssertEqual(r.status, 200, r.body)
        let sent = try XCTUnwrap(other.requests.last)
        XCTAssertEqual(sent.uri, path, "the path and its api-version as sent")
        XCTAssertEqual(sent.header("api-key"), ProxyHarness.upstreamKey)
        let s = try await spend()
        XCTAssertEqual(s.usd, (19 * 0.15 + 28 * 0.60) / 1_000_000, accuracy: 1e-12, "priced as [prices.\"DEPLOYMENT\"]")
        // An OpenAI request still goes to the OpenAI upstream.
        let plain = try await harness.request()
        XCTAssertEqual(plain.status, 200)
        XCTAssertEqual(openai.counters.requests, 1)
    }

    func testAModelGroupOfAnotherDialectIsRefusedClearly() async throws {
        try await start(.anthropic) { c in
            c.models = [.init(name: "claude", deployments: [.init(upstream: "other", model: "claude-sonnet-4-5")])]
        }
        let r = try await harness.request(body: #"{"model":"claude","messages":[{"role":"user","content":"hi"}]}"#)
        XCTAssertEqual(r.status, 400)
        XCTAssertTrue(openAIError(r.body)?.message.contains("served by Anthropic deployments") ?? false, r.body)
        let ok = try await harness.request("POST", "/v1/messages", headers: [("anthropic-version", "2023-06-01")],
                                           body: Self.message.replacingOccurrences(of: "claude-sonnet-4-5", with: "claude"))
        XCTAssertEqual(ok.status, 200, ok.body)
        XCTAssertEqual(other.requests.last.map { String(decoding: $0.body, as: UTF8.self).contains(#""model":"claude-sonnet-4-5""#) }, true)
    }

    /// An upload (audio, files) streams through with backpressure even where the body would
    /// otherwise be read whole first (budgets, model groups): it is never buffered.
    func testUploadsStreamThroughUnderABudgetAndModelGroups() async throws {
        let silent = try await SilentServer.start(receiveBuffer: 64 * 1024)
        defer { Task { await silent.stop() } }
        harness = try await ProxyHarness(upstreamURL: "http://127.0.0.1:\(silent.port)", threads: 1, configure: { c in
            c.server.maxBodyBytes = 512 << 20
            c.budgets.limits.dailyUSD = 10
            c.models = [.init(name: "m", deployments: [.init(upstream: "fake", model: "m")])]
        })
        let total = 256 << 20
        let sent = pushBody(port: harness.port, head: "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                            + "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: \(total)\r\n\r\n", total: total)
        XCTAssertLessThan(sent, 64 << 20, "the upload was held back by the upstream that does not read, not buffered: \(sent >> 20) MiB accepted")
    }

    /// The official `anthropic` Python SDK, pointed at the sidecar: messages, a stream, token
    /// counting and the model list all work, with the client's key replaced by the upstream's.
    func testTheOfficialAnthropicClient() async throws {
        guard let python = AdminTests.python else {
            throw XCTSkip("run through `make test`, which installs the anthropic package (LLM_SIDECAR_TEST_PYTHON)")
        }
        try await start(.anthropic)
        let script = """
        import sys, json
        import anthropic
        client = anthropic.Anthropic(base_url=sys.argv[1], api_key="sk-ant-client", max_retries=0)
        out = {}
        m = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}], extra_body={"temperature": 0})
        out["text"] = m.content[0].text
        out["usage"] = [m.usage.input_tokens, m.usage.output_tokens]
        again = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}], extra_body={"temperature": 0})
        out["second"] = again.headers.get("x-sidecar-cache")
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as s:
            out["streamed"] = "".join(s.text_stream)
            final = s.get_final_message()
        out["stream_usage"] = [final.usage.input_tokens, final.usage.output_tokens]
        out["count"] = client.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]).input_tokens
        out["models"] = [x.id for x in client.models.list()]
        print(json.dumps(out))
        """
        let json = try Self.runJSON(python, script, "http://127.0.0.1:\(harness.port)")
        XCTAssertEqual(json["text"] as? String, "Hello! This is a canned answer from the fake Anthropic upstream.")
        XCTAssertEqual(json["usage"] as? [Int], [25, 12])
        XCTAssertEqual(json["second"] as? String, "hit")
        XCTAssertEqual(json["streamed"] as? String, "tok0 tok1 tok2 ")
        XCTAssertEqual(json["stream_usage"] as? [Int], [25, 3])
        XCTAssertEqual(json["count"] as? Int, 25)
        XCTAssertEqual(json["models"] as? [String], ["claude-sonnet-4-5-20250929"])
        XCTAssertEqual(openai.counters.requests, 0, "the SDK's model list (anthropic-version) went to the Anthropic upstream")
        XCTAssertTrue(other.requests.allSatisfy { $0.header("x-api-key") == ProxyHarness.upstreamKey })
    }
}

extension DialectProxyTests {
    /// Runs a Python script with `argument`; its stdout is one JSON object.
    static func runJSON(_ python: String, _ script: String, _ argument: String) throws -> [String: Any] {
        let (status, output, errors) = try runPython(python, script, [argument])
        XCTAssertEqual(status, 0, errors)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any], output + errors)
    }

    /// The official `openai` SDK's Responses API (its new default): plain and streamed, cached
    /// when deterministic, its cached input tokens priced at the cached rate.
    func testTheResponsesAPIThroughTheOfficialOpenAIClient() async throws {
        guard let python = AdminTests.python else {
            throw XCTSkip("run through `make test`, which installs the openai package (LLM_SIDECAR_TEST_PYTHON)")
        }
        try await start(.anthropic)
        let script = """
        import sys, json
        from openai import OpenAI
        client = OpenAI(base_url=sys.argv[1], api_key="sk-client", max_retries=0)
        out = {}
        r = client.responses.create(model="gpt-4o-mini", input="hi", temperature=0)
        out["text"] = r.output_text
        out["cached"] = r.usage.input_tokens_details.cached_tokens
        again = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", temperature=0)
        out["second"] = again.headers.get("x-sidecar-cache")
        events = [e.type for e in client.responses.create(model="gpt-4o-mini", input="stream", temperature=0, stream=True)]
        out["events"] = events
        replay = client.responses.with_raw_response.create(model="gpt-4o-mini", input="stream", temperature=0, stream=True)
        out["stream_second"] = replay.headers.get("x-sidecar-cache")
        print(json.dumps(out))
        """
        let json = try Self.runJSON(python, script, "http://127.0.0.1:\(harness.port)/v1")
        XCTAssertEqual(json["text"] as? String, "Hello from the fake Responses API.")
        XCTAssertEqual(json["cached"] as? Int, 16)
        XCTAssertEqual(json["second"] as? String, "hit")
        XCTAssertEqual(json["events"] as? [String], ["response.created"] + Array(repeating: "response.output_text.delta", count: 3) + ["response.completed"])
        XCTAssertEqual(json["stream_second"] as? String, "hit", "a stream is cached once it reached response.completed")
        XCTAssertEqual(other.counters.requests, 0, "OpenAI's dialect went to the OpenAI upstream")
        let s = try await spend()
        XCTAssertEqual(s.requests, 2)
        XCTAssertEqual(s.cachedTokens, 32)
        let usd: Double = 2 * (4 * 0.15 + 16 * 0.075 + 9 * 0.60)  // gpt-4o-mini, cached input at half price
        XCTAssertEqual(s.usd, usd / 1_000_000, accuracy: 1e-12)
    }
}

extension DialectProxyTests {
    /// The official clients of the other dialects: `openai`'s AzureOpenAI and Google's `google-genai`.
    func testTheOfficialAzureAndGeminiClients() async throws {
        guard let python = AdminTests.python else {
            throw XCTSkip("run through `make test`, which installs openai and google-genai (LLM_SIDECAR_TEST_PYTHON)")
        }
        try await start(.gemini) { c in
            guard let fake = c.upstream(named: "fake") else { return }
            var azure = SidecarConfiguration.Upstream(name: "azure", url: fake.url)
            azure.api = .azure
            azure.apiKey = .environment("FAKE_KEY")
            c.upstreams.append(azure)
        }
        let script = """
        import sys, json
        from openai import AzureOpenAI
        from google import genai
        from google.genai import types
        out = {}
        azure = AzureOpenAI(azure_endpoint=sys.argv[1], api_key="az-client", api_version="2024-10-21", max_retries=0)
        r = azure.chat.completions.create(model="prod-4o-mini", temperature=0, messages=[{"role": "user", "content": "hi"}])
        out["azure"] = r.choices[0].message.content[:5]
        g = genai.Client(api_key="g-client", http_options=types.HttpOptions(base_url=sys.argv[1]))
        resp = g.models.generate_content(model="gemini-2.5-flash", contents="hi", config=types.GenerateContentConfig(temperature=0))
        out["gemini"] = resp.text
        out["gemini_usage"] = [resp.usage_metadata.prompt_token_count, resp.usage_metadata.candidates_token_count]
        streamed = "".join(chunk.text or "" for chunk in g.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
        out["gemini_stream"] = streamed
        print(json.dumps(out))
        """
        let json = try Self.runJSON(python, script, "http://127.0.0.1:\(harness.port)")
        XCTAssertEqual(json["azure"] as? String, "Hello")
        XCTAssertEqual(json["gemini"] as? String, "Hello from the fake Gemini.")
        XCTAssertEqual(json["gemini_usage"] as? [Int], [25, 7])
        XCTAssertEqual(json["gemini_stream"] as? String, "tok0 tok1 tok2 ")
        let azureCall = try XCTUnwrap(openai.requests.first { $0.uri.hasPrefix("/openai/deployments/") })
        XCTAssertEqual(azureCall.uri, "/openai/deployments/prod-4o-mini/chat/completions?api-version=2024-10-21")
        XCTAssertEqual(azureCall.header("api-key"), ProxyHarness.upstreamKey)
        XCTAssertTrue(other.requests.allSatisfy { $0.header("x-goog-api-key") == ProxyHarness.upstreamKey && $0.uri.hasPrefix("/v1/models/gemini-2.5-flash:") },
                      "\(other.requests.map(\.uri))")
    }
}

/// The exchange's usage tail size, for tests that need a stream longer than it.
enum ProxyExchangeLimits {
    static let usageTail = 16 << 10
}
