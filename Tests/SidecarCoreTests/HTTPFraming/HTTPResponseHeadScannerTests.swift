import SidecarCore
import XCTest

/// A chat-completions response head as OpenAI sends it (behind Cloudflare).
let typicalChatResponse = """
HTTP/1.1 200 OK
Date: Tue, 02 Dec 2025 10:00:00 GMT
Content-Type: text/event-stream; charset=utf-8
Transfer-Encoding: chunked
Connection: keep-alive
access-control-expose-headers: X-Request-ID
openai-organization: user-abc
openai-processing-ms: 187
openai-version: 2020-10-01
x-ratelimit-limit-requests: 10000
x-ratelimit-remaining-requests: 9999
x-request-id: req_0123456789abcdef
cf-cache-status: DYNAMIC
Server: cloudflare


"""

final class HTTPResponseHeadScannerTests: XCTestCase {
    func testTypicalStreamingResponse() throws {
        let bytes = typicalChatResponse.crlf
        let h = try XCTUnwrap(responseHead(typicalChatResponse))
        XCTAssertEqual(h.status, 200)
        XCTAssertEqual(text(bytes, h.reason), "OK")
        XCTAssertEqual(h.version, .http1_1)
        XCTAssertEqual(h.kind, .final)
        XCTAssertTrue(h.isChunked)
        XCTAssertEqual(text(bytes, h.transferEncoding), "chunked")
        XCTAssertEqual(text(bytes, h.contentType), "text/event-stream; charset=utf-8")
        XCTAssertEqual(h.framing(requestIsHEAD: false), .chunked)
        XCTAssertTrue(h.isPersistent)
        XCTAssertEqual(h.fieldCount, 13)
        XCTAssertEqual(h.length, bytes.count)
        XCTAssertEqual(fields(bytes, h).last?.1, "cloudflare")
    }

    func testReasonPhrasesAndTheirAbsence() throws {
        let withSpace = "HTTP/1.1 404 \n\n"
        XCTAssertEqual(try XCTUnwrap(responseHead(withSpace)).reason.count, 0)
        let without = try XCTUnwrap(responseHead("HTTP/1.1 404\n\n"))
        XCTAssertEqual(without.status, 404)
        XCTAssertEqual(without.reason.count, 0)
        let long = "HTTP/1.0 503 Service \tUnavailable\n\n"
        XCTAssertEqual(text(long.crlf, try XCTUnwrap(responseHead(long)).reason), "Service \tUnavailable")
    }

    func testInterimAndSwitchingResponses() throws {
        XCTAssertEqual(try XCTUnwrap(responseHead("HTTP/1.1 100 Continue\n\n")).kind, .interim)
        let early = try XCTUnwrap(responseHead("HTTP/1.1 103 Early Hints\nLink: </a>; rel=preload\n\n"))
        XCTAssertEqual(early.kind, .interim)
        XCTAssertEqual(early.framing(requestIsHEAD: false), .contentLength(0))
        XCTAssertEqual(try XCTUnwrap(responseHead("HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\n\n")).kind,
                       .switchingProtocols)
    }

    func testFramingRules() throws {
        let cl = try XCTUnwrap(responseHead("HTTP/1.1 200 OK\nContent-Length: 12\n\n"))
        XCTAssertEqual(cl.framing(requestIsHEAD: false), .contentLength(12))
        XCTAssertEqual(cl.framing(requestIsHEAD: true), .contentLength(0))
        XCTAssertEqual(try XCTUnwrap(responseHead("HTTP/1.1 204 No Content\nContent-Length: 12\n\n")).framing(requestIsHEAD: false),
                       .contentLength(0))
        XCTAssertEqual(try XCTUnwrap(responseHead("HTTP/1.1 304 Not Modified\nContent-Length: 12\n\n")).framing(requestIsHEAD: false),
                       .contentLength(0))
        let close = try XCTUnwrap(responseHead("HTTP/1.1 200 OK\nConnection: close\n\n"))
        XCTAssertEqual(close.framing(requestIsHEAD: false), .untilClose)
        XCTAssertFalse(close.isPersistent)
        let gzip = try XCTUnwrap(responseHead("HTTP/1.1 200 OK\nTransfer-Encoding: gzip\nTransfer-Encoding: chunked\n\n"))
        XCTAssertEqual(gzip.framing(requestIsHEAD: false), .chunked)
        XCTAssertFalse(try XCTUnwrap(responseHead("HTTP/1.0 200 OK\n\n")).isPersistent)
    }

    func testRefusesBadStatusLines() {
        assertResponseRefused("HTTP/1.1 20 OK\n\n", .invalidStatusCode)
        assertResponseRefused("HTTP/1.1 2000 OK\n\n", .invalidStatusCode)
        assertResponseRefused("HTTP/1.1 099 Low\n\n", .invalidStatusCode)
        assertResponseRefused("HTTP/1.1 600 High\n\n", .invalidStatusCode)
        assertResponseRefused("HTTP/1.1 2x0 OK\n\n", .invalidStatusCode)
        assertResponseRefused("HTTP/1.1  200 OK\n\n", .invalidStatusCode)
        assertResponseRefused("HTTP/1.1\n\n", .invalidStatusLine)
        assertResponseRefused("HTTP/1.1 200 O\u{1}K\n\n", .invalidStatusLine)
        assertResponseRefused("HTTP/1.2 200 OK\n\n", .unsupportedVersion)
        assertResponseRefused("HTTP/1 200 OK\n\n", .invalidVersion)
        assertResponseRefused("ICY 200 OK\n\n", .invalidVersion)
        assertResponseRefused("\n\n", .emptyStartLine)
        XCTAssertEqual(scanResponse(Array("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n".utf8)), .refused(.bareCR))
        XCTAssertEqual(scanResponse(Array("HTTP/1.1 200 OK\nX: a\r\n\r\n".utf8)), .refused(.bareLF))
    }

    func testRefusesAmbiguousFraming() {
        assertResponseRefused("HTTP/1.1 200 OK\nContent-Length: 1\nTransfer-Encoding: chunked\n\n", .contentLengthWithTransferEncoding)
        assertResponseRefused("HTTP/1.1 200 OK\nContent-Length: 1, 1\n\n", .invalidContentLength)
        assertResponseRefused("HTTP/1.1 200 OK\nContent-Length: 1\nContent-Length: 2\n\n", .repeatedContentLength)
        assertResponseRefused("HTTP/1.1 200 OK\nTransfer-Encoding: chunked, gzip\n\n", .chunkedNotFinal)
        assertResponseRefused("HTTP/1.1 200 OK\nTransfer-Encoding: gzip\n\n", .chunkedNotFinal)
        assertResponseRefused("HTTP/1.1 200 OK\nTransfer-Encoding: chunked, chunked\n\n", .invalidTransferEncoding)
        assertResponseRefused("HTTP/1.0 200 OK\nTransfer-Encoding: chunked\n\n", .transferEncodingInHTTP10)
        assertResponseRefused("HTTP/1.1 200 OK\nX: a\n  folded\n\n", .obsFold)
    }

    func testLimitsApplyToResponses() {
        let lines = (0..<5).map { "X-\($0): v\n" }.joined()
        XCTAssertEqual(scanResponse("HTTP/1.1 200 OK\n\(lines)\n".crlf, limits: HTTPHeadLimits(maxFieldCount: 4)), .refused(.tooManyFields))
        XCTAssertEqual(scanResponse("HTTP/1.1 200 OK\n\(lines)\n".crlf, limits: HTTPHeadLimits(maxHeadBytes: 20)), .refused(.headTooLarge))
    }
}
