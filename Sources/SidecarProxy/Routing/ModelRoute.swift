import DequeModule
import NIOConcurrencyHelpers
import NIOCore
import SidecarCore

/// One model group's routing state, shared by every event loop: the pure `DeploymentSelector`
/// (in-flight counts, latency, ejection) and a bounded wait queue, behind one short lock, and
/// each deployment's upstream. Deployments whose upstream's active health check has them down
/// (`HealthProber`) are marked down in the selector before every pick, so a verdict reached on
/// any loop holds for the next request everywhere. Every slot handed out (by `acquire` or to a waiter) is given back
/// by exactly one `release` (ProxyExchange keeps the slot and returns it once, however the
/// request ends).
///
/// The selector's indices are members, not configured deployments: a deployment on a
/// `discover = "dns"` upstream has one member per address its `DNSDiscovery` last found (added
/// with slow start, drained when the address leaves), any other deployment exactly one. The
/// discovered sets are copied in under the same lock before every pick, as health verdicts are.
final class ModelRoute: Sendable {
    let group: SidecarConfiguration.ModelGroup
    /// Per configured deployment: its upstream (for discovered ones, the name's own group, which
    /// only requests that name no group use).
    private let configured: [UpstreamGroup]
    /// The configured deployments' upstreams (their dialect, for requests checked before routing).
    var upstreams: [UpstreamGroup] { configured }

    /// One selector index: which configured deployment, which upstream (an address's own group
    /// for a discovered one) and, when discovered, the address.
    private struct Member {
        var deployment: Int
        var upstream: UpstreamGroup
        var address: String?
    }

    /// A request waiting for a deployment to have room; `grant` runs on the request's loop.
    private struct Waiter {
        var id: Int
        var loop: EventLoop
        var grant: @Sendable (Int) -> Void
    }

    private struct State {
        var selector: DeploymentSelector
        /// Per deployment: its provider's request and token limits (`rpm`, `tpm`), or nil.
        var rpm: [TokenBucket?]
        var tpm: [TokenBucket?]
        var random = SystemRandomNumberGenerator()
        var waiters: Deque<Waiter> = []
        var nextWaiter = 0
        /// Prompt prefix -> deployment (`prompt_cache_*`); nil when the group turned it off.
        var affinity: PrefixAffinity?
        var members: [Member]
        /// Per configured deployment: the `DNSDiscovery.version` last copied in (-1: never).
        var seen: [Int]
    }

    private let state: NIOLockedValueBox<State>
    /// Which deployment stored each Responses API answer (`resp_...` -> index), for requests that
    /// continue one (`previous_response_id`): the newest `storedResponses` ids.
    private let responses = NIOLockedValueBox(LRUCache<String, Int>(capacity: ModelRoute.storedResponses))
    static let storedResponses = 100_000

    init(group: SidecarConfiguration.ModelGroup, upstreams: [UpstreamGroup]) {
        self.group = group
        self.configured = upstreams
        var s = State(selector: DeploymentSelector(deployments: []), rpm: [], tpm: [],
                      affinity: group.promptCache.map { PrefixAffinity(configuration: $0) },
                      members: [], seen: Array(repeating: -1, count: upstreams.count))
        let now = NIODeadline.now()
        for (d, upstream) in upstreams.enumerated() where upstream.discovery == nil {
            Self.add(&s, Member(deployment: d, upstream: upstream), group.deployments[d], slowStart: nil, now: now)
        }
        Self.syncDiscovery(&s, configured: upstreams, group: group)
        state = NIOLockedValueBox(s)
    }

    private static func add(_ s: inout State, _ m: Member, _ d: SidecarConfiguration.ModelGroup.Deployment, slowStart: (from: NIODeadline, over: TimeAmount)?, now: NIODeadline) {
        let i = s.selector.addMember(.init(weight: d.weight, maxConcurrency: d.maxConcurrency), slowStart: slowStart?.over, now: slowStart?.from ?? now)
        let rpm = d.rpm.map { TokenBucket(capacity: $0, perMinute: $0, now: now) }
        let tpm = d.tpm.map { TokenBucket(capacity: $0, perMinute: $0, now: now) }
        if i == s.members.count {
            s.members.append(m); s.rpm.append(rpm); s.tpm.append(tpm)
        } else {
            s.members[i] = m; s.rpm[i] = rpm; s.tpm[i] = tpm
        }
    }

