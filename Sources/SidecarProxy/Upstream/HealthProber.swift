import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import SidecarCore
import Synchronization

/// Sends an upstream's active health check probes (`health_check`) and keeps the verdict
/// (`HealthCheckState`): `GET path` on a fresh connection every `interval`, a 2xx within `timeout`
/// passes, anything else (refused, TLS, timeout, other status, cut) fails.
///
/// A fresh connection rather than a pooled one: the probe then also tests what a new client
/// request would need first (DNS, TCP, TLS), a pool's idle connection cannot hide a server that
/// stopped accepting, and probes never take a slot a client request waits for. One probe at a
/// time, on one event loop; the next starts `interval` after the last one ended.
///
/// The routing side reads `isDown` (an atomic: every `ModelRoute.acquire` reads it for each
/// deployment of this upstream, so the verdict takes effect at the next request, on every loop).
final class HealthProber: Sendable {
    let check: SidecarConfiguration.HealthCheck
    private let upstream: String
    private let loop: EventLoop
    private let settings: UpstreamConnection.Settings
    private let hostHeader: String
    private let credential: (name: String, value: String)?
    private let logger: Logger
    private let metrics: (up: Metrics.Meter, passed: Metrics.Counter, failed: Metrics.Counter)

    /// True unless the verdict is `up` (pending counts as down: never seen working).
    private let down: Synchronization.Atomic<Bool>
    private let verdict: NIOLockedValueBox<(state: HealthCheckState, lastProblem: String?)>
    private let loopState: NIOLoopBoundBox<LoopState>
    /// Succeeds once the first probe has a verdict (the server opens its listener after that).
    let firstVerdict: EventLoopFuture<Void>

    private final class LoopState {
        var stopped = false
        var next: Scheduled<Void>?
        var first: EventLoopPromise<Void>?
    }

    /// - Parameter carriedOver: the verdict of the prober this one replaces (a reload that kept
    ///   the upstream's name), so a reload does not take a working upstream out until its first probe.
    init(upstream: String, check: SidecarConfiguration.HealthCheck, settings: UpstreamConnection.Settings, hostHeader: String,
         credential: (name: String, value: String)?, loop: EventLoop, logger: Logger, metrics: UpstreamMetrics,
         carriedOver: HealthCheckState.Status?) {
        self.upstream = upstream
        self.check = check
        self.loop = loop
        var probeSettings = settings
        probeSettings.connectTimeout = min(settings.connectTimeout, check.timeout)
        probeSettings.tlsHandshakeTimeout = min(settings.tlsHandshakeTimeout, check.timeout)
        // The probe's own deadline (`timeout` from its start) speaks first; the connection's
        // timers only back it up.
        probeSettings.firstByteTimeout = check.timeout * 2
        probeSettings.readIdleTimeout = check.timeout * 2
        // Probe connections do not count towards /readyz's view of client connections.
        probeSettings.health = UpstreamHealth()
        self.settings = probeSettings
        self.hostHeader = hostHeader
        self.credential = credential
        self.logger = logger
        self.metrics = metrics.healthCheck()
        let state = HealthCheckState(healthy: check.healthy, unhealthy: check.unhealthy, status: carriedOver ?? .pending)
        self.verdict = NIOLockedValueBox((state, nil))
        self.down = Synchronization.Atomic(!state.routable)
        let first = loop.makePromise(of: Void.self)
        firstVerdict = first.futureResult
        loopState = NIOLoopBoundBox.makeBoxSendingValue(LoopState(), eventLoop: loop)
        self.metrics.up.set(state.routable ? 1 : 0)
        loop.execute { [self] in
            loopState.value.first = first
            probe()
        }
    }

    var isDown: Bool { down.load(ordering: .relaxed) }

    /// The verdict and the last failure's reason, for `/stats`.
    var report: (status: HealthCheckState.Status, lastProblem: String?) {
        verdict.withLockedValue { ($0.state.status, $0.lastProblem) }
    }

