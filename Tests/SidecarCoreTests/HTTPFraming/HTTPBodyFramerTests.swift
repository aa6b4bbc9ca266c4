import SidecarCore
import XCTest

final class HTTPBodyFramerTests: XCTestCase {
    private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    func testContentLengthCountsDownAndLeavesTheNextMessage() {
        let r = frameBody(bytes("hello worldGET /"), .contentLength(11))
        XCTAssertEqual(r, FramedBody(body: bytes("hello world"), framingBytes: 0, end: 11))
        XCTAssertEqual(frameBody(bytes("hello"), .contentLength(11)).end, nil)
        XCTAssertEqual(frameBody(bytes("GET /"), .contentLength(0)), FramedBody(end: 0))
    }

    func testContentLengthReportsRemaining() throws {
        var framer = HTTPBodyFramer(.contentLength(10))
        XCTAssertEqual(framer.remainingLength, 10)
        let step = try bytes("abcd").withUnsafeBytes { try framer.step($0, from: 1) }
        XCTAssertEqual(step, .data(1..<4))
        XCTAssertEqual(framer.remainingLength, 7)
        XCTAssertThrowsError(try framer.inputClosed()) { XCTAssertEqual($0 as? HTTPFramingError, .truncatedBody) }
        XCTAssertNil(HTTPBodyFramer(.chunked).remainingLength)
    }

    func testChunkedBodyWithExtensionsAndTrailers() {
        let wire = "5\r\nhello\r\n6;name=value;x=\"q s\"\r\n world\r\nA \t; e\r\n0123456789\r\n0\r\nX-Trailer: t\r\nY:\r\n\r\nNEXT"
        let r = frameBody(bytes(wire), .chunked)
        XCTAssertEqual(String(decoding: r.body, as: UTF8.self), "hello world0123456789")
        XCTAssertEqual(r.end, wire.utf8.count - 4)
        XCTAssertNil(r.error)
        XCTAssertEqual(r.framingBytes + r.body.count, wire.utf8.count - 4)
    }

    func testChunkedSizesAreHexAnyCaseWithLeadingZeros() {
        let r = frameBody(bytes("000a\r\n0123456789\r\n0000\r\n\r\n"), .chunked)
        XCTAssertEqual(r.body.count, 10)
        XCTAssertNotNil(r.end)
        XCTAssertEqual(frameBody(bytes("F\r\n" + String(repeating: "x", count: 15) + "\r\n0\r\n\r\n"), .chunked).body.count, 15)
    }

    func testStepsTileTheInput() throws {
        var framer = HTTPBodyFramer(.chunked)
        let input = bytes("3\r\nabc\r\n0\r\n\r\nrest")
        var steps: [HTTPBodyStep] = []
        var at = 0
        while true {
            let s = try input.withUnsafeBytes { try framer.step($0, from: at) }
            steps.append(s)
            guard case .data(let r) = s else {
                if case .framing(let r) = s { at = r.upperBound; continue }
                break
            }
            at = r.upperBound
        }
        XCTAssertEqual(steps, [.framing(0..<3), .data(3..<6), .end(6..<13)])
        XCTAssertTrue(framer.isComplete)
        XCTAssertEqual(try input.withUnsafeBytes { try framer.step($0, from: 13) }, .end(13..<13))
    }

    func testUntilCloseEndsWhenTheInputCloses() {
        let r = frameBody(bytes("all of it"), .untilClose, close: true)
        XCTAssertEqual(r, FramedBody(body: bytes("all of it"), end: 9))
        XCTAssertNil(frameBody(bytes("all of it"), .untilClose).end)
    }

    func testTruncatedChunkedBodyIsAnErrorOnClose() {
        XCTAssertEqual(frameBody(bytes("5\r\nhel"), .chunked, close: true).error, .truncatedBody)
    }

    // MARK: Refusals

