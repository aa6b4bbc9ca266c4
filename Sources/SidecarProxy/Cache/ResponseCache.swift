import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import SidecarCore
import SidecarStore

/// An answer in the hot tier: what a hit replays.
struct CachedAnswer: Sendable {
    var status: Int
    var contentType: String?
    /// The exact bytes, shared (never copied) by every replay.
    var body: ByteBuffer
    var isStream: Bool
    var model: String
    var createdAt: Int64
    var expiresAt: Int64
    var promptTokens: Int64
    var completionTokens: Int64
    /// The start of a hit's response in wire form: status line, `content-type`, `content-length`.
    /// A hit appends its own `age` and `x-sidecar-cache` and goes out in one write with the body.
    let headPrefix: ByteBuffer

    /// What the entry really costs in memory, for `cache.memory_bytes`: the buffers' allocations
    /// (the whole storage a slice keeps alive, not the slice) plus ~256 bytes of bookkeeping
    /// (strings, LRU node, table slot).
    var memoryCost: Int { body.storageCapacity + headPrefix.storageCapacity + 256 }

    init(_ e: CacheEntry) {
        status = e.status
        contentType = e.contentType
        body = ByteBuffer(bytes: e.body)
        isStream = e.isStream
        model = e.model
        createdAt = e.createdAt
        expiresAt = e.expiresAt
        promptTokens = e.promptTokens ?? 0
        completionTokens = e.completionTokens ?? 0
        headPrefix = Self.headPrefix(status: e.status, contentType: e.contentType, length: e.body.count)
    }

    static func headPrefix(status: Int, contentType: String?, length: Int) -> ByteBuffer {
        var b = ByteBuffer()
        b.reserveCapacity(96 + (contentType?.utf8.count ?? 0))
        b.writeString("HTTP/1.1 \(status) \(HTTPResponseStatus(statusCode: status).reasonPhrase)\r\n")
        // Header values that came from an upstream can never contain CR or LF here: NIO's
        // parser refused such a response before it was stored.
        if let contentType { b.writeString("content-type: \(contentType)\r\n") }
        b.writeString("content-length: \(length)\r\n")
        return b
    }
}

/// The response cache shared by every event loop: the in-memory hot tier, the table of flights
/// (in-flight coalescing), the SQLite store behind its own thread, and the counters.
///
/// The event loops touch only the hot tier, the flight table and the pending counters, each
/// behind a short lock; every SQLite call runs on the database thread (`CacheDatabase`). Counters
/// and the hit times of hot-tier hits are written back once a second; expiry and eviction run in
/// small batches there too, so they never hold the database for long.
final class ResponseCache: Sendable {
    let database: CacheDatabase
    let logger: Logger
    /// Unix seconds; injected so tests control expiry.
    let clock: @Sendable () -> Int64
    let settingsBox: NIOLockedValueBox<SidecarConfiguration.Cache>
    let hot: NIOLockedValueBox<LRUCache<CacheKey, CachedAnswer>>
    /// Keys the database may hold: a key it certainly does not hold skips the SQLite read.
    let stored = NIOLockedValueBox(StoredKeyIndex())
    private let flights = NIOLockedValueBox<[CacheKey: Flight]>([:])
    let pending = NIOLockedValueBox(Pending())
    /// `[fleet]`: every flush also goes to the outbox, for the fleet database.
    let writesOutbox = NIOLockedValueBox(false)
    /// `[fleet]` with `shared_cache`: the second tier, asked on a local miss and written behind.
    let sharedTier = NIOLockedValueBox<SharedCacheTier?>(nil)
    let housekeeping = NIOLockedValueBox<(task: RepeatedTask?, ticks: Int, generation: Int64?, loop: EventLoop?, reopens: Int)>((nil, 0, nil, nil, 0))

    struct Pending {
        var spend: [ResponseCacheStore.SpendKey: ResponseCacheStore.Spend] = [:]
        var counters: [String: ResponseCacheStore.CounterDelta] = [:]
        var touches: [CacheKey: (count: Int64, at: Int64)] = [:]
    }

