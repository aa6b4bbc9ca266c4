import NIOCore
import NIOPosix

/// The cache database behind a one-thread `NIOThreadPool`: every SQLite call runs there, in
/// order, never on an event loop; results come back as futures on the caller's loop.
public final class CacheDatabase: Sendable {
    private let threadPool: NIOThreadPool
    private let box: StoreBox
    public let path: String

    /// The store, touched only on the pool's single thread.
    private final class StoreBox: @unchecked Sendable {
        var store: ResponseCacheStore?
    }

    private init(path: String, threadPool: NIOThreadPool, box: StoreBox) {
        self.path = path
        self.threadPool = threadPool
        self.box = box
    }

    /// Opens (creating and migrating) the database at `path` on a new one-thread pool.
    public static func open(path: String) async throws -> CacheDatabase {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let box = StoreBox()
        do {
            try await pool.runIfActive { box.store = try ResponseCacheStore(path: path) }
        } catch {
            try? await pool.shutdownGracefully()
            throw error
        }
        return CacheDatabase(path: path, threadPool: pool, box: box)
    }

    /// Runs `body` with the store on the database thread; the future completes on `eventLoop`.
    public func run<T: Sendable>(on eventLoop: EventLoop, _ body: @escaping @Sendable (ResponseCacheStore) throws -> T) -> EventLoopFuture<T> {
        let box = self.box
        return threadPool.runIfActive(eventLoop: eventLoop) {
            guard let store = box.store else { throw SQLiteError(operation: "using the cache", code: 21, message: "the database is closed") }
            return try body(store)
        }
    }

    /// The same, from async code.
    public func run<T: Sendable>(_ body: @escaping @Sendable (ResponseCacheStore) throws -> T) async throws -> T {
        let box = self.box
        return try await threadPool.runIfActive {
            guard let store = box.store else { throw SQLiteError(operation: "using the cache", code: 21, message: "the database is closed") }
            return try body(store)
        }
    }

    /// Closes the database (after the queued work) and stops the thread.
    public func close() async {
        let box = self.box
        _ = try? await threadPool.runIfActive { box.store = nil }
        try? await threadPool.shutdownGracefully()
    }
}
