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
final class ModelRoute: Sendable {
    let group: SidecarConfiguration.ModelGroup
    let upstreams: [UpstreamGroup]

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
    }

    private let state: NIOLockedValueBox<State>
    /// Which deployment stored each Responses API answer (`resp_...` -> index), for requests that
    /// continue one (`previous_response_id`): the newest `storedResponses` ids.
    private let responses = NIOLockedValueBox(LRUCache<String, Int>(capacity: ModelRoute.storedResponses))
    static let storedResponses = 100_000

    init(group: SidecarConfiguration.ModelGroup, upstreams: [UpstreamGroup]) {
        self.group = group
        self.upstreams = upstreams
        let selector = DeploymentSelector(deployments: group.deployments.map { .init(weight: $0.weight, maxConcurrency: $0.maxConcurrency) })
        let now = NIODeadline.now()
        state = NIOLockedValueBox(State(
            selector: selector,
            rpm: group.deployments.map { d in d.rpm.map { TokenBucket(capacity: $0, perMinute: $0, now: now) } },
            tpm: group.deployments.map { d in d.tpm.map { TokenBucket(capacity: $0, perMinute: $0, now: now) } },
            affinity: group.promptCache.map { PrefixAffinity(configuration: $0) }))
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
            if let p = prefer, !excluding.contains(p), group.deployments.indices.contains(p) {
                let others = Set(group.deployments.indices).subtracting([p])
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
        for (i, upstream) in upstreams.enumerated() {
            guard let check = upstream.healthCheck else { continue }
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
            let full = group.deployments.indices.contains { i in
                guard case .healthy = s.selector.health(i), !s.selector.isDown(i), let cap = group.deployments[i].maxConcurrency else { return false }
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

    /// `UPSTREAM/MODEL`, as `x-sidecar-deployment` says.
    func name(_ i: Int) -> String { "\(group.deployments[i].upstream)/\(group.deployments[i].model)" }

    /// Per deployment: name, requests in flight, health (for `/stats`: `down` when its health
    /// check has it down, whatever passive ejection says), its latency EWMA in milliseconds and,
    /// while ejected, when it may be tried again (for `/stats/live`), and its upstream's health
    /// check verdict with the last failure's reason (nil without a check).
    var snapshot: [(name: String, inFlight: Int, health: String, latencyEWMA: Double, ejectedUntil: NIODeadline?,
                    check: (status: HealthCheckState.Status, lastProblem: String?)?)] {
        state.withLockedValue { s in
            syncHealthChecks(&s)
            return group.deployments.indices.map { i in
                var health: String
                var until: NIODeadline?
                switch s.selector.health(i) {
                case .healthy: health = "healthy"
                case .ejected(let u): health = "ejected"; until = u
                case .halfOpen: health = "half-open"
                }
                if s.selector.isDown(i) { health = "down" }
                return (name(i), s.selector.inFlight(i), health, s.selector.latencyEWMA(i), until, upstreams[i].healthCheck?.report)
            }
        }
    }

    var waiting: Int { state.withLockedValue { $0.waiters.count } }
}
