import NIOCore
import SidecarTLS
import SidecarTestSupport
import XCTest

/// Client and server `SSLConnection`s talking through memory only: every byte one side produces
/// is fed to the other. No sockets, no event loops.
final class SSLConnectionTests: XCTestCase {
    let allocator = ByteBufferAllocator()
    var pki: TestPKI!

    override func setUp() async throws { pki = try TestPKI() }
    override func tearDown() async throws { pki.cleanUp() }

    func clientContext(_ roots: TLSConfiguration.TrustRoots? = nil, identity: TLSConfiguration.Identity? = nil) throws -> SSLContext {
        try SSLContext(configuration: .client(trustRoots: roots ?? .pem(pki.ca.authority.certificatePEM), identity: identity))
    }

    /// Runs the handshake to its end (or failure); returns each side's last step.
    @discardableResult
    func handshake(_ client: SSLConnection, _ server: SSLConnection) -> (SSLConnection.Step, SSLConnection.Step) {
        var c = client.handshake(), s = SSLConnection.Step.wantIO
        for _ in 0..<10 {
            if let out = client.drainCiphertext(allocator: allocator) { server.feed(out) }
            s = server.handshake()
            if let out = server.drainCiphertext(allocator: allocator) { client.feed(out) }
            c = client.handshake()
            if c != .wantIO && s != .wantIO { break }
            if case .failed = c { break }
            if case .failed = s { break }
        }
        return (c, s)
    }

    func transfer(_ text: String, from a: SSLConnection, to b: SSLConnection) -> String {
        XCTAssertEqual(a.write(ByteBuffer(string: text)), .complete)
        if let out = a.drainCiphertext(allocator: allocator) { b.feed(out) }
        var buffer = allocator.buffer(capacity: 64)
        _ = b.readPlaintext(into: &buffer)
        return String(buffer: buffer)
    }

    func testHandshakeVerifiesNameAndNegotiatesHTTP11() throws {
        let server = try SSLContext(configuration: pki.serverTLS(names: ["api.example"]))
        let client = try SSLConnection(context: clientContext(), serverName: "api.example")
        let serverConn = try SSLConnection(context: server)
        let (c, s) = handshake(client, serverConn)
        XCTAssertEqual(c, .complete)
        XCTAssertEqual(s, .complete)
        XCTAssertEqual(client.negotiatedALPN, "http/1.1")
        XCTAssertEqual(client.protocolVersion, "TLSv1.3")
        XCTAssertEqual(transfer("GET / HTTP/1.1\r\n\r\n", from: client, to: serverConn), "GET / HTTP/1.1\r\n\r\n")
        XCTAssertEqual(transfer("HTTP/1.1 200 OK\r\n\r\n", from: serverConn, to: client), "HTTP/1.1 200 OK\r\n\r\n")
    }

    func testHostnameMismatchIsNamed() throws {
        let server = try SSLContext(configuration: pki.serverTLS(names: ["api.example"]))
        let client = try SSLConnection(context: clientContext(), serverName: "evil.example")
        let (c, _) = handshake(client, try SSLConnection(context: server))
        XCTAssertEqual(c, .failed(TLSError(.handshakeFailed, "certificate verify failed (hostname mismatch)")))
    }

    func testUntrustedAndExpiredCertificatesAreNamed() throws {
        let other = try TestPKI()
        defer { other.cleanUp() }
        let untrusted = try SSLContext(configuration: other.serverTLS(names: ["a.example"]))
        let (c1, _) = handshake(try SSLConnection(context: clientContext(), serverName: "a.example"), try SSLConnection(context: untrusted))
        XCTAssertEqual(c1, .failed(TLSError(.handshakeFailed, "certificate verify failed (unable to get local issuer certificate)")))

        let expired = try SSLContext(configuration: pki.serverTLS(names: ["a.example"], validFrom: -7200, validUntil: -3600))
        let (c2, _) = handshake(try SSLConnection(context: clientContext(), serverName: "a.example"), try SSLConnection(context: expired))
        XCTAssertEqual(c2, .failed(TLSError(.handshakeFailed, "certificate verify failed (certificate has expired)")))
    }

    func testIPLiteralIsVerifiedAsIPAddress() throws {
        let server = try SSLContext(configuration: pki.serverTLS(names: ["10.1.2.3"]))
        let (ok, _) = handshake(try SSLConnection(context: clientContext(), serverName: "10.1.2.3"), try SSLConnection(context: server))
        XCTAssertEqual(ok, .complete)
        let (bad, _) = handshake(try SSLConnection(context: clientContext(), serverName: "10.1.2.4"), try SSLConnection(context: server))
        XCTAssertEqual(bad, .failed(TLSError(.handshakeFailed, "certificate verify failed (IP address mismatch)")))
    }

