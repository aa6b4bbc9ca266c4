import NIOCore

/// Picks a deployment of one model group by weighted least-connections, skipping ejected and
/// full deployments, and decides ejections from outcomes. A value type driven by events; time and
/// randomness are passed in.
///
/// Selection (Envoy's least-request with weights): the healthy deployment with the lowest
/// `(inFlight + 1) / weight`; ties broken by the lower latency EWMA, then at random.
/// O(deployments), no allocation.
///
/// Ejection (Envoy-style passive outlier detection): `consecutiveFailuresToEject` failures in a
/// row eject a deployment for `baseEjection × timesEjected` (capped at `maxEjection`); when that
/// ends, exactly one probe request is let through (half-open); its success restores the
/// deployment, its failure ejects it again for longer. A 429's `Retry-After` ejects for at least
/// that long. Never more than `maxEjectionPercent` of the group is ejected at once; if every
/// deployment is ejected or full anyway, `select` returns nil (panic handling is the caller's).
///
/// Down (active health checks, `setDown`): a deployment its upstream's probes marked down takes no
/// new request and counts in no bounded load until it is marked up again. Independent of
/// ejection, and not under `maxEjectionPercent`: a probe that fails is evidence about the
/// deployment alone, not a client request's outcome that a bad request could have caused.
///
/// Members that come and go (`discover = "dns"`, `addMember` / `drain`): a new member may start
/// slow, its weight ramping linearly from 10 % to full over `slowStart` (Envoy's slow start with
/// aggression 1 and a 10 % floor), so a server that just joined is not handed its full share of
/// a busy group while its caches are cold. A drained member takes no new request; once its last
/// request finishes its slot is free and the next `addMember` reuses the index, so a fleet that
/// churns for months does not grow the arrays. Indices held by requests in flight stay valid.
public struct DeploymentSelector: Sendable {
    public struct Deployment: Sendable, Equatable {
        public var weight: Int
        /// In-flight cap; nil = unlimited.
        public var maxConcurrency: Int?
        public init(weight: Int = 1, maxConcurrency: Int? = nil) {
            precondition(weight >= 1)
            self.weight = weight
            self.maxConcurrency = maxConcurrency
        }
    }

    public struct Configuration: Sendable, Equatable {
        public var consecutiveFailuresToEject = 3
        public var baseEjection: TimeAmount = .seconds(5)
        public var maxEjection: TimeAmount = .seconds(300)
        public var maxEjectionPercent = 50
        /// Weight of the newest sample in the latency EWMA.
        public var latencyAlpha = 0.2
        public init() {}
    }

    public enum Health: Sendable, Equatable {
        case healthy
        case ejected(until: NIODeadline)
        /// Ejection over; one probe may go (`probing` once it went).
        case halfOpen(probing: Bool)
    }

    struct State: Sendable, Equatable {
        var inFlight = 0
        var consecutiveFailures = 0
        var timesEjected = 0
        var health: Health = .healthy
        var latencyEWMA: Double = 0
        var down = false
        /// Ramp-up of a member that joined at run time: from when, over how long.
        var slowStart: (from: NIODeadline, over: TimeAmount)?
        /// No new requests; freed when the last one in flight finishes.
        var draining = false
        /// Drained and empty: the index is free for `addMember`.
        var removed = false

        static func == (a: State, b: State) -> Bool {
            a.inFlight == b.inFlight && a.consecutiveFailures == b.consecutiveFailures && a.timesEjected == b.timesEjected
                && a.health == b.health && a.latencyEWMA == b.latencyEWMA && a.down == b.down && a.draining == b.draining
                && a.removed == b.removed && a.slowStart?.from == b.slowStart?.from && a.slowStart?.over == b.slowStart?.over
        }
    }

    public private(set) var deployments: [Deployment]
    public let configuration: Configuration
    private var states: [State]

    public init(deployments: [Deployment], configuration: Configuration = Configuration()) {
        self.deployments = deployments
        self.configuration = configuration
        self.states = Array(repeating: State(), count: deployments.count)
    }

