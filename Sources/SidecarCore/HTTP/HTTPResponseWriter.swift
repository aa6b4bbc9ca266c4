import NIOCore
import NIOHTTP1

/// Encodes responses for the proxy's clients into bytes, the way NIO's `HTTPResponseEncoder`
/// does (the same bytes and the same framing corrections, checked against it in
/// `HTTPResponseWriterTests`), so the client connection writes `ByteBuffer`s straight to the
/// socket instead of passing response parts through a pipeline handler.
///
/// One per client connection; responses are written one after another (the head decides how
/// the body parts that follow are framed, the end resets that).
public struct HTTPResponseWriter: Sendable {
    /// How the body of the response being written goes on the wire.
    public enum BodyFraming: Sendable, Equatable {
        /// As given: the head carries Content-Length (or the message has no framing of its own).
        case asIs
        /// In chunks (`Transfer-Encoding: chunked`, added when the head had neither framing field).
        case chunked
        /// Not at all: the answer to a HEAD (or CONNECT) request, whose body is never sent.
        case suppressed
    }

    public private(set) var framing = BodyFraming.asIs

    public init() {}

    /// Appends `head` to `buffer` and decides the body's framing. `requestMethod` is the method of
    /// the request this answers (for HEAD and CONNECT no body follows; RFC 9110 §9.3.2, §9.3.6).
    ///
    /// NIO's corrections, kept: a status that has no body (1xx, 204, 304) or a 2xx answer to
    /// CONNECT loses Content-Length and Transfer-Encoding; otherwise Content-Length wins over
    /// Transfer-Encoding, and an HTTP/1.1 head with neither gets `transfer-encoding: chunked`. An
    /// interim (1xx but 101) head leaves the framing of the final one alone.
    public mutating func writeHead(_ head: HTTPResponseHead, requestMethod: HTTPMethod?, into buffer: inout ByteBuffer) {
        let code = head.status.code
        let interim = (100..<200).contains(code) && code != 101
        // Only a 2xx answer to CONNECT switches to a tunnel (RFC 9110 §9.3.6); a refusal (the
        // 405 the sidecar gives) carries its error body like any other. NIO's encoder drops it.
        let connect = (200..<300).contains(code) && requestMethod == .CONNECT
        let suppress = !interim && (requestMethod == .HEAD || connect)
        // The corrections are made while writing (fields skipped, one appended), never by
        // editing a copy of the fields: no `HTTPHeaders` is copied per response.
        let dropLength = connect || !head.status.mayHaveResponseBody
        var dropCoding = dropLength
        var chunked = false
        if !dropLength {
            if head.headers.contains(name: "content-length") {
                dropCoding = true
            } else if head.version.major == 1 && head.version.minor >= 1 {
                dropCoding = true
                chunked = true
            }
        }
        if !interim { framing = suppress ? .suppressed : (chunked ? .chunked : .asIs) }

        buffer.writeStaticString(head.version.minor == 0 && head.version.major == 1 ? "HTTP/1.0 " : "HTTP/1.1 ")
        buffer.writeString(String(code))
        buffer.writeStaticString(" ")
        buffer.writeString(head.status.reasonPhrase)
        buffer.writeStaticString("\r\n")
        HTTPWireEncoding.writeFields(head.headers, dropCoding: dropCoding, dropLength: dropLength, addChunked: chunked, into: &buffer)
    }

    /// What the proxy changes in an upstream's head on its way to the client.
    public struct Forwarding: Sendable {
        /// Fields added after the upstream's (the sidecar's `x-sidecar-*`, `connection: close`).
        public var extra: [(String, String)]
        /// The upstream's Content-Length is dropped (the body is changed on its way: chunked).
        public var dropLength: Bool

        public init(extra: [(String, String)] = [], dropLength: Bool = false) {
            self.extra = extra
            self.dropLength = dropLength
        }

        /// The fields the long way, for those that keep a head (a flight's followers, a held
        /// model list): the upstream's without the hop-by-hop ones, Content-Length dropped if
        /// `dropLength`, then `extra`.
        public func headers(from upstream: HTTPHeaders) -> HTTPHeaders {
            var headers = HeaderPolicy.downstreamResponseHeaders(from: upstream)
            if dropLength { headers.remove(name: "content-length") }
            for (name, value) in extra { headers.add(name: name, value: value) }
            return headers
        }
    }

    /// Appends an upstream's final head as the client gets it: HTTP/1.1, the upstream's status,
    /// its fields without the hop-by-hop ones (`HeaderPolicy`), `forwarding`'s changes, then the
    /// framing corrections of `writeHead`. The same bytes as building those fields into a new
    /// head and writing it (`HTTPResponseWriterTests`), without building it.
    public mutating func writeForwardedHead(_ upstream: HTTPResponseHead, _ forwarding: Forwarding, requestMethod: HTTPMethod?,
                                            into buffer: inout ByteBuffer) {
        let code = upstream.status.code
        let connect = (200..<300).contains(code) && requestMethod == .CONNECT
        let dropLength = connect || !upstream.status.mayHaveResponseBody
        let tokens = HeaderPolicy.connectionTokens(upstream.headers)
        func kept(_ name: String) -> Bool {
            if HeaderPolicy.isHopByHop(name, connectionTokens: tokens) { return false }
            return !(forwarding.dropLength && HeaderPolicy.equalsIgnoringASCIICase(name, "content-length"))
        }
        func isLength(_ name: String) -> Bool { HeaderPolicy.equalsIgnoringASCIICase(name, "content-length") }
        let hasLength = upstream.headers.contains { isLength($0.name) && kept($0.name) } || forwarding.extra.contains { isLength($0.0) }
        let chunked = !dropLength && !hasLength
        framing = requestMethod == .HEAD || connect ? .suppressed : (chunked ? .chunked : .asIs)

        buffer.writeStaticString("HTTP/1.1 ")
        buffer.writeString(String(code))
        buffer.writeStaticString(" ")
        buffer.writeString(upstream.status.reasonPhrase)
        buffer.writeStaticString("\r\n")
        for (name, value) in upstream.headers where kept(name) && !(dropLength && isLength(name)) {
            HTTPWireEncoding.writeField(name, value, into: &buffer)
        }
        for (name, value) in forwarding.extra where !(dropLength && isLength(name)) {
            HTTPWireEncoding.writeField(name, value, into: &buffer)
        }
        if chunked { buffer.writeStaticString("transfer-encoding: chunked\r\n") }
        buffer.writeStaticString("\r\n")
    }

    /// The chunk-size line that goes before `count` body bytes, or nil when none does (not
    /// chunked, or an empty part, which would end a chunked body).
    public func chunkPrefix(count: Int, allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard framing == .chunked, count > 0 else { return nil }
        return HTTPWireEncoding.sizeLine(count, allocator: allocator)
    }

    /// Whether body bytes are sent at all.
    public var sendsBody: Bool { framing != .suppressed }

    /// The bytes that end the body (the last chunk and trailers), or nil; resets for the next response.
    public mutating func end(trailers: HTTPHeaders?, allocator: ByteBufferAllocator) -> ByteBuffer? {
        defer { framing = .asIs }
        guard framing == .chunked else { return nil }
        return HTTPWireEncoding.lastChunk(trailers: trailers, allocator: allocator)
    }

    /// The CRLF after a chunk's data (shared storage: no allocation per chunk).
    public static var chunkEnd: ByteBuffer { HTTPWireEncoding.chunkEnd }
}
