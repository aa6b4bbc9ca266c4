import Logging
import NIOCore
import PostgresNIO
import SidecarCore

/// Fleet mode's shared state in one PostgreSQL database (docs/fleet.md): the node registry,
/// budget leases, client rate-limit leases, the spend/stats outbox's destination and the shared
/// cache tier. The ONLY importer of PostgresNIO. Every method is one statement (or one short
/// transaction) and never runs per request, except the shared-cache lookup on a local miss.
/// Errors never carry the database URL or its password.
public final class FleetDatabase: Sendable {
    /// The node this process is, as registered in `fleet_nodes`.
    public let node: String

    // MARK: set-up

    /// Parses `url` (`postgres://user:password@host:port/db?sslmode=disable|prefer|require`, or a
    /// unix socket: `postgres://user@/db?host=/run/postgresql` / `postgresql:///db?host=/dir`,
    /// socket file `<dir>/.s.PGSQL.<port>`). Throws `FleetError.badURL` naming what is wrong but
    /// never the URL itself.
    public init(url: String, node: String, poolSize: Int, connectTimeout: TimeAmount, statementTimeout: TimeAmount, logger: Logger) throws {
        fatalError("implemented by the PostgreSQL layer")
    }

    /// Runs the connection pool until the task is cancelled (postgres-nio's `PostgresClient.run`).
    public func run() async {}

    /// Creates or migrates the schema (versioned in `fleet_schema`), under a transaction-level
    /// advisory lock so several nodes starting at once migrate exactly once.
    public func migrate() async throws {}

    /// Registers this node (or refreshes it): version, start time, `last_seen = now()`.
    public func heartbeat(version: String, startedAt: Int64) async throws {}

    // MARK: budgets

    /// Leases slices of fleet budgets for this node in one statement (the `fleet_lease_budgets`
    /// function), for every scope the node holds or needs. See `BudgetClaim` / `BudgetGrant`.
    public func leaseBudgets(_ claims: [FleetBudgetClaim], leaseSeconds: Double) async throws -> [FleetBudgetGrant] { [] }

    // MARK: client rate limits

    /// Takes up to `want` tokens per client from the fleet-wide token buckets (and gives back
    /// `giveBack` unused ones first), in one statement (`fleet_lease_rates`).
    public func leaseRates(_ claims: [FleetRateClaim]) async throws -> [String: Int] { [:] }

    // MARK: outbox

    /// The highest outbox sequence number of this node already applied in PostgreSQL.
    public func pushedSequence() async throws -> Int64 { 0 }

    /// Applies `rows` (this node's outbox rows with `seq` in `(after, upTo]`, already summed per
    /// key) if and only if the node's applied sequence is still `after` (compare-and-set, one
    /// transaction); returns the applied sequence afterwards (`upTo` on success, the stored value
    /// when it was not `after`: the caller drops its rows up to that and tries again).
    public func push(_ rows: [FleetSpendRow], after: Int64, upTo: Int64) async throws -> Int64 { 0 }

    // MARK: shared cache tier

    /// Looks `key` up in the shared tier; on a miss with `claimSeconds` set, claims the in-flight
    /// leadership for it at the same time (one statement): `.leader` when this node now holds
    /// the claim, `.follower(node)` when another node's claim is live, `.miss` otherwise.
    public func lookup(key: [UInt8], scope: String, claimSeconds: Double?) async throws -> FleetCacheLookup { .miss }

    /// Stores answers (upsert), drops this node's claims on their keys and notifies listeners
    /// (channel `llm_sidecar_cache`, payload the key in hex), one transaction.
    public func store(_ answers: [FleetCachedAnswer]) async throws {}

    /// The leader gave up on `key` (error, not cacheable): drops its claim and notifies.
    public func release(key: [UInt8]) async throws {}

    /// Deletes expired answers and, past `maxBytes`, the oldest; only one node at a time (a
    /// `pg_try_advisory_xact_lock`); returns rows deleted, nil when another node is pruning.
    public func prune(maxBytes: Int64) async throws -> Int? { nil }

    /// Keys stored or released by any node, as they are notified (LISTEN on one connection).
    public func cacheNotifications() -> AsyncStream<[UInt8]> { AsyncStream { $0.finish() } }

    // MARK: status and reports

    public func nodes() async throws -> [FleetNodeRow] { [] }
    public func budgets() async throws -> [FleetBudgetRow] { [] }
    /// Spend and counters from `fromDay` on, per day, node, model, deployment and client.
    public func spend(since fromDay: String) async throws -> [FleetSpendRow] { [] }
}
