import Logging
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO
import SidecarCore

/// Fleet mode's shared state in one PostgreSQL database (docs/fleet.md): the node registry,
/// budget leases, client rate-limit leases, the spend/stats outbox's destination and the shared
/// cache tier. The ONLY importer of PostgresNIO. Every method is one statement (or one short
/// transaction) and never runs per request, except the shared-cache lookup on a local miss.
/// Errors are `FleetError`s and never carry the database URL or its password.
///
/// Every call is bounded by `statementTimeout` twice over: the server's `statement_timeout`
/// (a startup parameter of every connection) and a client-side deadline (the same plus a short
/// grace), so a dead or partitioned server cannot hold a caller much longer than that. A call
/// that timed out on the client side may still complete on the server: every write is safe to
/// repeat (upserts, leases recomputed, the outbox's compare-and-set).
public final class FleetDatabase: Sendable {
    /// The node this process is, as registered in `fleet_nodes`.
    public let node: String

    let client: PostgresClient
    /// The LISTEN connection's configuration (a connection of its own, outside the pool).
    let listenConfiguration: PostgresConnection.Configuration
    let statementTimeout: TimeAmount
    let logger: Logger
    /// The pool retries failed connections quietly (a lease just waits): when a call finds no
    /// connection in time, a direct connection attempt (at most one at a time) finds out why,
    /// for the next calls' errors (a refused connection, a failed authentication...).
    let connectProbe = NIOLockedValueBox(ConnectProbe())

    struct ConnectProbe: Sendable {
        var running = false
        var lastFailure: String?
    }

    // MARK: set-up

    /// Parses `url` (`postgres://user:password@host:port/db?sslmode=disable|prefer|require`, or a
    /// unix socket: `postgres://user@/db?host=/run/postgresql` / `postgresql:///db?host=/dir`,
    /// socket file `<dir>/.s.PGSQL.<port>`). Throws a `FleetError` of kind `.badURL` naming what
    /// is wrong but never the URL itself. Connects lazily: call `run()` in a task.
    public init(url: String, node: String, poolSize: Int, connectTimeout: TimeAmount, statementTimeout: TimeAmount, logger: Logger) throws {
        let parsed = try FleetURL.parse(url)
        guard !node.isEmpty else { throw FleetError(.badURL, "fleet node name is empty") }
        guard statementTimeout.nanoseconds > 0, connectTimeout.nanoseconds > 0 else {
            throw FleetError(.badURL, "fleet database timeouts must be positive")
        }
        self.node = node
        self.statementTimeout = statementTimeout
        // PostgresNIO's trace logs include every protocol action (authentication among them):
        // never below debug.
        var logger = logger
        if logger.logLevel < .debug { logger.logLevel = .debug }
        self.logger = logger

        let startup: [(String, String)] = [
            ("statement_timeout", String(max(1, statementTimeout.nanoseconds / 1_000_000))),
            ("application_name", "llm-sidecar"),
        ]
        var configuration: PostgresClient.Configuration
        var listen: PostgresConnection.Configuration
        switch parsed.endpoint {
        case .unixSocket(let path):
            configuration = .init(unixSocketPath: path, username: parsed.user, password: parsed.password, database: parsed.database)
            listen = .init(unixSocketPath: path, username: parsed.user, password: parsed.password, database: parsed.database)
        case .tcp(let host, let port):
            let clientTLS: PostgresClient.Configuration.TLS
            let listenTLS: PostgresConnection.Configuration.TLS
            do {
                switch parsed.sslMode {
                case .disable:
                    clientTLS = .disable
                    listenTLS = .disable
                case .prefer:
                    clientTLS = .prefer(.makeClientConfiguration())
                    listenTLS = .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
                case .require:
                    clientTLS = .require(.makeClientConfiguration())
                    listenTLS = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
                }
            } catch {
                throw FleetError(.badURL, "fleet database TLS set-up failed (the system's trust roots?)")
            }
            configuration = .init(host: host, port: port, username: parsed.user, password: parsed.password, database: parsed.database, tls: clientTLS)
            listen = .init(host: host, port: port, username: parsed.user, password: parsed.password, database: parsed.database, tls: listenTLS)
        }
        configuration.options.maximumConnections = max(1, poolSize)
        configuration.options.minimumConnections = 0
        configuration.options.connectTimeout = .nanoseconds(connectTimeout.nanoseconds)
        configuration.options.additionalStartupParameters = startup
        listen.options.connectTimeout = connectTimeout
        listen.options.additionalStartupParameters = startup
        self.client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        self.listenConfiguration = listen
    }

