/// One cached answer: the exact bytes to replay and what it was for.
public struct CacheEntry: Sendable, Equatable {
    /// SHA-256 of the canonical request (32 bytes).
    public var key: [UInt8]
    /// Hash of the client credential, or "shared".
    public var scope: String
    /// The model group the request was routed as.
    public var model: String
    /// e.g. "/v1/chat/completions".
    public var endpoint: String
    public var status: Int
    public var contentType: String?
    /// The exact response body (for streams: the exact SSE bytes).
    public var body: [UInt8]
    public var isStream: Bool
    /// Unix seconds.
    public var createdAt: Int64
    public var expiresAt: Int64
    public var lastHitAt: Int64
    public var hitCount: Int64
    /// From the answer's `usage`, when it had one.
    public var promptTokens: Int64?
    public var completionTokens: Int64?

    public init(key: [UInt8], scope: String, model: String, endpoint: String, status: Int, contentType: String?, body: [UInt8],
                isStream: Bool, createdAt: Int64, expiresAt: Int64, lastHitAt: Int64? = nil, hitCount: Int64 = 0,
                promptTokens: Int64? = nil, completionTokens: Int64? = nil) {
        self.key = key
        self.scope = scope
        self.model = model
        self.endpoint = endpoint
        self.status = status
        self.contentType = contentType
        self.body = body
        self.isStream = isStream
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.lastHitAt = lastHitAt ?? createdAt
        self.hitCount = hitCount
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
    }
}

/// The response cache table and the per-day counters, over one `SQLiteConnection`.
/// Synchronous and single-threaded by design: callers run it on a thread pool, never on an
/// event loop. Time is passed in (Unix seconds), so tests control it.
public final class ResponseCacheStore {
    public static let migrations = [
        """
        CREATE TABLE responses (
            key BLOB PRIMARY KEY,
            scope TEXT NOT NULL,
            model TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            status INTEGER NOT NULL,
            content_type TEXT,
            body BLOB NOT NULL,
            is_stream INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            last_hit_at INTEGER NOT NULL,
            hit_count INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            size INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX responses_expires_at ON responses(expires_at);
        CREATE INDEX responses_last_hit_at ON responses(last_hit_at);
        CREATE INDEX responses_model ON responses(model);
        CREATE TABLE counters (
            day TEXT NOT NULL,
            model TEXT NOT NULL,
            hits INTEGER NOT NULL DEFAULT 0,
            misses INTEGER NOT NULL DEFAULT 0,
            coalesced INTEGER NOT NULL DEFAULT 0,
            bypasses INTEGER NOT NULL DEFAULT 0,
            bytes_served INTEGER NOT NULL DEFAULT 0,
            prompt_tokens_saved INTEGER NOT NULL DEFAULT 0,
            completion_tokens_saved INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (day, model)
        ) WITHOUT ROWID;
        """,
        // 2: entry count and body bytes kept by triggers, so the size cap is checked without a
        // scan of a million rows; a purge generation the daemon watches to drop its hot tier.
        """
        CREATE TABLE totals (id INTEGER PRIMARY KEY CHECK (id = 1), entries INTEGER NOT NULL, bytes INTEGER NOT NULL);
        INSERT INTO totals SELECT 1, count(*), coalesce(sum(size), 0) FROM responses;
        CREATE TRIGGER responses_insert AFTER INSERT ON responses BEGIN
            UPDATE totals SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 1;
        END;
        CREATE TRIGGER responses_delete AFTER DELETE ON responses BEGIN
            UPDATE totals SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 1;
        END;
        CREATE TRIGGER responses_resize AFTER UPDATE OF size ON responses BEGIN
            UPDATE totals SET bytes = bytes - OLD.size + NEW.size WHERE id = 1;
        END;
        CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO meta VALUES ('purge_generation', 0);
        """,
        // 3: every index is one more page written per stored answer; purge --model can scan.
        """
        DROP INDEX responses_model;
        """,
        // 4: what upstream calls cost, per day, model group, deployment and client credential (hashed).
        """
        CREATE TABLE spend (
            day TEXT NOT NULL,
            model TEXT NOT NULL,
            deployment TEXT NOT NULL,
            client TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            usd REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (day, model, deployment, client)
        ) WITHOUT ROWID;
        """,
        // 5: input tokens written to the provider's prompt cache (Anthropic bills them apart).
        """
        ALTER TABLE spend ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
        """,
        // 6: fleet mode's outbox: what this node spent and counted, until PostgreSQL has it.
        """
        CREATE TABLE fleet_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            day TEXT NOT NULL, model TEXT NOT NULL, deployment TEXT NOT NULL, client TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens INTEGER NOT NULL DEFAULT 0, usd REAL NOT NULL DEFAULT 0,
            hits INTEGER NOT NULL DEFAULT 0, misses INTEGER NOT NULL DEFAULT 0, coalesced INTEGER NOT NULL DEFAULT 0,
            bypasses INTEGER NOT NULL DEFAULT 0, bytes_served INTEGER NOT NULL DEFAULT 0,
            prompt_tokens_saved INTEGER NOT NULL DEFAULT 0, completion_tokens_saved INTEGER NOT NULL DEFAULT 0
        );
        """,
    ]

