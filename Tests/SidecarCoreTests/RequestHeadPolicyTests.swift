import NIOHTTP1
import SidecarCore
import XCTest

final class RequestHeadPolicyTests: XCTestCase {
    private func refusal(_ head: HTTPRequestHead, file: StaticString = #filePath, line: UInt = #line) -> ProxyError? {
        guard case .refuse(let error) = RequestHeadPolicy.check(head) else {
            XCTFail("routed", file: file, line: line)
            return nil
        }
        return error
    }

    func testTheResolvedTargetIsRoutedAndAnEscapeRefused() {
        let benign = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/./chat/completions")
        guard case .route(let routed) = RequestHeadPolicy.check(benign) else { return XCTFail("refused") }
        XCTAssertEqual(routed.uri, "/v1/chat/completions")
        let plain = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/models?x=1")
        XCTAssertEqual(RequestHeadPolicy.check(plain), .route(plain))
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
            XCTAssertEqual(RequestHeadPolicy.check(head), .route(head), "\(method)")
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
        XCTAssertEqual(RequestHeadPolicy.check(http10), .route(http10))
        let chunked11 = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/chat/completions", headers: ["Transfer-Encoding": "chunked"])
        XCTAssertEqual(RequestHeadPolicy.check(chunked11), .route(chunked11))
    }
}
