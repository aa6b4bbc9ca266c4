import SidecarCore
import XCTest

final class TargetPathTests: XCTestCase {
    func testTargetsWithoutDotSegmentsAreUnchanged() {
        for target in ["/v1/chat/completions", "/v1", "/v1/", "/v1/models?limit=5", "/healthz", "/metrics", "/", "/v1//chat",
                       "/v1/files/file-abc/content", "/v1/chat%2fcompletions", "/v1/a\\b", "/v1/...", "/v1/.well-known",
                       "/v1/..foo", "/v1/foo..", "/v1/%2e%2e%2e", "/v1/%252e%252e/x", "/v1/;..", "/v1/models?x=/../../metrics",
                       "*", "api.openai.com:443", "http://example.com/v1/../metrics"] {
            XCTAssertEqual(TargetPath.check(target), .unchanged, target)
        }
    }

    /// RFC 3986 §5.4 examples of remove_dot_segments, on paths under /v1.
    func testRemoveDotSegmentsAsRFC3986() {
        let cases: [(String, String)] = [
            ("/v1/./chat/completions", "/v1/chat/completions"),
            ("/v1/chat/./completions", "/v1/chat/completions"),
            ("/v1/chat/../chat/completions", "/v1/chat/completions"),
            ("/v1/a/b/c/./../../g", "/v1/a/g"),
            ("/v1/a/b/..", "/v1/a/"),
            ("/v1/a/b/.", "/v1/a/b/"),
            ("/v1/a/b/../", "/v1/a/"),
            ("/v1/.", "/v1/"),
            ("/v1/./", "/v1/"),
            ("/v1/a/..", "/v1/"),
            ("/v1/a//../b", "/v1/a/b"),
            ("/./v1/models", "/v1/models"),
            ("/other/../v1/models", "/v1/models"),
            ("/v1/a/../../v1/models", "/v1/models"),
        ]
        for (target, expected) in cases {
            XCTAssertEqual(TargetPath.check(target), .normalised(expected), target)
        }
    }

    func testTheQueryIsKeptAsSent() {
        XCTAssertEqual(TargetPath.check("/v1/./models?after=a/../b&x=%2e%2e"), .normalised("/v1/models?after=a/../b&x=%2e%2e"))
        XCTAssertEqual(TargetPath.check("/v1/x/..?"), .normalised("/v1/?"))
        XCTAssertEqual(TargetPath.check("/v1/../metrics?x=1"), .escapes("/metrics"))
    }

    func testTargetsThatLeaveV1AreRefused() {
        let cases: [(String, String)] = [
            ("/v1/../metrics", "/metrics"),
            ("/v1/%2e%2e/stats", "/stats"),
            ("/v1/%2E%2E/stats", "/stats"),
            ("/v1/.%2e/stats", "/stats"),
            ("/v1/%2e./stats", "/stats"),
            ("/v1/..%2fhealthz", "/healthz"),
            ("/v1/..%2Fhealthz", "/healthz"),
            ("/v1/%2e%2e%2fhealthz", "/healthz"),
            ("/v1%2f..%2freadyz", "/readyz"),
            ("/v1/chat/completions/../../../stats", "/stats"),
            ("/v1/..\\metrics", "/metrics"),
            ("/v1\\..\\metrics", "/metrics"),
            ("/v1/..;/metrics", "/metrics"),
            ("/v1/..;jsessionid=1/metrics", "/metrics"),
            ("/v1/../../other/path", "/other/path"),
            ("/v1/../../../../etc/passwd", "/etc/passwd"),
            ("/v1/..", "/"),
            ("/v1/../", "/"),
            ("/v1/%2e%2e", "/"),
            ("/..", "/"),
            ("/v1/../v1x", "/v1x"),
            ("/v1/../V1/models", "/V1/models"),
            ("/./healthz", "/healthz"),
            ("/healthz/.", "/healthz/"),
            ("/metrics/..", "/"),
            ("/v1/x#/../../metrics", "/metrics"),
            ("/v1/..//metrics", "//metrics"),
        ]
        for (target, resolved) in cases {
            XCTAssertEqual(TargetPath.check(target), .escapes(resolved), target)
        }
    }

    func testUnderV1() {
        XCTAssertTrue(TargetPath.isUnderV1("/v1"))
        XCTAssertTrue(TargetPath.isUnderV1("/v1/"))
        XCTAssertTrue(TargetPath.isUnderV1("/v1/chat"))
        XCTAssertFalse(TargetPath.isUnderV1("/v1x"))
        XCTAssertFalse(TargetPath.isUnderV1("/v2/chat"))
        XCTAssertFalse(TargetPath.isUnderV1("/"))
    }
}