    /// Runs the connection pool until the task is cancelled (postgres-nio's `PostgresClient.run`).
    /// Call it once; every other method waits for a connection from it.
    public func run() async {
        await client.run()
    }

    /// Creates or migrates the schema (versioned in `fleet_schema`), under a transaction-level
    /// advisory lock so several nodes starting at once migrate exactly once.
    public func migrate() async throws {
        try await transaction { connection, logger in
            try await connection.query("SELECT pg_advisory_xact_lock(\(FleetSchema.migrationLock))", logger: logger)
            try await connection.query("CREATE TABLE IF NOT EXISTS fleet_schema (version int NOT NULL)", logger: logger)
            var version = 0
            for try await stored in try await connection.query("SELECT coalesce(max(version), 0) FROM fleet_schema", logger: logger).decode(Int32.self) {
                version = Int(stored)
            }
            guard version <= FleetSchema.migrations.count else {
                throw FleetError(.other, "fleet database schema version \(version) is newer than this build knows (\(FleetSchema.migrations.count)): upgrade this node")
            }
            for (index, statements) in FleetSchema.migrations.enumerated() where index + 1 > version {
                for statement in statements {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
            }
            if version < FleetSchema.migrations.count {
                let target = Int32(FleetSchema.migrations.count)
                try await connection.query("DELETE FROM fleet_schema", logger: logger)
                try await connection.query("INSERT INTO fleet_schema (version) VALUES (\(target))", logger: logger)
            }
        }
    }

    /// Registers this node (or refreshes it): version, start time, `last_seen = now()`.
    public func heartbeat(version: String, startedAt: Int64) async throws {
        let node = self.node
        try await statement { connection, logger in
            _ = try await connection.query("""
                INSERT INTO fleet_nodes (node, version, started_at, last_seen) VALUES (\(node), \(version), \(startedAt), now())
                ON CONFLICT (node) DO UPDATE SET version = excluded.version, started_at = excluded.started_at, last_seen = now()
                """, logger: logger)
        }
    }

    // MARK: status and reports

    /// Every node that ever registered or pushed, by name; `secondsSinceSeen` is by the database's
    /// clock (since the epoch for a node that pushed but never sent a heartbeat).
    public func nodes() async throws -> [FleetNodeRow] {
        try await statement { connection, logger in
            var rows: [FleetNodeRow] = []
            let query: PostgresQuery = """
                SELECT node, coalesce(version, ''), coalesce(started_at, 0),
                       extract(epoch FROM now() - coalesce(last_seen, to_timestamp(0)))::float8, pushed_seq
                FROM fleet_nodes ORDER BY node
                """
            for try await (node, version, startedAt, seen, pushed) in try await connection.query(query, logger: logger)
                .decode((String, String, Int64, Double, Int64).self) {
                rows.append(FleetNodeRow(node: node, version: version, startedAt: startedAt, secondsSinceSeen: seen, pushedSequence: pushed))
            }
            return rows
        }
    }

    /// Every fleet budget with its per-node leases (`expiresIn` by the database's clock,
    /// negative once expired), by scope and period.
    public func budgets() async throws -> [FleetBudgetRow] {
        try await statement { connection, logger in
            let query: PostgresQuery = """
                SELECT b.scope, b.period, b.limit_usd, b.granted, l.node, l.allotment, l.used,
                       extract(epoch FROM l.expires_at - now())::float8
                FROM fleet_budgets b LEFT JOIN fleet_leases l ON l.scope = b.scope AND l.period = b.period
                ORDER BY b.scope, b.period, l.node
                """
            var rows: [FleetBudgetRow] = []
            for try await (scope, period, limit, granted, node, allotment, used, expiresIn) in try await connection.query(query, logger: logger)
                .decode((String, String, Double, Double, String?, Double?, Double?, Double?).self) {
                let key = FleetBudgetScope(scope: scope, period: period)
                if rows.last?.scope != key {
                    rows.append(FleetBudgetRow(scope: key, limit: limit, granted: granted, leases: [:]))
                }
                if let node, let allotment, let used, let expiresIn {
                    rows[rows.count - 1].leases[node] = (allotment: allotment, used: used, expiresIn: expiresIn)
                }
            }
            return rows
        }
    }

    /// Spend and counters from `fromDay` on, per day, node, model, deployment and client.
    public func spend(since fromDay: String) async throws -> [FleetSpendRow] {
        try await statement { connection, logger in
            let query: PostgresQuery = """
                SELECT day, node, model, deployment, client, requests, prompt_tokens, completion_tokens, cached_tokens,
                       cache_write_tokens, usd, hits, misses, coalesced, bypasses, bytes_served, prompt_tokens_saved,
                       completion_tokens_saved
                FROM fleet_spend WHERE day >= \(fromDay) ORDER BY day, node, model, deployment, client
                """
            var rows: [FleetSpendRow] = []
            for try await (day, node, model, deployment, client, requests, prompt, completion, cached, cacheWrite, usd,
                           hits, misses, coalesced, bypasses, bytes, promptSaved, completionSaved)
                in try await connection.query(query, logger: logger)
                .decode((String, String, String, String, String, Int64, Int64, Int64, Int64, Int64, Double,
                         Int64, Int64, Int64, Int64, Int64, Int64, Int64).self) {
                var row = FleetSpendRow(day: day, node: node, model: model, deployment: deployment, client: client)
                row.requests = requests
                row.promptTokens = prompt
                row.completionTokens = completion
                row.cachedTokens = cached
                row.cacheWriteTokens = cacheWrite
                row.usd = usd
                row.hits = hits
                row.misses = misses
                row.coalesced = coalesced
                row.bypasses = bypasses
                row.bytesServed = bytes
                row.promptTokensSaved = promptSaved
                row.completionTokensSaved = completionSaved
                rows.append(row)
            }
            return rows
        }
    }

    // MARK: running statements

    /// Runs `body` on a pooled connection within the deadline; every error becomes a FleetError.
    func statement<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> T) async throws -> T {
        let client = self.client
        let logger = self.logger
        return try await bounded { connected in
            try await client.withConnection { connection in
                connected.withLockedValue { $0 = true }
                return try await body(connection, logger)
            }
        }
    }

