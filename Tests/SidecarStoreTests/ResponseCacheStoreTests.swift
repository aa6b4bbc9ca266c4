import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import SidecarStore
import SidecarTestSupport
import XCTest

/// The store against real SQLite files.
final class ResponseCacheStoreTests: XCTestCase {
    var pki: TestPKI!  // only for its temporary directory
    var path: String { pki.directory + "/state/cache.sqlite3" }

    override func setUp() async throws { pki = try TestPKI() }
    override func tearDown() async throws { pki.cleanUp() }

    func entry(_ n: UInt8, model: String = "gpt-4o-mini", size: Int = 100, created: Int64 = 1_000, ttl: Int64 = 86_400) -> CacheEntry {
        CacheEntry(key: [UInt8](repeating: n, count: 32), scope: "scope-\(n % 2)", model: model, endpoint: "/v1/chat/completions",
                   status: 200, contentType: "application/json", body: [UInt8](repeating: n, count: size), isStream: false,
                   createdAt: created, expiresAt: created + ttl, promptTokens: 19, completionTokens: 28)
    }

    /// Connections opening a new file at the same moment (the reader and the writer after the
    /// file was replaced) each migrate it: the schema version is read again under the write
    /// lock, so the second finds the work done instead of failing on "table already exists".
    func testConcurrentOpensOfANewFileMigrateItOnce() throws {
        for round in 0..<25 {
            let file = pki.directory + "/state/race-\(round).sqlite3"
            let failures = NIOLockedValueBox<[String]>([])
            DispatchQueue.concurrentPerform(iterations: 4) { _ in
                do { _ = try ResponseCacheStore(path: file) } catch { failures.withLockedValue { $0.append("\(error)") } }
            }
            XCTAssertEqual(failures.withLockedValue { $0 }, [], "round \(round)")
            XCTAssertEqual(try ResponseCacheStore(path: file).sizes().0, 0)
        }
    }

