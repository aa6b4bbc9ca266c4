import NIOHTTP1
import SidecarCore
import XCTest

/// The dialects' pure rules: paths, credentials, usage in every dialect, prices, cacheability.
final class DialectTests: XCTestCase {
    func testARequestsDialectComesFromItsPathAndAnthropicVersion() {
        XCTAssertEqual(APIDialect.of(path: "/v1/chat/completions", hasAnthropicVersion: false), .openai)
        XCTAssertEqual(APIDialect.of(path: "/v1/messages", hasAnthropicVersion: false), .anthropic)
        XCTAssertEqual(APIDialect.of(path: "/v1/messages/count_tokens", hasAnthropicVersion: false), .anthropic)
        XCTAssertEqual(APIDialect.of(path: "/v1/models", hasAnthropicVersion: true), .anthropic, "the Anthropic SDK's model list")
        XCTAssertEqual(APIDialect.of(path: "/v1/messagesx", hasAnthropicVersion: false), .openai)
        XCTAssertEqual(APIDialect.of(path: "/openai/deployments/gpt4o/chat/completions", hasAnthropicVersion: false), .azure)
        XCTAssertEqual(APIDialect.of(path: "/v1beta/models/gemini-2.5-flash:generateContent", hasAnthropicVersion: false), .gemini)
        XCTAssertEqual(APIDialect.of(path: "/v1/models/gemini-2.5-flash:generateContent", hasAnthropicVersion: false), .gemini, "Gemini's GA API")
        XCTAssertEqual(APIDialect.of(path: "/v1/models/gpt-4o-mini", hasAnthropicVersion: false), .openai, "OpenAI's model retrieval has no method")
        XCTAssertEqual(APIDialect.modelInPath("/v1/models/gemini-2.5-pro:countTokens"), "gemini-2.5-pro")
        XCTAssertNil(APIDialect.of(path: "/v2/chat", hasAnthropicVersion: false))
        XCTAssertNil(APIDialect.of(path: "/openaix", hasAnthropicVersion: false))
        XCTAssertNil(APIDialect.of(path: "/", hasAnthropicVersion: true))
    }

    func testModelsNamedInThePathAndWhatIsBilledAndCached() {
        XCTAssertEqual(APIDialect.modelInPath("/v1beta/models/gemini-2.5-flash:streamGenerateContent"), "gemini-2.5-flash")
        XCTAssertEqual(APIDialect.modelInPath("/openai/deployments/prod-4o/chat/completions"), "prod-4o")
        XCTAssertNil(APIDialect.modelInPath("/v1/chat/completions"))
        XCTAssertNil(APIDialect.modelInPath("/v1beta/models/:generateContent"))
        XCTAssertFalse(APIDialect.isBilled(path: "/v1/messages/count_tokens"))
        XCTAssertFalse(APIDialect.isBilled(path: "/v1beta/models/gemini-2.5-flash:countTokens"))
        XCTAssertTrue(APIDialect.isBilled(path: "/v1/messages"))
        XCTAssertEqual(APIDialect.endpoint("/v1/messages"), .generation)
        XCTAssertEqual(APIDialect.endpoint("/openai/deployments/d/chat/completions"), .generation)
        XCTAssertEqual(APIDialect.endpoint("/openai/deployments/d/embeddings"), .deterministic)
        XCTAssertEqual(APIDialect.endpoint("/v1beta/models/m:generateContent"), .generation)
        XCTAssertEqual(APIDialect.endpoint("/v1beta/models/m:embedContent"), .deterministic)
        XCTAssertEqual(APIDialect.endpoint("/v1beta/openai/chat/completions"), .generation)
        XCTAssertEqual(APIDialect.endpoint("/openai/v1/chat/completions"), .generation, "Azure's v1 API")
        XCTAssertNil(APIDialect.endpoint("/v1/messages/count_tokens"), "token counts pass through")
        XCTAssertNil(APIDialect.endpoint("/v1/messages/batches"))
        XCTAssertNil(APIDialect.endpoint("/openai/deployments/d/files"))
        XCTAssertTrue(APIDialect.isChatCompletions("/openai/deployments/d/chat/completions"))
        XCTAssertFalse(APIDialect.isChatCompletions("/v1/messages"))
    }

