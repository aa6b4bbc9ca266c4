/// Finds the top-level `"model": "NAME"` of a JSON request body without parsing it, for the
/// access log (routing, which needs the real value, parses the body properly).
///
/// Inside JSON strings every `"` is escaped, so an unescaped `"model"` followed by `:` is a key.
/// The first such key wins; SDKs put `model` at the top level and almost always first.
public enum ModelSniffer {
    public static func model<C: Collection>(in bytes: C) -> String? where C.Element == UInt8 {
        let key = Array(#""model""#.utf8)
        let b = Array(bytes.prefix(64 * 1024))
        var i = 0
        while i + key.count <= b.count {
            guard b[i] == UInt8(ascii: "\""), (i == 0 || b[i - 1] != UInt8(ascii: "\\")), Array(b[i..<(i + key.count)]) == key else {
                i += 1
                continue
            }
            var j = i + key.count
            while j < b.count, b[j] == 0x20 || b[j] == 0x09 || b[j] == 0x0A || b[j] == 0x0D { j += 1 }
            guard j < b.count, b[j] == UInt8(ascii: ":") else { i += 1; continue }
            j += 1
            while j < b.count, b[j] == 0x20 || b[j] == 0x09 || b[j] == 0x0A || b[j] == 0x0D { j += 1 }
            guard j < b.count, b[j] == UInt8(ascii: "\"") else { return nil }
            let start = j + 1
            var k = start
            while k < b.count, b[k] != UInt8(ascii: "\""), b[k] != UInt8(ascii: "\\"), k - start < 200 { k += 1 }
            guard k < b.count, b[k] == UInt8(ascii: "\"") else { return nil }
            return String(decoding: b[start..<k], as: UTF8.self)
        }
        return nil
    }
}
