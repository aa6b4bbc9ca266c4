import NIOCore
import SidecarCore
import XCTest

final class DeploymentSelectorTests: XCTestCase {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    func testLeastLoadedByWeightWins() {
        var rng = SplitMix64(seed: 1)
        var s = DeploymentSelector(deployments: [.init(weight: 3), .init(weight: 1)])
        // (0+1)/3 < (0+1)/1, then (1+1)/3 < (0+1)/1: the weight-3 deployment takes the first two.
        XCTAssertEqual(s.select(now: t0, random: &rng), 0)
        XCTAssertEqual(s.select(now: t0, random: &rng), 0)
        XCTAssertEqual(s.inFlight(0), 2)
    }

    func testCapsAreNeverExceededAndFullGroupsReturnNil() {
        var rng = SplitMix64(seed: 2)
        var s = DeploymentSelector(deployments: [.init(weight: 1, maxConcurrency: 2), .init(weight: 5, maxConcurrency: 1)])
        let picks = (0..<4).map { _ in s.select(now: t0, random: &rng) }
        XCTAssertEqual(picks.compactMap { $0 }.sorted(), [0, 0, 1])
        XCTAssertNil(picks[3], "all deployments full")
        s.finished(1, .neutral, now: t0)
        XCTAssertEqual(s.select(now: t0, random: &rng), 1)
    }

    func testEjectionHalfOpenProbeAndRecovery() {
        var rng = SplitMix64(seed: 3)
        var s = DeploymentSelector(deployments: [.init(), .init(), .init(), .init()])
        for _ in 0..<3 {
            _ = s.select(now: t0, excluding: [1, 2, 3], random: &rng)
            s.finished(0, .failure, now: t0)
        }
        XCTAssertEqual(s.health(0), .ejected(until: t0 + .seconds(5)))
        for _ in 0..<20 { if let i = s.select(now: t0 + .seconds(1), random: &rng) { XCTAssertNotEqual(i, 0) } }
        // After the ejection, exactly one probe goes through.
        var s2 = s
        for i in 1...3 { while s2.inFlight(i) > 0 { s2.finished(i, .neutral, now: t0) } }
        XCTAssertEqual(s2.select(now: t0 + .seconds(6), excluding: [1, 2, 3], random: &rng), 0)
        XCTAssertNil(s2.select(now: t0 + .seconds(6), excluding: [1, 2, 3], random: &rng), "only one probe at a time")
        var failed = s2
        failed.finished(0, .failure, now: t0 + .seconds(7))
        XCTAssertEqual(failed.health(0), .ejected(until: t0 + .seconds(17)), "a failed probe ejects for base × 2")
        s2.finished(0, .success(latency: .milliseconds(10)), now: t0 + .seconds(7))
        XCTAssertEqual(s2.health(0), .healthy)
    }

    func testRetryAfterEjectsAtLeastThatLong() {
        var rng = SplitMix64(seed: 4)
        var s = DeploymentSelector(deployments: [.init(), .init()])
        _ = s.select(now: t0, excluding: [1], random: &rng)
        s.finished(0, .rateLimited(retryAfter: .seconds(30)), now: t0)
        XCTAssertEqual(s.health(0), .ejected(until: t0 + .seconds(30)))
    }

    func testNeverEjectsMoreThanTheMaxPercent() {
        var rng = SplitMix64(seed: 5)
        var s = DeploymentSelector(deployments: [.init(), .init()])  // 50 % of 2 = 1
        for i in 0..<2 {
            for _ in 0..<3 {
                _ = s.select(now: t0, excluding: [1 - i], random: &rng)
                s.finished(i, .failure, now: t0)
            }
        }
        XCTAssertEqual(s.health(0), .ejected(until: t0 + .seconds(5)))
        XCTAssertEqual(s.health(1), .healthy, "the second would exceed max_ejection_percent")
    }

