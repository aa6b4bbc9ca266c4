import NIOCore
import NIOEmbedded
import NIOHTTP1
import SidecarCore
import XCTest

/// Our scanners and framer against NIO's llhttp-based decoders on a generated corpus of valid
/// messages: method, target, version, status, every field name and value in order, and the body
/// bytes must agree exactly. One normalisation: llhttp keeps a value's trailing whitespace, which
/// RFC 9110 §5.5 says is not part of it (we trim it), so NIO's values are compared trimmed.
final class HTTPFramingDifferentialTests: XCTestCase {
    /// What a parser found in one message, in a form both sides can produce.
    private struct Parsed: Equatable, CustomStringConvertible {
        var method = ""
        var target = ""
        var status = 0
        var version = ""
        var fields: [String] = []
        var body: [UInt8] = []

        var description: String { "\(method) \(target) \(status) \(version) \(fields) body: \(body.count) bytes" }
    }

    private func ours(_ m: GeneratedMessage) throws -> Parsed {
        var p = Parsed()
        let bytes = m.bytes
        var framing: HTTPBodyFraming
        var headLength: Int
        if m.isRequest {
            var scanner = HTTPRequestHeadScanner()
            let head = try XCTUnwrap(try bytes.withUnsafeBytes { b in try Result { () throws(HTTPFramingError) in try scanner.scan(b) }.get() })
            p.method = text(bytes, head.method)!
            p.target = text(bytes, head.target)!
            p.version = head.version == .http1_1 ? "1.1" : "1.0"
            p.fields = fields(bytes, head).map { "\($0.0): \($0.1)" }
            framing = head.framing
            headLength = head.length
        } else {
            var scanner = HTTPResponseHeadScanner()
            let head = try XCTUnwrap(try bytes.withUnsafeBytes { b in try Result { () throws(HTTPFramingError) in try scanner.scan(b) }.get() })
            p.status = head.status
            p.version = head.version == .http1_1 ? "1.1" : "1.0"
            p.fields = fields(bytes, head).map { "\($0.0): \($0.1)" }
            framing = head.framing(requestIsHEAD: false)
            headLength = head.length
        }
        let body = frameBody(Array(bytes[headLength...]), framing, close: framing == .untilClose)
        XCTAssertNil(body.error)
        p.body = body.body
        return p
    }

    private func nio(_ m: GeneratedMessage) throws -> Parsed {
        var p = Parsed()
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        if m.isRequest {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes)))
            try channel.writeInbound(ByteBuffer(bytes: m.bytes))
            while let part = try channel.readInbound(as: HTTPServerRequestPart.self) {
                switch part {
                case .head(let h):
                    p.method = h.method.rawValue
                    p.target = h.uri
                    p.version = "\(h.version.major).\(h.version.minor)"
                    p.fields = h.headers.map { "\($0.name): \(Self.trimmingTrailingWhitespace($0.value))" }
                case .body(let b): p.body += b.readableBytesView
                case .end: break
                }
            }
        } else {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes)))
            // The decoder learns the request method from the outbound request head.
            try channel.writeOutbound(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/")))
            try channel.writeInbound(ByteBuffer(bytes: m.bytes))
            if m.framing == .untilClose { channel.pipeline.fireChannelInactive() }
            while let part = try channel.readInbound(as: HTTPClientResponsePart.self) {
                switch part {
                case .head(let h):
                    p.status = Int(h.status.code)
                    p.version = "\(h.version.major).\(h.version.minor)"
                    p.fields = h.headers.map { "\($0.name): \(Self.trimmingTrailingWhitespace($0.value))" }
                case .body(let b): p.body += b.readableBytesView
                case .end: break
                }
            }
        }
        return p
    }

    private static func trimmingTrailingWhitespace(_ s: String) -> String {
        var u = Array(s.utf8)
        while let last = u.last, last == 0x20 || last == 0x09 { u.removeLast() }
        return String(decoding: u, as: UTF8.self)
    }

    func testAgreesWithLLHTTPOnGeneratedRequests() throws {
        var gen = HTTPMessageGenerator(seed: 2024)
        for i in 0..<500 {
            let m = gen.request()
            let (a, b) = (try ours(m), try nio(m))
            XCTAssertEqual(a, b, "request \(i): \(String(decoding: m.bytes.prefix(300), as: UTF8.self))")
            if a != b { return }
        }
    }

    func testAgreesWithLLHTTPOnGeneratedResponses() throws {
        var gen = HTTPMessageGenerator(seed: 1107)
        for i in 0..<500 {
            let m = gen.response()
            let (a, b) = (try ours(m), try nio(m))
            XCTAssertEqual(a, b, "response \(i): \(String(decoding: m.bytes.prefix(300), as: UTF8.self))")
            if a != b { return }
        }
    }

    func testAgreesOnTheTypicalMessages() throws {
        let request = GeneratedMessage(bytes: (typicalChatRequest + String(repeating: "x", count: 98)).crlf, isRequest: true,
                                       version: .http1_1, fields: [], body: [], end: 0, framing: .contentLength(98))
        XCTAssertEqual(try ours(request), try nio(request))
        let response = GeneratedMessage(bytes: typicalChatResponse.crlf + Array("3\r\nabc\r\n0\r\n\r\n".utf8), isRequest: false,
                                        version: .http1_1, fields: [], body: [], end: 0, framing: .chunked)
        XCTAssertEqual(try ours(response), try nio(response))
    }
}
