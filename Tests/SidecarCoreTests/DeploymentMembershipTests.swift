import NIOCore
import SidecarCore
import XCTest

/// Members joining and leaving the selector (`discover = "dns"`), against a shadow model of
/// what must hold: a drained member never gets a new pick, its in-flight requests finish and
/// then free its index, and a slow-starting member's share grows linearly to its weight.
final class DeploymentMembershipTests: XCTestCase {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    func testDrainedMembersFinishInFlightAndFreeTheirIndex() {
        var rng = SplitMix64(seed: 1)
        var s = DeploymentSelector(deployments: [])
        XCTAssertNil(s.select(now: t0, random: &rng), "no member yet")
        let a = s.addMember(.init(), now: t0)
        let b = s.addMember(.init(), now: t0)
        XCTAssertEqual([a, b], [0, 1])
        let picks = (0..<4).compactMap { _ in s.select(now: t0, random: &rng) }
        XCTAssertEqual(picks.filter { $0 == b }.count, 2)
        s.drain(b)
        XCTAssertFalse(s.isRemoved(b), "two requests still in flight")
        for _ in 0..<10 { XCTAssertEqual(s.select(now: t0, random: &rng), a) }
        s.finished(b, .success(latency: .milliseconds(5)), now: t0)
        XCTAssertFalse(s.isRemoved(b))
        s.finished(b, .neutral, now: t0)
        XCTAssertTrue(s.isRemoved(b))
        XCTAssertEqual(s.addMember(.init(weight: 2), now: t0), b, "the freed index is reused")
        XCTAssertEqual(s.deployments[b].weight, 2)
        XCTAssertEqual(s.inFlight(b), 0)
    }

    /// Random joins, drains, picks and finishes; the shadow model tracks each member's in-flight
    /// requests and whether it is live.
    func testRandomChurnAgainstAShadowModel() {
        var rng = SplitMix64(seed: 7)
        var s = DeploymentSelector(deployments: [])
        var live: Set<Int> = []
        var inFlight: [Int: Int] = [:]
        for _ in 0..<20_000 {
            switch rng.next() % 4 {
            case 0:
                let i = s.addMember(.init(weight: Int(1 + rng.next() % 3)), now: t0)
                XCTAssertFalse(live.contains(i) || (inFlight[i] ?? 0) > 0, "index \(i) reused while in use")
                live.insert(i)
            case 1:
                guard let i = live.randomElement(using: &rng) else { continue }
                s.drain(i)
                live.remove(i)
            case 2:
                let i = s.select(now: t0, random: &rng)
                if let i {
                    XCTAssertTrue(live.contains(i), "picked a member that is not live")
                    inFlight[i, default: 0] += 1
                } else {
                    XCTAssertTrue(live.isEmpty)
                }
            default:
                guard let i = inFlight.filter({ $0.value > 0 }).keys.randomElement(using: &rng) else { continue }
                s.finished(i, .neutral, now: t0)
                inFlight[i]! -= 1
                XCTAssertEqual(s.isRemoved(i), !live.contains(i) && inFlight[i] == 0)
            }
        }
    }

    func testSlowStartRampsTheWeightLinearlyFromATenthToFull() {
        var s = DeploymentSelector(deployments: [.init(weight: 4)])
        let n = s.addMember(.init(weight: 4), slowStart: .seconds(30), now: t0)
        XCTAssertEqual(s.effectiveWeight(0, now: t0), 4)
        XCTAssertEqual(s.effectiveWeight(n, now: t0), 0.4, accuracy: 1e-9, "10 % floor")
        XCTAssertEqual(s.effectiveWeight(n, now: t0 + .seconds(15)), 2, accuracy: 1e-9)
        XCTAssertEqual(s.effectiveWeight(n, now: t0 + .seconds(45)), 4)

        // Under steady load the new member's share follows its weight: about 1/3 of the group's
        // in-flight requests at 15 s (2 against 4), half once the ramp is over.
        var rng = SplitMix64(seed: 3)
        func share(at now: NIODeadline) -> Double {
            var t = s
            for _ in 0..<30 { _ = t.select(now: now, random: &rng) }
            return Double(t.inFlight(n)) / 30
        }
        XCTAssertEqual(share(at: t0), 3.0 / 30, accuracy: 0.05)
        XCTAssertEqual(share(at: t0 + .seconds(15)), 1.0 / 3, accuracy: 0.05)
        XCTAssertEqual(share(at: t0 + .seconds(30)), 0.5, accuracy: 0.05)
    }
}