    /// Who spent: the row key of the `spend` table (without the day).
    public struct SpendKey: Hashable, Sendable {
        public var model: String, deployment: String, client: String
        public init(model: String, deployment: String, client: String) {
            self.model = model
            self.deployment = deployment
            self.client = client
        }
    }

    public struct Spend: Sendable, Equatable {
        public var requests: Int64 = 0, promptTokens: Int64 = 0, completionTokens: Int64 = 0, cachedTokens: Int64 = 0
        public var cacheWriteTokens: Int64 = 0
        public var usd: Double = 0
        public init() {}
        public static func += (a: inout Spend, b: Spend) {
            a.requests += b.requests; a.promptTokens += b.promptTokens; a.completionTokens += b.completionTokens
            a.cachedTokens += b.cachedTokens; a.cacheWriteTokens += b.cacheWriteTokens; a.usd += b.usd
        }
    }

    /// Adds a batch of spend for `day`, in one transaction.
    public func addSpend(_ deltas: [SpendKey: Spend], day: String) throws {
        guard !deltas.isEmpty else { return }
        let s = try connection.prepare("""
            INSERT INTO spend (day, model, deployment, client, requests, prompt_tokens, completion_tokens, cached_tokens, usd, cache_write_tokens)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
            ON CONFLICT (day, model, deployment, client) DO UPDATE SET requests = requests + ?5,
                prompt_tokens = prompt_tokens + ?6, completion_tokens = completion_tokens + ?7,
                cached_tokens = cached_tokens + ?8, usd = usd + ?9, cache_write_tokens = cache_write_tokens + ?10
            """)
        try connection.transaction {
            for (k, d) in deltas {
                try s.run([.text(day), .text(k.model), .text(k.deployment), .text(k.client), .integer(d.requests),
                           .integer(d.promptTokens), .integer(d.completionTokens), .integer(d.cachedTokens), .real(d.usd),
                           .integer(d.cacheWriteTokens)])
            }
        }
    }

    /// Spend rows from `fromDay` on (inclusive, "YYYY-MM-DD"), summed over the days.
    public func spend(since fromDay: String) throws -> [SpendKey: Spend] {
        let s = try connection.prepare("""
            SELECT model, deployment, client, sum(requests), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), sum(usd),
                   sum(cache_write_tokens)
            FROM spend WHERE day >= ?1 GROUP BY model, deployment, client
            """)
        try s.bind([.text(fromDay)])
        var out: [SpendKey: Spend] = [:]
        while try s.step() {
            var d = Spend()
            d.requests = s.int(3); d.promptTokens = s.int(4); d.completionTokens = s.int(5); d.cachedTokens = s.int(6); d.usd = s.double(7)
            d.cacheWriteTokens = s.int(8)
            out[SpendKey(model: s.text(0) ?? "", deployment: s.text(1) ?? "", client: s.text(2) ?? "")] = d
        }
        return out
    }

