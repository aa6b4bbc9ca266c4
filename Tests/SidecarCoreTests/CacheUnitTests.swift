import SidecarCore
import XCTest

/// The cache's pure parts: the hot tier's LRU, the price table, reading answers, configuration.
final class CacheUnitTests: XCTestCase {
    func testLRUEvictsLeastRecentlyUsedByCostAgainstAShadowModel() {
        var rng = SystemRandomNumberGenerator()
        var lru = LRUCache<Int, Int>(capacity: 100)
        var shadow: [(key: Int, cost: Int)] = []  // most recent first
        for _ in 0..<20_000 {
            let key = Int.random(in: 0..<40, using: &rng)
            if Bool.random(using: &rng) {
                let got = lru.get(key)
                if let i = shadow.firstIndex(where: { $0.key == key }) {
                    XCTAssertEqual(got, key * 10)
                    shadow.insert(shadow.remove(at: i), at: 0)
                } else {
                    XCTAssertNil(got)
                }
            } else {
                let cost = Int.random(in: 1...30, using: &rng)
                lru.set(key, key * 10, cost: cost)
                shadow.removeAll { $0.key == key }
                while shadow.reduce(0, { $0 + $1.cost }) + cost > 100, !shadow.isEmpty { shadow.removeLast() }
                shadow.insert((key, cost), at: 0)
            }
            XCTAssertEqual(lru.keysByRecency, shadow.map(\.key))
            XCTAssertEqual(lru.totalCost, shadow.reduce(0) { $0 + $1.cost })
            XCTAssertLessThanOrEqual(lru.totalCost, 100)
        }
        XCTAssertFalse(lru.set(99, 0, cost: 101), "an entry larger than the whole tier is not stored")
        lru.removeAll(where: { k, _ in k % 2 == 0 })
        XCTAssertTrue(lru.keysByRecency.allSatisfy { $0 % 2 == 1 })
    }