    /// Copies each discovered deployment's address set into the selector when it changed: new
    /// addresses join (slow start from when they were found), gone ones drain.
    private static func syncDiscovery(_ s: inout State, configured: [UpstreamGroup], group: SidecarConfiguration.ModelGroup) {
        for (d, upstream) in configured.enumerated() {
            guard let discovery = upstream.discovery else { continue }
            let version = discovery.version
            guard version != s.seen[d] else { continue }
            s.seen[d] = version
            let found = discovery.members
            var current: [ObjectIdentifier: Int] = [:]
            for i in s.members.indices where s.members[i].deployment == d && s.selector.isLive(i) {
                current[ObjectIdentifier(s.members[i].upstream)] = i
            }
            let now = NIODeadline.now()
            for m in found where current.removeValue(forKey: ObjectIdentifier(m.group)) == nil {
                add(&s, Member(deployment: d, upstream: m.group, address: m.address), group.deployments[d],
                    slowStart: m.joined.map { ($0, discovery.slowStart) }, now: now)
            }
            for i in current.values { s.selector.drain(i) }
        }
    }

    /// The configured deployment member `i` belongs to (its model, its limits).
    func deployment(_ i: Int) -> SidecarConfiguration.ModelGroup.Deployment {
        group.deployments[state.withLockedValue { $0.members[i].deployment }]
    }

    /// The upstream member `i`'s requests go to.
    func upstream(_ i: Int) -> UpstreamGroup { state.withLockedValue { $0.members[i].upstream } }

    /// Member `i`'s configured deployment, upstream and name, read under one lock (a routed
    /// request needs all three when it is placed).
    func member(_ i: Int) -> (deployment: SidecarConfiguration.ModelGroup.Deployment, upstream: UpstreamGroup, name: String) {
        state.withLockedValue { s in
            let m = s.members[i]
            return (group.deployments[m.deployment], m.upstream, Self.name(m, group))
        }
    }

    /// Whether the group has more than one live member (prompt-cache affinity needs a choice).
    var hasSeveralMembers: Bool {
        state.withLockedValue { s in
            Self.syncDiscovery(&s, configured: configured, group: group)
            return s.members.indices.filter { s.selector.isLive($0) }.count > 1
        }
    }

    /// A deployment for one request (weighted least-connections over the healthy ones that are
    /// within their `rpm`/`tpm`), or nil when every deployment is at its cap, ejected or out of
    /// rate. `tokens` is the request's estimated size, charged to the deployment's `tpm`.
    /// - Parameters:
    ///   - prefer: a deployment to take if it can take the request (the one that stored the
    ///     response a request continues); the others are considered only when it cannot.
    ///   - prefix: the request's prompt prefix: with the group's prompt-cache affinity on, it goes
    ///     to the deployment that holds it, within the bounded load (`PrefixAffinity`), and the
    ///     table learns where it went. `verdict` says which way that went.
    func acquire(excluding: Set<Int> = [], tokens: Double = 0, prefer: Int? = nil, prefix: PromptPrefix? = nil,
                 now: NIODeadline = .now()) -> (index: Int, verdict: PrefixAffinity.Verdict?)? {
        state.withLockedValue { s in
            syncHealthChecks(&s)
            if let p = prefer, !excluding.contains(p), s.members.indices.contains(p) {
                let others = Set(s.members.indices).subtracting([p])
                if let i = Self.select(&s, excluding: excluding.union(others), tokens: tokens, now: now) {
                    if let prefix { s.affinity?.learn(prefix, deployment: i, now: now) }
                    return (i, nil)
                }
            }
            if let prefix, s.affinity != nil {
                let skip = Self.outOfRate(s, excluding: excluding, tokens: tokens, now: now)
                guard let (i, verdict) = s.affinity!.select(prefix, selector: &s.selector, excluding: skip, now: now, random: &s.random) else { return nil }
                Self.charge(&s, i, tokens: tokens, now: now)
                return (i, verdict)
            }
            return Self.select(&s, excluding: excluding, tokens: tokens, now: now).map { ($0, nil) }
        }
    }

