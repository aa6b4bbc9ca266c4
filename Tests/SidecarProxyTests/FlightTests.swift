import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import SidecarCore
@testable import SidecarProxy
import SidecarStore
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

/// The writer runs at a lower priority than the event loops; if it falls behind, answers waiting
/// for it are bounded by `ResponseCache.maxQueuedBytes`: past that they are not stored (and
/// counted), instead of piling up in memory.
final class WriterBacklogTests: XCTestCase {
    func testABackloggedWriterCostsEntriesNotMemory() async throws {
        let dir = ProxyHarness.temporaryDirectory()
        var settings = SidecarConfiguration.Cache()
        settings.path = dir + "/cache.sqlite3"
        settings.memoryBytes = 1 << 20
        let cache = await ResponseCache.open(settings: settings, logger: Logger(label: "test"))
        // Hold the database thread, as a starved writer would be.
        let gate = ConditionLock(value: 0)
        let hold: @Sendable (CacheDatabase.StoreAccess) -> Void = { _ in
            gate.lock(whenValue: 1)
            gate.unlock()
        }
        cache.database.perform(hold)
        let answer = ByteBuffer(repeating: UInt8(ascii: "x"), count: 1 << 20)
        let admitted = ResponseCache.maxQueuedBytes / ((1 << 20) + ResponseCache.queuedAnswerOverhead)
        let count = admitted + 8
        for i in 0..<count {
            var key = Array(repeating: UInt8(0), count: 32)
            key[0] = UInt8(i)
            cache.finish(.init(
                key: CacheKey(digest: key), scope: "s", model: "m", endpoint: "/v1/embeddings", status: 200, contentType: "application/json",
                isStream: false, framed: true, ttl: 60, body: [answer], coalesced: 0, usage: nil, flight: nil))
        }
        XCTAssertEqual(cache.storesSkipped, 8, "16 MiB queued at most: the last 8 answers are not stored")
        gate.lock()
        gate.unlock(withValue: 1)
        // Everything queued is written: the batch write is queued by the first answer taken in,
        // so it is ahead of the second of these two turns on the database thread.
        _ = try await cache.database.run { _ in () }
        let stored = try await cache.database.run { try $0.sizes().0 }
        XCTAssertEqual(Int(stored), admitted)
        cache.finish(.init(
            key: CacheKey(digest: Array(repeating: 0xFF, count: 32)), scope: "s", model: "m", endpoint: "/v1/embeddings", status: 200,
            contentType: "application/json", isStream: false, framed: true, ttl: 60, body: [answer], coalesced: 0, usage: nil, flight: nil))
        XCTAssertEqual(cache.storesSkipped, 8, "the backlog is gone: stored again")
        await cache.close()
    }
}
