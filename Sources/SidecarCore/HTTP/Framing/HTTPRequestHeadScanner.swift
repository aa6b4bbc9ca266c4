/// A request head as found by `HTTPRequestHeadScanner`: offsets into the scanned bytes (counted
/// from the first byte given to the scanner, i.e. a ByteBuffer's readerIndex), never copies.
///
/// The caller owns the bytes and keeps them until it has read what it needs; the head is only
/// meaningful together with them. Values are trimmed of surrounding whitespace.
public struct ScannedRequestHead: Sendable, Hashable {
    /// Bytes of the head, request line to the blank line inclusive; the body starts here.
    public internal(set) var length = 0
    public internal(set) var method = 0..<0
    public internal(set) var target = 0..<0
    public internal(set) var version = HTTPVersionNumber.http1_1
    /// Where the first field line starts (just after the request line's CRLF).
    public internal(set) var fieldsStart = 0
    public internal(set) var fieldCount = 0
    /// The method is `HEAD` (its response has no body, RFC 9110 §9.3.2).
    public internal(set) var isHEAD = false

    /// `Host`, required once on HTTP/1.1 (RFC 9112 §3.2); may be empty.
    public internal(set) var host: Range<Int>?
    public internal(set) var contentLength: Int?
    /// The body is chunked (`Transfer-Encoding: chunked`, the only coding a request may have).
    public internal(set) var isChunked = false
    public internal(set) var connection: HTTPConnectionOptions = []
    public internal(set) var expect: Range<Int>?
    /// `Expect: 100-continue` (any case).
    public internal(set) var expectsContinue = false
    public internal(set) var authorization: Range<Int>?
    public internal(set) var apiKey: Range<Int>?
    public internal(set) var xAPIKey: Range<Int>?
    /// The first `Cache-Control` line; when `cacheControlLines` > 1, `forEachField` finds the rest.
    public internal(set) var cacheControl: Range<Int>?
    public internal(set) var cacheControlLines = 0
    public internal(set) var openAIOrganization: Range<Int>?
    public internal(set) var openAIProject: Range<Int>?
    /// Every `x-sidecar-*` field, in order. Empty (and not allocated) when there is none.
    public internal(set) var sidecarFields: [HTTPFieldRange] = []

    /// How the body is delimited (RFC 9112 §6.3): chunked, else Content-Length, else no body.
    public var framing: HTTPBodyFraming {
        if isChunked { return .chunked }
        return .contentLength(contentLength ?? 0)
    }

    /// The client keeps the connection open after this exchange (RFC 9112 §9.3).
    public var isPersistent: Bool { connection.isPersistent(version) }

    /// Calls `body` with every field line, in order (name and trimmed value).
    public func forEachField(in bytes: UnsafeRawBufferPointer, _ body: (HTTPFieldRange) -> Void) {
        HTTPFieldRange.forEach(in: bytes, fields: fieldsStart..<length) { field, _ in body(field) }
    }
}

/// Scans a request head incrementally and strictly (RFC 9112), over bytes, with no allocation
/// but the `x-sidecar-*` list.
///
/// Give it the bytes received so far, always from the same first byte and each time at least as
/// many as before; it returns nil until the head is complete, then the head. Each call only looks
/// at bytes it has not seen, and each complete line is checked once, as soon as it arrives, so a
/// bad request line is refused before the rest of the head is read. The result depends only on
/// the bytes, never on how they were split. After a head or an error, further calls repeat it.
///
/// Refused with 400 unless said otherwise:
/// - framing: bare LF or bare CR; obs-fold; whitespace before a colon; empty or non-token names;
///   CTLs (other than HT) in values; more than `maxHeadBytes` or `maxFieldCount` (431);
/// - request line: exactly `method SP target SP version`; the method a token; the target
///   origin-form (`/...`, visible ASCII, no `#`) or `*` for OPTIONS only. Absolute-form is
///   refused although RFC 9112 §3.2.2 asks servers to accept it: clients of a reverse proxy
///   never send it, and a second authority beside Host is a routing-confusion vector.
///   Leading empty lines (§2.2 SHOULD ignore) are refused too;
/// - version exactly `HTTP/1.1` or `HTTP/1.0` (another `HTTP/d.d` is 505);
/// - Host: missing on HTTP/1.1, repeated, or with bytes outside host syntax;
/// - Content-Length: not 1*DIGIT, a list, repeated, or together with Transfer-Encoding;
/// - either of them ending in HT (llhttp reads those differently: see `checkFramingFieldEnd`);
/// - Transfer-Encoding: on HTTP/1.0; anything but exactly `chunked` (another coding before a
///   final chunked is 501);
/// - Authorization, api-key, x-api-key, Expect, OpenAI-Organization, OpenAI-Project repeated:
///   which one an upstream would honour is anybody's guess;
/// - Connection elements that are not tokens.
public struct HTTPRequestHeadScanner: Sendable {
    public let limits: HTTPHeadLimits
    var lines = HTTPLineFinder()
    var head = ScannedRequestHead()
    private var transferCodings = HTTPTransferCodings()
    var state = HTTPHeadScanState<ScannedRequestHead>.startLine

    public init(limits: HTTPHeadLimits = HTTPHeadLimits()) {
        self.limits = limits
    }

    /// The head when `bytes` contains all of it, nil when more bytes are needed.
    public mutating func scan(_ bytes: UnsafeRawBufferPointer) throws(HTTPFramingError) -> ScannedRequestHead? {
        try scanHead(bytes)
    }