    public func inFlight(_ i: Int) -> Int { states[i].inFlight }
    public func health(_ i: Int) -> Health { states[i].health }
    /// Deployment `i`'s latency EWMA in milliseconds (0 until its first success).
    public func latencyEWMA(_ i: Int) -> Double { states[i].latencyEWMA }
    /// Whether deployment `i`'s health check has it down.
    public func isDown(_ i: Int) -> Bool { states[i].down }

    /// Deployment `i`'s upstream was marked down (or up) by its active health check. Requests in
    /// flight there finish as they would.
    public mutating func setDown(_ i: Int, _ down: Bool) { states[i].down = down }

    /// Whether member `i` may take new requests (not draining, not removed).
    public func isLive(_ i: Int) -> Bool { !states[i].draining && !states[i].removed }
    /// Whether member `i` was drained and its last request finished (its index is free).
    public func isRemoved(_ i: Int) -> Bool { states[i].removed }

    /// A member joins (a discovered address); returns its index: a removed member's, else a new
    /// one. With `slowStart` its weight ramps up over that long from `now`.
    public mutating func addMember(_ d: Deployment, slowStart: TimeAmount? = nil, now: NIODeadline) -> Int {
        var state = State()
        if let over = slowStart, over > .zero { state.slowStart = (now, over) }
        if let free = states.indices.first(where: { states[$0].removed }) {
            deployments[free] = d
            states[free] = state
            return free
        }
        deployments.append(d)
        states.append(state)
        return states.count - 1
    }

    /// Member `i` leaves: no new request goes to it; those in flight finish and are reported as
    /// usual, and the last one frees the index.
    public mutating func drain(_ i: Int) {
        states[i].draining = true
        if states[i].inFlight == 0 { states[i].removed = true }
    }

    /// Member `i`'s weight now: its configured weight, scaled by its slow start while that lasts
    /// (at least 10 % of it, so a new member is never starved).
    public func effectiveWeight(_ i: Int, now: NIODeadline) -> Double {
        let w = Double(deployments[i].weight)
        guard let ramp = states[i].slowStart else { return w }
        let elapsed = Double((now - ramp.from).nanoseconds) / Double(ramp.over.nanoseconds)
        return w * min(1, max(0.1, elapsed))
    }

    /// The deployment for a new request (its in-flight count is taken), or nil when every
    /// deployment is ejected or at its cap. `excluding` skips deployments this request already
    /// tried. `random` breaks exact ties.
    public mutating func select<R: RandomNumberGenerator>(now: NIODeadline, excluding: Set<Int> = [], random: inout R) -> Int? {
        var best = -1
        var bestScore = 0.0
        var bestLatency = 0.0
        var ties = 0
        for i in states.indices where !excluding.contains(i) {
            refresh(i, now: now)
            let s = states[i]
            if s.down || s.draining || s.removed { continue }
            switch s.health {
            case .ejected, .halfOpen(probing: true): continue
            case .healthy, .halfOpen(probing: false): break
            }
            if let cap = deployments[i].maxConcurrency, s.inFlight >= cap { continue }
            let score = Double(s.inFlight + 1) / effectiveWeight(i, now: now)
            if best < 0 || score < bestScore || (score == bestScore && s.latencyEWMA < bestLatency) {
                best = i; bestScore = score; bestLatency = s.latencyEWMA; ties = 1
            } else if score == bestScore && s.latencyEWMA == bestLatency {
                // Reservoir sampling over exact ties: each tied deployment equally likely.
                ties += 1
                if random.next(upperBound: UInt64(ties)) == 0 { best = i }
            }
        }
        guard best >= 0 else { return nil }
        states[best].inFlight += 1
        if case .halfOpen(probing: false) = states[best].health { states[best].health = .halfOpen(probing: true) }
        return best
    }

