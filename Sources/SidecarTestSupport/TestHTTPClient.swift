import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// A response as a test sees it: status, headers, body, the body's parts with their arrival times,
/// and whether the response ended properly (false when the connection closed mid-body).
public struct TestResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: String
    /// (nanoseconds since the request was sent, text) for each body read.
    public var parts: [(UInt64, String)]
    public var complete: Bool

    public func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
}

public struct TestClientError: Error, CustomStringConvertible {
    public var description: String
}

/// A plain HTTP/1.1 client connection for tests: sequential requests on one keep-alive connection.
public final class TestHTTPConnection: Sendable {
    private let channel: Channel
    private let handler: NIOLoopBound<TestClientHandler>

    private init(channel: Channel, handler: NIOLoopBound<TestClientHandler>) {
        self.channel = channel
        self.handler = handler
    }

    public static func connect(host: String = "127.0.0.1", port: Int, group: EventLoopGroup) async throws -> TestHTTPConnection {
        try await connect(group: group) { try await $0.connect(host: host, port: port).get() }
    }

    public static func connect(unixPath: String, group: EventLoopGroup) async throws -> TestHTTPConnection {
        try await connect(group: group) { try await $0.connect(unixDomainSocketPath: unixPath).get() }
    }

    private static func connect(group: EventLoopGroup, _ open: (ClientBootstrap) async throws -> Channel) async throws -> TestHTTPConnection {
        let bootstrap = ClientBootstrap(group: group)
            .channelInitializer { channel in
                do {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(TestClientHandler())
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch { return channel.eventLoop.makeFailedFuture(error) }
            }
        let channel = try await open(bootstrap)
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: TestClientHandler.self), eventLoop: channel.eventLoop)
        }.get()
        return TestHTTPConnection(channel: channel, handler: handler)
    }

    /// Sends one request and waits for its response. `closeAfterParts`: close the connection after
    /// that many body parts arrived (a client that goes away mid-stream).
    public func request(
        _ method: String, _ path: String, headers: [(String, String)] = [], body: String? = nil,
        closeAfterParts: Int? = nil, timeout: TimeAmount = .seconds(20)
    ) async throws -> TestResponse {
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: TestResponse.self)
        let channel = self.channel
        let handler = self.handler
        loop.execute {
            var h = HTTPHeaders()
            h.add(name: "host", value: "localhost")
            for (k, v) in headers { h.add(name: k, value: v) }
            let bodyBuffer = body.map { ByteBuffer(string: $0) }
            if let bodyBuffer, !h.contains(name: "content-length"), !h.contains(name: "transfer-encoding") {
                h.add(name: "content-length", value: String(bodyBuffer.readableBytes))
            }
            handler.value.begin(promise: promise, closeAfterParts: closeAfterParts, timeout: timeout, context: channel)
            channel.write(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: path, headers: h)), promise: nil)
            if let bodyBuffer { channel.write(HTTPClientRequestPart.body(.byteBuffer(bodyBuffer)), promise: nil) }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        return try await promise.futureResult.get()
    }

    public var isOpen: Bool { channel.isActive }

    public func close() async {
        try? await channel.close()
    }
}

