import Foundation
import NIOHTTP1
import SidecarCore
import XCTest

final class HeaderPolicyTests: XCTestCase {
    func testUpstreamRequestHeadersDropHopByHopAndRewriteHostAndKey() {
        let client = HTTPHeaders([
            ("Host", "127.0.0.1:8080"), ("Authorization", "Bearer client"), ("Connection", "close, X-Secret-Hop"),
            ("X-Secret-Hop", "1"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Trailer", "x"),
            ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("Proxy-Authorization", "x"), ("Proxy-Foo", "y"),
            ("Content-Type", "application/json"), ("OpenAI-Organization", "org-1"), ("Accept-Encoding", "gzip, deflate, br"),
        ])
        let out = HeaderPolicy.upstreamRequestHeaders(from: client, host: "api.openai.com", credential: ("authorization", "Bearer up"))
        XCTAssertEqual(out.map { $0.name.lowercased() }.sorted(), ["accept-encoding", "authorization", "content-type", "host", "openai-organization"])
        XCTAssertEqual(out["accept-encoding"], ["identity"], "answers must stay readable: usage, stream ends, cached bytes")
        XCTAssertEqual(out["host"], ["api.openai.com"])
        XCTAssertEqual(out["authorization"], ["Bearer up"])
        let passThrough = HeaderPolicy.upstreamRequestHeaders(from: client, host: "h", credential: nil)
        XCTAssertEqual(passThrough["authorization"], ["Bearer client"])
    }

    func testResponseHeadersAndKeepAlive() {
        let upstream = HTTPHeaders([("Connection", "keep-alive"), ("Keep-Alive", "timeout=15, max=100"), ("Content-Length", "5"), ("x-request-id", "r")])
        XCTAssertEqual(HeaderPolicy.downstreamResponseHeaders(from: upstream).map(\.name), ["Content-Length", "x-request-id"])
        XCTAssertEqual(HeaderPolicy.keepAliveTimeoutSeconds(upstream), 15)
        XCTAssertNil(HeaderPolicy.keepAliveTimeoutSeconds(HTTPHeaders([("Keep-Alive", "max=5")])))
        XCTAssertTrue(HeaderPolicy.isEncoded(HTTPHeaders([("Content-Encoding", "gzip")])))
        XCTAssertTrue(HeaderPolicy.isEncoded(HTTPHeaders([("content-encoding", "identity"), ("content-encoding", "br")])))
        XCTAssertFalse(HeaderPolicy.isEncoded(HTTPHeaders([("Content-Encoding", "Identity")])))
        XCTAssertFalse(HeaderPolicy.isEncoded(upstream))
    }
}

final class ProxyErrorTests: XCTestCase {
    func body(_ e: ProxyError) throws -> [String: String] {
        let obj = try JSONSerialization.jsonObject(with: Data(e.jsonBody.utf8)) as! [String: Any]
        return obj["error"] as! [String: String]
    }

    func testOneMappingToStatusAndOpenAIShapedBody() throws {
        let cases: [(ProxyError, Int, String, String)] = [
            (.badRequest("x"), 400, "invalid_request_error", "bad_request"),
            (.notFound(path: "/x"), 404, "invalid_request_error", "not_found"),
            (.payloadTooLarge(limit: 10), 413, "invalid_request_error", "request_too_large"),
            (.upstreamTLS("bad cert"), 502, "upstream_error", "upstream_tls_failed"),
            (.upstreamConnect("refused"), 502, "upstream_error", "upstream_connect_failed"),
            (.upstreamTimeout(.firstByte, after: "1s"), 504, "upstream_error", "upstream_first_byte_timeout"),
            (.upstreamTimeout(.poolQueue, after: "1s"), 503, "server_error", "pool_queue_timeout"),
            (.poolExhausted("busy"), 503, "server_error", "pool_exhausted"),
            (.shuttingDown, 503, "server_error", "shutting_down"),
        ]
        for (error, status, type, code) in cases {
            XCTAssertEqual(error.status, status, "\(error)")
            let b = try body(error)
            XCTAssertEqual(b["type"], type)
            XCTAssertEqual(b["code"], code)
            XCTAssertEqual(b["message"], error.message)
        }
        XCTAssertEqual(ProxyError.poolExhausted("x").retryAfterSeconds, 1)
        XCTAssertNil(ProxyError.badRequest("x").retryAfterSeconds)
    }

    func testMessagesAreEscapedIntoValidJSON() throws {
        let tricky = ProxyError.badRequest("quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} é 😀")
        XCTAssertEqual(try body(tricky)["message"], tricky.message)
    }
}

final class ModelSnifferTests: XCTestCase {
    func testFindsTheTopLevelModelKey() {
        XCTAssertEqual(ModelSniffer.model(in: Array(#"{"model":"gpt-4o-mini","messages":[]}"#.utf8)), "gpt-4o-mini")
        XCTAssertEqual(ModelSniffer.model(in: Array("{\n  \"messages\": [{\"content\": \"the \\\"model\\\": \\\"x\\\" word\"}],\n  \"model\" : \"o3\"}".utf8)), "o3")
        XCTAssertNil(ModelSniffer.model(in: Array(#"{"input":"no model key"}"#.utf8)))
        XCTAssertNil(ModelSniffer.model(in: Array(#"{"model": 5}"#.utf8)))
        XCTAssertNil(ModelSniffer.model(in: Array(#"{"model":"unterminated"#.utf8)))
    }
}
