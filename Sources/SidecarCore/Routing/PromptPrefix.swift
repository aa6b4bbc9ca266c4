/// The part of a request a provider keeps in its prompt cache, as hashes the router can look up
/// (docs/routing.md, "Prompt-cache affinity").
///
/// Providers cache the *prefix* of a prompt: the tokens from the start up to a boundary. A
/// conversation that grows turn by turn begins with the previous turn's whole prompt, so the
/// previous turn's prefix is a prefix of this turn's. The hashes here are cumulative: one at each
/// message boundary the provider could have cached, longest first. The router learns the longest
/// (where this request's prompt is about to be cached) and looks up any (the longest one it knows
/// is where the most cached tokens are).
///
/// What is hashed, per request body (canonical JSON, so key order and spacing do not matter), after
/// the group's name:
///
/// | endpoint | before the messages | the messages | boundaries |
/// |---|---|---|---|
/// | chat completions (OpenAI, Azure, Gemini's OpenAI API) | `tools`, `response_format` | `messages` | after each message past the minimum |
/// | Responses API | `instructions`, `tools` | `input` (items, or the one string) | same |
/// | completions | – | `prompt` | same |
/// | Anthropic `/v1/messages` | `tools`, `system` | `messages` | past the minimum, up to the message holding the last `cache_control`; none without one (Anthropic caches only at breakpoints). `cache_control` itself is not hashed |
/// | Gemini `:generateContent` | `systemInstruction`, `tools` | `contents` | as chat; `cachedContent` names the cache itself |
///
/// The minimum is the provider's shortest cacheable prompt (1,024 tokens for OpenAI and most
/// Anthropic and Gemini models), counted as 4 bytes a token like every estimate in the sidecar.
/// A request with OpenAI's `prompt_cache_key` is identified by that key alone: the client said
/// which requests share a cache. A request with nothing cacheable has no prefix: it is routed as
/// before, by weighted least-connections.
///
/// The hash is FNV-1a (64 bits): stable across processes and machines (so sidecars that place by
/// consistent hash agree), and a collision costs only a cache miss, never a wrong answer.
public struct PromptPrefix: Sendable, Equatable {
    /// Hashes of the cacheable prefixes this request begins with, longest first, at most
    /// `maxCandidates`; never empty.
    public var candidates: [UInt64]

    /// The longest: where this request's prompt will be cached.
    public var longest: UInt64 { candidates[0] }

    /// Boundaries looked up per request. Anthropic looks back 20 content blocks from a breakpoint
    /// for an earlier cache entry; an agent's turn adds a few messages. 32 covers both, and keeps
    /// the lookups under the route's lock short.
    public static let maxCandidates = 32

    public init(candidates: [UInt64]) {
        precondition(!candidates.isEmpty)
        self.candidates = candidates
    }

