/// Byte-level grammar of HTTP/1.1 (RFC 9110 §5.6, RFC 9112 §2–§5), shared by the scanners, the
/// body framer and the rewriter. Character classes are two 64-bit masks and the byte constants
/// computed properties (no table or global, so no lazy initialisation on the hot path); the
/// long runs (finding LF, checking a value) go eight bytes at a time.
enum HTTPSyntax {
    static var cr: UInt8 { 0x0D }
    static var lf: UInt8 { 0x0A }
    static var sp: UInt8 { 0x20 }
    static var ht: UInt8 { 0x09 }
    static var colon: UInt8 { 0x3A }
    static var comma: UInt8 { 0x2C }
    static var semicolon: UInt8 { 0x3B }
    static var slash: UInt8 { 0x2F }
    static var star: UInt8 { 0x2A }
    static var quote: UInt8 { 0x22 }

    @inline(__always)
    private static func inMask(_ b: UInt8, _ low: UInt64, _ high: UInt64) -> Bool {
        let word = b < 64 ? low : high
        return b < 128 && (word >> UInt64(b & 63)) & 1 == 1
    }

    /// tchar: `!#$%&'*+-.^_`|~`, DIGIT, ALPHA (RFC 9110 §5.6.2).
    @inline(__always)
    static func isToken(_ b: UInt8) -> Bool { inMask(b, 0x03FF_6CFA_0000_0000, 0x57FF_FFFF_C7FF_FFFE) }

    /// A byte of an origin-form target: visible ASCII except `#` (a fragment is never sent).
    /// Stricter than the URI grammar would need to be only about bytes; `{`, `|`, `^` and the like
    /// pass because clients send them unencoded in queries.
    @inline(__always)
    static func isTargetByte(_ b: UInt8) -> Bool { inMask(b, 0xFFFF_FFF6_0000_0000, 0x7FFF_FFFF_FFFF_FFFF) }

    /// A byte of `Host`: reg-name (unreserved, sub-delims, pct-encoded), IP-literal brackets,
    /// and `:` before the port. No `@` (userinfo), `/`, `?`, `#` or whitespace.
    @inline(__always)
    static func isHostByte(_ b: UInt8) -> Bool { inMask(b, 0x2FFF_7FF2_0000_0000, 0x47FF_FFFE_AFFF_FFFE) }

    /// field-vchar, SP or HT (RFC 9110 §5.5): everything but CTLs other than HT, and DEL.
    /// obs-text (0x80–0xFF) is accepted as the grammar allows; it is passed on opaque.
    @inline(__always)
    static func isFieldValueByte(_ b: UInt8) -> Bool { b == ht || (b >= sp && b != 0x7F) }

    @inline(__always)
    static func isWhitespace(_ b: UInt8) -> Bool { b == sp || b == ht }

    @inline(__always)
    static func isAlpha(_ b: UInt8) -> Bool { (b | 0x20) >= 0x61 && (b | 0x20) <= 0x7A }

    /// High bit set in each byte of `x` that is zero. Exact for the lowest such byte (a borrow
    /// can only mark bytes above a real zero), which is all `firstLF` uses; exact as a boolean.
    @inline(__always)
    private static func zeroBytes(_ x: UInt64) -> UInt64 {
        (x &- 0x0101_0101_0101_0101) & ~x & 0x8080_8080_8080_8080
    }

    /// The first LF in `bytes[from..<to]`, or `to`. Eight bytes at a time.
    @inline(__always)
    static func firstLF(_ bytes: UnsafeRawBufferPointer, from: Int, to: Int) -> Int {
        var i = from
        while i + 8 <= to {
            let w = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            let m = zeroBytes(w ^ 0x0A0A_0A0A_0A0A_0A0A)
            if m != 0 { return i + m.trailingZeroBitCount / 8 }
            i += 8
        }
        while i < to, bytes[i] != lf { i += 1 }
        return i
    }

