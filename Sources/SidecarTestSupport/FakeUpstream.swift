import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import SidecarTLS

/// A scriptable OpenAI-compatible upstream for tests, on 127.0.0.1 with an ephemeral port, plain
/// or TLS through the project's own `TLSHandler` in server mode.
///
/// It answers `GET /v1/models`, `POST /v1/embeddings` and `POST /v1/chat/completions` (JSON, or SSE
/// when the body asks for `"stream": true`; Azure's `/openai/deployments/D/chat/completions` too),
/// the other dialects' paths as `FakeDialects` says (Anthropic messages, Responses API, Gemini),
/// and obeys per-request directives in headers:
///
/// | header | effect |
/// |---|---|
/// | `x-fake-status: N` | answer with status N (`forcedStatus` overrides it for every request) |
/// | `x-fake-delay-ms: N` | wait N ms before the response head |
/// | `x-fake-body-delay-ms: N` | send the head, wait N ms, then the body |
/// | `x-fake-close: 1` | answer with `Connection: close` and close |
/// | `x-fake-reset: 1` | close the connection without answering |
/// | `x-fake-body: TEXT` | answer with TEXT as the body |
/// | `x-fake-keep-alive: timeout=N` | send that `Keep-Alive` header |
/// | `x-fake-events: N`, `x-fake-interval-ms: M` | SSE: N chunks, M ms apart |
/// | `x-fake-cut-after: K` | SSE: close the connection after K events (no `[DONE]`) |
/// | `x-fake-gzip: when-asked` | gzip the JSON answer if `Accept-Encoding` allows it (a provider behind a CDN) |
/// | `x-fake-gzip: always` | gzip it whatever was asked (a misbehaving upstream) |
///
/// A stream whose request has `"stream_options":{"include_usage":true}` ends with a usage chunk.
///
/// It counts TCP connections, TLS handshakes and resumptions, requests, and the most connections
/// open at once, and records every request it received.
public final class FakeUpstream: Sendable {
    public struct RecordedRequest: Sendable {
        public var method: String
        public var uri: String
        public var headers: [(String, String)]
        public var body: [UInt8]
        public var connection: Int
        public func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    }

    public struct Counters: Sendable {
        public var connectionsAccepted = 0
        public var connectionsOpen = 0
        public var maxConnectionsOpen = 0
        public var handshakes = 0
        public var resumedHandshakes = 0
        public var requests = 0
        /// SSE responses whose connection closed before their last event was written.
        public var streamsAbandoned = 0
        public var streamsCompleted = 0
        /// Times an SSE response found its connection not writable: the peer stopped reading.
        public var backpressureSeen = 0
    }

    /// When true, a request arriving on a connection that already served one is dropped by closing
    /// the connection without an answer: the race where a server closes an idle keep-alive connection.
    public let closeReusedConnections: NIOLockedValueBox<Bool>
    /// When set, every request is answered with this status (and `Retry-After`, if given),
    /// whatever its headers say: a deployment that is down or rate-limited as a whole.
    public let forcedStatus: NIOLockedValueBox<(status: Int, retryAfter: String?)?>
    /// Milliseconds added before every response head: a slow deployment.
    public let extraDelayMs: NIOLockedValueBox<Int64>
    /// The provider's prompt cache, for chat completions; off until `enabled`.
    public let promptCache: FakePromptCache
    let state: NIOLockedValueBox<(Counters, [RecordedRequest])>
    private let channel: Channel
    private let group: EventLoopGroup
    private let ownsGroup: Bool

    public var port: Int { channel.localAddress!.port! }
    public var url: String { "\(tls ? "https" : "http")://127.0.0.1:\(port)" }
    public let tls: Bool
    public var counters: Counters { state.withLockedValue { $0.0 } }

    /// The SSE event number `i` of a streamed chat completion, exactly as sent.
    public static func event(_ i: Int) -> String { FakeUpstreamHandler.event(i) }
    /// The usage chunk a stream with `include_usage` ends with, for a stream of `events` events.
    public static func usageEvent(_ events: Int) -> String { FakeUpstreamHandler.usageEvent(events) }
    public var requests: [RecordedRequest] { state.withLockedValue { $0.1 } }

    /// The canned chat completion (~600 bytes, like a short real answer).
    public static let chatCompletion: String = """
    {"id":"chatcmpl-fake0001","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18",\
    "choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is a canned answer from the fake upstream, long enough to look like a real short completion from a chat model.","refusal":null},\
    "logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":28,"total_tokens":47,\
    "prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0}},\
    "system_fingerprint":"fp_0123456789"}
    """

