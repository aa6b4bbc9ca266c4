import Foundation
import NIOCore
import SidecarCore
import SidecarProxy
import SidecarTestSupport
import XCTest

/// What the sidecar refuses before routing (docs/operations.md, "What is refused"): each refusal is
/// a complete, framed, OpenAI-shaped answer, the connection is closed after it, and nothing of the
/// refused request (or of what was pipelined behind it) reaches the upstream.
final class RefusalTests: XCTestCase {
    var upstream: FakeUpstream?
    var harness: ProxyHarness?

    override func tearDown() async throws {
        await harness?.stop()
        await upstream?.stop()
    }

    private func start(upstreamPath: String = "", configure: @escaping (inout SidecarConfiguration) -> Void = { _ in }) async throws -> (FakeUpstream, ProxyHarness) {
        let fake = try await FakeUpstream.start()
        upstream = fake
        let h = try await ProxyHarness(upstreamURL: fake.url + upstreamPath, configure: configure)
        harness = h
        return (fake, h)
    }

    /// Sends `raw` on a new connection and reads until the server closes; fails unless the server
    /// closed it and the answer is one framed response with an OpenAI-shaped error body.
    private func refusal(_ raw: String, on h: ProxyHarness, status: Int, code: String,
                         file: StaticString = #filePath, line: UInt = #line) async throws -> RawResponse? {
        let answer = try await RawTCP.converse(port: h.port, bytes: Array(raw.utf8), group: h.clientGroup)
        XCTAssertTrue(answer.serverClosed, "the server closes the connection after refusing: \(raw.prefix(80))", file: file, line: line)
        guard let r = RawResponse(answer.text) else {
            XCTFail("not one framed response: \(answer.text.prefix(300))", file: file, line: line)
            return nil
        }
        XCTAssertEqual(r.status, status, "\(raw.prefix(80)): \(answer.text.prefix(300))", file: file, line: line)
        XCTAssertEqual(r.header("content-type"), "application/json", file: file, line: line)
        XCTAssertEqual(r.header("connection"), "close", file: file, line: line)
        XCTAssertEqual(r.header("x-sidecar-error"), code, file: file, line: line)
        XCTAssertEqual(r.rest, "", "nothing after the framed body", file: file, line: line)
        XCTAssertEqual(openAIError(r.body, file: file, line: line)?.code, code, file: file, line: line)
        return r
    }

    // MARK: dot segments (issue 11, item 4)

    func testDotSegmentsThatLeaveV1AreRefusedAndNeverForwarded() async throws {
        let (fake, h) = try await start()
        let targets = [
            "/v1/../metrics", "/v1/%2e%2e/stats", "/v1/..%2fhealthz", "/v1/chat/completions/../../../stats",
            "/v1/../healthz", "/v1/../readyz", "/./healthz", "/healthz/.", "/v1/%2E%2E/metrics", "/v1/..;/stats",
            "/v1/../../other/path?x=1",
        ]
        for target in targets {
            let r = try await refusal("GET \(target) HTTP/1.1\r\nHost: x\r\n\r\n", on: h, status: 400, code: "path_traversal")
            XCTAssertEqual(r.flatMap { openAIError($0.body) }?.type, "invalid_request_error")
            XCTAssertFalse(r?.body.contains("llm_sidecar_") ?? true, "no admin answer leaks: \(target)")
        }
        // A POST with a body, too: refused before the body is read, and the answer still arrives.
        let body = #"{"model":"gpt-4o-mini","messages":[]}"#
        _ = try await refusal("POST /v1/chat/completions/../../../metrics HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)",
                              on: h, status: 400, code: "path_traversal")
        XCTAssertEqual(fake.counters.requests, 0, "no such request reached the upstream: \(fake.requests.map(\.uri))")
        let next = try await h.request()
        XCTAssertEqual(next.status, 200, "the sidecar keeps serving")
    }

