import Logging
import NIOCore
import NIOHTTP1
import SidecarCore

/// The proxy's per-client-connection handler, after NIO's HTTP/1.1 decoder and pipelining helper.
/// Routes each request (admin endpoint, `/v1/...` to an exchange, or 404), writes responses, and
/// turns malformed HTTP into a 400 with an OpenAI-shaped body before closing the connection.
final class DownstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let runtime: ProxyRuntime
    private var context: ChannelHandlerContext?
    private var exchange: ProxyExchange?
    /// The current request's `Connection` semantics (HTTP/1.0 and `Connection: close` end the connection).
    private(set) var keepAlive = true
    /// A response is being written for the current request.
    private var responding = false
    /// The current request has been answered locally; its remaining body is read and dropped.
    private var discardingRequest = false
    private var closeAfterResponse = false
    private var idleTimer: Scheduled<Void>?
    private(set) var isClosed = false

    init(runtime: ProxyRuntime) {
        self.runtime = runtime
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        armIdleTimer()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        self.context = nil
    }

    // MARK: requests

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            idleTimer?.cancel()
            idleTimer = nil
            keepAlive = head.isKeepAlive && !runtime.isDraining
            closeAfterResponse = false
            discardingRequest = false
            route(head)
        case .body(let buffer):
            if let exchange { exchange.requestBody(buffer) }
        case .end:
            if let exchange {
                exchange.requestEnd()
            } else if discardingRequest {
                discardingRequest = false
                if !responding { requestCompleteAfterLocalResponse() }
            }
        }
    }

    private func route(_ head: HTTPRequestHead) {
        let path = head.uri
        if path == "/healthz" || path.hasPrefix("/healthz?") {
            guard head.method == .GET || head.method == .HEAD else {
                return respondWithError(.methodNotAllowed(head.method.rawValue, path: "/healthz"), closeAfter: false)
            }
            return respondLocally(status: .ok, json: #"{"status":"ok"}"#, headOnly: head.method == .HEAD)
        }
        guard path.hasPrefix("/v1/") || path == "/v1" || path.hasPrefix("/v1?") else {
            return respondWithError(.notFound(path: path), closeAfter: false)
        }
        if let length = head.headers.first(name: "content-length").flatMap({ Int($0) }), length > runtime.maxBodyBytes {
            return respondWithError(.payloadTooLarge(limit: runtime.maxBodyBytes), closeAfter: true)
        }
        guard let context, let group = runtime.defaultUpstream else {
            return respondWithError(.notFound(path: path), closeAfter: false)
        }
        let exchange = ProxyExchange(
            downstream: self, head: head, group: group, pool: group.pool(on: context.eventLoop), maxBodyBytes: runtime.maxBodyBytes)
        self.exchange = exchange
        responding = false
        runtime.requestStarted()
        exchange.start()
    }

    // MARK: responses (called by the exchange)

    func writeResponseHead(_ head: HTTPResponseHead) {
        responding = true
        context?.write(wrapOutboundOut(.head(head)), promise: nil)
    }

    func writeResponseBody(_ buffer: ByteBuffer) {
        context?.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    /// The response is complete.
    func finishResponse(trailers: HTTPHeaders?) {
        guard let context else { return }
        let closing = !keepAlive || closeAfterResponse
        exchange = nil
        responding = false
        runtime.requestFinished()
        let done = context.writeAndFlush(wrapOutboundOut(.end(trailers)))
        if closing {
            done.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        } else {
            armIdleTimer()
        }
    }

    /// Something was already sent and the rest cannot be: end the connection so the client sees a
    /// truncated response (no fake end of stream).
    func abortResponse() {
        if exchange != nil { runtime.requestFinished() }
        exchange = nil
        responding = false
        // What was already written still goes out; then the connection ends.
        context?.flush()
        context?.close(promise: nil)
    }

    /// Answers the current request with `error`'s OpenAI-shaped body.
    func respondWithError(_ error: ProxyError, closeAfter: Bool) {
        if exchange != nil { runtime.requestFinished() }
        exchange = nil
        if closeAfter { closeAfterResponse = true }
        let (head, body) = ErrorResponses.head(for: error, keepAlive: keepAlive && !closeAfterResponse)
        writeLocal(head: head, body: body)
    }

    private func respondLocally(status: HTTPResponseStatus, json: String, headOnly: Bool) {
        let body = ByteBuffer(string: json)
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.readableBytes))
        if !keepAlive { headers.add(name: "connection", value: "close") }
        writeLocal(head: HTTPResponseHead(version: .http1_1, status: status, headers: headers), body: headOnly ? nil : body)
    }

    private func writeLocal(head: HTTPResponseHead, body: ByteBuffer?) {
        guard let context else { return }
        discardingRequest = true
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if let body { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        responding = false
        if !keepAlive || closeAfterResponse {
            done.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        } else {
            armIdleTimer()
        }
    }

    private func requestCompleteAfterLocalResponse() {
        armIdleTimer()
    }

    // MARK: connection events

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Malformed HTTP from the client: answer 400 if nothing is being written, then close.
        // Other clients are unaffected: each connection has its own decoder.
        if error is HTTPParserError || error is ByteToMessageDecoderError {
            if let exchange, !responding {
                // The head was fine but the body is not: abandon the upstream request.
                self.exchange = nil
                runtime.requestFinished()
                exchange.downstreamClosed()
            }
            if exchange == nil, !responding {
                closeAfterResponse = true
                keepAlive = false
                let (head, body) = ErrorResponses.head(for: .badRequest("malformed HTTP request: \(Self.describe(error))"), keepAlive: false)
                context.write(wrapOutboundOut(.head(head)), promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                    context.close(promise: nil)
                }
                return
            }
        }
        context.close(promise: nil)
    }

    static func describe(_ error: Error) -> String {
        guard let e = error as? HTTPParserError else { return "\(error)" }
        switch e {
        case .headerOverflow: return "headers too large"
        case .invalidContentLength: return "invalid Content-Length"
        case .unexpectedContentLength: return "both Content-Length and Transfer-Encoding"
        case .invalidChunkSize: return "invalid chunk size"
        case .invalidMethod: return "invalid method"
        case .invalidURL: return "invalid request target"
        case .invalidVersion: return "invalid HTTP version"
        case .invalidHeaderToken: return "invalid header"
        default: return "\(e)"
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        isClosed = true
        idleTimer?.cancel()
        if let exchange {
            self.exchange = nil
            runtime.requestFinished()
            exchange.downstreamClosed()
        }
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        exchange?.downstreamWritabilityChanged(writable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // Graceful stop: finish the current request, then close.
            keepAlive = false
            if exchange == nil, !responding { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func armIdleTimer() {
        guard let context else { return }
        idleTimer?.cancel()
        let timeout = runtime.clientIdleTimeout
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            if self.exchange == nil, !self.responding { self.context?.close(promise: nil) }
        }
    }
}
