import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import SidecarCore
import SidecarFleet
import SidecarStore

/// Fleet mode's second cache tier (docs/fleet.md): answers shared by every node through the fleet
/// database, asked on a local miss and written behind from the local tier.
///
/// Nothing here ever slows a request by more than `shared_cache_timeout`: a lookup past it (or
/// failing) is a miss, and writes go behind, in batches, from one task at a time. Cross-node
/// coalescing: a non-stream miss may claim its key; another node missing the same key while the
/// claim is live follows it, waiting (at most `coalesce_wait`) for the key's notification.
final class SharedCacheTier: Sendable {
    enum Result: Sendable {
        case hit(CacheEntry)
        case miss
        /// This node claimed the key: its answer will be written behind (or the claim released).
        case leader
        /// Another node holds the key's claim.
        case follower
    }

    let database: FleetDatabase
    let settings: SidecarConfiguration.Fleet
    let logger: Logger
    let clock: @Sendable () -> Int64
    /// False until the fleet database can serve the tier (its schema migrated): lookups are misses
    /// and writes are dropped meanwhile, without a round trip.
    let isReady: @Sendable () -> Bool

    enum Claim { case asking, held, ended }

    struct State {
        /// Keys this node claimed (or is claiming) and not yet written behind or released.
        var claims: [CacheKey: Claim] = [:]
        var waiters: [CacheKey: [Int: EventLoopPromise<Void>]] = [:]
        var nextWaiter = 0
        /// Keys notified lately: a wait that starts just after its key's notice returns at once.
        var recent: [CacheKey: NIODeadline] = [:]
        var queue: [CacheEntry] = []
        var queuedBytes = 0
        var flushing = false
        var tasks: [Task<Void, Never>] = []
        var onStop: [@Sendable () -> Void] = []
        var stopped = false
        /// A store failed and has not succeeded since: logged once per outage.
        var writeOutage = false
        var counts: [String: Int] = [:]
    }
    let state = NIOLockedValueBox(State())

    /// Bodies queued for write-behind at most; past it answers are dropped (counted).
    static let maxQueuedBytes = 16 << 20
    /// One `store` call carries at most this many bytes of bodies (and at least one answer).
    static let batchBytes = 2 << 20
    static let recentNotices = 4_096

    private let lookups: [String: Metrics.Counter]
    private let writes: [String: Metrics.Counter]

    init(database: FleetDatabase, settings: SidecarConfiguration.Fleet, logger: Logger,
         metricsFactory: (any MetricsFactory)? = nil, isReady: @escaping @Sendable () -> Bool = { true },
         clock: @escaping @Sendable () -> Int64 = ResponseCache.wallClock) {
        self.isReady = isReady
        self.database = database
        self.settings = settings
        self.logger = logger
        self.clock = clock
        let factory = metricsFactory ?? MetricsSystem.factory
        var l: [String: Metrics.Counter] = [:]
        for r in ["hit", "miss", "timeout", "error", "follower_hit", "follower_timeout"] {
            l[r] = Metrics.Counter(label: "llm_sidecar_fleet_cache_total", dimensions: [("result", r)], factory: factory)
        }
        lookups = l
        var w: [String: Metrics.Counter] = [:]
        for o in ["stored", "dropped"] {
            w[o] = Metrics.Counter(label: "llm_sidecar_fleet_cache_writes_total", dimensions: [("outcome", o)], factory: factory)
        }
        writes = w
    }

    /// What was counted so far, by metric label (`hit`, ..., `stored`, `dropped`).
    var counts: [String: Int] { state.withLockedValue { $0.counts } }

    func count(lookup result: String) {
        lookups[result]?.increment()
        state.withLockedValue { $0.counts[result, default: 0] += 1 }
    }

    func count(write outcome: String, _ n: Int) {
        guard n > 0 else { return }
        writes[outcome]?.increment(by: Int64(n))
        state.withLockedValue { $0.counts[outcome, default: 0] += n }
    }

    // MARK: life

