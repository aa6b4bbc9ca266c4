/// Reads what the cache needs from an upstream answer's bytes: whether a stream reached its
/// final event, and the token counts of its `usage`. Pure.
public enum ResponseInspector {
    public struct Usage: Sendable, Equatable {
        /// Every input token, however billed: fresh, read from the provider's prompt cache, and
        /// written to it (Anthropic reports these apart; here they are summed).
        public var promptTokens: Int64
        public var completionTokens: Int64
        /// Input tokens the provider served from its own prompt cache (billed at a discount).
        public var cachedTokens: Int64
        /// Input tokens written to the provider's prompt cache (Anthropic: billed at a premium).
        public var cacheWriteTokens: Int64
        /// Of those, the ones written to Anthropic's 1-hour cache (billed at 2 × input).
        public var cacheWrite1hTokens: Int64
        public init(promptTokens: Int64, completionTokens: Int64, cachedTokens: Int64 = 0, cacheWriteTokens: Int64 = 0, cacheWrite1hTokens: Int64 = 0) {
            self.promptTokens = promptTokens
            self.completionTokens = completionTokens
            self.cachedTokens = cachedTokens
            self.cacheWriteTokens = cacheWriteTokens
            self.cacheWrite1hTokens = cacheWrite1hTokens
        }
    }

    /// The counts one usage object states, in any dialect; a stream states them over several
    /// events (Anthropic: input in `message_start`, output in `message_delta`), merged in order.
    struct Counts: Equatable {
        var input: Int64?
        var output: Int64?
        var cacheRead: Int64?
        var cacheWrite: Int64?
        var cacheWrite1h: Int64?
        /// Anthropic's `input_tokens` leaves out the cache's reads and writes; the others include them.
        var inputExcludesCache = false

        /// `later` over `self`: each count `later` states replaces this one.
        func merged(with later: Counts) -> Counts {
            Counts(input: later.input ?? input, output: later.output ?? output, cacheRead: later.cacheRead ?? cacheRead,
                   cacheWrite: later.cacheWrite ?? cacheWrite, cacheWrite1h: later.cacheWrite1h ?? cacheWrite1h,
                   inputExcludesCache: inputExcludesCache || later.inputExcludesCache)
        }

        var usage: Usage? {
            guard let input else { return nil }
            let read = cacheRead ?? 0, write = cacheWrite ?? 0
            return Usage(promptTokens: inputExcludesCache ? input + read + write : input, completionTokens: output ?? 0,
                         cachedTokens: read, cacheWriteTokens: write, cacheWrite1hTokens: cacheWrite1h ?? 0)
        }
    }

    /// The counts of a usage object's bytes, read with a top-level scan (no tree): OpenAI's
    /// `prompt_tokens` / `completion_tokens` with `prompt_tokens_details.cached_tokens`, the
    /// Responses API's `input_tokens` / `output_tokens` with `input_tokens_details.cached_tokens`,
    /// Anthropic's `input_tokens` / `output_tokens` / `cache_read_input_tokens` /
    /// `cache_creation_input_tokens`, Gemini's `usageMetadata` (`promptTokenCount`,
    /// `candidatesTokenCount` + `thoughtsTokenCount`, `cachedContentTokenCount`).
    static func counts(_ o: [UInt8]) -> Counts {
        // One top-level walk notes every member this reads (the last of a repeated key, as
        // `JSONTopLevel.value(of:in:)`): this runs for every answer.
        var at = [Range<Int>?](repeating: nil, count: UsageKey.allCases.count)
        let ok = JSONTopLevel.walk(o) { key, value in
            if let k = UsageKey.of(o[key]) { at[k.rawValue] = value }
            return true
        }
        guard ok else { return Counts() }
        func int(_ key: UsageKey) -> Int64? { at[key.rawValue].flatMap { integer(o[$0]) } }
        var c = Counts()
        c.input = int(.prompt_tokens) ?? int(.input_tokens) ?? int(.promptTokenCount)
        if let candidates = int(.candidatesTokenCount) {
            c.output = candidates + (int(.thoughtsTokenCount) ?? 0)
        } else {
            c.output = int(.completion_tokens) ?? int(.output_tokens)
        }
        // The Realtime API says `input_token_details`.
        for details: UsageKey in [.prompt_tokens_details, .input_tokens_details, .input_token_details] {
            guard let d = at[details.rawValue] else { continue }
            if let cached = nestedInt("cached_tokens", in: Array(o[d])) { c.cacheRead = cached }
        }
        if let cached = int(.cachedContentTokenCount) { c.cacheRead = cached }
        let read = int(.cache_read_input_tokens), write = int(.cache_creation_input_tokens)
        if read != nil || write != nil {
            c.inputExcludesCache = true
            c.cacheRead = read
            c.cacheWrite = write
            if let d = at[UsageKey.cache_creation.rawValue] { c.cacheWrite1h = nestedInt("ephemeral_1h_input_tokens", in: Array(o[d])) }
        }
        return c
    }