    func testTheUpstreamsKeyReplacesWhicheverCredentialTheClientSent() {
        let client = HTTPHeaders([("x-api-key", "sk-ant-client"), ("Authorization", "Bearer other"), ("api-key", "az"),
                                  ("x-goog-api-key", "g"), ("anthropic-beta", "prompt-caching-2024-07-31"), ("content-type", "application/json")])
        let out = HeaderPolicy.upstreamRequestHeaders(from: client, host: "api.anthropic.com",
                                                      credential: APIDialect.anthropic.authorization(key: "sk-ant-up"), dialect: .anthropic)
        XCTAssertEqual(out["x-api-key"], ["sk-ant-up"])
        XCTAssertEqual(out["authorization"], [])
        XCTAssertEqual(out["api-key"], [])
        XCTAssertEqual(out["x-goog-api-key"], [])
        XCTAssertEqual(out["anthropic-version"], [APIDialect.defaultAnthropicVersion], "added when the client sent none")
        XCTAssertEqual(out["anthropic-beta"], ["prompt-caching-2024-07-31"])
        var versioned = client
        versioned.add(name: "anthropic-version", value: "2024-01-01")
        XCTAssertEqual(HeaderPolicy.upstreamRequestHeaders(from: versioned, host: "h", credential: nil, dialect: .anthropic)["anthropic-version"],
                       ["2024-01-01"], "the client's own is kept")
        let passThrough = HeaderPolicy.upstreamRequestHeaders(from: client, host: "h", credential: nil, dialect: .anthropic)
        XCTAssertEqual(passThrough["x-api-key"], ["sk-ant-client"], "no upstream key: the client's passes")
        XCTAssertEqual(APIDialect.azure.authorization(key: "k").name, "api-key")
        XCTAssertEqual(APIDialect.gemini.authorization(key: "k").name, "x-goog-api-key")
        XCTAssertEqual(APIDialect.openai.authorization(key: "k").value, "Bearer k")
    }

