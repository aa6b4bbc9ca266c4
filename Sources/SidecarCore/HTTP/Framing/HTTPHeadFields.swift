/// The field names the scanners look at; every other field is only validated.
enum HTTPKnownField: Sendable {
    case host, contentLength, transferEncoding, connection, expect
    case authorization, apiKey, xAPIKey, cacheControl, openAIOrganization, openAIProject
    case contentType, sidecar

    /// Identifies a (validated, token) name by length first, then one case-insensitive compare.
    @inline(__always)
    static func identify(_ bytes: UnsafeRawBufferPointer, _ name: Range<Int>) -> HTTPKnownField? {
        switch name.count {
        case 4: if HTTPSyntax.equals(bytes, name, "host") { return .host }
        case 6: if HTTPSyntax.equals(bytes, name, "expect") { return .expect }
        case 7: if HTTPSyntax.equals(bytes, name, "api-key") { return .apiKey }
        case 9: if HTTPSyntax.equals(bytes, name, "x-api-key") { return .xAPIKey }
        case 10: if HTTPSyntax.equals(bytes, name, "connection") { return .connection }
        case 12: if HTTPSyntax.equals(bytes, name, "content-type") { return .contentType }
        case 13:
            if HTTPSyntax.equals(bytes, name, "authorization") { return .authorization }
            if HTTPSyntax.equals(bytes, name, "cache-control") { return .cacheControl }
        case 14:
            if HTTPSyntax.equals(bytes, name, "content-length") { return .contentLength }
            if HTTPSyntax.equals(bytes, name, "openai-project") { return .openAIProject }
        case 17: if HTTPSyntax.equals(bytes, name, "transfer-encoding") { return .transferEncoding }
        case 19: if HTTPSyntax.equals(bytes, name, "openai-organization") { return .openAIOrganization }
        default: break
        }
        if name.count > 10, HTTPSyntax.hasPrefix(bytes, name, "x-sidecar-") { return .sidecar }
        return nil
    }
}

/// What the `Transfer-Encoding` lines of a head said, accumulated line by line (RFC 9112 §6.1):
/// the codings form one list across all lines, in order.
struct HTTPTransferCodings: Sendable, Hashable {
    private(set) var present = false
    private(set) var codings = 0
    private(set) var chunkedCount = 0
    private(set) var lastIsChunked = false
    private(set) var malformed = false

    /// Adds one `Transfer-Encoding` value. An element is a coding name, optionally followed by
    /// `;` parameters (`chunked` takes none); quoted strings and empty elements are refused.
    mutating func add(_ bytes: UnsafeRawBufferPointer, _ value: Range<Int>) {
        present = true
        // No empty elements: llhttp does not take `chunked,` as chunked (a request fails, a
        // response is read until close), so a list with a hole is refused rather than read two ways.
        var element = false
        for i in value {
            if bytes[i] == HTTPSyntax.comma {
                if !element { malformed = true }
                element = false
            } else if !HTTPSyntax.isWhitespace(bytes[i]) {
                element = true
            }
        }
        if !element { malformed = true }
        HTTPSyntax.forEachListElement(bytes, value) { (e: Range<Int>) in
            var nameEnd = e.lowerBound
            while nameEnd < e.upperBound, HTTPSyntax.isToken(bytes[nameEnd]) { nameEnd += 1 }
            let name = e.lowerBound..<nameEnd
            var params = false
            for i in nameEnd..<e.upperBound {
                let b = bytes[i]
                if b == HTTPSyntax.quote || !(HTTPSyntax.isToken(b) || HTTPSyntax.isWhitespace(b) || b == HTTPSyntax.semicolon || b == 0x3D) {
                    self.malformed = true
                }
                if b == HTTPSyntax.semicolon { params = true }
            }
            if name.isEmpty || (nameEnd < e.upperBound && !params) { self.malformed = true }
            self.codings += 1
            let isChunked = HTTPSyntax.equals(bytes, name, "chunked")
            if isChunked {
                self.chunkedCount += 1
                if params { self.malformed = true }
            }
            self.lastIsChunked = isChunked
        }
    }

    /// The request rule: the list must be exactly `chunked`, the only coding we decode. Chunked
    /// not last, or twice, or a malformed list is 400 (RFC 9112 §6.3 rule 4; §7: never twice);
    /// another coding before a final chunked is 501 (§6.1: "does not understand").
    func checkRequest() throws(HTTPFramingError) {
        guard present else { return }
        guard !malformed, codings > 0, chunkedCount <= 1 else { throw .invalidTransferEncoding }
        guard lastIsChunked else { throw .chunkedNotFinal }
        guard codings == 1 else { throw .unsupportedTransferCoding }
    }

    /// The response rule: `chunked` must be the final coding and appear once; codings before it
    /// (gzip, say) are the representation's business and pass through. A response whose
    /// `Transfer-Encoding` does not end in chunked would be read until close (§6.3 rule 4); we
    /// refuse it rather than guess.
    func checkResponse() throws(HTTPFramingError) {
        guard present else { return }
        guard !malformed, codings > 0, chunkedCount <= 1 else { throw .invalidTransferEncoding }
        guard lastIsChunked else { throw .chunkedNotFinal }
    }
}

extension HTTPKnownField {
    /// A field that may appear once, found at most once (else `error`).
    @inline(__always)
    static func setOnce(_ slot: inout Range<Int>?, _ value: Range<Int>, _ error: HTTPFramingError) throws(HTTPFramingError) {
        guard slot == nil else { throw error }
        slot = value
    }

    /// A framing field (Content-Length, Transfer-Encoding) must not end in HT. RFC 9110 allows it
    /// (OWS), but llhttp — Node's parser and NIO's — refuses `Content-Length: 5<HT>` and does not
    /// read `Transfer-Encoding: chunked<HT>` as chunked; framing two parsers read differently is
    /// how smuggling starts, so we refuse it.
    @inline(__always)
    static func checkFramingFieldEnd(
        _ bytes: UnsafeRawBufferPointer, _ field: HTTPFieldRange, line: Range<Int>, _ error: HTTPFramingError
    ) throws(HTTPFramingError) {
        for i in field.value.upperBound..<line.upperBound where bytes[i] == HTTPSyntax.ht { throw error }
    }

    /// `Content-Length` (RFC 9112 §6.3 rule 5, RFC 9110 §8.6): exactly one field line of 1*DIGIT.
    ///
    /// RFC 9110 allows a recipient to accept a list of identical values (`5, 5`) or repeated equal
    /// lines as one; we refuse both. No client we serve sends them, and a proxy that forwards a
    /// length its upstream may read differently is how request smuggling starts.
    @inline(__always)
    static func setContentLength(_ slot: inout Int?, _ bytes: UnsafeRawBufferPointer, _ value: Range<Int>) throws(HTTPFramingError) {
        guard slot == nil else { throw .repeatedContentLength }
        guard let n = HTTPSyntax.decimal(bytes, value) else { throw .invalidContentLength }
        slot = n
    }
}
