extension ResponseCacheStore {
    /// The cache's counters per day and model from `fromDay` on ("YYYY-MM-DD", inclusive), the
    /// newest day first: what the dashboard's "saved per day and model" table shows. The primary
    /// key (day, model) serves the range, so a year of counters costs a week's read.
    public func dailyModelTotals(since fromDay: String) throws -> [(day: String, model: String, counters: CounterDelta)] {
        let s = try connection.prepare("""
            SELECT day, model, hits, misses, coalesced, bypasses, bytes_served, prompt_tokens_saved, completion_tokens_saved
            FROM counters WHERE day >= ?1 ORDER BY day DESC, model
            """)
        try s.bind([.text(fromDay)])
        var out: [(String, String, CounterDelta)] = []
        while try s.step() {
            var d = CounterDelta()
            d.hits = s.int(2); d.misses = s.int(3); d.coalesced = s.int(4); d.bypasses = s.int(5)
            d.bytesServed = s.int(6); d.promptTokensSaved = s.int(7); d.completionTokensSaved = s.int(8)
            out.append((s.text(0) ?? "", s.text(1) ?? "", d))
        }
        return out
    }
}