    func testDotSegmentsCannotLeaveTheUpstreamPathPrefix() async throws {
        let (fake, h) = try await start(upstreamPath: "/openai")
        _ = try await refusal("GET /v1/../../other/secret HTTP/1.1\r\nHost: x\r\n\r\n", on: h, status: 400, code: "path_traversal")
        _ = try await refusal("GET /v1/%2e%2e/%2e%2e/other/secret HTTP/1.1\r\nHost: x\r\n\r\n", on: h, status: 400, code: "path_traversal")
        XCTAssertEqual(fake.counters.requests, 0)
        _ = try await h.request("POST", "/v1/chat/../chat/./completions")  // the fake answers 404 to its prefix
        XCTAssertEqual(fake.counters.requests, 1)
        XCTAssertEqual(fake.requests.last?.uri, "/openai/v1/chat/completions", "forwarded resolved, under the prefix")
    }

    func testBenignDotSegmentsAreForwardedNormalised() async throws {
        let (fake, h) = try await start()
        let r = try await h.request("POST", "/v1/./chat/completions")
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.body, FakeUpstream.chatCompletion)
        XCTAssertEqual(fake.requests.last?.uri, "/v1/chat/completions")
        let models = try await h.request("GET", "/v1/files/../models?after=a/../b")
        XCTAssertEqual(models.status, 200)
        XCTAssertEqual(fake.requests.last?.uri, "/v1/models?after=a/../b", "the query is kept as sent")
        XCTAssertEqual(fake.requests.map { ProxyHarnessPath.bare($0.uri) }.filter { $0.contains("/.") }, [], "no dot segment was forwarded")
    }

    // MARK: CONNECT and TRACE (issue 11, item 5)

    func testConnectAndTraceGet405WithAllowAndTheConnectionCloses() async throws {
        let (fake, h) = try await start()
        let connect = try await refusal("CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n",
                                        on: h, status: 405, code: "method_not_allowed")
        XCTAssertEqual(connect?.header("allow"), RequestHeadPolicy.forwardedMethods)
        XCTAssertEqual(connect?.header("content-length"), connect.map { String($0.body.utf8.count) })
        XCTAssertTrue(connect.flatMap { openAIError($0.body) }?.message.contains("opens no tunnels") ?? false)
        // Bytes right behind the head (a client that does not wait for 200) change nothing.
        _ = try await refusal("CONNECT 127.0.0.1:\(fake.port) HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
                              on: h, status: 405, code: "method_not_allowed")
        // CONNECT with an origin-form target is a request head like any other: its 405 still
        // carries the JSON error (only a 2xx answer to CONNECT has no body).
        let originForm = try await refusal("CONNECT /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", on: h, status: 405, code: "method_not_allowed")
        XCTAssertEqual(originForm?.header("content-length"), originForm.map { String($0.body.utf8.count) })
        for target in ["/v1/chat/completions", "/healthz", "*"] {
            let trace = try await refusal("TRACE \(target) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-client-secret\r\n\r\n",
                                          on: h, status: 405, code: "method_not_allowed")
            XCTAssertEqual(trace?.header("allow"), RequestHeadPolicy.forwardedMethods)
            XCTAssertFalse(trace?.body.contains("sk-client-secret") ?? true, "nothing is echoed")
        }
        XCTAssertEqual(fake.counters.requests, 0, "neither reached the upstream")
        // The admin endpoints' own 405 says what they take, and keeps the connection.
        let post = try await h.request("POST", "/healthz")
        XCTAssertEqual(post.status, 405)
        XCTAssertEqual(post.header("allow"), "GET, HEAD")
        XCTAssertNil(post.header("connection"))
    }

    // MARK: HTTP/1.0 with Transfer-Encoding (issue 11, item 6)

    func testHTTP10WithTransferEncodingIsRefusedAndWhatIsPipelinedBehindItNeverArrives() async throws {
        let (fake, h) = try await start()
        let behind = "POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"n\":2}"
        for connection in ["Connection: keep-alive\r\n", ""] {
            let first = "POST /v1/echo HTTP/1.0\r\nHost: x\r\n\(connection)Transfer-Encoding: chunked\r\n\r\n7\r\n{\"n\":1}\r\n0\r\n\r\n"
            let r = try await refusal(first + behind, on: h, status: 400, code: "invalid_framing")
            XCTAssertTrue(r.flatMap { openAIError($0.body) }?.message.contains("RFC 9112 §6.1") ?? false)
        }
        XCTAssertEqual(fake.counters.requests, 0, "neither the request nor the one behind it reached the upstream: \(fake.requests.map(\.body))")
    }

    // MARK: framing the sidecar does not speak (issue 10, item 2)

    func testUnknownTransferCodingsAre501AndOtherHTTPVersions505() async throws {
        let (fake, h) = try await start()
        let gzip = try await refusal("POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                                     on: h, status: 501, code: "transfer_coding_not_implemented")
        XCTAssertTrue(gzip.flatMap { openAIError($0.body) }?.message.contains("only chunked") ?? false, "\(String(describing: gzip?.body))")
        let version = try await refusal("GET /v1/models HTTP/1.2\r\nHost: x\r\n\r\n", on: h, status: 505, code: "http_version_not_supported")
        XCTAssertEqual(version.flatMap { openAIError($0.body) }?.message, "the sidecar speaks HTTP/1.1 and HTTP/1.0")
        _ = try await refusal("POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                              on: h, status: 400, code: "bad_request")
        _ = try await refusal("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n", on: h, status: 400, code: "bad_request")
        _ = try await refusal("GET /v1/models HTTP/1.1\r\n\r\n", on: h, status: 400, code: "bad_request")
        XCTAssertEqual(fake.counters.requests, 0)
        let next = try await h.request()
        XCTAssertEqual(next.status, 200, "the sidecar keeps serving")
    }

    // MARK: header fields (issue 11, item 7)

    func testTenThousandTinyHeaderFieldsAre431AndNeverForwarded() async throws {
        let (fake, h) = try await start()
        // 10,000 fields of 6 bytes: 60 KB, under the head's 80 KiB, so only the count stops them
        // (the scan stops at the 129th field, so the message cannot name the total).
        let fields = String(repeating: "x: 1\r\n", count: 10_000)
        let r = try await refusal("GET /v1/models HTTP/1.1\r\nHost: x\r\n\(fields)\r\n", on: h, status: 431, code: "request_header_fields_too_large")
        XCTAssertEqual(r.flatMap { openAIError($0.body) }?.message, "the request has more than 128 header fields; server.max_header_fields is 128")
        XCTAssertEqual(fake.counters.requests, 0)
    }

    func testTheHeaderFieldLimitIsExactAndConfigurable() async throws {
        let (fake, h) = try await start { $0.server.maxHeaderFields = 40 }
        func request(fields: Int) -> String {
            // Host, Content-Length, then the rest.
            let extra = (0..<(fields - 2)).map { "x-\($0): 1\r\n" }.joined()
            return "POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\(extra)Connection: close\r\n\r\n{}"
        }
        let at = try await RawTCP.exchange(port: h.port, bytes: Array(request(fields: 39).utf8), group: h.clientGroup)  // + Connection = 40
        XCTAssertTrue(at.hasPrefix("HTTP/1.1 200 OK\r\n"), at)
        XCTAssertEqual(fake.counters.requests, 1)
        let r = try await refusal(request(fields: 40), on: h, status: 431, code: "request_header_fields_too_large")
        XCTAssertEqual(r.flatMap { openAIError($0.body) }?.message, "the request has more than 40 header fields; server.max_header_fields is 40")
        XCTAssertEqual(fake.counters.requests, 1)
    }

    /// The decoder's own limit (80 KiB of header bytes) is a 431 too, not a bare close or a 400.
    func testAHeadOverTheDecodersByteLimitIs431() async throws {
        let (fake, h) = try await start()
        let big = "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "a", count: 200_000))\r\n\r\n"
        let r = try await refusal(big, on: h, status: 431, code: "request_header_fields_too_large")
        XCTAssertEqual(r.flatMap { openAIError($0.body) }?.message, "the request's header fields exceed 80 KiB (one field, or all of them together)")
        let many = (0..<9_000).map { "x-header-\($0): value\r\n" }.joined()
        _ = try await refusal("GET /v1/models HTTP/1.1\r\nHost: x\r\n\(many)\r\n", on: h, status: 431, code: "request_header_fields_too_large")
        XCTAssertEqual(fake.counters.requests, 0)
        let next = try await h.request()
        XCTAssertEqual(next.status, 200)
    }

    // MARK: what the decoder rejects, behind requests still being answered

    /// Bad bytes pipelined behind good requests: the good ones are answered in full, in order, and
    /// the bad ones get their framed OpenAI-shaped answer after them, then the connection closes
    /// (neither a bare close that cuts the answers before, nor a 400 in place of one of them).
    func testMalformedBytesBehindPipelinedRequestsAreAnsweredInTurn() async throws {
        let (fake, h) = try await start()
        let slow = "POST /v1/echo HTTP/1.1\r\nHost: x\r\nX-Fake-Delay-Ms: 300\r\nContent-Length: 7\r\n\r\n{\"n\":1}"
        let second = "POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{\"n\":2}"
        let stream = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Fake-Events: 4\r\nX-Fake-Interval-Ms: 100\r\nContent-Length: 15\r\n\r\n{\"stream\":true}"
        let cases: [(String, String, [Int], Int)] = [
            ("garbage behind a request waiting for its answer", slow + "GARBAGE\r\n\r\n", [200, 400], 400),
            ("garbage behind two requests, one queued", slow + second + "GARBAGE\r\n\r\n", [200, 200, 400], 400),
            ("garbage behind a stream being sent", stream + "GARBAGE\r\n\r\n", [200, 400], 400),
            ("an oversized head behind a request", slow + "GET /v1/models HTTP/1.1\r\nX-Big: \(String(repeating: "a", count: 100_000))\r\n\r\n", [200, 431], 431),
        ]
        for (name, raw, statuses, last) in cases {
            let requestsBefore = fake.counters.requests
            let answer = try await RawTCP.converse(port: h.port, bytes: Array(raw.utf8), group: h.clientGroup)
            XCTAssertTrue(answer.serverClosed, name)
            var rest = answer.text
            var seen: [Int] = []
            while !rest.isEmpty {
                // A streamed answer is chunked: skip past its terminating chunk to the next response.
                if rest.hasPrefix("HTTP/1.1 200 OK\r\n"), rest.prefix(2000).lowercased().contains("transfer-encoding: chunked"),
                   let end = rest.range(of: "\r\n0\r\n\r\n") {
                    XCTAssertTrue(rest[..<end.lowerBound].contains("data: [DONE]"), "\(name): the stream was sent whole")
                    seen.append(200)
                    rest = String(rest[end.upperBound...])
                    continue
                }
                guard let r = RawResponse(rest) else { XCTFail("\(name): not framed: \(rest.prefix(300))"); break }
                seen.append(r.status)
                if r.status == last {
                    XCTAssertEqual(r.header("connection"), "close", name)
                    XCTAssertEqual(openAIError(r.body)?.code, last == 400 ? "bad_request" : "request_header_fields_too_large", name)
                }
                rest = r.rest
            }
            XCTAssertEqual(seen, statuses, "\(name): \(answer.text.prefix(600))")
            XCTAssertTrue(answer.text.contains(#"{"n":1}"#) || name.contains("stream"), name)
            XCTAssertEqual(fake.counters.requests - requestsBefore, statuses.count - 1, "\(name): every good request reached the upstream once")
        }
    }
}

enum ProxyHarnessPath {
    static func bare(_ uri: String) -> String { String(uri.prefix { $0 != "?" }) }
}

/// One HTTP/1.1 response read from raw bytes: status, headers, the body its Content-Length
/// frames, and whatever came after it.
struct RawResponse {
    var status: Int
    var headers: [(String, String)]
    var body: String
    var rest: String

    init?(_ text: String) {
        let bytes = Array(text.utf8)
        let separator = Array("\r\n\r\n".utf8)
        guard let end = (0...max(0, bytes.count - 4)).first(where: { bytes.count >= 4 && Array(bytes[$0..<($0 + 4)]) == separator }) else { return nil }
        let lines = String(decoding: bytes[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let statusLine = lines[0].split(separator: " ", maxSplits: 2)
        guard statusLine.count >= 2, statusLine[0] == "HTTP/1.1", let status = Int(statusLine[1]) else { return nil }
        self.status = status
        headers = lines.dropFirst().compactMap { line in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        guard let length = headers.first(where: { $0.0.lowercased() == "content-length" }).flatMap({ Int($0.1) }),
              bytes.count >= end + 4 + length else { return nil }
        body = String(decoding: bytes[(end + 4)..<(end + 4 + length)], as: UTF8.self)
        rest = String(decoding: bytes[(end + 4 + length)...], as: UTF8.self)
    }

    func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
}
