import Foundation
import NIOCore
import NIOPosix
import SidecarCore
@testable import SidecarProxy
import SidecarTestSupport
import XCTest

/// /metrics, /readyz and who may ask.
final class AdminTests: XCTestCase {
    /// Python with prometheus_client, set up by `make test`.
    static var python: String? { ProcessInfo.processInfo.environment["LLM_SIDECAR_TEST_PYTHON"] }

    func testMetricsParseAsPrometheusTextWithTheExpectedSeries() async throws {
        guard let python = Self.python else {
            throw XCTSkip("run through `make test`, which installs prometheus_client (LLM_SIDECAR_TEST_PYTHON)")
        }
        let pki = try TestPKI()
        defer { pki.cleanUp() }
        let upstream = try await FakeUpstream.start(tls: pki.serverTLS())
        defer { Task { await upstream.stop() } }
        let ca = try pki.caFile()
        let h = try await ProxyHarness(upstreamURL: upstream.url, upstream: { $0.caFile = ca })
        defer { Task { await h.stop() } }
        for _ in 0..<3 { _ = try await h.request() }
        _ = try await h.request(headers: [("x-fake-status", "503")])
        _ = try await h.request(headers: [("x-fake-events", "3")], body: #"{"stream":true}"#)
        _ = try await h.request("GET", "/nowhere")
        let metrics = try await h.request("GET", "/metrics")
        XCTAssertEqual(metrics.status, 200)
        XCTAssertEqual(metrics.header("content-type"), "text/plain; version=0.0.4; charset=utf-8")
        let text = try pki.write("metrics.txt", metrics.body)

        // Prometheus' own parser: every family and sample, as name{labels} value lines.
        let script = """
        import sys
        from prometheus_client.parser import text_string_to_metric_families
        for family in text_string_to_metric_families(open(sys.argv[1]).read()):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                print(f"{s.name}{{{labels}}} {s.value}")
        """
        let (status, parsed, errors) = try runPython(python, script, [text])
        XCTAssertEqual(status, 0, "prometheus_client could not parse /metrics: \(errors)")
        var samples: [String: Double] = [:]
        for line in parsed.split(separator: "\n") {
            let parts = line.split(separator: " ")
            samples[String(parts[0])] = Double(parts[1])
        }
        XCTAssertEqual(samples["llm_sidecar_requests_total{status_class=2xx,upstream=fake}"], 4)
        XCTAssertEqual(samples["llm_sidecar_requests_total{status_class=5xx,upstream=fake}"], 1)
        XCTAssertEqual(samples["llm_sidecar_errors_total{code=not_found}"], 1)
        XCTAssertEqual(samples["llm_sidecar_request_duration_seconds_count{upstream=fake}"], 5)
        XCTAssertEqual(samples["llm_sidecar_upstream_first_byte_seconds_count{upstream=fake}"], 5)
        XCTAssertEqual(samples["llm_sidecar_stream_first_token_seconds_count{upstream=fake}"], 1)
        XCTAssertEqual(samples["llm_sidecar_stream_duration_seconds_count{upstream=fake}"], 1)
        XCTAssertEqual(samples["llm_sidecar_overhead_seconds_count{}"], 5)
        let created = try XCTUnwrap(samples["llm_sidecar_upstream_connections_created_total{upstream=fake}"])
        XCTAssertGreaterThanOrEqual(created, 1)
        XCTAssertEqual(samples["llm_sidecar_upstream_connections{state=open,upstream=fake}"], created, "every connection made is still open and pooled")
        XCTAssertEqual(samples["llm_sidecar_upstream_connections{state=idle,upstream=fake}"], created)
        XCTAssertEqual(samples["llm_sidecar_upstream_connections_reused_total{upstream=fake}"], 5 - created)
        let full = samples["llm_sidecar_tls_handshakes_total{resumed=false,upstream=fake}"] ?? 0
        let resumed = samples["llm_sidecar_tls_handshakes_total{resumed=true,upstream=fake}"] ?? 0
        XCTAssertEqual(full + resumed, created, "one handshake per connection")
        XCTAssertEqual(full, 1, "after the first, connections resume its TLS session")
        XCTAssertEqual(samples["llm_sidecar_retries_total{reason=stale_connection,upstream=fake}"], 0)
        XCTAssertFalse(metrics.body.contains("/nowhere"), "paths never become labels")
    }

    func testReadyzReportsUnusableUpstreamsAndRecovers() async throws {
        let fake = try await FakeUpstream.start()
        let port = fake.port
        await fake.stop()
        let h = try await ProxyHarness(upstreamURL: "http://127.0.0.1:\(port)", threads: 1)
        defer { Task { await h.stop() } }
        let ready = try await h.request("GET", "/readyz")
        XCTAssertEqual(ready.status, 200)
        XCTAssertEqual(ready.body, #"{"status":"ready"}"#)
        for _ in 0..<3 {
            let r = try await h.request()
            XCTAssertEqual(r.status, 502)
        }
        let notReady = try await h.request("GET", "/readyz")
        XCTAssertEqual(notReady.status, 503)
        let obj = try JSONSerialization.jsonObject(with: Data(notReady.body.utf8)) as? [String: Any]
        XCTAssertEqual(obj?["status"] as? String, "not ready")
        let reasons = obj?["reasons"] as? [String] ?? []
        XCTAssertEqual(reasons.count, 1)
        XCTAssertTrue(reasons.first?.hasPrefix("upstream fake: 3 consecutive connection attempts failed, last: upstream connect failed: 127.0.0.1:\(port): connection refused") ?? false, "\(reasons)")
    }

    func testOnlyLocalClientsAreTrustedWithoutAToken() throws {
        XCTAssertTrue(DownstreamHandler.isLocal(try SocketAddress(ipAddress: "127.0.0.1", port: 1)))
        XCTAssertTrue(DownstreamHandler.isLocal(try SocketAddress(ipAddress: "127.3.4.5", port: 1)))
        XCTAssertTrue(DownstreamHandler.isLocal(try SocketAddress(ipAddress: "::1", port: 1)))
        XCTAssertTrue(DownstreamHandler.isLocal(try SocketAddress(unixDomainSocketPath: "/tmp/x.sock")))
        XCTAssertFalse(DownstreamHandler.isLocal(try SocketAddress(ipAddress: "10.0.0.7", port: 1)))
        XCTAssertFalse(DownstreamHandler.isLocal(try SocketAddress(ipAddress: "192.168.1.1", port: 1)))
        XCTAssertFalse(DownstreamHandler.isLocal(try SocketAddress(ipAddress: "2001:db8::1", port: 1)))
        XCTAssertFalse(DownstreamHandler.isLocal(nil))
    }

    func testAdminTokenComesFromTheEnvironmentNeverTheFile() throws {
        let c = try SidecarConfiguration.load(toml: """
            [server]
            admin_token_env = "SCRAPE_TOKEN"
            [upstreams.a]
            url = "http://127.0.0.1:9"
            """, file: "t.toml", environment: ["SCRAPE_TOKEN": "tok"], fileExists: { _ in false })
        XCTAssertEqual(c.server.adminToken, .environment("SCRAPE_TOKEN"))
        XCTAssertEqual(try APIKeys.read(c.server.adminToken, key: "server.admin_token", environment: ["SCRAPE_TOKEN": "tok"]), "tok")
        XCTAssertThrowsError(try SidecarConfiguration.load(toml: "[server]\nadmin_token = \"tok\"\n[upstreams.a]\nurl = \"http://x\"\n",
                                                           file: "t.toml", environment: [:], fileExists: { _ in false }))
    }
}
