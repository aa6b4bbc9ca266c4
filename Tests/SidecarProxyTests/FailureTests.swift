import Foundation
import NIOCore
import NIOPosix
import SidecarCore
import SidecarProxy
import SidecarTLS
import SidecarTestSupport
import XCTest

/// Every proxy-side failure: the right status, an OpenAI-shaped body, a message naming the cause,
/// and the daemon keeps serving.
final class FailureTests: XCTestCase {
    var pki: TestPKI!
    var upstream: FakeUpstream?
    var harness: ProxyHarness?

    override func setUp() async throws { pki = try TestPKI() }

    override func tearDown() async throws {
        await harness?.stop()
        await upstream?.stop()
        pki.cleanUp()
    }

    /// Starts a TLS fake upstream with `serverTLS` and a sidecar trusting `trust` (a CA PEM file).
    private func tlsFailure(serverTLS: TLSConfiguration, trust: String? = nil, url: ((Int) -> String)? = nil,
                            configure: (inout SidecarConfiguration.Upstream) -> Void = { _ in }) async throws -> (Int, (message: String, type: String, code: String)?) {
        let fake = try await FakeUpstream.start(tls: serverTLS)
        upstream = fake
        let ca = try trust ?? pki.caFile()
        let h = try await ProxyHarness(upstreamURL: url?(fake.port) ?? fake.url, upstream: { u in
            u.caFile = ca
            configure(&u)
        })
        harness = h
        let r = try await h.request()
        return (r.status, r.status == 200 ? nil : openAIError(r.body))
    }

    func testUntrustedCertificateAuthority() async throws {
        let other = try TestPKI()
        defer { other.cleanUp() }
        let (status, error) = try await tlsFailure(serverTLS: other.serverTLS())
        XCTAssertEqual(status, 502)
        XCTAssertEqual(error?.code, "upstream_tls_failed")
        XCTAssertEqual(error?.type, "upstream_error")
        XCTAssertEqual(error?.message, "upstream TLS handshake failed: certificate verify failed (unable to get local issuer certificate)")
    }

    func testWrongHostname() async throws {
        let (status, error) = try await tlsFailure(serverTLS: pki.serverTLS(names: ["other.example"]), url: { "https://localhost:\($0)" })
        XCTAssertEqual(status, 502)
        XCTAssertEqual(error?.message, "upstream TLS handshake failed: certificate verify failed (hostname mismatch)")
    }

    func testWrongIPAddress() async throws {
        let (status, error) = try await tlsFailure(serverTLS: pki.serverTLS(names: ["127.0.0.2"]))
        XCTAssertEqual(status, 502)
        XCTAssertEqual(error?.message, "upstream TLS handshake failed: certificate verify failed (IP address mismatch)")
    }

    func testServerNameOverrideIsVerified() async throws {
        // server_name lets an IP URL be verified against a DNS name in the certificate.
        let (status, _) = try await tlsFailure(serverTLS: pki.serverTLS(names: ["api.internal.example"]), configure: { u in
            u.serverName = "api.internal.example"
        })
        XCTAssertEqual(status, 200)
    }

    func testExpiredCertificate() async throws {
        let (status, error) = try await tlsFailure(serverTLS: pki.serverTLS(validFrom: -86_400 * 10, validUntil: -86_400))
        XCTAssertEqual(status, 502)
        XCTAssertEqual(error?.message, "upstream TLS handshake failed: certificate verify failed (certificate has expired)")
    }

    func testTLS11OnlyServerIsRefused() async throws {
        let (status, error) = try await tlsFailure(serverTLS: pki.serverTLS(maximumVersion: .tls1_1))
        XCTAssertEqual(status, 502)
        XCTAssertEqual(error?.code, "upstream_tls_failed")
        let message = try XCTUnwrap(error?.message)
        XCTAssertTrue(message.hasPrefix("upstream TLS handshake failed: "), message)
        XCTAssertTrue(message.contains("protocol"), "the reason must name the protocol version problem: \(message)")
    }

    func testMutualTLSWithClientCertificate() async throws {
        let client = try pki.ca.issue(commonName: "llm-sidecar", names: ["llm-sidecar"])
        let cert = try pki.write("client.pem", client.certificatePEM)
        let key = try pki.write("client.key", client.privateKeyPEM)
        let (status, _) = try await tlsFailure(serverTLS: pki.serverTLS(requireClientCertificates: true), configure: { u in
            u.clientCertificateFile = cert
            u.clientKeyFile = key
        })
        XCTAssertEqual(status, 200)
    }

