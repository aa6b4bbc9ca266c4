import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SidecarCore
import SidecarFleet
import SidecarTestSupport
import XCTest

/// FleetDatabase's shared cache tier, notifications, timeouts and error messages.
extension FleetDatabaseTests {
    func testAnAnswerStoredByOneNodeIsAHitForAnotherInItsScopeOnly() async throws {
        let url = try freshDatabase()
        let databases = try await migrated(url, nodes: ["a", "b"])
        let stored = Self.answer([1, 2, 3, 0xFF])
        try await databases[0].store([stored])
        let hit = try await databases[1].lookup(key: [1, 2, 3, 0xFF], scope: "s1", claimSeconds: nil)
        XCTAssertEqual(hit, .hit(stored))
        let otherScope = try await databases[1].lookup(key: [1, 2, 3, 0xFF], scope: "s2", claimSeconds: nil)
        XCTAssertEqual(otherScope, .miss, "another credential never reads this answer")
        let unknown = try await databases[1].lookup(key: [9], scope: "s1", claimSeconds: nil)
        XCTAssertEqual(unknown, .miss)
        let now = Int64(Date().timeIntervalSince1970)
        try await databases[0].store([Self.answer([7], createdAt: now - 100, expiresAt: now - 1)])
        let expired = try await databases[1].lookup(key: [7], scope: "s1", claimSeconds: nil)
        XCTAssertEqual(expired, .miss, "an expired answer is not a hit")
        XCTAssertEqual(try pg().psql("SELECT size FROM fleet_cache WHERE key = '\\x010203ff'", database: dbName(url)), String(stored.body.count))
    }

    func testInFlightClaimsMakeOneLeader() async throws {
        let url = try freshDatabase()
        let databases = try await migrated(url, nodes: ["a", "b"])
        let (a, b) = (databases[0], databases[1])
        let first = try await a.lookup(key: [5], scope: "s1", claimSeconds: 0.5)
        XCTAssertEqual(first, .leader)
        let second = try await b.lookup(key: [5], scope: "s1", claimSeconds: 0.5)
        XCTAssertEqual(second, .follower(node: "a"))
        let renewed = try await a.lookup(key: [5], scope: "s1", claimSeconds: 0.5)
        XCTAssertEqual(renewed, .leader, "the holder's claim is its own")
        try await Task.sleep(nanoseconds: 800_000_000)
        let takeover = try await b.lookup(key: [5], scope: "s1", claimSeconds: 30)
        XCTAssertEqual(takeover, .leader, "an expired claim is taken over")
        try await b.store([Self.answer([5])])
        XCTAssertEqual(try pg().psql("SELECT count(*) FROM fleet_inflight", database: dbName(url)), "0", "storing drops the claim")
        let hit = try await a.lookup(key: [5], scope: "s1", claimSeconds: 30)
        XCTAssertEqual(hit, .hit(Self.answer([5], createdAt: Self.createdAt(hit), expiresAt: Self.expiresAt(hit))))
        let leader = try await a.lookup(key: [6], scope: "s1", claimSeconds: 30)
        XCTAssertEqual(leader, .leader)
        try await b.release(key: [6])  // not b's claim: nothing happens
        let stillA = try await b.lookup(key: [6], scope: "s1", claimSeconds: 30)
        XCTAssertEqual(stillA, .follower(node: "a"))
        try await a.release(key: [6])
        let free = try await b.lookup(key: [6], scope: "s1", claimSeconds: 30)
        XCTAssertEqual(free, .leader, "a released its claim")
    }

    func testStoresAndReleasesAreNotifiedAcrossReconnections() async throws {
        let url = try freshDatabase()
        let databases = try await migrated(url, nodes: ["a", "b"])
        let subscriptions = AsyncStream<Void>.makeStream()
        let stream = databases[0].cacheNotifications(onSubscribe: { subscriptions.continuation.yield() })
        var keys = stream.makeAsyncIterator()
        var subscribed = subscriptions.stream.makeAsyncIterator()
        await subscribed.next()
        try await databases[1].store([Self.answer([0xAB, 0x01])])
        let stored = await keys.next()
        XCTAssertEqual(stored, [0xAB, 0x01])
        _ = try await databases[1].lookup(key: [0x02], scope: "s1", claimSeconds: 30)
        try await databases[1].release(key: [0x02])
        let released = await keys.next()
        XCTAssertEqual(released, [0x02])

        try pg().stop()
        try pg().startAgain()
        await subscribed.next()  // listening again on a new connection
        try await databases[1].store([Self.answer([0x03])])
        let afterRestart = await keys.next()
        XCTAssertEqual(afterRestart, [0x03])
    }

