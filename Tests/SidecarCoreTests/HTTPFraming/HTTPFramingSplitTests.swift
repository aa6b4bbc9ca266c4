import SidecarCore
import XCTest

/// What a request or response scanner and the body framer make of a byte stream, fed in pieces.
struct MessageOutcome: Equatable {
    var headLength: Int?
    var headError: HTTPFramingError?
    var body = FramedBody()
}

/// Feeds `bytes` cut at `cuts` (ascending, within bounds) to a head scanner — each time the
/// whole prefix so far, as a caller accumulating a buffer would — then the rest to a body framer
/// piece by piece.
func processMessage(_ bytes: [UInt8], isRequest: Bool, cuts: [Int], close: Bool = false,
                    limits: HTTPHeadLimits = HTTPHeadLimits()) -> MessageOutcome {
    var outcome = MessageOutcome()
    var framing: HTTPBodyFraming?
    var headLength = 0
    var pieceCuts: [Int] = []
    if isRequest {
        var scanner = HTTPRequestHeadScanner(limits: limits)
        for end in cuts + [bytes.count] where framing == nil {
            let prefix = Array(bytes[0..<end])
            let r = prefix.withUnsafeBytes { b in Result { () throws(HTTPFramingError) in try scanner.scan(b) } }
            switch r {
            case .failure(let e): outcome.headError = e; return outcome
            case .success(.some(let head)):
                checkBounds(head, bytes.count)
                framing = head.framing
                headLength = head.length
            case .success(.none): continue
            }
        }
    } else {
        var scanner = HTTPResponseHeadScanner(limits: limits)
        for end in cuts + [bytes.count] where framing == nil {
            let prefix = Array(bytes[0..<end])
            let r = prefix.withUnsafeBytes { b in Result { () throws(HTTPFramingError) in try scanner.scan(b) } }
            switch r {
            case .failure(let e): outcome.headError = e; return outcome
            case .success(.some(let head)):
                checkBounds(head, bytes.count)
                framing = head.framing(requestIsHEAD: false)
                headLength = head.length
            case .success(.none): continue
            }
        }
    }
    guard let framing else { return outcome }
    outcome.headLength = headLength
    pieceCuts = cuts.filter { $0 > headLength }.map { $0 - headLength }
    outcome.body = frameBody(Array(bytes[headLength...]), framing, cuts: pieceCuts, close: close)
    return outcome
}

private func checkBounds(_ head: ScannedRequestHead, _ count: Int, file: StaticString = #filePath, line: UInt = #line) {
    let ranges = [head.method, head.target] + [head.host, head.authorization, head.apiKey, head.xAPIKey, head.expect,
                                               head.cacheControl, head.openAIOrganization, head.openAIProject].compactMap { $0 }
        + head.sidecarFields.flatMap { [$0.name, $0.value] }
    for r in ranges { XCTAssertTrue(r.lowerBound >= 0 && r.upperBound <= head.length, file: file, line: line) }
    XCTAssertTrue(head.length <= count && head.fieldsStart <= head.length, file: file, line: line)
}

private func checkBounds(_ head: ScannedResponseHead, _ count: Int, file: StaticString = #filePath, line: UInt = #line) {
    for r in [head.reason] + [head.contentType, head.transferEncoding].compactMap({ $0 }) {
        XCTAssertTrue(r.lowerBound >= 0 && r.upperBound <= head.length, file: file, line: line)
    }
    XCTAssertTrue(head.length <= count && head.fieldsStart <= head.length, file: file, line: line)
}

/// The same bytes give the same head, body and end however they are split.
final class HTTPFramingSplitTests: XCTestCase {
    private let chunkedRequest = Array("""
    POST /v1/chat/completions HTTP/1.1\r
    Host: h\r
    Transfer-Encoding: chunked\r
    \r
    5;ext=1\r
    hello\r
    B\r
    , world!!!!\r
    0\r
    X-Checksum: abc\r
    \r
    GET /next HTTP/1.1\r

    """.utf8)

    func testEverySplitPointOfATypicalRequestGivesTheSameHead() {
        let bytes = (typicalChatRequest + String(repeating: "b", count: 98)).crlf
        let whole = scanRequest(bytes)
        guard case .head = whole else { return XCTFail("not accepted") }
        for k in 0...bytes.count {
            XCTAssertEqual(scanRequestIncrementally(bytes, cuts: [k]), whole, "split at \(k)")
            XCTAssertEqual(processMessage(bytes, isRequest: true, cuts: [k]), processMessage(bytes, isRequest: true, cuts: []))
        }
        XCTAssertEqual(scanRequestIncrementally(bytes, cuts: Array(0..<bytes.count)), whole, "one byte at a time")
    }