    /// The first index in `bytes[from..<to]` whose byte may not be in a field value unchecked
    /// (a CTL, HT included, or DEL), or `to`: eight bytes at a time through the common case.
    @inline(__always)
    static func firstNonPlainValueByte(_ bytes: UnsafeRawBufferPointer, from: Int, to: Int) -> Int {
        var i = from
        while i + 8 <= to {
            let w = bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            // A byte below 0x20 (hasless), or a 0x7F byte.
            let ctl = (w &- 0x2020_2020_2020_2020) & ~w & 0x8080_8080_8080_8080
            if ctl | zeroBytes(w ^ 0x7F7F_7F7F_7F7F_7F7F) != 0 { break }
            i += 8
        }
        while i < to {
            let b = bytes[i]
            if b < sp || b == 0x7F { return i }
            i += 1
        }
        return i
    }

    @inline(__always)
    static func lowercased(_ b: UInt8) -> UInt8 { b &- 0x41 < 26 ? b | 0x20 : b }

    @inline(__always)
    static func hexValue(_ b: UInt8) -> Int? {
        switch b {
        case 0x30...0x39: return Int(b &- 0x30)
        case 0x41...0x46: return Int(b &- 0x41 &+ 10)
        case 0x61...0x66: return Int(b &- 0x61 &+ 10)
        default: return nil
        }
    }

    /// `bytes[range]` equals `literal` (given in lowercase) ignoring ASCII case.
    @inline(__always)
    static func equals(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ literal: StaticString) -> Bool {
        guard range.count == literal.utf8CodeUnitCount else { return false }
        return hasPrefix(bytes, range, literal)
    }

    /// `bytes[range]` starts with `literal` (given in lowercase) ignoring ASCII case.
    @inline(__always)
    static func hasPrefix(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ literal: StaticString) -> Bool {
        let n = literal.utf8CodeUnitCount
        guard range.count >= n else { return false }
        let lit = literal.utf8Start
        for k in 0..<n where lowercased(bytes[range.lowerBound + k]) != lit[k] { return false }
        return true
    }

    /// `bytes[range]` equals `literal` exactly (methods are case-sensitive, RFC 9110 §9.1).
    @inline(__always)
    static func equalsExactly(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ literal: StaticString) -> Bool {
        let n = literal.utf8CodeUnitCount
        guard range.count == n else { return false }
        let lit = literal.utf8Start
        for k in 0..<n where bytes[range.lowerBound + k] != lit[k] { return false }
        return true
    }

    /// `bytes[range]` equals `other` ignoring ASCII case (both arbitrary).
    @inline(__always)
    static func equals(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, lowercased other: [UInt8]) -> Bool {
        guard range.count == other.count else { return false }
        for k in 0..<other.count where lowercased(bytes[range.lowerBound + k]) != other[k] { return false }
        return true
    }

    /// 1*DIGIT as a non-negative Int, nil when empty, not all digits, or too large for Int.
    static func decimal(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int? {
        guard !range.isEmpty else { return nil }
        var value = 0
        for i in range {
            let d = bytes[i] &- 0x30
            guard d < 10 else { return nil }
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(Int(d))
            guard !o1, !o2 else { return nil }
            value = s
        }
        return value
    }

    /// Calls `body` with each non-empty element of a comma-separated list (RFC 9110 §5.6.1),
    /// trimmed of OWS. Empty elements are skipped, as recipients must accept them. Quoted strings
    /// are not understood: callers use this only for lists of tokens.
    @inline(__always)
    static func forEachListElement<E: Error>(
        _ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ body: (Range<Int>) throws(E) -> Void
    ) throws(E) {
        var i = range.lowerBound
        while i < range.upperBound {
            while i < range.upperBound, isWhitespace(bytes[i]) || bytes[i] == comma { i += 1 }
            let start = i
            var end = i
            while i < range.upperBound, bytes[i] != comma {
                if !isWhitespace(bytes[i]) { end = i + 1 }
                i += 1
            }
            if end > start { try body(start..<end) }
        }
    }

    /// True when `bytes[range]` is 1*tchar.
    @inline(__always)
    static func isToken(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        guard !range.isEmpty else { return false }
        for i in range where !isToken(bytes[i]) { return false }
        return true
    }
}

/// Finds complete lines of a head that arrives in pieces, remembering how far it looked so that a
/// rescan of a longer prefix starts where the last one stopped. Refuses a bare LF here (the line
/// parsers refuse a bare CR) and a head that would not end within `limit` bytes.
struct HTTPLineFinder: Sendable {
    /// The next byte to examine.
    private(set) var position = 0
    /// Where the current, incomplete line starts.
    private(set) var lineStart = 0