    /// Random start/finish/fail sequences against a shadow model: caps hold, ejected deployments
    /// are never picked except one half-open probe at a time, down ones never, in-flight counts match.
    func testRandomEventsAgainstShadowModel() {
        var rng = SplitMix64(seed: 0xBEEF)
        for round in 0..<100 {
            let n = Int(rng.next() % 4) + 1
            let deployments = (0..<n).map { _ in DeploymentSelector.Deployment(weight: Int(rng.next() % 4) + 1, maxConcurrency: rng.next() % 2 == 0 ? Int(rng.next() % 5) + 1 : nil) }
            var s = DeploymentSelector(deployments: deployments)
            var now = t0
            var running: [Int] = []
            var down = Set<Int>()
            for _ in 0..<300 {
                now = now + .milliseconds(Int64(rng.next() % 500))
                if rng.next() % 10 == 0 {
                    let i = Int(rng.next() % UInt64(n))
                    if down.contains(i) { down.remove(i) } else { down.insert(i) }
                    s.setDown(i, down.contains(i))
                } else if rng.next() % 3 != 0 {
                    let before = (0..<n).map { s.health($0) }
                    if let i = s.select(now: now, random: &rng) {
                        if case .ejected(let until) = before[i] { XCTAssertLessThanOrEqual(until, now, "round \(round): picked an ejected deployment") }
                        if case .halfOpen(probing: true) = before[i] { XCTFail("round \(round): a second probe") }
                        XCTAssertFalse(down.contains(i), "round \(round): picked a deployment that is down")
                        if let cap = deployments[i].maxConcurrency { XCTAssertLessThanOrEqual(s.inFlight(i), cap, "round \(round): over the cap") }
                        running.append(i)
                    }
                } else if !running.isEmpty {
                    let k = Int(rng.next() % UInt64(running.count))
                    let i = running.remove(at: k)
                    let outcomes: [DeploymentSelector.Outcome] = [.success(latency: .milliseconds(Int64(rng.next() % 100))), .failure, .neutral, .rateLimited(retryAfter: .seconds(1))]
                    s.finished(i, outcomes[Int(rng.next() % 4)], now: now)
                }
                for i in 0..<n { XCTAssertEqual(s.inFlight(i), running.filter { $0 == i }.count, "round \(round)") }
            }
        }
    }

    func testDownDeploymentsTakeNothingAndFinishTheirRequests() {
        var rng = SplitMix64(seed: 4)
        var s = DeploymentSelector(deployments: [.init(), .init()])
        XCTAssertEqual(s.select(now: t0, excluding: [0], random: &rng), 1)
        s.setDown(1, true)
        for _ in 0..<3 { XCTAssertEqual(s.select(now: t0, random: &rng), 0) }
        XCTAssertFalse(s.admits(1, loadFactor: 100, now: t0), "down: no placement by affinity either")
        s.finished(1, .success(latency: .milliseconds(5)), now: t0)
        XCTAssertEqual(s.inFlight(1), 0, "the request in flight finished normally")
        s.setDown(0, true)
        XCTAssertNil(s.select(now: t0, random: &rng), "every deployment down")
        s.setDown(1, false)
        XCTAssertEqual(s.select(now: t0, random: &rng), 1)
        XCTAssertEqual(s.health(0), .healthy, "down is not an ejection")
    }

    func testSharesConvergeToWeightsUnderSaturation() {
        var rng = SplitMix64(seed: 6)
        var s = DeploymentSelector(deployments: [.init(weight: 3), .init(weight: 1)])
        var running: [Int] = []
        var picks = [0, 0]
        for _ in 0..<20_000 {
            while running.count < 40, let i = s.select(now: t0, random: &rng) { running.append(i); picks[i] += 1 }
            let k = Int(rng.next() % UInt64(running.count))
            s.finished(running.remove(at: k), .success(latency: .milliseconds(5)), now: t0)
        }
        let share = Double(picks[0]) / Double(picks[0] + picks[1])
        XCTAssertEqual(share, 0.75, accuracy: 0.03, "3:1 weights give ~3:1 load: \(picks)")
    }

    func testBackoffIsBoundedFullJitterWithRetryAfterFloor() {
        var rng = SplitMix64(seed: 7)
        let b = Backoff()
        XCTAssertEqual(b.upperBound(attempt: 0), .milliseconds(100))
        XCTAssertEqual(b.upperBound(attempt: 2), .milliseconds(400))
        XCTAssertEqual(b.upperBound(attempt: 6), .seconds(5))
        XCTAssertEqual(b.upperBound(attempt: 200), .seconds(5))
        for attempt in 0..<10 {
            let d = b.delay(attempt: attempt, random: &rng)
            XCTAssertGreaterThanOrEqual(d, .zero)
            XCTAssertLessThanOrEqual(d, b.upperBound(attempt: attempt))
        }
        XCTAssertEqual(b.delay(attempt: 0, retryAfter: .seconds(2), random: &rng), .seconds(2))
    }
}
