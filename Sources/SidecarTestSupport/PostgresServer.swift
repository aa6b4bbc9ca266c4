import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A private PostgreSQL cluster for tests: a fresh temporary directory holding the data and the
/// unix socket (no TCP), created with `initdb` and run with `pg_ctl`, with durability switched off
/// for speed, and a database `fleet`. As root, the server runs as the `postgres` user (PostgreSQL
/// refuses root). The binaries are the highest version under `/usr/lib/postgresql/*/bin`
/// (Debian's `postgresql` package), or `$PG_BIN`.
public final class PostgresServer: @unchecked Sendable {
    /// The temporary directory (data, socket, log); removed by `shutdown()`.
    public let directory: String
    /// The directory of the socket file `.s.PGSQL.<port>`.
    public let socketDirectory: String
    public let port: Int
    /// `postgres://postgres@/fleet?host=<socketDirectory>&port=<port>`.
    public var url: String { url(database: "fleet") }

    let dataDirectory: String
    let binDirectory: String
    let runAsPostgres: Bool
    private let lock = NSLock()
    private var removed = false

    /// The URL of another database of this server.
    public func url(database: String) -> String {
        "postgres://postgres@/\(database)?host=\(socketDirectory)&port=\(port)"
    }

    /// Creates the cluster, starts it and creates database `fleet`.
    public static func start() throws -> PostgresServer {
        let bin = try binDirectory()
        var template = Array("/tmp/pgtest-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Failure("mkdtemp failed: errno \(errno)") }
        let directory = String(cString: made)
        let runAsPostgres = geteuid() == 0
        let server = PostgresServer(directory: directory, bin: bin, runAsPostgres: runAsPostgres, port: Int.random(in: 20000...60000))
        do {
            if runAsPostgres {
                guard let entry = getpwnam("postgres") else { throw Failure("running as root but there is no postgres user") }
                guard chown(directory, entry.pointee.pw_uid, entry.pointee.pw_gid) == 0 else { throw Failure("chown failed: errno \(errno)") }
            }
            try server.runServerTool("initdb", ["-D", server.dataDirectory, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"])
            let settings = """

                listen_addresses = ''
                unix_socket_directories = '\(directory)'
                port = \(server.port)
                fsync = off
                synchronous_commit = off
                full_page_writes = off
                max_connections = 200
                shared_buffers = 16MB
                log_min_messages = warning

                """
            let conf = "\(server.dataDirectory)/postgresql.conf"
            guard let handle = FileHandle(forWritingAtPath: conf) else { throw Failure("cannot open postgresql.conf") }
            handle.seekToEndOfFile()
            handle.write(Data(settings.utf8))
            handle.closeFile()
            try server.startAgain()
            _ = try server.psql("CREATE DATABASE fleet", database: "postgres")
        } catch {
            server.shutdown()
            throw error
        }
        return server
    }

    private init(directory: String, bin: String, runAsPostgres: Bool, port: Int) {
        self.directory = directory
        self.socketDirectory = directory
        self.dataDirectory = "\(directory)/data"
        self.binDirectory = bin
        self.runAsPostgres = runAsPostgres
        self.port = port
    }

    deinit { shutdown() }

    /// Starts the server (again) on the same data directory and port, waiting until it accepts
    /// connections. After `kill9()` it retries while the old backends exit.
    public func startAgain() throws {
        var lastError: (any Error)?
        for _ in 0..<20 {
            do {
                try runServerTool("pg_ctl", ["-D", dataDirectory, "-l", "\(directory)/server.log", "-w", "-t", "30", "start"])
                return
            } catch {
                lastError = error
                usleep(250_000)
            }
        }
        throw lastError ?? Failure("pg_ctl start failed")
    }

    /// Stops the server (fast: connections are closed), keeping its data.
    public func stop() throws {
        try runServerTool("pg_ctl", ["-D", dataDirectory, "-w", "-t", "30", "-m", "fast", "stop"])
    }

    /// Kills the postmaster with SIGKILL (a crash; its backends exit on their own).
    public func kill9() throws {
        guard let text = try? String(contentsOfFile: "\(dataDirectory)/postmaster.pid", encoding: .utf8),
              let first = text.split(separator: "\n").first, let pid = pid_t(first.trimmingCharacters(in: .whitespaces)) else {
            throw Failure("no postmaster.pid")
        }
        guard kill(pid, SIGKILL) == 0 else { throw Failure("kill failed: errno \(errno)") }
    }

    /// Stops the server (immediately) and removes the directory. Idempotent.
    public func shutdown() {
        let first = lock.withLock { () -> Bool in
            defer { removed = true }
            return !removed
        }
        guard first else { return }
        if FileManager.default.fileExists(atPath: "\(dataDirectory)/postmaster.pid") {
            _ = try? runServerTool("pg_ctl", ["-D", dataDirectory, "-w", "-t", "30", "-m", "immediate", "stop"])
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Runs `sql` with `psql -At` (unaligned, tuples only, `|` between columns) and returns its
    /// output without the trailing newline; throws with psql's error output on failure.
    @discardableResult
    public func psql(_ sql: String, database: String = "fleet") throws -> String {
        let bundled = "\(binDirectory)/psql"
        let psql = FileManager.default.isExecutableFile(atPath: bundled) ? bundled : Self.psqlPath
        let output = try run(psql, ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", socketDirectory, "-p", String(port),
                                              "-U", "postgres", "-d", database, "-c", sql], asPostgres: false)
        return output.hasSuffix("\n") ? String(output.dropLast()) : output
    }

    /// Creates a database and returns its URL.
    public func createDatabase(_ name: String) throws -> String {
        try psql("CREATE DATABASE \"\(name)\"", database: "postgres")
        return url(database: name)
    }

    // MARK: processes

    private func runServerTool(_ tool: String, _ arguments: [String]) throws {
        _ = try run("\(binDirectory)/\(tool)", arguments, asPostgres: runAsPostgres)
    }

    /// Runs a program (posix_spawn, then waitpid: Foundation's Process can miss the exit of a
    /// child whose own child daemonizes) with its output in a file (a pipe would be held open by
    /// the postmaster), returning stdout and stderr together; throws when it exits non-zero.
    private func run(_ executable: String, _ arguments: [String], asPostgres: Bool) throws -> String {
        // As postgres, from `/` (the tests' working directory may be closed to that user).
        let argv = asPostgres
            ? [Self.runuser, "-u", "postgres", "--", "/bin/sh", "-c", "cd / && exec \"$0\" \"$@\"", executable] + arguments
            : [executable] + arguments
        let program = asPostgres ? Self.runuser : executable
        let outputPath = "\(directory)/.out-\(UUID().uuidString)"
        defer { unlink(outputPath) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var cArguments = argv.map { strdup($0) } + [nil]
        defer { for argument in cArguments { free(argument) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, program, &actions, nil, &cArguments, environ)
        guard spawned == 0 else { throw Failure("cannot run \(program): errno \(spawned)") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 {
            guard errno == EINTR else { throw Failure("waitpid failed: errno \(errno)") }
        }
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        let exited = (status & 0x7F) == 0
        let code = (status >> 8) & 0xFF
        guard exited, code == 0 else {
            let name = executable.split(separator: "/").last.map(String.init) ?? executable
            throw Failure("\(name) \(arguments.first ?? "") failed (status \(status)): \(text)")
        }
        return text
    }

    private static var psqlPath: String {
        ["/usr/bin/psql", "/usr/local/bin/psql"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/bin/psql"
    }

    private static var runuser: String {
        ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/sbin/runuser"
    }

    private static func binDirectory() throws -> String {
        if let bin = ProcessInfo.processInfo.environment["PG_BIN"], FileManager.default.fileExists(atPath: "\(bin)/initdb") {
            return bin
        }
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            .compactMap { name -> (Double, String)? in Double(name).map { ($0, name) } }
            .sorted { $0.0 > $1.0 }
        for (_, name) in versions where FileManager.default.fileExists(atPath: "\(root)/\(name)/bin/initdb") {
            return "\(root)/\(name)/bin"
        }
        throw Failure("PostgreSQL server binaries not found under \(root) (apt-get install postgresql)")
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }
}
