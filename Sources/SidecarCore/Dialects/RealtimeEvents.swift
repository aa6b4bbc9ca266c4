/// What the sidecar reads of a Realtime API session's messages (docs/dialects.md, "WebSockets"):
/// the client's `response.create` (each one may be billed, so a budget is checked and reserved
/// before it is sent), the server's `response.created` and `response.done` (the usage that
/// settles it) and `session.created` (the model, when the URL did not name it). Pure.
public enum RealtimeEvents {
    /// A message's top-level `type`, nil when it is not a JSON object with one.
    public static func type(of message: [UInt8]) -> String? {
        string("type", in: message)
    }

    /// `response.max_output_tokens` of a `response.create` (nil when absent or `"inf"`).
    public static func maxOutputTokens(of message: [UInt8]) -> Int? {
        guard let r = JSONTopLevel.value(of: "response", in: message) else { return nil }
        let response = Array(message[r])
        guard let v = JSONTopLevel.value(of: "max_output_tokens", in: response) else { return nil }
        return Int(String(decoding: response[v], as: UTF8.self))
    }

    /// The usage of a `response.done` (its `response.usage`: `input_tokens`, `output_tokens`,
    /// `input_token_details.cached_tokens`); nil when it carries none.
    public static func usage(ofResponseDone message: [UInt8]) -> ResponseInspector.Usage? {
        guard let r = JSONTopLevel.value(of: "response", in: message) else { return nil }
        return ResponseInspector.usage(body: Array(message[r]), isStream: false)
    }

    /// The model of a `session.created` / `session.updated` (`session.model`).
    public static func sessionModel(of message: [UInt8]) -> String? {
        guard let s = JSONTopLevel.value(of: "session", in: message) else { return nil }
        return string("model", in: Array(message[s]))
    }

    /// The model a session's URL names: `model=` (OpenAI) or `deployment=` (Azure) in its query.
    public static func model(inTarget target: String) -> String? {
        guard let q = target.firstIndex(of: "?") else { return nil }
        var found: String?
        for pair in target[target.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, kv[0] == "model" || (kv[0] == "deployment" && found == nil) else { continue }
            found = String(kv[1]).removingPercentEncodingLossless
        }
        return found
    }

    /// The server's `error` event the sidecar sends in place of the upstream's answer to a
    /// message it did not forward (`budget_exceeded`), shaped as the API's own.
    public static func errorEvent(code: String, message: String) -> [UInt8] {
        var json = #"{"type":"error","error":{"type":"invalid_request_error","code":"\#(code)","message":"#
        JSONString.append(message, to: &json)
        json += "}}"
        return Array(json.utf8)
    }

    static func string(_ key: StaticString, in bytes: [UInt8]) -> String? {
        guard let v = JSONTopLevel.value(of: key, in: bytes), v.count >= 2, bytes[v.lowerBound] == UInt8(ascii: "\"") else { return nil }
        guard case .string(let s)? = CanonicalJSON.parse(Array(bytes[v])) else { return nil }
        return s
    }
}

extension String {
    /// Percent-decoded, or itself when it holds an invalid escape.
    var removingPercentEncodingLossless: String {
        var out: [UInt8] = []
        let u = Array(utf8)
        var k = 0
        while k < u.count {
            if u[k] == UInt8(ascii: "%"), k + 2 < u.count, let h = UInt8(String(decoding: u[(k + 1)...(k + 2)], as: UTF8.self), radix: 16) {
                out.append(h)
                k += 3
            } else {
                out.append(u[k])
                k += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
