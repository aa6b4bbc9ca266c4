/// The API dialects the sidecar speaks (docs/dialects.md): how an upstream is authenticated, which
/// client paths reach it, where a request names its model, and which of its endpoints are billed
/// and cacheable. Pure.
///
/// An upstream has one dialect (`[upstreams.NAME] api`, default `openai`). A client request has one
/// too, read from its path and headers (`of(path:headers:)`): it decides which upstream serves the
/// request when no `[[models]]` group names its model, and how its answer is read.
public enum APIDialect: String, Sendable, CaseIterable, Equatable {
    /// OpenAI and every OpenAI-compatible server: `Authorization: Bearer`, paths under `/v1`.
    case openai
    /// Anthropic's Messages API: `x-api-key` and `anthropic-version`, paths under `/v1`.
    case anthropic
    /// Azure OpenAI: `api-key`, `/openai/deployments/{deployment}/...?api-version=`.
    case azure
    /// Google Gemini: `x-goog-api-key`, `/v1beta/...` (native, and OpenAI-compatible under
    /// `/v1beta/openai/`) and the GA API's `/v1/models/{model}:{method}`.
    case gemini

    /// The dialect's name in messages.
    public var displayName: String {
        switch self {
        case .openai: "OpenAI"
        case .anthropic: "Anthropic"
        case .azure: "Azure OpenAI"
        case .gemini: "Gemini"
        }
    }

    /// The `anthropic-version` sent to an Anthropic upstream when the client sent none (the API
    /// refuses requests without one; every Anthropic SDK sends it, curl users often do not).
    public static let defaultAnthropicVersion = "2023-06-01"

    /// Every header a client may authenticate with, whichever SDK it is: when the upstream has a
    /// key of its own, all of them are removed and the upstream's is sent in its dialect's header.
    public static var credentialHeaders: [String] { CacheScope.credentialHeaders }

    /// The header that carries an upstream key in this dialect, and its value.
    public func authorization(key: String) -> (name: String, value: String) {
        switch self {
        case .openai: ("authorization", "Bearer \(key)")
        case .anthropic: ("x-api-key", key)
        case .azure: ("api-key", key)
        case .gemini: ("x-goog-api-key", key)
        }
    }

    /// The path prefixes a client request of this dialect may use (the target must be one of them
    /// or under it, after dot segments are resolved: `TargetPath`).
    public var pathPrefixes: [String] {
        switch self {
        case .openai, .anthropic: ["/v1"]
        case .azure: ["/openai"]
        case .gemini: ["/v1beta", "/v1/models"]
        }
    }

    /// Every prefix the sidecar forwards, in any dialect.
    public static let forwardedPrefixes = ["/v1", "/v1beta", "/openai"]

    /// Whether `path` (no query) is one of `prefixes` or below it (`/v1x` is neither).
    public static func isUnder<S: StringProtocol>(_ path: S, _ prefixes: [String]) -> Bool {
        prefixes.contains { path == $0 || (path.hasPrefix($0) && path.utf8.dropFirst($0.utf8.count).first == UInt8(ascii: "/")) }
    }

    /// The dialect of a client request: `/openai/...` is Azure, `/v1beta/...` Gemini, and under
    /// `/v1` the Messages API (`/v1/messages...`) or any request carrying `anthropic-version` (the
    /// Anthropic SDKs send it on every call, `/v1/models` and `/v1/files` included) is Anthropic;
    /// the rest is OpenAI. nil for a path outside every dialect.
    /// (Runs for every request: byte compares on the path's UTF-8, no strings built.)
    public static func of(path: some StringProtocol, hasAnthropicVersion: @autoclosure () -> Bool) -> APIDialect? {
        var path = Substring(path)
        let dialect = path.withUTF8 { p -> APIDialect?? in
            if isGeminiNative(p) { return .gemini }
            if isUnder(p, "/v1") { return isUnder(p, "/v1/messages") ? .anthropic : .some(nil) }
            if isUnder(p, "/openai") { return .azure }
            if isUnder(p, "/v1beta") { return .gemini }
            return .none
        }
        switch dialect {
        case .none: return nil
        case .some(.none): return hasAnthropicVersion() ? .anthropic : .openai  // under /v1
        case .some(.some(let d)): return d
        }
    }

    /// Gemini's native method paths, `/v1beta/models/{model}:{method}` and the GA API's
    /// `/v1/models/{model}:{method}` (the `google-genai` SDK's default): a model with a method
    /// after a colon, which OpenAI's `/v1/models/{id}` never has.
    public static func isGeminiNative(_ path: some StringProtocol) -> Bool {
        var path = Substring(path)
        return path.withUTF8 { isGeminiNative($0) }
    }

    static func isGeminiNative(_ p: UnsafeBufferPointer<UInt8>) -> Bool {
        if hasPrefix(p, "/v1beta/models/") { return true }
        let prefix: StaticString = "/v1/models/"
        return hasPrefix(p, prefix) && p[prefix.utf8CodeUnitCount...].contains(UInt8(ascii: ":"))
    }

    /// Whether `p` is `prefix` or below it (`/v1x` is neither).
    static func isUnder(_ p: UnsafeBufferPointer<UInt8>, _ prefix: StaticString) -> Bool {
        let n = prefix.utf8CodeUnitCount
        return hasPrefix(p, prefix) && (p.count == n || p[n] == UInt8(ascii: "/"))
    }

