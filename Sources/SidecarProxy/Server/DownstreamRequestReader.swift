import NIOCore
import NIOHTTP1
import SidecarCore

/// Reads a client's requests with our own strict framing (SidecarCore/HTTP/Framing) instead of
/// NIO's llhttp decoder: the head is scanned in place, body bytes are handed on as slices of what
/// the socket read (never copied), and anything RFC 9112 says a server must refuse ends the
/// connection's reading with an `HTTPFramingError` (answered by `DownstreamHandler` in turn).
///
/// Owned by the connection's handler (no pipeline hop). Feed it with `append`, then take parts
/// with `next()` until it returns nil.
struct DownstreamRequestReader {
    /// 80 KiB of head (what NIO's decoder allowed: the tests' oversized heads are 431 either way).
    static let maxHeadBytes = 80 * 1024

    /// `server.max_header_fields`: the scan stops at the first field past it (ten thousand tiny
    /// fields are an attack, refused before they cost a `HTTPHeaders` entry each). Applies from
    /// the next head on.
    var maxFieldCount: Int

    init(maxFieldCount: Int) {
        self.maxFieldCount = maxFieldCount
        state = .head(HTTPRequestHeadScanner(limits: HTTPHeadLimits(maxHeadBytes: Self.maxHeadBytes, maxFieldCount: maxFieldCount)))
    }

    private enum State {
        case head(HTTPRequestHeadScanner)
        case body(HTTPBodyFramer)
        case failed
    }

    private var state: State
    /// Bytes received and not yet handed on.
    private var pending: ByteBuffer?

    /// Nothing of a message has been read since the last one ended (the input may end here).
    var isBetweenMessages: Bool {
        if case .head = state { return (pending?.readableBytes ?? 0) == 0 }
        return false
    }

    mutating func append(_ input: ByteBuffer) {
        if case .failed = state { return }
        if var held = pending, held.readableBytes > 0 {
            var input = input
            held.writeBuffer(&input)
            pending = held
        } else {
            pending = input
        }
    }

    /// The next part of a request, nil when more bytes are needed. After an error, nil forever.
    mutating func next() throws(DownstreamFramingError) -> HTTPServerRequestPart? {
        do {
            return try step()
        } catch {
            let refusal = Self.refusal(for: error, startingWith: pending, maxFieldCount: maxFieldCount)
            state = .failed
            pending = nil
            throw refusal
        }
    }

    /// The bytes received after the last part handed on (a connection upgraded to WebSocket:
    /// they are frames); the reader reads nothing more.
    mutating func takeBuffered() -> ByteBuffer? {
        defer { state = .failed; pending = nil }
        guard let rest = pending, rest.readableBytes > 0 else { return nil }
        return rest
    }

    /// The client closed its sending side: fine between requests, an error inside one.
    mutating func inputClosed() throws(DownstreamFramingError) {
        switch state {
        case .failed: return
        case .head: if isBetweenMessages { return }
        case .body: break
        }
        state = .failed
        pending = nil
        throw DownstreamFramingError(.badRequest("malformed HTTP request: \(HTTPFramingError.truncatedBody.reason)"))
    }

    private mutating func step() throws(HTTPFramingError) -> HTTPServerRequestPart? {
        guard var buffer = pending, buffer.readableBytes > 0 else {
            // A body of Content-Length 0 ends without another byte.
            if case .body(let framer) = state, framer.isComplete { return endMessage() }
            return nil
        }
        switch state {
        case .failed:
            return nil
        case .head(var scanner):
            guard let scanned = try scanner.scan(buffer) else {
                state = .head(scanner)
                return nil
            }
            let head = buffer.withUnsafeReadableBytes { Self.requestHead(scanned, in: $0) }
            buffer.moveReaderIndex(forwardBy: scanned.length)
            pending = buffer
            state = .body(HTTPBodyFramer(scanned.framing))
            return .head(head)
        case .body(var framer):
            if framer.isComplete { return endMessage() }
            while true {
                switch try framer.step(buffer, from: 0) {
                case .data(let range):
                    state = .body(framer)
                    let slice = buffer.takeBody(range)
                    pending = buffer
                    return .body(slice)
                case .framing(let range):
                    buffer.moveReaderIndex(forwardBy: range.upperBound)
                    pending = buffer
                    if buffer.readableBytes == 0 {
                        state = .body(framer)
                        return nil
                    }
                case .end(let range):
                    buffer.moveReaderIndex(forwardBy: range.upperBound)
                    pending = buffer
                    return endMessage()
                case .needMore:
                    state = .body(framer)
                    pending = nil
                    return nil
                }
            }
        }
    }

