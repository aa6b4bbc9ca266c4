import NIOCore
import NIOHTTP1
import SidecarCore

/// Reads an upstream's responses with our own strict framing (SidecarCore/HTTP/Framing) instead
/// of NIO's llhttp decoder: the head is scanned in place, the body is passed on as slices of the
/// bytes TLS produced (never copied), and anything RFC 9112 says a client must not accept is an
/// `UpstreamFramingError`, which fails the request with 502 `upstream_protocol_error` and closes
/// the connection (it is never pooled).
///
/// Sits between the TLS handler and `UpstreamConnectionHandler`, inbound only: the connection
/// tells it when a request goes out (`expectResponse`: HEAD's answer has no body).
/// Interim responses (100, 103) are skipped; 101 is refused (the sidecar never asks to upgrade);
/// bytes from the upstream while no request is outstanding are refused; chunked trailers are read
/// and dropped.
final class UpstreamResponseFramer: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = HTTPClientResponsePart

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

    // MARK: the request

    /// A request is going out: its response is expected (and has no body if it answers HEAD).
    func expectResponse(toHEAD: Bool) {
        requestIsHEAD = toHEAD
        if case .idle = state { state = .head(HTTPResponseHeadScanner(limits: Self.limits)) }
    }

    // MARK: inbound: frame the response

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var input = unwrapInboundIn(data)
        if case .failed = state { return }
        if var held = pending, held.readableBytes > 0 {
            held.writeBuffer(&input)
            pending = held
        } else {
            pending = input
        }
        do {
            try drain(context: context)
        } catch {
            state = .failed
            pending = nil
            context.fireErrorCaught(UpstreamFramingError(reason: error.reason))
        }
    }

    private func drain(context: ChannelHandlerContext) throws(HTTPFramingError) {
        while var buffer = pending, buffer.readableBytes > 0 {
            switch state {
            case .failed:
                return
            case .idle:
                throw .unsolicitedResponse
            case .head(var scanner):
                guard let scanned = try scanner.scan(buffer) else {
                    state = .head(scanner)
                    return
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
                    context.fireChannelRead(wrapInboundOut(.head(head)))
                    if case .body(let framer) = state, framer.isComplete { finishMessage(context: context) }
                }
            case .body(var framer):
                switch try framer.step(buffer, from: 0) {
                case .data(let range):
                    state = .body(framer)
                    let slice = buffer.takeBody(range)
                    pending = buffer
                    context.fireChannelRead(wrapInboundOut(.body(slice)))
                    // The last Content-Length byte: the message ends here, not at the next read.
                    if framer.isComplete { finishMessage(context: context) }
                case .framing(let range):
                    state = .body(framer)
                    buffer.moveReaderIndex(forwardBy: range.upperBound)
                    pending = buffer
                case .end(let range):
                    buffer.moveReaderIndex(forwardBy: range.upperBound)
                    pending = buffer
                    finishMessage(context: context)
                case .needMore:
                    state = .body(framer)
                    pending = nil
                }
            }
        }
    }

    private func finishMessage(context: ChannelHandlerContext) {
        state = .idle
        context.fireChannelRead(wrapInboundOut(.end(nil)))
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A body delimited by the connection's end is complete now; any other message is cut
        // short, which the connection handler reports.
        if case .body(var framer) = state, (try? framer.inputClosed()) != nil, framer.isComplete {
            finishMessage(context: context)
        }
        state = .failed
        pending = nil
        context.fireChannelInactive()
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
