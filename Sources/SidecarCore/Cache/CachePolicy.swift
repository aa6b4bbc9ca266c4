/// What may be cached, decided per request from the mode, the endpoint, the body and the
/// client's cache headers. Pure.
public struct CachePolicy: Sendable, Equatable {
    /// `cache.mode`.
    public enum Mode: String, Sendable {
        /// Embeddings and moderations always; generation (chat, completions, responses, Anthropic
        /// messages, Gemini generateContent) only with `temperature` 0 or a `seed` (an omitted
        /// temperature is NOT 0: providers default to 1).
        case deterministic
        /// Every POST to the cacheable endpoints.
        case all
        case off
    }

    public enum Decision: Equatable, Sendable {
        /// Look up, and store a complete 2xx answer for `ttl` seconds.
        case lookupAndStore(ttl: Int)
        /// `Cache-Control: no-cache`: do not look up, but store the fresh answer.
        case storeOnly(ttl: Int)
        /// Not cacheable; `reason` is for logs and the `x-sidecar-cache: bypass` answer.
        case bypass(reason: String)
    }

    public var mode: Mode
    /// `cache.ttl_seconds`, default one day.
    public var defaultTTL: Int

    public init(mode: Mode = .deterministic, defaultTTL: Int = 86_400) {
        self.mode = mode
        self.defaultTTL = defaultTTL
    }

    /// Whether `path` (no query) is an endpoint whose answers depend only on the request, in any
    /// dialect (`APIDialect.endpoint`).
    public static func isCacheable(path: some StringProtocol) -> Bool { APIDialect.endpoint(path) != nil }

    /// True when a request is certainly not cacheable in `deterministic` mode because it samples
    /// (`temperature` absent or not 0, and no `seed`), decided from the raw body without a full
    /// parse: most traffic samples, and it should not pay for a canonical form it will not use.
    /// False means "parse it and `decide`". Gemini's native API keeps both in `generationConfig`,
    /// so its requests are always parsed.
    public func certainlySampled(path: some StringProtocol, body: [UInt8]) -> Bool {
        guard mode == .deterministic, APIDialect.endpoint(path) == .generation, !APIDialect.isGeminiNative(path) else { return false }
        var zeroTemperature = false
        var seeded = false
        let object = JSONTopLevel.walk(body) { key, value in
            let k = body[key]
            if k.elementsEqual("seed".utf8) { seeded = !body[value].elementsEqual("null".utf8) }
            if k.elementsEqual("temperature".utf8) { zeroTemperature = JSONTopLevel.isZeroNumber(body[value]) }
            return true
        }
        return object && !seeded && !zeroTemperature
    }

    /// - Parameters:
    ///   - cacheControl: the request's `Cache-Control` values.
    ///   - ttlHeader: the request's `x-sidecar-cache-ttl`.
    public func decide(method: String, path: some StringProtocol, body: CanonicalJSON.Value?,
                       cacheControl: [String], ttlHeader: String?) -> Decision {
        if mode == .off { return .bypass(reason: "cache.mode is off") }
        guard method == "POST" else { return .bypass(reason: "only POST requests are cached") }
        let bare = path.utf8.firstIndex(of: UInt8(ascii: "?")).map { String(path[..<$0]) } ?? String(path)
        guard let endpoint = APIDialect.endpoint(bare) else { return .bypass(reason: "\(bare) is not a cacheable endpoint") }
        guard let body, case .object = body else { return .bypass(reason: "the body is not a canonical JSON object") }
        let directives = cacheControl.flatMap { $0.split(separator: ",") }.map { $0.trimmingSpaces().lowercased() }
        if directives.contains("no-store") { return .bypass(reason: "Cache-Control: no-store") }
        if mode == .deterministic, endpoint == .generation {
            // Top level in the OpenAI and Anthropic bodies, in `generationConfig` in Gemini's.
            let settings = APIDialect.isGeminiNative(bare) ? body["generationConfig"] ?? .null : body
            let zeroTemperature = settings["temperature"] == .number("0")
            let seeded = settings["seed"].map { $0 != .null } ?? false
            guard zeroTemperature || seeded else {
                return .bypass(reason: "sampled request (temperature is not 0 and there is no seed)")
            }
        }
        var ttl = defaultTTL
        if let text = ttlHeader {
            guard let t = Int(text.trimmingSpaces()), t >= 0 else { return .bypass(reason: "x-sidecar-cache-ttl is not a number of seconds") }
            ttl = t
        }
        if ttl == 0 { return .bypass(reason: "x-sidecar-cache-ttl is 0") }
        return directives.contains("no-cache") ? .storeOnly(ttl: ttl) : .lookupAndStore(ttl: ttl)
    }
}