    func testRefusesInvalidHex() {
        XCTAssertEqual(frameBody(bytes("g\r\n"), .chunked).error, .invalidChunkSize)
        XCTAssertEqual(frameBody(bytes("\r\n"), .chunked).error, .invalidChunkSize)
        XCTAssertEqual(frameBody(bytes("-1\r\n"), .chunked).error, .invalidChunkSize)
        XCTAssertEqual(frameBody(bytes("0x5\r\n"), .chunked).error, .invalidChunkSize)
        XCTAssertEqual(frameBody(bytes("5 \r\nhello\r\n"), .chunked).error, .invalidChunkSize)
        XCTAssertEqual(frameBody(bytes(" 5\r\n"), .chunked).error, .invalidChunkSize)
    }

    func testRefusesChunkSizeOverflow() {
        XCTAssertEqual(frameBody(bytes("7fffffffffffffff\r\n"), .chunked).error, nil)
        XCTAssertEqual(frameBody(bytes("8000000000000000\r\n"), .chunked).error, .chunkSizeOverflow)
        XCTAssertEqual(frameBody(bytes("fffffffffffffffff\r\n"), .chunked).error, .chunkSizeOverflow)
        XCTAssertEqual(frameBody(bytes("00000000000000000000001\r\nx\r\n0\r\n\r\n"), .chunked).body, [0x78])
    }

    func testRefusesMissingCRLFAfterData() {
        XCTAssertEqual(frameBody(bytes("3\r\nabcd\r\n"), .chunked).error, .missingCRLFAfterChunk)
        XCTAssertEqual(frameBody(bytes("3\r\nabc\n0\r\n\r\n"), .chunked).error, .missingCRLFAfterChunk)
        XCTAssertEqual(frameBody(bytes("3\r\nabc\rx"), .chunked).error, .missingCRLFAfterChunk)
    }

    func testRefusesBareCRAndLFInFraming() {
        XCTAssertEqual(frameBody(bytes("3\nabc\r\n"), .chunked).error, .bareLF)
        XCTAssertEqual(frameBody(bytes("3\rabc\r\n"), .chunked).error, .bareCR)
        XCTAssertEqual(frameBody(bytes("3;x\nabc"), .chunked).error, .bareLF)
        XCTAssertEqual(frameBody(bytes("0\r\n\n"), .chunked).error, .bareLF)
        XCTAssertEqual(frameBody(bytes("0\r\n\rx"), .chunked).error, .bareCR)
        XCTAssertEqual(frameBody(bytes("0\r\nX: y\n\r\n"), .chunked).error, .bareLF)
    }

    func testRefusesBadExtensionsAndLongSizeLines() {
        XCTAssertEqual(frameBody(bytes("3;a\u{1}b\r\nabc\r\n"), .chunked).error, .invalidChunkExtension)
        let limits = HTTPChunkLimits(maxChunkLineBytes: 8)
        XCTAssertNil(frameBody(bytes("3;abcdef\r\nabc\r\n0\r\n\r\n"), .chunked, limits: limits).error)
        XCTAssertEqual(frameBody(bytes("3;abcdefg\r\nabc\r\n"), .chunked, limits: limits).error, .chunkLineTooLong)
        XCTAssertEqual(frameBody(bytes("000000003\r\nabc\r\n"), .chunked, limits: limits).error, .chunkLineTooLong)
    }

    func testRefusesBadOrOversizedTrailers() {
        XCTAssertEqual(frameBody(bytes("0\r\n: x\r\n\r\n"), .chunked).error, .invalidTrailer)
        XCTAssertEqual(frameBody(bytes("0\r\nX : x\r\n\r\n"), .chunked).error, .invalidTrailer)
        XCTAssertEqual(frameBody(bytes("0\r\nX: x\r\n folded\r\n\r\n"), .chunked).error, .invalidTrailer)
        XCTAssertEqual(frameBody(bytes("0\r\nX: \u{0}\r\n\r\n"), .chunked).error, .invalidTrailer)
        let limits = HTTPChunkLimits(maxTrailerBytes: 10)
        XCTAssertNotNil(frameBody(bytes("0\r\nX: 123\r\n\r\n"), .chunked, limits: limits).end)
        XCTAssertEqual(frameBody(bytes("0\r\nX: 1234\r\n\r\n"), .chunked, limits: limits).error, .trailersTooLarge)
    }
}