    private mutating func endMessage() -> HTTPServerRequestPart {
        state = .head(HTTPRequestHeadScanner(limits: HTTPHeadLimits(maxHeadBytes: Self.maxHeadBytes, maxFieldCount: maxFieldCount)))
        if pending?.readableBytes == 0 { pending = nil }
        return .end(nil)
    }

    /// NIO's head for the handler and the exchange: method, target, version, fields in order.
    static func requestHead(_ scanned: ScannedRequestHead, in bytes: UnsafeRawBufferPointer) -> HTTPRequestHead {
        // Built in one go: the scanner has checked every name is a token (ASCII), so NIO's check
        // per `add` is not repeated.
        var fields: [(String, String)] = []
        fields.reserveCapacity(scanned.fieldCount)
        scanned.forEachField(in: bytes) { field in
            fields.append((String(decoding: bytes[field.name], as: UTF8.self), String(decoding: bytes[field.value], as: UTF8.self)))
        }
        let headers = HTTPHeaders(fields)
        let method = HTTPMethod(rawValue: String(decoding: bytes[scanned.method], as: UTF8.self))
        let version: HTTPVersion = scanned.version == .http1_0 ? .http1_0 : .http1_1
        return HTTPRequestHead(version: version, method: method, uri: String(decoding: bytes[scanned.target], as: UTF8.self), headers: headers)
    }

    /// What a client whose bytes our framing refused is answered with.
    static func refusal(for error: HTTPFramingError, startingWith input: ByteBuffer?, maxFieldCount: Int) -> DownstreamFramingError {
        switch error {
        case .headTooLarge:
            return DownstreamFramingError(.headerFieldsTooLarge("the request's header fields exceed 80 KiB (one field, or all of them together)"))
        case .tooManyFields:
            return DownstreamFramingError(.headerFieldsTooLarge("the request has more than \(maxFieldCount) header fields; server.max_header_fields is \(maxFieldCount)"))
        case .transferEncodingInHTTP10:
            return DownstreamFramingError(.invalidFraming("an HTTP/1.0 request with Transfer-Encoding has untrustworthy framing (RFC 9112 §6.1)"))
        case .contentLengthWithTransferEncoding, .repeatedContentLength, .invalidTransferEncoding, .chunkedNotFinal:
            return DownstreamFramingError(.badRequest("malformed HTTP request: \(error.reason)"))
        case .unsupportedTransferCoding:
            return DownstreamFramingError(.notImplemented(
                "the request's Transfer-Encoding names a coding the sidecar does not decode: only chunked is accepted (or send Content-Length)"))
        case .unsupportedVersion:
            return DownstreamFramingError(.httpVersionNotSupported("the sidecar speaks HTTP/1.1 and HTTP/1.0"))
        case .unsupportedTargetForm, .invalidTarget:
            // CONNECT (authority-form) and TRACE * get the 405 the policy gives them elsewhere.
            for method in ["CONNECT", "TRACE"] where input.map({ Self.startsWith($0, method + " ") }) ?? false {
                let target = input.flatMap { Self.target(in: $0) } ?? "-"
                return DownstreamFramingError(RequestHeadPolicy.refusal(method: method, target: target))
            }
            return DownstreamFramingError(.badRequest("malformed HTTP request: \(error.reason)"))
        default:
            return DownstreamFramingError(.badRequest("malformed HTTP request: \(error.reason)"))
        }
    }

    private static func startsWith(_ buffer: ByteBuffer, _ prefix: String) -> Bool {
        buffer.readableBytesView.starts(with: prefix.utf8)
    }

    /// The second word of the request line, for the 405's message (at most 200 bytes).
    private static func target(in buffer: ByteBuffer) -> String? {
        let view = buffer.readableBytesView.prefix(512)
        guard let sp = view.firstIndex(of: 0x20) else { return nil }
        let rest = view[(sp + 1)...]
        let end = rest.firstIndex { $0 == 0x20 || $0 == 0x0D || $0 == 0x0A } ?? rest.endIndex
        return String(decoding: rest[..<end].prefix(200), as: UTF8.self)
    }
}

/// A client request our framing refused, and the answer it gets.
struct DownstreamFramingError: Error {
    var refusal: ProxyError

    init(_ refusal: ProxyError) { self.refusal = refusal }
}