    /// The next complete line, without its CRLF; nil when `bytes` ends first.
    mutating func nextLine(_ bytes: UnsafeRawBufferPointer, limit: Int) throws(HTTPFramingError) -> Range<Int>? {
        let end = min(bytes.count, limit)
        let i = HTTPSyntax.firstLF(bytes, from: position, to: end)
        if i < end {
            guard i > lineStart, bytes[i - 1] == HTTPSyntax.cr else { throw .bareLF }
            let line = lineStart..<(i - 1)
            lineStart = i + 1
            position = i + 1
            return line
        }
        position = i
        if i >= limit { throw .headTooLarge }
        return nil
    }
}

/// A field line's name and value (OWS trimmed) as offsets into the head's bytes.
public struct HTTPFieldRange: Sendable, Hashable {
    public var name: Range<Int>
    public var value: Range<Int>

    public init(name: Range<Int>, value: Range<Int>) {
        self.name = name
        self.value = value
    }
}

extension HTTPFieldRange {
    /// Splits a field line (without its CRLF, never empty) into name and trimmed value, refusing
    /// what RFC 9112 §5 says a recipient must not accept: obs-fold (§5.2), whitespace before the
    /// colon (§5.1), an empty or non-token name, and CTLs other than HT in the value.
    @inline(__always)
    static func parse(_ bytes: UnsafeRawBufferPointer, line: Range<Int>) throws(HTTPFramingError) -> HTTPFieldRange {
        let end = line.upperBound
        var i = line.lowerBound
        if HTTPSyntax.isWhitespace(bytes[i]) { throw .obsFold }
        while i < end, HTTPSyntax.isToken(bytes[i]) { i += 1 }
        guard i < end else { throw .missingColon }
        let b = bytes[i]
        if b != HTTPSyntax.colon {
            if HTTPSyntax.isWhitespace(b) { throw .whitespaceBeforeColon }
            throw b == HTTPSyntax.cr ? .bareCR : .invalidFieldName
        }
        guard i > line.lowerBound else { throw .emptyFieldName }
        let name = line.lowerBound..<i
        i += 1
        while i < end, HTTPSyntax.isWhitespace(bytes[i]) { i += 1 }
        let valueStart = i
        while i < end {
            i = HTTPSyntax.firstNonPlainValueByte(bytes, from: i, to: end)
            guard i < end else { break }
            let b = bytes[i]
            if b != HTTPSyntax.ht { throw b == HTTPSyntax.cr ? .bareCR : .invalidFieldValue }
            i += 1
        }
        var valueEnd = end
        while valueEnd > valueStart, HTTPSyntax.isWhitespace(bytes[valueEnd - 1]) { valueEnd -= 1 }
        return HTTPFieldRange(name: name, value: valueStart..<valueEnd)
    }

    /// Calls `body` with each field line of an already scanned head: `fields` runs from the first
    /// field line to the end of the head (the blank line included). `line` includes the CRLF.
    /// Assumes the bytes were validated by a scanner; it never reads outside `fields`.
    static func forEach(
        in bytes: UnsafeRawBufferPointer, fields: Range<Int>, _ body: (HTTPFieldRange, _ line: Range<Int>) -> Void
    ) {
        var lineStart = fields.lowerBound
        while lineStart < fields.upperBound {
            let lf = HTTPSyntax.firstLF(bytes, from: lineStart, to: fields.upperBound)
            guard lf < fields.upperBound else { return }
            let contentEnd = lf > lineStart && bytes[lf - 1] == HTTPSyntax.cr ? lf - 1 : lf
            if contentEnd == lineStart { return }
            var colon = lineStart
            while colon < contentEnd, bytes[colon] != HTTPSyntax.colon { colon += 1 }
            if colon < contentEnd {
                var vs = colon + 1
                while vs < contentEnd, HTTPSyntax.isWhitespace(bytes[vs]) { vs += 1 }
                var ve = contentEnd
                while ve > vs, HTTPSyntax.isWhitespace(bytes[ve - 1]) { ve -= 1 }
                body(HTTPFieldRange(name: lineStart..<colon, value: vs..<ve), lineStart..<(lf + 1))
            }
            lineStart = lf + 1
        }
    }
}

/// Limits on a head, each refused with 431 (RFC 6585 §5).
public struct HTTPHeadLimits: Sendable, Hashable {
    /// Longest head, start line to blank line inclusive. Default 16 KiB (Node's default; an
    /// OpenAI chat request head is about 1 KiB, a response head about 1.5 KiB).
    public var maxHeadBytes: Int
    /// Most field lines. Default 100 (a chat request carries about 18, a response about 25).
    public var maxFieldCount: Int

