import Foundation
import Logging
import NIOCore
import SidecarCore
import SidecarFleet
import SidecarStore

/// The sync round, every `sync_interval`: schema (until it is there), heartbeat, budget slices,
/// client tokens, outbox.
extension FleetAgent {
    /// Runs the database's connection pool and the sync rounds until the task is cancelled.
    func run(version: String, startedAt: Int64) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.database.run() }
            group.addTask { await self.syncLoop(version: version, startedAt: startedAt) }
            await group.next()
            group.cancelAll()
        }
    }

    private func syncLoop(version: String, startedAt: Int64) async {
        var rounds = 0
        while !Task.isCancelled, !isStopping {
            await sync(version: version, startedAt: startedAt, rounds: &rounds)
            try? await Task.sleep(nanoseconds: UInt64(settings.syncInterval.nanoseconds))
        }
    }

    /// One round (also run by tests and at a clean stop).
    func sync(version: String, startedAt: Int64, rounds: inout Int) async {
        do {
            if !isMigrated {
                metrics.statements.increment()
                try await database.migrate()
                markMigrated()
            }
            metrics.statements.increment()
            try await database.heartbeat(version: version, startedAt: startedAt)
            connected()
            rounds += 1
            if rounds % 15 == 1 {
                metrics.statements.increment()
                let window = 3 * Double(settings.leasePeriod.nanoseconds) / 1e9
                setNodesAlive(try await database.nodes().filter { $0.secondsSinceSeen < window }.count)
            }
        } catch {
            lost(error)
            return
        }
        // Budget slices: renewed every round (so they never lapse while the database answers),
        // reporting this node's use; an idle scope gives its unused slice back.
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            askRound { _ in done.resume() }
        }
        await syncRates()
        await pushOutbox()
    }

    /// A clean stop: the outbox is written and every unused slice and token given back.
    func finalRound() async {
        markStopping()
        guard isUp else { return }
        await pushOutbox()
        // Through the same queue as every budget round, so no round sent before it can land after it.
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in askRound { _ in done.resume() } }
        let claims = releaseRates()
        if !claims.isEmpty { _ = try? await database.leaseRates(claims) }
    }

    /// Writes the outbox to the fleet database: rows after the sequence it has applied, summed
    /// per key, applied only if that sequence is unchanged (so never twice), then dropped here.
    func pushOutbox() async {
        guard let cache = cacheForOutbox else { return }
        do {
            var pushed: Int64
            if let p = pushedSequence {
                pushed = p
            } else {
                metrics.statements.increment()
                pushed = try await database.pushedSequence()
                setPushed(pushed)
            }
            for _ in 0..<20 {
                let after = pushed
                let rows = try await cache.database.run { store -> [ResponseCacheStore.OutboxRow] in
                    try store.deleteOutbox(through: after)
                    return try store.outbox(after: after, limit: 2_000)
                }
                guard let last = rows.last?.seq else { break }
                metrics.statements.increment()
                let applied = try await database.push(Self.sum(rows, node: node), after: after, upTo: last)
                pushed = applied
                setPushed(applied)
                let count = try await cache.database.run { store -> Int64 in
                    try store.deleteOutbox(through: applied)
                    return try store.outboxCount()
                }
                metrics.outboxRows.set(count)
                if rows.count < 2_000, applied == last { break }
            }
        } catch {
            lost(error)
        }
    }

    /// Outbox rows summed per day, model, deployment and client.
    static func sum(_ rows: [ResponseCacheStore.OutboxRow], node: String) -> [FleetSpendRow] {
        struct Key: Hashable { var day: String, key: ResponseCacheStore.SpendKey }
        var out: [Key: FleetSpendRow] = [:]
        for r in rows {
            let k = Key(day: r.day, key: r.key)
            var row = out[k] ?? FleetSpendRow(day: r.day, node: node, model: r.key.model, deployment: r.key.deployment, client: r.key.client)
            row.requests += r.spend.requests
            row.promptTokens += r.spend.promptTokens
            row.completionTokens += r.spend.completionTokens
            row.cachedTokens += r.spend.cachedTokens
            row.cacheWriteTokens += r.spend.cacheWriteTokens
            row.usd += r.spend.usd
            row.hits += r.counters.hits
            row.misses += r.counters.misses
            row.coalesced += r.counters.coalesced
            row.bypasses += r.counters.bypasses
            row.bytesServed += r.counters.bytesServed
            row.promptTokensSaved += r.counters.promptTokensSaved
            row.completionTokensSaved += r.counters.completionTokensSaved
            out[k] = row
        }
        return out.values.sorted { ($0.day, $0.model, $0.deployment, $0.client) < ($1.day, $1.model, $1.deployment, $1.client) }
    }
}
