import DequeModule
import NIOCore

/// Why a lease could not be granted.
public enum PoolFailure: Error, Hashable, Sendable {
    /// The wait queue already holds `maxWaiters` requests.
    case queueFull(maxWaiters: Int)
    /// The request waited `timeout` without a connection becoming free.
    case queueTimeout(TimeAmount)
    /// Opening the connection this waiter was waiting for failed.
    case connectFailed(ProxyError)
    /// The pool is shutting down.
    case shuttingDown
}

/// The keep-alive pool for ONE upstream on ONE event loop, as a value type: events in, actions out.
///
/// No IO, no timers, no clock: the IO shell (`UpstreamPool`) passes `now`, runs the returned
/// `PoolAction`s and reports back what happened. Connections are reused LIFO (the most recently
/// parked one is the warmest and the least likely to have been closed by the server). Waiters are
/// served FIFO and bounded by `maxWaiters`.
public struct ConnectionPoolStateMachine: Sendable {
    public typealias ConnectionID = Int
    public typealias WaiterID = UInt64

    public struct Configuration: Sendable, Hashable {
        /// Most connections (connecting + leased + idle) this pool may hold.
        public var maxConnections: Int
        /// Most requests that may wait for a connection; the next one is refused at once.
        public var maxWaiters: Int
        /// How long an idle connection is kept before it is closed.
        public var idleTimeout: TimeAmount

        public init(maxConnections: Int, maxWaiters: Int, idleTimeout: TimeAmount) {
            precondition(maxConnections >= 1 && maxWaiters >= 0)
            self.maxConnections = maxConnections
            self.maxWaiters = maxWaiters
            self.idleTimeout = idleTimeout
        }
    }

    /// A request that was handed a connection.
    public struct Grant: Hashable, Sendable {
        public var waiter: WaiterID
        public var connection: ConnectionID
        /// True when the connection served an earlier request (a failure on it may be a stale close).
        public var reused: Bool

        public init(waiter: WaiterID, connection: ConnectionID, reused: Bool) {
            self.waiter = waiter
            self.connection = connection
            self.reused = reused
        }
    }

    /// The effects the shell must carry out, in this order: close, fail, grant, create.
    /// Empty arrays do not allocate, so the common single-grant case costs nothing extra.
    public struct PoolAction: Hashable, Sendable {
        public var close: [ConnectionID] = []
        public var fail: [Failure] = []
        public var grant: Grant? = nil
        public var create: ConnectionID? = nil

        public struct Failure: Hashable, Sendable {
            public var waiter: WaiterID
            public var reason: PoolFailure

            public init(waiter: WaiterID, reason: PoolFailure) {
                self.waiter = waiter
                self.reason = reason
            }
        }

        public static let none = PoolAction()
        public var isNone: Bool { close.isEmpty && fail.isEmpty && grant == nil && create == nil }
    }

    private enum ConnectionState: Hashable, Sendable {
        case connecting
        case leased(uses: Int)
        case idle(uses: Int, expires: NIODeadline)
    }

    private struct Waiter: Hashable, Sendable {
        var id: WaiterID
        var deadline: NIODeadline
    }

    public let configuration: Configuration
    private var connections: [ConnectionID: ConnectionState] = [:]
    /// Idle connections, most recently parked last (LIFO reuse pops from the end).
    private var idle: [ConnectionID] = []
    private var waiters: Deque<Waiter> = []
    private var connectingCount = 0
    private var nextConnectionID: ConnectionID = 0
    private var shuttingDown = false

    public init(configuration: Configuration) {
        self.configuration = configuration
        self.idle.reserveCapacity(configuration.maxConnections)
    }

    // MARK: observation

    public var connectionCount: Int { connections.count }
    public var idleCount: Int { idle.count }
    public var leasedCount: Int { connections.count - idle.count - connectingCount }
    public var connectingConnections: Int { connectingCount }
    public var waiterCount: Int { waiters.count }
    /// True once `shutdown()` was called and every connection is gone.
    public var isDrained: Bool { shuttingDown && connections.isEmpty }

    // MARK: events

    /// A request wants a connection. `fresh` refuses idle connections (used for the one replay after
    /// a reused connection turned out stale): a new one is opened, closing the oldest idle one if the
    /// pool is full.
    public mutating func leaseConnection(
        waiter: WaiterID, now: NIODeadline, deadline: NIODeadline, fresh: Bool = false
    ) -> PoolAction {
        var action = PoolAction()
        if shuttingDown {
            action.fail.append(.init(waiter: waiter, reason: .shuttingDown))
            return action
        }
        if !fresh {
            while let id = idle.popLast() {
                guard case .idle(let uses, let expires) = connections[id] else {
                    preconditionFailure("idle list names connection \(id) that is not idle")
                }
                if expires <= now {
                    connections[id] = nil
                    action.close.append(id)
                    continue
                }
                connections[id] = .leased(uses: uses + 1)
                action.grant = Grant(waiter: waiter, connection: id, reused: uses > 0)
                return action
            }
        } else if connections.count >= configuration.maxConnections, !idle.isEmpty {
            let oldest = idle.removeFirst()
            connections[oldest] = nil
            action.close.append(oldest)
        }
        // A request that can have a connection opened for it always waits for that connection;
        // `maxWaiters` bounds only those queued beyond the connections being opened.
        let canOpen = connections.count < configuration.maxConnections
        guard canOpen || waiters.count - connectingCount < configuration.maxWaiters else {
            action.fail.append(.init(waiter: waiter, reason: .queueFull(maxWaiters: configuration.maxWaiters)))
            return action
        }
        waiters.append(Waiter(id: waiter, deadline: deadline))
        action.create = createIfNeeded()
        return action
    }

