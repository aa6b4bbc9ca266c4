/// The running counts behind the dashboard (`GET /stats/live`): requests finished by status
/// class, a latency histogram and the cache's verdicts, all since the daemon started. They only
/// grow; the page polls them and computes rates and percentiles from the difference between two
/// polls, so the daemon keeps no time series and no clock here.
///
/// Latency is what the client saw: from its request head to the last byte of the answer handed to
/// the socket, cache hits included. Answers cut short or abandoned by the client are counted
/// (`cut`) but not timed: a client that went away after 10 minutes says nothing about latency.
public struct RequestTally: Sendable, Equatable {
    /// Upper bounds of the latency buckets, in milliseconds; one more bucket above the last holds
    /// everything slower. About 2.5× apart, as Prometheus' defaults are: from 1 ms (a hot-tier
    /// hit) to 5 minutes (a long generation), 18 buckets in all. A percentile read from them is
    /// off by at most the width of its bucket; the page interpolates linearly inside it.
    public static let boundsMilliseconds: [Double] = [
        1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000,
    ]
    private static let boundsNanoseconds: [Int64] = boundsMilliseconds.map { Int64($0 * 1_000_000) }

    /// The cache's verdicts, as `x-sidecar-cache` names them, in this order.
    public static let cacheResults = ["hit", "miss", "coalesced", "bypass"]

    /// Requests that ended, however they ended.
    public private(set) var finished = 0
    /// Complete answers by status class: index 0 for 1xx through 4 for 5xx.
    public private(set) var byClass = [0, 0, 0, 0, 0]
    /// Answers cut short (the head was sent, the rest could not be) or abandoned by the client.
    public private(set) var cut = 0
    /// Complete answers per latency bucket (not cumulative): `boundsMilliseconds.count + 1` counts.
    public private(set) var buckets = Array(repeating: 0, count: boundsMilliseconds.count + 1)
    /// The sum of the timed latencies, for the mean.
    public private(set) var sumNanoseconds: Int64 = 0
    /// Counts per `cacheResults` entry.
    public private(set) var cache = [0, 0, 0, 0]

    public init() {}

    /// A request ended: with a complete answer of `status` after `nanoseconds`, or cut short.
    public mutating func finished(status: Int, complete: Bool, nanoseconds: Int64) {
        finished += 1
        guard complete, (100..<600).contains(status) else {
            cut += 1
            return
        }
        byClass[status / 100 - 1] += 1
        let n = max(0, nanoseconds)
        buckets[Self.bucket(nanoseconds: n)] += 1
        sumNanoseconds &+= n
    }

    /// The bucket of a latency: the first whose upper bound is at least it (Prometheus' `le`).
    public static func bucket(nanoseconds: Int64) -> Int {
        var low = 0, high = boundsNanoseconds.count
        while low < high {
            let mid = (low + high) / 2
            if boundsNanoseconds[mid] >= nanoseconds { high = mid } else { low = mid + 1 }
        }
        return low
    }

    /// Counts one verdict of the cache; names it does not know are ignored.
    public mutating func cacheResult(_ name: String) {
        if let i = Self.cacheResults.firstIndex(of: name) { cache[i] += 1 }
    }

    /// Timed answers (the histogram's total).
    public var timed: Int { buckets.reduce(0, +) }

    /// Adds `other`'s counts (the tallies of several event loops, summed when they are read).
    public mutating func add(_ other: RequestTally) {
        finished += other.finished
        cut += other.cut
        sumNanoseconds += other.sumNanoseconds
        for i in byClass.indices { byClass[i] += other.byClass[i] }
        for i in buckets.indices { buckets[i] += other.buckets[i] }
        for i in cache.indices { cache[i] += other.cache[i] }
    }
}