    private init(channel: Channel, group: EventLoopGroup, ownsGroup: Bool, tls: Bool, closeReused: NIOLockedValueBox<Bool>,
                 forced: NIOLockedValueBox<(status: Int, retryAfter: String?)?>, extraDelay: NIOLockedValueBox<Int64>, promptCache: FakePromptCache,
                 state: NIOLockedValueBox<(Counters, [RecordedRequest])>) {
        self.channel = channel
        self.group = group
        self.ownsGroup = ownsGroup
        self.tls = tls
        self.closeReusedConnections = closeReused
        self.forcedStatus = forced
        self.extraDelayMs = extraDelay
        self.promptCache = promptCache
        self.state = state
    }

    /// Starts listening. `tls`: a server configuration (certificate, optional client CA for mTLS,
    /// optional maximum version), or nil for plain HTTP. `host` and `port`: where to listen (on
    /// Linux all of 127/8 is loopback, so several fakes can share a port as 127.0.0.2, .3, ...,
    /// which is what servers found by DNS look like).
    public static func start(tls: TLSConfiguration? = nil, group: EventLoopGroup? = nil, host: String = "127.0.0.1", port: Int = 0) async throws -> FakeUpstream {
        let ownsGroup = group == nil
        let group = group ?? MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let context = try tls.map { try SSLContext(configuration: $0) }
        let state = NIOLockedValueBox<(Counters, [RecordedRequest])>((Counters(), []))
        let closeReused = NIOLockedValueBox(false)
        let forced = NIOLockedValueBox<(status: Int, retryAfter: String?)?>(nil)
        let extraDelay = NIOLockedValueBox<Int64>(0)
        let promptCache = FakePromptCache()
        let connectionNumbers = NIOLockedValueBox(0)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let number = connectionNumbers.withLockedValue { n -> Int in n += 1; return n }
                state.withLockedValue { s in
                    s.0.connectionsAccepted += 1
                    s.0.connectionsOpen += 1
                    s.0.maxConnectionsOpen = max(s.0.maxConnectionsOpen, s.0.connectionsOpen)
                }
                channel.closeFuture.whenComplete { _ in state.withLockedValue { $0.0.connectionsOpen -= 1 } }
                do {
                    let sync = channel.pipeline.syncOperations
                    if let context { try sync.addHandler(TLSHandler(server: context)) }
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    try sync.addHandler(FakeUpstreamHandler(connection: number, state: state, closeReused: closeReused, forced: forced, extraDelay: extraDelay, promptCache: promptCache))
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .bind(host: host, port: port).get()
        return FakeUpstream(channel: channel, group: group, ownsGroup: ownsGroup, tls: tls != nil, closeReused: closeReused, forced: forced, extraDelay: extraDelay, promptCache: promptCache, state: state)
    }

    public func stop() async {
        try? await channel.close()
        if ownsGroup { try? await group.shutdownGracefully() }
    }
}

final class FakeUpstreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let connection: Int
    private let state: NIOLockedValueBox<(FakeUpstream.Counters, [FakeUpstream.RecordedRequest])>
    private let closeReused: NIOLockedValueBox<Bool>
    private let forced: NIOLockedValueBox<(status: Int, retryAfter: String?)?>
    private let extraDelay: NIOLockedValueBox<Int64>
    private let promptCache: FakePromptCache
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var served = 0
    private var streaming = false
    private var closed = false

