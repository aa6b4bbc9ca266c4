import SidecarCore
import XCTest

/// A chat-completions request as the official Python client sends it: 18 field lines.
let typicalChatRequest = """
POST /v1/chat/completions HTTP/1.1
Host: api.openai.com
Accept-Encoding: gzip, deflate
Connection: keep-alive
Accept: application/json
Content-Type: application/json
User-Agent: OpenAI/Python 1.109.1
X-Stainless-Lang: python
X-Stainless-Package-Version: 1.109.1
X-Stainless-OS: Linux
X-Stainless-Arch: x64
X-Stainless-Runtime: CPython
X-Stainless-Runtime-Version: 3.12.3
Authorization: Bearer sk-proj-0123456789abcdefghijklmnopqrstuvwxyz
X-Stainless-Async: false
x-stainless-retry-count: 0
x-stainless-read-timeout: 600
x-sidecar-cache-ttl: 3600
Content-Length: 98


"""

final class HTTPRequestHeadScannerTests: XCTestCase {
    func testTypicalChatRequest() throws {
        let bytes = (typicalChatRequest + "{\"model\":\"gpt-4o-mini\"}").crlf
        let h = try XCTUnwrap(requestHead(typicalChatRequest + "{}"))
        XCTAssertEqual(text(bytes, h.method), "POST")
        XCTAssertEqual(text(bytes, h.target), "/v1/chat/completions")
        XCTAssertEqual(h.version, .http1_1)
        XCTAssertEqual(h.fieldCount, 18)
        XCTAssertEqual(text(bytes, h.host), "api.openai.com")
        XCTAssertEqual(h.contentLength, 98)
        XCTAssertEqual(h.framing, .contentLength(98))
        XCTAssertEqual(h.connection, .keepAlive)
        XCTAssertTrue(h.isPersistent)
        XCTAssertEqual(text(bytes, h.authorization), "Bearer sk-proj-0123456789abcdefghijklmnopqrstuvwxyz")
        XCTAssertEqual(h.sidecarFields.count, 1)
        XCTAssertEqual(text(bytes, h.sidecarFields.first?.name), "x-sidecar-cache-ttl")
        XCTAssertEqual(text(bytes, h.sidecarFields.first?.value), "3600")
        XCTAssertEqual(String(decoding: bytes[h.length...], as: UTF8.self), "{\"model\":\"gpt-4o-mini\"}")
        XCTAssertEqual(fields(bytes, h).count, 18)
        XCTAssertEqual(fields(bytes, h).first?.0, "Host")
    }

    func testAcceptsTheFieldsWeRead() throws {
        let r = """
        GET /v1/models?limit=5&x={a|b} HTTP/1.1
        host: [::1]:8080
        EXPECT: 100-Continue
        api-key: k1
        X-Api-Key: k2
        Cache-Control: no-cache
        cache-control:  max-age=0 ,  no-store\t
        OpenAI-Organization: org-1
        OpenAI-Project: proj_1
        X-Sidecar-Cache: bypass
        x-sidecar-cache-ttl:
        Connection: , Upgrade,,foo ,close
        X-Opaque: caf\u{e9}\there


        """
        let bytes = r.crlf
        let h = try XCTUnwrap(requestHead(r))
        XCTAssertEqual(text(bytes, h.target), "/v1/models?limit=5&x={a|b}")
        XCTAssertEqual(text(bytes, h.host), "[::1]:8080")
        XCTAssertTrue(h.expectsContinue)
        XCTAssertEqual(text(bytes, h.apiKey), "k1")
        XCTAssertEqual(text(bytes, h.xAPIKey), "k2")
        XCTAssertEqual(text(bytes, h.cacheControl), "no-cache")
        XCTAssertEqual(h.cacheControlLines, 2)
        XCTAssertEqual(fields(bytes, h)[5].1, "max-age=0 ,  no-store")
        XCTAssertEqual(text(bytes, h.openAIOrganization), "org-1")
        XCTAssertEqual(text(bytes, h.openAIProject), "proj_1")
        XCTAssertEqual(h.sidecarFields.map { text(bytes, $0.value) }, ["bypass", ""])
        XCTAssertEqual(h.connection, [.upgrade, .other, .close])
        XCTAssertFalse(h.isPersistent)
        XCTAssertEqual(fields(bytes, h).last?.1, "caf\u{e9}\there")
        XCTAssertEqual(h.framing, .contentLength(0))
        XCTAssertNil(h.authorization)
    }

