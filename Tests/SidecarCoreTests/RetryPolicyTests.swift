import SidecarCore
import XCTest

/// One retry policy, from the failure's own retry class.
final class RetryPolicyTests: XCTestCase {
    private func decide(_ e: ProxyError, started: Bool = false, reused: Bool = false, replayed: Bool = false, kept: Bool = true) -> RetryPolicy.Decision {
        RetryPolicy.afterFailure(e, responseStarted: started, reusedConnection: reused, replayedAlready: replayed, bodyKept: kept)
    }

    func testEachFailureClass() {
        let closed = ProxyError.upstreamClosed("closed before a response")
        XCTAssertEqual(decide(closed, reused: true), .replayOnFreshConnection, "the keep-alive close race")
        XCTAssertEqual(decide(closed, reused: true, replayed: true), .tryElsewhere, "one replay only")
        XCTAssertEqual(decide(closed, reused: true, kept: false), .tryElsewhere, "a body not kept cannot be replayed here")
        XCTAssertEqual(decide(closed, reused: false), .tryElsewhere)
        XCTAssertEqual(decide(closed, started: true, reused: true), .giveUp, "nothing after a response head")
        for e in [ProxyError.upstreamConnect("refused"), .upstreamTLS("bad certificate"), .upstreamTimeout(.connect, after: "1s"),
                  .upstreamTimeout(.tlsHandshake, after: "1s"), .upstreamTimeout(.poolQueue, after: "1s")] {
            XCTAssertEqual(e.retry, .beforeSending, e.codeString)
            XCTAssertEqual(decide(e), .tryElsewhere, e.codeString)
        }
        for e in [ProxyError.upstreamTimeout(.firstByte, after: "1s"), .upstreamTimeout(.readIdle, after: "1s"),
                  .upstreamProtocol("bad status line"), .badRequest("x"), .payloadTooLarge(limit: 1)] {
            XCTAssertEqual(e.retry, .never, e.codeString)
            XCTAssertEqual(decide(e, reused: true), .giveUp, "the provider may have it: \(e.codeString)")
        }
    }
}
