import NIOCore
import XCTest
@testable import SidecarCore

/// The fleet's pure state machines against a shadow of the database's lease function: several
/// nodes, random spend and rounds, a manual clock; the fleet never spends past the budget.
final class FleetLeaseTests: XCTestCase {
    /// The database side of `fleet_lease_budgets`, as the SQL does it.
    struct ShadowFleet {
        var limit: Double
        var allotments: [Int: (allotment: Double, used: Double, expires: NIODeadline)] = [:]
        var granted: Double { allotments.values.reduce(0) { $0 + $1.allotment } }

        mutating func lease(node: Int, claim: FleetBudgetClaim, now: NIODeadline, period: TimeAmount) -> FleetBudgetGrant {
            for (n, l) in allotments where n != node && l.expires < now && l.allotment > l.used {
                allotments[n] = (l.used, l.used, l.expires)
            }
            let others = granted - (allotments[node]?.allotment ?? 0)
            let new = max(claim.used, min(claim.used + claim.want, claim.limit - others))
            allotments[node] = (new, claim.used, now + period)
            return FleetBudgetGrant(scope: claim.scope, allotment: new, fleetGranted: others + new, limit: claim.limit)
        }
    }

    func testNodesSpendingFromSlicesNeverPassTheBudgetAndGetCloseToIt() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<20 {
            let limit = 100.0
            var fleet = ShadowFleet(limit: limit)
            let settings = FleetBudgetLeases.Settings(leasePeriod: .seconds(30), slice: 0.05)
            var nodes = (0..<3).map { _ in (leases: FleetBudgetLeases(settings: settings), ledger: BudgetLedger()) }
            let limits = BudgetLedger.Limits(dailyUSD: limit)
            var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
            var refusedAt: [Double] = []
            for step in 0..<3_000 {
                now = now + .milliseconds(10)
                let i = Int.random(in: 0..<3, using: &rng)
                if step % 50 == i {
                    // A round: the node reports its use and takes a slice.
                    let claims = nodes[i].leases.claims(use: nodes[i].ledger.fleetUse(limits: limits), limit: { _ in limit }, now: now)
                    let grants = claims.map { fleet.lease(node: i, claim: $0, now: now, period: settings.leasePeriod) }
                    nodes[i].leases.granted(grants, sentAt: now)
                }
                let cost = Double.random(in: 0.01...0.5, using: &rng)
                let allot = nodes[i].leases.allotments(day: "2026-12-02", month: "2026-12", client: "c", now: now)
                switch nodes[i].ledger.reserve(cost, client: "c", limits: limits, day: "2026-12-02", month: "2026-12", fleet: allot) {
                case .success(let r):
                    nodes[i].ledger.settle(r, actual: cost * Double.random(in: 0.2...1, using: &rng), limits: limits)
                case .failure(let refusal):
                    guard case .fleetSlice(let scope, let need) = refusal.refusal else { continue }
                    // Asks at once, as the IO layer does, then tries again once.
                    nodes[i].leases.need(scope, total: need)
                    let claims = nodes[i].leases.claims(use: nodes[i].ledger.fleetUse(limits: limits), limit: { _ in limit }, now: now)
                    nodes[i].leases.granted(claims.map { fleet.lease(node: i, claim: $0, now: now, period: settings.leasePeriod) }, sentAt: now)
                    let again = nodes[i].leases.allotments(day: "2026-12-02", month: "2026-12", client: "c", now: now)
                    if case .success(let r) = nodes[i].ledger.reserve(cost, client: "c", limits: limits, day: "2026-12-02", month: "2026-12", fleet: again) {
                        nodes[i].ledger.settle(r, actual: cost, limits: limits)
                    } else {
                        refusedAt.append(nodes.reduce(0) { $0 + $1.ledger.totals.day })
                    }
                }
                let spent = nodes.reduce(0) { $0 + $1.ledger.totals.day + $1.ledger.totals.reservedDay }
                XCTAssertLessThanOrEqual(spent, limit + 1e-9)
                XCTAssertLessThanOrEqual(fleet.granted, limit + 1e-9)
            }
            // Refusals start only near the budget: at most the other nodes' idle slices (2 × 5 %)
            // plus one request's reservation away from it.
            if let first = refusedAt.first { XCTAssertGreaterThan(first, limit * (1 - 2 * settings.slice) - 0.5) }
        }
    }

    func testASliceLapsesAtItsExpiryAndIdleScopesGiveTheirsBack() {
        var leases = FleetBudgetLeases(settings: .init(leasePeriod: .seconds(30), slice: 0.1))
        let t0 = NIODeadline.uptimeNanoseconds(5_000_000_000)
        let day = FleetBudgetScope(scope: "day", period: "2026-12-02")
        leases.need(day, total: 3)
        let claims = leases.claims(use: [day: 1], limit: { _ in 100 }, now: t0)
        // A reservation waits: a whole slice (10 % of $100).
        XCTAssertEqual(claims, [FleetBudgetClaim(scope: day, limit: 100, used: 1, want: 10)])
        leases.granted([FleetBudgetGrant(scope: day, allotment: 3, fleetGranted: 10, limit: 100)], sentAt: t0)
        XCTAssertEqual(leases.allotments(day: "2026-12-02", month: "2026-12", client: "c", now: t0 + .seconds(28)).day, 3)
        // A second before the database's own expiry (counted from the send), the node stops using it.
        XCTAssertEqual(leases.allotments(day: "2026-12-02", month: "2026-12", client: "c", now: t0 + .seconds(29)).day, 0)
        // No growth and no need, but active a moment ago: it keeps a whole slice.
        XCTAssertEqual(leases.claims(use: [day: 1], limit: { _ in 100 }, now: t0 + .seconds(1)).first?.want, 10)
        // Idle for idleAfter (4 s): it wants nothing, which gives the unused slice back.
        XCTAssertEqual(leases.claims(use: [day: 1], limit: { _ in 100 }, now: t0 + .seconds(4)).first?.want, 0)
        // A stopping node gives everything back whatever it spent lately.
        XCTAssertEqual(leases.claims(use: [day: 50], limit: { _ in 100 }, now: t0 + .seconds(5), releasing: true).first?.want, 0)
        // Another day's scope is forgotten once the round no longer names it.
        let tomorrow = FleetBudgetScope(scope: "day", period: "2026-12-03")
        XCTAssertEqual(leases.claims(use: [tomorrow: 0], limit: { _ in 100 }, now: t0 + .seconds(6)).map(\.scope), [tomorrow])
        XCTAssertNil(leases.allotment(day))
    }

    /// A shadow of `fleet_lease_rates`: one exact token bucket per client.
    struct ShadowBucket {
        var tokens: Double
        var at: NIODeadline
        let perMinute: Double, burst: Double
        mutating func lease(_ c: FleetRateClaim, now: NIODeadline) -> Int {
            let refill = Double((now - at).nanoseconds) / 60e9 * perMinute
            let current = min(burst, tokens + refill + Double(c.giveBack))
            let g = max(0, min(c.want, Int(current.rounded(.down))))
            tokens = current - Double(g)
            at = now
            return g
        }
    }

    func testAClientThroughThreeNodesGetsItsLimitNotThreeTimesIt() {
        let rpm = 60, burst = 60
        var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var bucket = ShadowBucket(tokens: Double(burst), at: now, perMinute: Double(rpm), burst: Double(burst))
        var nodes = (0..<3).map { _ in FleetRateLeases(perMinute: rpm, burst: burst) }
        var admitted = 0
        var inFlight: [(node: Int, claim: FleetRateClaim, at: NIODeadline)] = []
        // 20 requests a second for 30 s, round-robin, each ask answered 5 ms later.
        for step in 0..<600 {
            now = now + .milliseconds(50)
            for f in inFlight where f.at <= now { nodes[f.node].answered(client: "k", granted: bucket.lease(f.claim, now: now), wanted: f.claim.want, now: now) }
            inFlight.removeAll { $0.at <= now }
            let i = step % 3
            if step % 40 == 0 {
                for n in 0..<3 { for c in nodes[n].sync(now: now) { inFlight.append((n, c, now + .milliseconds(5))) } }
            }
            switch nodes[i].admit(client: "k", now: now) {
            case .allowed(let ask):
                admitted += 1
                if let ask { inFlight.append((i, ask, now + .milliseconds(5))) }
            case .limited(_, let ask):
                if let ask { inFlight.append((i, ask, now + .milliseconds(5))) }
            }
        }
        // 30 s at 60 rpm from a full bucket: 60 + 30 = 90, plus at most one credit per node.
        XCTAssertLessThanOrEqual(admitted, burst + 30 + 3)
        XCTAssertGreaterThanOrEqual(admitted, burst + 30 - 10)
    }

    func testTokensOfAnIdleClientGoBackAndADebtIsCharged() {
        var node = FleetRateLeases(perMinute: 600, burst: 100)
        let t = NIODeadline.uptimeNanoseconds(1_000_000_000)
        // The first request is admitted on credit; its ask charges the debt.
        guard case .allowed(let ask?) = node.admit(client: "a", now: t) else { return XCTFail("first request not admitted with an ask") }
        XCTAssertEqual(ask.giveBack, -1)
        XCTAssertEqual(ask.want, 2)
        // While the ask is out, the credit is spent: the next one is refused.
        if case .allowed = node.admit(client: "a", now: t) { XCTFail("admitted past the credit") }
        node.answered(client: "a", granted: 5, now: t)
        XCTAssertEqual(node.balance(of: "a"), 5)
        _ = node.sync(now: t)  // it was used since the last sync: keeps its tokens
        XCTAssertEqual(node.balance(of: "a"), 5)
        let back = node.sync(now: t + .seconds(2))  // idle for a whole round: gives them back
        XCTAssertEqual(back, [FleetRateClaim(client: "a", perMinute: 600, burst: 100, want: 0, giveBack: 5)])
        XCTAssertEqual(node.balance(of: "a"), 0)
        // An empty fleet bucket refuses here for one token's time without asking again.
        node.answered(client: "a", granted: 0, now: t + .seconds(3))
        guard case .limited(let wait, _) = node.admit(client: "a", now: t + .seconds(3)) else { return XCTFail("admitted with an empty fleet bucket") }
        XCTAssertEqual(wait, node.tokenInterval)
    }
}
