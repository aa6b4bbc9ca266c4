import Foundation
import NIOConcurrencyHelpers

/// One deployment's prompt cache, as OpenAI keeps it: a chat prompt is cached after it is
/// answered, every prefix of it at message boundaries, for `ttl` after its last use; a later
/// prompt that begins with a cached prefix of at least `minimumTokens` reads that many tokens
/// from the cache, and the answer's `usage.prompt_tokens_details.cached_tokens` says so. Tokens
/// are counted as 4 bytes of the messages' JSON. Off until `enabled`.
public final class FakePromptCache: Sendable {
    private struct State {
        var enabled = false
        var ttl: TimeInterval = 300
        var minimumTokens = 1024
        /// Cumulative message prefix -> its tokens and until when it is cached.
        var entries: [String: (tokens: Int, expires: Date)] = [:]
        var promptTokens = 0
        var cachedTokens = 0
    }
    private let state = NIOLockedValueBox(State())

    public init() {}

    public func enable(ttl: TimeInterval = 300, minimumTokens: Int = 1024) {
        state.withLockedValue { $0.enabled = true; $0.ttl = ttl; $0.minimumTokens = minimumTokens }
    }

    /// Input tokens answered so far, and how many of them came from the cache.
    public var totals: (prompt: Int, cached: Int) { state.withLockedValue { ($0.promptTokens, $0.cachedTokens) } }

    /// A chat completion for `body` with its usage, or nil when the cache is off or the body is
    /// not a chat request.
    func answer(_ body: [UInt8]) -> String? {
        guard state.withLockedValue({ $0.enabled }),
              let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let messages = object["messages"] as? [Any] else { return nil }
        var prefixes: [(key: String, tokens: Int)] = []
        var key = ""
        for m in messages {
            guard let data = try? JSONSerialization.data(withJSONObject: m, options: [.sortedKeys]) else { return nil }
            key += String(decoding: data, as: UTF8.self) + "\n"
            prefixes.append((key, key.utf8.count / 4))
        }
        let prompt = prefixes.last?.tokens ?? 0
        let now = Date()
        let cached = state.withLockedValue { s -> Int in
            var cached = 0
            for p in prefixes where p.tokens >= s.minimumTokens {
                if let e = s.entries[p.key], e.expires > now { cached = max(cached, p.tokens) }
                s.entries[p.key] = (p.tokens, now.addingTimeInterval(s.ttl))
            }
            s.promptTokens += prompt
            s.cachedTokens += cached
            return cached
        }
        return #"{"id":"chatcmpl-cache","object":"chat.completion","created":1700000000,"model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":\#(prompt),"completion_tokens":2,"total_tokens":\#(prompt + 2),"prompt_tokens_details":{"cached_tokens":\#(cached)}}}"#
    }
}