    init(connection: Int, state: NIOLockedValueBox<(FakeUpstream.Counters, [FakeUpstream.RecordedRequest])>, closeReused: NIOLockedValueBox<Bool>,
         forced: NIOLockedValueBox<(status: Int, retryAfter: String?)?>, extraDelay: NIOLockedValueBox<Int64>,
         promptCache: FakePromptCache) {
        self.promptCache = promptCache
        self.connection = connection
        self.state = state
        self.closeReused = closeReused
        self.forced = forced
        self.extraDelay = extraDelay
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? TLSEvent, case .handshakeCompleted(_, let resumed, _) = e {
            state.withLockedValue { s in
                s.0.handshakes += 1
                if resumed { s.0.resumedHandshakes += 1 }
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        if streaming { state.withLockedValue { $0.0.streamsAbandoned += 1 } }
        streaming = false
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
        case .body(var b):
            body += b.readBytes(length: b.readableBytes) ?? []
        case .end:
            guard let head else { return }
            self.head = nil
            served += 1
            if served > 1, closeReused.withLockedValue({ $0 }) {
                context.close(promise: nil)
                return
            }
            state.withLockedValue { s in
                s.0.requests += 1
                s.1.append(.init(method: head.method.rawValue, uri: head.uri, headers: head.headers.map { ($0.name, $0.value) }, body: body, connection: connection))
            }
            respond(to: head, body: body, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, body: [UInt8], context: ChannelHandlerContext) {
        let h = head.headers
        if h.first(name: "x-fake-reset") != nil {
            context.close(promise: nil)
            return
        }
        let delay = (h.first(name: "x-fake-delay-ms").flatMap(Int64.init) ?? 0) + extraDelay.withLockedValue { $0 }
        let loop = context.eventLoop.assumeIsolated()
        if delay > 0 {
            loop.scheduleTask(in: .milliseconds(delay)) { [self] in
                if !self.closed { self.answer(head: head, body: body, context: context) }
            }
        } else {
            answer(head: head, body: body, context: context)
        }
    }

    private func answer(head: HTTPRequestHead, body: [UInt8], context: ChannelHandlerContext) {
        let h = head.headers
        let forcedNow = forced.withLockedValue { $0 }
        let status = forcedNow?.status ?? h.first(name: "x-fake-status").flatMap(Int.init) ?? 200
        let close = h.first(name: "x-fake-close") != nil
        var headers = HTTPHeaders()
        if let retryAfter = forcedNow?.retryAfter { headers.add(name: "retry-after", value: retryAfter) }
        headers.add(name: "x-fake-connection", value: String(connection))
        headers.add(name: "x-fake-served", value: String(served))
        if close { headers.add(name: "connection", value: "close") }
        if let ka = h.first(name: "x-fake-keep-alive") { headers.add(name: "keep-alive", value: ka) }

        let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
        let text = String(decoding: body, as: UTF8.self)
        let wantsStream = text.replacingOccurrences(of: " ", with: "").contains("\"stream\":true")
        var dialectAnswer: String?
        if status == 200, let answer = FakeDialects.answer(method: head.method.rawValue, path: path, body: text, headers: h,
                                                                tag: "\(context.channel.localAddress?.port ?? 0)_\(connection)_\(served)") {
            switch answer {
            case .json(let j): dialectAnswer = j
            case .events(let events):
                scripted = events
                streamEvents(headers: headers, requestHeaders: h, close: close, usage: false, context: context)
                return
            }
        }
        // Azure's deployment paths answer as OpenAI's.
        let chat = path == "/v1/chat/completions" || (path.hasPrefix("/openai/deployments/") && path.hasSuffix("/chat/completions"))
        if chat, head.method == .POST, wantsStream, status == 200 {
            let usage = text.replacingOccurrences(of: " ", with: "").contains("\"include_usage\":true")
            streamEvents(headers: headers, requestHeaders: h, close: close, usage: usage, context: context)
            return
        }
        let json: String
        if let dialectAnswer {
            json = dialectAnswer
        } else if status != 200 {
            json = #"{"error":{"message":"fake upstream error \#(status)","type":"server_error","code":null}}"#
        } else {
            switch (head.method, path) {
            case (.GET, "/v1/models"), (.HEAD, "/v1/models"):
                json = #"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1700000000,"owned_by":"fake"}]}"#
            case (.POST, "/v1/embeddings"):
                json = #"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023064255,-0.009327292,0.015797347]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":5,"total_tokens":5}}"#
            case (.POST, _) where chat:
                json = promptCache.answer(body) ?? FakeUpstream.chatCompletion
            case (_, "/v1/echo"):
                json = text
            default:
                json = #"{"error":{"message":"fake upstream has no \#(path)","type":"invalid_request_error","code":"unknown_url"}}"#
            }
        }
        let responseStatus = (status == 200 && json.hasPrefix(#"{"error""#)) ? 404 : status
        var buffer = ByteBuffer(string: h.first(name: "x-fake-body") ?? json)
        let gzip = h.first(name: "x-fake-gzip")
        let acceptsGzip = h[canonicalForm: "accept-encoding"].contains { $0.lowercased().hasPrefix("gzip") }
        if gzip == "always" || (gzip == "when-asked" && acceptsGzip) {
            buffer = ByteBuffer(bytes: Gzip.stored(Array(buffer.readableBytesView)))
            headers.add(name: "content-encoding", value: "gzip")
        }
        headers.add(name: "content-type", value: "application/json")
        if h.first(name: "x-fake-chunked") == nil { headers.add(name: "content-length", value: String(buffer.readableBytes)) }
        if responseStatus == 204 || responseStatus == 304 { headers.remove(name: "content-length") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: responseStatus), headers: headers))), promise: nil)
        if head.method == .HEAD || responseStatus == 204 || responseStatus == 304 {
            let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            if close { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
            return
        }
        let finish = { [self] in
            context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            let done = context.writeAndFlush(self.wrapOutboundOut(.end(nil)))
            if close { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
        }
        if let bodyDelay = h.first(name: "x-fake-body-delay-ms").flatMap(Int64.init) {
            context.flush()
            context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(bodyDelay)) { [self] in
                if !self.closed { finish() }
            }
        } else {
            finish()
        }
    }

    private var streamUsage = false
    /// A stream in another dialect (`FakeDialects`): these events, in place of chat chunks.
    private var scripted: [String]?

    private func streamEvents(headers: HTTPHeaders, requestHeaders h: HTTPHeaders, close: Bool, usage: Bool, context: ChannelHandlerContext) {
        streamUsage = usage
        var headers = headers
        headers.add(name: "content-type", value: "text/event-stream")
        headers.add(name: "cache-control", value: "no-cache")
        let count = scripted.map { $0.count - 1 } ?? h.first(name: "x-fake-events").flatMap(Int.init) ?? 5
        let interval = h.first(name: "x-fake-interval-ms").flatMap(Int64.init) ?? 0
        let cutAfter = h.first(name: "x-fake-cut-after").flatMap(Int.init)
        streaming = true
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
        sendEvent(0, count: count, interval: interval, cutAfter: cutAfter, close: close, context: context)
    }

    /// The final chunk of `stream_options.include_usage`: no choices, the usage (one token per event).
    static func usageEvent(_ events: Int) -> String {
        #"data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":\#(events),"total_tokens":\#(11 + events)}}"# + "\n\n"
    }

    static func event(_ i: Int) -> String {
        #"data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"tok\#(i) "},"finish_reason":null}]}"# + "\n\n"
    }

    private var resume: (() -> Void)?

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let r = resume {
            resume = nil
            r()
        }
        context.fireChannelWritabilityChanged()
    }

    /// Sends events `i..<count`: in a loop when there is no interval, pausing while the peer does
    /// not read (so a test can see backpressure), and on a timer otherwise.
    private func sendEvent(_ i: Int, count: Int, interval: Int64, cutAfter: Int?, close: Bool, context: ChannelHandlerContext) {
        var i = i
        while true {
            guard !closed else { return }
            if let cutAfter, i >= cutAfter {
                context.close(promise: nil)
                return
            }
            if i == count, let last = scripted?.last {
                scripted = nil
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: last)))), promise: nil)
                let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
                streaming = false
                state.withLockedValue { $0.0.streamsCompleted += 1 }
                if close { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
                return
            }
            if i == count {
                if streamUsage { context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: Self.usageEvent(count))))), promise: nil) }
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "data: [DONE]\n\n")))), promise: nil)
                let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
                streaming = false
                state.withLockedValue { $0.0.streamsCompleted += 1 }
                if close { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
                return
            }
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: scripted?[i] ?? Self.event(i))))), promise: nil)
            i += 1
            if interval > 0 {
                let next = i
                context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(interval)) { [self] in
                    self.sendEvent(next, count: count, interval: interval, cutAfter: cutAfter, close: close, context: context)
                }
                return
            }
            if !context.channel.isWritable {
                state.withLockedValue { $0.0.backpressureSeen += 1 }
                let next = i
                resume = { [self] in self.sendEvent(next, count: count, interval: interval, cutAfter: cutAfter, close: close, context: context) }
                return
            }
        }
    }
}

/// RFC 1952 gzip with "stored" (uncompressed) deflate blocks (RFC 1951 §3.2.4): a real gzip
/// stream any client inflates, without a compressor.
public enum Gzip {
    public static func stored(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF]
        var rest = data[...]
        repeat {
            let block = rest.prefix(65_535)
            rest = rest.dropFirst(block.count)
            let n = UInt16(block.count)
            out += [rest.isEmpty ? 1 : 0, UInt8(n & 0xFF), UInt8(n >> 8), UInt8(~n & 0xFF), UInt8(~n >> 8)]
            out += block
        } while !rest.isEmpty
        let crc = crc32(data), size = UInt32(truncatingIfNeeded: data.count)
        for v in [crc, size] { out += [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 24)] }
        return out
    }

    static func crc32(_ data: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in data {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return ~crc
    }
}
