import NIOCore
import NIOHTTP1

/// Encodes the proxy's upstream requests into bytes, the way NIO's `HTTPRequestEncoder` does (the
/// same bytes and the same framing corrections, checked against it in `HTTPRequestWriterTests`),
/// so the upstream connection writes `ByteBuffer`s to TLS instead of passing request parts
/// through an encoder handler.
///
/// One per upstream connection; requests are written one after another (the head decides how the
/// body parts that follow are framed, the end resets that).
public struct HTTPRequestWriter: Sendable {
    /// The body goes in chunks (`Transfer-Encoding: chunked`: a POST, PUT or PATCH without
    /// Content-Length, or a request that said so itself).
    public private(set) var chunked = false

    public init() {}

    /// Appends `head` to `buffer` and decides the body's framing. NIO's corrections, kept: TRACE
    /// loses Content-Length and Transfer-Encoding; otherwise Content-Length wins over
    /// Transfer-Encoding; a POST, PUT or PATCH on HTTP/1.1 with neither gets
    /// `transfer-encoding: chunked`; other methods are chunked only if their first
    /// Transfer-Encoding value is exactly `chunked`.
    public mutating func writeHead(_ head: HTTPRequestHead, into buffer: inout ByteBuffer) {
        let http11 = head.version.major == 1 && head.version.minor >= 1
        var dropLength = false
        var dropCoding = false
        var addChunked = false
        switch head.method {
        case .TRACE:
            dropLength = true
            dropCoding = true
            chunked = false
        case .POST, .PUT, .PATCH:
            if head.headers.contains(name: "content-length") {
                dropCoding = true
                chunked = false
            } else {
                dropCoding = http11
                addChunked = http11
                chunked = http11
            }
        default:
            if head.headers.contains(name: "content-length") {
                dropCoding = true
                chunked = false
            } else {
                chunked = http11 && head.headers["transfer-encoding"].first == "chunked"
            }
        }
        buffer.writeString(head.method.rawValue)
        buffer.writeStaticString(" ")
        buffer.writeString(head.uri)
        buffer.writeStaticString(http11 && head.version.minor == 1 ? " HTTP/1.1\r\n" : " HTTP/")
        if !(http11 && head.version.minor == 1) {
            buffer.writeString("\(head.version.major).\(head.version.minor)")
            buffer.writeStaticString("\r\n")
        }
        HTTPWireEncoding.writeFields(head.headers, dropCoding: dropCoding, dropLength: dropLength, addChunked: addChunked, into: &buffer)
    }

    /// The chunk-size line before `count` body bytes, or nil when none goes (not chunked, or an
    /// empty part, which would end a chunked body).
    public func chunkPrefix(count: Int, allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard chunked, count > 0 else { return nil }
        return HTTPWireEncoding.sizeLine(count, allocator: allocator)
    }

    /// The bytes that end the body (the last chunk), or nil; resets for the next request.
    public mutating func end(allocator: ByteBufferAllocator) -> ByteBuffer? {
        defer { chunked = false }
        return chunked ? HTTPWireEncoding.lastChunk(trailers: nil, allocator: allocator) : nil
    }
}

/// Framing on the way out, for both writers: the fields with the framing corrections applied as
/// they are written, and the chunked transfer coding (RFC 9112 §7.1).
public enum HTTPWireEncoding {
    /// Writes `headers` (without Transfer-Encoding if `dropCoding`, without Content-Length if
    /// `dropLength`), `transfer-encoding: chunked` if `addChunked`, then the blank line.
    static func writeFields(_ headers: HTTPHeaders, dropCoding: Bool, dropLength: Bool, addChunked: Bool, into buffer: inout ByteBuffer) {
        for (name, value) in headers {
            if dropCoding, HeaderPolicy.equalsIgnoringASCIICase(name, "transfer-encoding") { continue }
            if dropLength, HeaderPolicy.equalsIgnoringASCIICase(name, "content-length") { continue }
            writeField(name, value, into: &buffer)
        }
        if addChunked { buffer.writeStaticString("transfer-encoding: chunked\r\n") }
        buffer.writeStaticString("\r\n")
    }

    /// `name: value CRLF`.
    @inline(__always)
    static func writeField(_ name: String, _ value: String, into buffer: inout ByteBuffer) {
        buffer.writeString(name)
        buffer.writeStaticString(": ")
        buffer.writeString(value)
        buffer.writeStaticString("\r\n")
    }

    /// `hex-size CRLF`.
    public static func sizeLine(_ count: Int, allocator: ByteBufferAllocator) -> ByteBuffer {
        var line = allocator.buffer(capacity: 18)
        line.writeString(String(count, radix: 16))
        line.writeStaticString("\r\n")
        return line
    }

    /// The CRLF after a chunk's data (shared storage: no allocation per chunk).
    public static let chunkEnd: ByteBuffer = ByteBuffer(string: "\r\n")

    /// `0 CRLF`, the trailer fields, `CRLF`.
    public static func lastChunk(trailers: HTTPHeaders?, allocator: ByteBufferAllocator) -> ByteBuffer {
        var last = allocator.buffer(capacity: 8)
        last.writeStaticString("0\r\n")
        for (name, value) in trailers ?? [:] {
            last.writeString(name)
            last.writeStaticString(": ")
            last.writeString(value)
            last.writeStaticString("\r\n")
        }
        last.writeStaticString("\r\n")
        return last
    }
}
