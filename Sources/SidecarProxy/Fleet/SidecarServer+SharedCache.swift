import Foundation
import Logging
import Metrics
import SidecarCore
import SidecarFleet

/// Fleet mode's shared cache tier, wired into a starting server over the fleet agent's database
/// (whose pool the agent runs, and whose schema it migrates).
extension SidecarServer {
    /// The shared tier over `database` (started by the caller with `start()`; attach it with
    /// `ResponseCache.attachSharedTier`). `isReady`: whether the database's schema is there yet.
    static func makeSharedTier(database: FleetDatabase, settings: SidecarConfiguration.Fleet, logger: Logger,
                               metricsFactory: (any MetricsFactory)? = nil,
                               isReady: @escaping @Sendable () -> Bool = { true }) -> SharedCacheTier {
        SharedCacheTier(database: database, settings: settings, logger: logger, metricsFactory: metricsFactory, isReady: isReady)
    }

    /// `[fleet]` with `shared_cache = true` (and a cache): the shared tier, attached to `cache`;
    /// it misses until the agent has migrated the fleet database. Stopped when the cache closes.
    func startSharedCache(_ agent: FleetAgent, cache: ResponseCache) {
        guard agent.settings.sharedCache else { return }
        let tier = Self.makeSharedTier(database: agent.database, settings: agent.settings, logger: agent.logger,
                                       metricsFactory: state.metrics.factory, isReady: { [weak agent] in agent?.isMigrated ?? false })
        tier.start()
        cache.attachSharedTier(tier)
    }

    /// The shared tier's counts (`hit`, `miss`, `timeout`, `error`, `follower_hit`,
    /// `follower_timeout`, `stored`, `dropped`); nil without one.
    public var sharedCacheCounts: [String: Int]? { state.cache?.sharedTier.withLockedValue { $0 }?.counts }

    /// Whether the shared tier is in use (the fleet database's schema is there); nil without one.
    public var sharedCacheReady: Bool? { state.cache?.sharedTier.withLockedValue { $0 }?.isReady() }
}
