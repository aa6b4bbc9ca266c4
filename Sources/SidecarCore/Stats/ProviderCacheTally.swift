/// What the providers' own prompt caches did for the answers of one deployment (or a total):
/// input tokens, how many were read from the provider's cache and written to it, and the dollars
/// the reads saved against fresh input. Shown next to the sidecar's own cache in `/stats`,
/// `llm-sidecar stats`, `llm-sidecar spend` and the metrics (docs/routing.md).
public struct ProviderCacheTally: Sendable, Equatable {
    public var answers: Int64 = 0
    /// Every input token (fresh, read and written).
    public var promptTokens: Int64 = 0
    public var cachedTokens: Int64 = 0
    public var cacheWriteTokens: Int64 = 0
    public var usdSaved: Double = 0

    public init() {}

    /// Input tokens read from the provider's cache, of all input tokens.
    public var hitRatio: Double { promptTokens == 0 ? 0 : Double(cachedTokens) / Double(promptTokens) }

    public mutating func add(_ usage: ResponseInspector.Usage, saved: Double) {
        answers += 1
        promptTokens += usage.promptTokens
        cachedTokens += usage.cachedTokens
        cacheWriteTokens += usage.cacheWriteTokens
        usdSaved += saved
    }

    public static func += (a: inout ProviderCacheTally, b: ProviderCacheTally) {
        a.answers += b.answers
        a.promptTokens += b.promptTokens
        a.cachedTokens += b.cachedTokens
        a.cacheWriteTokens += b.cacheWriteTokens
        a.usdSaved += b.usdSaved
    }

    /// The JSON fields (ratio to 4 places, dollars to 10).
    public var fields: [String: any Sendable] {
        ["answers": answers, "prompt_tokens": promptTokens, "cached_tokens": cachedTokens, "cache_write_tokens": cacheWriteTokens,
         "hit_ratio": (hitRatio * 10_000).rounded() / 10_000, "usd_saved": (usdSaved * 1e10).rounded() / 1e10]
    }
}
