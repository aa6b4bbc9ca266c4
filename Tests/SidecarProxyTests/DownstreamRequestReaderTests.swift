import NIOCore
import NIOEmbedded
import NIOHTTP1
import SidecarCore
import XCTest

@testable import SidecarProxy

/// The client side's reader: the parts it hands the handler are those NIO's request decoder
/// produced before it (heads field for field, the same body bytes, the same ends), however the
/// bytes are split across reads; what it refuses, it refuses with the answer the client gets.
final class DownstreamRequestReaderTests: XCTestCase {
    /// A request as the handler sees it.
    struct Request: Equatable {
        var method: String
        var uri: String
        var version: HTTPVersion
        var fields: [String]
        var body: [UInt8]
        var ended: Bool
    }

    static let pipelined = [
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer sk-a\r\nContent-Type: application/json\r\n"
            + "Content-Length: 27\r\n\r\n{\"model\":\"m\",\"messages\":[]}",
        "POST /v1/embeddings HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-Empty:\r\n\r\n"
            + "5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n",
        "GET /v1/models?limit=2 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
        "DELETE /v1/files/f-1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        "HEAD /healthz HTTP/1.0\r\nHost: h\r\n\r\n",  // last: NIO's decoder reads nothing after an HTTP/1.0 request
    ].joined()

    /// Feeds `chunks` one read at a time, as the handler does.
    private func read(_ chunks: [ArraySlice<UInt8>], maxFieldCount: Int = 128) -> (requests: [Request], error: ProxyError?) {
        var reader = DownstreamRequestReader(maxFieldCount: maxFieldCount)
        var requests: [Request] = []
        for chunk in chunks {
            reader.append(ByteBuffer(bytes: chunk))
            do {
                while let part = try reader.next() { Self.collect(part, into: &requests) }
            } catch {
                return (requests, error.refusal)
            }
        }
        return (requests, nil)
    }

    static func collect(_ part: HTTPServerRequestPart, into requests: inout [Request]) {
        switch part {
        case .head(let head):
            requests.append(Request(method: head.method.rawValue, uri: head.uri, version: head.version,
                                    fields: head.headers.map { "\($0.name): \($0.value)" }, body: [], ended: false))
        case .body(let buffer):
            requests[requests.count - 1].body += buffer.readableBytesView
        case .end:
            requests[requests.count - 1].ended = true
        }
    }

    /// What NIO's llhttp-based decoder makes of the same bytes (trailers aside: the reader does
    /// not hand them on, the proxy never forwarded them).
    private func nio(_ bytes: [UInt8]) throws -> [Request] {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(HTTPRequestDecoder()))
        defer { _ = try? channel.finish() }
        try channel.writeInbound(ByteBuffer(bytes: bytes))
        var requests: [Request] = []
        while let part = try channel.readInbound(as: HTTPServerRequestPart.self) { Self.collect(part, into: &requests) }
        return requests
    }

    func testAgreesWithNIOsDecoderFieldForField() throws {
        let bytes = Array(Self.pipelined.utf8)
        let ours = read([bytes[...]])
        XCTAssertNil(ours.error)
        XCTAssertEqual(ours.requests.count, 5)
        XCTAssertEqual(ours.requests, try nio(bytes))
        XCTAssertEqual(String(decoding: ours.requests[1].body, as: UTF8.self), "helloabcdefghijklmnopqrstuvwxyz")
        XCTAssertTrue(ours.requests.allSatisfy(\.ended))
    }

    func testEverySplitGivesTheSameRequests() {
        let bytes = Array(Self.pipelined.utf8)
        let whole = read([bytes[...]]).requests
        for cut in 1..<bytes.count {
            let split = read([bytes[..<cut], bytes[cut...]])
            XCTAssertNil(split.error, "cut at \(cut)")
            XCTAssertEqual(split.requests, whole, "cut at \(cut)")
        }
        let byteByByte = read(bytes.indices.map { bytes[$0...$0] })
        XCTAssertEqual(byteByByte.requests, whole)
    }

    func testBodyBytesAreSlicesOfTheReadNotCopies() throws {
        var reader = DownstreamRequestReader(maxFieldCount: 128)
        let input = ByteBuffer(string: "POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
        reader.append(input)
        guard case .head = try reader.next(), case .body(let body) = try reader.next() else { return XCTFail("head, then body") }
        let same = input.withUnsafeReadableBytes { whole in
            body.withUnsafeReadableBytes { $0.baseAddress == whole.baseAddress! + whole.count - 5 }
        }
        XCTAssertTrue(same, "the body part points into the buffer that was read")
        guard case .end = try reader.next() else { return XCTFail("end") }
        XCTAssertTrue(reader.isBetweenMessages)
    }

    func testInputEndingInsideARequestIsAnErrorAndBetweenRequestsIsNot() throws {
        var reader = DownstreamRequestReader(maxFieldCount: 128)
        reader.append(ByteBuffer(string: "GET /v1/models HTTP/1.1\r\nHost: h\r\n\r\n"))
        while try reader.next() != nil {}
        XCTAssertNoThrow(try reader.inputClosed())

        for partial in ["POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhel", "POST /v1/x HTTP/1.1\r\nHo"] {
            var reader = DownstreamRequestReader(maxFieldCount: 128)
            reader.append(ByteBuffer(string: partial))
            while try reader.next() != nil {}
            XCTAssertThrowsError(try reader.inputClosed(), partial) { error in
                XCTAssertEqual((error as? DownstreamFramingError)?.refusal.status, 400)
            }
        }
    }

    func testARefusalComesAfterTheRequestsBeforeItAndNothingAfter() {
        let good = "GET /v1/models HTTP/1.1\r\nHost: h\r\n\r\n"
        let bad = "POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        let bytes = Array((good + bad + good).utf8)
        let result = read([bytes[...]])
        XCTAssertEqual(result.requests.map(\.uri), ["/v1/models"])
        XCTAssertEqual(result.error?.status, 400)
        XCTAssertEqual(result.error?.message.hasPrefix("malformed HTTP request:"), true, "\(String(describing: result.error?.message))")
    }

    func testRefusalsNameTheirCause() {
        let cases: [(String, Int, String)] = [
            ("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, "transfer_coding_not_implemented"),
            // RFC 9112 §6.3: a request whose last coding is not chunked cannot be framed: 400.
            ("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "bad_request"),
            ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "http_version_not_supported"),
            ("POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "invalid_framing"),
            ("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 405, "method_not_allowed"),
            ("TRACE * HTTP/1.1\r\nHost: h\r\n\r\n", 405, "method_not_allowed"),
            ("GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400, "bad_request"),
            ("GET / HTTP/1.1\r\nHost: h\rX\r\n\r\n", 400, "bad_request"),
            ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\n", 400, "bad_request"),
            ("GET / HTTP/1.1\r\nHost: h\r\n" + String(repeating: "x: 1\r\n", count: 40) + "\r\n", 431, "request_header_fields_too_large"),
            ("GET / HTTP/1.1\r\nHost: h\r\nx: " + String(repeating: "a", count: 90_000) + "\r\n\r\n", 431, "request_header_fields_too_large"),
        ]
        for (request, status, code) in cases {
            let result = read([Array(request.utf8)[...]], maxFieldCount: 32)
            XCTAssertEqual(result.error?.status, status, request.prefix(60).debugDescription)
            XCTAssertEqual(result.error?.codeString, code, request.prefix(60).debugDescription)
            // Only the chunk-size overflow has a head that passed; no request was completed.
            XCTAssertEqual(result.requests.filter(\.ended).count, 0)
        }
    }
}