    /// A request of `prefix` that waited in the queue went to deployment `i`: the provider caches
    /// the prefix there now.
    func learn(_ prefix: PromptPrefix, deployment i: Int, now: NIODeadline = .now()) {
        state.withLockedValue { s in s.affinity?.learn(prefix, deployment: i, now: now) }
    }

    /// Prefixes in the affinity table, for `/stats` (nil: affinity off).
    var affinityTableSize: Int? { state.withLockedValue { $0.affinity?.count } }

    /// Deployment `i` answered with Responses API answer `id`.
    func remember(response id: String, deployment i: Int) {
        responses.withLockedValue { _ = $0.set(id, i, cost: 1) }
    }

    /// The deployment that stored answer `id`, if known.
    func deployment(ofResponse id: String) -> Int? {
        responses.withLockedValue { $0.get(id) }
    }

    /// Copies each deployment's upstream health check verdict into the selector: one atomic
    /// load per checked deployment, under the lock already held.
    private func syncHealthChecks(_ s: inout State) {
        Self.syncDiscovery(&s, configured: configured, group: group)
        for (i, member) in s.members.enumerated() {
            guard let check = member.upstream.healthCheck else { continue }
            let down = check.isDown
            if s.selector.isDown(i) != down { s.selector.setDown(i, down) }
        }
    }

    private static func select(_ s: inout State, excluding: Set<Int>, tokens: Double, now: NIODeadline) -> Int? {
        let skip = outOfRate(s, excluding: excluding, tokens: tokens, now: now)
        guard let i = s.selector.select(now: now, excluding: skip, random: &s.random) else { return nil }
        charge(&s, i, tokens: tokens, now: now)
        return i
    }

    /// `excluding` and the deployments out of their `rpm` or `tpm` for a request of `tokens`.
    private static func outOfRate(_ s: State, excluding: Set<Int>, tokens: Double, now: NIODeadline) -> Set<Int> {
        var skip = excluding
        for i in s.rpm.indices {
            if let b = s.rpm[i], !b.has(1, now: now) { skip.insert(i) }
            if let b = s.tpm[i], !b.has(min(tokens, b.capacity), now: now) { skip.insert(i) }
        }
        return skip
    }

    /// Takes a request and its `tokens` from deployment `i`'s rate buckets.
    private static func charge(_ s: inout State, _ i: Int, tokens: Double, now: NIODeadline) {
        _ = s.rpm[i]?.take(now: now)
        if let capacity = s.tpm[i]?.capacity { _ = s.tpm[i]?.take(min(tokens, capacity), now: now) }
    }

    /// The answer said how many tokens it really took: the deployment's `tpm` is corrected.
    func correctTokens(_ i: Int, by delta: Double, now: NIODeadline = .now()) {
        state.withLockedValue { s in s.tpm[i]?.adjust(by: delta, now: now) }
    }

    /// When a deployment out of rate will take a request of `tokens` again (nil: none is only out of rate).
    func rateLimitWait(tokens: Double, now: NIODeadline = .now()) -> TimeAmount? {
        state.withLockedValue { s in
            var best: TimeAmount?
            for i in s.rpm.indices {
                var wait = TimeAmount.zero
                if let b = s.rpm[i] { wait = max(wait, b.timeUntil(1, now: now)) }
                if let b = s.tpm[i] { wait = max(wait, b.timeUntil(min(tokens, b.capacity), now: now)) }
                if wait > .zero, best == nil || wait < best! { best = wait }
            }
            return best
        }
    }

