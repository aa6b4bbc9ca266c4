import NIOHTTP1
import SidecarCore
import XCTest

final class CacheScopeTests: XCTestCase {
    /// A stand-in for SHA-256 (SidecarCore has no hash): FNV-1a, four seeds, 32 bytes.
    private func digest(_ bytes: [UInt8]) -> [UInt8] {
        (0..<4).flatMap { seed -> [UInt8] in
            var h: UInt64 = 0xcbf2_9ce4_8422_2325 &+ UInt64(seed)
            for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            return (0..<8).map { UInt8(truncatingIfNeeded: h >> (8 * UInt64($0))) }
        }
    }

    private func name(_ headers: [(String, String)], shared: Bool = false) -> String {
        CacheScope.cache(of: HTTPHeaders(headers), shared: shared).name(digest: digest)
    }

    func testWithoutTenantHeadersTheMaterialIsWhatItWas() {
        let headers = HTTPHeaders([("Authorization", "Bearer k"), ("Content-Type", "application/json")])
        let legacy = Array("llm-sidecar-scope/1\u{0}authorization\u{0}Bearer k".utf8)
        XCTAssertEqual(CacheScope.cache(of: headers, shared: false).material, legacy)
        XCTAssertEqual(CacheScope.client(of: headers).material, legacy)
        XCTAssertEqual(CacheScope.cache(of: HTTPHeaders(), shared: false).material, Array("llm-sidecar-scope/1".utf8), "the anonymous scope")
        XCTAssertEqual(CacheScope.cache(of: headers, shared: true).name(digest: { _ in XCTFail("no hash"); return [] }), "shared")
    }

    func testOrganizationAndProjectArePartOfTheCacheScope() {
        let key = ("Authorization", "Bearer k")
        let none = name([key])
        let orgA = name([key, ("OpenAI-Organization", "org-A")])
        let orgB = name([key, ("OpenAI-Organization", "org-B")])
        let projectA = name([key, ("OpenAI-Project", "proj-A")])
        let both = name([key, ("OpenAI-Organization", "org-A"), ("OpenAI-Project", "proj-A")])
        XCTAssertEqual(Set([none, orgA, orgB, projectA, both]).count, 5, "each is its own scope")
        // An organization value is not a project value.
        XCTAssertNotEqual(name([key, ("OpenAI-Organization", "x")]), name([key, ("OpenAI-Project", "x")]))
        // Names match whatever their case; values are exact, but for the whitespace around them.
        XCTAssertEqual(name([key, ("openai-organization", "org-A")]), orgA)
        XCTAssertEqual(name([key, ("OPENAI-ORGANIZATION", " org-A\t")]), orgA)
        XCTAssertNotEqual(name([key, ("OpenAI-Organization", "org-a")]), orgA)
        XCTAssertNotEqual(name([key, ("OpenAI-Organization", "org-A, org-B")]), orgA)
        // Header order does not matter; the credential still does.
        XCTAssertEqual(name([("OpenAI-Project", "proj-A"), ("OpenAI-Organization", "org-A"), key]), both)
        XCTAssertNotEqual(name([("Authorization", "Bearer other"), ("OpenAI-Organization", "org-A")]), orgA)
    }

    func testSharedScopesAreSplitByTenantOnly() {
        let shared = name([("Authorization", "Bearer k")], shared: true)
        XCTAssertEqual(shared, "shared")
        let orgA = name([("Authorization", "Bearer k"), ("OpenAI-Organization", "org-A")], shared: true)
        XCTAssertTrue(orgA.hasPrefix("shared/"), orgA)
        XCTAssertEqual(orgA.count, "shared/".count + 32)
        XCTAssertEqual(name([("Authorization", "Bearer other"), ("OpenAI-Organization", "org-A")], shared: true), orgA, "keys still share")
        XCTAssertNotEqual(name([("OpenAI-Organization", "org-B")], shared: true), orgA)
    }

    func testTheClientForLimitsAndSpendIsTheCredentialAlone() {
        let a = CacheScope.client(of: HTTPHeaders([("Authorization", "Bearer k"), ("OpenAI-Organization", "org-A")]))
        let b = CacheScope.client(of: HTTPHeaders([("Authorization", "Bearer k"), ("OpenAI-Organization", "org-B"), ("OpenAI-Project", "p")]))
        XCTAssertEqual(a, b, "varying the organization is no way around a limit")
        XCTAssertEqual(a.fields, [CacheScope.Field(name: "authorization", value: "Bearer k")])
        for name in ["authorization", "api-key", "x-api-key"] {
            XCTAssertNotEqual(CacheScope.client(of: HTTPHeaders([(name, "k1")])), CacheScope.client(of: HTTPHeaders([(name, "k2")])), name)
        }
    }
}
