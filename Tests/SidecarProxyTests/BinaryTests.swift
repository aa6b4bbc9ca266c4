import Foundation
import NIOPosix
import SidecarTestSupport
import XCTest

/// The real `llm-sidecar` binary, as an operator runs it.
final class BinaryTests: XCTestCase {
    /// The executable built next to the test bundle.
    static var binary: String {
        let dir = URL(fileURLWithPath: CommandLine.arguments.first { $0.contains(".xctest") } ?? CommandLine.arguments[0])
            .deletingLastPathComponent()
        return dir.appendingPathComponent("llm-sidecar").path
    }

    struct Run { var status: Int32; var stdout: String; var stderr: String }

    func run(_ args: [String], env: [String: String] = [:]) throws -> Run { try Self.run(args, env: env) }

    /// Runs the binary to its end, collecting its output.
    static func run(_ args: [String], env: [String: String] = [:]) throws -> Run {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = args
        p.environment = ["PATH": "/usr/bin:/bin"].merging(env) { $1 }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Run(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }

    func testJSONLogFormat() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let pki = try TestPKI()
        defer { pki.cleanUp() }
        let config = try pki.write("c.toml", "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[upstreams.up]\nurl = \"\(upstream.url)\"\n[log]\nformat = \"json\"\n")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = ["serve", "--config", config]
        p.environment = ["PATH": "/usr/bin:/bin"]
        let err = Pipe()
        p.standardError = err
        try p.run()
        let lines = LineReader(err.fileHandleForReading)
        let listening = try XCTUnwrap(lines.waitFor("listening", seconds: 10))
        let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(listening.utf8)) as? [String: String])
        XCTAssertEqual(obj["msg"], "listening")
        XCTAssertEqual(obj["level"], "info")
        XCTAssertNotNil(obj["ts"])
        XCTAssertTrue(obj["address"]?.hasPrefix("127.0.0.1:") ?? false)
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
    }

    /// `threads` defaults to the CPUs the process may run on: pinned to one CPU, one event loop
    /// (it was the machine's core count, so pinned loops took turns on one CPU).
    func testDefaultThreadsFollowTheAffinityMask() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let args = ["serve", "--upstream", upstream.url, "--listen", "127.0.0.1:0"]
        let pinned = try LaunchedSidecar.launch(args, wrapper: ["/usr/bin/taskset", "-c", "0"])
        let line = pinned.lines.waitFor("listening", seconds: 1) ?? ""
        kill(pinned.process.processIdentifier, SIGTERM)
        pinned.process.waitUntilExit()
        XCTAssertTrue(line.contains("threads=1"), line)
        XCTAssertEqual(pinned.process.terminationStatus, 0)
    }

    func testVersion() throws {
        let r = try run(["version"])
        XCTAssertEqual(r.status, 0)
        XCTAssertTrue(r.stdout.hasPrefix("llm-sidecar "), r.stdout)
    }

    func testCheckConfigAcceptsTheShippedFileAndNamesProblems() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let shipped = root.appendingPathComponent("etc/llm-sidecar/config.toml").path
        let ok = try run(["check-config", "--config", shipped], env: ["OPENAI_API_KEY": "sk-test"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("OK"), ok.stdout)

        let noKey = try run(["check-config", "--config", shipped])
        XCTAssertEqual(noKey.status, 78)
        XCTAssertTrue(noKey.stderr.contains("upstreams.openai.api_key_env: environment variable OPENAI_API_KEY is not set"), noKey.stderr)
        XCTAssertFalse(noKey.stderr.contains("sk-"), "no key material in errors")

        let pki = try TestPKI()
        defer { pki.cleanUp() }
        let bad = try pki.write("bad.toml", "[server]\nlisten = \"127.0.0.1:8080\"\ntreads = 4\n[upstreams.a]\nurl = \"http://x\"\n")
        let r = try run(["check-config", "--config", bad])
        XCTAssertEqual(r.status, 78)
        XCTAssertEqual(r.stderr, "\(bad):3: server.treads: unknown key (see etc/llm-sidecar/config.toml for every option)\n")

        let missing = try run(["check-config", "--config", "/nonexistent.toml"])
        XCTAssertEqual(missing.status, 78)
        XCTAssertEqual(missing.stderr, "/nonexistent.toml: cannot read the file\n")
    }

    func testZeroConfigServeForwardsAndStopsOnSIGTERM() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let sidecar = try LaunchedSidecar.launch(["serve", "--upstream", upstream.url, "--listen", "127.0.0.1:0", "--threads", "1"],
                                                 environment: ["OPENAI_API_KEY": "sk-from-env"])
        let (p, lines, port) = (sidecar.process, sidecar.lines, sidecar.port)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let c = try await TestHTTPConnection.connect(port: port, group: group)
        let r = try await c.request("POST", "/v1/chat/completions", body: #"{"model": "gpt-4o-mini", "messages": []}"#)
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(upstream.requests.first?.header("authorization"), "Bearer sk-from-env")
        let access = try XCTUnwrap(lines.waitFor("msg=request", seconds: 3), "one access line per request")
        for field in ["level=info", "method=POST", "path=/v1/chat/completions", "status=200", "deployment=default",
                      "model=gpt-4o-mini", "attempts=1", "upstream_ms=", "total_ms=", "cache=bypass"] {
            XCTAssertTrue(access.contains(field), "\(field) missing in: \(access)")
        }
        await c.close()
        try await group.shutdownGracefully()

        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        XCTAssertNotNil(lines.waitFor("stopped", seconds: 5))
        XCTAssertFalse(lines.all.contains("sk-from-env"), "the key never appears in logs")
    }
}

/// The real binary started with `arguments`, its stderr collected, and the port it listens on.
struct LaunchedSidecar {
    let process: Process
    let lines: LineReader
    let port: Int

    /// - Parameter wrapper: a command the daemon runs under, e.g. `["/usr/bin/taskset", "-c", "0"]`.
    static func launch(_ arguments: [String], environment: [String: String] = [:], wrapper: [String] = []) throws -> LaunchedSidecar {
        let p = Process()
        let command = wrapper + [BinaryTests.binary] + arguments
        p.executableURL = URL(fileURLWithPath: command[0])
        p.arguments = Array(command.dropFirst())
        // A private state directory, so the default cache path is never the tester's own.
        p.environment = ["PATH": "/usr/bin:/bin", "XDG_STATE_HOME": ProxyHarness.temporaryDirectory()].merging(environment) { $1 }
        let err = Pipe()
        p.standardError = err
        try p.run()
        let lines = LineReader(err.fileHandleForReading)
        let listening = try XCTUnwrap(lines.waitFor("listening", seconds: 10), "the daemon never said it was listening")
        let port = try XCTUnwrap(listening.range(of: #"address=127\.0\.0\.1:(\d+)"#, options: .regularExpression).map {
            Int(listening[$0].split(separator: ":").last!)!
        })
        return LaunchedSidecar(process: p, lines: lines, port: port)
    }
}

/// Collects a child's stderr lines as they come.
final class LineReader: @unchecked Sendable {
    private let lock = NSLock()
    private var text = ""

    init(_ handle: FileHandle) {
        handle.readabilityHandler = { [weak self] h in
            let data = h.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.lock()
            self.text += String(decoding: data, as: UTF8.self)
            self.lock.unlock()
        }
    }

    var all: String {
        lock.lock()
        defer { lock.unlock() }
        return text
    }

    func waitFor(_ needle: String, seconds: Double) -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let line = all.split(separator: "\n").first(where: { $0.contains(needle) }) { return String(line) }
            usleep(20_000)
        }
        return nil
    }
}
