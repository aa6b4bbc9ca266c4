import Foundation
import NIOCore
import NIOPosix
import SidecarTestSupport
import XCTest

/// SIGHUP and SIGTERM on the real binary, with traffic in flight.
final class ReloadAndStopTests: XCTestCase {
    func config(upstream: String, listen: String = "127.0.0.1:0") -> String {
        """
        [server]
        listen = "\(listen)"
        threads = 2
        drain_timeout = "10s"
        [upstreams.main]
        url = "\(upstream)"
        """
    }

    func testReloadUnderLoadAndGracefulStopMidStream() async throws {
        let a = try await FakeUpstream.start()
        let b = try await FakeUpstream.start()
        let pki = try TestPKI()
        defer { pki.cleanUp() }
        let configPath = try pki.write("config.toml", config(upstream: a.url))
        let notify = try NotifySocket(path: pki.directory + "/notify.sock")
        defer { notify.close() }

        let sidecar = try LaunchedSidecar.launch(["serve", "--config", configPath], environment: ["NOTIFY_SOCKET": notify.path])
        let (p, lines, port) = (sidecar.process, sidecar.lines, sidecar.port)
        XCTAssertNotNil(notify.receive(until: { $0.contains("READY=1") }, seconds: 10))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

        // Traffic during the reload: a stream that spans it, and a stream of short requests on
        // one keep-alive connection.
        let streamConnection = try await TestHTTPConnection.connect(port: port, group: group)
        async let spanning = streamConnection.request("POST", "/v1/chat/completions",
            headers: [("x-fake-events", "20"), ("x-fake-interval-ms", "50")], body: #"{"stream":true}"#)
        let looping = Task { () -> [Int] in
            let c = try await TestHTTPConnection.connect(port: port, group: group)
            var statuses: [Int] = []
            for _ in 0..<60 {
                statuses.append(try await c.request("POST", "/v1/chat/completions", body: "{}").status)
                try await Task.sleep(nanoseconds: 10_000_000)
            }
            await c.close()
            return statuses
        }
        try await Task.sleep(nanoseconds: 200_000_000)
        try config(upstream: b.url).write(toFile: configPath, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        XCTAssertNotNil(notify.receive(until: { $0.hasPrefix("RELOADING=1\nMONOTONIC_USEC=") }, seconds: 5))
        XCTAssertNotNil(notify.receive(until: { $0.contains("READY=1") && $0.contains("(reloaded)") }, seconds: 5))

        let statuses = try await looping.value
        XCTAssertEqual(statuses.count, 60)
        XCTAssertTrue(statuses.allSatisfy { $0 == 200 }, "no request fails across a reload: \(statuses)")
        let stream = try await spanning
        XCTAssertTrue(stream.complete, "the stream in flight finished on the old configuration")
        XCTAssertTrue(stream.body.hasSuffix("data: [DONE]\n\n"))
        XCTAssertEqual(a.counters.streamsCompleted, 1)
        XCTAssertGreaterThan(b.counters.requests, 0, "the new configuration took effect")
        let beforeB = b.counters.requests
        let after = try await streamConnection.request("POST", "/v1/chat/completions", body: "{}")
        XCTAssertEqual(after.status, 200)
        XCTAssertEqual(b.counters.requests, beforeB + 1, "a keep-alive connection from before the reload uses the new upstream")

        // An invalid file is refused and the running configuration keeps serving.
        try "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 2\n[upstreams.main]\nurl = \"ftp://nope\"\n".write(toFile: configPath, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        let refused = notify.receive(until: { $0.contains("last reload refused") }, seconds: 5)
        XCTAssertTrue(refused?.contains("upstreams.main.url") ?? false, refused ?? "no message")
        let stillServing = try await streamConnection.request("POST", "/v1/chat/completions", body: "{}")
        XCTAssertEqual(stillServing.status, 200)

        // A changed listen address needs a restart.
        try config(upstream: b.url, listen: "127.0.0.1:1").write(toFile: configPath, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        XCTAssertNotNil(lines.waitFor("restart to apply it", seconds: 5))

        // SIGTERM mid-stream: the stream completes, then the daemon exits 0.
        async let last = streamConnection.request("POST", "/v1/chat/completions",
            headers: [("x-fake-events", "10"), ("x-fake-interval-ms", "100")], body: #"{"stream":true}"#)
        try await Task.sleep(nanoseconds: 250_000_000)
        kill(p.processIdentifier, SIGTERM)
        let final = try await last
        XCTAssertTrue(final.complete, "a stream in flight at SIGTERM is finished, not cut")
        XCTAssertTrue(final.body.hasSuffix("data: [DONE]\n\n"))
        let closed = await eventually(3) { !streamConnection.isOpen }
        XCTAssertTrue(closed, "after its last response, a keep-alive connection is closed by the draining server")
        XCTAssertNotNil(notify.receive(until: { $0 == "STOPPING=1" }, seconds: 5))
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        await streamConnection.close()
        try await group.shutdownGracefully()
        await a.stop()
        await b.stop()
    }

    func testSecondSignalExitsAtOnceDuringTheDrain() async throws {
        let upstream = try await FakeUpstream.start()
        let pki = try TestPKI()
        defer { pki.cleanUp() }
        let configPath = try pki.write("config.toml", config(upstream: upstream.url))  // drain_timeout 10 s
        let sidecar = try LaunchedSidecar.launch(["serve", "--config", configPath])
        let (p, lines, port) = (sidecar.process, sidecar.lines, sidecar.port)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let c = try await TestHTTPConnection.connect(port: port, group: group)
        // A stream that would take 8 s: the first signal waits for it, the second does not.
        async let stream = c.request("POST", "/v1/chat/completions",
            headers: [("x-fake-events", "80"), ("x-fake-interval-ms", "100")], body: #"{"stream":true}"#)
        try await Task.sleep(nanoseconds: 300_000_000)
        kill(p.processIdentifier, SIGTERM)
        XCTAssertNotNil(lines.waitFor("msg=stopping", seconds: 3))
        try await Task.sleep(nanoseconds: 300_000_000)
        XCTAssertTrue(p.isRunning, "the first signal drains")
        let signalled = Date()
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        XCTAssertLessThan(Date().timeIntervalSince(signalled), 2, "the second signal exits at once")
        XCTAssertEqual(p.terminationStatus, 1)
        let cut = try await stream
        XCTAssertFalse(cut.complete)
        await c.close()
        try await group.shutdownGracefully()
        await upstream.stop()
    }
}