    /// A connection this pool asked for is ready to carry requests.
    public mutating func connectionEstablished(_ id: ConnectionID, now: NIODeadline) -> PoolAction {
        guard case .connecting = connections[id] else { return .none }
        connectingCount -= 1
        var action = PoolAction()
        if shuttingDown {
            connections[id] = nil
            action.close.append(id)
            return action
        }
        if let waiter = waiters.popFirst() {
            connections[id] = .leased(uses: 1)
            action.grant = Grant(waiter: waiter.id, connection: id, reused: false)
        } else {
            park(id, uses: 0, now: now, keepAlive: nil)
        }
        return action
    }

    /// Opening connection `id` failed. The oldest waiter gets the error (a dead upstream costs one
    /// attempt per waiter, never an unbounded retry loop); others get a new attempt.
    public mutating func connectionFailed(_ id: ConnectionID, error: ProxyError) -> PoolAction {
        guard case .connecting = connections[id] else { return .none }
        connections[id] = nil
        connectingCount -= 1
        var action = PoolAction()
        if let waiter = waiters.popFirst() {
            action.fail.append(.init(waiter: waiter.id, reason: .connectFailed(error)))
        }
        if !shuttingDown { action.create = createIfNeeded() }
        return action
    }

    /// A request is done with connection `id`. `reusable` is false when the response said
    /// `Connection: close`, was not read to its end, or failed. `keepAlive` is the server's
    /// `Keep-Alive: timeout=`, which shortens how long we keep the connection idle.
    public mutating func releaseConnection(
        _ id: ConnectionID, reusable: Bool, keepAlive: TimeAmount?, now: NIODeadline
    ) -> PoolAction {
        guard case .leased(let uses) = connections[id] else { return .none }
        var action = PoolAction()
        // A server that keeps connections for a second or less gives us no safe window to reuse one.
        let reusable = reusable && (keepAlive.map { $0 > .seconds(1) } ?? true)
        guard reusable, !shuttingDown else {
            connections[id] = nil
            action.close.append(id)
            if !shuttingDown { action.create = createIfNeeded() }
            return action
        }
        if let waiter = waiters.popFirst() {
            connections[id] = .leased(uses: uses + 1)
            action.grant = Grant(waiter: waiter.id, connection: id, reused: true)
        } else {
            park(id, uses: uses, now: now, keepAlive: keepAlive)
        }
        return action
    }

    /// Connection `id` closed by itself (the server closed an idle connection, or a leased one
    /// broke and its request will release it). Idle ones leave the pool at once (the action names
    /// them in `close` so the shell drops its handle); leased ones leave when released.
    public mutating func connectionClosed(_ id: ConnectionID) -> PoolAction {
        guard case .idle = connections[id] else { return .none }
        connections[id] = nil
        idle.removeAll { $0 == id }
        var action = PoolAction()
        action.close.append(id)
        return action
    }

    /// A waiting request gave up (its client went away). No error is sent anywhere.
    public mutating func waiterCancelled(_ waiter: WaiterID) {
        if let i = waiters.firstIndex(where: { $0.id == waiter }) { waiters.remove(at: i) }
    }

    /// Periodic housekeeping: close idle connections past their expiry and fail waiters past
    /// their deadline.
    public mutating func sweep(now: NIODeadline, queueTimeout: TimeAmount) -> PoolAction {
        var action = PoolAction()
        idle.removeAll { id in
            guard case .idle(_, let expires) = connections[id], expires <= now else { return false }
            connections[id] = nil
            action.close.append(id)
            return true
        }
        while let first = waiters.first, first.deadline <= now {
            waiters.removeFirst()
            action.fail.append(.init(waiter: first.id, reason: .queueTimeout(queueTimeout)))
        }
        return action
    }

    /// Stop: close idle connections now, fail every waiter, close leased ones as they are released.
    public mutating func shutdown() -> PoolAction {
        shuttingDown = true
        var action = PoolAction()
        for id in idle { connections[id] = nil; action.close.append(id) }
        idle.removeAll()
        while let w = waiters.popFirst() { action.fail.append(.init(waiter: w.id, reason: .shuttingDown)) }
        return action
    }

    // MARK: helpers

    private mutating func park(_ id: ConnectionID, uses: Int, now: NIODeadline, keepAlive: TimeAmount?) {
        var lifetime = configuration.idleTimeout
        if let keepAlive {
            // Close one second before the server would, so we never send on a connection it is
            // closing (the race that makes a stale-connection replay necessary).
            let serverSide = keepAlive - .seconds(1)
            if serverSide < lifetime { lifetime = serverSide }
        }
        connections[id] = .idle(uses: uses, expires: now + lifetime)
        idle.append(id)
    }

    /// A new connection when waiters outnumber the connections being opened and there is room.
    private mutating func createIfNeeded() -> ConnectionID? {
        guard waiters.count > connectingCount, connections.count < configuration.maxConnections else { return nil }
        let id = nextConnectionID
        nextConnectionID += 1
        connections[id] = .connecting
        connectingCount += 1
        return id
    }
}
