import NIOCore
import NIOHTTP1
import NIOPosix
import SidecarCore
import SidecarTLS

/// What an exchange learns from the upstream connection it leased.
protocol UpstreamResponseDelegate: AnyObject {
    func upstreamResponseHead(_ head: HTTPResponseHead)
    func upstreamResponseBody(_ body: ByteBuffer)
    func upstreamResponseEnd(_ trailers: HTTPHeaders?)
    /// The socket has no more to read for now: time to flush what was written downstream.
    func upstreamReadComplete()
    /// The upstream socket's send buffer filled up (or drained): pause (or resume) the client's body.
    func upstreamWritabilityChanged(writable: Bool)
    /// The connection failed or closed before the response ended. `beforeResponse` is true when
    /// not a single response byte had arrived.
    func upstreamFailed(_ error: ProxyError, beforeResponse: Bool)
}

/// One keep-alive HTTP/1.1 connection to an upstream (TLS or plain), confined to its event loop.
/// A request is sent with `send(head:)`/`sendBody`/`sendEnd`; the response goes to the delegate.
final class UpstreamConnection {
    let id: ConnectionPoolStateMachine.ConnectionID
    let channel: Channel
    fileprivate let handler: UpstreamConnectionHandler
    /// Encodes the requests (no encoder handler: bytes go straight to TLS).
    private var writer = HTTPRequestWriter()

    fileprivate init(id: ConnectionPoolStateMachine.ConnectionID, channel: Channel, handler: UpstreamConnectionHandler) {
        self.id = id
        self.channel = channel
        self.handler = handler
    }

    var delegate: UpstreamResponseDelegate? {
        get { handler.delegate }
        set { handler.delegate = newValue }
    }

    /// The server's `Keep-Alive: timeout=` of the last response, and whether it allows reuse.
    var lastResponseKeepAlive: (reusable: Bool, timeout: TimeAmount?) { (handler.reusable, handler.keepAliveTimeout) }

    func send(head: HTTPRequestHead) {
        handler.beginRequest(toHEAD: head.method == .HEAD)
        var bytes = channel.allocator.buffer(capacity: 512)
        writer.writeHead(head, into: &bytes)
        channel.write(bytes, promise: nil)
    }

    func sendBody(_ buffer: ByteBuffer) {
        if let size = writer.chunkPrefix(count: buffer.readableBytes, allocator: channel.allocator) {
            channel.write(size, promise: nil)
            channel.write(buffer, promise: nil)
            channel.write(HTTPWireEncoding.chunkEnd, promise: nil)
        } else if buffer.readableBytes > 0 {
            channel.write(buffer, promise: nil)
        }
    }

    func sendEnd() {
        if let last = writer.end(allocator: channel.allocator) {
            channel.writeAndFlush(last, promise: nil)
        } else {
            channel.flush()
        }
        handler.requestSent()
    }

    func flush() { channel.flush() }

    /// Backpressure from the client: stop (or resume) reading the response.
    func setReadsPaused(_ paused: Bool) { handler.setReadsPaused(paused) }

    /// Closes without reuse (the response was abandoned or broken).
    func close() { channel.close(promise: nil) }

    var isActive: Bool { channel.isActive }

    // MARK: connecting

    struct Settings {
        var url: UpstreamURL
        var sslContext: SSLContext?
        var serverName: String?
        var connectTimeout: TimeAmount
        var tlsHandshakeTimeout: TimeAmount
        var firstByteTimeout: TimeAmount
        var readIdleTimeout: TimeAmount
        var metrics: UpstreamMetrics
        var health: UpstreamHealth
    }