    /// Runs `body` in a transaction (BEGIN … COMMIT, ROLLBACK when it throws) within the deadline.
    func transaction<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> T) async throws -> T {
        let client = self.client
        let logger = self.logger
        return try await bounded { connected in
            try await client.withConnection { connection in
                connected.withLockedValue { $0 = true }
                return try await connection.withTransaction(logger: logger) { connection in
                    try await body(connection, logger)
                }
            }
        }
    }

    /// The client-side deadline is the statement timeout plus a grace of a tenth of it (50 ms to
    /// 500 ms): a slow statement is normally ended by the server (the query cancelled, the
    /// connection healthy and back in the pool); the deadline answers when the server cannot.
    private func bounded<T: Sendable>(_ work: @escaping @Sendable (NIOLockedValueBox<Bool>) async throws -> T) async throws -> T {
        let connected = NIOLockedValueBox(false)
        let timeout = statementTimeout
        let grace = TimeAmount.nanoseconds(min(500_000_000, max(50_000_000, timeout.nanoseconds / 10)))
        do {
            return try await Deadline.run(after: timeout + grace, timeoutError: { [self] in
                let connected = connected.withLockedValue { $0 }
                if !connected { probeConnection() }
                return FleetError.timedOut(after: timeout, connected: connected,
                                           lastConnectFailure: connectProbe.withLockedValue { $0.lastFailure })
            }) {
                try await work(connected)
            }
        } catch {
            throw FleetError.from(error, statementTimeout: timeout)
        }
    }

    /// Starts a direct connection attempt (unless one runs) and records why it failed, or nil.
    private func probeConnection() {
        let start = connectProbe.withLockedValue { probe in
            defer { probe.running = true }
            return !probe.running
        }
        guard start else { return }
        let configuration = listenConfiguration
        let logger = self.logger
        let timeout = statementTimeout
        let probe = connectProbe
        Task {
            var failure: String?
            do {
                let connection = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
                try? await connection.close()
            } catch {
                failure = FleetError.from(error, statementTimeout: timeout).reason
            }
            probe.withLockedValue { $0 = ConnectProbe(running: false, lastFailure: failure) }
        }
    }
}