    public let connection: SQLiteConnection
    private let insert: Statement
    private let select: Statement
    private let touch: Statement
    private let expire: Statement
    private let oldest: Statement
    private let delete: Statement
    private let totals: Statement
    private let addCounters: Statement
    private let touchBatch: Statement
    private let generation: Statement

    public init(connection: SQLiteConnection) throws {
        self.connection = connection
        try connection.migrate(Self.migrations)
        // An upsert, not INSERT OR REPLACE: REPLACE deletes without firing the delete trigger.
        insert = try connection.prepare("""
            INSERT INTO responses (key, scope, model, endpoint, status, content_type, body, is_stream,
                created_at, expires_at, last_hit_at, hit_count, prompt_tokens, completion_tokens, size)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
            ON CONFLICT (key) DO UPDATE SET scope = ?2, model = ?3, endpoint = ?4, status = ?5, content_type = ?6,
                body = ?7, is_stream = ?8, created_at = ?9, expires_at = ?10, last_hit_at = ?11, hit_count = ?12,
                prompt_tokens = ?13, completion_tokens = ?14, size = ?15
            """)
        select = try connection.prepare("""
            SELECT scope, model, endpoint, status, content_type, body, is_stream, created_at, expires_at, last_hit_at,
                   hit_count, prompt_tokens, completion_tokens
            FROM responses WHERE key = ?1 AND expires_at > ?2
            """)
        touch = try connection.prepare("UPDATE responses SET last_hit_at = ?2, hit_count = hit_count + 1 WHERE key = ?1")
        expire = try connection.prepare("DELETE FROM responses WHERE key IN (SELECT key FROM responses WHERE expires_at <= ?1 LIMIT ?2)")
        oldest = try connection.prepare("SELECT key, size FROM responses ORDER BY last_hit_at LIMIT ?1")
        delete = try connection.prepare("DELETE FROM responses WHERE key = ?1")
        totals = try connection.prepare("SELECT entries, bytes FROM totals WHERE id = 1")
        touchBatch = try connection.prepare(
            "UPDATE responses SET last_hit_at = max(last_hit_at, ?2), hit_count = hit_count + ?3 WHERE key = ?1")
        generation = try connection.prepare("SELECT value FROM meta WHERE name = 'purge_generation'")
        addCounters = try connection.prepare("""
            INSERT INTO counters (day, model, hits, misses, coalesced, bypasses, bytes_served, prompt_tokens_saved, completion_tokens_saved)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
            ON CONFLICT (day, model) DO UPDATE SET hits = hits + ?3, misses = misses + ?4, coalesced = coalesced + ?5,
                bypasses = bypasses + ?6, bytes_served = bytes_served + ?7,
                prompt_tokens_saved = prompt_tokens_saved + ?8, completion_tokens_saved = completion_tokens_saved + ?9
            """)
    }

    public convenience init(path: String) throws {
        try self.init(connection: SQLiteConnection(path: path))
    }

    /// Stores (or replaces) an entry.
    public func put(_ e: CacheEntry) throws {
        try insert.run([
            .blob(e.key), .text(e.scope), .text(e.model), .text(e.endpoint), .integer(Int64(e.status)),
            e.contentType.map { .text($0) } ?? .null, .blob(e.body), .integer(e.isStream ? 1 : 0),
            .integer(e.createdAt), .integer(e.expiresAt), .integer(e.lastHitAt), .integer(e.hitCount),
            e.promptTokens.map { .integer($0) } ?? .null, e.completionTokens.map { .integer($0) } ?? .null,
            .integer(Int64(e.body.count)),
        ])
    }

    /// Stores (or replaces) entries in one transaction: the pages they share (indexes, totals)
    /// are written once per batch, not once per answer.
    public func put(_ entries: [CacheEntry]) throws {
        guard !entries.isEmpty else { return }
        try connection.transaction { for e in entries { try put(e) } }
    }