    func testPruneDeletesExpiredThenOldestAndOneNodeAtATime() async throws {
        let url = try freshDatabase()
        let database = try await migrated(url, nodes: ["a"])[0]
        let now = Int64(Date().timeIntervalSince1970)
        let body = [UInt8](repeating: 0x61, count: 100)
        try await database.store((1...5).map { Self.answer([UInt8($0)], createdAt: now - 100 + Int64($0), body: body) }
                                 + [Self.answer([9], createdAt: now, expiresAt: now - 1, body: body)])
        let deleted = try await database.prune(maxBytes: 250)
        XCTAssertEqual(deleted, 4, "the expired answer, then the three oldest")
        XCTAssertEqual(try pg().psql("SELECT string_agg(encode(key, 'hex'), ',' ORDER BY key) FROM fleet_cache", database: dbName(url)), "04,05")

        // Another node holds the prune lock: this one does not wait.
        let db = dbName(url)
        let server = try pg()
        let holder = Self.inThread { _ = try? server.psql("SELECT pg_advisory_xact_lock(\(0x6C6C_6D73_7072_6E01 as Int64)), pg_sleep(1.5)", database: db) }
        try await Self.waitFor { try server.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted", database: db) != "0" }
        let busy = try await database.prune(maxBytes: 0)
        XCTAssertNil(busy)
        _ = await holder.value
        let free = try await database.prune(maxBytes: 0)
        XCTAssertEqual(free, 2)
    }

    // MARK: failures

    func testTimeoutsAndUnreachableServersFailFastWithoutTheURL() async throws {
        let url = try freshDatabase()
        let database = try open(url, node: "a", statementTimeout: .milliseconds(500))
        try await database.migrate()
        // A row lock held elsewhere: the server's statement_timeout ends the wait.
        let db = dbName(url)
        let server = try pg()
        _ = try await database.leaseBudgets([FleetBudgetClaim(scope: FleetBudgetScope(scope: "day", period: "d"), limit: 1, used: 0, want: 1)], leaseSeconds: 30)
        let holder = Self.inThread { _ = try? server.psql("BEGIN; SELECT 1 FROM fleet_budgets FOR UPDATE; SELECT pg_sleep(1.5); COMMIT", database: db) }
        try await Self.waitFor {
            try server.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(1.5)%' AND pid <> pg_backend_pid()", database: db) != "0"
        }
        do {
            _ = try await database.leaseBudgets([FleetBudgetClaim(scope: FleetBudgetScope(scope: "day", period: "d"), limit: 1, used: 0, want: 1)], leaseSeconds: 30)
            XCTFail("the lease waited past the statement timeout")
        } catch let error as FleetError {
            XCTAssertEqual(error.kind, .timeout, error.description)
            XCTAssertEqual(error.description, "fleet database statement timed out after 0.5 s")
            XCTAssertEqual(error.sqlState, "57014", "the server's statement_timeout (a startup parameter) ended it")
        }
        _ = await holder.value

        // A backend that stops answering (a partitioned server): the client-side deadline.
        _ = try await database.nodes()
        let pids = try pg().psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'llm-sidecar' AND datname = '\(db)'", database: db)
            .split(separator: "\n").compactMap { pid_t($0) }
        XCTAssertFalse(pids.isEmpty)
        for pid in pids { kill(pid, SIGSTOP) }
        defer { for pid in pids { kill(pid, SIGCONT) } }
        let started = Date()
        do {
            _ = try await database.nodes()
            XCTFail("a stopped backend answered")
        } catch let error as FleetError {
            XCTAssertEqual(error.kind, .timeout, error.description)
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 2, "the deadline answers the caller")

        // Nothing listens at the socket: unreachable, and the password is never in the message.
        let nowhere = try open("postgres://fleet:s3cr%21t@/fleet?host=/nonexistent-dir&port=5999", node: "x", statementTimeout: .seconds(1))
        do {
            try await nowhere.heartbeat(version: "1", startedAt: 0)
            XCTFail("connected to nothing")
        } catch let error as FleetError {
            XCTAssertEqual(error.kind, .unreachable, error.description)
            XCTAssertFalse(error.description.contains("s3cr"), error.description)
            XCTAssertFalse(error.description.contains("nonexistent"), error.description)
        }
        try await Task.sleep(nanoseconds: 300_000_000)  // the connection probe started by the failure finds out why
        do {
            try await nowhere.heartbeat(version: "1", startedAt: 0)
            XCTFail("connected to nothing")
        } catch let error as FleetError {
            XCTAssertEqual(error.description, "fleet database unreachable: no connection within 1 s (no such file or directory)")
        }
    }

    func testThePoolReconnectsAfterTheServerCrashes() async throws {
        let url = try freshDatabase()
        let database = try open(url, node: "a", statementTimeout: .seconds(1))
        try await database.migrate()
        try await database.heartbeat(version: "1", startedAt: 1)
        try pg().psql("CHECKPOINT")  // synchronous_commit is off: a crash could lose the last commits
        try pg().kill9()
        // The killed postmaster's backends exit on their own, shortly: calls fail from then on.
        var failure: FleetError?
        for _ in 0..<30 where failure == nil {
            do {
                _ = try await database.nodes()
                try await Task.sleep(nanoseconds: 100_000_000)
            } catch let error as FleetError {
                failure = error
            }
        }
        let error = try XCTUnwrap(failure, "a killed server kept answering")
        XCTAssertTrue([.unreachable, .timeout].contains(error.kind), error.description)
        try pg().startAgain()
        var nodes: [FleetNodeRow] = []
        for _ in 0..<50 where nodes.isEmpty {
            nodes = (try? await database.nodes()) ?? []
            if nodes.isEmpty { try await Task.sleep(nanoseconds: 100_000_000) }
        }
        XCTAssertEqual(nodes.map(\.node), ["a"], "the pool connects again once the server is back")
    }

    func testBadURLsAreRefusedWithoutEchoingThem() throws {
        let logger = Logger(label: "fleet-test")
        func refusal(_ url: String) -> String? {
            do {
                _ = try FleetDatabase(url: url, node: "n", poolSize: 1, connectTimeout: .seconds(1), statementTimeout: .seconds(1), logger: logger)
                return nil
            } catch {
                XCTAssertFalse("\(error)".contains("hunter2"), "\(error)")
                return "\(error)"
            }
        }
        XCTAssertEqual(refusal("postgres://u:hunter2@db.example/fleet?sslmode=x"), "fleet database URL: unknown sslmode 'x' (disable, prefer or require)")
        XCTAssertEqual(refusal("mysql://u:hunter2@db/fleet"), "fleet database URL: the scheme must be postgres:// or postgresql://")
        XCTAssertEqual(refusal("postgres://u:hunter2@db:99999/fleet"), "fleet database URL: the port must be a number from 1 to 65535")
        XCTAssertEqual(refusal("postgres://u:hunter2%zz@db/fleet"), "fleet database URL: bad percent-encoding in the password")
        XCTAssertEqual(refusal("postgres://u:hunter2@db/fleet?colour=blue"), "fleet database URL: unknown parameter 'colour'")
        XCTAssertNil(refusal("postgresql://u:hunter2@db.example:6432/fleet?sslmode=require"))
        XCTAssertNil(refusal("postgresql://u:p%40ss@[::1]:6432/fleet"))
        XCTAssertNil(refusal("postgresql:///fleet?host=/run/postgresql"))
    }

    /// Runs a blocking call (psql) on a thread of its own, not on the concurrency pool's two threads.
    static func inThread(_ body: @escaping @Sendable () -> Void) -> Task<Void, Never> {
        Task {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                Thread {
                    body()
                    continuation.resume()
                }.start()
            }
        }
    }

    /// Polls `condition` every 10 ms for up to a second.
    static func waitFor(_ condition: () throws -> Bool) async throws {
        for _ in 0..<100 {
            if try condition() { return }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        XCTFail("condition not met within a second")
    }

    static func createdAt(_ lookup: FleetCacheLookup) -> Int64 {
        if case .hit(let answer) = lookup { return answer.createdAt }
        return -1
    }

    static func expiresAt(_ lookup: FleetCacheLookup) -> Int64 {
        if case .hit(let answer) = lookup { return answer.expiresAt }
        return -1
    }
}
