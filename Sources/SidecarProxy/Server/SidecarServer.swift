import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Metrics
import SidecarCore

/// The listening proxy: binds the configured address, serves every client connection with a
/// `DownstreamHandler`, and stops gracefully (stop accepting, let in-flight requests finish up to
/// the drain timeout, then close what is left).
public final class SidecarServer: Sendable {
    let state: ServerState
    private let loops: [EventLoop]
    private let serverChannel: Channel
    private let children = NIOLockedValueBox<[ObjectIdentifier: Channel]>([:])
    private let logger: Logger
    /// The fleet agent's task (connection pool and sync rounds), cancelled at the end of a stop.
    let fleetTask = NIOLockedValueBox<Task<Void, Never>?>(nil)

    /// Where the server actually listens (with the real port when the configuration said 0).
    public var localAddress: SocketAddress? { serverChannel.localAddress }

    /// Requests being served right now, across every thread.
    public var requestsInFlight: Int { state.requestsInFlight }

    /// Requests served since start.
    public var requestsTotal: Int { state.requestsTotal }

    /// The configuration new requests are served with.
    public var configuration: SidecarConfiguration { state.runtime.configuration }

    private init(state: ServerState, loops: [EventLoop], serverChannel: Channel, logger: Logger) {
        self.state = state
        self.loops = loops
        self.serverChannel = serverChannel
        self.logger = logger
    }

    /// Builds the upstream groups (TLS contexts, pools on every loop) and binds the listener.
    /// - Parameter apiKeys: upstream name -> key, from `APIKeys.resolve` (never from the file).
    public static func start(
        configuration: SidecarConfiguration, apiKeys: [String: String], group: MultiThreadedEventLoopGroup, logger: Logger,
        inheritedListener: Int32? = nil, cacheClock: (@Sendable () -> Int64)? = nil
    ) async throws -> SidecarServer {
        let loops = Array(group.makeIterator())
        let metrics = SidecarMetrics()
        var groups: [String: UpstreamGroup] = [:]
        for upstream in configuration.upstreams {
            groups[upstream.name] = try UpstreamGroup(
                configuration: upstream, apiKey: apiKeys[upstream.name], eventLoops: loops, metrics: metrics.upstream(upstream.name),
                logger: logger, dnsResolver: configuration.server.dnsResolver)
        }
        // Discovered upstreams have no member until their first answer (at most three 1 s tries).
        for g in groups.values { if let d = g.discovery { try? await d.firstAnswer.get() } }
        // Upstreams with a health check route nothing until their first probe answers: the
        // listener opens after that (at most each check's `timeout`), so the first client
        // requests already go only where a probe passed.
        for g in groups.values { if let check = g.healthCheck { try? await check.firstVerdict.get() } }
        let adminToken = try APIKeys.read(configuration.server.adminToken, key: "server.admin_token", environment: ProcessInfo.processInfo.environment)
        var cache: ResponseCache?
        if configuration.cache.mode != .off {
            var settings = configuration.cache
            if settings.path.isEmpty { settings.path = SidecarConfiguration.Cache.defaultPath(environment: ProcessInfo.processInfo.environment) }
            let opened = await ResponseCache.open(settings: settings, logger: logger, clock: cacheClock ?? ResponseCache.wallClock)
            opened.startHousekeeping(on: loops[0])
            cache = opened
            metrics.beforeRender.withLockedValue { $0.append { [weak opened] in
                guard let opened else { return }
                let hot = opened.hotTier
                let health = opened.database.health
                metrics.cacheMemoryBytes.set(hot.bytes)
                metrics.cacheMemoryEntries.set(hot.entries)
                metrics.cacheDatabaseUp.set(health.ok ? 1 : 0)
                metrics.cacheDatabaseErrors.set(health.errors)
                metrics.cacheReopened(totals: health.reopened)
                metrics.cacheStoreSkipped(total: opened.storesSkipped)
                metrics.upstreamSpend(total: opened.spendSinceStart.withLockedValue { $0 })
                metrics.cacheFlights.set(opened.flightsInProgress)
                metrics.cacheWriteQueueBytes.set(opened.writeQueueBytes)
            } }
        }
        let fleet = try configuration.fleet.map { try Self.makeFleet($0, metrics: metrics, logger: logger) }
        let state = ServerState(
            runtime: ProxyRuntime(configuration: configuration, groups: groups, adminToken: adminToken,
                                  tracer: Self.tracer(configuration.otel, metrics: metrics, logger: logger)),
            metrics: metrics, logger: logger, cache: cache, fleet: fleet)
        if let cache {
            // Budgets survive restarts: today's and this month's spend come back from the database.
            // When it cannot be read, budgets stay closed (and it is tried again) rather than
            // restarting from $0.
            do {
                try await Self.restoreSpend(cache, into: state.budget)
            } catch {
                state.budget.close("spend could not be restored from the cache database at start (\(error)); budgets are closed until it can be read")
                let budgeted = !configuration.budgets.limits.isEmpty
                logger.log(level: budgeted ? .error : .warning, "spend not restored from the cache database: budgets closed until it can be read", metadata: [
                    "reason": "\(error)", "retry": "every 5 s", "effect": "\(budgeted ? "requests under [budgets] get 503 budget_unavailable" : "none while no [budgets] are set")"])
                Self.retryRestore(cache, state: state, on: loops[0], logger: logger)
            }
        } else if !configuration.budgets.limits.isEmpty {
            logger.warning("[budgets] are set but the cache is off: spend is kept in memory only and starts from $0 at every restart")
        }
        let budgetSpent = (day: Metrics.Meter(label: "llm_sidecar_budget_spent_usd", dimensions: [("period", "day")], factory: metrics.factory),
                           month: Metrics.Meter(label: "llm_sidecar_budget_spent_usd", dimensions: [("period", "month")], factory: metrics.factory))
        // Used share of each budget: alert on >= alert_percent / 100 (the daemon also logs it once).
        let budgetUsed = (day: Metrics.Meter(label: "llm_sidecar_budget_used_ratio", dimensions: [("period", "day")], factory: metrics.factory),
                          month: Metrics.Meter(label: "llm_sidecar_budget_used_ratio", dimensions: [("period", "month")], factory: metrics.factory))
        metrics.beforeRender.withLockedValue { $0.append { [weak state] in
            guard let state else { return }
            let totals = state.budget.totals
            budgetSpent.day.set(totals.day)
            budgetSpent.month.set(totals.month)
            let limits = state.runtime.configuration.budgets.limits
            if let d = limits.dailyUSD, d > 0 { budgetUsed.day.set(totals.day / d) }
            if let m = limits.monthlyUSD, m > 0 { budgetUsed.month.set(totals.month / m) }
        } }
        metrics.beforeRender.withLockedValue { $0.append { [weak state] in
            guard let state else { return }
            for route in state.runtime.routes.values {
                for d in route.snapshot { metrics.deployment(d.name, inFlight: d.inFlight, ejected: d.health == "ejected") }
                if let n = route.affinityTableSize { metrics.promptAffinityPrefixes(group: route.group.name, n) }
            }
        } }
        let box = ChildRegistry()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Both binds below (and the systemd socket) go through this: out of descriptors, the
            // listener pauses instead of spinning on EMFILE (see `ListenerBackoffHandler`).
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ListenerBackoffHandler(logger: logger, metrics: metrics))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                box.register(channel)
                do {
                    // One handler: our own framing reads the requests and writes the responses.
                    try channel.pipeline.syncOperations.addHandler(DownstreamHandler(state: state))
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
        let server = SidecarServer(state: state, loops: loops, serverChannel: channel, logger: logger)
        if let fleet { server.startFleet(fleet, cache: cache) }
        if let fleet, let cache { server.startSharedCache(fleet, cache: cache) }
        box.server = server
        return server
    }