    public init(maxHeadBytes: Int = 16 * 1024, maxFieldCount: Int = 100) {
        self.maxHeadBytes = maxHeadBytes
        self.maxFieldCount = maxFieldCount
    }
}

/// The HTTP versions we speak: exactly `HTTP/1.0` and `HTTP/1.1` (RFC 9112 §2.3).
public enum HTTPVersionNumber: Sendable, Hashable {
    case http1_0
    case http1_1

    /// `HTTP/1.0` or `HTTP/1.1` at `at` (8 bytes); `unsupportedVersion` for another well-formed
    /// `HTTP/d.d`, `invalidVersion` otherwise. The name is case-sensitive.
    static func parse(_ bytes: UnsafeRawBufferPointer, at start: Int) throws(HTTPFramingError) -> HTTPVersionNumber {
        guard start + 8 <= bytes.count,
              bytes[start] == 0x48, bytes[start + 1] == 0x54, bytes[start + 2] == 0x54, bytes[start + 3] == 0x50,
              bytes[start + 4] == HTTPSyntax.slash, bytes[start + 6] == 0x2E,
              bytes[start + 5] &- 0x30 < 10, bytes[start + 7] &- 0x30 < 10
        else { throw .invalidVersion }
        guard bytes[start + 5] == 0x31 else { throw .unsupportedVersion }
        switch bytes[start + 7] {
        case 0x31: return .http1_1
        case 0x30: return .http1_0
        default: throw .unsupportedVersion
        }
    }
}

/// How a message body is delimited (RFC 9112 §6.3).
public enum HTTPBodyFraming: Sendable, Hashable {
    /// Exactly this many bytes (0: no body).
    case contentLength(Int)
    /// Chunked transfer coding (RFC 9112 §7.1).
    case chunked
    /// Everything until the server closes the connection (responses only).
    case untilClose
}

/// The tokens of `Connection` we act on (RFC 9112 §9.3, §9.6; RFC 9110 §7.8).
public struct HTTPConnectionOptions: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let close = Self(rawValue: 1)
    public static let keepAlive = Self(rawValue: 2)
    public static let upgrade = Self(rawValue: 4)
    /// Some other token: a field name the rewriter must drop as hop-by-hop.
    public static let other = Self(rawValue: 8)

    /// Adds the tokens of one `Connection` value; an element that is not a token is refused.
    mutating func add(_ bytes: UnsafeRawBufferPointer, _ value: Range<Int>) throws(HTTPFramingError) {
        try HTTPSyntax.forEachListElement(bytes, value) { (e: Range<Int>) throws(HTTPFramingError) in
            guard HTTPSyntax.isToken(bytes, e) else { throw .invalidConnection }
            if HTTPSyntax.equals(bytes, e, "close") { self.insert(.close) }
            else if HTTPSyntax.equals(bytes, e, "keep-alive") { self.insert(.keepAlive) }
            else if HTTPSyntax.equals(bytes, e, "upgrade") { self.insert(.upgrade) }
            else { self.insert(.other) }
        }
    }

    /// Whether the connection stays open after this message (RFC 9112 §9.3).
    func isPersistent(_ version: HTTPVersionNumber) -> Bool {
        if contains(.close) { return false }
        return version == .http1_1 || contains(.keepAlive)
    }
}
