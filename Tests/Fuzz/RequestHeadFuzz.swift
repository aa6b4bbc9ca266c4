// libFuzzer harness: arbitrary bytes as a request (head, then body). See FuzzSupport.swift.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequest(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let data = UnsafeRawBufferPointer(start: start, count: count)
    let limits = HTTPHeadLimits(maxHeadBytes: 4096, maxFieldCount: 32)
    var wholeScanner = HTTPRequestHeadScanner(limits: limits)
    let whole = scanRequest(&wholeScanner, data)

    var splitScanner = HTTPRequestHeadScanner(limits: limits)
    let k = splitPoint(data)
    let first = scanRequest(&splitScanner, UnsafeRawBufferPointer(rebasing: data[0..<k]))
    let second = scanRequest(&splitScanner, data)
    switch first {
    case .needMore: check(second == whole, "request scan depends on the split at \(k)")
    default: check(first == whole && second == whole, "a prefix decided differently from the whole")
    }

    guard case .head(let head) = whole else { return 0 }
    checkHeadShape(data, length: head.length, fieldsStart: head.fieldsStart, fieldCount: head.fieldCount)
    for r in [head.host, head.authorization, head.apiKey, head.xAPIKey, head.expect,
              head.cacheControl, head.openAIOrganization, head.openAIProject] {
        checkRange(r, within: head.length, "field")
        if let r { check(r.lowerBound >= head.fieldsStart, "field \(r) before the fields") }
    }
    checkRange(head.method, within: head.fieldsStart, "method")
    checkRange(head.target, within: head.fieldsStart, "target")
    for f in head.sidecarFields { checkRange(f.value, within: head.length, "x-sidecar") }

    let out = rewritten(fuzzRewrite.maximumLength(headLength: head.length)) {
        HTTPHeadRewriter.rewrite(data, request: head, fuzzRewrite, into: $0)
    }
    var rescanner = HTTPRequestHeadScanner(limits: HTTPHeadLimits(maxHeadBytes: 1 << 20, maxFieldCount: 1000))
    let again = out.withUnsafeBytes { scanRequest(&rescanner, $0) }
    guard case .head(let h2) = again else { fatalError("invariant: the rewritten head does not scan: \(again)") }
    check(h2.length == out.count, "rewritten head has trailing bytes")
    check(h2.framing == head.framing, "the rewrite changed the framing")

    checkBodySplitInvariance(UnsafeRawBufferPointer(rebasing: data[head.length...]), head.framing)
    return 0
}