    func testOldProtocolIsRefused() throws {
        let server = try SSLContext(configuration: pki.serverTLS(names: ["a.example"], maximumVersion: .tls1_1))
        let (c, _) = handshake(try SSLConnection(context: clientContext(), serverName: "a.example"), try SSLConnection(context: server))
        guard case .failed(let error) = c else { return XCTFail("a TLS 1.1 server must be refused, got \(c)") }
        XCTAssertTrue(error.reason.contains("protocol"), error.reason)
    }

    func testSessionIsResumedOnTheNextConnection() throws {
        let server = try SSLContext(configuration: pki.serverTLS(names: ["a.example"]))
        let clientCtx = try clientContext()
        let first = try SSLConnection(context: clientCtx, serverName: "a.example")
        let firstServer = try SSLConnection(context: server)
        handshake(first, firstServer)
        XCTAssertFalse(first.sessionReused)
        // TLS 1.3 tickets arrive after the handshake, with the first application data.
        XCTAssertEqual(transfer("pong", from: firstServer, to: first), "pong")
        let second = try SSLConnection(context: clientCtx, serverName: "a.example")
        let (c, _) = handshake(second, try SSLConnection(context: server))
        XCTAssertEqual(c, .complete)
        XCTAssertTrue(second.sessionReused)
    }

    func testCloseNotifyIsSeenByThePeer() throws {
        let server = try SSLContext(configuration: pki.serverTLS(names: ["a.example"]))
        let client = try SSLConnection(context: clientContext(), serverName: "a.example")
        let s = try SSLConnection(context: server)
        handshake(client, s)
        client.shutdown()
        s.feed(try XCTUnwrap(client.drainCiphertext(allocator: allocator)))
        var buffer = allocator.buffer(capacity: 16)
        XCTAssertEqual(s.readPlaintext(into: &buffer), .closed)
    }

    func testMismatchedKeyIsRefusedWhenLoading() throws {
        let a = try pki.ca.issue(commonName: "a", names: ["a"])
        let b = try pki.ca.issue(commonName: "b", names: ["b"])
        XCTAssertThrowsError(try SSLContext(configuration: .server(identity: .pem(certificateChain: a.certificatePEM, privateKey: b.privateKeyPEM)))) { error in
            XCTAssertTrue("\(error)".contains("private key"), "\(error)")
        }
    }

    func testMissingCAFileIsNamed() {
        XCTAssertThrowsError(try SSLContext(configuration: .client(trustRoots: .file("/nonexistent/ca.pem")))) { error in
            XCTAssertTrue("\(error)".hasPrefix("loading CA file /nonexistent/ca.pem"), "\(error)")
        }
    }
}

final class TLSStateMachineTests: XCTestCase {
    func testHappyPath() {
        var sm = TLSStateMachine()
        XCTAssertEqual(sm.write(), .buffer, "writes before the handshake wait")
        XCTAssertEqual(sm.channelActive(), .beginHandshake)
        XCTAssertEqual(sm.channelActive(), .none, "only one handshake")
        XCTAssertEqual(sm.ciphertextReceived(), .continueHandshake)
        XCTAssertEqual(sm.handshakeStep(.wantIO), .flushAndWait)
        XCTAssertEqual(sm.handshakeStep(.complete), .completed)
        XCTAssertEqual(sm.write(), .encrypt)
        XCTAssertEqual(sm.ciphertextReceived(), .readApplicationData)
        XCTAssertEqual(sm.closeRequested(), .sendCloseNotifyThenClose)
        XCTAssertEqual(sm.closeRequested(), .alreadyClosed)
        XCTAssertEqual(sm.write(), .fail)
        XCTAssertEqual(sm.channelInactive(), .none)
        XCTAssertEqual(sm.ciphertextReceived(), .discard)
    }

    func testFailureAndEarlyClose() {
        var sm = TLSStateMachine()
        _ = sm.channelActive()
        let e = TLSError(.handshakeFailed, "x")
        XCTAssertEqual(sm.handshakeStep(.failed(e)), .failed(e))
        XCTAssertEqual(sm.handshakeStep(.complete), .ignore, "a late result after failure is ignored")

        var peerGone = TLSStateMachine()
        _ = peerGone.channelActive()
        XCTAssertEqual(peerGone.channelInactive(), .failHandshake)

        var closedEarly = TLSStateMachine()
        _ = closedEarly.channelActive()
        XCTAssertEqual(closedEarly.closeRequested(), .closeNow, "no close_notify before the handshake finished")

        var neverStarted = TLSStateMachine()
        XCTAssertEqual(neverStarted.channelInactive(), .failBufferedWrites)
    }

    func testPeerCloseNotify() {
        var sm = TLSStateMachine()
        _ = sm.channelActive()
        _ = sm.handshakeStep(.complete)
        sm.peerClosed()
        XCTAssertEqual(sm.state, .closing)
        XCTAssertEqual(sm.write(), .fail)
    }
}