    /// `method SP request-target SP HTTP-version` (RFC 9112 §3), single spaces.
    mutating func parseStartLine(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) throws(HTTPFramingError) {
        guard !line.isEmpty else { throw .emptyStartLine }
        let end = line.upperBound
        var i = line.lowerBound
        while i < end, bytes[i] != HTTPSyntax.sp {
            guard HTTPSyntax.isToken(bytes[i]) else { throw bytes[i] == HTTPSyntax.cr ? .bareCR : .invalidMethod }
            i += 1
        }
        guard i > line.lowerBound, i < end else { throw .invalidMethod }
        head.method = line.lowerBound..<i
        i += 1
        let targetStart = i
        while i < end, bytes[i] != HTTPSyntax.sp {
            guard HTTPSyntax.isTargetByte(bytes[i]) else { throw bytes[i] == HTTPSyntax.cr ? .bareCR : .invalidTarget }
            i += 1
        }
        guard i > targetStart, i < end else { throw .invalidTarget }
        head.target = targetStart..<i
        i += 1
        guard end - i == 8 else {
            for j in i..<end where bytes[j] == HTTPSyntax.cr { throw .bareCR }
            throw .invalidVersion
        }
        head.version = try HTTPVersionNumber.parse(bytes, at: i)
        head.isHEAD = HTTPSyntax.equalsExactly(bytes, head.method, "HEAD")
        if bytes[targetStart] != HTTPSyntax.slash {
            let isOptions = HTTPSyntax.equalsExactly(bytes, head.method, "OPTIONS")
            let isAsterisk = head.target.count == 1 && bytes[targetStart] == HTTPSyntax.star && isOptions
            guard isAsterisk || Self.isAbsoluteForm(bytes, head.target) else { throw .unsupportedTargetForm }
        }
    }

    /// `scheme "://" ...` (RFC 9112 §3.2.2: a server must accept absolute-form; what it names is
    /// the router's business, which answers anything outside `/v1` with a 404). Authority-form
    /// (CONNECT) and `*` outside OPTIONS stay refused.
    static func isAbsoluteForm(_ bytes: UnsafeRawBufferPointer, _ target: Range<Int>) -> Bool {
        var i = target.lowerBound
        guard i < target.upperBound, HTTPSyntax.isAlpha(bytes[i]) else { return false }
        i += 1
        while i < target.upperBound {
            let b = bytes[i]
            if b == UInt8(ascii: ":") { break }
            guard HTTPSyntax.isAlpha(b) || (b >= 0x30 && b <= 0x39) || b == UInt8(ascii: "+") || b == UInt8(ascii: "-") || b == UInt8(ascii: ".") else { return false }
            i += 1
        }
        return target.upperBound - i > 3 && bytes[i] == UInt8(ascii: ":") && bytes[i + 1] == HTTPSyntax.slash && bytes[i + 2] == HTTPSyntax.slash
    }

    mutating func parseField(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) throws(HTTPFramingError) {
        let field = try HTTPFieldRange.parse(bytes, line: line)
        guard let known = HTTPKnownField.identify(bytes, field.name) else { return }
        let value = field.value
        switch known {
        case .host:
            try HTTPKnownField.setOnce(&head.host, value, .repeatedHost)
            for i in value where !HTTPSyntax.isHostByte(bytes[i]) { throw .invalidHost }
        case .contentLength:
            try HTTPKnownField.setContentLength(&head.contentLength, bytes, value)
            try HTTPKnownField.checkFramingFieldEnd(bytes, field, line: line, .invalidContentLength)
        case .transferEncoding:
            try HTTPKnownField.checkFramingFieldEnd(bytes, field, line: line, .invalidTransferEncoding)
            transferCodings.add(bytes, value)
        case .connection:
            try head.connection.add(bytes, value)
        case .expect:
            try HTTPKnownField.setOnce(&head.expect, value, .repeatedField)
            head.expectsContinue = HTTPSyntax.equals(bytes, value, "100-continue")
        case .authorization:
            try HTTPKnownField.setOnce(&head.authorization, value, .repeatedField)
        case .apiKey:
            try HTTPKnownField.setOnce(&head.apiKey, value, .repeatedField)
        case .xAPIKey:
            try HTTPKnownField.setOnce(&head.xAPIKey, value, .repeatedField)
        case .cacheControl:
            if head.cacheControl == nil { head.cacheControl = value }
            head.cacheControlLines += 1
        case .openAIOrganization:
            try HTTPKnownField.setOnce(&head.openAIOrganization, value, .repeatedField)
        case .openAIProject:
            try HTTPKnownField.setOnce(&head.openAIProject, value, .repeatedField)
        case .sidecar:
            head.sidecarFields.append(field)
        case .contentType:
            break
        }
    }

    /// The checks that need the whole head (RFC 9112 §3.2, §6.1, §6.3).
    mutating func finish() throws(HTTPFramingError) {
        if head.version == .http1_1, head.host == nil { throw .missingHost }
        guard transferCodings.present else { return }
        if head.contentLength != nil { throw .contentLengthWithTransferEncoding }
        if head.version == .http1_0 { throw .transferEncodingInHTTP10 }
        try transferCodings.checkRequest()
        head.isChunked = true
    }
}

extension HTTPRequestHeadScanner: HTTPHeadScanning {}
extension ScannedRequestHead: HTTPScannedHeadShape {}