    /// Waits until every cache write queued so far is done, and writes the counters back.
    public func flushCache() async {
        guard let cache = state.cache else { return }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in cache.flush { c.resume() } }
    }

    fileprivate func register(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        children.withLockedValue { $0[id] = channel }
        channel.closeFuture.whenComplete { [children] _ in
            _ = children.withLockedValue { $0.removeValue(forKey: id) }
        }
    }

    /// The tracer for `[otel]`, nil without it.
    static func tracer(_ otel: SidecarConfiguration.OTel?, metrics: SidecarMetrics, logger: Logger) -> SidecarTracer? {
        otel.map { SidecarTracer(exporter: SpanExporter(settings: $0, version: SidecarServer.version, metrics: metrics, logger: logger)) }
    }

    /// The version `llm-sidecar version` prints, and spans' `service.version`.
    public static let version = "0.1.0"

    /// Graceful stop: stop accepting, ask keep-alive clients to close after their current request,
    /// wait for in-flight requests up to `drainTimeout`, then close everything and the pools.
    public func shutdown(drainTimeout: TimeAmount) async {
        let runtime = state.runtime
        state.startDraining()
        try? await serverChannel.close()
        let open = children.withLockedValue { Array($0.values) }
        for channel in open {
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
        let deadline = NIODeadline.now() + drainTimeout
        while state.requestsInFlight > 0, NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
        if state.requestsInFlight > 0 {
            logger.warning("drain timeout: closing requests still in flight", metadata: ["in-flight": "\(state.requestsInFlight)"])
        }
        let remaining = children.withLockedValue { Array($0.values) }
        // WebSocket sessions still open send their close frames (1001) first.
        for channel in remaining { channel.pipeline.fireUserInboundEventTriggered(DrainTimeoutEvent()) }
        for channel in remaining { try? await channel.close() }
        for group in runtime.groups.values { try? await group.shutdown().get() }
        await state.runtime.tracer?.exporter.shutdown()
        await stopFleet()
        await state.cache?.close()
    }
}

