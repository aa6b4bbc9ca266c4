import NIOCore
import SidecarCore
import XCTest

final class ConnectionPoolStateMachineTests: XCTestCase {
    typealias SM = ConnectionPoolStateMachine
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func makePool(max: Int = 2, waiters: Int = 4, idle: TimeAmount = .seconds(90)) -> SM {
        SM(configuration: .init(maxConnections: max, maxWaiters: waiters, idleTimeout: idle))
    }

    func testFirstLeaseOpensAConnectionAndGrantsItWhenEstablished() {
        var pool = makePool()
        let a = pool.leaseConnection(waiter: 1, now: t0, deadline: t0 + .seconds(30))
        XCTAssertEqual(a.create, 0)
        XCTAssertNil(a.grant)
        let b = pool.connectionEstablished(0, now: t0)
        XCTAssertEqual(b.grant, .init(waiter: 1, connection: 0, reused: false))
        XCTAssertEqual(pool.leasedCount, 1)
    }

    func testReleasedConnectionsAreReusedLIFO() {
        var pool = makePool(max: 3)
        for w in 1...3 { _ = pool.leaseConnection(waiter: UInt64(w), now: t0, deadline: t0 + .seconds(30)) }
        for c in 0..<3 { _ = pool.connectionEstablished(c, now: t0) }
        _ = pool.releaseConnection(0, reusable: true, keepAlive: nil, now: t0)
        _ = pool.releaseConnection(2, reusable: true, keepAlive: nil, now: t0)
        _ = pool.releaseConnection(1, reusable: true, keepAlive: nil, now: t0)
        let a = pool.leaseConnection(waiter: 9, now: t0, deadline: t0 + .seconds(30))
        XCTAssertEqual(a.grant, .init(waiter: 9, connection: 1, reused: true), "the most recently parked connection goes first")
        XCTAssertNil(a.create)
    }

    func testNonReusableReleaseClosesAndServesTheNextWaiterWithANewConnection() {
        var pool = makePool(max: 1)
        _ = pool.leaseConnection(waiter: 1, now: t0, deadline: t0 + .seconds(30))
        _ = pool.connectionEstablished(0, now: t0)
        let queued = pool.leaseConnection(waiter: 2, now: t0, deadline: t0 + .seconds(30))
        XCTAssertTrue(queued.isNone, "at the cap the second request waits without opening anything")
        let r = pool.releaseConnection(0, reusable: false, keepAlive: nil, now: t0)
        XCTAssertEqual(r.close, [0])
        XCTAssertEqual(r.create, 1)
        XCTAssertEqual(pool.connectionEstablished(1, now: t0).grant, .init(waiter: 2, connection: 1, reused: false))
    }

    func testQueueIsBoundedBeyondConnectionsBeingOpened() {
        var pool = makePool(max: 1, waiters: 1)
        XCTAssertEqual(pool.leaseConnection(waiter: 1, now: t0, deadline: t0 + .seconds(1)).create, 0)
        XCTAssertTrue(pool.leaseConnection(waiter: 2, now: t0, deadline: t0 + .seconds(1)).isNone)
        let full = pool.leaseConnection(waiter: 3, now: t0, deadline: t0 + .seconds(1))
        XCTAssertEqual(full.fail, [.init(waiter: 3, reason: .queueFull(maxWaiters: 1))])
    }

    func testZeroQueueStillLetsARequestWaitForItsOwnNewConnection() {
        var pool = makePool(max: 1, waiters: 0)
        XCTAssertEqual(pool.leaseConnection(waiter: 1, now: t0, deadline: t0 + .seconds(1)).create, 0)
        XCTAssertEqual(pool.leaseConnection(waiter: 2, now: t0, deadline: t0 + .seconds(1)).fail.first?.reason, .queueFull(maxWaiters: 0))
    }

    func testSweepExpiresIdleConnectionsAndTimesOutWaiters() {
        var pool = makePool(max: 1, idle: .seconds(10))
        _ = pool.leaseConnection(waiter: 1, now: t0, deadline: t0 + .seconds(30))
        _ = pool.connectionEstablished(0, now: t0)
        _ = pool.leaseConnection(waiter: 2, now: t0, deadline: t0 + .seconds(5))
        let s = pool.sweep(now: t0 + .seconds(6), queueTimeout: .seconds(5))
        XCTAssertEqual(s.fail, [.init(waiter: 2, reason: .queueTimeout(.seconds(5)))])
        _ = pool.releaseConnection(0, reusable: true, keepAlive: nil, now: t0 + .seconds(6))
        XCTAssertTrue(pool.sweep(now: t0 + .seconds(15), queueTimeout: .seconds(5)).close.isEmpty)
        XCTAssertEqual(pool.sweep(now: t0 + .seconds(16), queueTimeout: .seconds(5)).close, [0])
        XCTAssertEqual(pool.connectionCount, 0)
    }

