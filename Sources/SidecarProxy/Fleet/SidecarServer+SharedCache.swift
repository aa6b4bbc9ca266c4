import Foundation
import Logging
import Metrics
import SidecarCore
import SidecarFleet

/// Fleet mode's shared cache tier, wired into a starting server (a minimal wiring of its own: the
/// fleet agent, which owns the fleet database, can call `makeSharedTier` instead).
extension SidecarServer {
    /// The shared tier over `database` (started by the caller with `start()`; attach it with
    /// `ResponseCache.attachSharedTier`).
    static func makeSharedTier(database: FleetDatabase, settings: SidecarConfiguration.Fleet, logger: Logger,
                               metricsFactory: (any MetricsFactory)? = nil) -> SharedCacheTier {
        SharedCacheTier(database: database, settings: settings, logger: logger, metricsFactory: metricsFactory)
    }

    /// `[fleet]` with `shared_cache = true` and a cache: opens the fleet database (its own pool,
    /// run until the cache closes), migrates it (retried every 5 s in the background when it is
    /// away at start) and attaches the shared tier to `cache`.
    static func startSharedCache(configuration: SidecarConfiguration, cache: ResponseCache, metrics: SidecarMetrics, logger: Logger) async throws {
        guard let fleet = configuration.fleet, fleet.sharedCache else { return }
        guard let url = try APIKeys.read(fleet.postgresURL, key: "fleet.postgres_url", environment: ProcessInfo.processInfo.environment) else { return }
        let node = fleet.node ?? ProcessInfo.processInfo.hostName
        let database = try FleetDatabase(url: url, node: node, poolSize: fleet.poolSize, connectTimeout: fleet.connectTimeout,
                                         statementTimeout: fleet.statementTimeout, logger: logger)
        let run = Task { await database.run() }
        let tier = makeSharedTier(database: database, settings: fleet, logger: logger, metricsFactory: metrics.factory)
        tier.onStop { run.cancel() }
        do {
            try await database.migrate()
        } catch {
            logger.warning("fleet database not migrated at start: the shared cache tier misses until it is", metadata: [
                "reason": "\(error)", "retry": "every 5 s"])
            let retry = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(nanoseconds: 5_000_000_000)
                    if Task.isCancelled { return }
                    if (try? await database.migrate()) != nil { return }
                }
            }
            tier.onStop { retry.cancel() }
        }
        tier.start()
        cache.attachSharedTier(tier)
    }

    /// The shared tier's counts (`hit`, `miss`, `timeout`, `error`, `follower_hit`,
    /// `follower_timeout`, `stored`, `dropped`); nil without one.
    public var sharedCacheCounts: [String: Int]? { state.cache?.sharedTier.withLockedValue { $0 }?.counts }
}