    /// The live entry for `key`, counting the hit (expired entries are not returned).
    public func hit(_ key: [UInt8], now: Int64) throws -> CacheEntry? {
        guard var e = try lookup(key, now: now) else { return nil }
        try touch.run([.blob(key), .integer(now)])
        e.lastHitAt = now
        e.hitCount += 1
        return e
    }

    /// The live entry for `key` without writing anything (for a read-only connection; the
    /// caller writes the hit back later with `touch`).
    public func lookup(_ key: [UInt8], now: Int64) throws -> CacheEntry? {
        try select.bind([.blob(key), .integer(now)])
        // Reset on every path: a statement left mid-step keeps its read transaction (and, on a
        // reader connection, an old snapshot of the database) open.
        defer { try? select.bind([]) }
        guard try select.step() else { return nil }
        let e = CacheEntry(
            key: key, scope: select.text(0) ?? "", model: select.text(1) ?? "", endpoint: select.text(2) ?? "",
            status: Int(select.int(3)), contentType: select.isNull(4) ? nil : select.text(4), body: select.blob(5),
            isStream: select.int(6) != 0, createdAt: select.int(7), expiresAt: select.int(8), lastHitAt: select.int(9),
            hitCount: select.int(10), promptTokens: select.isNull(11) ? nil : select.int(11),
            completionTokens: select.isNull(12) ? nil : select.int(12))
        return e
    }

    /// The first 8 bytes of every stored key, big-endian (`CacheKey.w0`), expired ones included:
    /// what the in-memory `StoredKeyIndex` is rebuilt from.
    public func keyPrefixes() throws -> [UInt64] {
        let statement = try connection.prepare("SELECT substr(key, 1, 8) FROM responses")
        var out: [UInt64] = []
        while try statement.step() { out.append(statement.blob(0).reduce(0) { $0 << 8 | UInt64($1) }) }
        return out
    }

    /// Deletes up to `limit` expired entries; returns how many. Small batches keep each write
    /// transaction short, so serving never stalls behind housekeeping.
    @discardableResult
    public func deleteExpired(now: Int64, limit: Int = 500) throws -> Int {
        try expire.run([.integer(now), .integer(Int64(limit))])
    }

    /// Evicts least-recently-hit entries, `batch` at a time, until the bodies fit in `maxBytes`;
    /// returns how many went.
    @discardableResult
    public func evict(toFit maxBytes: Int64, batch: Int = 200) throws -> Int {
        var evicted = 0
        while true {
            let (_, bytes) = try sizes()
            guard bytes > maxBytes else { return evicted }
            var excess = bytes - maxBytes
            try connection.transaction {
                try oldest.bind([.integer(Int64(batch))])
                var keys: [[UInt8]] = []
                while excess > 0, try oldest.step() {
                    keys.append(oldest.blob(0))
                    excess -= oldest.int(1)
                }
                try oldest.bind([])
                for k in keys { try delete.run([.blob(k)]) }
                evicted += keys.count
            }
        }
    }

    /// (entries, bytes of bodies).
    public func sizes() throws -> (Int64, Int64) {
        try totals.bind([])
        _ = try totals.step()
        let r = (totals.int(0), totals.int(1))
        try totals.bind([])
        return r
    }

    /// Deletes entries of `model` (or all models), created before `olderThan` (or any time), and
    /// bumps the purge generation so a running daemon drops its in-memory copies too.
    @discardableResult
    public func purge(model: String?, createdBefore: Int64?) throws -> Int {
        var clauses: [String] = []
        var values: [Statement.Value] = []
        if let model { clauses.append("model = ?\(values.count + 1)"); values.append(.text(model)) }
        if let createdBefore { clauses.append("created_at < ?\(values.count + 1)"); values.append(.integer(createdBefore)) }
        let sql = "DELETE FROM responses" + (clauses.isEmpty ? "" : " WHERE " + clauses.joined(separator: " AND "))
        return try connection.transaction {
            let n = try connection.prepare(sql).run(values)
            try connection.execute("UPDATE meta SET value = value + 1 WHERE name = 'purge_generation'")
            return n
        }
    }