    /// Opens a connection (TCP, then TLS when the URL is https) on `eventLoop` and calls
    /// `completion` on that loop once it can carry a request, or with a `ProxyError` naming what failed.
    static func connect(
        id: ConnectionPoolStateMachine.ConnectionID, settings: Settings, eventLoop: EventLoop,
        onClose: @escaping (ConnectionPoolStateMachine.ConnectionID) -> Void,
        completion: @escaping (Result<UpstreamConnection, ProxyError>) -> Void
    ) {
        let ready = eventLoop.makePromise(of: Void.self)
        let firstByte = settings.firstByteTimeout
        let readIdle = settings.readIdleTimeout
        let handshakeTimeout = settings.tlsHandshakeTimeout
        let tlsContext = settings.sslContext
        let serverName = settings.serverName ?? settings.url.host
        let url = settings.url
        let metrics = settings.metrics
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(settings.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                do {
                    let sync = channel.pipeline.syncOperations
                    if let tlsContext {
                        try sync.addHandler(TLSHandler(client: tlsContext, serverName: serverName, handshakeTimeout: handshakeTimeout))
                    }
                    // Requests are written as bytes (`HTTPRequestWriter`, in UpstreamConnection);
                    // the handler reads the responses with our own strict framing.
                    try sync.addHandler(UpstreamConnectionHandler(
                        ready: ready, tls: tlsContext != nil, firstByteTimeout: firstByte, readIdleTimeout: readIdle, metrics: metrics))
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
        bootstrap.connect(host: url.host, port: url.port).assumeIsolated().whenComplete { result in
            switch result {
            case .failure(let error):
                ready.fail(error)
                completion(.failure(Self.describeConnectError(error, url: url, timeout: settings.connectTimeout)))
            case .success(let channel):
                ready.futureResult.assumeIsolated().whenComplete { handshake in
                    switch handshake {
                    case .failure(let error):
                        channel.close(promise: nil)
                        completion(.failure(Self.describeHandshakeError(error, timeout: handshakeTimeout)))
                    case .success:
                        guard let handler = try? channel.pipeline.syncOperations.handler(type: UpstreamConnectionHandler.self) else {
                            channel.close(promise: nil)
                            completion(.failure(.upstreamClosed("upstream closed the connection right after it opened")))
                            return
                        }
                        let connection = UpstreamConnection(id: id, channel: channel, handler: handler)
                        channel.closeFuture.assumeIsolated().whenComplete { _ in onClose(id) }
                        completion(.success(connection))
                    }
                }
            }
        }
    }

    static func describeConnectError(_ error: Error, url: UpstreamURL, timeout: TimeAmount) -> ProxyError {
        if let e = error as? ChannelError, case .connectTimeout = e {
            return .upstreamTimeout(.connect, after: DurationText.format(timeout))
        }
        if let e = error as? NIOConnectionError {
            if e.dnsAAAAError != nil || e.dnsAError != nil, e.connectionErrors.isEmpty {
                return .upstreamConnect("cannot resolve \(url.host)")
            }
            if let first = e.connectionErrors.first {
                if let io = first.error as? IOError {
                    return .upstreamConnect("\(url.host):\(url.port): \(Self.errnoText(io.errnoCode))")
                }
                if let c = first.error as? ChannelError, case .connectTimeout = c {
                    return .upstreamTimeout(.connect, after: DurationText.format(timeout))
                }
            }
            return .upstreamConnect("\(url.host):\(url.port): connection failed")
        }
        if let io = error as? IOError {
            return .upstreamConnect("\(url.host):\(url.port): \(Self.errnoText(io.errnoCode))")
        }
        if let p = error as? ProxyError { return p }
        return .upstreamConnect("\(url.host):\(url.port): \(error)")
    }

    private static func errnoText(_ code: Int32) -> String {
        switch code {
        case ECONNREFUSED: return "connection refused"
        case ENETUNREACH: return "network unreachable"
        case EHOSTUNREACH: return "host unreachable"
        case ETIMEDOUT: return "timed out"
        default: return String(cString: strerror(code))
        }
    }

    static func describeHandshakeError(_ error: Error, timeout: TimeAmount) -> ProxyError {
        if let t = error as? TLSError {
            if t.kind == .handshakeTimeout { return .upstreamTimeout(.tlsHandshake, after: DurationText.format(timeout)) }
            return .upstreamTLS(t.reason)
        }
        if let p = error as? ProxyError { return p }
        return .upstreamTLS("\(error)")
    }
}

/// The last handler of an upstream pipeline (after TLS): reads the responses
/// (`UpstreamResponseReader`), hands their parts to the leasing exchange, runs the first-byte and
/// read-idle timers, and holds reads while the client cannot take more.
final class UpstreamConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    weak var delegate: UpstreamResponseDelegate?
    private var ready: EventLoopPromise<Void>?
    private let tls: Bool
    private let firstByteTimeout: TimeAmount
    private let readIdleTimeout: TimeAmount
    private var context: ChannelHandlerContext?
    private var timer: Scheduled<Void>?
    private var timerFiresAt: NIODeadline?
    private var deadline: NIODeadline?
    private var deadlineKind: (ProxyError.Timeout, TimeAmount)?
    private var readsPaused = false
    private var pendingRead = false
    private var responseStarted = false
    private var inRequest = false
    private(set) var reusable = true
    private(set) var keepAliveTimeout: TimeAmount?
    /// Told which request each response answers (HEAD's has no body).
    private var reader = UpstreamResponseReader()

    private let metrics: UpstreamMetrics

    init(ready: EventLoopPromise<Void>, tls: Bool, firstByteTimeout: TimeAmount, readIdleTimeout: TimeAmount, metrics: UpstreamMetrics) {
        self.metrics = metrics
        self.ready = ready
        self.tls = tls
        self.firstByteTimeout = firstByteTimeout
        self.readIdleTimeout = readIdleTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if !tls, context.channel.isActive { ready?.succeed(()); ready = nil }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        timer?.cancel()
    }

    func channelActive(context: ChannelHandlerContext) {
        if !tls { ready?.succeed(()); ready = nil }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tlsEvent = event as? TLSEvent, case .handshakeCompleted(_, let resumed, _) = tlsEvent {
            (resumed ? metrics.tlsResumed : metrics.tlsHandshakes).increment()
            ready?.succeed(())
            ready = nil
        }
        context.fireUserInboundEventTriggered(event)
    }

    func beginRequest(toHEAD: Bool) {
        reader.expectResponse(toHEAD: toHEAD)
        inRequest = true
        responseStarted = false
        reusable = true
        keepAliveTimeout = nil
    }

    /// The request's last byte is written: the first-byte timer starts.
    func requestSent() {
        guard inRequest, !responseStarted, let context else { return }
        arm(firstByteTimeout, .firstByte, context: context)
    }

    /// Arms the request's timeout. Lazily: the one scheduled task is moved only when the new
    /// deadline is earlier than the one it will fire at; when it fires early it re-arms itself for
    /// the remaining time. So a streamed response costs one timer, not one per read.
    private func arm(_ amount: TimeAmount, _ which: ProxyError.Timeout, context: ChannelHandlerContext) {
        let deadline = NIODeadline.now() + amount
        self.deadline = deadline
        self.deadlineKind = (which, amount)
        if let scheduled = timerFiresAt, scheduled <= deadline, timer != nil { return }
        schedule(at: deadline, context: context)
    }

    private func disarm() {
        deadline = nil
    }

    private func schedule(at when: NIODeadline, context: ChannelHandlerContext) {
        timer?.cancel()
        timerFiresAt = when
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: when) { [self] in
            self.timer = nil
            self.timerFiresAt = nil
            guard let deadline = self.deadline, let (which, amount) = self.deadlineKind else { return }
            if NIODeadline.now() < deadline {
                self.schedule(at: deadline, context: context)
            } else {
                self.deadline = nil
                self.fail(.upstreamTimeout(which, after: DurationText.format(amount)), context: context)
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        reader.append(unwrapInboundIn(data))
        do {
            while let part = try reader.next() { deliver(part, context: context) }
        } catch {
            errorCaught(context: context, error: error)
        }
    }

    private func deliver(_ part: HTTPClientResponsePart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            responseStarted = true
            if head.status == .continue || (head.status.code >= 100 && head.status.code < 200 && head.status != .switchingProtocols) {
                return  // interim responses are not forwarded (HTTPResponseDecoder passes them through)
            }
            reusable = HeaderPolicy.isKeepAlive(head.headers, version: head.version)
            if let t = HeaderPolicy.keepAliveTimeoutSeconds(head.headers) { keepAliveTimeout = .seconds(Int64(t)) }
            arm(readIdleTimeout, .readIdle, context: context)
            delegate?.upstreamResponseHead(head)
        case .body(let buffer):
            arm(readIdleTimeout, .readIdle, context: context)
            delegate?.upstreamResponseBody(buffer)
        case .end(let trailers):
            disarm()
            inRequest = false
            let d = delegate
            delegate = nil
            d?.upstreamResponseEnd(trailers)
            d?.upstreamReadComplete()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        delegate?.upstreamReadComplete()
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let ready {
            self.ready = nil
            ready.fail(error)
            context.close(promise: nil)
            return
        }
        let proxyError: ProxyError
        if let t = error as? TLSError {
            proxyError = .upstreamClosed("upstream TLS failed: \(t.reason)")
        } else if error is HTTPParserError || error is UpstreamFramingError {
            proxyError = .upstreamProtocol("\(error)")
        } else {
            proxyError = .upstreamClosed("upstream connection failed: \(error)")
        }
        fail(proxyError, context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A body delimited by the connection's end is complete now.
        if let end = reader.inputClosed() { deliver(end, context: context) }
        if let ready {
            self.ready = nil
            ready.fail(TLSError(.closedDuringHandshake, "the upstream closed the connection during the TLS handshake"))
        }
        if inRequest {
            fail(.upstreamClosed(responseStarted
                ? "upstream closed the connection before the response ended"
                : "upstream closed the connection before sending a response"), context: context)
        }
        context.fireChannelInactive()
    }

    private func fail(_ error: ProxyError, context: ChannelHandlerContext) {
        disarm()
        reusable = false
        let wasInRequest = inRequest
        inRequest = false
        let d = delegate
        delegate = nil
        context.close(promise: nil)
        if wasInRequest { d?.upstreamFailed(error, beforeResponse: !responseStarted) }
    }

    // MARK: backpressure

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        delegate?.upstreamWritabilityChanged(writable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if readsPaused { pendingRead = true } else { context.read() }
    }

    func setReadsPaused(_ paused: Bool) {
        readsPaused = paused
        if !paused, pendingRead, let context {
            pendingRead = false
            context.read()
        }
    }
}
