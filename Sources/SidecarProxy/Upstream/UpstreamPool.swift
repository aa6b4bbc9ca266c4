import NIOCore
import SidecarCore

/// The IO shell around `ConnectionPoolStateMachine` for one upstream on one event loop: it turns
/// events into state-machine calls and carries out the returned actions. It never decides anything
/// itself, and never re-enters the state machine while running an action's effects.
final class UpstreamPool {
    typealias LeaseCallback = (Result<Lease, ProxyError>) -> Void

    /// A connection handed to a request, with whether it served an earlier one.
    struct Lease {
        var connection: UpstreamConnection
        var reused: Bool
    }

    let eventLoop: EventLoop
    private var state: ConnectionPoolStateMachine
    private let settings: UpstreamConnection.Settings
    private let queueTimeout: TimeAmount
    private var connections: [ConnectionPoolStateMachine.ConnectionID: UpstreamConnection] = [:]
    private var waiters: [ConnectionPoolStateMachine.WaiterID: LeaseCallback] = [:]
    private var nextWaiter: ConnectionPoolStateMachine.WaiterID = 0
    private var sweeper: Scheduled<Void>?
    private var stopped = false
    private var drainedPromise: EventLoopPromise<Void>?

    /// Counters, read by the admin endpoints and tests.
    private(set) var connectionsCreated = 0
    private(set) var leasesReused = 0

    init(eventLoop: EventLoop, configuration: ConnectionPoolStateMachine.Configuration,
         settings: UpstreamConnection.Settings, queueTimeout: TimeAmount) {
        self.eventLoop = eventLoop
        self.state = ConnectionPoolStateMachine(configuration: configuration)
        self.settings = settings
        self.queueTimeout = queueTimeout
        scheduleSweep()
    }

    /// Housekeeping every 250 ms: idle expiry and queue deadlines need no per-request timers.
    private func scheduleSweep() {
        sweeper = eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(250)) { [weak self] in
            guard let self else { return }
            self.sweep()
            if !self.stopped { self.scheduleSweep() }
        }
    }

    var openConnections: Int { state.connectionCount }
    var idleConnections: Int { state.idleCount }
    var waiting: Int { state.waiterCount }
    var leased: Int { state.leasedCount }

    /// Asks for a connection; `callback` runs on this loop, possibly before `lease` returns.
    /// Returns the waiter id, for `cancel`.
    @discardableResult
    func lease(fresh: Bool = false, callback: @escaping LeaseCallback) -> ConnectionPoolStateMachine.WaiterID {
        eventLoop.preconditionInEventLoop()
        let id = nextWaiter
        nextWaiter &+= 1
        waiters[id] = callback
        let now = NIODeadline.now()
        run(state.leaseConnection(waiter: id, now: now, deadline: now + queueTimeout, fresh: fresh))
        return id
    }

    /// The request no longer wants a connection (its client went away).
    func cancel(_ waiter: ConnectionPoolStateMachine.WaiterID) {
        guard waiters.removeValue(forKey: waiter) != nil else { return }
        state.waiterCancelled(waiter)
    }

    /// The request is done with `connection`.
    func release(_ connection: UpstreamConnection, reusable: Bool, keepAlive: TimeAmount?) {
        let ok = reusable && connection.isActive
        run(state.releaseConnection(connection.id, reusable: ok, keepAlive: keepAlive, now: .now()))
    }

    /// Closes idle connections, fails waiters, closes leased connections as they come back;
    /// the future completes when every connection is gone.
    func shutdown() -> EventLoopFuture<Void> {
        stopped = true
        sweeper?.cancel()
        sweeper = nil
        run(state.shutdown())
        if state.connectionCount == 0 { return eventLoop.makeSucceededVoidFuture() }
        let p = eventLoop.makePromise(of: Void.self)
        drainedPromise = p
        return p.futureResult
    }

    private func sweep() {
        run(state.sweep(now: .now(), queueTimeout: queueTimeout))
    }

    // MARK: carrying out actions

    private func run(_ action: ConnectionPoolStateMachine.PoolAction) {
        for id in action.close {
            connections.removeValue(forKey: id)?.close()
        }
        for failure in action.fail {
            guard let callback = waiters.removeValue(forKey: failure.waiter) else { continue }
            callback(.failure(Self.describe(failure.reason)))
        }
        if let grant = action.grant {
            if let connection = connections[grant.connection], let callback = waiters.removeValue(forKey: grant.waiter) {
                if grant.reused {
                    leasesReused += 1
                    settings.metrics.connectionsReused.increment()
                }
                callback(.success(Lease(connection: connection, reused: grant.reused)))
            } else if let connection = connections[grant.connection] {
                // The waiter was cancelled in the meantime: give the connection straight back.
                run(state.releaseConnection(connection.id, reusable: connection.isActive, keepAlive: nil, now: .now()))
            }
        }
        if let create = action.create { open(create) }
        publishGauges()
        if let p = drainedPromise, state.connectionCount == 0 {
            drainedPromise = nil
            p.succeed(())
        }
    }

    /// This pool's share of the upstream's open/idle gauges (several pools add to one gauge).
    private var publishedOpen = 0
    private var publishedIdle = 0

    private func publishGauges() {
        let open = state.connectionCount, idle = state.idleCount
        if open != publishedOpen {
            settings.metrics.connectionsOpen.increment(by: Double(open - publishedOpen))
            publishedOpen = open
        }
        if idle != publishedIdle {
            settings.metrics.connectionsIdle.increment(by: Double(idle - publishedIdle))
            publishedIdle = idle
        }
    }

    private func open(_ id: ConnectionPoolStateMachine.ConnectionID) {
        connectionsCreated += 1
        settings.metrics.connectionsCreated.increment()
        UpstreamConnection.connect(
            id: id, settings: settings, eventLoop: eventLoop,
            onClose: { [weak self] id in self?.connectionClosed(id) },
            completion: { [weak self] result in
                guard let self else {
                    if case .success(let c) = result { c.close() }
                    return
                }
                switch result {
                case .success(let connection):
                    self.settings.health.connected()
                    self.connections[id] = connection
                    self.run(self.state.connectionEstablished(id, now: .now()))
                case .failure(let error):
                    self.settings.health.failed(error)
                    self.run(self.state.connectionFailed(id, error: error))
                }
            })
    }

    private func connectionClosed(_ id: ConnectionPoolStateMachine.ConnectionID) {
        run(state.connectionClosed(id))
    }

    static func describe(_ failure: PoolFailure) -> ProxyError {
        switch failure {
        case .queueFull(let n):
            return .poolExhausted("all upstream connections are busy and \(n) requests are already waiting (raise max_connections or queue_size)")
        case .queueTimeout(let t):
            return .upstreamTimeout(.poolQueue, after: DurationText.format(t))
        case .connectFailed(let e):
            return e
        case .shuttingDown:
            return .shuttingDown
        }
    }
}
