/// The top-level members of a JSON object, as raw byte ranges, found by one pass that does not
/// build values: nested objects, arrays and strings are skipped (strings honour escapes).
/// For cheap questions about a request body (is `temperature` 0? where is `model`'s value, to
/// rewrite it byte-exactly?) before, or instead of, a full parse.
///
/// It checks structure only as far as it walks (brackets, quotes, `:` and `,` at the top level);
/// values are not validated. Callers that need a valid document still parse it.
public enum JSONTopLevel {
    /// Each member's key (only keys without escapes, which covers every API parameter) and the
    /// range of its raw value in `bytes`; nil when `bytes` is not a JSON object at the top level.
    public static func members(_ bytes: [UInt8]) -> [(key: String, value: Range<Int>)]? {
        var out: [(key: String, value: Range<Int>)] = []
        let ok = walk(bytes) { key, value in
            if !bytes[key].contains(UInt8(ascii: "\\")) { out.append((String(decoding: bytes[key], as: UTF8.self), value)) }
            return true
        }
        return ok ? out : nil
    }

    /// The raw value range of the top-level member `key` (the last one, if repeated), without
    /// building any string; nil when absent or when `bytes` is not a JSON object.
    public static func value(of key: StaticString, in bytes: [UInt8]) -> Range<Int>? {
        var found: Range<Int>?
        let ok = key.withUTF8Buffer { k in
            walk(bytes) { keyRange, value in
                if keyRange.count == k.count, bytes[keyRange].elementsEqual(k) { found = value }
                return true
            }
        }
        return ok ? found : nil
    }

    /// Calls `visit` with each top-level member's key range (between the quotes, raw) and value
    /// range; false when `bytes` is not a JSON object at the top level.
    static func walk(_ bytes: [UInt8], _ visit: (Range<Int>, Range<Int>) -> Bool) -> Bool {
        var i = 0
        let n = bytes.count
        func ws() { while i < n, bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0A || bytes[i] == 0x0D { i += 1 } }
        /// Skips a string at `i` (a quote); false when it does not end.
        func skipString() -> Bool {
            i += 1
            while i < n {
                switch bytes[i] {
                case UInt8(ascii: "\\"): i += 2
                case UInt8(ascii: "\""): i += 1; return true
                default: i += 1
                }
            }
            return false
        }
        /// Skips one value at `i`.
        func skipValue() -> Bool {
            guard i < n else { return false }
            switch bytes[i] {
            case UInt8(ascii: "\""): return skipString()
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                var depth = 0
                while i < n {
                    switch bytes[i] {
                    case UInt8(ascii: "\""): if !skipString() { return false }; continue
                    case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                    case UInt8(ascii: "}"), UInt8(ascii: "]"):
                        depth -= 1
                        if depth == 0 { i += 1; return true }
                    default: break
                    }
                    i += 1
                }
                return false
            default:
                let start = i
                while i < n, !(bytes[i] == UInt8(ascii: ",") || bytes[i] == UInt8(ascii: "}") || bytes[i] == 0x20
                               || bytes[i] == 0x09 || bytes[i] == 0x0A || bytes[i] == 0x0D) { i += 1 }
                return i > start
            }
        }
        ws()
        guard i < n, bytes[i] == UInt8(ascii: "{") else { return false }
        i += 1
        ws()
        if i < n, bytes[i] == UInt8(ascii: "}") { i += 1; ws(); return i == n }
        while true {
            ws()
            guard i < n, bytes[i] == UInt8(ascii: "\"") else { return false }
            let keyStart = i + 1
            guard skipString() else { return false }
            let key = keyStart..<(i - 1)
            ws()
            guard i < n, bytes[i] == UInt8(ascii: ":") else { return false }
            i += 1
            ws()
            let valueStart = i
            guard skipValue() else { return false }
            guard visit(key, valueStart..<i) else { return false }
            ws()
            guard i < n else { return false }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: "}") { i += 1; break }
            return false
        }
        ws()
        return i == n
    }

    /// Whether a raw JSON number is zero (`0`, `0.0`, `-0`, `0e5`, `0.00E-3`).
    public static func isZeroNumber(_ raw: ArraySlice<UInt8>) -> Bool {
        var sawDigit = false
        for b in raw {
            switch b {
            case UInt8(ascii: "0"): sawDigit = true
            case UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "."): continue
            case UInt8(ascii: "e"), UInt8(ascii: "E"): return sawDigit
            default: return false
            }
        }
        return sawDigit
    }
}
