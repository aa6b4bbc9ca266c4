import NIOCore
import NIOEmbedded
import NIOHTTP1
import SidecarCore
import XCTest

/// `HTTPResponseWriter` writes what NIO's server pipeline (`HTTPResponseEncoder` fed by its
/// request decoder) would have written, byte for byte, for every status, method and framing the
/// proxy produces; only the objects on the way are gone.
final class HTTPResponseWriterTests: XCTestCase {
    /// What NIO's server pipeline writes for `parts` answering a `method` request.
    private func nio(_ parts: [HTTPServerResponsePart], answering method: HTTPMethod) throws -> [UInt8] {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: false)
        try channel.writeInbound(ByteBuffer(string: "\(method.rawValue) /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"))
        while try channel.readInbound(as: HTTPServerRequestPart.self) != nil {}
        for part in parts {
            channel.write(part, promise: nil)
        }
        channel.flush()
        var out: [UInt8] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { out += buffer.readableBytesView }
        return out
    }

    /// What `HTTPResponseWriter` writes for the same parts, used as `DownstreamHandler` uses it.
    private func ours(_ parts: [HTTPServerResponsePart], answering method: HTTPMethod) -> [UInt8] {
        var writer = HTTPResponseWriter()
        var out = ByteBuffer()
        let allocator = ByteBufferAllocator()
        for part in parts {
            switch part {
            case .head(let head):
                writer.writeHead(head, requestMethod: method, into: &out)
            case .body(.byteBuffer(var data)):
                guard writer.sendsBody else { continue }
                if var prefix = writer.chunkPrefix(count: data.readableBytes, allocator: allocator) {
                    out.writeBuffer(&prefix)
                    out.writeBuffer(&data)
                    var end = HTTPResponseWriter.chunkEnd
                    out.writeBuffer(&end)
                } else {
                    out.writeBuffer(&data)
                }
            case .body(.fileRegion):
                XCTFail("no file regions on the proxy path")
            case .end(let trailers):
                if var end = writer.end(trailers: trailers, allocator: allocator) { out.writeBuffer(&end) }
            }
        }
        return Array(out.readableBytesView)
    }

    private func assertSame(_ parts: [HTTPServerResponsePart], answering method: HTTPMethod = .POST,
                            file: StaticString = #filePath, line: UInt = #line) throws {
        let expected = try nio(parts, answering: method)
        let actual = ours(parts, answering: method)
        XCTAssertEqual(String(decoding: actual, as: UTF8.self), String(decoding: expected, as: UTF8.self), file: file, line: line)
    }

    private func head(_ status: HTTPResponseStatus, _ fields: [(String, String)], version: HTTPVersion = .http1_1) -> HTTPServerResponsePart {
        .head(HTTPResponseHead(version: version, status: status, headers: HTTPHeaders(fields)))
    }

    private func body(_ text: String) -> HTTPServerResponsePart { .body(.byteBuffer(ByteBuffer(string: text))) }

    func testFramingsAgreeWithNIOForEveryStatusAndMethod() throws {
        let statuses: [HTTPResponseStatus] = [.ok, .created, .noContent, .notModified, .badRequest, .tooManyRequests,
                                              .badGateway, .custom(code: 599, reasonPhrase: "Odd Reason")]
        let framings: [[(String, String)]] = [
            [("content-type", "application/json"), ("content-length", "11")],
            [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")],
            [("content-length", "11"), ("transfer-encoding", "chunked")],
            [("x-a", "1"), ("x-b", "two words")],
            [],
        ]
        for method in [HTTPMethod.GET, .POST, .HEAD, .DELETE] {
            for status in statuses {
                for fields in framings {
                    for version in [HTTPVersion.http1_1, .http1_0] {
                        let hasLength = fields.contains { $0.0 == "content-length" }
                        let bodyParts = status.mayHaveResponseBody && method != .HEAD
                            ? (hasLength ? [body("hello"), body(" world")] : [body("data: 1\n\n"), body(""), body("data: 2\n\n")])
                            : []
                        try assertSame([head(status, fields, version: version)] + bodyParts + [.end(nil)], answering: method)
                    }
                }
            }
        }
    }

    /// An upstream's head written as forwarded gives the bytes of the head built the long way:
    /// hop-by-hop fields removed (`HeaderPolicy`), the sidecar's fields added, Content-Length
    /// dropped when the body is changed, then written.
    func testForwardedHeadsAreTheHeadsBuiltTheLongWay() {
        let upstreamFields: [[(String, String)]] = [
            [("Content-Type", "application/json"), ("Content-Length", "600"), ("x-request-id", "r1")],
            [("content-type", "text/event-stream"), ("Transfer-Encoding", "chunked"), ("Connection", "keep-alive, X-Trace"),
             ("x-trace", "t"), ("Keep-Alive", "timeout=5"), ("openai-processing-ms", "12")],
            [("Proxy-Authenticate", "x"), ("content-length", "2"), ("Connection", "content-length"), ("upgrade", "h2c"), ("te", "trailers")],
            [("content-type", "application/json")],
            [],
        ]
        let forwardings: [HTTPResponseWriter.Forwarding] = [
            .init(),
            .init(extra: [("x-sidecar-cache", "miss")]),
            .init(extra: [("x-sidecar-cache", "bypass"), ("x-sidecar-deployment", "a/0"), ("x-sidecar-attempts", "2"), ("connection", "close")],
                  dropLength: true),
        ]
        for status in [HTTPResponseStatus.ok, .noContent, .notModified, .tooManyRequests, .badGateway] {
            for fields in upstreamFields {
                for forwarding in forwardings {
                    for method in [HTTPMethod.POST, .GET, .HEAD] {
                        let upstream = HTTPResponseHead(version: .http1_1, status: status, headers: HTTPHeaders(fields))
                        let longWay = forwarding.headers(from: upstream.headers)
                        var a = HTTPResponseWriter()
                        var expected = ByteBuffer()
                        a.writeHead(HTTPResponseHead(version: .http1_1, status: status, headers: longWay), requestMethod: method, into: &expected)
                        var b = HTTPResponseWriter()
                        var actual = ByteBuffer()
                        b.writeForwardedHead(upstream, forwarding, requestMethod: method, into: &actual)
                        XCTAssertEqual(String(buffer: actual), String(buffer: expected), "\(status) \(fields) \(forwarding.extra) \(method)")
                        XCTAssertEqual(a.framing, b.framing)
                    }
                }
            }
        }
    }

    func testTrailersAndEmptyChunkedBodies() throws {
        try assertSame([head(.ok, [("transfer-encoding", "chunked")]), .end(HTTPHeaders([("x-usage", "7"), ("x-b", "2")]))])
        try assertSame([head(.ok, []), body("a"), .end(HTTPHeaders([("x-usage", "7")]))])
        try assertSame([head(.ok, []), .end(nil)])
    }

    func testInterimResponsesKeepTheFinalOnesFraming() throws {
        try assertSame([head(.continue, []), head(.ok, [("content-length", "2")]), body("{}"), .end(nil)])
        try assertSame([head(.continue, [("content-length", "5")]), head(.ok, []), body("{}"), .end(nil)])
        try assertSame([head(.continue, []), head(.ok, [("transfer-encoding", "chunked")])] + [.end(nil)], answering: .HEAD)
    }

    func testConsecutiveResponsesOnOneConnectionStartAfresh() {
        // After a chunked answer to a HEAD request (suppressed), the next GET's body is framed.
        var writer = HTTPResponseWriter()
        var out = ByteBuffer()
        writer.writeHead(HTTPResponseHead(version: .http1_1, status: .ok), requestMethod: .HEAD, into: &out)
        XCTAssertFalse(writer.sendsBody)
        XCTAssertNil(writer.end(trailers: nil, allocator: ByteBufferAllocator()))
        writer.writeHead(HTTPResponseHead(version: .http1_1, status: .ok), requestMethod: .GET, into: &out)
        XCTAssertEqual(writer.framing, .chunked)
        XCTAssertEqual(writer.chunkPrefix(count: 300, allocator: ByteBufferAllocator()).map { String(buffer: $0) }, "12c\r\n")
        XCTAssertEqual(writer.end(trailers: nil, allocator: ByteBufferAllocator()).map { String(buffer: $0) }, "0\r\n\r\n")
        XCTAssertEqual(writer.framing, .asIs)
    }

    func testARefusedCONNECTKeepsItsErrorBodyAndA2xxOneHasNone() {
        // NIO's encoder drops the body of every answer to CONNECT; RFC 9110 §9.3.6 only forbids
        // framing in a 2xx one (the tunnel). The sidecar's 405 must carry its JSON error.
        var writer = HTTPResponseWriter()
        var out = ByteBuffer()
        let refusal = HTTPResponseHead(version: .http1_1, status: .methodNotAllowed, headers: ["content-length": "10", "allow": "GET"])
        writer.writeHead(refusal, requestMethod: .CONNECT, into: &out)
        XCTAssertEqual(String(buffer: out), "HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 10\r\nallow: GET\r\n\r\n")
        XCTAssertTrue(writer.sendsBody)
        _ = writer.end(trailers: nil, allocator: ByteBufferAllocator())
        out.clear()
        writer.writeHead(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-length": "10"]), requestMethod: .CONNECT, into: &out)
        XCTAssertEqual(String(buffer: out), "HTTP/1.1 200 OK\r\n\r\n")
        XCTAssertFalse(writer.sendsBody)
    }
}
