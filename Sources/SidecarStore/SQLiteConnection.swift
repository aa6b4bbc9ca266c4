import CSQLite
import Foundation

/// A SQLite failure: what we were doing, SQLite's code and message.
public struct SQLiteError: Error, Sendable, Equatable, CustomStringConvertible {
    public var operation: String
    public var code: Int32
    public var message: String

    public var description: String { "\(operation): \(message) (SQLite code \(code))" }

    /// SQLITE_BUSY / SQLITE_LOCKED: another connection holds the lock past busy_timeout.
    public var isBusy: Bool { code & 0xFF == SQLITE_BUSY || code & 0xFF == SQLITE_LOCKED }
    /// SQLITE_CORRUPT / SQLITE_NOTADB: the file is not a usable database.
    public var isCorrupt: Bool { code & 0xFF == SQLITE_CORRUPT || code & 0xFF == SQLITE_NOTADB }
    /// SQLITE_FULL / SQLITE_READONLY / SQLITE_CANTOPEN / SQLITE_IOERR.
    public var isUnwritable: Bool { [SQLITE_FULL, SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_IOERR].contains(code & 0xFF) }
}

/// Which file a path named when it was looked at: device and inode.
public struct FileIdentity: Sendable, Equatable {
    public var device: UInt64
    public var inode: UInt64

    /// The identity of the file at `path` now, or the errno that says why there is none.
    static func of(_ path: String) -> Result<FileIdentity, POSIXError> {
        var st = stat()
        guard stat(path, &st) == 0 else { return .failure(POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)) }
        return .success(FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)))
    }
}

/// How the file at a connection's path differs from the one it has open.
public enum FileChange: String, Sendable {
    /// Nothing at the path any more (`rm`): SQLite keeps writing to the unlinked file.
    case removed
    /// Another file at the path (`mv other cache.sqlite3`): SQLite keeps using the old one.
    case replaced
}

/// One `sqlite3*`, used from one thread at a time (never an event loop: see `CacheDatabase`).
public final class SQLiteConnection {
    let db: OpaquePointer
    public let path: String
    /// The file opened, looked up right after the open (nil for ":memory:").
    public private(set) var identity: FileIdentity?

    /// Opens (creating with mode 0600 if needed) and configures: WAL, `busy_timeout`,
    /// `synchronous = NORMAL` (durable across process crashes; WAL makes `kill -9` safe).
    public init(path: String, busyTimeoutMilliseconds: Int32 = 2_000) throws {
        self.path = path
        if path != ":memory:" {
            let dir = (path as NSString).deletingLastPathComponent
            if !dir.isEmpty { try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) }
            // Create the file ourselves so it is 0600 whatever the umask (SQLite gives its -wal and
            // -shm files the same mode). Only when it does not exist yet: closing any descriptor of
            // a file drops every POSIX lock this process holds on it, including those of our other
            // connections, and another process could then checkpoint and reset the WAL under them.
            if access(path, F_OK) != 0 {
                let fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o600)
                if fd >= 0 { close(fd) }
            }
        }
        var handle: OpaquePointer?
        let rc = sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nil)
        guard rc == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            if let handle { sqlite3_close_v2(handle) }
            throw SQLiteError(operation: "opening \(path)", code: rc, message: message)
        }
        db = handle
        if path != ":memory:", case .success(let id) = FileIdentity.of(path) { identity = id }
        sqlite3_extended_result_codes(db, 1)
        sqlite3_busy_timeout(db, busyTimeoutMilliseconds)
        do {
            try enableWAL(within: busyTimeoutMilliseconds)
            try execute("PRAGMA synchronous = NORMAL")
        } catch {
            sqlite3_close_v2(db)
            throw error
        }
    }

    deinit { sqlite3_close_v2(db) }

    /// `PRAGMA journal_mode = WAL`, retried while another connection holds the lock. Switching a
    /// new file to WAL needs an exclusive lock, and SQLite answers SQLITE_BUSY at once, without
    /// calling the busy handler, when two connections that both read the file race for it (the
    /// handler would deadlock them). Once one has switched, the mode is in the file and the
    /// others' pragma takes no lock. Bounded by the busy timeout.
    private func enableWAL(within milliseconds: Int32) throws {
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(max(milliseconds, 0)) * 1_000_000
        var pause: UInt32 = 1_000
        while true {
            do {
                return try execute("PRAGMA journal_mode = WAL")
            } catch let error as SQLiteError where error.isBusy && DispatchTime.now().uptimeNanoseconds < deadline {
                usleep(pause)
                pause = min(pause * 2, 50_000)
            }
        }
    }

    /// Whether `path` still names the file this connection has open. A removed or replaced
    /// database raises no error: SQLite (in WAL mode too) goes on reading and writing the file it
    /// has open, and all of it is gone at the next open. nil: the same file, or it cannot be told
    /// (a stat failing for another reason than a missing file, e.g. EACCES, changes nothing).
    public func fileChange() -> FileChange? {
        guard let identity else { return nil }
        switch FileIdentity.of(path) {
        case .failure(let e) where e.code == .ENOENT || e.code == .ENOTDIR: return .removed
        case .failure: return nil
        case .success(let now) where now != identity: return .replaced
        case .success: break
        }
        // SQLite's own check, against the descriptor it holds: catches a swap between the open
        // and our stat above.
        var moved: Int32 = 0
        if sqlite3_file_control(db, "main", SQLITE_FCNTL_HAS_MOVED, &moved) == SQLITE_OK, moved != 0 { return .replaced }
        return nil
    }

    func error(_ operation: String, _ rc: Int32) -> SQLiteError {
        SQLiteError(operation: operation, code: sqlite3_extended_errcode(db), message: String(cString: sqlite3_errmsg(db)))
    }

    /// Runs SQL with no results (one or more statements).
    public func execute(_ sql: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &message)
        if rc != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errmsg(db))
            sqlite3_free(message)
            throw SQLiteError(operation: "executing \(sql.prefix(60))", code: sqlite3_extended_errcode(db), message: text)
        }
    }

    public func prepare(_ sql: String) throws -> Statement {
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v3(db, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw error("preparing \(sql.prefix(60))", rc) }
        return Statement(stmt: stmt, connection: self)
    }

    /// Runs `body` in one transaction (`BEGIN IMMEDIATE`: writers queue on busy_timeout up front).
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try execute("COMMIT")
            return result
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }

    /// `PRAGMA user_version`.
    public var userVersion: Int {
        get throws {
            let s = try prepare("PRAGMA user_version")
            _ = try s.step()
            return Int(s.int(0))
        }
    }

    /// Applies `migrations[n...]` where n is the current `user_version`, each in a transaction
    /// that also bumps the version. A database from a newer version is refused.
    ///
    /// The version is read again inside each (write-locked) transaction: two connections opening
    /// a new file at once (the reader and the writer, after the file was replaced) both saw
    /// version 0, and the second failed on "table already exists".
    public func migrate(_ migrations: [String]) throws {
        // Up to date: no write lock taken (a read-only file, `llm-sidecar stats`).
        if try userVersion == migrations.count { return }
        while true {
            let done = try transaction { () throws -> Bool in
                let current = try userVersion
                guard current <= migrations.count else {
                    throw SQLiteError(operation: "migrating \(path)", code: SQLITE_ERROR,
                                      message: "schema version \(current) is newer than this llm-sidecar (\(migrations.count))")
                }
                guard current < migrations.count else { return true }
                try execute(migrations[current])
                try execute("PRAGMA user_version = \(current + 1)")
                return false
            }
            if done { return }
        }
    }
}

