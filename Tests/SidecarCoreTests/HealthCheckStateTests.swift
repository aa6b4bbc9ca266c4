import SidecarCore
import XCTest

final class HealthCheckStateTests: XCTestCase {
    func testFirstResultDecidesThenThresholds() {
        var up = HealthCheckState(healthy: 2, unhealthy: 3)
        XCTAssertFalse(up.routable, "pending routes nothing")
        XCTAssertEqual(up.passed(), .markedUp)
        XCTAssertEqual(up.failed(), .none)
        XCTAssertEqual(up.failed(), .none)
        XCTAssertEqual(up.passed(), .none, "a pass resets the failures")
        XCTAssertEqual(up.failed(), .none)
        XCTAssertEqual(up.failed(), .none)
        XCTAssertEqual(up.failed(), .markedDown)
        XCTAssertEqual(up.passed(), .none)
        XCTAssertEqual(up.passed(), .markedUp)

        var down = HealthCheckState(healthy: 2, unhealthy: 3)
        XCTAssertEqual(down.failed(), .markedDown, "a deployment never seen working is down at its first failure")
        XCTAssertEqual(down.status, .down)
        XCTAssertEqual(down.passed(), .none)
        XCTAssertEqual(down.failed(), .none, "a failure resets the passes")
        XCTAssertEqual(down.passed(), .none)
        XCTAssertEqual(down.passed(), .markedUp)
    }

    /// Random results against a shadow model that keeps the whole history: the status is the
    /// rule of the table in the type's documentation, read off the history.
    func testRandomResultsAgainstShadowModel() {
        var rng = SplitMix64(seed: 7)
        for _ in 0..<200 {
            let healthy = Int(rng.next() % 4) + 1
            let unhealthy = Int(rng.next() % 4) + 1
            var s = HealthCheckState(healthy: healthy, unhealthy: unhealthy)
            var history: [Bool] = []
            var expected = HealthCheckState.Status.pending
            for _ in 0..<100 {
                let pass = rng.next() % 3 != 0
                let before = expected
                history.append(pass)
                let run = history.reversed().prefix { $0 == pass }.count
                switch (expected, pass) {
                case (.pending, true): expected = .up
                case (.pending, false): expected = .down
                case (.down, true) where run >= healthy: expected = .up
                case (.up, false) where run >= unhealthy: expected = .down
                default: break
                }
                let transition = pass ? s.passed() : s.failed()
                XCTAssertEqual(s.status, expected)
                XCTAssertEqual(s.routable, expected == .up)
                XCTAssertEqual(transition, before == expected ? .none : (expected == .up ? .markedUp : .markedDown))
            }
        }
    }
}