    func testAcceptsHTTP10WithoutHostAndKeepAliveRules() throws {
        let h = try XCTUnwrap(requestHead("GET / HTTP/1.0\n\n"))
        XCTAssertEqual(h.version, .http1_0)
        XCTAssertNil(h.host)
        XCTAssertFalse(h.isPersistent)
        XCTAssertTrue(try XCTUnwrap(requestHead("GET / HTTP/1.0\nConnection: Keep-Alive\n\n")).isPersistent)
        XCTAssertTrue(try XCTUnwrap(requestHead("GET / HTTP/1.1\nHost: h\n\n")).isPersistent)
    }

    func testAcceptsOptionsStarAndEmptyHostAndChunked() throws {
        XCTAssertNotNil(requestHead("OPTIONS * HTTP/1.1\nHost:\n\n"))
        let h = try XCTUnwrap(requestHead("POST /x HTTP/1.1\nHost: h\nTransfer-Encoding: CHUNKED\n\n"))
        XCTAssertTrue(h.isChunked)
        XCTAssertEqual(h.framing, .chunked)
        XCTAssertEqual(try XCTUnwrap(requestHead("POST / HTTP/1.1\nHost: h\nContent-Length: 007\n\n")).contentLength, 7)
        XCTAssertTrue(try XCTUnwrap(requestHead("HEAD / HTTP/1.1\nHost: h\n\n")).isHEAD)
        XCTAssertFalse(try XCTUnwrap(requestHead("head / HTTP/1.1\nHost: h\n\n")).isHEAD, "methods are case-sensitive")
    }

    func testNeedsMoreUntilTheBlankLine() {
        XCTAssertEqual(scanRequest("GET / HTTP/1.1\nHost: h\n".crlf), .needMore)
        XCTAssertEqual(scanRequest(Array("GET / HTTP/1.1\r\nHost: h\r\n\r".utf8)), .needMore)
        XCTAssertEqual(scanRequest([]), .needMore)
    }

    // MARK: Refusals, one per rule

    func testRefusesBareLF() {
        assertRequestRefused(bytes: Array("GET / HTTP/1.1\nHost: h\r\n\r\n".utf8), .bareLF, status: 400)
        assertRequestRefused(bytes: Array("GET / HTTP/1.1\r\nHost: h\n\r\n".utf8), .bareLF)
        assertRequestRefused(bytes: Array("GET / HTTP/1.1\r\nHost: h\r\n\n".utf8), .bareLF)
    }

    func testRefusesBareCR() {
        assertRequestRefused(bytes: Array("GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n".utf8), .bareCR, status: 400)
        assertRequestRefused(bytes: Array("GET /\r HTTP/1.1\r\nHost: h\r\n\r\n".utf8), .bareCR)
        assertRequestRefused(bytes: Array("GET / HTTP/1.1\r\r\nHost: h\r\n\r\n".utf8), .bareCR)
        assertRequestRefused(bytes: Array("GET / HTTP/1.1\r\nHo\rst: h\r\n\r\n".utf8), .bareCR)
    }

    func testRefusesObsFold() {
        assertRequestRefused("GET / HTTP/1.1\nHost: h\nX: a\n b\n\n", .obsFold, status: 400)
        assertRequestRefused("GET / HTTP/1.1\nHost: h\nX: a\n\tb\n\n", .obsFold)
        assertRequestRefused("GET / HTTP/1.1\n Host: h\n\n", .obsFold)
    }

    func testRefusesWhitespaceBeforeColon() {
        assertRequestRefused("GET / HTTP/1.1\nHost : h\n\n", .whitespaceBeforeColon, status: 400)
        assertRequestRefused("GET / HTTP/1.1\nHost: h\nContent-Length\t: 0\n\n", .whitespaceBeforeColon)
    }

    func testRefusesEmptyFieldName() {
        assertRequestRefused("GET / HTTP/1.1\nHost: h\n: x\n\n", .emptyFieldName, status: 400)
    }

