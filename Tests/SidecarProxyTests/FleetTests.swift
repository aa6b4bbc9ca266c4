import Foundation
import NIOPosix
import SidecarTestSupport
import XCTest

/// Fleet mode end to end: real `llm-sidecar` processes sharing one private PostgreSQL server
/// (docs/fleet.md). Each test starts its own database in the shared server.
final class FleetTests: XCTestCase {
    static let unitCost = 19 * 0.15e-6 + 28 * 0.60e-6  // FakeUpstream's usage at gpt-4o-mini's price

    /// A fresh database in the shared server, and its URL.
    func database() throws -> (PostgresServer, String, String) {
        let server = try TestPostgres.server()
        let name = "fleet_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased()
        return (server, try server.createDatabase(name), name)
    }

    /// `n` sidecar processes of one fleet in front of `upstream`.
    func launchFleet(_ n: Int, url: String, upstream: FakeUpstream, extra: String = "", fleetExtra: String = "",
                     lease: String = "3s") throws -> [LaunchedSidecar] {
        let dir = ProxyHarness.temporaryDirectory()
        return try (0..<n).map { i in
            let config = """
                [server]
                listen = "127.0.0.1:0"
                default_upstream = "fake"
                threads = 1
                [upstreams.fake]
                url = "\(upstream.url)"
                [cache]
                path = "\(dir)/node\(i).sqlite3"
                \(extra)
                [fleet]
                postgres_url_env = "FLEET_URL"
                node = "node-\(i)"
                sync_interval = "300ms"
                lease_period = "\(lease)"
                \(fleetExtra)
                """
            let path = "\(dir)/node\(i).toml"
            try config.write(toFile: path, atomically: true, encoding: .utf8)
            return try LaunchedSidecar.launch(["serve", "--config", path], environment: ["FLEET_URL": url])
        }
    }

    func stop(_ nodes: [LaunchedSidecar]) {
        for n in nodes where n.process.isRunning {
            kill(n.process.processIdentifier, SIGTERM)
            n.process.waitUntilExit()
        }
    }

    static func body(_ i: Int) -> String {
        #"{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"request \#(i)"}]}"#
    }

    /// Sends `total` different requests over `workers` connections spread over the nodes; returns
    /// the statuses in order of completion.
    func load(_ nodes: [LaunchedSidecar], total: Int, workers: Int, headers: [(String, String)] = []) async throws -> [Int] {
        try await Self.load(ports: nodes.map(\.port), total: total, workers: workers, headers: headers)
    }

