import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SidecarCore
import SidecarFleet
import SidecarTestSupport
import XCTest

/// FleetDatabase against a real PostgreSQL (the run's private cluster, `TestPostgres`, a database per
/// test): migrations, budget and rate leases under concurrency, the outbox's exactly-once push,
/// the shared cache tier with claims and notifications, timeouts and safe error messages.
final class FleetDatabaseTests: XCTestCase {

    /// Warnings only: PostgresNIO logs every failed connection attempt at info.
    static let logger: Logger = {
        var logger = Logger(label: "fleet-test")
        logger.logLevel = .warning
        return logger
    }()

    /// The running databases of a test, stopped at its end.
    private var running: [(FleetDatabase, Task<Void, Never>)] = []

    override func tearDown() {
        for (_, task) in running { task.cancel() }
        running = []
        super.tearDown()
    }

    func pg() throws -> PostgresServer { try TestPostgres.server() }

    /// A fresh database for the calling test, migrated by a first node.
    func freshDatabase(_ function: String = #function) throws -> String {
        let name = "t_" + function.lowercased().filter { $0.isLetter || $0.isNumber }
        return try pg().createDatabase(name)
    }

    func open(_ url: String, node: String, poolSize: Int = 4, statementTimeout: TimeAmount = .seconds(5)) throws -> FleetDatabase {
        let database = try FleetDatabase(url: url, node: node, poolSize: poolSize, connectTimeout: .seconds(2),
                                         statementTimeout: statementTimeout, logger: Self.logger)
        let task = Task { await database.run() }
        running.append((database, task))
        return database
    }

    func migrated(_ url: String, nodes: [String]) async throws -> [FleetDatabase] {
        let databases = try nodes.map { try open(url, node: $0) }
        try await databases[0].migrate()
        return databases
    }

    // MARK: migrations

    func testThreeNodesMigrateAtOnceExactlyOnce() async throws {
        let url = try freshDatabase()
        let databases = try ["a", "b", "c"].map { try open(url, node: $0) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for database in databases { group.addTask { try await database.migrate() } }
            try await group.waitForAll()
        }
        XCTAssertEqual(try pg().psql("SELECT version FROM fleet_schema", database: dbName(url)), "1", "one row, version 1")
        try await databases[1].migrate()  // nothing to do the second time
        XCTAssertEqual(try pg().psql("SELECT count(*) FROM fleet_schema", database: dbName(url)), "1")
        let tables = try pg().psql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE tablename LIKE 'fleet_%'", database: dbName(url))
        XCTAssertEqual(tables, "fleet_budgets,fleet_cache,fleet_inflight,fleet_leases,fleet_nodes,fleet_rates,fleet_schema,fleet_spend")
    }

    // MARK: budgets

