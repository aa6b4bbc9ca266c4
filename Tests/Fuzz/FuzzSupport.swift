// Invariants the fuzz harnesses assert. Built with swiftc together with
// Sources/SidecarCore/HTTP/Framing/*.swift (not the ByteBuffer file) into one module, outside
// SwiftPM: see `make fuzz`. A failed `check` traps, which libFuzzer reports as a crash.

@inline(__always)
func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("invariant: \(message())") }
}

/// A split point chosen from the input itself, so a crash reproduces from the saved input alone.
func splitPoint(_ data: UnsafeRawBufferPointer) -> Int {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for b in data.prefix(64) { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
    return Int(h % UInt64(data.count + 1))
}

enum Scanned<Head: Equatable>: Equatable {
    case needMore
    case head(Head)
    case refused(HTTPFramingError)
}

func scanRequest(_ scanner: inout HTTPRequestHeadScanner, _ bytes: UnsafeRawBufferPointer) -> Scanned<ScannedRequestHead> {
    do throws(HTTPFramingError) { return try scanner.scan(bytes).map { .head($0) } ?? .needMore } catch { return .refused(error) }
}

func scanResponse(_ scanner: inout HTTPResponseHeadScanner, _ bytes: UnsafeRawBufferPointer) -> Scanned<ScannedResponseHead> {
    do throws(HTTPFramingError) { return try scanner.scan(bytes).map { .head($0) } ?? .needMore } catch { return .refused(error) }
}

/// What a framer made of an input: body bytes, end offset, error.
struct Framed: Equatable {
    var body: [UInt8] = []
    var end: Int?
    var error: HTTPFramingError?
}

/// Runs a framer over `input` cut at `cuts` (ascending), checking that every step's range
/// starts where it was asked to and stays inside its piece.
func frame(_ input: UnsafeRawBufferPointer, _ framing: HTTPBodyFraming, cuts: [Int], limits: HTTPChunkLimits = HTTPChunkLimits()) -> Framed {
    var framer = HTTPBodyFramer(framing, limits: limits)
    var out = Framed()
    var offset = 0
    for end in cuts + [input.count] where end >= offset {
        let piece = UnsafeRawBufferPointer(rebasing: input[offset..<end])
        var at = 0
        while true {
            let step: HTTPBodyStep
            do throws(HTTPFramingError) { step = try framer.step(piece, from: at) } catch { out.error = error; return out }
            switch step {
            case .data(let r):
                check(r.lowerBound == at && r.upperBound <= piece.count && !r.isEmpty, "data range \(r) at \(at) of \(piece.count)")
                out.body += piece[r]
                at = r.upperBound
            case .framing(let r):
                check(r.lowerBound == at && r.upperBound <= piece.count && !r.isEmpty, "framing range \(r) at \(at) of \(piece.count)")
                at = r.upperBound
            case .end(let r):
                check(r.lowerBound == at && r.upperBound <= piece.count, "end range \(r) at \(at) of \(piece.count)")
                check(framer.isComplete, "end while incomplete")
                out.end = offset + r.upperBound
                return out
            case .needMore:
                check(at == piece.count, "needMore with \(piece.count - at) bytes left")
                break
            }
            if case .needMore = step { break }
        }
        offset = end
    }
    return out
}

/// Body framing of `rest` whole, and cut at the split point: the same body, end and error.
func checkBodySplitInvariance(_ rest: UnsafeRawBufferPointer, _ framing: HTTPBodyFraming) {
    let whole = frame(rest, framing, cuts: [])
    let k = splitPoint(rest)
    let split = frame(rest, framing, cuts: [k, min(rest.count, k + (rest.count - k) / 2)])
    check(whole == split, "body framing depends on the split at \(k)")
    if let end = whole.end { check(end <= rest.count, "end \(end) past the input") }
}

func checkRange(_ r: Range<Int>?, within length: Int, _ what: String) {
    guard let r else { return }
    check(r.lowerBound >= 0 && r.upperBound <= length, "\(what) \(r) outside the head of \(length)")
}

/// The head ends in CRLF CRLF, its fields parse back to `fieldCount` lines inside it, and a
/// rewrite of it fits its bound and scans again.
func checkHeadShape(_ bytes: UnsafeRawBufferPointer, length: Int, fieldsStart: Int, fieldCount: Int) {
    check(length >= 4 && length <= bytes.count, "length \(length) of \(bytes.count)")
    check(fieldsStart >= 2 && fieldsStart <= length - 2, "fieldsStart \(fieldsStart)")
    check(bytes[length - 4] == 0x0D && bytes[length - 3] == 0x0A && bytes[length - 2] == 0x0D && bytes[length - 1] == 0x0A,
          "head does not end in CRLF CRLF")
    var n = 0
    HTTPFieldRange.forEach(in: bytes, fields: fieldsStart..<length) { field, line in
        n += 1
        check(line.upperBound <= length && field.name.lowerBound == line.lowerBound && field.value.upperBound <= line.upperBound - 2,
              "field ranges")
    }
    check(n == fieldCount, "forEach found \(n) fields, the scanner \(fieldCount)")
}

/// A rewrite exercising every kind of edit.
let fuzzRewrite: HTTPHeadRewrite = {
    var rw = HTTPHeadRewrite()
    rw.target = HTTPRequestTarget("/v1/chat/completions")
    rw.replace(HTTPFieldName("Host")!, with: HTTPFieldValue("api.openai.com")!)
    rw.replace(HTTPFieldName("Authorization")!, with: HTTPFieldValue("Bearer sk-upstream")!)
    rw.drop(HTTPFieldName("x-api-key")!)
    rw.dropsSidecarFields = true
    rw.add(HTTPFieldName("x-request-id")!, HTTPFieldValue("r-1")!)
    return rw
}()

/// Writes `body`'s output into a buffer of exactly the bound, checking it never needs more.
func rewritten(_ bound: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) -> [UInt8] {
    [UInt8](unsafeUninitializedCapacity: bound) { out, count in
        count = body(UnsafeMutableRawBufferPointer(out))
        check(count <= bound, "rewrite wrote \(count) of a bound of \(bound)")
    }
}