    func testRefusesInvalidFieldNames() {
        assertRequestRefused("GET / HTTP/1.1\nHost: h\nX(y): z\n\n", .invalidFieldName)
        assertRequestRefused("GET / HTTP/1.1\nHost: h\nX\u{e9}: z\n\n", .invalidFieldName)
        assertRequestRefused("GET / HTTP/1.1\nHost: h\nno colon here\n\n", .whitespaceBeforeColon)
        assertRequestRefused("GET / HTTP/1.1\nHost: h\nnocolon\n\n", .missingColon)
    }

    func testRefusesControlCharactersButNotHT() {
        for ctl: UInt8 in [0x00, 0x01, 0x08, 0x0B, 0x1F, 0x7F] {
            var b = "GET / HTTP/1.1\r\nHost: h\r\nX: a".utf8.map { $0 }
            b += [ctl] + "b\r\n\r\n".utf8
            assertRequestRefused(bytes: b, .invalidFieldValue, status: 400)
        }
        XCTAssertNotNil(requestHead("GET / HTTP/1.1\nHost: h\nX: a\tb\n\n"))
    }

    func testRefusesInvalidMethods() {
        assertRequestRefused("G(T / HTTP/1.1\nHost: h\n\n", .invalidMethod, status: 400)
        assertRequestRefused(" GET / HTTP/1.1\nHost: h\n\n", .invalidMethod)
        assertRequestRefused("GET\n\n", .invalidMethod)
    }

    func testAcceptsAbsoluteFormAsRFC9112Requires() {
        // §3.2.2: a server must accept absolute-form; the router decides what it names (a 404).
        for target in ["http://example.com/", "https://example.com/v1/models?x=1", "h2c+x-1.y://a"] {
            let request = "GET \(target) HTTP/1.1\nHost: h\n\n"
            let head = requestHead(request)
            XCTAssertEqual(head.flatMap { text(request.crlf, $0.target) }, target)
        }
    }

    func testRefusesTargetsThatAreNotOriginOrAbsoluteForm() {
        assertRequestRefused("GET example.com/ HTTP/1.1\nHost: h\n\n", .unsupportedTargetForm, status: 400)
        assertRequestRefused("GET 1http://example.com/ HTTP/1.1\nHost: h\n\n", .unsupportedTargetForm)
        assertRequestRefused("GET http:/example.com/ HTTP/1.1\nHost: h\n\n", .unsupportedTargetForm)
        assertRequestRefused("GET http:// HTTP/1.1\nHost: h\n\n", .unsupportedTargetForm)
        assertRequestRefused("GET ht_tp://x/ HTTP/1.1\nHost: h\n\n", .unsupportedTargetForm)
        assertRequestRefused("CONNECT example.com:443 HTTP/1.1\nHost: h\n\n", .unsupportedTargetForm)
        assertRequestRefused("GET * HTTP/1.1\nHost: h\n\n", .unsupportedTargetForm)
        assertRequestRefused("options * HTTP/1.1\nHost: h\n\n", .unsupportedTargetForm)
        assertRequestRefused("OPTIONS *x HTTP/1.1\nHost: h\n\n", .unsupportedTargetForm)
        assertRequestRefused("GET /a#frag HTTP/1.1\nHost: h\n\n", .invalidTarget)
        assertRequestRefused("GET /caf\u{e9} HTTP/1.1\nHost: h\n\n", .invalidTarget)
        assertRequestRefused("GET  / HTTP/1.1\nHost: h\n\n", .invalidTarget)
        assertRequestRefused("GET / x HTTP/1.1\nHost: h\n\n", .invalidVersion)
    }

    func testRefusesVersionsOtherThan10And11() {
        assertRequestRefused("GET / HTTP/1.2\nHost: h\n\n", .unsupportedVersion, status: 505)
        assertRequestRefused("GET / HTTP/2.0\nHost: h\n\n", .unsupportedVersion)
        assertRequestRefused("GET / http/1.1\nHost: h\n\n", .invalidVersion, status: 400)
        assertRequestRefused("GET / HTTP/1.10\nHost: h\n\n", .invalidVersion)
        assertRequestRefused("GET / HTTP/1.1 \nHost: h\n\n", .invalidVersion)
        assertRequestRefused("GET / HTTP/1\nHost: h\n\n", .invalidVersion)
    }