    func testEverySplitPointOfAResponseGivesTheSameHead() {
        let bytes = typicalChatResponse.crlf + Array("5\r\nhello\r\n0\r\n\r\n".utf8)
        let whole = processMessage(bytes, isRequest: false, cuts: [])
        XCTAssertEqual(whole.body.end, bytes.count - whole.headLength!)
        for k in 0...bytes.count {
            XCTAssertEqual(processMessage(bytes, isRequest: false, cuts: [k]), whole, "split at \(k)")
        }
        XCTAssertEqual(scanResponseIncrementally(bytes, cuts: Array(0..<bytes.count)), scanResponse(bytes))
    }

    func testEverySplitPairOfAChunkedBodyGivesTheSameBody() {
        let whole = processMessage(chunkedRequest, isRequest: true, cuts: [])
        XCTAssertEqual(String(decoding: whole.body.body, as: UTF8.self), "hello, world!!!!")
        XCTAssertEqual(whole.headLength! + whole.body.end!, chunkedRequest.count - "GET /next HTTP/1.1\r\n".utf8.count)
        for a in 0...chunkedRequest.count {
            for b in a...chunkedRequest.count {
                XCTAssertEqual(processMessage(chunkedRequest, isRequest: true, cuts: [a, b]), whole, "split at \(a), \(b)")
            }
        }
    }

    func testEverySplitPointOfARefusedMessageGivesTheSameError() {
        let bad = Array("GET / HTTP/1.1\r\nHost: h\r\nX: 1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
        for k in 0...bad.count {
            XCTAssertEqual(scanRequestIncrementally(bad, cuts: [k]), .refused(.contentLengthWithTransferEncoding))
        }
        let badChunk = Array("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX".utf8)
        for k in 0...badChunk.count {
            XCTAssertEqual(processMessage(badChunk, isRequest: true, cuts: [k]).body.error, .missingCRLFAfterChunk)
        }
    }

    /// Generated valid messages, each cut at random places: the scanners find what the generator
    /// wrote, and the outcome never depends on the cuts.
    func testRandomValidMessagesUnderRandomSplits() {
        var gen = HTTPMessageGenerator(seed: 0x5EED_F00D)
        var rng = SplitMix64(seed: 99)
        for i in 0..<400 {
            let m = i % 2 == 0 ? gen.request() : gen.response()
            let whole = processMessage(m.bytes, isRequest: m.isRequest, cuts: [], close: m.framing == .untilClose)
            XCTAssertNil(whole.headError, "message \(i) refused: \(String(decoding: m.bytes, as: UTF8.self))")
            XCTAssertEqual(whole.body.body, m.body, "message \(i)")
            XCTAssertEqual(whole.headLength.map { $0 + (whole.body.end ?? -1_000_000) }, m.end, "message \(i)")
            for _ in 0..<5 {
                let cuts = randomCuts(m.bytes.count, using: &rng)
                XCTAssertEqual(processMessage(m.bytes, isRequest: m.isRequest, cuts: cuts, close: m.framing == .untilClose), whole,
                               "message \(i) cut at \(cuts)")
            }
        }
    }

    /// Mutated messages (bytes flipped, inserted, removed): no trap, and still one outcome
    /// whatever the cuts.
    func testRandomMutationsNeverDependOnSplits() {
        var gen = HTTPMessageGenerator(seed: 0xBAD_5EED)
        var rng = SplitMix64(seed: 7)
        let interesting: [UInt8] = [0x0D, 0x0A, 0x20, 0x09, 0x3A, 0x2C, 0x3B, 0x00, 0x7F, 0xFF, 0x30, 0x61]
        for i in 0..<600 {
            var m = i % 2 == 0 ? gen.request() : gen.response()
            for _ in 0..<Int.random(in: 1...3, using: &rng) where !m.bytes.isEmpty {
                let at = Int.random(in: 0..<m.bytes.count, using: &rng)
                let byte = Bool.random(using: &rng) ? interesting.randomElement(using: &rng)! : UInt8.random(in: 0...255, using: &rng)
                switch Int.random(in: 0...2, using: &rng) {
                case 0: m.bytes[at] = byte
                case 1: m.bytes.insert(byte, at: at)
                default: m.bytes.remove(at: at)
                }
            }
            let limits = HTTPHeadLimits(maxHeadBytes: 2048, maxFieldCount: 12)
            let whole = processMessage(m.bytes, isRequest: m.isRequest, cuts: [], limits: limits)
            for _ in 0..<4 {
                let cuts = randomCuts(m.bytes.count, using: &rng)
                XCTAssertEqual(processMessage(m.bytes, isRequest: m.isRequest, cuts: cuts, limits: limits), whole, "mutant \(i) cut at \(cuts)")
            }
        }
    }

    private func randomCuts(_ count: Int, using rng: inout SplitMix64) -> [Int] {
        (0..<Int.random(in: 1...4, using: &rng)).map { _ in Int.random(in: 0...count, using: &rng) }.sorted()
    }
}
