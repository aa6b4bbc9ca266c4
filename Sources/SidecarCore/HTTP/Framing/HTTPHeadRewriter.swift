/// Rewrites a scanned head by splicing: runs of unchanged lines are copied as they are (one copy
/// per run), dropped lines are skipped, replaced lines are written in place, added lines go at
/// the end. The output is written into one buffer the caller allocated with
/// `HTTPHeadRewrite.maximumLength(headLength:)` bytes; nothing else is allocated unless the
/// head's `Connection` names other fields (then one small array of their names' ranges).
///
/// The input must be the bytes the head was scanned from (offsets as the scanner gave them).
public enum HTTPHeadRewriter {
    /// Writes the rewritten request head into `output`; returns its length.
    public static func rewrite(
        _ bytes: UnsafeRawBufferPointer, request head: ScannedRequestHead, _ rewrite: HTTPHeadRewrite,
        into output: UnsafeMutableRawBufferPointer
    ) -> Int {
        write(bytes, length: head.length, fieldsStart: head.fieldsStart, target: head.target,
              connection: head.connection, rewrite, into: output)
    }

    /// Writes the rewritten response head into `output`; returns its length. `rewrite.target`
    /// is ignored.
    public static func rewrite(
        _ bytes: UnsafeRawBufferPointer, response head: ScannedResponseHead, _ rewrite: HTTPHeadRewrite,
        into output: UnsafeMutableRawBufferPointer
    ) -> Int {
        write(bytes, length: head.length, fieldsStart: head.fieldsStart, target: nil,
              connection: head.connection, rewrite, into: output)
    }