    /// The members of a usage object that `counts` reads.
    enum UsageKey: Int, CaseIterable {
        case prompt_tokens, input_tokens, promptTokenCount, candidatesTokenCount, thoughtsTokenCount
        case completion_tokens, output_tokens, prompt_tokens_details, input_tokens_details, input_token_details
        case cachedContentTokenCount, cache_read_input_tokens, cache_creation_input_tokens, cache_creation

        static let names: [[UInt8]] = allCases.map { Array("\($0)".utf8) }

        static func of(_ key: ArraySlice<UInt8>) -> UsageKey? {
            for k in allCases where names[k.rawValue].count == key.count && names[k.rawValue].elementsEqual(key) { return k }
            return nil
        }
    }

    /// A member of a nested object as an integer.
    private static func nestedInt(_ key: StaticString, in bytes: [UInt8]) -> Int64? {
        JSONTopLevel.value(of: key, in: bytes).flatMap { integer(bytes[$0]) }
    }

    /// A raw JSON value as `Int64(String)` reads it (optional sign, decimal digits, no overflow),
    /// without building the string.
    static func integer(_ raw: ArraySlice<UInt8>) -> Int64? {
        var i = raw.startIndex
        var negative = false
        if i < raw.endIndex, raw[i] == UInt8(ascii: "-") || raw[i] == UInt8(ascii: "+") {
            negative = raw[i] == UInt8(ascii: "-")
            i += 1
        }
        guard i < raw.endIndex else { return nil }
        var value: Int64 = 0
        while i < raw.endIndex {
            let d = raw[i] &- UInt8(ascii: "0")
            guard d <= 9 else { return nil }
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (a, o2) = negative ? m.subtractingReportingOverflow(Int64(d)) : m.addingReportingOverflow(Int64(d))
            guard !o1, !o2 else { return nil }
            value = a
            i += 1
        }
        return value
    }

    /// The token counts of a usage object's bytes (one object: no merging).
    static func usageObject(_ o: [UInt8]) -> Usage? { counts(o).usage }

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

    /// Whether an SSE body ended with its dialect's final event: `data: [DONE]` (chat and
    /// completions), `response.completed` / `response.incomplete` (the Responses API),
    /// `message_stop` (Anthropic), or a chunk with a `finishReason` (Gemini, which sends no end
    /// event). A stream cut anywhere before that is partial and must never be stored.
    public static func streamIsComplete(_ bytes: some Collection<UInt8>) -> Bool {
        guard let last = events(in: bytes).last else { return false }
        if last.data == "[DONE]" { return true }
        let type = last.event ?? jsonType(last.data)
        if type == "response.completed" || type == "response.incomplete" || type == "message_stop" { return true }
        // A key, not text: inside a JSON string its quotes would be escaped.
        return last.event == nil && last.data.hasPrefix("{") && last.data.contains(#""finishReason""#)
    }

    /// The usage of an answer: for JSON the last `"usage"` object (`prompt_tokens` /
    /// `completion_tokens`, or the Responses API's `input_tokens` / `output_tokens`, with their
    /// `cached_tokens` details), found by matching braces from its key; for SSE the last event
    /// that carries one. Works on a tail of the body too (where `usage` is), which is all the
    /// spend accounting keeps. A `"usage"` inside a string value is escaped, so never matches.
    ///
    /// A stream's usage is merged over its events in order, each count stated later replacing the
    /// earlier one: Anthropic states the input in `message_start` and the output so far in each
    /// `message_delta`. An Anthropic stream without a `message_delta` usage has stated only one
    /// output token: that is not its usage (nil: the caller charges the reservation).
    /// - Parameter head: for a stream, its first bytes, where `message_start` is (a long stream's
    ///   tail no longer holds it); events seen in both are merged twice, which changes nothing.
    public static func usage(body: [UInt8], head: [UInt8] = [], isStream: Bool) -> Usage? {
        guard isStream else { return lastUsageObject(in: body).map(counts)?.usage }
        var merged: Counts?
        var anthropicStart = false, anthropicDelta = false
        for part in head.isEmpty ? [body] : [head, body] {
            for e in events(in: part) where e.data.contains("\"usage") {
                guard let o = lastUsageObject(in: Array(e.data.utf8)) else { continue }
                let c = counts(o)
                merged = merged.map { $0.merged(with: c) } ?? c
                let type = e.event ?? jsonType(e.data)
                if type == "message_start" { anthropicStart = true }
                if type == "message_delta" { anthropicDelta = true }
            }
        }
        if anthropicStart, !anthropicDelta { return nil }
        return merged?.usage
    }

    /// The bytes of the last `"usage"` (or Gemini's `"usageMetadata"`) object in `bytes`.
    static func lastUsageObject(in bytes: [UInt8]) -> [UInt8]? {
        lastObject(named: #""usage""#, in: bytes) ?? lastObject(named: #""usageMetadata""#, in: bytes)
    }

    private static func lastObject(named name: String, in bytes: [UInt8]) -> [UInt8]? {
        let key = Array(name.utf8)
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
                        return Array(bytes[j...end])
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
