/// The id of a Responses API answer (`resp_...`), read from its first bytes: a JSON answer starts
/// with it (`{"id":"resp_...`), a stream's first event (`response.created`) carries it in its
/// `response` object. A request that continues that answer (`previous_response_id`) must reach
/// the deployment that stored it (docs/dialects.md, "Responses API"). Pure.
public enum ResponseID {
    /// The first bytes it is looked for in.
    public static let window = 4096

    /// The first `"id"` whose value is a string starting with `resp_`, in `bytes`; nil if none.
    /// Only an `"id"` key can match: inside a JSON string its quotes would be escaped.
    public static func find(in bytes: some Collection<UInt8>) -> String? {
        let b = Array(bytes.prefix(window))
        let key = Array(#""id""#.utf8), prefix = Array("resp_".utf8)
        var i = 0
        while i + key.count <= b.count {
            defer { i += 1 }
            guard b[i] == key[0], b[i..<(i + key.count)].elementsEqual(key) else { continue }
            var j = i + key.count
            while j < b.count, b[j] == 0x20 || b[j] == 0x09 || b[j] == 0x0A || b[j] == 0x0D { j += 1 }
            guard j < b.count, b[j] == UInt8(ascii: ":") else { continue }
            j += 1
            while j < b.count, b[j] == 0x20 || b[j] == 0x09 || b[j] == 0x0A || b[j] == 0x0D { j += 1 }
            guard j < b.count, b[j] == UInt8(ascii: "\"") else { continue }
            let start = j + 1
            guard start + prefix.count <= b.count, b[start..<(start + prefix.count)].elementsEqual(prefix) else { continue }
            // An id is letters, digits, `_` and `-`: the closing quote ends it; anything else is not one.
            var end = start
            while end < b.count, b[end] != UInt8(ascii: "\"") {
                let c = b[end]
                guard (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A) || c == UInt8(ascii: "_") || c == UInt8(ascii: "-") else { return nil }
                end += 1
            }
            guard end < b.count, end - start <= 256 else { return nil }
            return String(decoding: b[start..<end], as: UTF8.self)
        }
        return nil
    }
}