    func testTopLevelScanAndTheSampledShortcutAgreeWithTheFullPolicy() {
        let body = Array(#" { "model" : "gpt-4o", "messages":[{"content":"a \" } , {","role":"user"}], "n":1.5e3,"x":{"y":[1,{"z":"}"}]} } "#.utf8)
        let m = JSONTopLevel.members(body)
        XCTAssertEqual(m?.map(\.key), ["model", "messages", "n", "x"])
        XCTAssertEqual(m.map { String(decoding: body[$0[0].value], as: UTF8.self) }, #""gpt-4o""#)
        XCTAssertEqual(m.map { String(decoding: body[$0[2].value], as: UTF8.self) }, "1.5e3")
        for bad in ["", "[]", "{", #"{"a":}"#, #"{"a" 1}"#, #"{"a":1,}"#, #"{"a":"x}"#, "{} x"] {
            XCTAssertNil(JSONTopLevel.members(Array(bad.utf8)), bad)
        }
        for z in ["0", "0.0", "-0", "0e5", "0.00E-3"] { XCTAssertTrue(JSONTopLevel.isZeroNumber(ArraySlice(z.utf8)), z) }
        for nz in ["1", "0.1", "1e-9", "null", "\"0\""] { XCTAssertFalse(JSONTopLevel.isZeroNumber(ArraySlice(nz.utf8)), nz) }

        let policy = CachePolicy()
        let temperatures = ["", #","temperature":0"#, #","temperature":0.0"#, #","temperature":0.7"#, #","temperature":null"#, #","temperature":"0""#]
        let seeds = ["", #","seed":1"#, #","seed":null"#]
        for t in temperatures {
            for seed in seeds {
                let text = #"{"model":"m","messages":[{"role":"user","content":"temperature 0"}]"# + t + seed + "}"
                let bytes = Array(text.utf8)
                let full = policy.decide(method: "POST", path: "/v1/chat/completions", body: CanonicalJSON.parse(bytes), cacheControl: [], ttlHeader: nil)
                if policy.certainlySampled(path: "/v1/chat/completions", body: bytes) {
                    guard case .bypass = full else { return XCTFail("the shortcut bypassed a cacheable request: \(text)") }
                }
                if case .bypass = full {} else { XCTAssertFalse(policy.certainlySampled(path: "/v1/chat/completions", body: bytes), text) }
            }
        }
        XCTAssertFalse(policy.certainlySampled(path: "/v1/embeddings", body: Array(#"{"input":"x"}"#.utf8)), "embeddings are always cacheable")
        XCTAssertTrue(policy.certainlySampled(path: "/v1/chat/completions", body: Array(#"{"model":"m","messages":[]}"#.utf8)))
    }

    func testPricesDefaultsFamiliesAndOverrides() {
        let table = PriceTable(overrides: ["gpt-4o-mini": .init(inputPerMTok: 1, outputPerMTok: 2), "my-model": .init(inputPerMTok: 3, outputPerMTok: 4)])
        XCTAssertEqual(table.price(of: "gpt-4o")?.inputPerMTok, 2.50)
        XCTAssertEqual(table.price(of: "gpt-4o-2024-08-06")?.inputPerMTok, 2.50, "a dated snapshot is priced as its family")
        XCTAssertEqual(table.price(of: "gpt-4o-mini-2024-07-18")?.inputPerMTok, 1, "the longest family wins, and overrides win")
        XCTAssertEqual(table.cost(model: "my-model", promptTokens: 1_000_000, completionTokens: 500_000), 5)
        XCTAssertNil(table.price(of: "unknown"))
        XCTAssertEqual(table.cost(model: "unknown", promptTokens: 10, completionTokens: 10), 0)
    }

    func testStreamCompletenessAndUsage() {
        let chunk = #"data: {"choices":[{"delta":{"content":"x"}}]}"# + "\n\n"
        XCTAssertTrue(ResponseInspector.streamIsComplete(Array((chunk + "data: [DONE]\n\n").utf8)))
        XCTAssertTrue(ResponseInspector.streamIsComplete(Array((chunk + "data: [DONE]\r\n\r\n").utf8)))
        XCTAssertFalse(ResponseInspector.streamIsComplete(Array(chunk.utf8)), "no final event")
        XCTAssertFalse(ResponseInspector.streamIsComplete(Array((chunk + "data: [DONE]").utf8)), "a final event never dispatched")
        XCTAssertFalse(ResponseInspector.streamIsComplete(Array("".utf8)))
        let responses = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\"}\n\n"
            + "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":3}}}\n\n"
        XCTAssertTrue(ResponseInspector.streamIsComplete(Array(responses.utf8)))
        XCTAssertEqual(ResponseInspector.usage(body: Array(responses.utf8), isStream: true), .init(promptTokens: 7, completionTokens: 3))
        let failed = "event: response.failed\ndata: {\"type\":\"response.failed\"}\n\n"
        XCTAssertFalse(ResponseInspector.streamIsComplete(Array(failed.utf8)))
        let withUsage = chunk + #"data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":5}}"# + "\n\ndata: [DONE]\n\n"
        XCTAssertEqual(ResponseInspector.usage(body: Array(withUsage.utf8), isStream: true), .init(promptTokens: 11, completionTokens: 5))
        XCTAssertEqual(ResponseInspector.usage(body: Array(#"{"usage":{"prompt_tokens":5,"total_tokens":5}}"#.utf8), isStream: false),
                       .init(promptTokens: 5, completionTokens: 0), "embeddings have no completion tokens")
        XCTAssertNil(ResponseInspector.usage(body: Array("{}".utf8), isStream: false))
    }

    func testCacheAndPricesConfiguration() throws {
        let toml = """
        [upstreams.openai]
        url = "https://api.openai.com"
        [cache]
        mode = "all"
        path = "/var/tmp/c.sqlite3"
        ttl_seconds = 60
        max_bytes = 1000000
        memory_bytes = 0
        scope = "shared"
        [prices."my-model"]
        input_per_mtok = 1.5
        output_per_mtok = 3
        """
        let c = try SidecarConfiguration.load(toml: toml, file: "c.toml", environment: [:], fileExists: { _ in true })
        XCTAssertEqual(c.cache.mode, .all)
        XCTAssertEqual(c.cache.path, "/var/tmp/c.sqlite3")
        XCTAssertEqual(c.cache.ttlSeconds, 60)
        XCTAssertEqual(c.cache.maxBytes, 1_000_000)
        XCTAssertEqual(c.cache.memoryBytes, 0)
        XCTAssertEqual(c.cache.scope, .shared)
        XCTAssertEqual(c.priceTable.price(of: "my-model"), .init(inputPerMTok: 1.5, outputPerMTok: 3))

        let minimal = try SidecarConfiguration.load(toml: "[upstreams.a]\nurl = \"http://x\"\n", file: nil,
                                                    environment: ["STATE_DIRECTORY": "/var/lib/llm-sidecar"], fileExists: { _ in true })
        XCTAssertEqual(minimal.cache.path, "/var/lib/llm-sidecar/cache.sqlite3", "systemd's StateDirectory")
        XCTAssertEqual(minimal.cache.mode, .deterministic)
        XCTAssertEqual(SidecarConfiguration.Cache.defaultPath(environment: ["HOME": "/home/u"]), "/home/u/.local/state/llm-sidecar/cache.sqlite3")

        func problem(_ extra: String) -> String {
            do {
                _ = try SidecarConfiguration.load(toml: "[upstreams.a]\nurl = \"http://x\"\n" + extra, file: "c.toml", environment: [:], fileExists: { _ in true })
                return "accepted"
            } catch { return error.description }
        }
        XCTAssertEqual(problem("[cache]\nmode = \"sometimes\"\n"), #"c.toml:4: cache.mode: must be "deterministic", "all" or "off""#)
        XCTAssertEqual(problem("[cache]\npath = \"relative.db\"\n"), "c.toml:4: cache.path: must be an absolute path")
        XCTAssertEqual(problem("[prices.x]\ninput_per_mtok = 1.0\n"),
                       "c.toml:3: prices.x: needs both input_per_mtok and output_per_mtok (US dollars per million tokens)")
        XCTAssertEqual(problem("[cache]\nttl = 5\n"), "c.toml:4: cache.ttl: unknown key (see etc/llm-sidecar/config.toml for every option)")
    }
}

/// The usage chunk a client did not ask for is removed, whatever the chunk boundaries.
final class SSEUsageFilterTests: XCTestCase {
    func testTheUsageChunkIsRemovedAcrossAnySplit() {
        let delta = #"data: {"choices":[{"index":0,"delta":{"content":"usage \"usage\""}}]}"# + "\n\n"
        let usage = #"data: {"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"# + "\n\n"
        let done = "data: [DONE]\n\n"
        let stream = Array((delta + delta + usage + done).utf8)
        let expected = Array((delta + delta + done).utf8)
        for _ in 0..<200 {
            var filter = SSEUsageFilter()
            var out: [UInt8] = []
            var i = 0
            while i < stream.count {
                let n = Int.random(in: 1...40)
                out += filter.feed(stream[i..<min(stream.count, i + n)])
                i += n
            }
            out += filter.finish()
            XCTAssertEqual(String(decoding: out, as: UTF8.self), String(decoding: expected, as: UTF8.self))
        }
        var crlf = SSEUsageFilter()
        let withCRLF = Array((usage.replacingOccurrences(of: "\n", with: "\r\n") + done).utf8)
        XCTAssertEqual(crlf.feed(withCRLF) + crlf.finish(), Array(done.utf8))
        var kept = SSEUsageFilter()
        let final = #"data: {"choices":[{"delta":{}}],"usage":{"prompt_tokens":1}}"# + "\n\n"
        XCTAssertEqual(kept.feed(Array(final.utf8)), Array(final.utf8), "a chunk with choices is not the usage-only chunk")
    }
}
