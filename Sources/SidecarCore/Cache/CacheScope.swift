import NIOHTTP1

/// Whose answers a request may see in the cache (docs/caching.md, "Scope"), and, credential only,
/// which client `[limits]` and spend count a request against.
///
/// The provider answers a request as the credential *and* the organization and project the
/// request names: one key may act for several organizations and projects (`OpenAI-Organization`,
/// `OpenAI-Project`), with their own fine-tuned models, files and data. So those headers are part
/// of the cache scope; they are not part of the client's identity for limits and spend, where a
/// client could otherwise escape its own limit by varying them.
///
/// The scope's material is `llm-sidecar-scope/1`, then `\0NAME\0VALUE` for each value of each
/// credential header (not in a shared scope), then for each value of each tenant header, in the
/// order of the lists below (`\0` cannot occur in a header). Without tenant headers it is what it
/// was before they counted, so existing cache entries, client buckets and spend keep their scope.
public struct CacheScope: Equatable, Sendable {
    public struct Field: Equatable, Sendable {
        public var name: String
        public var value: String
        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    public static let version = "llm-sidecar-scope/1"
    /// The client's credential: `Authorization` (OpenAI), `api-key` (Azure), `x-api-key`
    /// (Anthropic), `x-goog-api-key` (Gemini; added last, so the scopes of the others did not change).
    public static let credentialHeaders = ["authorization", "api-key", "x-api-key", "x-goog-api-key"]
    /// Who, under that credential, the provider answers as.
    public static let tenantHeaders = ["openai-organization", "openai-project"]

    /// The credential fields (none in a shared scope), then the tenant fields.
    public let fields: [Field]
    /// `cache.scope = "shared"`: no credential.
    public let shared: Bool

    /// The client a request counts against for `[limits]` and spend: its credential alone.
    public static func client(of headers: HTTPHeaders) -> CacheScope {
        CacheScope(fields: credential(of: headers), shared: false)
    }

    /// The cache scope: the credential (unless `shared`) and the tenant headers. Names match
    /// case-insensitively; values are exact, but for the optional whitespace around a field value
    /// that is not part of it (RFC 9110 §5.5), and a value with commas is one value.
    public static func cache(of headers: HTTPHeaders, shared: Bool) -> CacheScope {
        var fields = shared ? [] : credential(of: headers)
        // Organization values, then project values, each in order: one pass over the fields.
        var projects: [Field] = []
        for (name, value) in headers where name.utf8.count == 19 || name.utf8.count == 14 {
            if HeaderPolicy.equalsIgnoringASCIICase(name, tenantHeaders[0]) {
                fields.append(Field(name: tenantHeaders[0], value: trimmingOWS(value)))
            } else if HeaderPolicy.equalsIgnoringASCIICase(name, tenantHeaders[1]) {
                projects.append(Field(name: tenantHeaders[1], value: trimmingOWS(value)))
            }
        }
        fields += projects
        return CacheScope(fields: fields, shared: shared)
    }

    /// As read since the scope was first computed (comma-separated values split), so credential
    /// scopes do not change.
    private static func credential(of headers: HTTPHeaders) -> [Field] {
        // One pass over the fields (this runs for every request). A value with a comma, or the
        // credential headers in another order than `credentialHeaders`, take the general way.
        var fields: [Field] = []
        var lastRank = -1
        for (name, value) in headers {
            guard let rank = credentialRank(name) else { continue }
            guard rank >= lastRank, !value.utf8.contains(UInt8(ascii: ",")) else { return credentialInCanonicalForm(of: headers) }
            lastRank = rank
            if !value.isEmpty { fields.append(Field(name: credentialHeaders[rank], value: String(value.trimmingSpaces()))) }
        }
        return fields
    }

    /// Whether `name` is one of `credentialHeaders` (ASCII case-insensitively).
    public static func isCredentialHeader(_ name: String) -> Bool { credentialRank(name) != nil }

    /// The index of `name` in `credentialHeaders`, compared ASCII case-insensitively.
    private static func credentialRank(_ name: String) -> Int? {
        let rank: Int
        switch name.utf8.count {
        case 13: rank = 0
        case 7: rank = 1
        case 9: rank = 2
        case 14: rank = 3
        default: return nil
        }
        return HeaderPolicy.equalsIgnoringASCIICase(name, credentialHeaders[rank]) ? rank : nil
    }

    private static func credentialInCanonicalForm(of headers: HTTPHeaders) -> [Field] {
        var fields: [Field] = []
        for name in credentialHeaders {
            for value in headers[canonicalForm: name] { fields.append(Field(name: name, value: String(value))) }
        }
        return fields
    }

    /// The bytes whose hash names the scope.
    public var material: [UInt8] {
        var out = Array(Self.version.utf8)
        for field in fields {
            out.append(0)
            out += Array(field.name.utf8)
            out.append(0)
            out += Array(field.value.utf8)
        }
        return out
    }

    /// The scope as written into cache keys and the store: `shared` for a shared scope without
    /// tenant headers, else the first 32 hex digits of `digest(material)` (SHA-256), after
    /// `shared/` for a shared scope.
    public func name(digest: ([UInt8]) -> [UInt8]) -> String {
        if shared && fields.isEmpty { return "shared" }
        let hex = String(CacheKey(digest: digest(material)).description.prefix(32))
        return shared ? "shared/" + hex : hex
    }

    private static func trimmingOWS(_ value: String) -> String {
        let isOWS: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = value.firstIndex(where: { !isOWS($0) }), let last = value.lastIndex(where: { !isOWS($0) }) else { return "" }
        return String(value[first...last])
    }
}
