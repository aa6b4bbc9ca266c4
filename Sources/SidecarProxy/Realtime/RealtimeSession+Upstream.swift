import NIOCore
import NIOHTTP1
import NIOPosix
import SidecarCore
import SidecarTLS

/// The session's upstream connection: connect, the upgrade request, the upstream's answer.
extension RealtimeSession {
    /// Checks the client's upgrade and connects upstream (on the client's loop).
    func start() {
        let h = clientHead.headers
        guard h.first(name: "sec-websocket-key") != nil else {
            return downstream.respondWithError(.badRequest("a WebSocket upgrade is a GET with Sec-WebSocket-Key (RFC 6455 §4.1)"), closeAfter: true)
        }
        guard h.first(name: "sec-websocket-version") == "13" else {
            return downstream.respondWithError(.badRequest("WebSocket version \(h.first(name: "sec-websocket-version") ?? "(none)") is not 13, the only one relayed"),
                                               closeAfter: true, extraHeaders: [("sec-websocket-version", "13")])
        }
        state.requestStarted()
        let url = group.configuration.url
        let tls = group.sslContext
        let serverName = group.configuration.serverName ?? url.host
        let handshakeTimeout = group.configuration.tlsHandshakeTimeout
        let loop = downstream.eventLoop!
        let bound = NIOLoopBound(self, eventLoop: loop)
        ClientBootstrap(group: loop)
            .connectTimeout(group.configuration.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                do {
                    let sync = channel.pipeline.syncOperations
                    if let tls { try sync.addHandler(TLSHandler(client: tls, serverName: serverName, handshakeTimeout: handshakeTimeout)) }
                    try sync.addHandler(RealtimeUpstreamHandler(session: bound.value, tls: tls != nil, handshakeTimeout: handshakeTimeout))
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(host: url.host, port: url.port).assumeIsolated().whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    upstream = channel
                    if phase == .closed { channel.close(promise: nil) }
                case .failure(let error):
                    failBeforeOpen(UpstreamConnection.describeConnectError(error, url: url, timeout: group.configuration.connectTimeout))
                }
            }
        idleTimer = loop.assumeIsolated().scheduleTask(in: group.configuration.connectTimeout + handshakeTimeout + group.configuration.firstByteTimeout) { [self] in
            if phase == .connecting || phase == .handshaking { failBeforeOpen(.upstreamTimeout(.firstByte, after: "the WebSocket handshake")) }
        }
    }

    /// The upgrade request as the upstream gets it: the headers every forwarded request gets
    /// (`HeaderPolicy`: its host and key, hop-by-hop removed), the upgrade's own hop-by-hop pair
    /// put back, no compression (`Sec-WebSocket-Extensions` removed: the sidecar reads the
    /// messages), and no key in the subprotocols when the upstream has its own.
    func upgradeRequest() -> ByteBuffer {
        var headers = HeaderPolicy.upstreamRequestHeaders(from: clientHead.headers, host: group.hostHeader,
                                                          credential: group.credential, dialect: group.configuration.api)
        headers.remove(name: "accept-encoding")
        headers.remove(name: "sec-websocket-extensions")
        if group.credential != nil {
            let kept = headers[canonicalForm: "sec-websocket-protocol"].map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { !$0.hasPrefix(Self.keyProtocolPrefix) }
            headers.remove(name: "sec-websocket-protocol")
            if !kept.isEmpty { headers.add(name: "sec-websocket-protocol", value: kept.joined(separator: ", ")) }
        }
        headers.add(name: "upgrade", value: "websocket")
        headers.add(name: "connection", value: "Upgrade")
        let prefix = group.configuration.url.pathPrefix
        var writer = HTTPRequestWriter()
        var buffer = ByteBuffer()
        writer.writeHead(HTTPRequestHead(version: .http1_1, method: .GET, uri: prefix + clientHead.uri, headers: headers), into: &buffer)
        return buffer
    }

    /// The upstream connection can carry the request (TCP up, TLS done).
    func upstreamReady(_ channel: Channel) {
        guard phase == .connecting else { return }
        phase = .handshaking
        upstream = channel
        channel.writeAndFlush(upgradeRequest(), promise: nil)
    }

    func fromUpstream(_ buffer: ByteBuffer) {
        lastFrame = .now()
        switch phase {
        case .open:
            upstreamFrames.append(buffer)
            relayUpstreamFrames()
        case .handshaking:
            var buffer = buffer
            handshake.writeBuffer(&buffer)
            readHandshake()
        case .connecting, .closed:
            return
        }
    }

