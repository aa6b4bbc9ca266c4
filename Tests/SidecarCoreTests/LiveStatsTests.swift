import SidecarCore
import XCTest

/// The dashboard's pure parts: the request tally and the ring of recent errors.
final class LiveStatsTests: XCTestCase {
    func testLatencyBucketsFollowPrometheusLessOrEqual() {
        let ms: Int64 = 1_000_000
        XCTAssertEqual(RequestTally.bucket(nanoseconds: 0), 0)
        XCTAssertEqual(RequestTally.bucket(nanoseconds: 1 * ms), 0, "a bound belongs to its own bucket (le)")
        XCTAssertEqual(RequestTally.bucket(nanoseconds: 1 * ms + 1), 1)
        XCTAssertEqual(RequestTally.bucket(nanoseconds: 30 * ms), 5, "(25, 50] ms")
        XCTAssertEqual(RequestTally.bucket(nanoseconds: 300_000 * ms), RequestTally.boundsMilliseconds.count - 1)
        XCTAssertEqual(RequestTally.bucket(nanoseconds: 300_000 * ms + 1), RequestTally.boundsMilliseconds.count, "above the last bound")
        XCTAssertEqual(RequestTally.bucket(nanoseconds: .max), RequestTally.boundsMilliseconds.count)
        XCTAssertEqual(RequestTally.boundsMilliseconds, RequestTally.boundsMilliseconds.sorted())
    }

    func testTallyCountsClassesCutsAndOnlyTimesCompleteAnswers() {
        var t = RequestTally()
        t.finished(status: 200, complete: true, nanoseconds: 3_000_000)
        t.finished(status: 201, complete: true, nanoseconds: 40_000_000)
        t.finished(status: 429, complete: true, nanoseconds: 500_000)
        t.finished(status: 502, complete: true, nanoseconds: 2_000_000_000)
        t.finished(status: 200, complete: false, nanoseconds: 600_000_000_000)
        t.finished(status: 0, complete: true, nanoseconds: 1)  // no status: nothing was answered
        XCTAssertEqual(t.finished, 6)
        XCTAssertEqual(t.byClass, [0, 2, 0, 1, 1])
        XCTAssertEqual(t.cut, 2)
        XCTAssertEqual(t.timed, 4)
        XCTAssertEqual(t.buckets[RequestTally.bucket(nanoseconds: 3_000_000)], 1)
        XCTAssertEqual(t.buckets[RequestTally.bucket(nanoseconds: 40_000_000)], 1)
        XCTAssertEqual(t.buckets[0], 1)
        XCTAssertEqual(t.buckets.last, 0, "the cut 10-minute answer is not timed")
        XCTAssertEqual(t.sumNanoseconds, 3_000_000 + 40_000_000 + 500_000 + 2_000_000_000)
        for r in ["hit", "hit", "miss", "coalesced", "bypass", "something-else"] { t.cacheResult(r) }
        XCTAssertEqual(t.cache, [2, 1, 1, 1])
    }

    private func entry(_ n: Int, path: String = "/v1/chat/completions", message: String = "m") -> ErrorRing.Entry {
        .init(time: Int64(n), status: 502, code: "upstream_connect_failed", message: message, model: "gpt-4o-mini", path: path)
    }

    func testTheRingKeepsTheNewestInOrderAndCountsAll() {
        var ring = ErrorRing(capacity: 3)
        XCTAssertEqual(ring.newestFirst, [])
        ring.record(entry(1))
        ring.record(entry(2))
        XCTAssertEqual(ring.newestFirst.map(\.time), [2, 1])
        for n in 3...7 { ring.record(entry(n)) }
        XCTAssertEqual(ring.newestFirst.map(\.time), [7, 6, 5])
        XCTAssertEqual(ring.recorded, 7)
        ring.record(entry(8))
        XCTAssertEqual(ring.newestFirst.map(\.time), [8, 7, 6])
    }

    func testEntriesAreCleanedOfQueriesCredentialsAndLength() {
        var ring = ErrorRing(capacity: 2)
        ring.record(entry(1, path: "/v1/chat/completions?api-key=sk-live-0123456789abcdefXYZ#frag",
                         message: "no route for /v2?key=sk-abcdefghijklmnop1234 sent with Bearer abc.def and sk-proj-ABCDEFGHIJKLMNOPQRSTUV."))
        let e = ring.newestFirst[0]
        XCTAssertEqual(e.path, "/v1/chat/completions")
        XCTAssertEqual(e.message, "no route for /v2?[redacted] sent with Bearer [redacted] and sk-[redacted].")
        XCTAssertFalse(e.message.contains("abcdefghijklmnop"))

        XCTAssertEqual(ErrorRing.clean(message: "ask for sk-short or a task-list"), "ask for sk-short or a task-list",
                       "words that merely contain sk- are kept")
        XCTAssertEqual(ErrorRing.clean(message: "line one\r\nline two"), "line one  line two", "one row stays one row")
        let long = String(repeating: "x", count: 1_000)
        XCTAssertEqual(ErrorRing.clean(message: long).count, ErrorRing.maxMessage + 1)
        XCTAssertTrue(ErrorRing.clean(message: long).hasSuffix("…"))
        ring.record(.init(time: 2, status: 404, code: "not_found", message: "", model: String(repeating: "m", count: 500), path: "/" + long))
        XCTAssertEqual(ring.newestFirst[0].model?.count, ErrorRing.maxName + 1)
        XCTAssertEqual(ring.newestFirst[0].path.count, ErrorRing.maxPath + 1)
    }
}
