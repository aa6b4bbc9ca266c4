import Foundation
import NIOPosix
import SidecarTestSupport
import XCTest

/// The daemon under systemd's protocols, with the real binary: the unit files verify, sd_notify
/// messages arrive on a real `$NOTIFY_SOCKET`, and socket activation serves an inherited fd.
final class SystemdTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    func shell(_ args: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    func testUnitFilesPassSystemdAnalyzeVerifyAndSecurity() throws {
        let pki = try TestPKI()
        defer { pki.cleanUp() }
        let unit = try String(contentsOf: Self.root.appendingPathComponent("systemd/llm-sidecar.service"), encoding: .utf8)
            .replacingOccurrences(of: "/usr/local/bin/llm-sidecar", with: BinaryTests.binary)
        let service = try pki.write("llm-sidecar.service", unit)
        let socket = try pki.write("llm-sidecar.socket", try String(contentsOf: Self.root.appendingPathComponent("systemd/llm-sidecar.socket"), encoding: .utf8))
        let (status, output) = try shell(["systemd-analyze", "verify", service, socket])
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(output.trimmingCharacters(in: .whitespacesAndNewlines), "", "verify must be silent: \(output)")

        let (_, security) = try shell(["systemd-analyze", "security", "--offline=true", service])
        let line = try XCTUnwrap(security.split(separator: "\n").first { $0.contains("Overall exposure level") }, security)
        let score = try XCTUnwrap(line.split(separator: " ").compactMap { Double($0) }.first)
        XCTAssertLessThanOrEqual(score, 2.0, "systemd-analyze security must rate the unit OK or better: \(line)")
    }

    func testNotifiesReadyWatchdogStatusAndStopping() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let pki = try TestPKI()
        defer { pki.cleanUp() }
        let notify = try NotifySocket(path: pki.directory + "/notify.sock")
        defer { notify.close() }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: BinaryTests.binary)
        p.arguments = ["serve", "--upstream", upstream.url, "--listen", "127.0.0.1:0", "--threads", "1"]
        p.environment = ["PATH": "/usr/bin:/bin", "XDG_STATE_HOME": ProxyHarness.temporaryDirectory(), "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"]
        p.standardError = FileHandle.nullDevice
        try p.run()
        let ready = try XCTUnwrap(notify.receive(until: { $0.contains("READY=1") }, seconds: 10))
        XCTAssertTrue(ready.contains("STATUS=serving on 127.0.0.1:"), ready)
        XCTAssertNotNil(notify.receive(until: { $0 == "WATCHDOG=1" }, seconds: 3), "WATCHDOG=1 at half of WatchdogSec")
        kill(p.processIdentifier, SIGTERM)
        XCTAssertNotNil(notify.receive(until: { $0 == "STOPPING=1" }, seconds: 5))
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
    }

    func testTermRightAfterReadyIsNeverLost() async throws {
        let pki = try TestPKI()
        defer { pki.cleanUp() }
        for round in 0..<5 {
            let notify = try NotifySocket(path: pki.directory + "/notify-\(round).sock")
            defer { notify.close() }
            let p = Process()
            p.executableURL = URL(fileURLWithPath: BinaryTests.binary)
            p.arguments = ["serve", "--upstream", "http://127.0.0.1:9", "--listen", "127.0.0.1:0", "--threads", "1"]
            p.environment = ["PATH": "/usr/bin:/bin", "XDG_STATE_HOME": ProxyHarness.temporaryDirectory(), "NOTIFY_SOCKET": notify.path]
            p.standardError = FileHandle.nullDevice
            try p.run()
            XCTAssertNotNil(notify.receive(until: { $0.contains("READY=1") }, seconds: 10))
            kill(p.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(5)
            while p.isRunning, Date() < deadline { usleep(10_000) }
            XCTAssertFalse(p.isRunning, "round \(round): SIGTERM right after READY=1 was lost")
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0)
        }
    }

    func testSocketActivationServesTheInheritedListener() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        // What systemd does for a .socket unit: bind, listen, start the service with the socket as
        // fd 3 and LISTEN_PID/LISTEN_FDS set. A shell stands in for systemd to put it at fd 3.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, len) } }
        listen(listener, 128)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) } }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        // posix_spawn with dup2(listener, 3), as systemd does; the shell sets LISTEN_PID to its own
        // pid, which exec keeps for the daemon.
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_adddup2(&actions, listener, 3)
        let script = "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" serve --upstream \(upstream.url) --threads 1 2>/dev/null"
        let argv: [String] = ["/bin/sh", "-c", script, BinaryTests.binary]
        var cargs = argv.map { strdup($0) } + [nil]
        var cenv: [UnsafeMutablePointer<CChar>?] = [strdup("PATH=/usr/bin:/bin"), strdup("XDG_STATE_HOME=" + ProxyHarness.temporaryDirectory()), nil]
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, "/bin/sh", &actions, nil, &cargs, &cenv)
        posix_spawn_file_actions_destroy(&actions)
        cargs.forEach { free($0) }
        cenv.forEach { free($0) }
        XCTAssertEqual(rc, 0)
        Glibc.close(listener)
        defer {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        // The socket was listening before the daemon started: connecting succeeds at once and
        // the request waits in the backlog until the daemon accepts it.
        let c = try await TestHTTPConnection.connect(port: port, group: group)
        let r = try await c.request("POST", "/v1/chat/completions", body: "{}")
        XCTAssertEqual(r.status, 200)
        await c.close()
        try await group.shutdownGracefully()
    }
}

/// A unix datagram socket standing in for systemd's notification socket.
final class NotifySocket: @unchecked Sendable {
    let path: String
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard rc == 0 else { throw POSIXError(.EADDRINUSE) }
        var tv = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Every message received so far, in order.
    private(set) var messages: [String] = []

    /// Waits for a message matching `condition`; returns it.
    func receive(until condition: (String) -> Bool, seconds: Double) -> String? {
        if let m = messages.first(where: condition) { return m }
        let deadline = Date().addingTimeInterval(seconds)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline {
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { continue }
            let m = String(decoding: buffer[0..<n], as: UTF8.self)
            messages.append(m)
            if condition(m) { return m }
        }
        return nil
    }

    func close() {
        Glibc.close(fd)
        unlink(path)
    }
}