    static func load(ports: [Int], total: Int, workers: Int, headers: [(String, String)] = []) async throws -> [Int] {
        let group = MultiThreadedEventLoopGroup.singleton
        let counter = Counter()
        return try await withThrowingTaskGroup(of: [Int].self) { tasks in
            for w in 0..<workers {
                tasks.addTask {
                    let c = try await TestHTTPConnection.connect(port: ports[w % ports.count], group: group)
                    var statuses: [Int] = []
                    while let i = counter.next(below: total) {
                        let r = try await c.request("POST", "/v1/chat/completions", headers: headers + [("content-type", "application/json")], body: Self.body(i))
                        statuses.append(r.status)
                        if r.status != 200 { counter.note("\(r.status) \(r.body)") }
                    }
                    await c.close()
                    return statuses
                }
            }
            var all: [Int] = []
            for try await s in tasks { all += s }
            return all
        }
    }

    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var n = 0
        nonisolated(unsafe) static var failures: [String] = []
        func note(_ s: String) {
            lock.lock()
            defer { lock.unlock() }
            if Self.failures.count < 3 { Self.failures.append(s) }
        }
        func next(below total: Int) -> Int? {
            lock.lock()
            defer { lock.unlock() }
            guard n < total else { return nil }
            n += 1
            return n - 1
        }
    }

    func testThreeNodesShareOneDailyBudgetAndNeverPassIt() async throws {
        let (pg, url, db) = try database()
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let budget = 0.004
        let nodes = try launchFleet(3, url: url, upstream: upstream, extra: "[budgets]\ndaily_usd = \(budget)", fleetExtra: "budget_slice = 0.05")
        defer { stop(nodes) }
        // About 200 requests fit; 1,500 are sent over 12 connections to three nodes (refusals are
        // quick: enough must be left for every node to use up its slice).
        let statuses = try await load(nodes, total: 1_500, workers: 12)
        let ok = statuses.filter { $0 == 200 }.count
        XCTAssertEqual(Set(statuses).subtracting([200, 429]), [], "only answers and budget refusals")
        let spent = Double(upstream.counters.requests) * Self.unitCost
        XCTAssertEqual(ok, upstream.counters.requests)
        XCTAssertLessThanOrEqual(spent, budget, "the fleet spent past its budget")
        // Refusals start only near the budget: idle slices elsewhere (2 × 5 %) and the
        // reservations in flight (12 × about 3.3e-5) are the most that can be left unused.
        XCTAssertGreaterThan(spent, budget * 0.9 - 12 * 3.4e-5, "refused too early: \(ok) answers, $\(spent)")
        // Every node's spend reaches the fleet database, once.
        let recorded = await eventually(10) {
            (try? pg.psql("SELECT coalesce(sum(requests), 0) FROM fleet_spend", database: db)) == "\(ok)"
        }
        XCTAssertTrue(recorded, "fleet_spend has \((try? pg.psql("SELECT sum(requests) FROM fleet_spend", database: db)) ?? "?"), the upstream saw \(ok)")
        let granted = try pg.psql("SELECT granted <= limit_usd + 1e-12 FROM fleet_budgets WHERE scope = 'day'", database: db)
        XCTAssertEqual(granted, "t")
    }

    func testAClientLimitHoldsAcrossTheFleet() async throws {
        let (_, url, _) = try database()
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let nodes = try launchFleet(3, url: url, upstream: upstream, extra: "[limits]\nclient_rpm = 60")
        defer { stop(nodes) }
        let started = Date()
        let statuses = try await load(nodes, total: 240, workers: 3, headers: [("authorization", "Bearer sk-client-one")])
        let elapsed = Date().timeIntervalSince(started)
        let ok = statuses.filter { $0 == 200 }.count
        XCTAssertEqual(Set(statuses).subtracting([200, 429]), [])
        // A full bucket (60) and one token a second while the test ran: the bucket is exact (a node
        // without tokens waits for its ask rather than admitting ahead of it).
        XCTAssertLessThanOrEqual(Double(ok), 60 + elapsed + 1, "\(ok) admitted in \(elapsed) s through three nodes")
        XCTAssertGreaterThanOrEqual(ok, 50, "the fleet refused a client well under its limit")
    }

    func testTheDatabaseStoppedUnderLoadLosesNoRequestAndNoSpend() async throws {
        let (pg, url, db) = try database()
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let nodes = try launchFleet(3, url: url, upstream: upstream, extra: "[budgets]\ndaily_usd = 100",
                                    fleetExtra: "statement_timeout = \"500ms\"\nconnect_timeout = \"500ms\"", lease: "30s")
        defer { stop(nodes) }
        // Leases are taken before the outage.
        try await Task.sleep(nanoseconds: 1_000_000_000)
        async let statuses = Self.load(ports: nodes.map(\.port), total: 900, workers: 6)
        try await Task.sleep(nanoseconds: 300_000_000)
        try pg.stop()
        var restarted = false
        defer { if !restarted { try? pg.startAgain() } }  // the next tests use this server too
        try await Task.sleep(nanoseconds: 1_500_000_000)
        let degraded = try await readyz(nodes[0])
        try pg.startAgain()
        restarted = true
        let all = try await statuses
        XCTAssertEqual(all.filter { $0 != 200 }.count, 0, "a request failed while the database was away: \(Set(all)) \(Counter.failures) "
                       + nodes.map { $0.lines.all.split(separator: "\n").filter { $0.contains("refused") }.joined(separator: "\n") }.joined(separator: "\n"))
        XCTAssertTrue(degraded.contains("degraded") && degraded.contains("fleet database unavailable"), degraded)
        // The outboxes drain once it is back: every request counted exactly once.
        let counted = await eventually(15) {
            (try? pg.psql("SELECT coalesce(sum(requests), 0) FROM fleet_spend", database: db)) == "\(upstream.counters.requests)"
        }
        XCTAssertTrue(counted, "fleet_spend: \((try? pg.psql("SELECT sum(requests) FROM fleet_spend", database: db)) ?? "?"), upstream: \(upstream.counters.requests)")
        let usd = Double(try pg.psql("SELECT sum(usd) FROM fleet_spend", database: db)) ?? 0
        XCTAssertEqual(usd, Double(upstream.counters.requests) * Self.unitCost, accuracy: 1e-9)
    }

    func testAKilledNodesSliceReturnsWithinOneLeasePeriod() async throws {
        let (pg, url, db) = try database()
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let nodes = try launchFleet(2, url: url, upstream: upstream, extra: "[budgets]\ndaily_usd = 1")
        defer { stop(nodes) }
        // node-1 spends too (so its rounds, every 300 ms, name the daily budget); node-0 is busy
        // when it is killed, holding a slice it has not used up.
        _ = try await load([nodes[1]], total: 5, workers: 1)
        let port0 = nodes[0].port
        let busy = Task.detached { await FleetTests.keepBusy(port: port0) }
        let held = await eventually(5) {
            (try? pg.psql("SELECT allotment > used AND used > 0 FROM fleet_leases WHERE node = 'node-0' AND scope = 'day'", database: db)) == "t"
        }
        XCTAssertTrue(held, "node-0 holds no unused slice, or has not reported its use")
        kill(nodes[0].process.processIdentifier, SIGKILL)
        nodes[0].process.waitUntilExit()
        busy.cancel()
        let killedAt = Date()
        let before = try pg.psql("SELECT allotment > used FROM fleet_leases WHERE node = 'node-0' AND scope = 'day'", database: db)
        XCTAssertEqual(before, "t", "node-0's slice was already given back: nothing to test")
        // Keep node-1 spending a little: its rounds reclaim the lapsed slice at the first one after
        // the lease period (3 s).
        var returned = false
        while !returned, Date().timeIntervalSince(killedAt) < 6 {
            _ = try await load([nodes[1]], total: 1, workers: 1)
            returned = (try? pg.psql("SELECT allotment = used FROM fleet_leases WHERE node = 'node-0' AND scope = 'day'", database: db)) == "t"
            if !returned { try await Task.sleep(nanoseconds: 100_000_000) }
        }
        XCTAssertTrue(returned, "the killed node's slice was not returned")
        XCTAssertLessThan(Date().timeIntervalSince(killedAt), 3 + 1.5)
        // What it had reported as spent stays counted.
        let used = Double(try pg.psql("SELECT used FROM fleet_leases WHERE node = 'node-0' AND scope = 'day'", database: db)) ?? 0
        XCTAssertGreaterThan(used, 0)
    }

    func testAnIdleNodeGivesItsUnusedSliceBackWithinThreeSyncs() async throws {
        let (pg, url, db) = try database()
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let nodes = try launchFleet(1, url: url, upstream: upstream, extra: "[budgets]\ndaily_usd = 1")
        defer { stop(nodes) }
        _ = try await load(nodes, total: 5, workers: 1)
        let idleFrom = Date()
        let slice = try pg.psql("SELECT allotment - used > 0.01 FROM fleet_leases WHERE node = 'node-0' AND scope = 'day'", database: db)
        XCTAssertEqual(slice, "t", "a node in use holds a whole slice (2 % of $1)")
        // Idle for two syncs (600 ms), then given back at the next round (300 ms later).
        let back = await eventually(3) {
            (try? pg.psql("SELECT allotment = used FROM fleet_leases WHERE node = 'node-0' AND scope = 'day'", database: db)) == "t"
        }
        XCTAssertTrue(back, "the idle node kept its slice")
        XCTAssertLessThan(Date().timeIntervalSince(idleFrom), 3 * 0.3 + 1.5, "two idle syncs and a round, with slack for a slow machine")
    }

    func testFleetStatusSpendAndStatsCommands() async throws {
        let (_, url, _) = try database()
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let nodes = try launchFleet(2, url: url, upstream: upstream, extra: "[budgets]\ndaily_usd = 5")
        _ = try await load(nodes, total: 10, workers: 2)
        let metrics = try await get(nodes[1], "/metrics")
        XCTAssertTrue(metrics.contains("llm_sidecar_fleet_connected 1"), "connected not reported")
        let stats = try JSONSerialization.jsonObject(with: Data(try await get(nodes[1], "/stats").utf8)) as? [String: Any]
        let fleet = stats?["fleet"] as? [String: Any]
        XCTAssertEqual(fleet?["node"] as? String, "node-1")
        XCTAssertEqual(fleet?["connected"] as? Bool, true)
        XCTAssertGreaterThan((fleet?["budget_slices"] as? [String: Double])?["day_usd"] ?? 0, 0)
        stop(nodes)  // a clean stop writes the outbox and gives the slices back
        let config = ProxyHarness.temporaryDirectory() + "/cli.toml"
        try "[upstreams.fake]\nurl = \"\(upstream.url)\"\n[fleet]\npostgres_url_env = \"FLEET_URL\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let env = ["FLEET_URL": url]
        let status = try BinaryTests.run(["fleet", "status", "--json", "--config", config], env: env)
        XCTAssertEqual(status.status, 0, status.stderr)
        let s = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
        XCTAssertEqual((s?["nodes"] as? [[String: Any]])?.compactMap { $0["node"] as? String }.sorted(), ["node-0", "node-1"])
        let day = (s?["budgets"] as? [[String: Any]])?.first { $0["scope"] as? String == "day" }
        // Stopped cleanly: nothing is held beyond what was spent.
        let leases = day?["leases"] as? [String: [String: Double]]
        for (node, l) in leases ?? [:] {
            XCTAssertEqual(l["allotment_usd"] ?? -1, l["used_usd"] ?? -2, accuracy: 1e-12, node + ": " + nodes.map(\.lines.all).joined(separator: "\n"))
        }
        let spend = try BinaryTests.run(["spend", "--fleet", "--json", "--config", config], env: env)
        XCTAssertEqual(spend.status, 0, spend.stderr)
        let today = (try JSONSerialization.jsonObject(with: Data(spend.stdout.utf8)) as? [String: Any])?["today"] as? [String: Any]
        XCTAssertEqual((today?["total"] as? [String: Any])?["requests"] as? Int, 10)
        XCTAssertEqual(((today?["by_node"] as? [String: Any])?.keys.sorted()), ["node-0", "node-1"])
        let fleetStats = try BinaryTests.run(["stats", "--fleet", "--config", config], env: env)
        XCTAssertEqual(fleetStats.status, 0, fleetStats.stderr)
        XCTAssertTrue(fleetStats.stdout.contains("node-0"), fleetStats.stdout)
        // The URL (and its password) never appears in what the commands print.
        let bad = try BinaryTests.run(["fleet", "status", "--config", config], env: ["FLEET_URL": "postgres://u:hunter2@127.0.0.1:1/x"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertFalse(bad.stderr.contains("hunter2") || bad.stdout.contains("hunter2"), bad.stderr)
    }

    func testAnAnswerCachedThroughOneNodeIsAHitOnAnotherForTheSameCredentialOnly() async throws {
        let (pg, url, db) = try database()
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let nodes = try launchFleet(2, url: url, upstream: upstream)
        defer { stop(nodes) }
        let body = #"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"shared"}]}"#
        func ask(_ node: LaunchedSidecar, key: String) async throws -> TestResponse {
            let c = try await TestHTTPConnection.connect(port: node.port, group: MultiThreadedEventLoopGroup.singleton)
            defer { Task { await c.close() } }
            return try await c.request("POST", "/v1/chat/completions", headers: [("content-type", "application/json"), ("authorization", "Bearer \(key)")], body: body)
        }
        // Both nodes are connected (their schema and listener are up) before the first request.
        let up = await eventually(10) { nodes.allSatisfy { n in (try? self.getSync(n, "/metrics"))?.contains("llm_sidecar_fleet_connected 1") == true } }
        XCTAssertTrue(up, "the nodes never connected")
        let first = try await ask(nodes[0], key: "sk-client-a")
        XCTAssertEqual(first.header("x-sidecar-cache"), "miss")
        // Written behind to the shared tier (stored locally first, then in a batch): node 1 then
        // answers it without the upstream.
        let written = await eventually(5) { (try? pg.psql("SELECT count(*) FROM fleet_cache", database: db)) == "1" }
        XCTAssertTrue(written, "node 0's answer never reached the shared tier")
        let second = try await ask(nodes[1], key: "sk-client-a")
        XCTAssertEqual(second.header("x-sidecar-cache"), "hit")
        XCTAssertEqual(second.body, first.body)
        XCTAssertEqual(upstream.counters.requests, 1)
        // Another credential never reads it, on any node.
        let other = try await ask(nodes[1], key: "sk-client-b")
        XCTAssertEqual(other.header("x-sidecar-cache"), "miss")
        XCTAssertEqual(upstream.counters.requests, 2)
    }

    func testANodeStartsWithoutItsDatabaseServesWhatItCanAndJoinsWhenItComes() async throws {
        let server = try TestPostgres.server()
        // A database that does not exist yet: every connection is refused until it is created.
        let name = "late_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased()
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let nodes = try launchFleet(1, url: server.url(database: String(name)), upstream: upstream,
                                    extra: "[budgets]\nclient_daily_usd = 5", fleetExtra: "connect_timeout = \"300ms\"")
        defer { stop(nodes) }
        // Not priced: no budget applies, served at once.
        let free = try await post(nodes[0], #"{"model":"unpriced-model","messages":[]}"#)
        XCTAssertEqual(free.status, 400, "budgets.unpriced = reject still applies")
        var refused: TestResponse?
        let unavailable = await eventually(5) {
            refused = try? self.blocking { [port = nodes[0].port] in
                let c = try await TestHTTPConnection.connect(port: port, group: MultiThreadedEventLoopGroup.singleton)
                defer { Task { await c.close() } }
                return try await c.request("POST", "/v1/chat/completions", headers: [("content-type", "application/json")], body: Self.body(1))
            }
            return refused?.status == 503
        }
        XCTAssertTrue(unavailable, "a budgeted request was not refused with the database away: \(refused?.status ?? 0)")
        XCTAssertTrue(refused?.body.contains("fleet_unavailable") == true, refused?.body ?? "")
        let degraded = try await readyz(nodes[0])
        XCTAssertTrue(degraded.contains(#""status":"ready""#) && degraded.contains("degraded"), degraded)
        _ = try server.createDatabase(String(name))
        let joined = await eventually(10) {
            (try? self.blocking { [port = nodes[0].port] in
                let c = try await TestHTTPConnection.connect(port: port, group: MultiThreadedEventLoopGroup.singleton)
                defer { Task { await c.close() } }
                return try await c.request("POST", "/v1/chat/completions", headers: [("content-type", "application/json")], body: Self.body(2))
            })?.status == 200
        }
        XCTAssertTrue(joined, "the node did not use its database once it came")
        let ready = try await readyz(nodes[0])
        XCTAssertEqual(ready, #"{"status":"ready"}"#)
        XCTAssertNotNil(nodes[0].lines.waitFor("fleet database connected", seconds: 2))
    }

    func testRejectModeRefusesSpendingRequestsWhileTheDatabaseIsAway() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        // Nothing listens there: the database is away from the start.
        let nodes = try launchFleet(1, url: "postgres://postgres@127.0.0.1:1/none", upstream: upstream, extra: "[budgets]\ndaily_usd = 5",
                                    fleetExtra: "on_unavailable = \"reject\"\nconnect_timeout = \"200ms\"")
        defer { stop(nodes) }
        var refused = false
        for _ in 0..<50 where !refused {
            let r = try await post(nodes[0], Self.body(1))
            if r.status == 503 {
                XCTAssertTrue(r.body.contains("fleet_unavailable"), r.body)
                XCTAssertFalse(r.body.contains("postgres://"), r.body)
                refused = true
            }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        XCTAssertTrue(refused, "spending requests were not refused with the database away")
        XCTAssertEqual(upstream.counters.requests, 0)
        let ready = try await readyz(nodes[0])
        XCTAssertTrue(ready.contains("not ready") && ready.contains("fleet database unavailable"), ready)
        XCTAssertNotNil(nodes[0].lines.waitFor("fleet database unavailable", seconds: 5))
        XCTAssertEqual(nodes[0].lines.all.components(separatedBy: "fleet database unavailable").count - 1, 1, "the condition is logged once")
    }

    // MARK: helpers

    /// Sends requests to `port` one after another, ignoring failures, until cancelled.
    static func keepBusy(port: Int) async {
        while !Task.isCancelled {
            _ = try? await load(ports: [port], total: 1, workers: 1)
        }
    }

    /// Blocking forms for `eventually`'s condition (a synchronous closure), on a thread of their own.
    func getSync(_ node: LaunchedSidecar, _ path: String) throws -> String {
        let port = node.port
        return try blocking { try await Self.get(port: port, path) }
    }

    func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: Result<T, any Error>?
        Task.detached {
            do { result = .success(try await body()) } catch { result = .failure(error) }
            done.signal()
        }
        done.wait()
        return try result!.get()
    }

    func get(_ node: LaunchedSidecar, _ path: String) async throws -> String { try await Self.get(port: node.port, path) }

    static func get(port: Int, _ path: String) async throws -> String {
        let group = MultiThreadedEventLoopGroup.singleton
        let c = try await TestHTTPConnection.connect(port: port, group: group)
        let r = try await c.request("GET", path, headers: [], body: nil)
        await c.close()
        return r.body
    }

    func readyz(_ node: LaunchedSidecar) async throws -> String { try await get(node, "/readyz") }

    func post(_ node: LaunchedSidecar, _ body: String) async throws -> TestResponse {
        let group = MultiThreadedEventLoopGroup.singleton
        let c = try await TestHTTPConnection.connect(port: node.port, group: group)
        let r = try await c.request("POST", "/v1/chat/completions", headers: [("content-type", "application/json")], body: body)
        await c.close()
        return r
    }
}
