/// Which cache keys the database may hold, in memory, so that a key it certainly does not hold
/// costs no SQLite read (and no hop to the database thread and back): a cache miss then goes
/// upstream as fast as a pass-through.
///
/// It keeps the first 8 bytes of each SHA-256 key (`CacheKey.w0`) (a false positive needs two keys sharing 64
/// bits: about 1 in 10^14 per lookup at 100,000 entries) in a set, ~16 bytes an entry. It is a
/// superset: keys are added as answers are written and only removed by `replaceAll` (a full
/// rebuild from the database after expiry and eviction), so a deleted entry only costs the
/// SQLite read it costs today. Until the first rebuild it knows nothing and says "maybe".
public struct StoredKeyIndex: Sendable {
    private var prefixes: Set<UInt64>?

    public init() {}

    /// False only when the database certainly does not hold `key`.
    public func mayContain(_ prefix: UInt64) -> Bool {
        guard let prefixes else { return true }
        return prefixes.contains(prefix)
    }

    /// Keys just written.
    public mutating func insert(_ prefix: UInt64) {
        prefixes?.insert(prefix)
    }

    /// Everything the database holds now (read on the database thread, where writes also happen,
    /// so no write falls between the read and this).
    public mutating func replaceAll(_ all: [UInt64]) {
        prefixes = Set(all)
    }

    /// Known entries; nil before the first rebuild.
    public var count: Int? { prefixes?.count }
}