    func testUpstreamKeepAliveTimeoutShortensIdleLifetime() {
        var pool = makePool(max: 1, idle: .seconds(90))
        _ = pool.leaseConnection(waiter: 1, now: t0, deadline: t0 + .seconds(30))
        _ = pool.connectionEstablished(0, now: t0)
        _ = pool.releaseConnection(0, reusable: true, keepAlive: .seconds(5), now: t0)
        // Reuse is refused from 4 s on: one second before the server's own limit.
        let lease = pool.leaseConnection(waiter: 2, now: t0 + .seconds(4), deadline: t0 + .seconds(30))
        XCTAssertEqual(lease.close, [0])
        XCTAssertEqual(lease.create, 1)
    }

    func testKeepAliveOfOneSecondOrLessMeansNoReuse() {
        var pool = makePool(max: 1)
        _ = pool.leaseConnection(waiter: 1, now: t0, deadline: t0 + .seconds(30))
        _ = pool.connectionEstablished(0, now: t0)
        XCTAssertEqual(pool.releaseConnection(0, reusable: true, keepAlive: .seconds(1), now: t0).close, [0])
    }

    func testConnectFailureFailsOneWaiterAndRetriesForTheRest() {
        var pool = makePool(max: 1)
        _ = pool.leaseConnection(waiter: 1, now: t0, deadline: t0 + .seconds(30))
        _ = pool.leaseConnection(waiter: 2, now: t0, deadline: t0 + .seconds(30))
        let f = pool.connectionFailed(0, error: .upstreamConnect("refused"))
        XCTAssertEqual(f.fail, [.init(waiter: 1, reason: .connectFailed(.upstreamConnect("refused")))])
        XCTAssertEqual(f.create, 1)
    }

    func testFreshLeaseSkipsIdleConnectionsAndMakesRoomAtTheCap() {
        var pool = makePool(max: 1)
        _ = pool.leaseConnection(waiter: 1, now: t0, deadline: t0 + .seconds(30))
        _ = pool.connectionEstablished(0, now: t0)
        _ = pool.releaseConnection(0, reusable: true, keepAlive: nil, now: t0)
        let fresh = pool.leaseConnection(waiter: 2, now: t0, deadline: t0 + .seconds(30), fresh: true)
        XCTAssertEqual(fresh.close, [0])
        XCTAssertEqual(fresh.create, 1)
    }

    func testIdleConnectionClosedByServerLeavesThePool() {
        var pool = makePool()
        _ = pool.leaseConnection(waiter: 1, now: t0, deadline: t0 + .seconds(30))
        _ = pool.connectionEstablished(0, now: t0)
        XCTAssertTrue(pool.connectionClosed(0).isNone, "a leased connection leaves when its request releases it")
        _ = pool.releaseConnection(0, reusable: false, keepAlive: nil, now: t0)
        _ = pool.leaseConnection(waiter: 2, now: t0, deadline: t0 + .seconds(30))
        _ = pool.connectionEstablished(1, now: t0)
        _ = pool.releaseConnection(1, reusable: true, keepAlive: nil, now: t0)
        XCTAssertEqual(pool.connectionClosed(1).close, [1])
        XCTAssertEqual(pool.connectionCount, 0)
    }

    func testShutdownClosesIdleFailsWaitersAndClosesReleasedConnections() {
        var pool = makePool(max: 2)
        _ = pool.leaseConnection(waiter: 1, now: t0, deadline: t0 + .seconds(30))
        _ = pool.leaseConnection(waiter: 2, now: t0, deadline: t0 + .seconds(30))
        _ = pool.connectionEstablished(0, now: t0)
        _ = pool.connectionEstablished(1, now: t0)
        _ = pool.releaseConnection(1, reusable: true, keepAlive: nil, now: t0)
        _ = pool.leaseConnection(waiter: 3, now: t0, deadline: t0 + .seconds(30))  // takes 1 again
        _ = pool.leaseConnection(waiter: 4, now: t0, deadline: t0 + .seconds(30))  // waits
        let s = pool.shutdown()
        XCTAssertEqual(s.fail, [.init(waiter: 4, reason: .shuttingDown)])
        XCTAssertEqual(pool.releaseConnection(0, reusable: true, keepAlive: nil, now: t0).close, [0])
        XCTAssertEqual(pool.releaseConnection(1, reusable: true, keepAlive: nil, now: t0).close, [1])
        XCTAssertTrue(pool.isDrained)
        XCTAssertEqual(pool.leaseConnection(waiter: 5, now: t0, deadline: t0 + .seconds(1)).fail.first?.reason, .shuttingDown)
    }

