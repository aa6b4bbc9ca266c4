import NIOCore
import SidecarCore
import XCTest

final class HTTPHeadRewriterTests: XCTestCase {
    private func name(_ s: String) -> HTTPFieldName { HTTPFieldName(s)! }
    private func value(_ s: String) -> HTTPFieldValue { HTTPFieldValue(s)! }

    private func rewriteRequest(_ request: String, _ rewrite: HTTPHeadRewrite) throws -> String {
        let bytes = request.crlf
        let head = try XCTUnwrap(requestHead(request))
        let out = bytes.withUnsafeBytes { HTTPHeadRewriter.rewritten($0, request: head, rewrite) }
        XCTAssertLessThanOrEqual(out.count, rewrite.maximumLength(headLength: head.length))
        return String(decoding: out, as: UTF8.self).replacingOccurrences(of: "\r\n", with: "\n")
    }

    func testWithoutEditsTheHeadIsCopiedAsIs() throws {
        var keepAll = HTTPHeadRewrite()
        keepAll.dropsHopByHop = false
        let head = "GET /a HTTP/1.1\nHost: h\nConnection: keep-alive\nX:  spaced  \n\n"
        XCTAssertEqual(try rewriteRequest(head, keepAll), head)
    }

    func testDropsHopByHopAndTheFieldsConnectionNames() throws {
        let head = """
        POST /v1/chat/completions HTTP/1.1
        Host: localhost:8080
        Connection: keep-alive, X-Hop, content-length
        Keep-Alive: timeout=5
        Proxy-Connection: keep-alive
        Proxy-Authorization: Basic x
        TE: trailers
        Trailer: x
        Upgrade: h2c
        x-hop: 1
        Content-Length: 2
        Content-Type: application/json


        """
        XCTAssertEqual(try rewriteRequest(head, HTTPHeadRewrite()), """
        POST /v1/chat/completions HTTP/1.1
        Host: localhost:8080
        Content-Length: 2
        Content-Type: application/json


        """)
    }

    func testTransferEncodingGoesOnlyWhenAsked() throws {
        let head = "POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n"
        XCTAssertEqual(try rewriteRequest(head, HTTPHeadRewrite()), head)
        var rw = HTTPHeadRewrite()
        rw.dropsTransferEncoding = true
        rw.add(name("Content-Length"), value("42"))
        XCTAssertEqual(try rewriteRequest(head, rw), "POST / HTTP/1.1\nHost: h\nContent-Length: 42\n\n")
    }

    func testReplacesInPlaceAddsAndDrops() throws {
        let head = """
        POST /v1/chat/completions?x=1 HTTP/1.1
        Host: localhost:8080
        authorization: Bearer client
        X-Sidecar-Cache: bypass
        Accept: */*
        accept: text/plain
        User-Agent: test


        """
        var rw = HTTPHeadRewrite()
        rw.target = HTTPRequestTarget("/openai/deployments/d/chat/completions?api-version=2024-10-21")
        rw.replace(name("Host"), with: value("example.openai.azure.com"))
        rw.replace(name("Authorization"), with: value("Bearer upstream"))
        rw.replace(name("OpenAI-Organization"), with: value("org-9"))
        rw.replace(name("Accept"), with: value("application/json"))
        rw.drop(name("user-agent"))
        rw.dropsSidecarFields = true
        rw.add(name("x-request-id"), value("r1"))
        XCTAssertEqual(try rewriteRequest(head, rw), """
        POST /openai/deployments/d/chat/completions?api-version=2024-10-21 HTTP/1.1
        Host: example.openai.azure.com
        Authorization: Bearer upstream
        Accept: application/json
        OpenAI-Organization: org-9
        x-request-id: r1


        """)
    }

    func testRewritesResponsesIntoAByteBuffer() throws {
        let response = "HTTP/1.1 200 OK\nConnection: keep-alive\nKeep-Alive: timeout=15\nContent-Length: 5\n\nhello"
        let source = ByteBuffer(bytes: response.crlf)
        var scanner = HTTPResponseHeadScanner()
        let head = try XCTUnwrap(try scanner.scan(source))
        var rw = HTTPHeadRewrite()
        rw.add(name("x-sidecar-cache"), value("miss"))
        var out = ByteBuffer(string: "prefix|")
        let n = out.writeRewrittenHead(head, from: source, rw)
        XCTAssertEqual(String(buffer: out), "prefix|HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-sidecar-cache: miss\r\n\r\n")
        XCTAssertEqual(n, out.readableBytes - 7)
    }

    func testRequestScannerOverAByteBufferCountsFromTheReaderIndex() throws {
        var buffer = ByteBuffer(string: "junkGET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        buffer.moveReaderIndex(forwardBy: 4)
        var scanner = HTTPRequestHeadScanner()
        let head = try XCTUnwrap(try scanner.scan(buffer))
        XCTAssertEqual(buffer.getString(at: buffer.readerIndex + head.target.lowerBound, length: head.target.count), "/x")
        var out = ByteBuffer()
        var rw = HTTPHeadRewrite()
        rw.target = HTTPRequestTarget("/y")
        out.writeRewrittenHead(head, from: buffer, rw)
        XCTAssertEqual(String(buffer: out), "GET /y HTTP/1.1\r\nHost: h\r\n\r\n")
    }

    func testEditValuesCannotInjectLines() {
        XCTAssertNil(HTTPFieldValue("a\r\nX-Injected: 1"))
        XCTAssertNil(HTTPFieldValue("a\n"))
        XCTAssertNil(HTTPFieldValue(" padded"))
        XCTAssertNil(HTTPFieldName("Bad Name"))
        XCTAssertNil(HTTPFieldName(""))
        XCTAssertNil(HTTPRequestTarget("http://x/"))
        XCTAssertNil(HTTPRequestTarget("/a b"))
        XCTAssertNotNil(HTTPFieldValue(""))
    }
}