    /// The rewritten request head as a new array (tests, and callers without a buffer of their own).
    public static func rewritten(_ bytes: UnsafeRawBufferPointer, request head: ScannedRequestHead, _ rewrite: HTTPHeadRewrite) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: rewrite.maximumLength(headLength: head.length)) { out, count in
            count = Self.rewrite(bytes, request: head, rewrite, into: UnsafeMutableRawBufferPointer(out))
        }
    }

    /// The rewritten response head as a new array.
    public static func rewritten(_ bytes: UnsafeRawBufferPointer, response head: ScannedResponseHead, _ rewrite: HTTPHeadRewrite) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: rewrite.maximumLength(headLength: head.length)) { out, count in
            count = Self.rewrite(bytes, response: head, rewrite, into: UnsafeMutableRawBufferPointer(out))
        }
    }

    private enum Disposition {
        case keep, drop, replace(Int)
    }

    private static func write(
        _ bytes: UnsafeRawBufferPointer, length: Int, fieldsStart: Int, target: Range<Int>?,
        connection: HTTPConnectionOptions, _ rewrite: HTTPHeadRewrite, into output: UnsafeMutableRawBufferPointer
    ) -> Int {
        precondition(length >= 4 && length <= bytes.count && fieldsStart <= length - 2, "head does not match the bytes")
        precondition(output.count >= rewrite.maximumLength(headLength: length), "output smaller than maximumLength")
        var out = Writer(output: output)
        var spanStart = 0
        if let newTarget = rewrite.target, let target {
            out.copy(bytes, 0..<target.lowerBound)
            out.write(newTarget.bytes)
            spanStart = target.upperBound
        }
        let named = rewrite.dropsHopByHop && connection.contains(.other)
            ? connectionTokens(bytes, fields: fieldsStart..<length) : []
        var replaced: UInt64 = 0
        HTTPFieldRange.forEach(in: bytes, fields: fieldsStart..<length) { field, line in
            let disposition = dispose(bytes, field.name, rewrite, named)
            if case .keep = disposition { return }
            out.copy(bytes, spanStart..<line.lowerBound)
            spanStart = line.upperBound
            if case .replace(let k) = disposition, replaced & (1 << k) == 0 {
                replaced |= 1 << k
                out.write(rewrite.replacements[k])
            }
        }
        out.copy(bytes, spanStart..<(length - 2))
        for (k, edit) in rewrite.replacements.enumerated() where replaced & (1 << k) == 0 { out.write(edit) }
        for edit in rewrite.additions { out.write(edit) }
        out.writeCRLF()
        return out.count
    }

    @inline(__always)
    private static func dispose(
        _ bytes: UnsafeRawBufferPointer, _ name: Range<Int>, _ rewrite: HTTPHeadRewrite, _ named: [Range<Int>]
    ) -> Disposition {
        if rewrite.dropsHopByHop {
            if isAlwaysHopByHop(bytes, name) { return .drop }
            if !named.isEmpty, !isNeverConnectionOption(bytes, name) {
                for token in named where equalsIgnoringCase(bytes, name, token) { return .drop }
            }
        }
        if rewrite.dropsTransferEncoding, HTTPSyntax.equals(bytes, name, "transfer-encoding") { return .drop }
        if rewrite.dropsSidecarFields, name.count > 10, HTTPSyntax.hasPrefix(bytes, name, "x-sidecar-") { return .drop }
        for d in rewrite.drops where HTTPSyntax.equals(bytes, name, lowercased: d.lowercased) { return .drop }
        for (k, r) in rewrite.replacements.enumerated() where HTTPSyntax.equals(bytes, name, lowercased: r.name.lowercased) {
            return .replace(k)
        }
        return .keep
    }

    /// RFC 9110 §7.6.1 plus `Trailer` and `Proxy-*`, as `HeaderPolicy.isAlwaysHopByHop`, minus
    /// `Transfer-Encoding` (dropped only when asked).
    @inline(__always)
    private static func isAlwaysHopByHop(_ bytes: UnsafeRawBufferPointer, _ name: Range<Int>) -> Bool {
        switch name.count {
        case 2: return HTTPSyntax.equals(bytes, name, "te")
        case 7: return HTTPSyntax.equals(bytes, name, "trailer") || HTTPSyntax.equals(bytes, name, "upgrade")
        case 10: return HTTPSyntax.equals(bytes, name, "connection") || HTTPSyntax.equals(bytes, name, "keep-alive")
        default: return name.count > 6 && HTTPSyntax.hasPrefix(bytes, name, "proxy-")
        }
    }

    /// Fields a `Connection` list cannot make us drop: dropping `Content-Length` or
    /// `Transfer-Encoding` while forwarding the body would reframe it for the upstream (request
    /// smuggling), and `Host` is required. RFC 9110 §7.6.1 forbids sending such options anyway.
    private static func isNeverConnectionOption(_ bytes: UnsafeRawBufferPointer, _ name: Range<Int>) -> Bool {
        HTTPSyntax.equals(bytes, name, "content-length") || HTTPSyntax.equals(bytes, name, "transfer-encoding")
            || HTTPSyntax.equals(bytes, name, "host")
    }

    private static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ a: Range<Int>, _ b: Range<Int>) -> Bool {
        guard a.count == b.count else { return false }
        for k in 0..<a.count where HTTPSyntax.lowercased(bytes[a.lowerBound + k]) != HTTPSyntax.lowercased(bytes[b.lowerBound + k]) {
            return false
        }
        return true
    }

    /// The elements of every `Connection` line (the scanner has checked they are tokens).
    private static func connectionTokens(_ bytes: UnsafeRawBufferPointer, fields: Range<Int>) -> [Range<Int>] {
        var tokens: [Range<Int>] = []
        HTTPFieldRange.forEach(in: bytes, fields: fields) { field, _ in
            guard HTTPSyntax.equals(bytes, field.name, "connection") else { return }
            HTTPSyntax.forEachListElement(bytes, field.value) { tokens.append($0) }
        }
        return tokens
    }

    /// Appends to the caller's buffer, checking every write against its end.
    private struct Writer {
        let output: UnsafeMutableRawBufferPointer
        var count = 0

        mutating func copy(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) {
            guard !range.isEmpty else { return }
            precondition(range.upperBound <= bytes.count && count + range.count <= output.count)
            UnsafeMutableRawBufferPointer(rebasing: output[count..<(count + range.count)])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[range]))
            count += range.count
        }

        mutating func write(_ bytes: [UInt8]) {
            bytes.withUnsafeBytes { copy($0, 0..<$0.count) }
        }

        mutating func write(_ edit: HTTPFieldEdit) {
            write(edit.name.bytes)
            writeTwo(HTTPSyntax.colon, HTTPSyntax.sp)
            write(edit.value.bytes)
            writeCRLF()
        }

        mutating func writeCRLF() { writeTwo(HTTPSyntax.cr, HTTPSyntax.lf) }

        private mutating func writeTwo(_ a: UInt8, _ b: UInt8) {
            precondition(count + 2 <= output.count)
            output[count] = a
            output[count + 1] = b
            count += 2
        }
    }
}