/// A prepared statement; reset and reused, never re-prepared on the hot path.
public final class Statement {
    let stmt: OpaquePointer
    unowned let connection: SQLiteConnection

    init(stmt: OpaquePointer, connection: SQLiteConnection) {
        self.stmt = stmt
        self.connection = connection
    }

    deinit { sqlite3_finalize(stmt) }

    public enum Value: Sendable, Equatable {
        case null, integer(Int64), real(Double), text(String), blob([UInt8])
    }

    /// Binds `values` to ?1, ?2, … after a reset.
    public func bind(_ values: [Value]) throws {
        sqlite3_reset(stmt)
        sqlite3_clear_bindings(stmt)
        for (i, v) in values.enumerated() {
            let index = Int32(i + 1)
            let rc: Int32
            switch v {
            case .null: rc = sqlite3_bind_null(stmt, index)
            case .integer(let n): rc = sqlite3_bind_int64(stmt, index, n)
            case .real(let d): rc = sqlite3_bind_double(stmt, index, d)
            case .text(let s): rc = sqlite3_bind_text(stmt, index, s, -1, sidecar_sqlite_transient())
            case .blob(let b):
                rc = b.withUnsafeBytes { sqlite3_bind_blob(stmt, index, $0.baseAddress, Int32($0.count), sidecar_sqlite_transient()) }
            }
            guard rc == SQLITE_OK else { throw connection.error("binding parameter \(index)", rc) }
        }
    }

    /// One step: true while there is a row.
    public func step() throws -> Bool {
        let rc = sqlite3_step(stmt)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default: throw connection.error("running a statement", rc)
        }
    }

    /// Binds, runs to the end, and returns the number of rows changed.
    @discardableResult
    public func run(_ values: [Value] = []) throws -> Int {
        try bind(values)
        while try step() {}
        return Int(sqlite3_changes(connection.db))
    }

    public func isNull(_ column: Int32) -> Bool { sqlite3_column_type(stmt, column) == SQLITE_NULL }
    public func int(_ column: Int32) -> Int64 { sqlite3_column_int64(stmt, column) }
    public func double(_ column: Int32) -> Double { sqlite3_column_double(stmt, column) }
    public func text(_ column: Int32) -> String? {
        guard let p = sqlite3_column_text(stmt, column) else { return nil }
        return String(cString: p)
    }
    public func blob(_ column: Int32) -> [UInt8] {
        let n = Int(sqlite3_column_bytes(stmt, column))
        guard n > 0, let p = sqlite3_column_blob(stmt, column) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }
}