    /// Bumped by every purge; a daemon that sees it change forgets its hot tier.
    public func purgeGeneration() throws -> Int64 {
        try generation.bind([])
        _ = try generation.step()
        let g = generation.int(0)
        try generation.bind([])
        return g
    }

    /// Hits served from memory, written back in one transaction: key -> (count, last hit time).
    public func touch(_ hits: [[UInt8]: (count: Int64, at: Int64)]) throws {
        guard !hits.isEmpty else { return }
        try connection.transaction {
            for (key, h) in hits { try touchBatch.run([.blob(key), .integer(h.at), .integer(h.count)]) }
        }
    }

    /// Counter totals by day (newest first), summed over models.
    public func dailyTotals(days: Int) throws -> [(day: String, counters: CounterDelta)] {
        let s = try connection.prepare("""
            SELECT day, sum(hits), sum(misses), sum(coalesced), sum(bypasses), sum(bytes_served),
                   sum(prompt_tokens_saved), sum(completion_tokens_saved) FROM counters GROUP BY day ORDER BY day DESC LIMIT ?1
            """)
        try s.bind([.integer(Int64(days))])
        var out: [(String, CounterDelta)] = []
        while try s.step() { out.append((s.text(0) ?? "", Self.delta(s))) }
        return out
    }

    /// Entries and body bytes per model (a full scan: for the CLI, not the daemon).
    public func entriesByModel() throws -> [String: (entries: Int64, bytes: Int64)] {
        let s = try connection.prepare("SELECT model, count(*), sum(size) FROM responses GROUP BY model")
        var out: [String: (Int64, Int64)] = [:]
        while try s.step() { out[s.text(0) ?? ""] = (s.int(1), s.int(2)) }
        return out
    }

    /// `PRAGMA quick_check`: "ok" for a sound file.
    public func quickCheck() throws -> String {
        let s = try connection.prepare("PRAGMA quick_check")
        _ = try s.step()
        return s.text(0) ?? ""
    }

    private static func delta(_ s: Statement) -> CounterDelta {
        var d = CounterDelta()
        d.hits = s.int(1); d.misses = s.int(2); d.coalesced = s.int(3); d.bypasses = s.int(4)
        d.bytesServed = s.int(5); d.promptTokensSaved = s.int(6); d.completionTokensSaved = s.int(7)
        return d
    }

    /// Per-day, per-model counter increments, as one batch.
    public struct CounterDelta: Sendable, Equatable {
        public var hits: Int64 = 0, misses: Int64 = 0, coalesced: Int64 = 0, bypasses: Int64 = 0
        public var bytesServed: Int64 = 0, promptTokensSaved: Int64 = 0, completionTokensSaved: Int64 = 0
        public init() {}

        public var isEmpty: Bool { self == CounterDelta() }

        public static func += (a: inout CounterDelta, b: CounterDelta) {
            a.hits += b.hits; a.misses += b.misses; a.coalesced += b.coalesced; a.bypasses += b.bypasses
            a.bytesServed += b.bytesServed; a.promptTokensSaved += b.promptTokensSaved
            a.completionTokensSaved += b.completionTokensSaved
        }
    }

    public func add(_ deltas: [String: CounterDelta], day: String) throws {
        try connection.transaction {
            for (model, d) in deltas {
                try addCounters.run([.text(day), .text(model), .integer(d.hits), .integer(d.misses), .integer(d.coalesced),
                                     .integer(d.bypasses), .integer(d.bytesServed), .integer(d.promptTokensSaved),
                                     .integer(d.completionTokensSaved)])
            }
        }
    }

    /// Counter totals by model over all days (for `stats`).
    public func counterTotals() throws -> [String: CounterDelta] {
        let s = try connection.prepare("""
            SELECT model, sum(hits), sum(misses), sum(coalesced), sum(bypasses), sum(bytes_served),
                   sum(prompt_tokens_saved), sum(completion_tokens_saved) FROM counters GROUP BY model
            """)
        var out: [String: CounterDelta] = [:]
        while try s.step() { out[s.text(0) ?? ""] = Self.delta(s) }
        return out
    }
}
