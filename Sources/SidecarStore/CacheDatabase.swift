import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The cache database behind two one-thread `NIOThreadPool`s, each with its own connection:
/// lookups run on the reader, everything else on the writer, so a lookup never waits behind a
/// write (WAL lets one writer and readers work at once). Never on an event loop; results come
/// back as futures on the caller's loop.
///
/// It never takes the daemon down. A file that cannot be opened, is corrupt, locked past
/// `busy_timeout`, read-only or on a full disk makes the failing call throw (callers then serve
/// pass-through); the first failure of an outage is logged once, every failure is counted, and the
/// file is reopened at most every `reopenInterval` until it works again, which is logged too.
///
/// A file removed or replaced under it raises no error at all (SQLite keeps using the file it
/// has open, and what it writes there is gone at the next start), so the writer also compares
/// the path with the open file every `fileCheckInterval` and after any failure, and on a change
/// closes both connections and opens (creating) the file now at the path: see `reopenChangedFile`.
public final class CacheDatabase: Sendable {
    private let threadPool: NIOThreadPool
    private let box: StoreBox
    private let readerPool: NIOThreadPool
    private let readerBox = StoreBox()
    private let logger: Logger
    private let healthBox = NIOLockedValueBox(Health())
    public let path: String
    /// How long after a failure to wait before opening the file again.
    static let reopenInterval: TimeAmount = .seconds(5)
    /// How often the writer checks that the path still names its file. A check is one or two
    /// `stat` calls (~1 µs); once a second bounds what is written to a removed file, and lost,
    /// to one second of answers and counters. The housekeeping flush uses the writer every
    /// second, so the check runs that often even with no traffic.
    static let fileCheckInterval: TimeAmount = .seconds(1)

    /// What `/stats` says about the database.
    public struct Health: Sendable, Equatable {
        /// False from a failure until the next success.
        public var ok = true
        /// Failed calls since start.
        public var errors = 0
        /// The last failure, without secrets (SQLite messages name only the path).
        public var lastError: String?
        /// Times the file was found removed or replaced and opened anew, by `FileChange` raw value.
        public var reopened: [String: Int] = [:]
    }

    public var health: Health { healthBox.withLockedValue { $0 } }

    /// The store, touched only on the pool's single thread.
    fileprivate final class StoreBox: @unchecked Sendable {
        var store: ResponseCacheStore?
        var lastAttempt: NIODeadline?
        var lastFileCheck: NIODeadline?
        var closed = false
    }

    private init(path: String, threadPool: NIOThreadPool, readerPool: NIOThreadPool, box: StoreBox, logger: Logger) {
        self.path = path
        self.threadPool = threadPool
        self.readerPool = readerPool
        self.box = box
        self.logger = logger
    }

    /// How much nicer than the process the writer thread is (the event loops keep the process's).
    public static let writerNiceness: Int32 = 10

