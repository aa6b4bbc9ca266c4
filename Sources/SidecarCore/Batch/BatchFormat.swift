import Foundation

/// OpenAI Batch API files: input lines (`custom_id`, `method`, `url`, `body`) and output lines
/// (`id`, `custom_id`, `response: {status_code, request_id, body}`, `error`), for `llm-sidecar batch`.
public enum BatchFormat {
    public struct Request: Sendable, Equatable {
        public var customID: String
        public var method: String
        public var url: String
        public var body: [UInt8]?
    }

    /// One input line, or why it is not a valid request line.
    public static func parse(_ line: Substring) -> Result<Request, BatchLineError> {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            return .failure(.init("not a JSON object"))
        }
        guard let id = object["custom_id"] as? String, !id.isEmpty else { return .failure(.init("custom_id is missing or not a string")) }
        guard let method = (object["method"] as? String)?.uppercased(), ["POST", "GET", "DELETE"].contains(method) else {
            return .failure(.init("method must be POST, GET or DELETE"))
        }
        guard let url = object["url"] as? String, url.hasPrefix("/v1/") else { return .failure(.init("url must be a /v1/... path")) }
        var body: [UInt8]?
        if let b = object["body"] {
            guard let dict = b as? [String: Any], let data = try? JSONSerialization.data(withJSONObject: dict, options: [.withoutEscapingSlashes]) else {
                return .failure(.init("body must be a JSON object"))
            }
            body = Array(data)
        } else if method == "POST" {
            return .failure(.init("a POST needs a body"))
        }
        return .success(Request(customID: id, method: method, url: url, body: body))
    }

    public struct BatchLineError: Error, Equatable, Sendable {
        public var reason: String
        init(_ r: String) { reason = r }
    }

    /// An output line (with its newline). `body` is the answer's bytes (embedded as JSON when it
    /// is JSON, as a string otherwise); `error` is set when no answer came back at all.
    public static func outputLine(customID: String, status: Int?, requestID: String?, body: [UInt8]?,
                                  error: (code: String, message: String)?) -> String {
        var object: [String: Any] = ["id": "batch_req_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased(),
                                     "custom_id": customID]
        if let status {
            let parsed = body.flatMap { try? JSONSerialization.jsonObject(with: Data($0), options: [.fragmentsAllowed]) }
            object["response"] = ["status_code": status, "request_id": requestID ?? "", "body": parsed ?? String(decoding: body ?? [], as: UTF8.self)] as [String: Any]
        } else {
            object["response"] = NSNull()
        }
        object["error"] = error.map { ["code": $0.code, "message": $0.message] } ?? NSNull()
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// The `custom_id`s an output file already has, and the length of its complete lines (a run
    /// killed mid-write may leave a partial last line: it is cut off and redone).
    public static func completed(in output: [UInt8]) -> (ids: Set<String>, validLength: Int) {
        var ids: Set<String> = []
        var valid = 0
        var start = 0
        for (i, b) in output.enumerated() where b == UInt8(ascii: "\n") {
            let line = output[start..<i]
            if let o = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any], let id = o["custom_id"] as? String {
                ids.insert(id)
                valid = i + 1
            } else {
                break  // not ours: keep what is before it, redo the rest
            }
            start = i + 1
        }
        return (ids, valid)
    }
}
