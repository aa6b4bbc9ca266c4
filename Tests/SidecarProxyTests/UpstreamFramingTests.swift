import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOPosix
import SidecarCore
@testable import SidecarProxy
import SidecarTestSupport
import XCTest

/// Upstream responses are read by our own strict framing (`UpstreamResponseReader`, owned by the
/// connection's handler): a response a client must not accept is a 502 and its connection is never
/// pooled; interim responses are skipped; bodies arrive as they were sent, however they are split.
final class UpstreamFramingTests: XCTestCase {
    // MARK: the reader, fed as the handler feeds it

    /// The reader and what it handed on so far.
    private final class Reading {
        var reader = UpstreamResponseReader()
        var parts: [HTTPClientResponsePart] = []

        /// A read from the connection: every part it completes, as the handler takes them.
        func writeInbound(_ bytes: ByteBuffer) throws {
            reader.append(bytes)
            while let part = try reader.next() { parts.append(part) }
        }

        func inputClosed() {
            if let end = reader.inputClosed() { parts.append(end) }
        }
    }

    private func channel() throws -> Reading { Reading() }

    private func request(_ c: Reading, method: HTTPMethod = .POST) throws {
        c.reader.expectResponse(toHEAD: method == .HEAD)
    }

    /// Everything read so far, as (head status, body text, ended).
    private func responses(_ c: Reading) throws -> [(Int, String, Bool)] {
        var out: [(Int, String, Bool)] = []
        for part in c.parts {
            switch part {
            case .head(let h): out.append((Int(h.status.code), "", false))
            case .body(let b): out[out.count - 1].1 += String(buffer: b)
            case .end: out[out.count - 1].2 = true
            }
        }
        return out
    }

    func testEverySplitOfAResponseGivesTheSameHeadBodyAndEnd() throws {
        let wire = Array("HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n".utf8)
        for split in 1..<wire.count {
            let c = try channel()
            try request(c)
            try c.writeInbound(ByteBuffer(bytes: wire[..<split]))
            try c.writeInbound(ByteBuffer(bytes: wire[split...]))
            let got = try responses(c)
            XCTAssertEqual(got.count, 1, "split at \(split): the 103 is skipped")
            XCTAssertEqual(got.first?.0, 200)
            XCTAssertEqual(got.first?.1, "hello world")
            XCTAssertEqual(got.first?.2, true)
        }
    }

    func testAContentLengthBodyEndsWithItsLastByte() throws {
        let c = try channel()
        try request(c)
        try c.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        let got = try responses(c)
        XCTAssertEqual(got.map(\.1), ["ok"])
        XCTAssertEqual(got.map(\.2), [true], "ended at once, not at the next read")
    }

    func testAResponseToHEADHasNoBodyWhateverItsLength() throws {
        let c = try channel()
        try request(c, method: .HEAD)
        try c.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"))
        XCTAssertEqual(try responses(c).map(\.2), [true])
    }

    func testABodyReadUntilCloseEndsAtTheClose() throws {
        let c = try channel()
        try request(c)
        try c.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial and"))
        try c.writeInbound(ByteBuffer(string: " the rest"))
        c.inputClosed()
        let got = try responses(c)
        XCTAssertEqual(got.map(\.1), ["partial and the rest"])
        XCTAssertEqual(got.map(\.2), [true])
    }

    func testWhatAClientMustNotAcceptIsAnError() throws {
        let refused = [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  // smuggling
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
            "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",  // obs-fold
            "HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "HTTP/2 200\r\n\r\n",
        ]
        for wire in refused {
            let c = try channel()
            try request(c)
            XCTAssertThrowsError(try c.writeInbound(ByteBuffer(string: wire)), wire.debugDescription) { error in
                XCTAssertTrue(error is UpstreamFramingError, "\(error)")
            }
            XCTAssertTrue(try responses(c).allSatisfy { !$0.2 }, "nothing refused is delivered as complete: \(wire.debugDescription)")
        }
    }

