import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import SidecarTLS

/// A Realtime API upstream for tests, on 127.0.0.1: NIO's own WebSocket server (independent of
/// the sidecar's relay), plain or TLS. It upgrades `GET /v1/realtime` (choosing the `realtime`
/// subprotocol when offered), sends `session.created`, and answers:
///
/// | client message | answer |
/// |---|---|
/// | `response.create` | `response.created`, three `response.output_text.delta`, `response.done` with usage (40 input, 32 of them cached; 12 output) |
/// | `test.flood` with `"bytes": N` | N bytes in binary frames of 64 KiB, pausing while the relay does not read (counted) |
/// | a close | the same close back, then closes |
///
/// It records each session's upgrade request, the client text messages it received, and the
/// close codes it was sent.
public final class FakeRealtime: Sendable {
    public struct Session: Sendable {
        public var uri: String
        public var headers: [(String, String)]
        public var messages: [String] = []
        public var closeCodes: [UInt16] = []
        public func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    }

    public let sessions: NIOLockedValueBox<[Session]>
    /// Times a flood found its connection not writable: the relay stopped reading.
    public let backpressureSeen: NIOLockedValueBox<Int>
    private let channel: Channel
    private let group: EventLoopGroup
    public var port: Int { channel.localAddress!.port! }
    public let tls: Bool
    public var url: String { "\(tls ? "https" : "http")://127.0.0.1:\(port)" }

    private init(channel: Channel, group: EventLoopGroup, tls: Bool, sessions: NIOLockedValueBox<[Session]>, backpressure: NIOLockedValueBox<Int>) {
        self.channel = channel
        self.group = group
        self.tls = tls
        self.sessions = sessions
        self.backpressureSeen = backpressure
    }

    public static func start(tls: TLSConfiguration? = nil) async throws -> FakeRealtime {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let context = try tls.map { try SSLContext(configuration: $0) }
        let sessions = NIOLockedValueBox<[Session]>([])
        let backpressure = NIOLockedValueBox(0)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let upgrader = NIOWebSocketServerUpgrader(maxFrameSize: 1 << 24, shouldUpgrade: { channel, head in
                    guard head.uri.hasPrefix("/v1/realtime") else { return channel.eventLoop.makeSucceededFuture(nil) }
                    var headers = HTTPHeaders()
                    let offered = head.headers[canonicalForm: "sec-websocket-protocol"].map { $0.trimmingCharacters(in: .whitespaces) }
                    if offered.contains("realtime") { headers.add(name: "sec-websocket-protocol", value: "realtime") }
                    return channel.eventLoop.makeSucceededFuture(headers)
                }, upgradePipelineHandler: { channel, head in
                    let index = sessions.withLockedValue { s -> Int in
                        s.append(Session(uri: head.uri, headers: head.headers.map { ($0.name, $0.value) }))
                        return s.count - 1
                    }
                    do {
                        try channel.pipeline.syncOperations.addHandler(FakeRealtimeHandler(index: index, sessions: sessions, backpressure: backpressure))
                        return channel.eventLoop.makeSucceededVoidFuture()
                    } catch {
                        return channel.eventLoop.makeFailedFuture(error)
                    }
                })
                do {
                    let sync = channel.pipeline.syncOperations
                    if let context { try sync.addHandler(TLSHandler(server: context)) }
                    try sync.configureHTTPServerPipeline(withServerUpgrade: (upgraders: [upgrader], completionHandler: { context in
                        context.pipeline.removeHandler(name: "fake-404", promise: nil)
                    }))
                    try sync.addHandler(FakeNotFoundHandler(), name: "fake-404")
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return FakeRealtime(channel: channel, group: group, tls: tls != nil, sessions: sessions, backpressure: backpressure)
    }

    public func stop() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }

    /// The `response.done` the fake sends.
    public static let responseDone = #"{"type":"response.done","event_id":"ev_4","response":{"id":"resp_rt1","object":"realtime.response","status":"completed","output":[],"usage":{"total_tokens":52,"input_tokens":40,"output_tokens":12,"input_token_details":{"cached_tokens":32,"text_tokens":40,"audio_tokens":0},"output_token_details":{"text_tokens":12,"audio_tokens":0}}}}"#
}

final class FakeRealtimeHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let index: Int
    private let sessions: NIOLockedValueBox<[FakeRealtime.Session]>
    private let backpressure: NIOLockedValueBox<Int>
    private var text: [UInt8] = []
    private var flood = 0
    private var closed = false

    init(index: Int, sessions: NIOLockedValueBox<[FakeRealtime.Session]>, backpressure: NIOLockedValueBox<Int>) {
        self.index = index
        self.sessions = sessions
        self.backpressure = backpressure
    }

    func handlerAdded(context: ChannelHandlerContext) {
        send(#"{"type":"session.created","event_id":"ev_0","session":{"id":"sess_1","object":"realtime.session","model":"gpt-realtime","type":"realtime"}}"#, context: context)
        context.flush()
    }

    private func send(_ json: String, context: ChannelHandlerContext) {
        let data = context.channel.allocator.buffer(string: json)
        context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: data)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .connectionClose:
            var payload = frame.unmaskedData
            let code = payload.readInteger(as: UInt16.self) ?? 1005
            sessions.withLockedValue { $0[index].closeCodes.append(code) }
            guard !closed else { return }
            closed = true
            var back = context.channel.allocator.buffer(capacity: 2)
            back.writeInteger(code)
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: back))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .text, .continuation:
            text += frame.unmaskedData.readableBytesView
            frame.data = ByteBuffer()
            guard frame.fin else { return }
            let message = String(decoding: text, as: UTF8.self)
            text = []
            sessions.withLockedValue { $0[index].messages.append(message) }
            answer(message, context: context)
        default:
            break
        }
    }

    private func answer(_ message: String, context: ChannelHandlerContext) {
        let compact = message.replacingOccurrences(of: " ", with: "")
        if compact.contains(#""type":"response.create""#) {
            send(#"{"type":"response.created","event_id":"ev_1","response":{"id":"resp_rt1","object":"realtime.response","status":"in_progress","output":[]}}"#, context: context)
            for i in 0..<3 {
                send(#"{"type":"response.output_text.delta","event_id":"ev_d\#(i)","response_id":"resp_rt1","item_id":"item_1","output_index":0,"content_index":0,"delta":"tok\#(i) "}"#, context: context)
            }
            send(FakeRealtime.responseDone, context: context)
            context.flush()
        } else if compact.contains(#""type":"test.flood""#), let range = compact.range(of: #""bytes":"#) {
            flood = Int(compact[range.upperBound...].prefix { $0.isNumber }) ?? 0
            pump(context: context)
        }
    }

    /// Sends the flood while the connection takes it.
    private func pump(context: ChannelHandlerContext) {
        while flood > 0 {
            guard context.channel.isWritable else {
                backpressure.withLockedValue { $0 += 1 }
                return
            }
            let n = min(flood, 64 << 10)
            flood -= n
            let data = context.channel.allocator.buffer(repeating: 0x61, count: n)
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .binary, data: data)), promise: nil)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { pump(context: context) }
        context.fireChannelWritabilityChanged()
    }
}

/// What the fake answers a request it does not upgrade: 404, as a provider answers a path it has not.
final class FakeNotFoundHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .end = unwrapInboundIn(data) else { return }
        let body = ByteBuffer(string: #"{"error":{"message":"fake realtime upstream: no WebSocket here","type":"invalid_request_error","code":"not_found"}}"#)
        var headers = HTTPHeaders([("content-type", "application/json"), ("content-length", String(body.readableBytes))])
        headers.add(name: "connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .notFound, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}