    /// Lowers the calling thread's scheduling priority (Linux: nice is per thread, and `who` 0 is
    /// the calling thread).
    static func lowerCurrentThreadPriority(by niceness: Int32) {
        #if os(Linux)
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, min(19, currentThreadNiceness() + niceness))
        #endif
    }

    /// The calling thread's nice value (for tests).
    public static func currentThreadNiceness() -> Int32 {
        #if os(Linux)
        errno = 0
        return getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
        #else
        return 0
        #endif
    }

    /// Starts the database thread and opens (creating and migrating) the file at `path`. Never
    /// throws: a file that cannot be used now is retried later, and `health` says why.
    public static func open(path: String, logger: Logger) async -> CacheDatabase {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        // Writes are batched and nobody waits for them: the writer yields the CPU to the event
        // loops (nice +10: about a tenth of a loop's share when both want the same CPU, never none).
        pool.submit { _ in Self.lowerCurrentThreadPriority(by: writerNiceness) }
        let reader = NIOThreadPool(numberOfThreads: 1)
        reader.start()
        let db = CacheDatabase(path: path, threadPool: pool, readerPool: reader, box: StoreBox(), logger: logger)
        _ = try? await db.run { _ in () }
        return db
    }

    /// Runs `body` with the store on the database thread; the future completes on `eventLoop`.
    public func run<T: Sendable>(on eventLoop: EventLoop, _ body: @escaping @Sendable (ResponseCacheStore) throws -> T) -> EventLoopFuture<T> {
        threadPool.runIfActive(eventLoop: eventLoop) { [self] in try self.guarded(box: self.box, body) }
    }

    /// The same, from async code.
    public func run<T: Sendable>(_ body: @escaping @Sendable (ResponseCacheStore) throws -> T) async throws -> T {
        try await threadPool.runIfActive { [self] in try self.guarded(box: self.box, body) }
    }

    /// Access to the store from inside `perform`: `use` returns nil (and keeps the health record)
    /// when the database is unusable, so work that does not need it still runs.
    public struct StoreAccess {
        fileprivate let database: CacheDatabase
        fileprivate let box: StoreBox
        @discardableResult
        public func use<T>(_ body: (ResponseCacheStore) throws -> T) -> T? {
            try? database.guarded(box: box, body)
        }
    }

    /// Runs `body` on the database thread whether or not the database is usable now.
    public func perform(_ body: @escaping @Sendable (StoreAccess) -> Void) {
        threadPool.submit { [self] state in
            guard case .active = state else { return }
            body(StoreAccess(database: self, box: self.box))
        }
    }

    /// The same on the reader thread, with the reader's connection: for lookups only.
    public func performRead(_ body: @escaping @Sendable (StoreAccess) -> Void) {
        readerPool.submit { [self] state in
            guard case .active = state else { return }
            body(StoreAccess(database: self, box: self.readerBox))
        }
    }

    /// On the database thread: (re)open if needed, run, and keep the health record.
    fileprivate func guarded<T>(box: StoreBox, _ body: (ResponseCacheStore) throws -> T) throws -> T {
        guard !box.closed else { throw SQLiteError(operation: "using the cache", code: 21, message: "the database is closed") }
        do {
            if box === self.box { checkFile() }
            let store = try currentStore(box)
            let result = try body(store)
            recordSuccess()
            return result
        } catch let error as SQLiteError {
            recordFailure(error)
            if box === self.box {
                box.lastFileCheck = nil
                checkFile()
            }
            // A corrupt file, or one replaced or removed under us: drop the connection, so the
            // next attempt opens whatever is at the path then.
            if error.isCorrupt || error.isUnwritable { box.store = nil }
            throw error
        }
    }

    private func currentStore(_ box: StoreBox) throws -> ResponseCacheStore {
        if let store = box.store { return store }
        let now = NIODeadline.now()
        if let last = box.lastAttempt, now - last < Self.reopenInterval, !healthBox.withLockedValue({ $0.ok }) {
            throw SQLiteError(operation: "opening \(path)", code: 14, message: healthBox.withLockedValue { $0.lastError } ?? "unavailable")
        }
        box.lastAttempt = now
        let store = try ResponseCacheStore(path: path)
        _ = try store.sizes()  // reads a page: a file that is not a database fails here, not later
        box.store = store
        box.lastFileCheck = now
        return store
    }

    /// On the writer thread, at most every `fileCheckInterval` (and after a failure): if the path
    /// no longer names the open file, reopen.
    private func checkFile() {
        let now = NIODeadline.now()
        if let last = box.lastFileCheck, now - last < Self.fileCheckInterval { return }
        box.lastFileCheck = now
        // Not bound to a local: the connection must really close below (see `reopenChangedFile`).
        guard let change = box.store?.connection.fileChange() else { return }
        reopenChangedFile(change)
    }

    /// The file at the path changed: log it once, count it, and close both connections so the
    /// next use opens (creating and migrating if needed) whatever is at the path now.
    ///
    /// Order matters. The old file's `-wal` and `-shm` keep their names, and SQLite does not
    /// delete them when the database has moved; a new file opened next to a WAL with frames in it
    /// would take those frames (pages of the old file) as its own. So the old WAL is first
    /// checkpointed into the old file and truncated to nothing, through the descriptor we hold.
    /// And every connection to the old file must be closed before the new one opens: both would
    /// map the same `-shm` by name, and SQLite's locks are per process, so the new connection
    /// would reset the wal-index under the old one. The reader thread is therefore parked, its
    /// connection closed, until the writer's old connection is closed too.
    private func reopenChangedFile(_ change: FileChange) {
        healthBox.withLockedValue { $0.reopened[change.rawValue, default: 0] += 1 }
        logger.warning("cache database file changed under the daemon: reopening it at its path", metadata: [
            "path": "\(path)", "change": "\(change.rawValue)",
        ])
        let gate = ConditionLock(value: 0)  // 0: asked, 1: reader closed and parked, 2: writer done
        let readerBox = self.readerBox
        readerPool.submit { state in
            if case .active = state { readerBox.store = nil }
            gate.lock()
            gate.unlock(withValue: 1)
            guard case .active = state else { return }
            gate.lock(whenValue: 2)
            gate.unlock()
        }
        gate.lock(whenValue: 1)
        gate.unlock()
        try? box.store?.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        box.store = nil  // the only reference: statements finalised, the connection closed
        box.lastAttempt = nil
        gate.lock()
        gate.unlock(withValue: 2)
    }

    private func recordSuccess() {
        let recovered = healthBox.withLockedValue { h -> Bool in
            defer { h.ok = true }
            return !h.ok
        }
        if recovered { logger.notice("cache database usable again", metadata: ["path": "\(path)"]) }
    }

    private func recordFailure(_ error: SQLiteError) {
        let first = healthBox.withLockedValue { h -> Bool in
            defer { h.ok = false; h.errors += 1; h.lastError = error.description }
            return h.ok
        }
        if first {
            logger.error("cache database unusable; serving without it until it recovers", metadata: [
                "path": "\(path)", "reason": "\(error)",
            ])
        }
    }

    /// Closes the database (after the queued work) and stops the thread.
    public func close() async {
        let (box, readerBox) = (self.box, self.readerBox)
        _ = try? await readerPool.runIfActive { readerBox.store = nil; readerBox.closed = true }
        try? await readerPool.shutdownGracefully()
        _ = try? await threadPool.runIfActive { box.store = nil; box.closed = true }
        try? await threadPool.shutdownGracefully()
    }
}
