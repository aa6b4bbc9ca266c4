import NIOCore

extension SidecarConfiguration {
    /// `[fleet]` (docs/fleet.md).
    public struct Fleet: Sendable, Equatable {
        /// Where the PostgreSQL URL is (it holds a password: never in the file itself).
        public var postgresURL: KeySource
        /// This sidecar's name in the fleet; nil: the host name.
        public var node: String?
        public enum OnUnavailable: String, Sendable {
            /// Serve from local state and the leases held until they run out.
            case local
            /// Refuse spending requests (503 `fleet_unavailable`) while the database is away.
            case reject
        }
        public var onUnavailable = OnUnavailable.local
        /// Connections to PostgreSQL. Default 4.
        public var poolSize = 4
        public var connectTimeout: TimeAmount = .seconds(2)
        /// The longest any statement may take; a slower database counts as unavailable. Default 2 s.
        public var statementTimeout: TimeAmount = .seconds(2)
        /// How long a budget slice is this node's without a renewal; a killed node's unused slice
        /// returns to the fleet after at most this long. Default 30 s.
        public var leasePeriod: TimeAmount = .seconds(30)
        /// How often leases are renewed (reporting use) and the outbox is written. Default 2 s.
        public var syncInterval: TimeAmount = .seconds(2)
        /// The largest share of a budget one node may hold unused at once. Default 0.02.
        public var budgetSlice = 0.02
        /// Ask the shared cache tier on a local miss, and write local answers behind to it.
        public var sharedCache = true
        /// How long a local miss waits for the shared tier before going upstream. Default 25 ms.
        public var sharedCacheTimeout: TimeAmount = .milliseconds(25)
        /// The shared tier's size cap (pruned by one node at a time). Default: `cache.max_bytes`.
        public var sharedCacheMaxBytes: Int64
        /// How long a request waits for an identical one in flight on another node. 0: never waits.
        /// Default 30 s.
        public var coalesceWait: TimeAmount = .seconds(30)

        public init(postgresURL: KeySource, sharedCacheMaxBytes: Int64) {
            self.postgresURL = postgresURL
            self.sharedCacheMaxBytes = sharedCacheMaxBytes
        }
    }
}

extension Validator {
    func fleet(_ rf: RawConfiguration.RawFleet, cache: SidecarConfiguration.Cache) throws(ConfigurationError) -> SidecarConfiguration.Fleet {
        let base = ["fleet"]
        let source = try keySource(env: rf.postgres_url_env, file: rf.postgres_url_file, base, "postgres_url")
        guard source != .none else {
            throw fail(base, "postgres_url_env (or postgres_url_file) is required: the URL holds a password, so it is never written in this file")
        }
        var f = SidecarConfiguration.Fleet(postgresURL: source, sharedCacheMaxBytes: cache.maxBytes)
        if let node = rf.node {
            guard !node.isEmpty, node.count <= 200, node.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw fail(base + ["node"], "must be 1-200 printable ASCII characters without spaces")
            }
            f.node = node
        }
        if let o = rf.on_unavailable {
            guard let v = SidecarConfiguration.Fleet.OnUnavailable(rawValue: o) else { throw fail(base + ["on_unavailable"], "must be \"local\" or \"reject\"") }
            f.onUnavailable = v
        }
        f.poolSize = try positive(rf.pool_size, base + ["pool_size"], default: f.poolSize, max: 100)
        f.connectTimeout = try duration(rf.connect_timeout, base + ["connect_timeout"], default: f.connectTimeout)
        f.statementTimeout = try duration(rf.statement_timeout, base + ["statement_timeout"], default: f.statementTimeout)
        f.leasePeriod = try duration(rf.lease_period, base + ["lease_period"], default: f.leasePeriod)
        f.syncInterval = try duration(rf.sync_interval, base + ["sync_interval"], default: f.syncInterval)
        guard f.syncInterval.nanoseconds * 3 <= f.leasePeriod.nanoseconds else {
            throw fail(base + ["sync_interval"], "must be at most a third of lease_period (leases are renewed at every sync, and must not lapse between two)")
        }
        if let s = rf.budget_slice?.value {
            guard s > 0, s <= 1 else { throw fail(base + ["budget_slice"], "must be more than 0 and at most 1 (a share of each budget), got \(s)") }
            f.budgetSlice = s
        }
        f.sharedCache = rf.shared_cache ?? true
        f.sharedCacheTimeout = try duration(rf.shared_cache_timeout, base + ["shared_cache_timeout"], default: f.sharedCacheTimeout)
        if let m = rf.shared_cache_max_bytes { f.sharedCacheMaxBytes = Int64(try positive(m, base + ["shared_cache_max_bytes"], default: 1)) }
        f.coalesceWait = try duration(rf.coalesce_wait, base + ["coalesce_wait"], default: f.coalesceWait, allowZero: true)
        return f
    }
}
