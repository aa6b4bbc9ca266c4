import NIOCore

/// Which addresses a `discover = "dns"` upstream has, and when to ask again: the rule, pure, with
/// time passed in (the UDP and the timers are `DNSDiscovery` in SidecarProxy).
///
/// - An answer with addresses replaces the set; the next query is due after the answer's smallest
///   TTL, clamped to `minTTL...maxTTL` (a TTL of 0, common on Consul, would otherwise mean a query
///   per request; a day-long TTL would hide a removed server for a day).
/// - A failure (timeout, SERVFAIL, a malformed or truncated answer) keeps the last good set: a
///   resolver that hiccups must not empty a group. It is retried after `minTTL`. Only the first
///   failure in a row is reported for the log (`.failedFirst`), so a dead resolver logs once.
/// - An empty answer (NXDOMAIN, or no records) is believed only when the next query,
///   `minTTL` later, says the same: then every address drains. One empty answer during a
///   Consul leader election or a DNS rollout does not take the whole fleet out; a service that
///   really went away is gone within two queries.
public struct DNSDiscoveryState: Sendable, Equatable {
    public enum Result: Sendable, Equatable {
        case addresses([DNSMessage.Record])
        case empty
        case failed(String)
    }

    public enum Verdict: Sendable, Equatable {
        /// The set changed (or is confirmed) to `addresses`.
        case changed(added: [String], removed: [String])
        case unchanged
        /// The first failure after a success: log it. Later ones in a row are `.unchanged`.
        case failedFirst(String)
        /// An empty answer not yet confirmed: the set is kept.
        case emptyUnconfirmed
    }

    public let minTTL: TimeAmount
    public let maxTTL: TimeAmount
    /// Current addresses, sorted.
    public private(set) var addresses: [String] = []
    /// When the next query is due.
    public private(set) var nextQuery: NIODeadline
    public private(set) var resolvedOnce = false
    private var failing = false
    private var emptyOnce = false

    public init(minTTL: TimeAmount, maxTTL: TimeAmount, now: NIODeadline) {
        precondition(minTTL <= maxTTL)
        self.minTTL = minTTL
        self.maxTTL = maxTTL
        self.nextQuery = now
    }

    public mutating func resolved(_ result: Result, now: NIODeadline) -> Verdict {
        switch result {
        case .failed(let reason):
            nextQuery = now + minTTL
            defer { failing = true }
            return failing ? .unchanged : .failedFirst(reason)
        case .empty:
            failing = false
            nextQuery = now + minTTL
            if !emptyOnce && !addresses.isEmpty {
                emptyOnce = true
                return .emptyUnconfirmed
            }
            emptyOnce = false
            resolvedOnce = true
            return replace(with: [])
        case .addresses(let records):
            failing = false
            emptyOnce = false
            resolvedOnce = true
            let ttl = TimeAmount.seconds(Int64(records.map(\.ttl).min() ?? 0))
            nextQuery = now + min(max(ttl, minTTL), maxTTL)
            return replace(with: records.map(\.address))
        }
    }

    private mutating func replace(with new: [String]) -> Verdict {
        let sorted = Array(Set(new)).sorted()
        let old = Set(addresses)
        let added = sorted.filter { !old.contains($0) }
        let removed = addresses.filter { !Set(sorted).contains($0) }
        addresses = sorted
        return added.isEmpty && removed.isEmpty ? .unchanged : .changed(added: added, removed: removed)
    }
}