    func testBytesNoRequestAskedForAreAnError() throws {
        let c = try channel()
        XCTAssertThrowsError(try c.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")))
        let d = try channel()
        try request(d)
        XCTAssertThrowsError(try d.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")))
        XCTAssertEqual(try responses(d).map(\.2), [true], "the answer asked for is delivered; what follows it is refused")
    }

    // MARK: end to end, against a raw upstream

    func testASmugglingResponseIsA502AndItsConnectionIsNeverReused() async throws {
        let upstream = try await RawUpstream.start { n in
            n == 0 ? "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                : "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
        }
        defer { Task { await upstream.stop() } }
        let harness = try await ProxyHarness(upstreamURL: "http://127.0.0.1:\(upstream.port)", threads: 1, configure: { $0.cache.mode = .off })
        defer { Task { await harness.stop() } }
        let bad = try await harness.request()
        XCTAssertEqual(bad.status, 502, bad.body)
        XCTAssertEqual(openAIError(bad.body)?.code, "upstream_invalid_response")
        XCTAssertTrue(bad.body.contains("both Content-Length and Transfer-Encoding"), bad.body)
        let good = try await harness.request()
        XCTAssertEqual(good.status, 200, good.body)
        XCTAssertEqual(good.body, #"{"ok":true}"#)
        XCTAssertEqual(upstream.connections, 2, "the connection that sent the bad response was closed, not pooled")
    }

    func testAnEarlyHintsResponseIsSkippedAndTheAnswerForwarded() async throws {
        let upstream = try await RawUpstream.start { _ in
            "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
        }
        defer { Task { await upstream.stop() } }
        let harness = try await ProxyHarness(upstreamURL: "http://127.0.0.1:\(upstream.port)", threads: 1, configure: { $0.cache.mode = .off })
        defer { Task { await harness.stop() } }
        for _ in 0..<3 {
            let r = try await harness.request()
            XCTAssertEqual(r.status, 200, r.body)
            XCTAssertEqual(r.body, #"{"ok":true}"#)
        }
        XCTAssertEqual(upstream.connections, 1, "kept alive and reused")
    }
}

/// A plain-HTTP upstream that answers the n-th request it sees (over all connections) with the
/// bytes `answer(n)` returns, exactly as given, once the request's head has arrived.
final class RawUpstream: Sendable {
    private let channel: Channel
    private let group: EventLoopGroup
    private let counters: NIOLockedValueBox<(connections: Int, requests: Int)>
    var port: Int { channel.localAddress!.port! }
    var connections: Int { counters.withLockedValue { $0.connections } }

    private init(channel: Channel, group: EventLoopGroup, counters: NIOLockedValueBox<(connections: Int, requests: Int)>) {
        self.channel = channel
        self.group = group
        self.counters = counters
    }

    static func start(answer: @escaping @Sendable (Int) -> String) async throws -> RawUpstream {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let counters = NIOLockedValueBox((connections: 0, requests: 0))
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                counters.withLockedValue { $0.connections += 1 }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(counters: counters, answer: answer))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return RawUpstream(channel: channel, group: group, counters: counters)
    }

    func stop() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let counters: NIOLockedValueBox<(connections: Int, requests: Int)>
        let answer: @Sendable (Int) -> String
        var received = ""
        init(counters: NIOLockedValueBox<(connections: Int, requests: Int)>, answer: @escaping @Sendable (Int) -> String) {
            self.counters = counters
            self.answer = answer
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += String(buffer: unwrapInboundIn(data))
            // One request at a time; its body is small and arrives with or right after the head.
            guard let headEnd = received.range(of: "\r\n\r\n") else { return }
            let head = received[..<headEnd.lowerBound].lowercased()
            let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
            guard received[headEnd.upperBound...].utf8.count >= length else { return }
            received = ""
            let n = counters.withLockedValue { c -> Int in defer { c.requests += 1 }; return c.requests }
            context.writeAndFlush(NIOAny(ByteBuffer(string: answer(n))), promise: nil)
        }
    }
}
