import NIOCore
import NIOEmbedded
import NIOHTTP1
import SidecarCore
import XCTest

/// `HTTPRequestWriter` writes what NIO's `HTTPRequestEncoder` wrote, byte for byte, for every
/// method, version and framing the proxy sends upstream.
final class HTTPRequestWriterTests: XCTestCase {
    private func nio(_ parts: [HTTPClientRequestPart]) throws -> String {
        let channel = EmbeddedChannel(handler: HTTPRequestEncoder())
        defer { _ = try? channel.finish() }
        for part in parts { channel.write(part, promise: nil) }
        channel.flush()
        var out: [UInt8] = []
        while let data = try channel.readOutbound(as: IOData.self) {
            guard case .byteBuffer(let buffer) = data else { XCTFail("no file regions"); continue }
            out += buffer.readableBytesView
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// As `UpstreamConnection` uses it.
    private func ours(_ parts: [HTTPClientRequestPart]) -> String {
        var writer = HTTPRequestWriter()
        var out = ByteBuffer()
        let allocator = ByteBufferAllocator()
        for part in parts {
            switch part {
            case .head(let head):
                writer.writeHead(head, into: &out)
            case .body(.byteBuffer(var data)):
                if var size = writer.chunkPrefix(count: data.readableBytes, allocator: allocator) {
                    out.writeBuffer(&size)
                    out.writeBuffer(&data)
                    var end = HTTPWireEncoding.chunkEnd
                    out.writeBuffer(&end)
                } else {
                    out.writeBuffer(&data)
                }
            case .body(.fileRegion):
                XCTFail("no file regions")
            case .end:
                if var last = writer.end(allocator: allocator) { out.writeBuffer(&last) }
            }
        }
        return String(buffer: out)
    }

    func testHeadsAndBodiesAgreeWithNIOsEncoder() throws {
        let methods: [HTTPMethod] = [.GET, .POST, .PUT, .PATCH, .DELETE, .HEAD, .OPTIONS, .TRACE, .RAW(value: "PROPFIND")]
        let framings: [[(String, String)]] = [
            [("host", "api.openai.com"), ("content-type", "application/json"), ("content-length", "13")],
            [("host", "h"), ("transfer-encoding", "chunked")],
            [("host", "h"), ("Transfer-Encoding", "chunked"), ("content-length", "13")],
            [("host", "h"), ("authorization", "Bearer sk-x"), ("accept-encoding", "identity")],
            [("host", "h"), ("transfer-encoding", "gzip")],
        ]
        for method in methods {
            for fields in framings {
                for version in [HTTPVersion.http1_1, .http1_0] {
                    let head = HTTPRequestHead(version: version, method: method, uri: "/v1/chat/completions?x=1", headers: HTTPHeaders(fields))
                    let parts: [HTTPClientRequestPart] = [
                        .head(head), .body(.byteBuffer(ByteBuffer(string: "{\"a\":"))), .body(.byteBuffer(ByteBuffer())),
                        .body(.byteBuffer(ByteBuffer(string: "\"bcdef\"}"))), .end(nil),
                    ]
                    XCTAssertEqual(ours(parts), try nio(parts), "\(method) \(version) \(fields)")
                }
            }
        }
    }

    func testOneWriterFramesConsecutiveRequestsAfresh() throws {
        let chunkedPost = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/a", headers: ["host": "h"])
        let get = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/b", headers: ["host": "h"])
        let parts: [HTTPClientRequestPart] = [
            .head(chunkedPost), .body(.byteBuffer(ByteBuffer(string: "x"))), .end(nil),
            .head(get), .end(nil),
        ]
        XCTAssertEqual(ours(parts), try nio(parts))
        XCTAssertTrue(ours(parts).hasSuffix("GET /v1/b HTTP/1.1\r\nhost: h\r\n\r\n"))
    }
}