    func testAnthropicUsageSumsTheCachesInputAndPricesEachKind() throws {
        let json = Array(#"{"id":"m","usage":{"input_tokens":25,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000,"output_tokens":12,"cache_creation":{"ephemeral_5m_input_tokens":60,"ephemeral_1h_input_tokens":40}}}"#.utf8)
        let u = try XCTUnwrap(ResponseInspector.usage(body: json, isStream: false))
        XCTAssertEqual(u, .init(promptTokens: 1125, completionTokens: 12, cachedTokens: 1000, cacheWriteTokens: 100, cacheWrite1hTokens: 40))
        let sonnet = try XCTUnwrap(PriceTable().price(of: "claude-sonnet-4-5-20250929"))
        // 25 fresh at $3, 1000 read at $0.30, 60 written (5 min) at $3.75, 40 written (1 h) at $6, 12 out at $15.
        let expected: Double = 25 * 3 + 1000 * 0.30 + 60 * 3.75 + 40 * 6 + 12 * 15
        XCTAssertEqual(sonnet.cost(u), expected / 1_000_000, accuracy: 1e-12)
        XCTAssertEqual(sonnet.promptCacheSavings(u), 1000 * (3 - 0.30) / 1_000_000, accuracy: 1e-12)
        XCTAssertEqual(PriceTable().price(of: "claude-opus-4-5-20251101")?.inputPerMTok, 5, "the longest family name wins")
        XCTAssertEqual(PriceTable().price(of: "claude-opus-4-1-20250805")?.inputPerMTok, 15)
        // Without a cached price, cached input is fresh input (never less than billed); writes are 1.25 x input.
        let plain = PriceTable.Price(inputPerMTok: 2, outputPerMTok: 4)
        XCTAssertEqual(plain.cost(.init(promptTokens: 100, completionTokens: 0, cachedTokens: 50, cacheWriteTokens: 50)), (50 * 2 + 50 * 2.5) / 1_000_000, accuracy: 1e-12)
        XCTAssertEqual(BudgetLedger.estimate(bodyBytes: 400, maxTokens: 0, price: plain, writesPromptCache: true), 100 * 4 / 1_000_000, accuracy: 1e-12,
                       "a request that may write the cache reserves its prompt at the dearest rate (1 h write: 2 x input)")
    }

    func testAnthropicStreamsMergeMessageStartAndMessageDelta() throws {
        let events = Array((FakeAnthropic.stream(deltas: 5, read: 7, write: 3)).joined().utf8)
        let u = try XCTUnwrap(ResponseInspector.usage(body: events, isStream: true))
        XCTAssertEqual(u, .init(promptTokens: 25 + 7 + 3, completionTokens: 5, cachedTokens: 7, cacheWriteTokens: 3))
        XCTAssertTrue(ResponseInspector.streamIsComplete(events))
        // A long stream: message_start is only in the head, message_delta only in the tail.
        let head = Array(events.prefix(400)), tail = Array(events.suffix(300))
        XCTAssertNil(ResponseInspector.usage(body: tail, isStream: true), "the tail alone does not say the input")
        XCTAssertEqual(ResponseInspector.usage(body: tail, head: head, isStream: true), u)
        // Cut before message_delta: one output token stated is not the usage.
        let cut = Array(FakeAnthropic.stream(deltas: 5).prefix(4).joined().utf8)
        XCTAssertNil(ResponseInspector.usage(body: cut, isStream: true))
        XCTAssertFalse(ResponseInspector.streamIsComplete(cut))
    }

    func testGeminiAndResponsesUsage() throws {
        let gemini = Array(#"{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":30,"thoughtsTokenCount":8,"cachedContentTokenCount":100,"totalTokenCount":158}}"#.utf8)
        XCTAssertEqual(ResponseInspector.usage(body: gemini, isStream: false), .init(promptTokens: 120, completionTokens: 38, cachedTokens: 100))
        let stream = Array(("data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}],\"usageMetadata\":{\"promptTokenCount\":120}}\r\n\r\n"
            + "data: " + String(decoding: gemini, as: UTF8.self) + "\r\n\r\n").utf8)
        XCTAssertEqual(ResponseInspector.usage(body: stream, isStream: true)?.completionTokens, 38)
        XCTAssertTrue(ResponseInspector.streamIsComplete(stream), "Gemini's stream ends with a finishReason")
        XCTAssertFalse(ResponseInspector.streamIsComplete(Array(stream.prefix(90))))
        let responses = Array(#"event: response.completed\#ndata: {"type":"response.completed","response":{"usage":{"input_tokens":300,"input_tokens_details":{"cached_tokens":256},"output_tokens":9}}}\#n\#n"#.utf8)
        XCTAssertEqual(ResponseInspector.usage(body: responses, isStream: true), .init(promptTokens: 300, completionTokens: 9, cachedTokens: 256))
        XCTAssertEqual(PriceTable().cost(model: "gpt-4o-mini", usage: .init(promptTokens: 300, completionTokens: 9, cachedTokens: 256)),
                       (44 * 0.15 + 256 * 0.075 + 9 * 0.60) / 1_000_000, accuracy: 1e-12)
    }

    func testCachingPerDialect() {
        let policy = CachePolicy()
        func decide(_ path: String, _ body: String) -> CachePolicy.Decision {
            policy.decide(method: "POST", path: path, body: CanonicalJSON.parse(Array(body.utf8)), cacheControl: [], ttlHeader: nil)
        }
        XCTAssertEqual(decide("/v1/messages", #"{"model":"claude-sonnet-4-5","temperature":0,"max_tokens":10,"messages":[]}"#), .lookupAndStore(ttl: 86_400))
        if case .lookupAndStore = decide("/v1/messages", #"{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[]}"#) { XCTFail("Anthropic samples at temperature 1 by default") }
        let gemini = "/v1beta/models/gemini-2.5-flash:generateContent"
        XCTAssertEqual(decide(gemini, #"{"contents":[],"generationConfig":{"temperature":0}}"#), .lookupAndStore(ttl: 86_400))
        if case .lookupAndStore = decide(gemini, #"{"contents":[],"temperature":0}"#) { XCTFail("Gemini's temperature is in generationConfig") }
        XCTAssertFalse(policy.certainlySampled(path: gemini, body: Array(#"{"contents":[]}"#.utf8)), "Gemini bodies are parsed, not sniffed")
        XCTAssertTrue(policy.certainlySampled(path: "/v1/messages", body: Array(#"{"messages":[]}"#.utf8)))
        XCTAssertEqual(decide("/openai/deployments/e/embeddings", #"{"input":"x"}"#), .lookupAndStore(ttl: 86_400))
        XCTAssertEqual(PricedRequest.read(Array(#"{"contents":[],"generationConfig":{"maxOutputTokens":256}}"#.utf8)),
                       .success(.init(model: nil, maxTokens: 256)))
    }

    func testAnswerChangingHeadersAreInTheKeyAndOnlyWhenSent() throws {
        let body = try XCTUnwrap(CanonicalJSON.parse(Array(#"{"model":"m","temperature":0}"#.utf8)))
        func material(_ headers: [(String, String)]) -> [UInt8]? {
            CanonicalRequest.keyMaterial(method: "POST", path: "/v1/messages", modelGroup: "m", scope: "s",
                                         vary: CanonicalRequest.varyingHeaders(of: HTTPHeaders(headers)), parsed: body)
        }
        let none = material([("content-type", "application/json")])
        XCTAssertEqual(none, CanonicalRequest.keyMaterial(method: "POST", path: "/v1/messages", modelGroup: "m", scope: "s", parsed: body),
                       "a request without them keeps the key it had before they counted")
        let v1 = material([("Anthropic-Version", "2023-06-01")])
        let beta = material([("anthropic-version", " 2023-06-01 "), ("anthropic-beta", "extended-cache-ttl-2025-04-11")])
        XCTAssertNotEqual(none, v1)
        XCTAssertNotEqual(v1, beta)
        XCTAssertEqual(v1, material([("anthropic-version", "2023-06-01 ")]), "names match in any case, values without their spaces")
        XCTAssertNotEqual(material([("OpenAI-Beta", "assistants=v2")]), none)
    }

    func testTheConfigurationNamesADialectPerUpstreamAndPricesCachedTokens() throws {
        let toml = """
        [upstreams.openai]
        url = "https://api.openai.com"
        [upstreams.claude]
        url = "https://api.anthropic.com"
        api = "anthropic"
        [prices."my-model"]
        input_per_mtok = 1
        output_per_mtok = 2
        cached_input_per_mtok = 0.1
        cache_write_per_mtok = 1.25
        """
        let c = try SidecarConfiguration.load(toml: toml, file: "t.toml", environment: [:], fileExists: { _ in true })
        XCTAssertEqual(c.upstream(named: "claude")?.api, .anthropic)
        XCTAssertEqual(c.upstream(named: "openai")?.api, .openai, "the default")
        XCTAssertEqual(c.prices["my-model"], PriceTable.Price(inputPerMTok: 1, outputPerMTok: 2, cachedInputPerMTok: 0.1, cacheWritePerMTok: 1.25))
        XCTAssertThrowsError(try SidecarConfiguration.load(toml: toml.replacingOccurrences(of: #"api = "anthropic""#, with: #"api = "claude""#), file: "t.toml", environment: [:], fileExists: { _ in true })) {
            XCTAssertTrue("\($0)".contains(#"upstreams.claude.api: "claude" is not an API dialect"#), "\($0)")
        }
        let mixed = toml + """

        [[models]]
        name = "smart"
        [[models.deployments]]
        upstream = "openai"
        model = "gpt-5"
        [[models.deployments]]
        upstream = "claude"
        model = "claude-sonnet-4-5"
        """
        XCTAssertThrowsError(try SidecarConfiguration.load(toml: mixed, file: "t.toml", environment: [:], fileExists: { _ in true })) {
            XCTAssertTrue("\($0)".contains("mixes api = \"openai\" (openai) and api = \"anthropic\" (claude)"), "\($0)")
        }
    }
}

/// The fake's Anthropic stream, from the test-support library's tables (kept here by value so the
/// core tests do not depend on the IO test support).
enum FakeAnthropic {
    static func stream(deltas: Int, read: Int = 0, write: Int = 0) -> [String] {
        func event(_ name: String, _ data: String) -> String { "event: \(name)\ndata: \(data)\n\n" }
        var out = [
            event("message_start", #"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","usage":{"input_tokens":25,"cache_creation_input_tokens":\#(write),"cache_read_input_tokens":\#(read),"output_tokens":1}}}"#),
            event("content_block_start", #"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
            event("ping", #"{"type": "ping"}"#),
        ]
        for i in 0..<deltas {
            out.append(event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"tok\#(i) with some padding text"}}"#))
        }
        out.append(event("content_block_stop", #"{"type":"content_block_stop","index":0}"#))
        out.append(event("message_delta", #"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":\#(deltas)}}"#))
        out.append(event("message_stop", #"{"type":"message_stop"}"#))
        return out
    }
}

extension DialectTests {
    func testTheResponseIDIsReadFromAnAnswersFirstBytes() {
        XCTAssertEqual(ResponseID.find(in: Array(#"{"id":"resp_67ccd2bed1ec8190","object":"response"}"#.utf8)), "resp_67ccd2bed1ec8190")
        XCTAssertEqual(ResponseID.find(in: Array("event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\" : \"resp_a-1\",\"status\":\"in_progress\"}}\n\n".utf8)), "resp_a-1")
        XCTAssertNil(ResponseID.find(in: Array(#"{"id":"msg_1","text":"\"id\":\"resp_fake\""}"#.utf8)), "an id inside a string is escaped")
        XCTAssertNil(ResponseID.find(in: Array(#"{"id":"resp_bad id"}"#.utf8)))
        XCTAssertNil(ResponseID.find(in: Array((String(repeating: " ", count: ResponseID.window) + #"{"id":"resp_late"}"#).utf8)), "only the first bytes are read")
    }
}

extension DialectTests {
    /// One Gemini key never reads another's answers: `x-goog-api-key` is a credential.
    func testEveryDialectsCredentialScopesTheCache() {
        func scope(_ headers: [(String, String)]) -> CacheScope { CacheScope.cache(of: HTTPHeaders(headers), shared: false) }
        XCTAssertNotEqual(scope([("x-goog-api-key", "a")]), scope([("x-goog-api-key", "b")]))
        XCTAssertNotEqual(scope([("x-api-key", "a")]), scope([("x-api-key", "b")]))
        XCTAssertEqual(scope([("Authorization", "Bearer a")]).fields, [.init(name: "authorization", value: "Bearer a")],
                       "the other credentials' scopes did not change")
    }
}
