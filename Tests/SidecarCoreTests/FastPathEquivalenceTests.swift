import NIOHTTP1
@testable import SidecarCore
import XCTest

/// The request path's one-pass readers against the general (slower) readings they replaced, on
/// generated inputs: same answers field for field (issue 10: fewer passes, same behaviour).
final class FastPathEquivalenceTests: XCTestCase {
    typealias Seeded = SplitMix64  // seeded: a failure names an input that can be replayed

    static let names = ["Authorization", "authorization", "AUTHORIZATION", "api-key", "Api-Key", "x-api-key", "X-Api-Key",
                        "x-goog-api-key", "Connection", "connection", "OpenAI-Organization", "openai-project", "Content-Type",
                        "x-other", "authorizatio", "x-api-keys"]
    static let values = ["Bearer sk-1", " Bearer sk-2 ", "\tk\t", "", "  ", "a, b", "close", "Close", "keep-alive", "Keep-Alive, close",
                         "keep-alive, keep-alive", " , close ,", "upgrade, x-hop", "é, ü", "k\u{301}", " \u{301}x"]

    func headers(_ rng: inout Seeded) -> HTTPHeaders {
        var h = HTTPHeaders()
        for _ in 0..<Int.random(in: 0...5, using: &rng) {
            h.add(name: Self.names.randomElement(using: &rng)!, value: Self.values.randomElement(using: &rng)!)
        }
        return h
    }

    /// The credential as it was read before the one-pass reader (NIO's canonical form per name).
    func referenceCredential(_ headers: HTTPHeaders) -> [CacheScope.Field] {
        var fields: [CacheScope.Field] = []
        for name in CacheScope.credentialHeaders {
            for value in headers[canonicalForm: name] { fields.append(CacheScope.Field(name: name, value: String(value))) }
        }
        return fields
    }

    func testClientScopeConnectionTokensAndKeepAliveAgreeWithNIOsCanonicalForm() {
        var rng = Seeded(seed: 10)
        for i in 0..<5000 {
            let h = headers(&rng)
            XCTAssertEqual(CacheScope.client(of: h).fields, referenceCredential(h), "case \(i): \(h)")
            for shared in [false, true] {
                var expected = shared ? [] : referenceCredential(h)
                for name in CacheScope.tenantHeaders {
                    for value in h[name] {
                        let ows: (Character) -> Bool = { $0 == " " || $0 == "\t" }
                        let trimmed = value.firstIndex { !ows($0) }.map { String(value[$0...value.lastIndex { !ows($0) }!]) } ?? ""
                        expected.append(CacheScope.Field(name: name, value: trimmed))
                    }
                }
                XCTAssertEqual(CacheScope.cache(of: h, shared: shared), CacheScope(fields: expected, shared: shared), "case \(i): \(h)")
            }
            let tokens = h[canonicalForm: "connection"].map { $0.trimmingSpaces() }.filter { !$0.isEmpty }
            XCTAssertEqual(HeaderPolicy.connectionTokens(h), tokens, "case \(i): \(h)")
            for version in [HTTPVersion.http1_1, .http1_0] {
                XCTAssertEqual(HeaderPolicy.isKeepAlive(h, version: version), HTTPRequestHead(version: version, method: .GET, uri: "/", headers: h).isKeepAlive, "case \(i) \(version): \(h)")
            }
        }
    }

    func testDialectOfAPathAgreesWithPrefixReading() {
        // The reading before byte compares: string prefixes, `/v1x` under nothing.
        func under(_ p: String, _ prefix: String) -> Bool { p == prefix || (p.hasPrefix(prefix) && p.utf8.dropFirst(prefix.utf8.count).first == UInt8(ascii: "/")) }
        func reference(_ p: String, _ anthropic: Bool) -> APIDialect? {
            if p.hasPrefix("/v1beta/models/") || (p.hasPrefix("/v1/models/") && p.dropFirst("/v1/models/".count).contains(":")) { return .gemini }
            if under(p, "/v1") { return under(p, "/v1/messages") || anthropic ? .anthropic : .openai }
            if under(p, "/openai") { return .azure }
            if under(p, "/v1beta") { return .gemini }
            return nil
        }
        let parts = ["/v1", "/v1beta", "/openai", "/models", "/messages", "/", "x", ":gen", "/chat/completions", "é", "/v1x"]
        var rng = Seeded(seed: 11)
        for i in 0..<5000 {
            let p = (0..<Int.random(in: 0...4, using: &rng)).map { _ in parts.randomElement(using: &rng)! }.joined()
            let anthropic = Bool.random(using: &rng)
            XCTAssertEqual(APIDialect.of(path: p, hasAnthropicVersion: anthropic), reference(p, anthropic), "case \(i): \(p)")
            XCTAssertEqual(APIDialect.of(path: p[...], hasAnthropicVersion: anthropic), reference(p, anthropic), "case \(i): \(p)")
        }
    }

    func testIntegersReadInPlaceAgreeWithInt64() {
        var rng = Seeded(seed: 12)
        let alphabet = Array("0123456789+-.e ".utf8)
        var inputs = ["", "+", "-", "0", "-0", "+7", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
                      "-9223372036854775809", "12.0", "1e3", " 1", "00012"].map { Array($0.utf8) }
        for _ in 0..<5000 {
            inputs.append((0..<Int.random(in: 0...21, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! })
        }
        for bytes in inputs {
            XCTAssertEqual(ResponseInspector.integer(bytes[...]), Int64(String(decoding: bytes, as: UTF8.self)), String(decoding: bytes, as: UTF8.self))
        }
    }
}
