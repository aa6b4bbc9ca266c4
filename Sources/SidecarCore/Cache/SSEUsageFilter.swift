/// Removes the usage-only chunk of a streamed chat completion (`"choices":[]` with `usage`), the
/// one `stream_options.include_usage` adds, from an SSE byte stream. The sidecar asks upstreams
/// for usage to account for every stream, and a client that did not ask must not see it.
///
/// Bytes pass through as soon as the event they belong to is complete (an event ends with a blank
/// line); only a trailing partial event is held back. Pure.
public struct SSEUsageFilter: Sendable {
    private var pending: [UInt8] = []

    public init() {}

    /// The bytes to send on, given the next bytes of the stream.
    public mutating func feed<C: Collection>(_ bytes: C) -> [UInt8] where C.Element == UInt8 {
        pending += bytes
        var out: [UInt8] = []
        var start = 0
        var i = 0
        while i < pending.count {
            // An event ends at "\n\n" (or "\r\n\r\n").
            var end: Int?
            if pending[i] == 0x0A, i + 1 < pending.count, pending[i + 1] == 0x0A { end = i + 2 }
            if pending[i] == 0x0D, i + 3 < pending.count, pending[i + 1] == 0x0A, pending[i + 2] == 0x0D, pending[i + 3] == 0x0A { end = i + 4 }
            if let e = end {
                let event = pending[start..<e]
                if !Self.isUsageOnly(event) { out += event }
                start = e
                i = e
            } else {
                i += 1
            }
        }
        pending.removeFirst(start)
        return out
    }

    /// What is left at the end of the stream (an unterminated last event, passed on as is).
    public mutating func finish() -> [UInt8] {
        defer { pending = [] }
        return pending
    }

    private static let usageKey = Array(#""usage""#.utf8)

    static func isUsageOnly(_ event: ArraySlice<UInt8>) -> Bool {
        // Almost every event is a content delta without "usage": a byte scan rules those out.
        guard contains(event, usageKey) else { return false }
        let text = String(decoding: event, as: UTF8.self)
        guard text.contains("\"choices\"") else { return false }
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) where line.hasPrefix("data:") {
            var data = line.dropFirst(5)
            if data.hasPrefix(" ") { data = data.dropFirst() }
            guard let v = CanonicalJSON.parse(Array(data.utf8)), case .array(let choices)? = v["choices"], choices.isEmpty,
                  case .object? = v["usage"] else { return false }
            return true
        }
        return false
    }

    private static func contains(_ haystack: ArraySlice<UInt8>, _ needle: [UInt8]) -> Bool {
        guard haystack.count >= needle.count else { return false }
        var i = haystack.startIndex
        let last = haystack.endIndex - needle.count
        while i <= last {
            if haystack[i] == needle[0] {
                var k = 1
                while k < needle.count, haystack[i + k] == needle[k] { k += 1 }
                if k == needle.count { return true }
            }
            i += 1
        }
        return false
    }
}