    enum Admission {
        case acquired(Int)
        /// Waiting: `grant` will be called with a deployment once one has room.
        case queued(id: Int)
        /// Every deployment is ejected (or the queue is full): waiting would not help.
        case refused
    }

    /// A deployment now, or a place in the queue when the group is only full (some healthy
    /// deployment is at its `max_concurrency`), bounded by `queue_size`.
    func acquireOrWait(loop: EventLoop, tokens: Double = 0, now: NIODeadline = .now(), grant: @escaping @Sendable (Int) -> Void) -> Admission {
        state.withLockedValue { s in
            syncHealthChecks(&s)
            if let i = Self.select(&s, excluding: [], tokens: tokens, now: now) { return .acquired(i) }
            let full = s.members.indices.contains { i in
                guard case .healthy = s.selector.health(i), !s.selector.isDown(i), s.selector.isLive(i),
                      let cap = group.deployments[s.members[i].deployment].maxConcurrency else { return false }
                return s.selector.inFlight(i) >= cap
            }
            guard full, s.waiters.count < group.queueSize else { return .refused }
            let id = s.nextWaiter
            s.nextWaiter += 1
            s.waiters.append(Waiter(id: id, loop: loop, grant: grant))
            return .queued(id: id)
        }
    }

    /// Leaves the queue; false when the waiter was already granted a deployment (the grant is
    /// then on its way and must be used or released).
    func cancel(waiter id: Int) -> Bool {
        state.withLockedValue { s in
            guard let k = s.waiters.firstIndex(where: { $0.id == id }) else { return false }
            s.waiters.remove(at: k)
            return true
        }
    }

    func release(_ i: Int, _ outcome: DeploymentSelector.Outcome, now: NIODeadline = .now()) {
        let grants = state.withLockedValue { s -> [(Waiter, Int)] in
            s.selector.finished(i, outcome, now: now)
            syncHealthChecks(&s)
            var out: [(Waiter, Int)] = []
            while !s.waiters.isEmpty, let j = Self.select(&s, excluding: [], tokens: 0, now: now) {
                out.append((s.waiters.removeFirst(), j))
            }
            return out
        }
        for (w, j) in grants { w.loop.execute { w.grant(j) } }
    }

    /// `UPSTREAM/MODEL`, or `UPSTREAM@ADDRESS/MODEL` for a discovered member, as
    /// `x-sidecar-deployment` says.
    func name(_ i: Int) -> String { state.withLockedValue { Self.name($0.members[i], group) } }

    private static func name(_ m: Member, _ group: SidecarConfiguration.ModelGroup) -> String {
        let d = group.deployments[m.deployment]
        return "\(d.upstream)\(m.address.map { "@\($0)" } ?? "")/\(d.model)"
    }

    /// Per deployment: name, requests in flight, health (for `/stats`: `down` when its health
    /// check has it down, whatever passive ejection says), its latency EWMA in milliseconds and,
    /// while ejected, when it may be tried again (for `/stats/live`), and its upstream's health
    /// check verdict with the last failure's reason (nil without a check).
    /// Removed members are left out; a draining one says `draining` until its last request ends.
    var snapshot: [(name: String, deployment: Int, inFlight: Int, health: String, latencyEWMA: Double, ejectedUntil: NIODeadline?,
                    check: (status: HealthCheckState.Status, lastProblem: String?)?)] {
        state.withLockedValue { s in
            syncHealthChecks(&s)
            return s.members.indices.filter { !s.selector.isRemoved($0) }.map { i in
                var health: String
                var until: NIODeadline?
                switch s.selector.health(i) {
                case .healthy: health = "healthy"
                case .ejected(let u): health = "ejected"; until = u
                case .halfOpen: health = "half-open"
                }
                if s.selector.isDown(i) { health = "down" }
                if !s.selector.isLive(i) { health = "draining" }
                let m = s.members[i]
                return (Self.name(m, group), m.deployment, s.selector.inFlight(i), health, s.selector.latencyEWMA(i), until, m.upstream.healthCheck?.report)
            }
        }
    }

    var waiting: Int { state.withLockedValue { $0.waiters.count } }
}