    func testConcurrentBudgetLeasesNeverGrantPastTheLimit() async throws {
        let url = try freshDatabase()
        let databases = try await migrated(url, nodes: ["n1", "n2", "n3"])
        let scopes = [FleetBudgetScope(scope: "day", period: "2026-12-02"), FleetBudgetScope(scope: "client:abc", period: "2026-12-02")]
        let limits = [10.0, 3.0]
        try await withThrowingTaskGroup(of: Void.self) { group in
            for database in databases {
                group.addTask {
                    var allotment = [0.0, 0.0]
                    var used = [0.0, 0.0]
                    for _ in 0..<40 {
                        // A node spends within its allotment (a fact either way), then asks for more.
                        let claims = (0..<2).map { i -> FleetBudgetClaim in
                            used[i] = min(limits[i], used[i] + Double.random(in: 0...max(0, allotment[i] - used[i])))
                            return FleetBudgetClaim(scope: scopes[i], limit: limits[i], used: used[i], want: Double.random(in: 0...2))
                        }
                        let grants = try await database.leaseBudgets(claims.shuffled(), leaseSeconds: 30)
                        XCTAssertEqual(grants.map(\.scope), scopes.sorted(), "one grant per claim, in (scope, period) order")
                        for grant in grants {
                            let i = scopes.firstIndex(of: grant.scope) ?? 0
                            XCTAssertGreaterThanOrEqual(grant.allotment, used[i] - 1e-9, "the allotment covers what was used")
                            XCTAssertLessThanOrEqual(grant.fleetGranted, limits[i] + 1e-9)
                            allotment[i] = grant.allotment
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let db = dbName(url)
        let check = try pg().psql("""
            SELECT b.scope, b.granted <= b.limit_usd + 1e-9, abs(b.granted - sum(l.allotment)) < 1e-9, count(l.node)
            FROM fleet_budgets b JOIN fleet_leases l USING (scope, period) GROUP BY b.scope, b.granted, b.limit_usd ORDER BY b.scope
            """, database: db)
        XCTAssertEqual(check, "client:abc|t|t|3\nday|t|t|3", "granted = sum of allotments <= limit")
        let rows = try await databases[0].budgets()
        XCTAssertEqual(rows.map(\.scope), scopes.sorted())
        XCTAssertEqual(rows.map { $0.leases.count }, [3, 3])
        XCTAssertTrue(rows.allSatisfy { row in row.leases.values.allSatisfy { $0.expiresIn > 20 && $0.expiresIn <= 30 } })
    }

    func testAnExpiredLeaseGivesBackWhatItDidNotUse() async throws {
        let url = try freshDatabase()
        let databases = try await migrated(url, nodes: ["a", "b"])
        let scope = FleetBudgetScope(scope: "month", period: "2026-12")
        let a = try await databases[0].leaseBudgets([FleetBudgetClaim(scope: scope, limit: 10, used: 2, want: 8)], leaseSeconds: 0.5)
        XCTAssertEqual(a.first?.allotment, 10)
        let b = try await databases[1].leaseBudgets([FleetBudgetClaim(scope: scope, limit: 10, used: 0, want: 5)], leaseSeconds: 30)
        XCTAssertEqual(b.first?.allotment, 0, "a holds the whole budget")
        XCTAssertEqual(b.first?.fleetGranted, 10)
        try await Task.sleep(nanoseconds: 1_000_000_000)
        let again = try await databases[1].leaseBudgets([FleetBudgetClaim(scope: scope, limit: 10, used: 0, want: 5)], leaseSeconds: 30)
        XCTAssertEqual(again.first?.allotment, 5, "a's unused 8 came back")
        XCTAssertEqual(again.first?.fleetGranted, 7, "a's used 2 stays counted")
        let budgets = try await databases[0].budgets()
        let row = try XCTUnwrap(budgets.first)
        XCTAssertEqual(row.leases["a"]?.allotment, 2)
        XCTAssertLessThan(row.leases["a"]?.expiresIn ?? 0, 0, "a's lease is expired")
        XCTAssertEqual(row.granted, 7)
        // A node's use above its allotment is a fact: counted even past the limit.
        let over = try await databases[0].leaseBudgets([FleetBudgetClaim(scope: scope, limit: 10, used: 6, want: 1)], leaseSeconds: 30)
        XCTAssertEqual(over.first?.allotment, 6)
        XCTAssertEqual(over.first?.fleetGranted, 11)
    }

    // MARK: rates

    func testRateLeasesShareOneBucketAcrossNodes() async throws {
        let url = try freshDatabase()
        let databases = try await migrated(url, nodes: ["a", "b", "c"])
        let started = Date()
        let total = NIOLockedValueBox(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for database in databases {
                group.addTask {
                    for _ in 0..<6 {
                        let granted = try await database.leaseRates([FleetRateClaim(client: "k", perMinute: 60, burst: 10, want: 4, giveBack: 0)])
                        total.withLockedValue { $0 += granted["k"] ?? -1000 }
                    }
                }
            }
            try await group.waitForAll()
        }
        let elapsed = Date().timeIntervalSince(started)
        let granted = total.withLockedValue { $0 }
        XCTAssertGreaterThanOrEqual(granted, 10, "the full burst is handed out")
        XCTAssertLessThanOrEqual(granted, 10 + Int(elapsed.rounded(.up)), "never more than burst + refill (1/s) in \(elapsed) s")
        // Give-backs return tokens; another client's bucket is its own.
        let back = try await databases[0].leaseRates([FleetRateClaim(client: "k", perMinute: 60, burst: 10, want: 3, giveBack: 3),
                                                      FleetRateClaim(client: "other", perMinute: 60, burst: 2, want: 5, giveBack: 0)])
        XCTAssertGreaterThanOrEqual(back["k"] ?? 0, 3)
        XCTAssertEqual(back["other"], 2, "a new client starts with its burst")
    }

    // MARK: outbox

    func testOutboxPushIsExactlyOnce() async throws {
        let url = try freshDatabase()
        let database = try await migrated(url, nodes: ["n1"])[0]
        let sequence = try await database.pushedSequence()
        XCTAssertEqual(sequence, 0)
        var row = FleetSpendRow(day: "2026-12-02", node: "n1", model: "gpt", deployment: "d1", client: "c1")
        row.requests = 2
        row.promptTokens = 100
        row.usd = 0.5
        row.hits = 1
        var other = FleetSpendRow(day: "2026-12-02", node: "n1", model: "gpt", deployment: "-", client: "-")
        other.bytesServed = 42
        let first = try await database.push([row, other, row], after: 0, upTo: 5)
        XCTAssertEqual(first, 5)
        let again = try await database.push([row, other, row], after: 0, upTo: 5)
        XCTAssertEqual(again, 5, "a retried batch is refused, answering the applied sequence")
        let stale = try await database.push([row], after: 3, upTo: 9)
        XCTAssertEqual(stale, 5)
        let next = try await database.push([row], after: 5, upTo: 7)
        XCTAssertEqual(next, 7)
        let pushed = try await database.pushedSequence()
        XCTAssertEqual(pushed, 7)
        let spend = try await database.spend(since: "2026-12-01")
        XCTAssertEqual(spend.count, 2)
        let summed = try XCTUnwrap(spend.first { $0.deployment == "d1" })
        XCTAssertEqual(summed.requests, 6, "three rows applied once each")
        XCTAssertEqual(summed.promptTokens, 300)
        XCTAssertEqual(summed.usd, 1.5, accuracy: 1e-9)
        XCTAssertEqual(summed.hits, 3)
        XCTAssertEqual(spend.first { $0.deployment == "-" }?.bytesServed, 42)
        let later = try await database.spend(since: "2026-12-03")
        XCTAssertEqual(later, [])
        try await database.heartbeat(version: "1.2.3", startedAt: 1_700_000_000)
        let nodes = try await database.nodes()
        XCTAssertEqual(nodes.map(\.node), ["n1"])
        XCTAssertEqual(nodes.first?.version, "1.2.3")
        XCTAssertEqual(nodes.first?.pushedSequence, 7)
        XCTAssertLessThan(nodes.first?.secondsSinceSeen ?? 99, 5)
    }

    // MARK: helpers

    func dbName(_ url: String) -> String {
        let afterSlash = url.split(separator: "@", maxSplits: 1).last.map { $0.dropFirst() } ?? ""
        return String(afterSlash.prefix { $0 != "?" })
    }

    static func answer(_ key: [UInt8], scope: String = "s1", createdAt: Int64 = Int64(Date().timeIntervalSince1970),
                       expiresAt: Int64 = Int64(Date().timeIntervalSince1970) + 3600, body: [UInt8] = Array("{\"ok\":true}".utf8)) -> FleetCachedAnswer {
        FleetCachedAnswer(key: key, scope: scope, model: "gpt", endpoint: "/v1/chat/completions", status: 200, contentType: "application/json",
                          body: body, isStream: false, createdAt: createdAt, expiresAt: expiresAt, promptTokens: 19, completionTokens: nil)
    }
}
