import Foundation
import SidecarCore
import XCTest

final class CanonicalJSONTests: XCTestCase {
    func canon(_ s: String) -> String? { CanonicalJSON.canonicalize(Array(s.utf8)).map { String(decoding: $0, as: UTF8.self) } }

    func testExamples() {
        XCTAssertEqual(canon(#" { "b" : [1, 2.0, 3e0, -0, 0.50, 1E+2, 12345678901234567890123] , "a":"x\u00e9\/" } "#),
                       #"{"a":"xé/","b":[1,2,3,0,5e-1,100,12345678901234567890123]}"#)
        XCTAssertEqual(canon(#"{"s":"line\nquote\"tab\tnul\u0000"}"#), #"{"s":"line\u000aquote\"tab\u0009nul\u0000"}"#)
        XCTAssertEqual(canon("\"e\u{301}\""), "\"\u{e9}\"", "strings are compared in NFC")
        XCTAssertEqual(canon(#"{"\ud83d\ude00":1}"#), "{\"😀\":1}")
        XCTAssertEqual(canon("[1e-7, 0.0000001, 1.5e300]"), "[1e-7,1e-7,15e299]")
    }

    func testNonCanonicalInputIsRefused() {
        for bad in ["", "{", "[1,]", "{\"a\":1,}", "01", "1.", ".5", "+1", "NaN", "\"\\x\"", "\"\u{1}\"", "{\"a\":1,\"a\":2}",
                    "\"\\ud800\"", "\"\\udc00\"", "tru", "1 2", "{\"a\" 1}", "1e", "1e1234567890"] {
            XCTAssertNil(CanonicalJSON.canonicalize(Array(bad.utf8)), "accepted \(bad.debugDescription)")
        }
        XCTAssertNil(CanonicalJSON.canonicalize([0x22, 0xFF, 0x22]), "invalid UTF-8")
        let deep = String(repeating: "[", count: 300) + String(repeating: "]", count: 300)
        XCTAssertNil(CanonicalJSON.canonicalize(Array(deep.utf8)))
    }

    // MARK: properties

    /// Random JSON values, and random ways of writing each one.
    struct Gen {
        var rng: SplitMix64
        mutating func int(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }

        mutating func value(depth: Int = 0) -> CanonicalJSON.Value {
            switch int(depth > 3 ? 4 : 6) {
            case 0: return .null
            case 1: return .bool(int(2) == 0)
            case 2: return .number(["0", "1", "-3", "5e-1", "25e-2", "7", "123456789012345678901", "1e-9"][int(8)])
            case 3: return .string(["", "hi", "é", "line\nbreak", "q\"uote", "😀", "tab\t"][int(7)])
            case 4: return .array((0..<int(4)).map { _ in value(depth: depth + 1) })
            default:
                var keys = Set<String>()
                for _ in 0..<int(5) { keys.insert(["model", "temperature", "seed", "messages", "a", "b", "é", "z9"][int(8)]) }
                let members = keys.map { (key: $0, value: value(depth: depth + 1)) }.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
                return .object(members)
            }
        }

        /// Writes `v` with random whitespace, key order, number spelling and string escapes.
        mutating func spell(_ v: CanonicalJSON.Value) -> String {
            let ws = ["", " ", "\n", "\t", "  \r\n"]
            func w(_ g: inout Gen) -> String { ws[g.int(ws.count)] }
            switch v {
            case .null: return "null"
            case .bool(let b): return b ? "true" : "false"
            case .number(let n): return respell(n)
            case .string(let s): return respellString(s)
            case .array(let items):
                var g = self
                let inner = items.map { w(&g) + g.spell($0) + w(&g) }.joined(separator: ",")
                self = g
                return "[" + inner + "]"
            case .object(let members):
                var g = self
                var shuffled = members
                shuffled.shuffle(using: &g.rng)
                let inner = shuffled.map { w(&g) + g.respellString($0.key) + w(&g) + ":" + w(&g) + g.spell($0.value) + w(&g) }.joined(separator: ",")
                self = g
                return "{" + inner + "}"
            }
        }

        mutating func respell(_ n: String) -> String {
            // Same decimal value, other spellings.
            let options: [String: [String]] = [
                "0": ["0", "-0", "0.0", "0e10", "0.000E-3"], "1": ["1", "1.0", "1e0", "10e-1", "0.1E1"],
                "-3": ["-3", "-3.00", "-30e-1", "-0.3e1"], "5e-1": ["0.5", "5e-1", "0.50", "50E-2"],
                "25e-2": ["0.25", "25e-2", "2.5e-1"], "7": ["7", "7.000", "700e-2"],
                "123456789012345678901": ["123456789012345678901", "1.23456789012345678901e20"], "1e-9": ["1e-9", "0.000000001", "10e-10"],
            ]
            let list = options[n] ?? [n]
            return list[int(list.count)]
        }

        mutating func respellString(_ s: String) -> String {
            var out = "\""
            for u in s.unicodeScalars {
                if u == "\"" { out += "\\\""; continue }
                if u == "\\" { out += "\\\\"; continue }
                if u.value < 0x20 { out += String(format: "\\u%04X", u.value); continue }
                if u == "é", int(2) == 0 { out += "e\u{301}"; continue }   // NFD spelling
                if u.value < 0x80, u.properties.isAlphabetic, int(4) == 0 { out += String(format: "\\u%04x", u.value); continue }
                if u.value > 0xFFFF, int(2) == 0 {                            // surrogate-pair escape
                    let v = u.value - 0x10000
                    out += String(format: "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF)); continue
                }
                out.unicodeScalars.append(u)
            }
            return out + "\""
        }
    }

    func testEverySpellingOfAValueHasTheSameCanonicalBytes() {
        var g = Gen(rng: SplitMix64(seed: 42))
        for _ in 0..<500 {
            let v = g.value()
            var expected: [UInt8] = []
            CanonicalJSON.write(v, to: &expected)
            for _ in 0..<4 {
                let text = g.spell(v)
                XCTAssertEqual(CanonicalJSON.canonicalize(Array(text.utf8)), expected, text)
            }
        }
    }

    func testAnyChangeOfAValueChangesTheCanonicalBytes() {
        var g = Gen(rng: SplitMix64(seed: 7))
        var seen: [[UInt8]: CanonicalJSON.Value] = [:]
        for _ in 0..<3000 {
            let v = g.value()
            let bytes = CanonicalJSON.canonicalize(Array(g.spell(v).utf8))!
            if let earlier = seen[bytes] { XCTAssertEqual(earlier, v, "two different values share canonical bytes") }
            seen[bytes] = v
        }
        XCTAssertGreaterThan(seen.count, 500)
    }
}

final class CanonicalRequestTests: XCTestCase {
    func key(_ body: String, scope: String = "s1", path: String = "/v1/chat/completions") -> [UInt8]? {
        CanonicalRequest.keyMaterial(method: "POST", path: path, modelGroup: "gpt-4o-mini", scope: scope, body: Array(body.utf8))?.bytes
    }

    func testSameMeaningSameKeyAndEveryParameterCounts() throws {
        let a = try XCTUnwrap(key(#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#))
        XCTAssertEqual(a, key(#"{ "messages" : [ { "content":"hi", "role":"user" } ], "temperature": 0.0, "model":"gpt-4o-mini" }"#))
        XCTAssertEqual(a, key(#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"hi"}],"user":"u-42","metadata":{"x":"y"},"stream_options":{"include_usage":true}}"#),
                       "user, metadata and stream_options cannot change the answer")
        XCTAssertNotEqual(a, key(#"{"model":"gpt-4o-mini","temperature":0.1,"messages":[{"role":"user","content":"hi"}]}"#))
        XCTAssertNotEqual(a, key(#"{"model":"gpt-4o-mini","temperature":0,"seed":1,"messages":[{"role":"user","content":"hi"}]}"#))
        XCTAssertNotEqual(a, key(#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"hi!"}]}"#))
        XCTAssertNotEqual(a, key(#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"hi"}],"x_unknown":1}"#),
                          "unknown parameters count")
        XCTAssertNotEqual(a, key(#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#, scope: "s2"),
                          "another credential never shares entries")
        XCTAssertNotEqual(a, key(#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#, path: "/v1/completions"))
        XCTAssertTrue(String(decoding: a, as: UTF8.self).hasPrefix("llm-sidecar-key/2\nPOST\n/v1/chat/completions\ngpt-4o-mini\ns1\n"))
        XCTAssertNil(key("not json"))
        XCTAssertNil(key("[1,2]"), "only JSON objects are request bodies")
    }
}

final class CachePolicyTests: XCTestCase {
    func decide(_ policy: CachePolicy, _ body: String, path: String = "/v1/chat/completions",
                cacheControl: [String] = [], ttl: String? = nil, method: String = "POST") -> CachePolicy.Decision {
        policy.decide(method: method, path: path, body: CanonicalJSON.parse(Array(body.utf8)), cacheControl: cacheControl, ttlHeader: ttl)
    }

    func testDeterministicMode() {
        let p = CachePolicy()
        XCTAssertEqual(decide(p, #"{"temperature":0}"#), .lookupAndStore(ttl: 86_400))
        XCTAssertEqual(decide(p, #"{"temperature":0.7,"seed":3}"#), .lookupAndStore(ttl: 86_400))
        XCTAssertEqual(decide(p, #"{"model":"x"}"#), .bypass(reason: "sampled request (temperature is not 0 and there is no seed)"),
                       "an omitted temperature is not 0")
        XCTAssertEqual(decide(p, #"{"temperature":1,"seed":null}"#), .bypass(reason: "sampled request (temperature is not 0 and there is no seed)"))
        XCTAssertEqual(decide(p, #"{"input":"x"}"#, path: "/v1/embeddings"), .lookupAndStore(ttl: 86_400))
        XCTAssertEqual(decide(p, #"{}"#, path: "/v1/files"), .bypass(reason: "/v1/files is not a cacheable endpoint"))
        XCTAssertEqual(decide(p, "", path: "/v1/models", method: "GET"), .bypass(reason: "only POST requests are cached"))
    }

    func testModesAndHeaders() {
        XCTAssertEqual(decide(CachePolicy(mode: .all), #"{"temperature":1}"#), .lookupAndStore(ttl: 86_400))
        XCTAssertEqual(decide(CachePolicy(mode: .off), #"{"temperature":0}"#), .bypass(reason: "cache.mode is off"))
        let p = CachePolicy()
        XCTAssertEqual(decide(p, #"{"temperature":0}"#, cacheControl: ["no-cache"]), .storeOnly(ttl: 86_400))
        XCTAssertEqual(decide(p, #"{"temperature":0}"#, cacheControl: ["max-age=0, No-Store"]), .bypass(reason: "Cache-Control: no-store"))
        XCTAssertEqual(decide(p, #"{"temperature":0}"#, ttl: "60"), .lookupAndStore(ttl: 60))
        XCTAssertEqual(decide(p, #"{"temperature":0}"#, ttl: "soon"), .bypass(reason: "x-sidecar-cache-ttl is not a number of seconds"))
        XCTAssertEqual(decide(p, "not json", ttl: nil), .bypass(reason: "the body is not a canonical JSON object"))
    }
}
