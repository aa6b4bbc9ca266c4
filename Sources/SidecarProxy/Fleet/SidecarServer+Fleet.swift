import Foundation
import Logging
import NIOCore
import SidecarCore
import SidecarFleet

/// Fleet mode's start and stop (docs/fleet.md).
extension SidecarServer {
    /// The agent for `[fleet]`: the URL read from its env variable or file (never logged), the
    /// node named by the configuration or the host name. Nothing is connected yet: a database
    /// that is down at start is retried by the sync rounds while the node serves.
    static func makeFleet(_ f: SidecarConfiguration.Fleet, metrics: SidecarMetrics, logger: Logger) throws -> FleetAgent {
        let database = try openFleetDatabase(f, poolSize: f.poolSize, logger: logger)
        return FleetAgent(database: database, settings: f, node: database.node, logger: logger, metrics: FleetMetrics(factory: metrics.factory))
    }

    /// The fleet database of `[fleet]` (not connected yet): its URL read from the variable or
    /// file the configuration names, this node's name from `node` or the host name.
    static func openFleetDatabase(_ f: SidecarConfiguration.Fleet, poolSize: Int, logger: Logger) throws -> FleetDatabase {
        guard let url = try APIKeys.read(f.postgresURL, key: "fleet.postgres_url", environment: ProcessInfo.processInfo.environment) else {
            throw FleetError(.badURL, "[fleet] needs postgres_url_env or postgres_url_file")
        }
        return try FleetDatabase(url: url, node: f.node ?? hostName(), poolSize: poolSize, connectTimeout: f.connectTimeout,
                                 statementTimeout: f.statementTimeout, logger: logger)
    }

    static func hostName() -> String {
        let name = ProcessInfo.processInfo.hostName
        return name.isEmpty ? "localhost" : name
    }

    func startFleet(_ agent: FleetAgent, cache: ResponseCache?) {
        let state = self.state
        agent.attach(budget: state.budget, limits: { [weak state] in state?.runtime.configuration.budgets.limits ?? .init() }, cache: cache)
        let started = Int64(Date().timeIntervalSince1970)
        fleetTask.withLockedValue { $0 = Task { await agent.run(version: SidecarServer.version, startedAt: started) } }
        agent.logger.notice("fleet mode", metadata: ["node": "\(agent.node)", "on_unavailable": "\(agent.settings.onUnavailable.rawValue)"])
    }

    /// At a clean stop: the outbox is written, and the slices are given back (down to the use),
    /// so the rest of the fleet has them at once rather than after a lease period.
    func stopFleet() async {
        guard let agent = state.fleet else { return }
        await flushCache()
        await agent.finalRound()
        fleetTask.withLockedValue { $0?.cancel() }
    }
}