    func testRefusesEmptyLinesBeforeTheRequestLine() {
        assertRequestRefused("\nGET / HTTP/1.1\nHost: h\n\n", .emptyStartLine, status: 400)
    }

    func testRefusesMissingRepeatedOrInvalidHost() {
        assertRequestRefused("GET / HTTP/1.1\nX: y\n\n", .missingHost, status: 400)
        assertRequestRefused("GET / HTTP/1.1\nHost: a\nhost: a\n\n", .repeatedHost, status: 400)
        assertRequestRefused("GET / HTTP/1.0\nHost: a\nHost: b\n\n", .repeatedHost)
        for bad in ["user@h", "h/x", "a b", "h?", "h#"] {
            assertRequestRefused("GET / HTTP/1.1\nHost: \(bad)\n\n", .invalidHost)
        }
    }

    func testRefusesMalformedContentLength() {
        for bad in ["-1", "+5", "5a", "0x5", "5 5", "1.0", "99999999999999999999", ""] {
            assertRequestRefused("POST / HTTP/1.1\nHost: h\nContent-Length: \(bad)\n\n", .invalidContentLength, status: 400)
        }
    }

    /// Decision: lists of equal values and repeated equal lines are refused like differing ones.
    func testRefusesContentLengthListsAndRepeats() {
        assertRequestRefused("POST / HTTP/1.1\nHost: h\nContent-Length: 5, 5\n\n", .invalidContentLength)
        assertRequestRefused("POST / HTTP/1.1\nHost: h\nContent-Length: 5\nContent-Length: 5\n\n", .repeatedContentLength)
        assertRequestRefused("POST / HTTP/1.1\nHost: h\nContent-Length: 5\nContent-Length: 6\n\n", .repeatedContentLength, status: 400)
    }

    /// Decision: RFC 9110 allows trailing HT (OWS) and empty list elements, but llhttp frames
    /// `chunked<HT>` and `chunked,` differently (and refuses `5<HT>`), so they are refused.
    func testRefusesFramingFieldsThatLLHTTPReadsDifferently() {
        assertRequestRefused("POST / HTTP/1.1\nHost: h\nContent-Length: 5\t\n\n", .invalidContentLength)
        assertRequestRefused("POST / HTTP/1.1\nHost: h\nContent-Length: 5 \t \n\n", .invalidContentLength)
        for value in ["chunked\t", "chunked,", "chunked , ", ",chunked", "gzip,,chunked"] {
            assertRequestRefused("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: \(value)\n\n", .invalidTransferEncoding)
        }
        assertResponseRefused("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\t\n\n", .invalidTransferEncoding)
        assertResponseRefused("HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked,\n\n", .invalidTransferEncoding)
        XCTAssertNotNil(requestHead("POST / HTTP/1.1\nHost: h\nContent-Length:\t5  \n\n"))
        XCTAssertNotNil(requestHead("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: \tchunked \n\n"))
        XCTAssertNotNil(responseHead("HTTP/1.1 200 OK\nTransfer-Encoding: gzip\t,\tchunked\n\n"))
    }

    func testRefusesContentLengthWithTransferEncoding() {
        assertRequestRefused("POST / HTTP/1.1\nHost: h\nContent-Length: 5\nTransfer-Encoding: chunked\n\n",
                             .contentLengthWithTransferEncoding, status: 400)
        assertRequestRefused("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\nContent-Length: 5\n\n",
                             .contentLengthWithTransferEncoding)
    }

    func testRefusesTransferEncodingInHTTP10() {
        assertRequestRefused("POST / HTTP/1.0\nTransfer-Encoding: chunked\n\n", .transferEncodingInHTTP10, status: 400)
    }