extension SidecarServer {
    /// Why a reload was refused; the old configuration keeps serving.
    public struct ReloadRefused: Error, CustomStringConvertible {
        public var description: String
    }

    /// Applies a new, already validated configuration to new requests. Upstreams whose settings
    /// and key are unchanged keep their pools (warm connections, TLS sessions); the others are
    /// drained (their in-flight requests finish) and closed in the background.
    /// Listen address and thread count need a restart: such a reload is refused.
    public func reload(configuration: SidecarConfiguration, apiKeys: [String: String]) throws {
        let old = state.runtime
        if configuration.server.listen != old.configuration.server.listen {
            throw ReloadRefused(description: "server.listen changed from \(old.configuration.server.listen) to \(configuration.server.listen): restart to apply it")
        }
        if configuration.server.threads != old.configuration.server.threads {
            throw ReloadRefused(description: "server.threads changed: restart to apply it")
        }
        if configuration.fleet != old.configuration.fleet {
            throw ReloadRefused(description: "[fleet] changed: restart to apply it")
        }
        var groups: [String: UpstreamGroup] = [:]
        var kept: Set<ObjectIdentifier> = []
        for upstream in configuration.upstreams {
            let key = apiKeys[upstream.name]
            if let existing = old.groups[upstream.name], existing.configuration == upstream, existing.credential?.value == key.map({ upstream.api.authorization(key: $0).value }) {
                groups[upstream.name] = existing
                kept.insert(ObjectIdentifier(existing))
            } else {
                groups[upstream.name] = try UpstreamGroup(
                    configuration: upstream, apiKey: key, eventLoops: loops, metrics: state.metrics.upstream(upstream.name),
                    logger: logger, carriedOver: old.groups[upstream.name]?.healthCheck?.report.status,
                    dnsResolver: configuration.server.dnsResolver)
            }
        }
        let adminToken = try APIKeys.read(configuration.server.adminToken, key: "server.admin_token", environment: ProcessInfo.processInfo.environment)
        if let cache = state.cache {
            var next = configuration.cache
            let current = cache.settings
            if next.path.isEmpty { next.path = current.path }
            if next.path != current.path || next.memoryBytes != current.memoryBytes {
                logger.notice("cache.path and cache.memory_bytes apply at the next restart")
                next.path = current.path
                next.memoryBytes = current.memoryBytes
            }
            cache.settings = next
        } else if configuration.cache.mode != .off {
            logger.notice("the cache was off at start: restart to turn it on")
        }
        // The tracer is kept when [otel] did not change; a new one replaces it otherwise, and the
        // old one sends what it holds, then stops.
        var tracer = old.tracer
        if configuration.otel != old.configuration.otel {
            tracer = Self.tracer(configuration.otel, metrics: state.metrics, logger: logger)
            if let retired = old.tracer { Task { await retired.exporter.shutdown() } }
        }
        _ = state.swap(ProxyRuntime(configuration: configuration, groups: groups, adminToken: adminToken, previous: old, tracer: tracer))
        let retired = old.groups.values.filter { !kept.contains(ObjectIdentifier($0)) }
        let drainTimeout = configuration.server.drainTimeout
        if !retired.isEmpty {
            Task {
                for group in retired { await group.drainAndShutdown(timeout: drainTimeout) }
            }
        }
        logger.info("reloaded", metadata: [
            "upstreams": "\(configuration.upstreams.map(\.name).joined(separator: ","))",
            "kept": "\(kept.count)", "retired": "\(retired.count)",
        ])
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

/// Reads upstream API keys (and the admin token) from where the configuration says: an
/// environment variable or a file (e.g. a systemd credential). Keys never come from the
/// configuration file and are never logged.
public enum APIKeys {
    /// The key of every upstream that has one, by upstream name.
    public static func resolve(
        _ configuration: SidecarConfiguration, environment: [String: String]
    ) throws -> [String: String] {
        var keys: [String: String] = [:]
        for upstream in configuration.upstreams {
            if let key = try read(upstream.apiKey, key: "upstreams.\(upstream.name).api_key", environment: environment) {
                keys[upstream.name] = key
            }
        }
        return keys
    }

    /// The secret `source` names, or nil for `.none`.
    public static func read(_ source: SidecarConfiguration.KeySource, key: String, environment: [String: String]) throws -> String? {
        switch source {
        case .none:
            return nil
        case .environment(let name):
            guard let v = environment[name]?.trimmingCharacters(in: .whitespacesAndNewlines), !v.isEmpty else {
                throw ConfigurationError(key: key + "_env", problem: "environment variable \(name) is not set")
            }
            return v
        case .file(let path):
            guard let data = FileManager.default.contents(atPath: path),
                  let text = String(data: data, encoding: .utf8)?.trimmingCharacters(in: .whitespacesAndNewlines), !text.isEmpty else {
                throw ConfigurationError(key: key + "_file", problem: "cannot read a key from \(path)")
            }
            return text
        }
    }
}
