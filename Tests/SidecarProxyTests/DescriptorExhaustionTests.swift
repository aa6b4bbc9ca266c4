import Foundation
import NIOPosix
import SidecarTestSupport
import XCTest

/// The real binary run out of file descriptors by idle clients: it must pause accepting rather
/// than spin on EMFILE, say so once, count it, and serve again once descriptors free up.
final class DescriptorExhaustionTests: XCTestCase {
    func testOutOfDescriptorsTheListenerBacksOffLogsOnceAndRecovers() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let sidecar = try LaunchedSidecar.launch(["serve", "--upstream", upstream.url, "--listen", "127.0.0.1:0", "--threads", "1"])
        let pid = sidecar.process.processIdentifier
        defer { if sidecar.process.isRunning { kill(pid, SIGKILL); sidecar.process.waitUntilExit() } }

        // Room for 16 more descriptors than the idle daemon holds; then 48 clients connect (the
        // kernel completes their handshakes into the 1,024 backlog whether or not they are accepted).
        let limit = try Self.openDescriptors(pid) + 16
        let prlimit = Process()
        prlimit.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
        prlimit.arguments = ["--pid", "\(pid)", "--nofile=\(limit):\(limit)"]
        try prlimit.run()
        prlimit.waitUntilExit()
        XCTAssertEqual(prlimit.terminationStatus, 0, "prlimit set the daemon's RLIMIT_NOFILE")
        var clients: [Int32] = []
        defer { clients.forEach { close($0) } }
        for _ in 0..<48 { clients.append(try Self.connect(port: sidecar.port)) }
        let exhausted = await eventually(10) { ((try? Self.openDescriptors(pid)) ?? 0) >= limit }
        XCTAssertTrue(exhausted, "the daemon reached its descriptor limit")

        // A measurement window, not synchronisation: CPU time the daemon used while exhausted.
        // Spinning on EMFILE used ~100% of a core; backing off 200 ms at a time uses ~0.
        let before = try Self.cpuSeconds(pid)
        let start = Date()
        try await Task.sleep(nanoseconds: 2_000_000_000)
        let used = try Self.cpuSeconds(pid) - before
        let share = used / Date().timeIntervalSince(start)
        XCTAssertLessThan(share, 0.10, "out of descriptors the daemon used \(Int(share * 100))% of a core")

        XCTAssertNotNil(sidecar.lines.waitFor("accepting connections failed", seconds: 5), sidecar.lines.all)
        // Free the descriptors: the daemon closes the accepted connections, drains the backlog
        // (each of those is closed too) and serves a new client.
        clients.forEach { close($0) }
        clients = []
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var served: TestResponse?
        let deadline = Date().addingTimeInterval(10)
        while served == nil, Date() < deadline {
            if let c = try? await TestHTTPConnection.connect(port: sidecar.port, group: group) {
                served = try? await c.request("POST", "/v1/chat/completions", body: #"{"model":"gpt-4o-mini","messages":[]}"#)
                await c.close()
            }
        }
        XCTAssertEqual(served?.status, 200, "the daemon serves again once descriptors are free")

        let recovered = try XCTUnwrap(sidecar.lines.waitFor("accepting connections again", seconds: 5), sidecar.lines.all)
        let failures = try XCTUnwrap(recovered.range(of: #"failures=(\d+)"#, options: .regularExpression)
            .map { Int(recovered[$0].dropFirst("failures=".count))! })
        // At most one failed accept per 200 ms pause (plus the first): a spin made thousands.
        XCTAssertGreaterThan(failures, 0)
        XCTAssertLessThan(failures, 100, recovered)
        let log = sidecar.lines.all
        XCTAssertEqual(log.components(separatedBy: "accepting connections failed").count - 1, 1, "one warning per episode:\n\(log)")
        XCTAssertEqual(log.components(separatedBy: "accepting connections again").count - 1, 1, "one recovery line per episode")
        XCTAssertTrue(log.contains("level=warning") && log.contains("reason=emfile"), log)

        let c = try await TestHTTPConnection.connect(port: sidecar.port, group: group)
        let metrics = try await c.request("GET", "/metrics")
        await c.close()
        try await group.shutdownGracefully()
        let line = metrics.body.split(separator: "\n").first { $0.hasPrefix(#"llm_sidecar_accept_errors_total{reason="emfile"}"#) }
        let counted = try XCTUnwrap(line.flatMap { Int($0.split(separator: " ").last ?? "") }, metrics.body)
        XCTAssertGreaterThanOrEqual(counted, failures, "every failed accept is counted")
        kill(pid, SIGTERM)
        sidecar.process.waitUntilExit()
        XCTAssertEqual(sidecar.process.terminationStatus, 0)
    }

    /// Descriptors `pid` has open now.
    static func openDescriptors(_ pid: Int32) throws -> Int {
        try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count
    }

    /// User plus system CPU time of `pid` so far, from /proc/PID/stat (fields 14 and 15, in ticks).
    static func cpuSeconds(_ pid: Int32) throws -> Double {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // Fields after the command name, which is in parentheses and may contain spaces: field 3 first.
        let rest = stat[stat.index(after: try XCTUnwrap(stat.lastIndex(of: ")")))...].split(separator: " ")
        let ticks = try XCTUnwrap(Double(rest[11])) + XCTUnwrap(Double(rest[12]))
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// A blocking TCP connection to 127.0.0.1:`port`, left idle.
    static func connect(port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .ECONNREFUSED)
        }
        return fd
    }
}
