import Logging
import NIOConcurrencyHelpers
import NIOCore
import SidecarCore
import SidecarTLS
import Synchronization

/// Whether an upstream can be reached, from its recent connection attempts (for /readyz).
final class UpstreamHealth: Sendable {
    /// Consecutive failed connection attempts after which the upstream counts as unusable.
    static let failuresBeforeUnusable = 3
    private let consecutiveFailures = Atomic<Int>(0)
    private let lastError = NIOLockedValueBox<String?>(nil)

    func connected() {
        if consecutiveFailures.load(ordering: .relaxed) != 0 { consecutiveFailures.store(0, ordering: .relaxed) }
    }

    func failed(_ error: ProxyError) {
        consecutiveFailures.wrappingAdd(1, ordering: .relaxed)
        lastError.withLockedValue { $0 = error.message }
    }

    /// nil when usable; else why not.
    var problem: String? {
        let n = consecutiveFailures.load(ordering: .relaxed)
        guard n >= Self.failuresBeforeUnusable else { return nil }
        return "\(n) consecutive connection attempts failed, last: \(lastError.withLockedValue { $0 } ?? "?")"
    }
}

/// Everything the proxy keeps for one configured upstream: its TLS context (one, shared by every
/// connection), the resolved key, and one pool per event loop, so a request and its upstream
/// connection always live on the same thread (no hops, no locks on the hot path).
///
/// `max_connections` and `queue_size` are totals: each loop's pool gets an even share (at least one
/// connection each, so the effective cap is max(max_connections, threads)).
final class UpstreamGroup: Sendable {
    let configuration: SidecarConfiguration.Upstream
    /// The credential header sent upstream in the upstream's dialect (`Authorization: Bearer`,
    /// `x-api-key`, `api-key`, `x-goog-api-key`), or nil to pass the client's through.
    let credential: (name: String, value: String)?
    let sslContext: SSLContext?
    /// The `Host` header sent upstream, computed once.
    let hostHeader: String
    private let pools: [ObjectIdentifier: NIOLoopBound<UpstreamPool>]

    let metrics: UpstreamMetrics
    let health = UpstreamHealth()
    /// The active health check (`health_check`), or nil when the upstream has none. A
    /// discovered upstream's checks run per address (each address's group has its own).
    let healthCheck: HealthProber?
    /// `discover = "dns"`: the addresses the host resolves to, each with its own group; nil otherwise.
    let discovery: DNSDiscovery?

    /// - Parameter carriedOver: the health check verdict of the group this one replaces on a
    ///   reload (same name), so that a working upstream stays in while its first probe runs.
    init(configuration: SidecarConfiguration.Upstream, apiKey: String?, eventLoops: [EventLoop], metrics: UpstreamMetrics,
         logger: Logger, carriedOver: HealthCheckState.Status? = nil,
         dnsResolver: SidecarConfiguration.Server.ResolverAddress? = nil, hostHeader: String? = nil) throws {
        self.configuration = configuration
        self.metrics = metrics
        self.credential = apiKey.map { configuration.api.authorization(key: $0) }
        self.hostHeader = hostHeader ?? configuration.url.hostHeader
        if configuration.url.tls {
            var tls = TLSConfiguration.client(
                trustRoots: configuration.caFile.map { .file($0) } ?? .system,
                minimumVersion: configuration.tlsMinimumVersion == .v1_3 ? .tls1_3 : .tls1_2)
            if let cert = configuration.clientCertificateFile, let key = configuration.clientKeyFile {
                tls.identity = .files(certificateChain: cert, privateKey: key)
            }
            self.sslContext = try SSLContext(configuration: tls)
        } else {
            self.sslContext = nil
        }
        let settings = UpstreamConnection.Settings(
            url: configuration.url, sslContext: sslContext, serverName: configuration.serverName,
            connectTimeout: configuration.connectTimeout, tlsHandshakeTimeout: configuration.tlsHandshakeTimeout,
            firstByteTimeout: configuration.firstByteTimeout, readIdleTimeout: configuration.readIdleTimeout,
            metrics: metrics, health: health)
        var pools: [ObjectIdentifier: NIOLoopBound<UpstreamPool>] = [:]
        let n = eventLoops.count
        for (i, loop) in eventLoops.enumerated() {
            let share = max(1, Self.share(configuration.maxConnections, of: n, index: i))
            let queue = Self.share(configuration.queueSize, of: n, index: i)
            let poolConfig = ConnectionPoolStateMachine.Configuration(
                maxConnections: share, maxWaiters: queue, idleTimeout: configuration.idleTimeout)
            let queueTimeout = configuration.queueTimeout
            let pool = try loop.submit {
                NIOLoopBound(UpstreamPool(eventLoop: loop, configuration: poolConfig, settings: settings, queueTimeout: queueTimeout), eventLoop: loop)
            }.wait()
            pools[ObjectIdentifier(loop)] = pool
        }
        self.pools = pools
        if let discovery = configuration.discovery {
            self.healthCheck = nil
            // Each address: the same upstream aimed at the address, SNI and certificate name and
            // Host still the configured host's.
            var member = configuration
            member.discovery = nil
            member.serverName = configuration.serverName ?? configuration.url.host
            let host = configuration.url.hostHeader
            let template = member
            self.discovery = DNSDiscovery(
                upstream: configuration.name, host: configuration.url.host, discovery: discovery, resolver: try DNSResolver(dnsResolver),
                loop: eventLoops[0], logger: logger) { address in
                    var m = template
                    m.url.host = address
                    return try UpstreamGroup(configuration: m, apiKey: apiKey, eventLoops: eventLoops, metrics: metrics, logger: logger, hostHeader: host)
                }
        } else if let check = configuration.healthCheck {
            self.discovery = nil
            self.healthCheck = HealthProber(
                upstream: configuration.name, check: check, settings: settings, hostHeader: self.hostHeader,
                credential: apiKey.map { configuration.api.authorization(key: $0) }, loop: eventLoops[0], logger: logger,
                metrics: metrics, carriedOver: carriedOver)
        } else {
            self.healthCheck = nil
            self.discovery = nil
        }
    }

    /// `total` split over `n` parts as evenly as integers allow.
    static func share(_ total: Int, of n: Int, index: Int) -> Int {
        total / n + (index < total % n ? 1 : 0)
    }

    /// The pool for the calling event loop.
    func pool(on loop: EventLoop) -> UpstreamPool {
        guard let bound = pools[ObjectIdentifier(loop)] else {
            preconditionFailure("no upstream pool for this event loop")
        }
        return bound.value
    }

    /// Requests holding or waiting for a connection of this upstream, over every loop.
    func busyRequests() async -> Int {
        var total = 0
        for bound in pools.values {
            total += (try? await bound.eventLoop.submit { bound.value.leased + bound.value.waiting }.get()) ?? 0
        }
        return total
    }

    /// For an upstream removed or changed by a reload: wait until no request uses it (or
    /// `timeout`), then close its connections.
    func drainAndShutdown(timeout: TimeAmount) async {
        let deadline = NIODeadline.now() + timeout
        while NIODeadline.now() < deadline, await busyRequests() > 0 {
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        try? await shutdown().get()
    }

    /// Closes idle connections now and the others as their requests finish.
    func shutdown() -> EventLoopFuture<Void> {
        healthCheck?.stop()
        discovery?.stop()
        let futures = pools.values.map { bound in
            bound.eventLoop.flatSubmit { bound.value.shutdown() }
        }
        guard let first = futures.first else { preconditionFailure("an upstream group has at least one pool") }
        return EventLoopFuture.andAllComplete(futures, on: first.eventLoop)
    }
}
