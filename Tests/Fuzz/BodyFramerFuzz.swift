// libFuzzer harness: arbitrary bytes as a body. The first byte picks the framing (and a
// Content-Length from the next two); the rest is the body's wire form. See FuzzSupport.swift.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBody(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let data = UnsafeRawBufferPointer(start: start, count: count)
    guard count >= 3 else { return 0 }
    let framing: HTTPBodyFraming
    switch data[0] % 4 {
    case 0: framing = .contentLength(Int(data[1]) << 8 | Int(data[2]))
    case 1: framing = .untilClose
    default: framing = .chunked
    }
    let rest = UnsafeRawBufferPointer(rebasing: data[3...])
    checkBodySplitInvariance(rest, framing)

    // Tight limits reach the size-line and trailer bounds.
    let limits = HTTPChunkLimits(maxChunkLineBytes: 16, maxTrailerBytes: 64)
    let whole = frame(rest, framing, cuts: [], limits: limits)
    let cuts = (0..<min(rest.count, 8)).map { $0 * rest.count / 8 }
    check(frame(rest, framing, cuts: cuts, limits: limits) == whole, "body framing depends on eight cuts")
    if case .contentLength(let n) = framing, whole.error == nil {
        check(whole.body.count == min(n, rest.count), "content-length body of \(whole.body.count), expected \(min(n, rest.count))")
    }
    if framing == .chunked, whole.end != nil {
        check(whole.body.count < rest.count, "a chunked body cannot be as long as its wire form")
    }
    return 0
}