    /// Random event sequences against a shadow model that knows what must hold whatever happens:
    /// never more connections than the cap, every waiter answered exactly once, a connection is
    /// never granted to two requests at once, idle + leased + connecting = open.
    func testRandomEventsAgainstShadowModel() {
        var rng = SplitMix64(seed: 0xC0FFEE)
        for round in 0..<200 {
            let max = Int(rng.next() % 4) + 1
            let maxWaiters = Int(rng.next() % 4)
            var pool = makePool(max: max, waiters: maxWaiters, idle: .seconds(10))
            var now = t0
            var nextWaiter: UInt64 = 0
            var waiting: Set<UInt64> = []           // asked, not yet answered
            var answered: Set<UInt64> = []
            var connecting: Set<Int> = []
            var leased: [Int: UInt64] = [:]         // connection -> holder
            var open: Set<Int> = []

            func apply(_ a: SM.PoolAction, _ what: String) {
                for id in a.close {
                    XCTAssertNil(leased[id], "round \(round): \(what) closed leased connection \(id)")
                    open.remove(id)
                }
                for f in a.fail {
                    XCTAssertTrue(waiting.remove(f.waiter) != nil, "round \(round): \(what) failed unknown waiter \(f.waiter)")
                    XCTAssertTrue(answered.insert(f.waiter).inserted)
                }
                if let g = a.grant {
                    XCTAssertTrue(waiting.remove(g.waiter) != nil, "round \(round): \(what) granted unknown waiter \(g.waiter)")
                    XCTAssertTrue(answered.insert(g.waiter).inserted)
                    XCTAssertNil(leased[g.connection], "round \(round): \(what) granted connection \(g.connection) twice")
                    XCTAssertTrue(open.contains(g.connection))
                    leased[g.connection] = g.waiter
                }
                if let c = a.create {
                    XCTAssertFalse(open.contains(c))
                    connecting.insert(c)
                    open.insert(c)
                }
                XCTAssertLessThanOrEqual(open.count, max, "round \(round): over the cap after \(what)")
                XCTAssertEqual(open.count, pool.connectionCount, "round \(round): after \(what)")
                XCTAssertEqual(pool.leasedCount, leased.count, "round \(round): after \(what)")
                XCTAssertEqual(pool.connectingConnections, connecting.count, "round \(round): after \(what)")
            }

            for _ in 0..<100 {
                switch rng.next() % 7 {
                case 0, 1:
                    nextWaiter += 1
                    waiting.insert(nextWaiter)
                    apply(pool.leaseConnection(waiter: nextWaiter, now: now, deadline: now + .seconds(5), fresh: rng.next() % 10 == 0), "lease")
                case 2:
                    if let c = connecting.randomElement(using: &rng) {
                        connecting.remove(c)
                        apply(pool.connectionEstablished(c, now: now), "established")
                    }
                case 3:
                    if let c = connecting.randomElement(using: &rng) {
                        connecting.remove(c)
                        open.remove(c)
                        apply(pool.connectionFailed(c, error: .upstreamConnect("x")), "failed")
                    }
                case 4:
                    if let (c, _) = leased.randomElement(using: &rng) {
                        leased[c] = nil
                        let reusable = rng.next() % 3 != 0
                        if !reusable { open.remove(c) }
                        apply(pool.releaseConnection(c, reusable: reusable, keepAlive: nil, now: now), "release")
                    }
                case 5:
                    now = now + .milliseconds(Int64(rng.next() % 3000))
                    apply(pool.sweep(now: now, queueTimeout: .seconds(5)), "sweep")
                default:
                    let idle = open.subtracting(connecting).subtracting(leased.keys)
                    if let c = idle.randomElement(using: &rng) {
                        apply(pool.connectionClosed(c), "closed")
                    }
                }
            }
            XCTAssertEqual(pool.waiterCount, waiting.count, "round \(round)")
        }
    }
}

/// A tiny seeded generator, so the random test is the same on every run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
