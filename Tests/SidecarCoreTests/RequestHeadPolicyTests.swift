import NIOHTTP1
import SidecarCore
import XCTest

final class RequestHeadPolicyTests: XCTestCase {
    private func refusal(_ head: HTTPRequestHead, file: StaticString = #filePath, line: UInt = #line) -> ProxyError? {
        guard case .refuse(let error) = RequestHeadPolicy.check(head, maxHeaderFields: 128) else {
            XCTFail("routed", file: file, line: line)
            return nil
        }
        return error
    }

    func testTheResolvedTargetIsRoutedAndAnEscapeRefused() {
        let benign = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/./chat/completions")
        guard case .route(let routed) = RequestHeadPolicy.check(benign, maxHeaderFields: 128) else { return XCTFail("refused") }
        XCTAssertEqual(routed.uri, "/v1/chat/completions")
        let plain = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/models?x=1")
        XCTAssertEqual(RequestHeadPolicy.check(plain, maxHeaderFields: 128), .route(plain))
        let error = refusal(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/%2e%2e/stats"))
        XCTAssertEqual(error?.status, 400)
        XCTAssertEqual(error?.codeString, "path_traversal")
        XCTAssertEqual(error?.type, "invalid_request_error")
        XCTAssertTrue(error?.message.contains("/v1/%2e%2e/stats resolves to /stats") ?? false, error?.message ?? "")
    }

    func testConnectAndTraceAre405WithAllow() {
        for method in [HTTPMethod.CONNECT, .TRACE] {
            let error = refusal(HTTPRequestHead(version: .http1_1, method: method, uri: method == .CONNECT ? "api.openai.com:443" : "/v1/models"))
            XCTAssertEqual(error?.status, 405)
            XCTAssertEqual(error?.codeString, "method_not_allowed")
            XCTAssertEqual(error?.allow, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
            XCTAssertTrue(error?.message.hasPrefix("method \(method.rawValue) is not allowed on ") ?? false)
        }
        for method in [HTTPMethod.GET, .HEAD, .POST, .PUT, .PATCH, .DELETE, .OPTIONS] {
            let head = HTTPRequestHead(version: .http1_1, method: method, uri: "/v1/models")
            XCTAssertEqual(RequestHeadPolicy.check(head, maxHeaderFields: 128), .route(head), "\(method)")
        }
        XCTAssertNil(ProxyError.badRequest("x").allow)
    }

    func testHTTP10WithTransferEncodingIsInvalidFraming() {
        for te in ["chunked", "gzip, chunked", "identity"] {
            let error = refusal(HTTPRequestHead(version: .http1_0, method: .POST, uri: "/v1/chat/completions",
                                                headers: ["Transfer-Encoding": te, "Connection": "keep-alive"]))
            XCTAssertEqual(error?.status, 400)
            XCTAssertEqual(error?.codeString, "invalid_framing")
            XCTAssertEqual(error?.type, "invalid_request_error")
        }
        let http10 = HTTPRequestHead(version: .http1_0, method: .POST, uri: "/v1/chat/completions", headers: ["Content-Length": "2"])
        XCTAssertEqual(RequestHeadPolicy.check(http10, maxHeaderFields: 128), .route(http10))
        let chunked11 = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/chat/completions", headers: ["Transfer-Encoding": "chunked"])
        XCTAssertEqual(RequestHeadPolicy.check(chunked11, maxHeaderFields: 128), .route(chunked11))
    }

    func testMoreHeaderFieldsThanTheLimitAre431() {
        var headers = HTTPHeaders()
        for i in 0..<128 { headers.add(name: "x-\(i)", value: "1") }
        let atLimit = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/models", headers: headers)
        XCTAssertEqual(RequestHeadPolicy.check(atLimit, maxHeaderFields: 128), .route(atLimit))
        headers.add(name: "x-one-more", value: "1")
        let error = refusal(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/models", headers: headers))
        XCTAssertEqual(error?.status, 431)
        XCTAssertEqual(error?.codeString, "request_header_fields_too_large")
        XCTAssertEqual(error?.type, "invalid_request_error")
        XCTAssertEqual(error?.message, "the request has 129 header fields; server.max_header_fields is 128")
        // Repeated names count once each: it is field lines that cost.
        let repeated = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/models", headers: HTTPHeaders(Array(repeating: ("a", "b"), count: 40)))
        XCTAssertEqual(RequestHeadPolicy.check(repeated, maxHeaderFields: 39), .refuse(.headerFieldsTooLarge("the request has 40 header fields; server.max_header_fields is 39")))
    }
}