final class TestClientHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private var promise: EventLoopPromise<TestResponse>?
    private var response = TestResponse(status: 0, headers: [], body: "", parts: [], complete: false)
    private var started: UInt64 = 0
    private var closeAfterParts: Int?
    private var timer: Scheduled<Void>?
    private var channel: Channel?

    func begin(promise: EventLoopPromise<TestResponse>, closeAfterParts: Int?, timeout: TimeAmount, context channel: Channel) {
        self.promise = promise
        self.closeAfterParts = closeAfterParts
        self.channel = channel
        response = TestResponse(status: 0, headers: [], body: "", parts: [], complete: false)
        started = NIODeadline.now().uptimeNanoseconds
        timer = channel.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            self.promise?.fail(TestClientError(description: "no complete response within \(timeout)"))
            self.promise = nil
            channel.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            response.status = Int(head.status.code)
            response.headers = head.headers.map { ($0.name, $0.value) }
        case .body(let buffer):
            let text = String(buffer: buffer)
            response.body += text
            response.parts.append((NIODeadline.now().uptimeNanoseconds - started, text))
            if let n = closeAfterParts, response.parts.count >= n {
                finish()
                context.close(promise: nil)
            }
        case .end:
            response.complete = true
            finish()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if promise != nil {
            if response.status == 0 {
                timer?.cancel()
                promise?.fail(TestClientError(description: "connection closed before a response"))
                promise = nil
            } else {
                finish()
            }
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    private func finish() {
        timer?.cancel()
        promise?.succeed(response)
        promise = nil
    }
}

/// Raw bytes over TCP, for malformed requests: writes `bytes`, returns everything read until the
/// server closes the connection (or `timeout`).
public enum RawTCP {
    /// With `then`: once the text `after` has arrived, sends `then` too (e.g. a body after
    /// `100 Continue`).
    public static func exchange(port: Int, bytes: [UInt8], group: EventLoopGroup, timeout: TimeAmount = .seconds(5),
                                then: [UInt8]? = nil, after: String = "") async throws -> String {
        try await converse(port: port, bytes: bytes, group: group, timeout: timeout, then: then, after: after).text
    }

    /// What `converse` read, and whether the server closed the connection before the timeout.
    public struct Answer: Sendable {
        public var text: String
        public var serverClosed: Bool
    }

    /// `exchange`, also saying whether the server closed the connection (rather than the timeout).
    public static func converse(port: Int, bytes: [UInt8], group: EventLoopGroup, timeout: TimeAmount = .seconds(5),
                                then: [UInt8]? = nil, after: String = "") async throws -> Answer {
        let collected = NIOLockedValueBox<[UInt8]>([])
        let timedOut = NIOLockedValueBox(false)
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(collected))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
        if let then {
            let deadline = NIODeadline.now() + timeout
            while NIODeadline.now() < deadline, !String(decoding: collected.withLockedValue { $0 }, as: UTF8.self).contains(after) {
                try await Task.sleep(nanoseconds: 5_000_000)
            }
            try await channel.writeAndFlush(ByteBuffer(bytes: then))
        }
        let closed = channel.closeFuture
        let timer = channel.eventLoop.scheduleTask(in: timeout) {
            timedOut.withLockedValue { $0 = true }
            channel.close(promise: nil)
        }
        try? await closed.get()
        timer.cancel()
        return Answer(text: String(decoding: collected.withLockedValue { $0 }, as: UTF8.self), serverClosed: !timedOut.withLockedValue { $0 })
    }

    final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let box: NIOLockedValueBox<[UInt8]>
        init(_ box: NIOLockedValueBox<[UInt8]>) { self.box = box }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var b = unwrapInboundIn(data)
            let bytes = b.readBytes(length: b.readableBytes) ?? []
            box.withLockedValue { $0 += bytes }
        }
    }
}

/// A client that sends a request and then does not read until told to: for backpressure tests.
public final class PausedReader: Sendable {
    private let channel: Channel
    private let collected: NIOLockedValueBox<[UInt8]>

    private init(channel: Channel, collected: NIOLockedValueBox<[UInt8]>) {
        self.channel = channel
        self.collected = collected
    }

    public static func send(port: Int, request: String, group: EventLoopGroup) async throws -> PausedReader {
        let collected = NIOLockedValueBox<[UInt8]>([])
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.autoRead, value: false)
            .channelOption(.socketOption(.so_rcvbuf), value: 16 * 1024)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RawTCP.Collector(collected))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(ByteBuffer(string: request))
        return PausedReader(channel: channel, collected: collected)
    }

    /// Starts reading, and returns everything received once the server closes the connection.
    public func readToEnd(timeout: TimeAmount = .seconds(30)) async throws -> String {
        try await channel.setOption(.autoRead, value: true).get()
        channel.read()
        let channel = self.channel
        let timer = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        try? await channel.closeFuture.get()
        timer.cancel()
        return String(decoding: collected.withLockedValue { $0 }, as: UTF8.self)
    }
}
