/// Fleet mode's outbox (docs/fleet.md, "Spend and stats"): every flush of spend and counters is
/// also written here, and stays until the fleet database has applied it. Rows are numbered, and
/// the fleet database remembers the last number it applied per node, so a row is counted there
/// exactly once however often a push is retried or interrupted.
extension ResponseCacheStore {
    public struct OutboxRow: Sendable, Equatable {
        public var seq: Int64
        public var day: String
        public var key: SpendKey
        public var spend: Spend
        public var counters: CounterDelta
        public init(seq: Int64, day: String, key: SpendKey, spend: Spend, counters: CounterDelta) {
            self.seq = seq
            self.day = day
            self.key = key
            self.spend = spend
            self.counters = counters
        }
    }

    /// Adds one flush's counters (per model; deployment and client "-") and spend to the outbox,
    /// in one transaction.
    public func addOutbox(counters: [String: CounterDelta], spend: [SpendKey: Spend], day: String) throws {
        let counters = counters.filter { !$0.value.isEmpty }
        guard !counters.isEmpty || !spend.isEmpty else { return }
        let s = try connection.prepare("""
            INSERT INTO fleet_outbox (day, model, deployment, client, requests, prompt_tokens, completion_tokens, cached_tokens,
                cache_write_tokens, usd, hits, misses, coalesced, bypasses, bytes_served, prompt_tokens_saved, completion_tokens_saved)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
            """)
        try connection.transaction {
            for (model, c) in counters {
                try s.run([.text(day), .text(model), .text("-"), .text("-"), .integer(0), .integer(0), .integer(0), .integer(0), .integer(0),
                           .real(0), .integer(c.hits), .integer(c.misses), .integer(c.coalesced), .integer(c.bypasses),
                           .integer(c.bytesServed), .integer(c.promptTokensSaved), .integer(c.completionTokensSaved)])
            }
            for (k, d) in spend {
                try s.run([.text(day), .text(k.model), .text(k.deployment), .text(k.client), .integer(d.requests), .integer(d.promptTokens),
                           .integer(d.completionTokens), .integer(d.cachedTokens), .integer(d.cacheWriteTokens), .real(d.usd),
                           .integer(0), .integer(0), .integer(0), .integer(0), .integer(0), .integer(0), .integer(0)])
            }
        }
    }

    /// The oldest outbox rows after `seq`, at most `limit`.
    public func outbox(after seq: Int64, limit: Int) throws -> [OutboxRow] {
        let s = try connection.prepare("""
            SELECT seq, day, model, deployment, client, requests, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, usd,
                   hits, misses, coalesced, bypasses, bytes_served, prompt_tokens_saved, completion_tokens_saved
            FROM fleet_outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2
            """)
        try s.bind([.integer(seq), .integer(Int64(limit))])
        var out: [OutboxRow] = []
        while try s.step() {
            var spend = Spend()
            spend.requests = s.int(5); spend.promptTokens = s.int(6); spend.completionTokens = s.int(7)
            spend.cachedTokens = s.int(8); spend.cacheWriteTokens = s.int(9); spend.usd = s.double(10)
            var c = CounterDelta()
            c.hits = s.int(11); c.misses = s.int(12); c.coalesced = s.int(13); c.bypasses = s.int(14)
            c.bytesServed = s.int(15); c.promptTokensSaved = s.int(16); c.completionTokensSaved = s.int(17)
            out.append(OutboxRow(seq: s.int(0), day: s.text(1) ?? "", key: SpendKey(model: s.text(2) ?? "", deployment: s.text(3) ?? "",
                                                                                   client: s.text(4) ?? ""), spend: spend, counters: c))
        }
        return out
    }

    /// Drops the rows the fleet database has applied.
    public func deleteOutbox(through seq: Int64) throws {
        let s = try connection.prepare("DELETE FROM fleet_outbox WHERE seq <= ?1")
        try s.run([.integer(seq)])
    }

    /// Rows waiting (for `/metrics` and `fleet status`).
    public func outboxCount() throws -> Int64 {
        let s = try connection.prepare("SELECT count(*) FROM fleet_outbox")
        return try s.step() ? s.int(0) : 0
    }
}
