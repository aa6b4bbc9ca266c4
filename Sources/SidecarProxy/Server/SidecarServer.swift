import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import SidecarCore

/// The listening proxy: binds the configured address, serves every client connection with a
/// `DownstreamHandler`, and stops gracefully (stop accepting, let in-flight requests finish up to
/// the drain timeout, then close what is left).
public final class SidecarServer: Sendable {
    private let runtime: ProxyRuntime
    private let serverChannel: Channel
    private let children = NIOLockedValueBox<[ObjectIdentifier: Channel]>([:])
    private let logger: Logger

    /// Where the server actually listens (with the real port when the configuration said 0).
    public var localAddress: SocketAddress? { serverChannel.localAddress }

    /// Requests being served right now, across every thread.
    public var requestsInFlight: Int { runtime.requestsInFlight }

    /// Requests served since start.
    public var requestsTotal: Int { runtime.requestsTotal }

    private init(runtime: ProxyRuntime, serverChannel: Channel, logger: Logger) {
        self.runtime = runtime
        self.serverChannel = serverChannel
        self.logger = logger
    }

    /// Builds the upstream groups (TLS contexts, pools on every loop) and binds the listener.
    /// - Parameter apiKeys: upstream name -> key, from `APIKeys.resolve` (never from the file).
    public static func start(
        configuration: SidecarConfiguration, apiKeys: [String: String], group: MultiThreadedEventLoopGroup, logger: Logger,
        inheritedListener: Int32? = nil
    ) async throws -> SidecarServer {
        let loops = Array(group.makeIterator())
        var groups: [String: UpstreamGroup] = [:]
        for upstream in configuration.upstreams {
            groups[upstream.name] = try UpstreamGroup(configuration: upstream, apiKey: apiKeys[upstream.name], eventLoops: loops)
        }
        let runtime = ProxyRuntime(configuration: configuration, groups: groups)
        let box = ChildRegistry()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                box.register(channel)
                do {
                    let sync = channel.pipeline.syncOperations
                    try sync.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: false)
                    try sync.addHandler(DownstreamHandler(runtime: runtime))
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
        let channel: Channel
        if let fd = inheritedListener {
            channel = try await bootstrap.withBoundSocket(fd).get()
        } else {
          switch configuration.server.listen {
        case .tcp(let host, let port):
            channel = try await bootstrap.bind(host: host, port: port).get()
        case .unix(let path):
            channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
          }
        }
        let server = SidecarServer(runtime: runtime, serverChannel: channel, logger: logger)
        box.server = server
        return server
    }

    fileprivate func register(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        children.withLockedValue { $0[id] = channel }
        channel.closeFuture.whenComplete { [children] _ in
            _ = children.withLockedValue { $0.removeValue(forKey: id) }
        }
    }

    /// Graceful stop: stop accepting, ask keep-alive clients to close after their current request,
    /// wait for in-flight requests up to `drainTimeout`, then close everything and the pools.
    public func shutdown(drainTimeout: TimeAmount) async {
        runtime.startDraining()
        try? await serverChannel.close()
        let open = children.withLockedValue { Array($0.values) }
        for channel in open {
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
        let deadline = NIODeadline.now() + drainTimeout
        while runtime.requestsInFlight > 0, NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
        if runtime.requestsInFlight > 0 {
            logger.warning("drain timeout: closing requests still in flight", metadata: ["in-flight": "\(runtime.requestsInFlight)"])
        }
        let remaining = children.withLockedValue { Array($0.values) }
        for channel in remaining { try? await channel.close() }
        for group in runtime.groups.values { try? await group.shutdown().get() }
    }
}

/// Lets the child initializer register channels with a server that does not exist yet when the
/// bootstrap is built (connections cannot arrive before `bind` returns, so `server` is set first).
private final class ChildRegistry: Sendable {
    private let _server = NIOLockedValueBox<SidecarServer?>(nil)
    var server: SidecarServer? {
        get { _server.withLockedValue { $0 } }
        set { _server.withLockedValue { $0 = newValue } }
    }
    func register(_ channel: Channel) { server?.register(channel) }
}

/// Reads upstream API keys from where the configuration says: an environment variable or a file
/// (e.g. a systemd credential). Keys never come from the configuration file and are never logged.
public enum APIKeys {
    public static func resolve(
        _ configuration: SidecarConfiguration, environment: [String: String]
    ) throws -> [String: String] {
        var keys: [String: String] = [:]
        for upstream in configuration.upstreams {
            switch upstream.apiKey {
            case .none: continue
            case .environment(let name):
                guard let v = environment[name], !v.isEmpty else {
                    throw ConfigurationError(key: "upstreams.\(upstream.name).api_key_env", problem: "environment variable \(name) is not set")
                }
                keys[upstream.name] = v.trimmingCharacters(in: .whitespacesAndNewlines)
            case .file(let path):
                guard let data = FileManager.default.contents(atPath: path),
                      let text = String(data: data, encoding: .utf8)?.trimmingCharacters(in: .whitespacesAndNewlines), !text.isEmpty else {
                    throw ConfigurationError(key: "upstreams.\(upstream.name).api_key_file", problem: "cannot read a key from \(path)")
                }
                keys[upstream.name] = text
            }
        }
        return keys
    }
}