    func testMutualTLSWithoutClientCertificateFails() async throws {
        let (status, error) = try await tlsFailure(serverTLS: pki.serverTLS(requireClientCertificates: true))
        XCTAssertEqual(status, 502)
        XCTAssertEqual(error?.code, "upstream_connection_closed", "TLS 1.3 reports a missing client certificate after the handshake")
        XCTAssertTrue(error?.message.contains("certificate") ?? false, error?.message ?? "")
    }

    func testConnectionRefused() async throws {
        // A port that was just open and is now closed: nothing listens there.
        let fake = try await FakeUpstream.start()
        let port = fake.port
        await fake.stop()
        let h = try await ProxyHarness(upstreamURL: "http://127.0.0.1:\(port)")
        harness = h
        let r = try await h.request()
        XCTAssertEqual(r.status, 502)
        let e = openAIError(r.body)
        XCTAssertEqual(e?.code, "upstream_connect_failed")
        XCTAssertEqual(e?.message, "upstream connect failed: 127.0.0.1:\(port): connection refused")
    }

    func testConnectTimeout() async throws {
        // A listener whose accept queue is full drops further SYNs: connect() hangs.
        let blackhole = try BlackholeListener()
        defer { blackhole.close() }
        let h = try await ProxyHarness(upstreamURL: "http://127.0.0.1:\(blackhole.port)", upstream: { $0.connectTimeout = .milliseconds(300) })
        harness = h
        let r = try await h.request()
        XCTAssertEqual(r.status, 504)
        XCTAssertEqual(openAIError(r.body)?.message, "upstream connect timeout fired after 300ms")
    }

    func testTLSHandshakeTimeout() async throws {
        let silent = try await SilentServer.start()
        defer { Task { await silent.stop() } }
        let h = try await ProxyHarness(upstreamURL: "https://127.0.0.1:\(silent.port)", upstream: { $0.tlsHandshakeTimeout = .milliseconds(300) })
        harness = h
        let r = try await h.request()
        XCTAssertEqual(r.status, 504)
        XCTAssertEqual(openAIError(r.body)?.code, "upstream_tls_timeout")
        XCTAssertEqual(openAIError(r.body)?.message, "upstream TLS handshake timeout fired after 300ms")
    }

    func testFirstByteTimeout() async throws {
        let fake = try await FakeUpstream.start()
        upstream = fake
        let h = try await ProxyHarness(upstreamURL: fake.url, upstream: { $0.firstByteTimeout = .milliseconds(300) })
        harness = h
        let r = try await h.request(headers: [("x-fake-delay-ms", "3000")])
        XCTAssertEqual(r.status, 504)
        XCTAssertEqual(openAIError(r.body)?.message, "upstream first byte timeout fired after 300ms")
        XCTAssertEqual(openAIError(r.body)?.code, "upstream_first_byte_timeout")
    }