    /// Starts listening for stored/released keys and pruning every 60 s.
    func start() {
        let listener = Task { [weak self] in
            while !Task.isCancelled {
                // Notifications sent while the listening connection was down are lost: every
                // (re)subscription wakes the waiters, which look their keys up again.
                guard let stream = self?.database.cacheNotifications(onSubscribe: { [weak self] in self?.wakeAll() }) else { return }
                for await key in stream { self?.notified(key) }
                // The listening connection ended (the database went away): listen again shortly.
                try? await Task.sleep(nanoseconds: 1_000_000_000)
            }
        }
        let maxBytes = settings.sharedCacheMaxBytes
        let pruner = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: 60_000_000_000)
                guard !Task.isCancelled, let self else { return }
                do {
                    if let n = try await self.database.prune(maxBytes: maxBytes), n > 0 {
                        self.logger.debug("shared cache pruned", metadata: ["deleted": "\(n)"])
                    }
                } catch {
                    self.logger.debug("shared cache prune failed", metadata: ["reason": "\(error)"])
                }
            }
        }
        state.withLockedValue { $0.tasks += [listener, pruner] }
    }

    /// Runs `body` when the tier stops (e.g. ends the database's run task it was started with).
    func onStop(_ body: @escaping @Sendable () -> Void) {
        state.withLockedValue { $0.onStop.append(body) }
    }

    /// Stops the tasks; waiters return now (and look up once more, without a claim).
    func stop() {
        let (tasks, waiters, hooks) = state.withLockedValue { s -> ([Task<Void, Never>], [EventLoopPromise<Void>], [@Sendable () -> Void]) in
            defer {
                s.tasks = []
                s.waiters = [:]
                s.onStop = []
                s.stopped = true
            }
            return (s.tasks, s.waiters.values.flatMap { $0.values }, s.onStop)
        }
        tasks.forEach { $0.cancel() }
        waiters.forEach { $0.succeed(()) }
        hooks.forEach { $0() }
    }

    // MARK: lookups

    /// Looks `key` up (claiming it on a miss when `claim`), never taking longer than
    /// `shared_cache_timeout`: past it, or on any error, the answer is `.miss`. Completes on `loop`.
    func lookup(key: CacheKey, scope: String, claim: Bool, on loop: EventLoop) -> EventLoopFuture<Result> {
        lookup(key: key, scope: scope, claim: claim, followUp: false, on: loop)
    }

    private func lookup(key: CacheKey, scope: String, claim: Bool, followUp: Bool, on loop: EventLoop) -> EventLoopFuture<Result> {
        guard isReady() else {
            count(lookup: followUp ? "follower_timeout" : "error")
            return loop.makeSucceededFuture(.miss)
        }
        let promise = loop.makePromise(of: Result.self)
        let done = NIOLockedValueBox(false)
        let finish: @Sendable (Result, String?) -> Void = { [self] result, label in
            guard done.withLockedValue({ d in defer { d = true }; return !d }) else { return }
            if let label { self.count(lookup: followUp ? (label == "hit" ? "follower_hit" : "follower_timeout") : label) }
            promise.succeed(result)
        }
        if claim { state.withLockedValue { s in if s.claims[key] == nil { s.claims[key] = .asking } } }
        let timeout = loop.scheduleTask(in: settings.sharedCacheTimeout) { finish(.miss, "timeout") }
        let claimSeconds = claim ? max(1, Double(settings.coalesceWait.nanoseconds) / 1e9) : nil
        let now = clock()
        Task { [self] in
            let result: Result
            var label: String? = "miss"
            do {
                switch try await database.lookup(key: key.bytes, scope: scope, claimSeconds: claimSeconds) {
                case .hit(let a) where a.scope == scope && a.key == key.bytes && a.expiresAt > now:
                    result = .hit(CacheEntry(a))
                    label = "hit"
                case .hit, .miss: result = .miss
                case .leader: result = .leader
                case .follower:
                    result = .follower
                    label = nil  // counted when the wait is over
                }
            } catch {
                result = .miss
                label = "error"
            }
            if claim { settleClaim(key, leader: { if case .leader = result { return true } else { return false } }()) }
            timeout.cancel()
            finish(result, label)
        }
        return promise.futureResult
    }

    /// The whole shared lookup of a local miss: a hit, or nil to go upstream. A follower waits for
    /// the key's notification (at most `coalesce_wait`) and looks up once more, without a claim.
    func find(key: CacheKey, scope: String, claim: Bool, on loop: EventLoop) -> EventLoopFuture<CacheEntry?> {
        let started = NIODeadline.now()
        return lookup(key: key, scope: scope, claim: claim, on: loop).flatMap { [self] result in
            switch result {
            case .hit(let entry): return loop.makeSucceededFuture(entry)
            case .miss, .leader: return loop.makeSucceededFuture(nil)
            case .follower:
                return wait(for: key, since: started, on: loop)
                    .flatMap { self.lookup(key: key, scope: scope, claim: false, followUp: true, on: loop) }
                    .map { if case .hit(let e) = $0 { return e } else { return nil } }
            }
        }
    }
}
