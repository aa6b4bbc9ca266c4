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
        guard clientHead.method == .GET, h.first(name: "sec-websocket-key") != nil else {
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
                    try sync.addHandler(RealtimeUpstreamHandler(session: bound.value, tls: tls != nil))
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
                    failBeforeOpen(.upstreamConnect("\(url.host):\(url.port): \(error)"))
                }
            }
        idleTimer = loop.assumeIsolated().scheduleTask(in: group.configuration.connectTimeout + handshakeTimeout + group.configuration.firstByteTimeout) { [self] in
            if phase == .connecting || phase == .handshaking { failBeforeOpen(.upstreamTimeout(.firstByte, after: "the WebSocket handshake")) }
        }
    }

    /// The upgrade request as the upstream gets it: its host and key, the client's other fields,
    /// no compression, and no key in the subprotocols when the upstream has its own.
    func upgradeRequest() -> ByteBuffer {
        let prefix = group.configuration.url.pathPrefix
        var text = "GET \(prefix)\(clientHead.uri) HTTP/1.1\r\nhost: \(group.hostHeader)\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        let credential = group.credential
        for (name, value) in clientHead.headers {
            let lower = name.lowercased()
            if ["host", "upgrade", "connection", "sec-websocket-extensions", "accept-encoding", "content-length"].contains(lower) { continue }
            if HeaderPolicy.isHopByHop(name, connectionTokens: []) { continue }
            if credential != nil, APIDialect.credentialHeaders.contains(lower) { continue }
            if credential != nil, lower == "sec-websocket-protocol" {
                let kept = value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.hasPrefix(Self.keyProtocolPrefix) }
                if !kept.isEmpty { text += "sec-websocket-protocol: \(kept.joined(separator: ", "))\r\n" }
                continue
            }
            text += "\(name): \(value)\r\n"
        }
        if let credential { text += "\(credential.name): \(credential.value)\r\n" }
        if group.configuration.api == .anthropic, clientHead.headers.first(name: "anthropic-version") == nil {
            text += "anthropic-version: \(APIDialect.defaultAnthropicVersion)\r\n"
        }
        return ByteBuffer(string: text + "\r\n")
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

    /// The upstream's answer to the upgrade: a 101 opens the session; anything else is the client's answer.
    func readHandshake() {
        let bytes = handshake.readableBytesView
        guard let headEnd = bytes.firstRange(of: Array("\r\n\r\n".utf8)) else {
            if handshake.readableBytes > 64 << 10 { failBeforeOpen(.upstreamProtocol("the upstream's answer to the WebSocket upgrade has no end of head in 64 KiB")) }
            return
        }
        let headLength = headEnd.upperBound - bytes.startIndex
        let head = String(decoding: bytes.prefix(headLength), as: UTF8.self)
        let status = head.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) } ?? 0
        guard status == 101 else {
            // Its own status and body (a 401 for a bad key, a 404 for a path it has not): read
            // until its Content-Length, or the close.
            let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? -1
            let body = handshake.readableBytes - headLength
            if length >= 0, body < length, body < 1 << 20 { return }
            return passRefusal(status: status, head: head)
        }
        phase = .open
        var rest = handshake
        let answer = rest.readSlice(length: headLength)!
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
    func passRefusal(status: Int, head: String) {
        var body = handshake
        body.moveReaderIndex(forwardBy: head.utf8.count)
        let contentType = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-type:") }
            .map { String($0.dropFirst("content-type:".count)).trimmingCharacters(in: .whitespaces) } ?? "application/json"
        phase = .closed
        upstream?.close(promise: nil)
        idleTimer?.cancel()
        state.requestFinished()
        downstream.connection.closeAfterResponse()
        downstream.tunnel = nil
        downstream.respondLocally(status: HTTPResponseStatus(statusCode: status == 0 ? 502 : status), contentType: contentType, body: body, headOnly: false)
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

    init(session: RealtimeSession, tls: Bool) {
        self.session = session
        self.tls = tls
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
        if session.phase != .open { session.failBeforeOpen(.upstreamConnect("\(error)")) }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch session.phase {
        case .connecting, .handshaking:
            if session.phase == .handshaking, session.handshake.readableBytes > 0 {
                // An answer without Content-Length ends with the connection.
                let bytes = session.handshake.readableBytesView
                if let end = bytes.firstRange(of: Array("\r\n\r\n".utf8)) {
                    let head = String(decoding: bytes.prefix(end.upperBound - bytes.startIndex), as: UTF8.self)
                    let status = head.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) } ?? 0
                    if status != 101 { session.passRefusal(status: status, head: head) }
                }
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