    static let wallClock: @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970) }

    private init(database: CacheDatabase, settings: SidecarConfiguration.Cache, logger: Logger, clock: @escaping @Sendable () -> Int64) {
        self.database = database
        self.logger = logger
        self.clock = clock
        self.settingsBox = NIOLockedValueBox(settings)
        self.hot = NIOLockedValueBox(LRUCache(capacity: settings.memoryBytes))
    }

    /// Opens the database (never fails: an unusable file means pass-through until it is usable).
    static func open(settings: SidecarConfiguration.Cache, logger: Logger, clock: @escaping @Sendable () -> Int64 = wallClock) async -> ResponseCache {
        let db = await CacheDatabase.open(path: settings.path, logger: logger)
        return ResponseCache(database: db, settings: settings, logger: logger, clock: clock)
    }

    var settings: SidecarConfiguration.Cache {
        get { settingsBox.withLockedValue { $0 } }
        set { settingsBox.withLockedValue { $0 = newValue } }
    }

    // MARK: lookups

    /// A live hot-tier answer; counts the hit time for the write-back.
    func hotLookup(_ key: CacheKey, now: Int64) -> CachedAnswer? {
        let found = hot.withLockedValue { lru -> CachedAnswer? in
            guard let a = lru.get(key) else { return nil }
            if a.expiresAt <= now {
                lru.remove(key)
                return nil
            }
            return a
        }
        if found != nil { touch(key, now: now) }
        return found
    }

    /// Counts a hit served without SQLite; written back with the next flush.
    func touch(_ key: CacheKey, now: Int64) {
        pending.withLockedValue { p in
            let t = p.touches[key] ?? (0, now)
            p.touches[key] = (t.count + 1, max(t.at, now))
        }
    }

    /// False when the database certainly does not hold `key` (then `diskLookup` is not needed).
    func mayBeStored(_ key: CacheKey) -> Bool { stored.withLockedValue { $0.mayContain(key.w0) } }

    /// Entries the in-memory key index knows; nil until it was first read from the database.
    var indexedKeys: Int? { stored.withLockedValue { $0.count } }

    /// On the database thread: the key index from what the database holds now.
    func rebuildIndex(_ store: ResponseCacheStore) throws {
        let all = try store.keyPrefixes()
        stored.withLockedValue { $0.replaceAll(all) }
    }

    /// The stored answer from SQLite (promoted to the hot tier), or nil on a miss or when the
    /// database is unusable (the request then goes upstream). Completes on `loop`.
    func diskLookup(_ key: CacheKey, now: Int64, on loop: EventLoop) -> EventLoopFuture<CachedAnswer?> {
        let promise = loop.makePromise(of: CachedAnswer?.self)
        let hot = self.hot
        database.performRead { [self] access in
            let entry = access.use { try $0.lookup(key.bytes, now: now) } ?? nil
            let answer = entry.map(CachedAnswer.init)
            if let answer {
                hot.withLockedValue { _ = $0.set(key, answer, cost: answer.memoryCost) }
                // The hit time is written back with the next flush, by the writer.
                self.touch(key, now: now)
            }
            promise.succeed(answer)
        }
        return promise.futureResult
    }

    // MARK: flights

    enum Role {
        case leader(Flight)
        case follower(Flight)
    }

    /// The flight for `key`: an existing one to follow, or a new one this request leads.
    func flight(for key: CacheKey) -> Role {
        let maxEntry = settings.maxEntryBytes
        return flights.withLockedValue { table in
            if let f = table[key] { return .follower(f) }
            let f = Flight(key: key, maxBytes: maxEntry)
            table[key] = f
            return .leader(f)
        }
    }

    /// The flight is over (or gave up): later identical requests start their own.
    func endFlight(_ flight: Flight) {
        let removed = flights.withLockedValue { table -> Bool in
            guard table[flight.key] === flight else { return false }
            table.removeValue(forKey: flight.key)
            return true
        }
        // A fleet claim still held for it (nothing written behind) is released for other nodes.
        if removed, let tier = sharedTier.withLockedValue({ $0 }) { tier.flightEnded(flight.key) }
    }

    var flightsInProgress: Int { flights.withLockedValue { $0.count } }

    // MARK: counting and storing

    /// One upstream call's cost, written with the next flush.
    func recordSpend(_ key: ResponseCacheStore.SpendKey, _ spend: ResponseCacheStore.Spend) {
        pending.withLockedValue { $0.spend[key, default: .init()] += spend }
        spendSinceStart.withLockedValue { $0 += spend }
    }

    /// Every upstream call's usage and cost since the start, never reset by a flush: what
    /// `llm_sidecar_upstream_tokens_total` and `llm_sidecar_upstream_spent_usd_total` follow.
    let spendSinceStart = NIOLockedValueBox(ResponseCacheStore.Spend())

    /// Spend not written back yet (for `/stats`).
    var pendingSpend: [ResponseCacheStore.SpendKey: ResponseCacheStore.Spend] { pending.withLockedValue { $0.spend } }

    func count(model: String, _ update: (inout ResponseCacheStore.CounterDelta) -> Void) {
        pending.withLockedValue { p in update(&p.counters[model, default: .init()]) }
    }

    /// What a finished leader hands over: the answer and how to store it.
    struct Completed: Sendable {
        var key: CacheKey
        var scope: String
        var model: String
        var endpoint: String
        var status: Int
        var contentType: String?
        var isStream: Bool
        /// Framed by Content-Length or chunked encoding (a close-delimited body may be truncated).
        var framed: Bool
        /// In a content coding (`Content-Encoding`): replayed bytes would lack it, so never stored.
        var encoded = false
        var ttl: Int
        /// nil when the answer is not to be stored (too large, or not complete).
        var body: [ByteBuffer]?
        /// Followers that shared the upstream call.
        var coalesced: Int
        /// The answer's usage when the exchange already read it (for spend): not parsed twice.
        var usage: ResponseInspector.Usage?
        /// The flight to take out of the table once the answer is stored: until then, identical
        /// requests join it and get the recorded answer, rather than miss in SQLite.
        var flight: Flight?
    }

    /// Answer bytes handed to the database thread and not yet taken in, and the answers not stored
    /// because that was over `maxQueuedBytes`: the writer runs at a lower priority than the event
    /// loops, and a writer that falls behind costs cache entries, never unbounded memory.
    private let writerQueue = NIOLockedValueBox<(bytes: Int, skipped: Int)>((0, 0))
    static let maxQueuedBytes = 16 << 20
    static let queuedAnswerOverhead = 4 << 10
    var storesSkipped: Int { writerQueue.withLockedValue { $0.skipped } }
    var writeQueueBytes: Int { writerQueue.withLockedValue { $0.bytes } }

    private func admitToWriter(bytes: Int) -> Bool {
        writerQueue.withLockedValue { q in
            guard q.bytes + bytes <= Self.maxQueuedBytes else {
                q.skipped += 1
                return false
            }
            q.bytes += bytes
            return true
        }
    }

    /// Off the event loop: counts what the followers saved and stores a complete 2xx answer
    /// (a stream only if it reached its final event) in SQLite and the hot tier.
    func finish(_ c: Completed) {
        let now = clock()
        let maxBytes = settings.maxBytes
        let hot = self.hot
        let pending = self.pending
        var c = c
        let bodyBytes = c.body.map { parts in parts.reduce(0) { $0 + $1.readableBytes } } ?? 0
        // What a queued answer really holds: its bytes, and about 4 KiB besides (its flight, head
        // and entry); counting bytes alone let 55,000 small answers (300 MB) wait for the writer.
        let charge = bodyBytes + Self.queuedAnswerOverhead
        if c.body != nil, !admitToWriter(bytes: charge) { c.body = nil }  // counted, not stored
        guard let parts = c.body else {
            // Nothing to store: counted and let go here, without a trip to the writer (a closure
            // queued for it would hold the flight and its recording until the writer got to it).
            if c.coalesced > 0 { pending.withLockedValue { $0.counters[c.model, default: .init()].coalesced += Int64(c.coalesced) } }
            if let f = c.flight { endFlight(f) }
            return
        }
        // The parts are slices of the connection's read buffers (often 16-64 KiB for a 600-byte
        // answer): one exact copy now lets those go at once, rather than when the writer gets to
        // this answer; the flight's recording shares the copy.
        var buffer = parts.count == 1 ? parts[0] : ByteBuffer()
        // (`storageCapacity`: a slice's `capacity` is its own length, and a 600-byte slice of a
        // 16 KiB TLS record buffer kept that buffer alive in the hot tier: 7.5 KB of RSS per
        // entry where 1 KB was counted.)
        if parts.count != 1 || buffer.storageCapacity > buffer.readableBytes * 2 {
            buffer = ByteBuffer()
            buffer.reserveCapacity(bodyBytes)
            for p in parts { buffer.writeImmutableBuffer(p) }
            c.flight?.replaceRecordedBody(with: buffer)
            c.body = [buffer]  // the closure below must not hold the slices either
        }
        database.perform { [self, c, buffer] _ in
            defer { self.writerQueue.withLockedValue { $0.bytes -= charge } }
            var queued = false
            defer { if !queued, let f = c.flight { self.endFlight(f) } }
            let bytes = Array(buffer.readableBytesView)
            let usage = (200..<300).contains(c.status) ? c.usage ?? ResponseInspector.usage(body: bytes, isStream: c.isStream) : nil
            if c.coalesced > 0 {
                let n = Int64(c.coalesced)
                pending.withLockedValue { p in
                    var d = p.counters[c.model, default: .init()]
                    d.coalesced += n
                    d.bytesServed += n * Int64(bytes.count)
                    d.promptTokensSaved += n * (usage?.promptTokens ?? 0)
                    d.completionTokensSaved += n * (usage?.completionTokens ?? 0)
                    p.counters[c.model] = d
                }
            }
            guard (200..<300).contains(c.status), c.framed || c.isStream, !c.encoded,
                  !c.isStream || ResponseInspector.streamIsComplete(bytes) else { return }
            let entry = CacheEntry(
                key: c.key.bytes, scope: c.scope, model: c.model, endpoint: c.endpoint, status: c.status, contentType: c.contentType,
                body: bytes, isStream: c.isStream, createdAt: now, expiresAt: now + Int64(c.ttl),
                promptTokens: usage?.promptTokens, completionTokens: usage?.completionTokens)
            var answer = CachedAnswer(entry)
            answer.body = buffer
            hot.withLockedValue { _ = $0.set(c.key, answer, cost: answer.memoryCost) }
            // Written with whatever else is queued right now, in one transaction.
            queued = true
            self.writes.entries.append(entry)
            self.writes.fromUpstream.append(entry)
            if let f = c.flight { self.writes.flights.append(f) }
            self.scheduleWrite(maxBytes: maxBytes)
        }
    }

    /// Answers waiting to be written; touched only on the database (writer) thread.
    private final class PendingWrites: @unchecked Sendable {
        var entries: [CacheEntry] = []
        /// The entries that came from upstream (not adopted from the shared tier): written behind.
        var fromUpstream: [CacheEntry] = []
        var flights: [Flight] = []
        var scheduled = false
    }
    private let writes = PendingWrites()

    /// On the writer thread: writes are batched for `writeDelay`, so under load one transaction
    /// carries many answers (the pages they share, indexes and totals, are written once). Until
    /// an answer is written its flight stays joinable and the hot tier has it, so nothing misses.
    func scheduleWrite(maxBytes: Int64) {
        guard !writes.scheduled else { return }
        writes.scheduled = true
        let drain: @Sendable () -> Void = { [self] in
            self.database.perform { access in self.drainWrites(access, maxBytes: maxBytes) }
        }
        if let loop = housekeeping.withLockedValue({ $0.loop }) {
            loop.scheduleTask(in: Self.writeDelay, drain)
        } else {
            drain()
        }
    }

    static let writeDelay: TimeAmount = .milliseconds(5)

    /// On the writer thread: writes what is queued, in one transaction.
    func drainWrites(_ access: CacheDatabase.StoreAccess, maxBytes: Int64) {
        let batch = writes.entries
        let flights = writes.flights
        let fromUpstream = writes.fromUpstream
        writes.entries = []
        writes.fromUpstream = []
        writes.flights = []
        writes.scheduled = false
        defer { flights.forEach(endFlight) }
        guard !batch.isEmpty else { return }
        access.use { store in
            try store.put(batch)
            stored.withLockedValue { index in for e in batch { index.insert(e.key.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }) } }
            if try store.sizes().1 > maxBytes {
                // Hit times first, so eviction sees the latest ones.
                let touches = pending.withLockedValue { p -> [CacheKey: (count: Int64, at: Int64)] in
                    defer { p.touches = [:] }
                    return p.touches
                }
                try store.touch(Dictionary(uniqueKeysWithValues: touches.map { ($0.key.bytes, $0.value) }))
                try store.evict(toFit: maxBytes)
            }
        }
        // Before the flights end: a written-behind key's claim is the store's to drop.
        if !fromUpstream.isEmpty, let tier = sharedTier.withLockedValue({ $0 }) { tier.writeBehind(fromUpstream) }
    }

    // MARK: the shared tier

    /// Attaches (or, with nil, detaches) fleet mode's shared tier.
    func attachSharedTier(_ tier: SharedCacheTier?) {
        sharedTier.withLockedValue { $0 = tier }
    }

    /// An answer found in the shared tier: into the hot tier now and SQLite with the next write
    /// (its own scope and expiry; never written behind again). Returns what a hit replays.
    func adopt(_ entry: CacheEntry) -> CachedAnswer {
        let answer = CachedAnswer(entry)
        hot.withLockedValue { _ = $0.set(CacheKey(digest: entry.key), answer, cost: answer.memoryCost) }
        let charge = entry.body.count + Self.queuedAnswerOverhead
        guard admitToWriter(bytes: charge) else { return answer }
        let maxBytes = settings.maxBytes
        database.perform { [self] _ in
            defer { self.writerQueue.withLockedValue { $0.bytes -= charge } }
            self.writes.entries.append(entry)
            self.scheduleWrite(maxBytes: maxBytes)
        }
        return answer
    }
}
