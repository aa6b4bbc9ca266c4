import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import SidecarCore
@testable import SidecarProxy
import XCTest

/// Joining a flight late: a complete answer is a hit that saved what it holds; a flight that
/// ended any other way cannot be joined (the joiner goes on its own, it is not a "hit").
final class FlightTests: XCTestCase {
    let key = CacheKey(digest: Array(repeating: 7, count: 32))

    func testALateJoinerOfACompleteAnswerGetsItAllAndItsUsage() throws {
        let flight = Flight(key: key, maxBytes: 1 << 20)
        flight.publish(.head(.ok, HTTPHeaders([("content-type", "application/json")])))
        flight.publish(.body(ByteBuffer(string: #"{"id":"x","usage":"#)))
        flight.publish(.body(ByteBuffer(string: #"{"prompt_tokens":19,"completion_tokens":28,"total_tokens":47}}"#)))
        flight.publish(.end)
        let got = NIOLockedValueBox<[Flight.Event]>([])
        XCTAssertEqual(flight.join { events in got.withLockedValue { $0 += events } }, -1)
        XCTAssertEqual(got.withLockedValue { $0.count }, 4)
        let answer = try XCTUnwrap(flight.recordedAnswer)
        XCTAssertFalse(answer.isStream)
        XCTAssertEqual(ResponseInspector.usage(body: answer.body, isStream: false), .init(promptTokens: 19, completionTokens: 28))
    }

    func testAFlightThatEndedOtherwiseCannotBeJoined() {
        for end in [Flight.Event.failed(.upstreamClosed("test")), .withdrawn, .aborted] {
            let flight = Flight(key: key, maxBytes: 1 << 20)
            if case .aborted = end { flight.publish(.head(.ok, HTTPHeaders())) }
            flight.publish(end)
            XCTAssertNil(flight.join { _ in XCTFail("nothing to deliver") }, "\(end)")
            XCTAssertNil(flight.recordedAnswer)
            XCTAssertEqual(flight.joinedCount, 0)
        }
    }
}