    func testRoundTripIsExactAndSurvivesReopening() throws {
        let body = Array("data: {\"x\":1}\n\ndata: [DONE]\n\n".utf8) + [0, 255, 10]
        var e = entry(1)
        e.body = body
        e.isStream = true
        e.contentType = "text/event-stream"
        do {
            let store = try ResponseCacheStore(path: path)
            try store.put(e)
        }
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o600, "the cache file is private")
        let reopened = try ResponseCacheStore(path: path)
        XCTAssertEqual(try reopened.connection.userVersion, ResponseCacheStore.migrations.count)
        let hit = try XCTUnwrap(try reopened.hit(e.key, now: 2_000))
        XCTAssertEqual(hit.body, body, "bytes replay exactly")
        XCTAssertEqual(hit.contentType, "text/event-stream")
        XCTAssertTrue(hit.isStream)
        XCTAssertEqual(hit.hitCount, 1)
        XCTAssertEqual(hit.lastHitAt, 2_000)
        XCTAssertEqual(hit.promptTokens, 19)
        XCTAssertEqual(try reopened.hit(e.key, now: 3_000)?.hitCount, 2)
        XCTAssertNil(try reopened.hit([UInt8](repeating: 9, count: 32), now: 2_000))
    }

    func testExpiredEntriesAreNotServedAndAreDeletedInBatches() throws {
        let store = try ResponseCacheStore(path: path)
        for n in 0..<10 { try store.put(entry(UInt8(n), ttl: n < 7 ? 60 : 10_000)) }
        XCTAssertNil(try store.hit(entry(0).key, now: 1_060), "expired at created + ttl")
        XCTAssertNotNil(try store.hit(entry(8).key, now: 1_060))
        XCTAssertEqual(try store.deleteExpired(now: 1_060, limit: 5), 5)
        XCTAssertEqual(try store.deleteExpired(now: 1_060, limit: 5), 2)
        XCTAssertEqual(try store.sizes().0, 3)
    }

    func testSizeCapEvictsLeastRecentlyHit() throws {
        let store = try ResponseCacheStore(path: path)
        for n in 0..<10 { try store.put(entry(UInt8(n), size: 1_000, created: 1_000 + Int64(n))) }
        _ = try store.hit(entry(0).key, now: 5_000)  // the oldest entry is the most recently hit
        let evicted = try store.evict(toFit: 6_000, batch: 3)
        XCTAssertEqual(evicted, 4)
        XCTAssertEqual(try store.sizes().1, 6_000)
        XCTAssertNotNil(try store.hit(entry(0).key, now: 5_001), "recently hit entries stay")
        for n in 1...4 { XCTAssertNil(try store.hit(entry(UInt8(n)).key, now: 5_001), "entry \(n) was least recently hit") }
    }

    func testPurgeByModelAndAge() throws {
        let store = try ResponseCacheStore(path: path)
        for n in 0..<6 { try store.put(entry(UInt8(n), model: n < 3 ? "a" : "b", created: 1_000 + Int64(n) * 100)) }
        XCTAssertEqual(try store.purge(model: "a", createdBefore: 1_150), 2)
        XCTAssertEqual(try store.purge(model: nil, createdBefore: 1_400), 2)
        XCTAssertEqual(try store.purge(model: nil, createdBefore: nil), 2)
        XCTAssertEqual(try store.sizes().0, 0)
    }

    func testCountersAccumulatePerDayAndModel() throws {
        let store = try ResponseCacheStore(path: path)
        var d = ResponseCacheStore.CounterDelta()
        d.hits = 2; d.misses = 1; d.bytesServed = 600; d.promptTokensSaved = 38; d.completionTokensSaved = 56
        try store.add(["gpt-4o-mini": d], day: "2026-11-23")
        try store.add(["gpt-4o-mini": d, "o3": d], day: "2026-11-24")
        let totals = try store.counterTotals()
        XCTAssertEqual(totals["gpt-4o-mini"]?.hits, 4)
        XCTAssertEqual(totals["gpt-4o-mini"]?.completionTokensSaved, 112)
        XCTAssertEqual(totals["o3"]?.bytesServed, 600)
    }

    func testCorruptAndUnwritableFilesGiveClearErrors() throws {
        try FileManager.default.createDirectory(atPath: pki.directory + "/state", withIntermediateDirectories: true)
        try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try ResponseCacheStore(path: path)) { error in
            let e = error as? SQLiteError
            XCTAssertTrue(e?.isCorrupt ?? false, "\(error)")
            XCTAssertTrue("\(error)".contains("file is not a database"), "\(error)")
        }
        XCTAssertThrowsError(try ResponseCacheStore(path: "/proc/llm-sidecar/cache.sqlite3")) { error in
            XCTAssertTrue((error as? SQLiteError)?.isUnwritable ?? false, "\(error)")
        }
    }

    /// Batched writes must not compete with the event loops as equals: the writer thread runs at
    /// nice +10 over the process, the reader (whose lookups a request waits for) and everyone else
    /// at the process's.
    func testTheWriterThreadYieldsTheCPUAndTheReaderDoesNot() async throws {
        let base = CacheDatabase.currentThreadNiceness()  // the process's (not always 0)
        let db = await CacheDatabase.open(path: path, logger: Logger(label: "test"))
        let writer = try await db.run { _ in CacheDatabase.currentThreadNiceness() }
        XCTAssertEqual(writer, min(19, base + CacheDatabase.writerNiceness))
        XCTAssertEqual(CacheDatabase.writerNiceness, 10)
        let reader = NIOLockedValueBox<Int32?>(nil)
        db.performRead { _ in reader.withLockedValue { $0 = CacheDatabase.currentThreadNiceness() } }
        await db.close()  // runs on the reader after the read queued before it
        XCTAssertEqual(reader.withLockedValue { $0 }, base)
        XCTAssertEqual(CacheDatabase.currentThreadNiceness(), base, "the caller's own priority is untouched")
    }

    func testWorkRunsOnTheDatabaseThreadNotTheCaller() async throws {
        let db = await CacheDatabase.open(path: path, logger: Logger(label: "test"))
        let e = entry(3)
        try await db.run { try $0.put(e) }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let body = try await db.run(on: loop) { store -> [UInt8]? in
            precondition(!loop.inEventLoop, "SQLite must never run on an event loop")
            return try store.hit(e.key, now: 1_500)?.body
        }.get()
        XCTAssertEqual(body, e.body)
        await db.close()
        try await group.shutdownGracefully()
    }
}
