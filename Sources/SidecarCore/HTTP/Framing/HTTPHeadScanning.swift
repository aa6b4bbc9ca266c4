/// Where a head scanner is: before or in the start line, among the fields, done, or failed.
enum HTTPHeadScanState<Head: Sendable>: Sendable {
    case startLine, fields
    case done(Head)
    case failed(HTTPFramingError)
}

/// The offsets every scanned head has.
protocol HTTPScannedHeadShape: Sendable {
    var length: Int { get set }
    var fieldsStart: Int { get set }
    var fieldCount: Int { get set }
}

/// What the request and response head scanners share: the line loop, the limits, the states.
/// Each brings its own start line, field and end-of-head rules.
protocol HTTPHeadScanning {
    associatedtype Head: HTTPScannedHeadShape
    var limits: HTTPHeadLimits { get }
    var lines: HTTPLineFinder { get set }
    var head: Head { get set }
    var state: HTTPHeadScanState<Head> { get set }
    init(limits: HTTPHeadLimits)
    mutating func parseStartLine(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) throws(HTTPFramingError)
    mutating func parseField(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) throws(HTTPFramingError)
    /// The blank line arrived: the checks that need the whole head.
    mutating func finish() throws(HTTPFramingError)
}

extension HTTPHeadScanning {
    /// The scan loop of both scanners (the contract is `HTTPRequestHeadScanner`'s): only lines not
    /// seen before are looked at, each once; after a head or an error, further calls repeat it.
    @inline(__always)
    mutating func scanHead(_ bytes: UnsafeRawBufferPointer) throws(HTTPFramingError) -> Head? {
        switch state {
        case .done(let head): return head
        case .failed(let error): throw error
        case .startLine, .fields: break
        }
        if bytes.count < lines.position { self = Self(limits: limits) }
        do throws(HTTPFramingError) {
            while let line = try lines.nextLine(bytes, limit: limits.maxHeadBytes) {
                if case .startLine = state {
                    try parseStartLine(bytes, line)
                    head.fieldsStart = line.upperBound + 2
                    state = .fields
                } else if line.isEmpty {
                    head.length = line.upperBound + 2
                    try finish()
                    state = .done(head)
                    return head
                } else {
                    head.fieldCount += 1
                    guard head.fieldCount <= limits.maxFieldCount else { throw HTTPFramingError.tooManyFields }
                    try parseField(bytes, line)
                }
            }
            return nil
        } catch {
            state = .failed(error)
            throw error
        }
    }
}