    static func hasPrefix(_ p: UnsafeBufferPointer<UInt8>, _ prefix: StaticString) -> Bool {
        let n = prefix.utf8CodeUnitCount
        guard p.count >= n else { return false }
        return prefix.withUTF8Buffer { q in
            for i in 0..<n where p[i] != q[i] { return false }
            return true
        }
    }

    /// The model a request names in its path, where the dialect puts it there: Gemini's
    /// `/v1beta/models/{model}:{method}` and Azure's `/openai/deployments/{deployment}/...` (a
    /// deployment name, priced under that name: `[prices."DEPLOYMENT"]`). nil elsewhere.
    public static func modelInPath(_ path: some StringProtocol) -> String? {
        let p = Substring(path)
        if isGeminiNative(p) {
            let rest = p.dropFirst(p.hasPrefix("/v1beta/") ? "/v1beta/models/".count : "/v1/models/".count)
            let name = rest.prefix { $0 != ":" && $0 != "/" }
            return name.isEmpty ? nil : String(name)
        }
        if p.hasPrefix("/openai/deployments/") {
            let name = p.dropFirst("/openai/deployments/".count).prefix { $0 != "/" }
            return name.isEmpty ? nil : String(name)
        }
        return nil
    }

    /// Whether the provider bills a request to `path` by tokens (so budgets reserve for it and
    /// spend records it). Token counting (`/v1/messages/count_tokens`, Gemini's `:countTokens`)
    /// is free: it passes through, never reserved, never billed.
    public static func isBilled(path: some StringProtocol) -> Bool {
        !(path.hasSuffix("/count_tokens") || path.hasSuffix(":countTokens"))
    }

    /// What the cache may do with an endpoint (the path without its query): nil when its answers
    /// are not cached at all (they depend on more than the request: files, batches, models).
    public enum Endpoint: Equatable, Sendable {
        /// Generation: cached in `deterministic` mode only when it does not sample.
        case generation
        /// Embeddings and moderations: the same input always gives the same answer.
        case deterministic
    }

    public static func endpoint(_ path: some StringProtocol) -> Endpoint? {
        let p = Substring(path)
        switch p {
        case "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages",
             "/v1beta/openai/chat/completions":
            return .generation
        case "/v1/embeddings", "/v1/moderations", "/v1beta/openai/embeddings":
            return .deterministic
        default:
            break
        }
        switch p {  // Azure's v1 API: the model in the body, as OpenAI's
        case "/openai/v1/chat/completions", "/openai/v1/responses": return .generation
        case "/openai/v1/embeddings": return .deterministic
        default: break
        }
        if p.hasPrefix("/openai/deployments/"), let slash = p.dropFirst("/openai/deployments/".count).firstIndex(of: "/") {
            switch p[slash...] {
            case "/chat/completions", "/completions", "/responses": return .generation
            case "/embeddings": return .deterministic
            default: return nil
            }
        }
        if isGeminiNative(p), let colon = p.lastIndex(of: ":") {
            switch p[p.index(after: colon)...] {
            case "generateContent", "streamGenerateContent": return .generation
            case "embedContent", "batchEmbedContents": return .deterministic
            default: return nil
            }
        }
        return nil
    }

    /// Whether a request to `path` (no query) asks for the OpenAI chat completion stream, whose
    /// usage chunk the sidecar asks for (`stream_options.include_usage`) so the stream can be
    /// accounted for: OpenAI's path, Azure's, and Gemini's OpenAI-compatible one.
    public static func isChatCompletions(_ path: some StringProtocol) -> Bool {
        path == "/v1/chat/completions" || path == "/v1beta/openai/chat/completions" || path == "/openai/v1/chat/completions"
            || (path.hasPrefix("/openai/deployments/") && path.hasSuffix("/chat/completions"))
    }

    /// `gen_ai.operation.name` (OpenTelemetry GenAI conventions) of a request to `path` (no
    /// query); nil for requests that are not model calls (files, batches, model lists).
    public static func operation(_ path: some StringProtocol) -> String? {
        let p = Substring(path)
        if p.hasSuffix("/chat/completions") || p == "/v1/messages" || p.hasSuffix("/responses") || p.hasSuffix("/realtime") { return "chat" }
        if p.hasSuffix("/completions") { return "text_completion" }
        if p.hasSuffix("/embeddings") || p.hasSuffix(":embedContent") || p.hasSuffix(":batchEmbedContents") { return "embeddings" }
        if p.hasSuffix(":generateContent") || p.hasSuffix(":streamGenerateContent") { return "generate_content" }
        return nil
    }

    /// `gen_ai.provider.name` of an upstream of this dialect.
    public var providerName: String {
        switch self {
        case .openai: "openai"
        case .anthropic: "anthropic"
        case .azure: "azure.ai.openai"
        case .gemini: "gcp.gemini"
        }
    }

    /// Request headers that change what the provider answers, so they are part of a cache key:
    /// the API version and beta features a request opts into.
    public static let answerChangingHeaders = ["anthropic-version", "anthropic-beta", "openai-beta"]
}