    /// Whether deployment `i` may take one more request and stay within `loadFactor` times its
    /// weighted share of the group's requests in flight: consistent hashing with bounded loads
    /// (Mirrokni, Thorup, Zadimoghaddam 2018; HAProxy's `hash-balance-factor`):
    /// `inFlight(i) + 1 <= ceil(loadFactor × (total + 1) × weight(i) / totalWeight)`, counting the
    /// deployments that are not ejected and not in `excluding`. False too when `i` is ejected,
    /// probing, or at its cap. With four equal deployments and a factor of 1.5:
    ///
    /// | in flight in the group | most on one deployment |
    /// |---|---|
    /// | 0 | 1 |
    /// | 3 | 2 |
    /// | 8 | 4 |
    /// | 40 | 16 |
    public mutating func admits(_ i: Int, loadFactor: Double, excluding: Set<Int> = [], now: NIODeadline) -> Bool {
        var total = 0
        var totalWeight = 0.0
        for j in states.indices where !excluding.contains(j) || j == i {
            refresh(j, now: now)
            if case .ejected = states[j].health { continue }
            if states[j].down || states[j].removed { continue }
            total += states[j].inFlight
            if !states[j].draining { totalWeight += effectiveWeight(j, now: now) }
        }
        if states[i].down || states[i].draining || states[i].removed { return false }
        switch states[i].health {
        case .ejected, .halfOpen(probing: true): return false
        case .healthy, .halfOpen(probing: false): break
        }
        if let cap = deployments[i].maxConcurrency, states[i].inFlight >= cap { return false }
        let share = loadFactor * Double(total + 1) * effectiveWeight(i, now: now) / totalWeight
        return Double(states[i].inFlight + 1) <= share.rounded(.up)
    }

    /// How a request on deployment `i` ended. Releases its in-flight slot, exactly once per
    /// `select` (the caller guarantees that).
    public enum Outcome: Sendable, Equatable {
        case success(latency: TimeAmount)
        /// Connect/TLS failure, timeout, 5xx: counts towards ejection.
        case failure
        /// 429 with an optional Retry-After: ejects for at least that long.
        case rateLimited(retryAfter: TimeAmount?)
        /// Ended without saying anything about the deployment (client went away, 4xx).
        case neutral
    }

    public mutating func finished(_ i: Int, _ outcome: Outcome, now: NIODeadline) {
        precondition(states[i].inFlight > 0, "finished more requests than were selected on deployment \(i)")
        states[i].inFlight -= 1
        if states[i].draining && states[i].inFlight == 0 { states[i].removed = true }
        switch outcome {
        case .neutral:
            if case .halfOpen(probing: true) = states[i].health { states[i].health = .halfOpen(probing: false) }
        case .success(let latency):
            let ms = Double(latency.nanoseconds) / 1e6
            let a = configuration.latencyAlpha
            states[i].latencyEWMA = states[i].latencyEWMA == 0 ? ms : a * ms + (1 - a) * states[i].latencyEWMA
            states[i].consecutiveFailures = 0
            if case .halfOpen = states[i].health {
                states[i].health = .healthy
                states[i].timesEjected = 0
            }
        case .failure:
            states[i].consecutiveFailures += 1
            if case .halfOpen = states[i].health {
                eject(i, now: now, atLeast: nil)
            } else if states[i].consecutiveFailures >= configuration.consecutiveFailuresToEject {
                eject(i, now: now, atLeast: nil)
            }
        case .rateLimited(let retryAfter):
            states[i].consecutiveFailures += 1
            if retryAfter != nil || states[i].consecutiveFailures >= configuration.consecutiveFailuresToEject {
                eject(i, now: now, atLeast: retryAfter)
            }
        }
    }

    private mutating func eject(_ i: Int, now: NIODeadline, atLeast: TimeAmount?) {
        // Respect the cap, unless a Retry-After says the deployment refuses work anyway.
        let live = states.indices.filter { isLive($0) }
        let ejected = live.filter { j in j != i && { if case .ejected = states[j].health { return true } else { return false } }() }.count
        if atLeast == nil, (ejected + 1) * 100 > configuration.maxEjectionPercent * max(1, live.count) {
            states[i].consecutiveFailures = 0
            if case .halfOpen = states[i].health { states[i].health = .healthy }
            return
        }
        states[i].timesEjected += 1
        var duration = configuration.baseEjection * Int64(states[i].timesEjected)
        if duration > configuration.maxEjection { duration = configuration.maxEjection }
        if let atLeast, atLeast > duration { duration = atLeast }
        states[i].health = .ejected(until: now + duration)
        states[i].consecutiveFailures = 0
    }

    private mutating func refresh(_ i: Int, now: NIODeadline) {
        if case .ejected(let until) = states[i].health, until <= now { states[i].health = .halfOpen(probing: false) }
    }
}
