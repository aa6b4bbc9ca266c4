import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 keep-alive client for talking to a local sidecar (the `batch` command): one
/// connection, one request at a time, reconnecting when the server closes it. Plain HTTP over TCP
/// or a unix socket only: it is for the loopback hop, never for the internet.
public final class LocalHTTPClient: Sendable {
    public enum Target: Sendable, CustomStringConvertible {
        case tcp(host: String, port: Int)
        case unix(path: String)

        public var description: String {
            switch self {
            case .tcp(let host, let port): return host.contains(":") ? "http://[\(host)]:\(port)" : "http://\(host):\(port)"
            case .unix(let path): return "unix:\(path)"
            }
        }
    }

    public struct Response: Sendable {
        public var status: Int
        public var headers: HTTPHeaders
        public var body: [UInt8]
    }

    public struct ClientError: Error, CustomStringConvertible {
        public var description: String
    }

    private let group: EventLoopGroup
    private let target: Target
    private let channel = NIOLockedValueBox<Channel?>(nil)

    public init(target: Target, group: EventLoopGroup) {
        self.target = target
        self.group = group
    }

    private func connect() async throws -> Channel {
        if let c = channel.withLockedValue({ $0 }), c.isActive { return c }
        let bootstrap = ClientBootstrap(group: group).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                try channel.pipeline.syncOperations.addHandler(ResponseCollector())
            }
        }
        let c: Channel
        do {
            switch target {
            case .tcp(let host, let port): c = try await bootstrap.connect(host: host, port: port).get()
            case .unix(let path): c = try await bootstrap.connect(unixDomainSocketPath: path).get()
            }
        } catch {
            throw ClientError(description: "cannot connect to the sidecar at \(target): \(Self.reason(error))")
        }
        channel.withLockedValue { $0 = c }
        return c
    }

    /// Sends one request and waits for the whole response (or `timeout`).
    public func request(method: HTTPMethod, path: String, headers: [(String, String)] = [], body: [UInt8]?,
                        timeout: TimeAmount = .seconds(600)) async throws -> Response {
        let c = try await connect()
        let promise = c.eventLoop.makePromise(of: Response.self)
        var h = HTTPHeaders()
        h.add(name: "host", value: "localhost")
        for (k, v) in headers { h.add(name: k, value: v) }
        if let body { h.add(name: "content-length", value: String(body.count)) }
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: h)
        c.eventLoop.execute {
            guard let collector = try? c.pipeline.syncOperations.handler(type: ResponseCollector.self) else {
                promise.fail(ClientError(description: "connection closed"))
                return
            }
            collector.begin(promise, timeout: timeout, channel: c)
            c.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body { c.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
            c.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        return try await promise.futureResult.get()
    }

    /// "connection refused" rather than NIO's nested error description.
    static func reason(_ error: Error) -> String {
        if let io = error as? IOError { return String(cString: strerror(io.errnoCode)).lowercased() }
        if let e = error as? NIOConnectionError {
            for failure in e.connectionErrors { if let io = failure.error as? IOError { return String(cString: strerror(io.errnoCode)).lowercased() } }
            if e.dnsAError != nil || e.dnsAAAAError != nil { return "cannot resolve \(e.host)" }
        }
        return "\(error)"
    }

    public func close() async {
        let c = channel.withLockedValue { c -> Channel? in defer { c = nil }; return c }
        try? await c?.close()
    }
}

/// Collects one response at a time into a promise.
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private var promise: EventLoopPromise<LocalHTTPClient.Response>?
    private var response = LocalHTTPClient.Response(status: 0, headers: [:], body: [])
    private var timer: Scheduled<Void>?

    func begin(_ promise: EventLoopPromise<LocalHTTPClient.Response>, timeout: TimeAmount, channel: Channel) {
        self.promise = promise
        response = .init(status: 0, headers: [:], body: [])
        timer = channel.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            self.fail("no response within \(timeout)")
            channel.close(promise: nil)
        }
    }

    private func fail(_ why: String) {
        timer?.cancel()
        promise?.fail(LocalHTTPClient.ClientError(description: why))
        promise = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            response.status = Int(head.status.code)
            response.headers = head.headers
        case .body(let buffer):
            response.body += buffer.readableBytesView
        case .end:
            timer?.cancel()
            promise?.succeed(response)
            promise = nil
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail("the sidecar closed the connection")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail("\(error)")
        context.close(promise: nil)
    }
}
