import NIOHTTP1

/// What the fake upstream answers in the dialects other than OpenAI's, as the providers answer
/// (shapes from their API references): Anthropic's Messages API, Gemini's generateContent, and
/// token counting. Azure's deployment paths are answered as OpenAI's (same bodies).
///
/// | header | effect |
/// |---|---|
/// | `x-fake-cache-read: N` | Anthropic: `cache_read_input_tokens` N; Gemini: `cachedContentTokenCount` N |
/// | `x-fake-cache-write: N` | Anthropic: `cache_creation_input_tokens` N |
/// | `x-fake-events: N` | streams: N text deltas (default 3) |
/// | `x-fake-cut-after: K` | streams: close the connection after K events (no clean end) |
public enum FakeDialects {
    public enum Answer: Equatable {
        case json(String)
        /// SSE events, each complete with its blank line.
        case events([String])
    }

    /// Input tokens the fake reports for every Anthropic and Gemini request (fresh ones: the
    /// cache's are reported apart, as the providers do).
    public static let inputTokens = 25

    /// The answer for `path`, or nil when it is not a path of these dialects.
    /// - Parameter tag: unique to this request on this fake (`PORT_N`): Responses API ids are
    ///   `resp_TAG`, so a test can tell which fake stored an answer.
    public static func answer(method: String, path: String, body: String, headers: HTTPHeaders, tag: String = "0") -> Answer? {
        let wantsStream = body.replacingOccurrences(of: " ", with: "").contains("\"stream\":true")
        let read = headers.first(name: "x-fake-cache-read").flatMap(Int.init) ?? 0
        let write = headers.first(name: "x-fake-cache-write").flatMap(Int.init) ?? 0
        let deltas = headers.first(name: "x-fake-events").flatMap(Int.init) ?? 3
        switch (method, path) {
        case ("POST", "/v1/messages/count_tokens"):
            return .json(#"{"input_tokens":\#(inputTokens + read + write)}"#)
        case ("POST", "/v1/messages"):
            return wantsStream ? .events(anthropicStream(deltas: deltas, read: read, write: write)) : .json(anthropicMessage(read: read, write: write))
        case ("POST", "/v1/responses"):
            return wantsStream ? .events(responsesStream(id: "resp_\(tag)", deltas: deltas)) : .json(response(id: "resp_\(tag)", text: "Hello from the fake Responses API."))
        case ("GET", "/v1/models") where headers.contains(name: "anthropic-version"):
            return .json(#"{"data":[{"type":"model","id":"claude-sonnet-4-5-20250929","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"}],"has_more":false,"first_id":"claude-sonnet-4-5-20250929","last_id":"claude-sonnet-4-5-20250929"}"#)
        default:
            break
        }
        // Gemini's native methods, in the v1beta and the GA (v1) API.
        if method == "POST", path.hasPrefix("/v1beta/models/") || (path.hasPrefix("/v1/models/") && path.contains(":")) {
            if path.hasSuffix(":generateContent") { return .json(geminiChunk(text: "Hello from the fake Gemini.", final: true, read: read)) }
            if path.hasSuffix(":streamGenerateContent") {
                var events = (0..<deltas).map { "data: " + geminiChunk(text: "tok\($0) ", final: false, read: read) + "\r\n\r\n" }
                events.append("data: " + geminiChunk(text: "", final: true, read: read, output: deltas) + "\r\n\r\n")
                return .events(events)
            }
            if path.hasSuffix(":countTokens") { return .json(#"{"totalTokens":\#(inputTokens)}"#) }
        }
        return nil
    }

    /// A Responses API answer: one message with `text`, 20 input tokens (16 of them cached), 9 output.
    public static func response(id: String, text: String) -> String {
        #"{"id":"\#(id)","object":"response","created_at":1700000000,"status":"completed","model":"gpt-4o-mini-2024-07-18","output":[{"type":"message","id":"msg_\#(id)","status":"completed","role":"assistant","content":[{"type":"output_text","text":"\#(text)","annotations":[]}]}],"usage":{"input_tokens":20,"input_tokens_details":{"cached_tokens":16},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":29}}"#
    }

    /// A Responses API stream: `response.created`, `deltas` text deltas, `response.completed`.
    public static func responsesStream(id: String, deltas: Int) -> [String] {
        func event(_ name: String, _ data: String) -> String { "event: \(name)\ndata: \(data)\n\n" }
        let created = #"{"id":"\#(id)","object":"response","created_at":1700000000,"status":"in_progress","model":"gpt-4o-mini-2024-07-18","output":[],"usage":null}"#
        var out = [event("response.created", #"{"type":"response.created","sequence_number":0,"response":\#(created)}"#)]
        for i in 0..<deltas {
            out.append(event("response.output_text.delta", #"{"type":"response.output_text.delta","sequence_number":\#(i + 1),"item_id":"msg_\#(id)","output_index":0,"content_index":0,"delta":"tok\#(i) "}"#))
        }
        let text = (0..<deltas).map { "tok\($0) " }.joined()
        out.append(event("response.completed", #"{"type":"response.completed","sequence_number":\#(deltas + 1),"response":\#(response(id: id, text: text))}"#))
        return out
    }

    static func anthropicUsage(read: Int, write: Int, output: Int) -> String {
        #"{"input_tokens":\#(inputTokens),"cache_creation_input_tokens":\#(write),"cache_read_input_tokens":\#(read),"output_tokens":\#(output),"service_tier":"standard"}"#
    }

    /// A Messages API answer of 12 output tokens.
    public static func anthropicMessage(read: Int = 0, write: Int = 0) -> String {
        #"{"id":"msg_fake0001","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hello! This is a canned answer from the fake Anthropic upstream."}],"stop_reason":"end_turn","stop_sequence":null,"usage":\#(anthropicUsage(read: read, write: write, output: 12))}"#
    }

    /// A Messages API stream: `message_start` (input usage), a text block of `deltas` deltas with a
    /// `ping` in it, `message_delta` (output usage: one token a delta), `message_stop`.
    public static func anthropicStream(deltas: Int, read: Int = 0, write: Int = 0) -> [String] {
        func event(_ name: String, _ data: String) -> String { "event: \(name)\ndata: \(data)\n\n" }
        var out = [
            event("message_start", #"{"type":"message_start","message":{"id":"msg_fake0002","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":\#(anthropicUsage(read: read, write: write, output: 1))}}"#),
            event("content_block_start", #"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
            event("ping", #"{"type": "ping"}"#),
        ]
        for i in 0..<deltas {
            out.append(event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"tok\#(i) "}}"#))
        }
        out.append(event("content_block_stop", #"{"type":"content_block_stop","index":0}"#))
        out.append(event("message_delta", #"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":\#(deltas)}}"#))
        out.append(event("message_stop", #"{"type":"message_stop"}"#))
        return out
    }

    static func geminiChunk(text: String, final: Bool, read: Int, output: Int = 7) -> String {
        let finish = final ? #","finishReason":"STOP""# : ""
        let usage = final
            ? #","usageMetadata":{"promptTokenCount":\#(inputTokens + read),"candidatesTokenCount":\#(output),"totalTokenCount":\#(inputTokens + read + output),"cachedContentTokenCount":\#(read)}"#
            : #","usageMetadata":{"promptTokenCount":\#(inputTokens + read),"totalTokenCount":\#(inputTokens + read)}"#
        return #"{"candidates":[{"content":{"parts":[{"text":"\#(text)"}],"role":"model"},"index":0\#(finish)}]\#(usage),"modelVersion":"gemini-2.5-flash"}"#
    }
}
