import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SidecarCore
import SidecarProxy
import SidecarTestSupport
import XCTest

/// `discover = "dns"` end to end: a loopback DNS server whose answer for `pool.test` goes from 2
/// to 3 addresses and back to 1 under a steady load, each address its own FakeUpstream on the
/// same port (127.0.0.1, .2, .3: all loopback on Linux).
final class DNSDiscoveryTests: XCTestCase {
    var fakes: [FakeUpstream] = []
    var dns: FakeDNSServer?
    var harness: ProxyHarness?

    override func tearDown() async throws {
        await harness?.stop()
        for f in fakes { await f.stop() }
        await dns?.stop()
    }

    private func chats(_ f: FakeUpstream) -> Int { f.requests.filter { $0.method == "POST" }.count }

    func testAnswerGoingFrom2To3To1UnderLoadFailsNoRequest() async throws {
        let first = try await FakeUpstream.start(host: "127.0.0.1")
        let port = try XCTUnwrap(URL(string: first.url)?.port)
        fakes = [first]
        for host in ["127.0.0.2", "127.0.0.3"] { fakes.append(try await FakeUpstream.start(host: host, port: port)) }
        let dns = try await FakeDNSServer.start(addresses: ["127.0.0.1", "127.0.0.2"], ttl: 1, group: MultiThreadedEventLoopGroup.singleton)
        self.dns = dns
        let harness = try await ProxyHarness(upstreamURL: "http://pool.test:\(port)", configure: { c in
            c.cache.mode = .off
            c.server.dnsResolver = .init(host: "127.0.0.1", port: dns.port)
            c.models = [.init(name: "m", deployments: [.init(upstream: "fake", model: "m")])]
        }, upstream: { u in
            var d = SidecarConfiguration.Discovery()
            d.minTTL = .milliseconds(100)
            d.maxTTL = .seconds(1)
            d.slowStart = .zero
            u.discovery = d
        })
        self.harness = harness

        // A steady load: four clients, one request after another, until told to stop.
        let outcomes = NIOLockedValueBox<[(status: Int, deployment: String?)]>([])
        let running = NIOLockedValueBox(true)
        let body = #"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
        let load = (0..<4).map { _ in
            Task {
                while running.withLockedValue({ $0 }) {
                    let r = try? await harness.request(body: body)
                    outcomes.withLockedValue { $0.append((r?.status ?? 0, r?.header("x-sidecar-deployment"))) }
                }
            }
        }
        let both = await eventually { self.chats(self.fakes[0]) > 0 && self.chats(self.fakes[1]) > 0 }
        XCTAssertTrue(both, "both first addresses take traffic")
        XCTAssertEqual(chats(fakes[2]), 0)

        // 2 -> 3: the new address takes traffic within one TTL (1 s) of the change, plus a query.
        dns.set(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
        let changed = Date()
        let third = await eventually(3) { self.chats(self.fakes[2]) > 0 }
        XCTAssertTrue(third)
        XCTAssertLessThan(Date().timeIntervalSince(changed), 1.5, "traffic followed within one TTL")

        // Slow requests in flight on every address, then 3 -> 1: .2 and .3 drain.
        let slow = (0..<6).map { _ in
            Task { try await harness.request(headers: [("x-fake-delay-ms", "1500")], body: body) }
        }
        let spread = await eventually { self.fakes.allSatisfy { $0.requests.contains { $0.headers.contains { $0.0.lowercased() == "x-fake-delay-ms" } } } }
        XCTAssertTrue(spread, "a slow request is in flight on every address")
        dns.set(["127.0.0.1"])
        // The leaving addresses show as draining (their slow requests are still in flight)...
        var sawDraining = false
        let deadline = Date().addingTimeInterval(3)
        while !sawDraining, Date() < deadline {
            let health = try await deployments(harness)
            sawDraining = health["fake@127.0.0.2/m"] == "draining" && health["fake@127.0.0.3/m"] == "draining"
            if !sawDraining { try await Task.sleep(nanoseconds: 20_000_000) }
        }
        XCTAssertTrue(sawDraining)
        // ...and take nothing new while the remaining one takes the load.
        let before = fakes.map(chats)
        let moved = await eventually { self.chats(self.fakes[0]) >= before[0] + 20 }
        XCTAssertTrue(moved)
        XCTAssertEqual(chats(fakes[1]), before[1], "no new request on a draining address")
        XCTAssertEqual(chats(fakes[2]), before[2], "no new request on a draining address")
        for t in slow {
            let r = try await t.value
            XCTAssertEqual(r.status, 200, "an in-flight request on a leaving address finished")
        }
        running.withLockedValue { $0 = false }
        for t in load { await t.value }
        let all = outcomes.withLockedValue { $0 }
        XCTAssertGreaterThan(all.count, 20)
        XCTAssertEqual(all.filter { $0.status != 200 }.count, 0, "no request failed")
        XCTAssertTrue(all.contains { $0.deployment == "fake@127.0.0.3/m" }, "x-sidecar-deployment names the address")
        // Drained and empty: gone from /stats.
        let gone = try await deployments(harness)
        XCTAssertEqual(Array(gone.keys), ["fake@127.0.0.1/m"], "\(gone)")
    }

    /// `/stats` routing for group m: deployment name -> health.
    private func deployments(_ harness: ProxyHarness) async throws -> [String: String] {
        let r = try await harness.request("GET", "/stats")
        let stats = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any])
        let group = try XCTUnwrap((stats["routing"] as? [String: Any])?["m"] as? [[String: Any]], r.body)
        return Dictionary(uniqueKeysWithValues: group.map { ($0["deployment"] as? String ?? "?", $0["health"] as? String ?? "?") })
    }
}
