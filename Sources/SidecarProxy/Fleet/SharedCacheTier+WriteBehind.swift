import Logging
import NIOConcurrencyHelpers
import SidecarCore
import SidecarFleet
import SidecarStore

/// Write-behind: answers stored locally go to the shared tier in batches, from one task at a time.
/// A batch the database refuses is dropped (the local tier still has its answers).
extension SharedCacheTier {
    /// Queues `entries` for the shared tier (answers that came from upstream, never adopted ones).
    /// Past `maxQueuedBytes` of queued bodies, answers are dropped and counted.
    func writeBehind(_ entries: [CacheEntry]) {
        guard !entries.isEmpty else { return }
        var dropped: [CacheKey] = []
        let ready = isReady()
        let startFlush = state.withLockedValue { s -> Bool in
            for e in entries {
                guard e.key.count == 32 else { continue }
                let key = CacheKey(digest: e.key)
                // Written behind: storing it drops this node's claim; nothing to release later.
                s.claims.removeValue(forKey: key)
                guard !s.stopped, ready, s.queuedBytes + e.body.count <= Self.maxQueuedBytes else {
                    dropped.append(key)
                    continue
                }
                s.queue.append(e)
                s.queuedBytes += e.body.count
            }
            guard !s.flushing, !s.queue.isEmpty, !s.stopped else { return false }
            s.flushing = true
            return true
        }
        if !dropped.isEmpty {
            count(write: "dropped", dropped.count)
            // Followers on other nodes would wait for an answer that will not come.
            for key in dropped { releaseDropped(key) }
        }
        if startFlush { Task { [self] in await self.flushQueue() } }
    }

    private func releaseDropped(_ key: CacheKey) {
        Task { [database] in try? await database.release(key: key.bytes) }
    }

    /// Sends what is queued, batch by batch, until the queue is empty.
    func flushQueue() async {
        while true {
            let batch = state.withLockedValue { s -> [CacheEntry] in
                var bytes = 0
                var n = 0
                while n < s.queue.count, n == 0 || bytes + s.queue[n].body.count <= Self.batchBytes {
                    bytes += s.queue[n].body.count
                    n += 1
                }
                let batch = Array(s.queue.prefix(n))
                s.queue.removeFirst(n)
                s.queuedBytes -= bytes
                if batch.isEmpty { s.flushing = false }
                return batch
            }
            if batch.isEmpty { return }
            do {
                try await database.store(batch.map(FleetCachedAnswer.init))
                count(write: "stored", batch.count)
                let recovered = state.withLockedValue { s -> Bool in
                    defer { s.writeOutage = false }
                    return s.writeOutage
                }
                if recovered { logger.notice("shared cache writes resumed") }
            } catch {
                count(write: "dropped", batch.count)
                let first = state.withLockedValue { s -> Bool in
                    defer { s.writeOutage = true }
                    return !s.writeOutage
                }
                if first {
                    logger.warning("shared cache writes failing: answers stay in the local cache only until the fleet database is back", metadata: [
                        "reason": "\(error)"])
                }
            }
        }
    }

    /// Bodies queued and not yet sent.
    var queuedBytes: Int { state.withLockedValue { $0.queuedBytes } }
}

extension FleetCachedAnswer {
    init(_ e: CacheEntry) {
        self.init(key: e.key, scope: e.scope, model: e.model, endpoint: e.endpoint, status: e.status, contentType: e.contentType, body: e.body,
                  isStream: e.isStream, createdAt: e.createdAt, expiresAt: e.expiresAt, promptTokens: e.promptTokens, completionTokens: e.completionTokens)
    }
}

extension CacheEntry {
    init(_ a: FleetCachedAnswer) {
        self.init(key: a.key, scope: a.scope, model: a.model, endpoint: a.endpoint, status: a.status, contentType: a.contentType, body: a.body,
                  isStream: a.isStream, createdAt: a.createdAt, expiresAt: a.expiresAt, promptTokens: a.promptTokens, completionTokens: a.completionTokens)
    }
}
