import SidecarCore
import XCTest

/// The outcome of scanning a whole message's bytes at once, in a comparable form.
enum ScanOutcome<Head: Equatable>: Equatable {
    case needMore
    case head(Head)
    case refused(HTTPFramingError)
}

func scanRequest(_ bytes: [UInt8], limits: HTTPHeadLimits = HTTPHeadLimits()) -> ScanOutcome<ScannedRequestHead> {
    var scanner = HTTPRequestHeadScanner(limits: limits)
    return bytes.withUnsafeBytes { b in
        do throws(HTTPFramingError) { return try scanner.scan(b).map(ScanOutcome.head) ?? .needMore } catch { return .refused(error) }
    }
}

func scanResponse(_ bytes: [UInt8], limits: HTTPHeadLimits = HTTPHeadLimits()) -> ScanOutcome<ScannedResponseHead> {
    var scanner = HTTPResponseHeadScanner(limits: limits)
    return bytes.withUnsafeBytes { b in
        do throws(HTTPFramingError) { return try scanner.scan(b).map(ScanOutcome.head) ?? .needMore } catch { return .refused(error) }
    }
}

/// Scans `bytes` fed as the prefixes ending at each of `cuts` and then whole, with one scanner.
func scanRequestIncrementally(_ bytes: [UInt8], cuts: [Int], limits: HTTPHeadLimits = HTTPHeadLimits()) -> ScanOutcome<ScannedRequestHead> {
    var scanner = HTTPRequestHeadScanner(limits: limits)
    for end in cuts + [bytes.count] {
        let prefix = Array(bytes[0..<end])
        let r: ScanOutcome<ScannedRequestHead> = prefix.withUnsafeBytes { b in
            do throws(HTTPFramingError) { return try scanner.scan(b).map(ScanOutcome.head) ?? .needMore } catch { return .refused(error) }
        }
        if r != .needMore { return r }
    }
    return .needMore
}

func scanResponseIncrementally(_ bytes: [UInt8], cuts: [Int], limits: HTTPHeadLimits = HTTPHeadLimits()) -> ScanOutcome<ScannedResponseHead> {
    var scanner = HTTPResponseHeadScanner(limits: limits)
    for end in cuts + [bytes.count] {
        let prefix = Array(bytes[0..<end])
        let r: ScanOutcome<ScannedResponseHead> = prefix.withUnsafeBytes { b in
            do throws(HTTPFramingError) { return try scanner.scan(b).map(ScanOutcome.head) ?? .needMore } catch { return .refused(error) }
        }
        if r != .needMore { return r }
    }
    return .needMore
}

/// What a body framer made of a message: the body bytes, where the message ended (relative to
/// the start of the body), or the error. On an error `framingBytes` is 0: a step that fails
/// reports no range, so how many framing bytes came before depends on the pieces.
struct FramedBody: Equatable {
    var body: [UInt8] = []
    var framingBytes = 0
    var end: Int?
    var error: HTTPFramingError?
}

/// Runs a framer over `bytes` cut into pieces at `cuts` (ascending offsets), then closes the
/// input when `close` is set.
func frameBody(_ bytes: [UInt8], _ framing: HTTPBodyFraming, cuts: [Int] = [], close: Bool = false,
               limits: HTTPChunkLimits = HTTPChunkLimits()) -> FramedBody {
    var framer = HTTPBodyFramer(framing, limits: limits)
    var result = FramedBody()
    var offset = 0
    for end in cuts + [bytes.count] where end >= offset {
        let piece = Array(bytes[offset..<end])
        var at = 0
        pieceLoop: while true {
            let step = piece.withUnsafeBytes { b in Result { () throws(HTTPFramingError) in try framer.step(b, from: at) } }
            switch step {
            case .failure(let error): result.error = error; result.framingBytes = 0; return result
            case .success(.data(let r)): result.body += piece[r]; at = r.upperBound
            case .success(.framing(let r)): result.framingBytes += r.count; at = r.upperBound
            case .success(.end(let r)): result.framingBytes += r.count; result.end = offset + r.upperBound; return result
            case .success(.needMore): break pieceLoop
            }
        }
        offset = end
    }
    if close {
        do throws(HTTPFramingError) { try framer.inputClosed(); result.end = bytes.count } catch { result.error = error }
    }
    return result
}

extension String {
    /// The string with every `\n` turned into CRLF (the tests write heads with plain newlines).
    var crlf: [UInt8] { Array(replacingOccurrences(of: "\n", with: "\r\n").utf8) }
}

/// The text of `range` in `bytes`.
func text(_ bytes: [UInt8], _ range: Range<Int>?) -> String? {
    range.map { String(decoding: bytes[$0], as: UTF8.self) }
}

/// Every field of a scanned head as (name, value) text.
func fields(_ bytes: [UInt8], _ head: ScannedRequestHead) -> [(String, String)] {
    var out: [(String, String)] = []
    bytes.withUnsafeBytes { b in head.forEachField(in: b) { out.append((text(bytes, $0.name)!, text(bytes, $0.value)!)) } }
    return out
}

func fields(_ bytes: [UInt8], _ head: ScannedResponseHead) -> [(String, String)] {
    var out: [(String, String)] = []
    bytes.withUnsafeBytes { b in head.forEachField(in: b) { out.append((text(bytes, $0.name)!, text(bytes, $0.value)!)) } }
    return out
}

func assertRequestRefused(_ request: String, _ error: HTTPFramingError, status: Int? = nil,
                          limits: HTTPHeadLimits = HTTPHeadLimits(), file: StaticString = #filePath, line: UInt = #line) {
    assertRequestRefused(bytes: request.crlf, error, status: status, limits: limits, file: file, line: line)
}

func assertRequestRefused(bytes: [UInt8], _ error: HTTPFramingError, status: Int? = nil,
                          limits: HTTPHeadLimits = HTTPHeadLimits(), file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(scanRequest(bytes, limits: limits), .refused(error), file: file, line: line)
    if let status { XCTAssertEqual(error.status, status, file: file, line: line) }
}

func assertResponseRefused(_ response: String, _ error: HTTPFramingError, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(scanResponse(response.crlf), .refused(error), file: file, line: line)
}

func requestHead(_ request: String, file: StaticString = #filePath, line: UInt = #line) -> ScannedRequestHead? {
    guard case .head(let h) = scanRequest(request.crlf) else {
        XCTFail("not accepted: \(scanRequest(request.crlf))", file: file, line: line)
        return nil
    }
    return h
}

func responseHead(_ response: String, file: StaticString = #filePath, line: UInt = #line) -> ScannedResponseHead? {
    guard case .head(let h) = scanResponse(response.crlf) else {
        XCTFail("not accepted: \(scanResponse(response.crlf))", file: file, line: line)
        return nil
    }
    return h
}
