// libFuzzer harness: arbitrary bytes as a response (head, then body). See FuzzSupport.swift.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzResponse(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let data = UnsafeRawBufferPointer(start: start, count: count)
    let limits = HTTPHeadLimits(maxHeadBytes: 4096, maxFieldCount: 32)
    var wholeScanner = HTTPResponseHeadScanner(limits: limits)
    let whole = scanResponse(&wholeScanner, data)

    var splitScanner = HTTPResponseHeadScanner(limits: limits)
    let k = splitPoint(data)
    let first = scanResponse(&splitScanner, UnsafeRawBufferPointer(rebasing: data[0..<k]))
    let second = scanResponse(&splitScanner, data)
    switch first {
    case .needMore: check(second == whole, "response scan depends on the split at \(k)")
    default: check(first == whole && second == whole, "a prefix decided differently from the whole")
    }

    guard case .head(let head) = whole else { return 0 }
    checkHeadShape(data, length: head.length, fieldsStart: head.fieldsStart, fieldCount: head.fieldCount)
    check((100...599).contains(head.status), "status \(head.status)")
    checkRange(head.reason, within: head.fieldsStart, "reason")
    checkRange(head.contentType, within: head.length, "content-type")
    checkRange(head.transferEncoding, within: head.length, "transfer-encoding")

    let out = rewritten(fuzzRewrite.maximumLength(headLength: head.length)) {
        HTTPHeadRewriter.rewrite(data, response: head, fuzzRewrite, into: $0)
    }
    var rescanner = HTTPResponseHeadScanner(limits: HTTPHeadLimits(maxHeadBytes: 1 << 20, maxFieldCount: 1000))
    let again = out.withUnsafeBytes { scanResponse(&rescanner, $0) }
    guard case .head(let h2) = again else { fatalError("invariant: the rewritten head does not scan: \(again)") }
    check(h2.status == head.status && h2.isChunked == head.isChunked && h2.contentLength == head.contentLength,
          "the rewrite changed the status or framing")

    let isHEAD = count % 7 == 0
    checkBodySplitInvariance(UnsafeRawBufferPointer(rebasing: data[head.length...]), head.framing(requestIsHEAD: isHEAD))
    return 0
}