    /// No probe starts after this; one in progress ends by its timeout.
    func stop() {
        loop.execute { [self] in
            let s = loopState.value
            s.stopped = true
            s.next?.cancel()
            s.next = nil
            s.first?.succeed(())
            s.first = nil
        }
    }

    private func probe() {
        guard !loopState.value.stopped else { return }
        let attempt = Probe(prober: self)
        let deadline = loop.assumeIsolated().scheduleTask(in: check.timeout) {
            attempt.finish(.failed("no answer within \(DurationText.format(self.check.timeout))"))
        }
        attempt.timeout = deadline
        UpstreamConnection.connect(id: -1, settings: settings, eventLoop: loop, onClose: { _ in }) { [self] result in
            switch result {
            case .failure(let error):
                attempt.finish(.failed(error.message))
            case .success(let connection):
                guard !attempt.done else { connection.close(); return }
                attempt.connection = connection
                connection.delegate = attempt
                var headers = HTTPHeaders([("host", hostHeader), ("user-agent", "llm-sidecar-health-check"), ("connection", "close")])
                if let credential { headers.add(name: credential.name, value: credential.value) }
                connection.send(head: HTTPRequestHead(version: .http1_1, method: .GET, uri: check.path, headers: headers))
                connection.sendEnd()
            }
        }
    }

    fileprivate func record(_ result: Result<Void, ProbeFailure>) {
        let (transition, state) = verdict.withLockedValue { v -> (HealthCheckState.Transition, HealthCheckState) in
            let t: HealthCheckState.Transition
            switch result {
            case .success: t = v.state.passed()
            case .failure(let f): t = v.state.failed(); v.lastProblem = f.reason
            }
            return (t, v.state)
        }
        down.store(!state.routable, ordering: .relaxed)
        metrics.up.set(state.routable ? 1 : 0)
        switch result {
        case .success: metrics.passed.increment()
        case .failure: metrics.failed.increment()
        }
        switch transition {
        case .none: break
        case .markedUp:
            logger.notice("upstream marked up by its health check", metadata: ["upstream": "\(upstream)", "passes": "\(state.consecutivePasses)"])
        case .markedDown:
            var metadata: Logger.Metadata = ["upstream": "\(upstream)", "failures": "\(state.consecutiveFailures)"]
            if case .failure(let f) = result { metadata["reason"] = "\(f.reason)" }
            logger.warning("upstream marked down by its health check: no new requests go to it", metadata: metadata)
        }
        let s = loopState.value
        s.first?.succeed(())
        s.first = nil
        guard !s.stopped else { return }
        s.next = loop.assumeIsolated().scheduleTask(in: check.interval) { [self] in probe() }
    }
}

struct ProbeFailure: Error {
    var reason: String
    init(_ reason: String) { self.reason = reason }
}

extension Result where Success == Void, Failure == ProbeFailure {
    fileprivate static func failed(_ reason: String) -> Self { .failure(ProbeFailure(reason)) }
}

/// One probe: its connection, its deadline, and its one result.
private final class Probe: UpstreamResponseDelegate {
    let prober: HealthProber
    var connection: UpstreamConnection?
    var timeout: Scheduled<Void>?
    private(set) var done = false
    private var status: UInt?

    init(prober: HealthProber) { self.prober = prober }

    func finish(_ result: Result<Void, ProbeFailure>) {
        guard !done else { return }
        done = true
        timeout?.cancel()
        connection?.delegate = nil
        connection?.close()
        connection = nil
        prober.record(result)
    }

    func upstreamResponseHead(_ head: HTTPResponseHead) { status = head.status.code }
    func upstreamResponseBody(_ body: ByteBuffer) {}
    func upstreamResponseEnd(_ trailers: HTTPHeaders?) {
        guard let status else { return finish(.failed("no response")) }
        finish((200..<300).contains(status) ? .success(()) : .failed("answered \(status)"))
    }
    func upstreamReadComplete() {}
    func upstreamWritabilityChanged(writable: Bool) {}
    func upstreamFailed(_ error: ProxyError, beforeResponse: Bool) { finish(.failed(error.message)) }
}
