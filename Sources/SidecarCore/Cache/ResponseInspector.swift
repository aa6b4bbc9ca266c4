/// Reads what the cache needs from an upstream answer's bytes: whether a stream reached its
/// final event, and the token counts of its `usage`. Pure.
public enum ResponseInspector {
    public struct Usage: Sendable, Equatable {
        public var promptTokens: Int64
        public var completionTokens: Int64
        /// Prompt tokens the provider served from its own prompt cache (billed at a discount).
        public var cachedTokens: Int64
        public init(promptTokens: Int64, completionTokens: Int64, cachedTokens: Int64 = 0) {
            self.promptTokens = promptTokens
            self.completionTokens = completionTokens
            self.cachedTokens = cachedTokens
        }
    }

    /// The token counts of a `usage` object's bytes, read with a top-level scan (no tree).
    static func usageObject(_ o: [UInt8]) -> Usage? {
        func int(_ bytes: [UInt8], _ range: Range<Int>?) -> Int64? {
            range.flatMap { Int64(String(decoding: bytes[$0], as: UTF8.self)) }
        }
        guard let prompt = int(o, JSONTopLevel.value(of: "prompt_tokens", in: o)) ?? int(o, JSONTopLevel.value(of: "input_tokens", in: o)) else {
            return nil
        }
        let completion = int(o, JSONTopLevel.value(of: "completion_tokens", in: o)) ?? int(o, JSONTopLevel.value(of: "output_tokens", in: o)) ?? 0
        var cached: Int64 = 0
        for details in [JSONTopLevel.value(of: "prompt_tokens_details", in: o), JSONTopLevel.value(of: "input_tokens_details", in: o)] {
            guard let d = details else { continue }
            let inner = Array(o[d])
            if let c = int(inner, JSONTopLevel.value(of: "cached_tokens", in: inner)) { cached = c }
        }
        return Usage(promptTokens: prompt, completionTokens: completion, cachedTokens: cached)
    }

    private static func matchingBrace(_ b: [UInt8], from start: Int) -> Int? {
        var depth = 0
        var i = start
        var inString = false
        while i < b.count {
            let c = b[i]
            if inString {
                if c == UInt8(ascii: "\\") { i += 2; continue }
                if c == UInt8(ascii: "\"") { inString = false }
            } else if c == UInt8(ascii: "\"") {
                inString = true
            } else if c == UInt8(ascii: "{") {
                depth += 1
            } else if c == UInt8(ascii: "}") {
                depth -= 1
                if depth == 0 { return i }
            }
            i += 1
        }
        return nil
    }

    /// Whether an SSE body ended with a final event: `data: [DONE]` (chat and completions), or
    /// `response.completed` / `response.incomplete` (the Responses API). A stream cut anywhere
    /// before that is partial and must never be stored.
    public static func streamIsComplete(_ bytes: some Collection<UInt8>) -> Bool {
        guard let last = events(in: bytes).last else { return false }
        if last.data == "[DONE]" { return true }
        let type = last.event ?? jsonType(last.data)
        return type == "response.completed" || type == "response.incomplete"
    }

    /// The usage of an answer: for JSON the last `"usage"` object (`prompt_tokens` /
    /// `completion_tokens`, or the Responses API's `input_tokens` / `output_tokens`, with their
    /// `cached_tokens` details), found by matching braces from its key; for SSE the last event
    /// that carries one. Works on a tail of the body too (where `usage` is), which is all the
    /// spend accounting keeps. A `"usage"` inside a string value is escaped, so never matches.
    public static func usage(body: [UInt8], isStream: Bool) -> Usage? {
        guard isStream else { return lastUsageObject(in: body) }
        var found: Usage?
        for e in events(in: body) where e.data.contains("\"usage\"") {
            if let u = lastUsageObject(in: Array(e.data.utf8)) { found = u }
        }
        return found
    }

    static func lastUsageObject(in bytes: [UInt8]) -> Usage? {
        let key = Array(#""usage""#.utf8)
        guard bytes.count >= key.count else { return nil }
        func ws(_ j: inout Int) { while j < bytes.count, bytes[j] == 0x20 || bytes[j] == 0x0A || bytes[j] == 0x0D || bytes[j] == 0x09 { j += 1 } }
        var i = bytes.count - key.count
        while i >= 0 {
            if bytes[i] == key[0], bytes[i..<(i + key.count)].elementsEqual(key) {
                var j = i + key.count
                ws(&j)
                if j < bytes.count, bytes[j] == UInt8(ascii: ":") {
                    j += 1
                    ws(&j)
                    if j < bytes.count, bytes[j] == UInt8(ascii: "{"), let end = matchingBrace(bytes, from: j) {
                        return usageObject(Array(bytes[j...end]))
                    }
                }
            }
            i -= 1
        }
        return nil
    }

    private static func jsonType(_ data: String) -> String? {
        guard data.hasPrefix("{"), let v = CanonicalJSON.parse(Array(data.utf8)), case .string(let t)? = v["type"] else { return nil }
        return t
    }

    struct Event { var event: String?; var data: String }

    /// SSE events (`event:` and joined `data:` lines), per the WHATWG EventSource parsing rules
    /// for the fields we need; comments and other fields are skipped.
    static func events(in bytes: some Collection<UInt8>) -> [Event] {
        let text = String(decoding: bytes, as: UTF8.self)
        var out: [Event] = []
        var event: String?
        var data: [Substring] = []
        var sawField = false
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }) {
            if rawLine.isEmpty {
                if sawField, !data.isEmpty { out.append(Event(event: event, data: data.joined(separator: "\n"))) }
                event = nil
                data = []
                sawField = false
                continue
            }
            if rawLine.hasPrefix(":") { continue }
            let (field, value): (Substring, Substring)
            if let colon = rawLine.firstIndex(of: ":") {
                field = rawLine[..<colon]
                var v = rawLine[rawLine.index(after: colon)...]
                if v.hasPrefix(" ") { v = v.dropFirst() }
                value = v
            } else {
                (field, value) = (rawLine, "")
            }
            sawField = true
            if field == "data" { data.append(value) } else if field == "event" { event = String(value) }
        }
        // An event not followed by a blank line was never dispatched: the stream was cut.
        return out
    }
}
