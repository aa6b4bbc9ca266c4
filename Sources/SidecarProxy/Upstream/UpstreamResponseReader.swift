import NIOCore
import NIOHTTP1
import SidecarCore

/// Reads an upstream's responses with our own strict framing (SidecarCore/HTTP/Framing) instead
/// of NIO's llhttp decoder: the head is scanned in place, the body is passed on as slices of the
/// bytes TLS produced (never copied), and anything RFC 9112 says a client must not accept is an
/// `UpstreamFramingError`, which fails the request with 502 `upstream_protocol_error` and closes
/// the connection (it is never pooled).
///
/// Owned by the connection's handler (`UpstreamConnectionHandler`: no pipeline hop and no boxed
/// parts between TLS and the exchange), as `DownstreamRequestReader` is by the client's. The
/// connection tells it when a request goes out (`expectResponse`: HEAD's answer has no body).
/// Feed it with `append`, then take parts with `next()` until it returns nil.
/// Interim responses (100, 103) are skipped; 101 is refused (the sidecar never asks to upgrade);
/// bytes from the upstream while no request is outstanding are refused; chunked trailers are read
/// and dropped.
struct UpstreamResponseReader {
    /// Response heads may be larger than the requests we accept (providers and CDNs add fields);
    /// NIO's decoder allowed 80 KiB.
    static let limits = HTTPHeadLimits(maxHeadBytes: 80 * 1024, maxFieldCount: 512)

    private enum State {
        case idle
        case head(HTTPResponseHeadScanner)
        case body(HTTPBodyFramer)
        case failed
    }

    private var state = State.idle
    /// Bytes received and not yet passed on (a partial head, or what follows a message).
    private var pending: ByteBuffer?
    private var requestIsHEAD = false

    /// A request is going out: its response is expected (and has no body if it answers HEAD).
    mutating func expectResponse(toHEAD: Bool) {
        requestIsHEAD = toHEAD
        if case .idle = state { state = .head(HTTPResponseHeadScanner(limits: Self.limits)) }
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

    /// The next part of the response, nil when more bytes are needed (or the reader failed).
    /// After an error, nil forever.
    mutating func next() throws(UpstreamFramingError) -> HTTPClientResponsePart? {
        do {
            return try step()
        } catch {
            state = .failed
            pending = nil
            throw UpstreamFramingError(reason: error.reason)
        }
    }

    private mutating func step() throws(HTTPFramingError) -> HTTPClientResponsePart? {
        // A body that is complete ends here: right after its head (Content-Length: 0, HEAD, 204)
        // or its last Content-Length byte, not at the next read.
        if case .body(let framer) = state, framer.isComplete { return finishMessage() }
        while var buffer = pending, buffer.readableBytes > 0 {
            switch state {
            case .failed:
                return nil
            case .idle:
                throw .unsolicitedResponse
            case .head(var scanner):
                guard let scanned = try scanner.scan(buffer) else {
                    state = .head(scanner)
                    return nil
                }
                let head = buffer.withUnsafeReadableBytes { Self.responseHead(scanned, in: $0) }
                buffer.moveReaderIndex(forwardBy: scanned.length)
                pending = buffer
                switch scanned.kind {
                case .interim:
                    state = .head(HTTPResponseHeadScanner(limits: Self.limits))
                case .switchingProtocols:
                    throw .unrequestedUpgrade
                case .final:
                    state = .body(HTTPBodyFramer(scanned.framing(requestIsHEAD: requestIsHEAD)))
                    return .head(head)
                }
            case .body(var framer):
                switch try framer.step(buffer, from: 0) {
                case .data(let range):
                    state = .body(framer)
                    let slice = buffer.takeBody(range)
                    pending = buffer
                    return .body(slice)
                case .framing(let range):
                    state = .body(framer)
                    buffer.moveReaderIndex(forwardBy: range.upperBound)
                    pending = buffer
                case .end(let range):
                    buffer.moveReaderIndex(forwardBy: range.upperBound)
                    pending = buffer
                    return finishMessage()
                case .needMore:
                    state = .body(framer)
                    pending = nil
                }
            }
        }
        return nil
    }

    private mutating func finishMessage() -> HTTPClientResponsePart {
        state = .idle
        if pending?.readableBytes == 0 { pending = nil }
        return .end(nil)
    }

    /// The connection closed: a body delimited by the connection's end is complete now (its
    /// `.end`); any other message is cut short, which the connection handler reports.
    mutating func inputClosed() -> HTTPClientResponsePart? {
        defer {
            state = .failed
            pending = nil
        }
        if case .body(var framer) = state, (try? framer.inputClosed()) != nil, framer.isComplete { return .end(nil) }
        return nil
    }

    /// NIO's head for the connection handler and the exchange: status, version, fields in order.
    static func responseHead(_ scanned: ScannedResponseHead, in bytes: UnsafeRawBufferPointer) -> HTTPResponseHead {
        // Built in one go: the scanner has checked every name is a token (ASCII), so NIO's check
        // per `add` is not repeated.
        var fields: [(String, String)] = []
        fields.reserveCapacity(scanned.fieldCount)
        scanned.forEachField(in: bytes) { field in
            fields.append((String(decoding: bytes[field.name], as: UTF8.self), String(decoding: bytes[field.value], as: UTF8.self)))
        }
        let headers = HTTPHeaders(fields)
        let reason = String(decoding: bytes[scanned.reason], as: UTF8.self)
        let version: HTTPVersion = scanned.version == .http1_0 ? .http1_0 : .http1_1
        return HTTPResponseHead(version: version, status: HTTPResponseStatus(statusCode: scanned.status, reasonPhrase: reason), headers: headers)
    }
}

/// An upstream response our framing refused: the request fails with 502 naming the reason.
struct UpstreamFramingError: Error, CustomStringConvertible {
    var reason: String
    var description: String { reason }
}