    /// What a body of `path` leaves to the provider's cache, or nil when nothing (an endpoint
    /// without a prompt cache, too short a prompt, an Anthropic request without breakpoints).
    /// - Parameters:
    ///   - group: the model group (the canonical model): the same prompt to another group is
    ///     another cache entry.
    ///   - minimumTokens: the provider's shortest cacheable prompt.
    public static func of(_ body: CanonicalJSON.Value, path: some StringProtocol, group: String, minimumTokens: Int = 1024) -> PromptPrefix? {
        guard let kind = Kind(path: path) else { return nil }
        var hash = FNV1a()
        hash.add(Array(group.utf8))
        hash.add([0])
        if kind.hasCacheKey, case .string(let key)? = body["prompt_cache_key"] {
            hash.add(Array("prompt_cache_key".utf8) + [0] + Array(key.utf8))
            return PromptPrefix(candidates: [hash.value])
        }
        if kind == .gemini, case .string(let name)? = body["cachedContent"] {
            hash.add(Array("cachedContent".utf8) + [0] + Array(name.utf8))
            return PromptPrefix(candidates: [hash.value])
        }
        var bytes: [UInt8] = []
        var size = 0
        for field in kind.head {
            bytes.removeAll(keepingCapacity: true)
            bytes += Array(field.utf8) + [0]
            if let v = body[field] { CanonicalJSON.write(kind == .anthropic ? Self.withoutBreakpoints(v) : v, to: &bytes) }
            hash.add(bytes)
            size += bytes.count
        }
        let segments: [CanonicalJSON.Value]
        switch body[kind.segments] {
        case .array(let items)?: segments = items
        case let v?: segments = [v]
        case nil: segments = []
        }
        // The last segment a boundary may follow: -1 for the part before the messages alone.
        var last = segments.count - 1
        if kind == .anthropic {
            guard let b = segments.lastIndex(where: Self.hasBreakpoint) ?? (kind.head.contains { body[$0].map(Self.hasBreakpoint) ?? false } ? -1 : nil) else {
                return nil
            }
            last = b
        }
        let minimumBytes = minimumTokens * 4
        var boundaries: [UInt64] = []
        if last == -1, size >= minimumBytes { boundaries.append(hash.value) }
        for (i, segment) in segments.enumerated() where i <= last {
            bytes.removeAll(keepingCapacity: true)
            bytes.append(1)  // a separator: no segment's bytes run into the next one's
            CanonicalJSON.write(kind == .anthropic ? Self.withoutBreakpoints(segment) : segment, to: &bytes)
            hash.add(bytes)
            size += bytes.count
            if size >= minimumBytes { boundaries.append(hash.value) }
        }
        guard !boundaries.isEmpty else { return nil }
        return PromptPrefix(candidates: boundaries.suffix(maxCandidates).reversed())
    }

    /// Whether a value holds an Anthropic cache breakpoint (`cache_control`) at any depth.
    static func hasBreakpoint(_ v: CanonicalJSON.Value) -> Bool {
        switch v {
        case .object(let members): return members.contains { $0.key == "cache_control" || hasBreakpoint($0.value) }
        case .array(let items): return items.contains(where: hasBreakpoint)
        default: return false
        }
    }

    /// `v` without its `cache_control` members: a breakpoint is not part of the prompt's tokens,
    /// and an agent moves its breakpoint to the newest message every turn, so the message that
    /// held it last turn must hash as it did then.
    static func withoutBreakpoints(_ v: CanonicalJSON.Value) -> CanonicalJSON.Value {
        switch v {
        case .object(let members):
            return .object(members.lazy.filter { $0.key != "cache_control" }.map { ($0.key, withoutBreakpoints($0.value)) })
        case .array(let items): return .array(items.map(withoutBreakpoints))
        default: return v
        }
    }

    /// The request shapes with a prompt cache, by path.
    enum Kind: Equatable {
        case chat, responses, completions, anthropic, gemini

        init?(path: some StringProtocol) {
            let p = Substring(path)
            if APIDialect.isChatCompletions(p) { self = .chat; return }
            switch p {
            case "/v1/responses", "/openai/v1/responses": self = .responses; return
            case "/v1/completions": self = .completions; return
            case "/v1/messages": self = .anthropic; return
            default: break
            }
            if p.hasPrefix("/openai/deployments/") {
                if p.hasSuffix("/responses") { self = .responses; return }
                if p.hasSuffix("/completions") { self = .completions; return }
            }
            if APIDialect.isGeminiNative(p), p.hasSuffix(":generateContent") || p.hasSuffix(":streamGenerateContent") { self = .gemini; return }
            return nil
        }

        var head: [String] {
            switch self {
            case .chat: return ["tools", "response_format"]
            case .responses: return ["instructions", "tools"]
            case .completions: return []
            case .anthropic: return ["tools", "system"]
            case .gemini: return ["systemInstruction", "tools"]
            }
        }

        var segments: String {
            switch self {
            case .chat, .anthropic: return "messages"
            case .responses: return "input"
            case .completions: return "prompt"
            case .gemini: return "contents"
            }
        }

        var hasCacheKey: Bool { self == .chat || self == .responses }
    }
}

/// FNV-1a, 64 bits (Fowler, Noll, Vo): a byte at a time, incremental, the same everywhere.
struct FNV1a {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func add(_ bytes: [UInt8]) {
        var h = value
        for b in bytes {
            h ^= UInt64(b)
            h &*= 0x0000_0100_0000_01b3
        }
        value = h
    }
}
