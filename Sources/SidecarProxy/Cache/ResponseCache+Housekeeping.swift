import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SidecarCore
import SidecarStore

/// The cache's housekeeping: the once-a-second tick (write-back, file checks, the index), the
/// flush the server waits on when it stops or reloads, and closing.
extension ResponseCache {
    // MARK: housekeeping

    /// Gives memory freed since the last pass back to the system. glibc keeps what a burst freed
    /// (a write backlog after a wave of misses) in its arenas: measured, 415 MB resident after a
    /// miss burst, 186 MB after this call. Every 30 s, on the writer thread.
    static func returnFreedMemory() {
        #if canImport(Glibc)
        // malloc.h is not part of the Glibc module: looked up once (RTLD_DEFAULT is a null handle).
        if let trim = mallocTrim { _ = trim(0) }
        #endif
    }

    #if canImport(Glibc)
    private static let mallocTrim: (@convention(c) (Int) -> Int32)? = dlsym(nil, "malloc_trim").map {
        unsafeBitCast($0, to: (@convention(c) (Int) -> Int32).self)
    }
    #endif

    /// Writes counters back every second and expires/evicts every 30 s, scheduled on `loop`
    /// (the work itself runs on the database thread).
    func startHousekeeping(on loop: EventLoop) {
        let task = loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] _ in self.tick() }
        housekeeping.withLockedValue { $0.task = task; $0.loop = loop }
    }

    private func tick() {
        let ticks = housekeeping.withLockedValue { h -> Int in h.ticks += 1; return h.ticks }
        flush(prune: ticks % 30 == 0)
    }

    /// Writes pending counters and hit times; with `prune`, also deletes a batch of expired entries
    /// and evicts down to `max_bytes`.
    func flush(prune: Bool = false, completion: (@Sendable () -> Void)? = nil) {
        let taken = pending.withLockedValue { p -> Pending in
            defer { p = Pending() }
            return p
        }
        let now = clock()
        let maxBytes = settings.maxBytes
        let day = Self.day(now)
        let outbox = writesOutbox.withLockedValue { $0 }
        database.perform { [self] access in
            self.drainWrites(access, maxBytes: maxBytes)
            let ok = access.use { store -> Bool in
                try store.add(taken.counters.filter { !$0.value.isEmpty }, day: day)
                try store.addSpend(taken.spend, day: day)
                if outbox { try store.addOutbox(counters: taken.counters, spend: taken.spend, day: day) }
                var touches: [[UInt8]: (count: Int64, at: Int64)] = [:]
                for (k, t) in taken.touches { touches[k.bytes] = t }
                try store.touch(touches)
                let generation = try store.purgeGeneration()
                let changed = self.housekeeping.withLockedValue { h -> Bool in
                    defer { h.generation = generation }
                    return h.generation != nil && h.generation != generation
                }
                // `cache purge` ran, or the file was removed or replaced (the database reopened
                // it): the hot tier mirrors the file, so it forgets what the file no longer has.
                let reopens = self.database.health.reopened.values.reduce(0, +)
                let reopened = self.housekeeping.withLockedValue { h -> Bool in
                    defer { h.reopens = reopens }
                    return h.reopens != reopens
                }
                if changed || reopened { self.hot.withLockedValue { $0.removeAll() } }
                if prune || changed || reopened || self.indexedKeys == nil {
                    if prune {
                        try store.deleteExpired(now: now)
                        if try store.sizes().1 > maxBytes { try store.evict(toFit: maxBytes) }
                        Self.returnFreedMemory()
                    }
                    // Deleted keys leave the index (until now it only over-reports them); a new
                    // file's keys enter it.
                    try self.rebuildIndex(store)
                }
                return true
            } ?? false
            if !ok {
                // Keep the counts for the next attempt rather than lose them.
                self.pending.withLockedValue { p in
                    for (m, d) in taken.counters { p.counters[m, default: .init()] += d }
                    for (k, d) in taken.spend { p.spend[k, default: .init()] += d }
                }
            }
            // After any write the jobs before this one queued: "flushed" means written.
            if let completion { self.database.perform { access in self.drainWrites(access, maxBytes: maxBytes); completion() } }
        }
    }

    /// The counters not yet written back (for `/stats`).
    var pendingCounters: [String: ResponseCacheStore.CounterDelta] { pending.withLockedValue { $0.counters } }

    var hotTier: (entries: Int, bytes: Int, capacity: Int) { hot.withLockedValue { ($0.count, $0.totalCost, $0.capacity) } }

    /// Final write-back, then closes the database.
    func close() async {
        housekeeping.withLockedValue { $0.task?.cancel(); $0.loop = nil }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in flush { c.resume() } }
        sharedTier.withLockedValue { $0 }?.stop()
        await database.close()
    }

    /// "YYYY-MM-DD" (UTC) of a Unix time.
    static func day(_ unix: Int64) -> String { UTCDay.day(unix) }
}
