import Foundation
import NIOCore

/// Keeps each prompt prefix on the deployment whose provider cache holds it (docs/routing.md,
/// "Prompt-cache affinity"). A bounded table, prefix hash -> deployment, each entry living as long
/// as the provider keeps the prefix (`ttl` from its last use: a cache hit renews the provider's
/// entry too). A value type; the caller holds it next to its `DeploymentSelector` and passes time
/// and randomness in.
///
/// For a request with a `PromptPrefix`:
/// - known (the longest of its candidates with a live entry): it goes to that deployment if the
///   deployment `admits` it (not ejected, probing or at its cap, and not more loaded than
///   `loadFactor` × its weighted share of the group); otherwise it moves, and the table learns the
///   new home (the provider will cache the prefix there now);
/// - unknown: placed by weighted least-connections, or (`placement = .hash`) by weighted
///   rendezvous hashing of the prefix, so sidecars that do not talk place it alike, bounded by the
///   same load factor.
///
/// Weights hold over many prefixes: each new prefix is placed by the weighted rule, and no home
/// keeps more than its bounded share.
public struct PrefixAffinity: Sendable {
    public enum Placement: String, Sendable, Equatable, CaseIterable {
        /// A new prefix goes where weighted least-connections sends it (the default).
        case leastConnections = "least-connections"
        /// A new prefix goes to its weighted rendezvous choice, if that admits it.
        case hash
    }

    public struct Configuration: Sendable, Equatable {
        /// How long the provider keeps a prefix after its last use: 5 minutes for OpenAI's and
        /// Anthropic's default caches, 1 hour for Anthropic's `ttl: "1h"` and OpenAI's extended
        /// retention.
        public var ttl: TimeAmount = .minutes(5)
        /// Prefixes remembered; the least recently used go first. About 64 bytes each.
        public var capacity = 100_000
        /// How much busier than its weighted share a prefix's home may be before the prefix moves.
        public var loadFactor = 1.5
        public var placement = Placement.leastConnections
        public init() {}
    }

    /// What happened to a request's prefix, for `llm_sidecar_prompt_affinity_total{result}`.
    public enum Verdict: String, Sendable, Equatable, CaseIterable {
        /// Not in the table: placed by the weighted rule.
        case new
        /// Went to the deployment that holds it.
        case kept
        /// Its home could not take it: placed elsewhere, and the table now names the new home.
        case moved
    }

    struct Entry: Sendable {
        var deployment: Int
        var expires: NIODeadline
    }

    public let configuration: Configuration
    private var table: LRUCache<UInt64, Entry>

    public init(configuration: Configuration = Configuration()) {
        precondition(configuration.capacity >= 1 && configuration.loadFactor >= 1)
        self.configuration = configuration
        self.table = LRUCache(capacity: configuration.capacity)
    }

    /// Prefixes in the table (expired ones included until they are looked up or pushed out).
    public var count: Int { table.count }

    /// The deployment holding the longest live prefix of `prefix`, if any.
    public mutating func home(of prefix: PromptPrefix, now: NIODeadline) -> Int? {
        for h in prefix.candidates {
            guard let e = table.get(h) else { continue }
            if e.expires > now { return e.deployment }
            _ = table.remove(h)
        }
        return nil
    }

    /// Deployment `i` is about to serve `prefix`: the provider will hold it there for `ttl`.
    public mutating func learn(_ prefix: PromptPrefix, deployment i: Int, now: NIODeadline) {
        _ = table.set(prefix.longest, Entry(deployment: i, expires: now + configuration.ttl), cost: 1)
    }

    /// Picks a deployment for a request with `prefix` (its in-flight slot taken in `selector`) and
    /// learns it; nil when no deployment outside `excluding` can take a request.
    public mutating func select<R: RandomNumberGenerator>(
        _ prefix: PromptPrefix, selector: inout DeploymentSelector, excluding: Set<Int> = [], now: NIODeadline, random: inout R
    ) -> (index: Int, verdict: Verdict)? {
        let home = home(of: prefix, now: now)
        let all = Set(selector.deployments.indices)
        var chosen: Int?
        if let h = home, !excluding.contains(h), selector.admits(h, loadFactor: configuration.loadFactor, excluding: excluding, now: now) {
            chosen = selector.select(now: now, excluding: all.subtracting([h]), random: &random)
        }
        let verdict: Verdict = chosen != nil ? .kept : home == nil ? .new : .moved
        if chosen == nil, configuration.placement == .hash {
            for i in Self.rendezvousOrder(prefix.longest, weights: selector.deployments.map(\.weight)) where !excluding.contains(i) && i != home {
                guard selector.admits(i, loadFactor: configuration.loadFactor, excluding: excluding, now: now) else { continue }
                chosen = selector.select(now: now, excluding: all.subtracting([i]), random: &random)
                break
            }
        }
        if chosen == nil { chosen = selector.select(now: now, excluding: excluding, random: &random) }
        guard let i = chosen else { return nil }
        learn(prefix, deployment: i, now: now)
        return (i, verdict)
    }

    /// Deployments in weighted rendezvous order for `key` (Schindelhauer and Schomaker's
    /// logarithmic method): deployment i scores `-weight(i) / ln(u)`, u uniform in (0, 1) from a
    /// hash of (key, i); the highest wins. Each key lands on deployment i with probability
    /// weight(i) / Σ weight, and removing a deployment moves only the keys it had.
    public static func rendezvousOrder(_ key: UInt64, weights: [Int]) -> [Int] {
        let scores = weights.indices.map { i -> Double in
            let bits = splitMix(key ^ (UInt64(i) &* 0x9E37_79B9_7F4A_7C15)) >> 11  // 53 bits
            let u = (Double(bits) + 0.5) / 9_007_199_254_740_992.0  // (0, 1)
            return -Double(weights[i]) / log(u)
        }
        return weights.indices.sorted { scores[$0] > scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }
    }

    static func splitMix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