    /// The upstream's answer to the upgrade, read by the strict response scanner: a 101 opens the
    /// session; anything else is the client's answer (once its body is here); a head the scanner
    /// refuses is a 502, never forwarded.
    func readHandshake() {
        if handshakeHead == nil {
            do {
                handshakeHead = try handshakeScanner.scan(handshake)
            } catch {
                return failBeforeOpen(.upstreamProtocol("the upstream's answer to the WebSocket upgrade is malformed: \(error.reason)"))
            }
        }
        guard let head = handshakeHead else { return }
        guard head.kind == .switchingProtocols else {
            // Its own status and body (a 401 for a bad key, a 404 for a path it has not): read
            // until its Content-Length, or the close.
            if head.isChunked {
                return failBeforeOpen(.upstreamProtocol("the upstream refused the WebSocket upgrade with status \(head.status)"))
            }
            let body = handshake.readableBytes - head.length
            if let length = head.contentLength, body < length, body < 1 << 20 { return }
            if head.contentLength == nil, head.status >= 200, head.status != 204, head.status != 304 { return }  // until the close
            return passRefusal(head)
        }
        phase = .open
        var rest = handshake
        let answer = rest.readSlice(length: head.length)!
        handshake = ByteBuffer()
        downstream.acceptTunnel(answer)
        idleTimer?.cancel()
        armIdleTimer(after: settings.websocketIdleTimeout)
        maxTimer = downstream.eventLoop.assumeIsolated().scheduleTask(in: settings.websocketMaxDuration) { [self] in
            end(code: 1001, "the session reached server.websocket_max_duration")
        }
        if rest.readableBytes > 0 { upstreamFrames.append(rest) }
        relayUpstreamFrames()
        relayClientFrames()
    }

    func armIdleTimer(after timeout: TimeAmount) {
        idleTimer = downstream.eventLoop.assumeIsolated().scheduleTask(deadline: lastFrame + timeout) { [self] in
            guard phase == .open else { return }
            if NIODeadline.now() - lastFrame >= timeout { return end(code: 1001, "no frame for server.websocket_idle_timeout") }
            armIdleTimer(after: timeout)
        }
    }

    /// The upstream refused the upgrade: the client gets its status and body.
    func passRefusal(_ head: ScannedResponseHead) {
        var body = handshake
        body.moveReaderIndex(forwardBy: head.length)
        if let length = head.contentLength, body.readableBytes > length { body = body.getSlice(at: body.readerIndex, length: length)! }
        let contentType = head.contentType.flatMap { handshake.getString(at: handshake.readerIndex + $0.lowerBound, length: $0.count) }
        phase = .closed
        upstream?.close(promise: nil)
        idleTimer?.cancel()
        state.requestFinished()
        downstream.connection.closeAfterResponse()
        downstream.tunnel = nil
        downstream.respondLocally(status: HTTPResponseStatus(statusCode: head.status), contentType: contentType ?? "application/json",
                                  body: body, headOnly: false)
    }

    /// The session could not open: the client gets an OpenAI-shaped error naming why.
    func failBeforeOpen(_ error: ProxyError) {
        guard phase == .connecting || phase == .handshaking else { return }
        phase = .closed
        upstream?.close(promise: nil)
        idleTimer?.cancel()
        state.requestFinished()
        downstream.tunnel = nil
        downstream.respondWithError(error, closeAfter: true)
    }
}

/// The upstream connection's handler: bytes to the session, reads only when the client takes writes.
final class RealtimeUpstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let session: RealtimeSession
    private let tls: Bool
    private let handshakeTimeout: TimeAmount

    init(session: RealtimeSession, tls: Bool, handshakeTimeout: TimeAmount) {
        self.session = session
        self.tls = tls
        self.handshakeTimeout = handshakeTimeout
    }

    func channelActive(context: ChannelHandlerContext) {
        if !tls { session.upstreamReady(context.channel) }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? TLSEvent, case .handshakeCompleted = e { session.upstreamReady(context.channel) }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        session.fromUpstream(unwrapInboundIn(data))
    }

    /// Reads go on only while the client takes writes (`clientWritabilityChanged` resumes them).
    func read(context: ChannelHandlerContext) {
        if session.phase != .open || session.upstreamWantsRead() { context.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        session.upstreamWritabilityChanged(writable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if session.phase != .open { session.failBeforeOpen(UpstreamConnection.describeHandshakeError(error, timeout: handshakeTimeout)) }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch session.phase {
        case .connecting, .handshaking:
            // An answer without Content-Length ends with the connection.
            if session.phase == .handshaking, let head = session.handshakeHead, head.kind != .switchingProtocols, !head.isChunked {
                session.passRefusal(head)
            }
            session.failBeforeOpen(.upstreamClosed("the upstream closed the connection during the WebSocket handshake"))
        case .open:
            session.closed(outcome: "upstream_closed")
        case .closed:
            break
        }
        context.fireChannelInactive()
    }
}