    func testRefusesTransferEncodingOtherThanChunked() {
        let cases: [(String, HTTPFramingError, Int)] = [
            ("gzip", .chunkedNotFinal, 400),
            ("chunked, gzip", .chunkedNotFinal, 400),
            ("identity", .chunkedNotFinal, 400),
            ("gzip, chunked", .unsupportedTransferCoding, 501),
            ("chunked, chunked", .invalidTransferEncoding, 400),
            ("chunked;x=1", .invalidTransferEncoding, 400),
            ("chunked x", .invalidTransferEncoding, 400),
            ("\"chunked\"", .invalidTransferEncoding, 400),
            ("", .invalidTransferEncoding, 400),
            (" , ", .invalidTransferEncoding, 400),
        ]
        for (value, error, status) in cases {
            assertRequestRefused("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: \(value)\n\n", error, status: status)
        }
        assertRequestRefused("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: gzip\nTransfer-Encoding: chunked\n\n", .unsupportedTransferCoding)
        assertRequestRefused("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\nTransfer-Encoding: chunked\n\n", .invalidTransferEncoding)
    }

    func testRefusesRepeatedCredentialsAndOpenAIFields() {
        for name in ["Authorization", "api-key", "x-api-key", "Expect", "OpenAI-Organization", "OpenAI-Project"] {
            assertRequestRefused("GET / HTTP/1.1\nHost: h\n\(name): a\n\(name.uppercased()): a\n\n", .repeatedField, status: 400)
        }
    }

    func testRefusesConnectionElementsThatAreNotTokens() {
        assertRequestRefused("GET / HTTP/1.1\nHost: h\nConnection: close, \"x\"\n\n", .invalidConnection, status: 400)
    }

    func testRefusesHeadsOverTheSizeLimitWith431() {
        let r = "GET / HTTP/1.1\nHost: h\nX: \(String(repeating: "a", count: 100))\n\n".crlf
        XCTAssertEqual(scanRequest(r, limits: HTTPHeadLimits(maxHeadBytes: r.count)), scanRequest(r))
        assertRequestRefused(bytes: r, .headTooLarge, status: 431, limits: HTTPHeadLimits(maxHeadBytes: r.count - 1))
        // Refused as soon as the limit is reached, without waiting for the rest.
        assertRequestRefused(bytes: Array(r[0..<60]), .headTooLarge, limits: HTTPHeadLimits(maxHeadBytes: 60))
        XCTAssertEqual(scanRequest(Array(r[0..<59]), limits: HTTPHeadLimits(maxHeadBytes: 60)), .needMore)
    }

    func testRefusesTooManyFieldsWith431() {
        let lines = (0..<10).map { "X-\($0): v\n" }.joined()
        let r = "GET / HTTP/1.1\nHost: h\n\(lines)\n"
        XCTAssertNotNil(requestHead(r))
        XCTAssertEqual(scanRequest(r.crlf, limits: HTTPHeadLimits(maxFieldCount: 11)), scanRequest(r.crlf))
        assertRequestRefused(r, .tooManyFields, status: 431, limits: HTTPHeadLimits(maxFieldCount: 10))
    }

    func testErrorsAreStickyAndHeadsRepeat() throws {
        var scanner = HTTPRequestHeadScanner()
        let bad = "GET / HTTP/1.1\nHost : h\n\n".crlf
        func error(_ bytes: [UInt8]) -> HTTPFramingError? {
            bytes.withUnsafeBytes { b in
                do throws(HTTPFramingError) { _ = try scanner.scan(b); return nil } catch { return error }
            }
        }
        XCTAssertEqual(error(bad), .whitespaceBeforeColon)
        XCTAssertEqual(error("GET / HTTP/1.1\nHost: h\n\n".crlf), .whitespaceBeforeColon)
        var ok = HTTPRequestHeadScanner()
        let good = "GET / HTTP/1.1\nHost: h\n\nGET /next".crlf
        let first = try good.withUnsafeBytes { try ok.scan($0) }
        let again = try good.withUnsafeBytes { try ok.scan($0) }
        XCTAssertEqual(first, again)
        XCTAssertEqual(first?.length, 27)
    }

    func testErrorsCarryStatusAndReason() {
        XCTAssertEqual(HTTPFramingError.headTooLarge.description, "431 header section too large")
        XCTAssertEqual(HTTPFramingError.obsFold.status, 400)
        XCTAssertNotEqual(HTTPFramingError.bareCR, HTTPFramingError.bareLF)
    }
}