    func testReadIdleTimeoutCutsTheResponse() async throws {
        let fake = try await FakeUpstream.start()
        upstream = fake
        let h = try await ProxyHarness(upstreamURL: fake.url, upstream: { $0.readIdleTimeout = .milliseconds(300) })
        harness = h
        // The head is already forwarded when the body stalls: the only honest signal left is to
        // end the client's response abnormally.
        let r = try await h.request(headers: [("x-fake-body-delay-ms", "3000")])
        XCTAssertEqual(r.status, 200)
        XCTAssertFalse(r.complete)
        let stream = try await h.request(headers: [("x-fake-events", "3"), ("x-fake-interval-ms", "2000")], body: #"{"stream":true}"#)
        XCTAssertFalse(stream.complete)
        XCTAssertEqual(stream.parts.count, 1)
    }

    func testOversizedBodyGets413() async throws {
        let fake = try await FakeUpstream.start()
        upstream = fake
        let h = try await ProxyHarness(upstreamURL: fake.url, configure: { $0.server.maxBodyBytes = 1000 })
        harness = h
        let big = String(repeating: "x", count: 5000)
        let r = try await h.request(body: #"{"input":""# + big + #""}"#)
        XCTAssertEqual(r.status, 413)
        XCTAssertEqual(openAIError(r.body)?.code, "request_too_large")
        XCTAssertEqual(openAIError(r.body)?.message, "request body exceeds server.max_body_bytes (1000 bytes)")
        // Chunked bodies are counted as they stream.
        let c = try await h.connection()
        let chunked = try await c.request("POST", "/v1/embeddings", headers: [("transfer-encoding", "chunked")], body: big)
        XCTAssertEqual(chunked.status, 413)
        XCTAssertEqual(fake.counters.requests, 0)
    }

    func testPathsOutsideV1Get404AndHealthzAnswers() async throws {
        let fake = try await FakeUpstream.start()
        upstream = fake
        let h = try await ProxyHarness(upstreamURL: fake.url)
        harness = h
        for path in ["/", "/v2/chat/completions", "/v1x", "http://evil.example/v1/models", "/admin"] {
            let r = try await h.request("GET", path)
            XCTAssertEqual(r.status, 404, path)
            XCTAssertEqual(openAIError(r.body)?.code, "not_found")
        }
        let health = try await h.request("GET", "/healthz")
        XCTAssertEqual(health.status, 200)
        XCTAssertEqual(health.body, #"{"status":"ok"}"#)
        XCTAssertEqual(fake.counters.requests, 0, "nothing outside /v1 reaches the upstream")
    }

    func testIdleClientConnectionsAreClosedButBusyOnesAreNot() async throws {
        let fake = try await FakeUpstream.start()
        upstream = fake
        let h = try await ProxyHarness(upstreamURL: fake.url, configure: { $0.server.clientIdleTimeout = .milliseconds(300) })
        harness = h
        let c = try await h.connection()
        // A request slower than the idle timeout is not cut.
        let slow = try await c.request("POST", "/v1/chat/completions", headers: [("x-fake-delay-ms", "700")], body: "{}")
        XCTAssertEqual(slow.status, 200)
        let again = try await c.request("POST", "/v1/chat/completions", body: "{}")
        XCTAssertEqual(again.status, 200, "the connection survived a request longer than the idle timeout")
        let closed = await eventually(3) { !c.isOpen }
        XCTAssertTrue(closed, "an idle client connection is closed after client_idle_timeout")
    }

    func testHeadAnd204AndExpectContinue() async throws {
        let fake = try await FakeUpstream.start()
        upstream = fake
        let h = try await ProxyHarness(upstreamURL: fake.url)
        harness = h
        let c = try await h.connection()
        let head = try await c.request("HEAD", "/v1/models")
        XCTAssertEqual(head.status, 200)
        XCTAssertEqual(head.body, "")
        let noContent = try await c.request("DELETE", "/v1/echo", headers: [("x-fake-status", "204")])
        XCTAssertEqual(noContent.status, 204)
        let after = try await c.request("GET", "/v1/models")
        XCTAssertEqual(after.status, 200, "the connection is still in sync after HEAD and 204")
        // curl's way for bodies over 1 KiB: wait for 100 Continue before sending the body.
        let body = #"{"n":"\#(String(repeating: "x", count: 2000))"}"#
        let raw = "POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        let started = Date()
        let answer = try await RawTCP.exchange(port: h.port, bytes: Array(raw.utf8), group: h.clientGroup, timeout: .milliseconds(500), then: Array(body.utf8), after: "100 Continue")
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 100 Continue\r\n"), answer)
        XCTAssertTrue(answer.contains("HTTP/1.1 200 OK"), answer)
        XCTAssertTrue(answer.hasSuffix(body), "the body went through")
        XCTAssertLessThan(Date().timeIntervalSince(started), 0.5)
        XCTAssertNil(fake.requests.last?.header("expect"), "Expect is answered by the sidecar, not forwarded")
    }

    func testAnUpstreamThatDoesNotReadSlowsTheClientUpload() async throws {
        let silent = try await SilentServer.start(receiveBuffer: 64 * 1024)
        defer { Task { await silent.stop() } }
        // Kernel buffers on loopback can hold up to ~40 MiB (32 MiB autotuned receive buffer);
        // without backpressure the sidecar would take all 256 MiB within the time.
        let total = 256 << 20
        let h = try await ProxyHarness(upstreamURL: "http://127.0.0.1:\(silent.port)", threads: 1,
                                       configure: { $0.server.maxBodyBytes = 512 << 20 })
        harness = h
        let sent = pushBody(port: h.port, head: "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: \(total)\r\n\r\n", total: total)
        XCTAssertLessThan(sent, 64 << 20, "the sidecar must stop reading when the upstream stops: \(sent >> 20) MiB accepted")
    }

    func testListensOnAUnixSocket() async throws {
        let fake = try await FakeUpstream.start()
        upstream = fake
        let path = pki.directory + "/sidecar.sock"
        let h = try await ProxyHarness(upstreamURL: fake.url, configure: { $0.server.listen = .unix(path: path) })
        harness = h
        let c = try await TestHTTPConnection.connect(unixPath: path, group: h.clientGroup)
        let r = try await c.request("POST", "/v1/chat/completions", body: "{}")
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.body, FakeUpstream.chatCompletion)
        await c.close()
    }

    func testPipelinedRequestsAreAnsweredInOrder() async throws {
        let fake = try await FakeUpstream.start()
        upstream = fake
        let h = try await ProxyHarness(upstreamURL: fake.url)
        harness = h
        let one = "POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"n\":1}"
        let two = "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        let three = "POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{\"n\":3}"
        let answer = try await RawTCP.exchange(port: h.port, bytes: Array((one + two + three).utf8), group: h.clientGroup)
        let regex = try NSRegularExpression(pattern: "HTTP/1\\.1 [0-9]{3} [A-Za-z ]+\r\n")
        let statuses = regex.matches(in: answer, range: NSRange(answer.startIndex..., in: answer)).map {
            String(answer[Range($0.range, in: answer)!]).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        XCTAssertEqual(statuses, ["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found", "HTTP/1.1 200 OK"], answer)
        let first = try XCTUnwrap(answer.range(of: #"{"n":1}"#)), third = try XCTUnwrap(answer.range(of: #"{"n":3}"#))
        XCTAssertLessThan(first.lowerBound, third.lowerBound)
    }

    func testMalformedRequestsGet400AndOthersAreServed() async throws {
        let fake = try await FakeUpstream.start()
        upstream = fake
        let h = try await ProxyHarness(upstreamURL: fake.url)
        harness = h
        let cases: [(String, String)] = [
            ("bad request line", "GARBAGE\r\n\r\n"),
            ("content-length and transfer-encoding", "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            ("invalid chunk size", "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
            ("invalid header name", "GET /v1/models HTTP/1.1\r\nHo st: x\r\n\r\n"),
        ]
        for (name, raw) in cases {
            let answer = try await RawTCP.exchange(port: h.port, bytes: Array(raw.utf8), group: h.clientGroup)
            XCTAssertTrue(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(name): \(answer.prefix(200))")
            let body = answer.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
            let e = openAIError(body)
            XCTAssertEqual(e?.code, "bad_request", name)
            XCTAssertTrue(e?.message.hasPrefix("malformed HTTP request: ") ?? false, name)
            let next = try await h.request()
            XCTAssertEqual(next.status, 200, "after \(name), the next request on another connection succeeds")
        }
        XCTAssertEqual(fake.counters.requests, cases.count, "no malformed request reached the upstream")
    }
}

/// A TCP listener that never accepts and whose accept queue is full, so new connects hang.
final class BlackholeListener: @unchecked Sendable {
    let fd: Int32
    let port: Int
    var fillers: [Int32] = []

    init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, len) } }
        listen(listener, 0)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) } }
        fd = listener
        port = Int(UInt16(bigEndian: addr.sin_port))
        // Fill the accept queue (backlog 0 still admits one) with non-blocking connects.
        for _ in 0..<4 {
            let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            fillers.append(s)
        }
        usleep(100_000)
    }

    func close() {
        for s in fillers { Glibc.close(s) }
        Glibc.close(fd)
    }
}

/// Accepts TCP connections and never says anything: a TLS handshake to it can only time out.
final class SilentServer: Sendable {
    let channel: Channel
    let group: EventLoopGroup
    var port: Int { channel.localAddress!.port! }

    private init(channel: Channel, group: EventLoopGroup) {
        self.channel = channel
        self.group = group
    }

    static func start(receiveBuffer: Int? = nil) async throws -> SilentServer {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var bootstrap = ServerBootstrap(group: group)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { $0.eventLoop.makeSucceededVoidFuture() }
        if let receiveBuffer { bootstrap = bootstrap.serverChannelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBuffer)) }
        let channel = try await bootstrap
            .bind(host: "127.0.0.1", port: 0).get()
        return SilentServer(channel: channel, group: group)
    }

    func stop() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }
}

/// A raw, non-blocking client that sends `head`, then as much of a `total`-byte body as the
/// sidecar takes in `seconds`: the bytes it took.
func pushBody(port: Int, head: String, total: Int, seconds: Double = 1.5) -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { Glibc.close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    XCTAssertEqual(rc, 0)
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    let headBytes = Array(head.utf8)
    XCTAssertEqual(write(fd, headBytes, headBytes.count), headBytes.count)
    let chunk = [UInt8](repeating: 0x61, count: 256 * 1024)
    var sent = 0
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline, sent < total {
        let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, min(chunk.count, total - sent)) }
        if n > 0 { sent += n } else { usleep(2_000) }
    }
    return sent
}
