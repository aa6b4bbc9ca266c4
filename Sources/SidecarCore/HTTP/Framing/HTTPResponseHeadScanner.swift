/// A response head as found by `HTTPResponseHeadScanner`: offsets into the scanned bytes, never
/// copies (see `ScannedRequestHead` for who owns the bytes).
public struct ScannedResponseHead: Sendable, Hashable {
    /// What a response is to the exchange (RFC 9110 §15.2).
    public enum Kind: Sendable, Hashable {
        /// 1xx other than 101 (100 Continue, 103 Early Hints): the caller skips it and scans the
        /// bytes after it for the final response.
        case interim
        /// 101: the connection becomes another protocol after this head.
        case switchingProtocols
        /// 2xx–5xx.
        case final
    }

    /// Bytes of the head, status line to the blank line inclusive; the body starts here.
    public internal(set) var length = 0
    public internal(set) var version = HTTPVersionNumber.http1_1
    public internal(set) var status = 0
    /// The reason phrase; empty when the status line has none.
    public internal(set) var reason = 0..<0
    /// Where the first field line starts (just after the status line's CRLF).
    public internal(set) var fieldsStart = 0
    public internal(set) var fieldCount = 0
    public internal(set) var contentLength: Int?
    /// The body is chunked (`chunked` is the final transfer coding).
    public internal(set) var isChunked = false
    /// The first `Transfer-Encoding` line, when there is one (codings before `chunked`, such as
    /// gzip, are the representation's and pass through).
    public internal(set) var transferEncoding: Range<Int>?
    public internal(set) var connection: HTTPConnectionOptions = []
    /// The first `Content-Type` line.
    public internal(set) var contentType: Range<Int>?

    public var kind: Kind {
        if status == 101 { return .switchingProtocols }
        return status < 200 ? .interim : .final
    }

    /// How the body is delimited (RFC 9112 §6.3): none for a response to HEAD, 1xx, 204 and 304
    /// whatever the fields say; else chunked, else Content-Length, else until the server closes.
    public func framing(requestIsHEAD: Bool) -> HTTPBodyFraming {
        if requestIsHEAD || status < 200 || status == 204 || status == 304 { return .contentLength(0) }
        if isChunked { return .chunked }
        if let contentLength { return .contentLength(contentLength) }
        return .untilClose
    }

    /// The server keeps the connection open after this response (RFC 9112 §9.3). A body read
    /// until close ends the connection whatever this says.
    public var isPersistent: Bool { connection.isPersistent(version) }

    /// Calls `body` with every field line, in order (name and trimmed value).
    public func forEachField(in bytes: UnsafeRawBufferPointer, _ body: (HTTPFieldRange) -> Void) {
        HTTPFieldRange.forEach(in: bytes, fields: fieldsStart..<length) { field, _ in body(field) }
    }
}

/// Scans a response head incrementally and strictly; the same contract as
/// `HTTPRequestHeadScanner` (same bytes from the same start, nil until complete, split-invariant).
///
/// Refused: the line and field rules of requests; a status line other than
/// `HTTP/1.x SP 3DIGIT [SP reason]` with the code in 100–599 (a missing reason, even without its
/// space, is accepted: upstreams send it and it carries nothing); Content-Length not 1*DIGIT,
/// a list, repeated, or beside Transfer-Encoding; either ending in HT; Transfer-Encoding on
/// HTTP/1.0, with an empty element, or without a single, final `chunked`.
public struct HTTPResponseHeadScanner: Sendable {
    public let limits: HTTPHeadLimits
    var lines = HTTPLineFinder()
    var head = ScannedResponseHead()
    private var transferCodings = HTTPTransferCodings()
    var state = HTTPHeadScanState<ScannedResponseHead>.startLine

    public init(limits: HTTPHeadLimits = HTTPHeadLimits()) {
        self.limits = limits
    }

    /// The head when `bytes` contains all of it, nil when more bytes are needed.
    public mutating func scan(_ bytes: UnsafeRawBufferPointer) throws(HTTPFramingError) -> ScannedResponseHead? {
        try scanHead(bytes)
    }

    /// `HTTP-version SP status-code SP reason-phrase` (RFC 9112 §4).
    mutating func parseStartLine(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) throws(HTTPFramingError) {
        guard !line.isEmpty else { throw .emptyStartLine }
        for i in line where bytes[i] == HTTPSyntax.cr { throw .bareCR }
        let s = line.lowerBound
        guard line.count >= 8 else { throw .invalidVersion }
        head.version = try HTTPVersionNumber.parse(bytes, at: s)
        guard line.count >= 12, bytes[s + 8] == HTTPSyntax.sp else { throw .invalidStatusLine }
        var code = 0
        for i in (s + 9)..<(s + 12) {
            let d = bytes[i] &- 0x30
            guard d < 10 else { throw .invalidStatusCode }
            code = code * 10 + Int(d)
        }
        guard (100...599).contains(code) else { throw .invalidStatusCode }
        head.status = code
        let afterCode = s + 12
        head.reason = afterCode..<afterCode
        guard afterCode < line.upperBound else { return }
        guard bytes[afterCode] == HTTPSyntax.sp else { throw .invalidStatusCode }
        for i in (afterCode + 1)..<line.upperBound where !HTTPSyntax.isFieldValueByte(bytes[i]) { throw .invalidStatusLine }
        head.reason = (afterCode + 1)..<line.upperBound
    }

    mutating func parseField(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) throws(HTTPFramingError) {
        let field = try HTTPFieldRange.parse(bytes, line: line)
        guard let known = HTTPKnownField.identify(bytes, field.name) else { return }
        switch known {
        case .contentLength:
            try HTTPKnownField.setContentLength(&head.contentLength, bytes, field.value)
            try HTTPKnownField.checkFramingFieldEnd(bytes, field, line: line, .invalidContentLength)
        case .transferEncoding:
            try HTTPKnownField.checkFramingFieldEnd(bytes, field, line: line, .invalidTransferEncoding)
            if head.transferEncoding == nil { head.transferEncoding = field.value }
            transferCodings.add(bytes, field.value)
        case .connection:
            try head.connection.add(bytes, field.value)
        case .contentType:
            if head.contentType == nil { head.contentType = field.value }
        default:
            break
        }
    }

    /// The checks that need the whole head (RFC 9112 §6.1, §6.3).
    mutating func finish() throws(HTTPFramingError) {
        guard transferCodings.present else { return }
        if head.contentLength != nil { throw .contentLengthWithTransferEncoding }
        if head.version == .http1_0 { throw .transferEncodingInHTTP10 }
        try transferCodings.checkResponse()
        head.isChunked = true
    }
}

extension HTTPResponseHeadScanner: HTTPHeadScanning {}
extension ScannedResponseHead: HTTPScannedHeadShape {}
