import NIOHTTP1

/// The bytes a cache key is the hash of: everything that can change an answer, in canonical form,
/// behind a format version (so a future change of the canonical form never matches old entries).
///
///     llm-sidecar-key/2 \n METHOD \n PATH?QUERY \n MODEL-GROUP \n SCOPE \n [VARY \n] CANONICAL-BODY
///
/// `VARY` is there only when the request carries headers that change the answer
/// (`APIDialect.answerChangingHeaders`: `anthropic-version`, `anthropic-beta`, `OpenAI-Beta`):
/// `vary`, then `\0NAME\0VALUE` for each (names lowercased, in the list's order, values as sent).
/// A request without them has the key it had before they counted; one with them can never match
/// it (the body line starts with `{`, the vary line with `vary`).
///
/// Every body parameter is part of it, known or not (a parameter we do not know may change the
/// answer), except the ones in `fieldsThatCannotChangeTheAnswer`. `SCOPE` is `CacheScope`'s
/// name: a hash of the client's credential and organization and project headers (two keys, or two
/// organizations of one key, never share entries), or "shared".
public enum CanonicalRequest {
    /// 2: the scope took in `OpenAI-Organization` and `OpenAI-Project`. Entries stored under
    /// version 1 by a request naming an organization were keyed to the credential alone, and
    /// would have answered the key's other tenants; no version-1 key matches any more.
    public static let version = "llm-sidecar-key/2"

    /// Top-level body fields that cannot change the answer, so they are left out of the key.
    /// This is the one place that list lives.
    /// - `user`: an end-user id for the provider's abuse monitoring.
    /// - `metadata`: the caller's tags, stored with the completion, not used to generate it.
    /// - `stream_options`: how a stream reports usage, not what it says.
    public static let fieldsThatCannotChangeTheAnswer: Set<String> = ["user", "metadata", "stream_options"]

    /// The key material, and the parsed body for the cache policy; nil when the body is not a
    /// JSON object with a canonical form (such requests are forwarded uncached).
    public static func keyMaterial(
        method: String, path: String, modelGroup: String, scope: String, vary: [(name: String, value: String)] = [], body: [UInt8]
    ) -> (bytes: [UInt8], body: CanonicalJSON.Value)? {
        guard let parsed = CanonicalJSON.parse(body),
              let bytes = keyMaterial(method: method, path: path, modelGroup: modelGroup, scope: scope, vary: vary, parsed: parsed) else { return nil }
        return (bytes, parsed)
    }

    /// The key material of an already parsed body; nil when it is not a JSON object.
    /// - Parameter vary: the request's answer-changing headers (`varyingHeaders(of:)`).
    public static func keyMaterial(method: String, path: String, modelGroup: String, scope: String,
                                   vary: [(name: String, value: String)] = [], parsed: CanonicalJSON.Value) -> [UInt8]? {
        guard case .object(let members) = parsed else { return nil }
        let kept = CanonicalJSON.Value.object(members.filter { !fieldsThatCannotChangeTheAnswer.contains($0.key) })
        var out = Array("\(version)\n\(method)\n\(path)\n\(modelGroup)\n\(scope)\n".utf8)
        if !vary.isEmpty {
            out += Array("vary".utf8)
            for field in vary {
                out.append(0)
                out += Array(field.name.utf8)
                out.append(0)
                out += Array(field.value.utf8)
            }
            out.append(UInt8(ascii: "\n"))
        }
        CanonicalJSON.write(kept, to: &out)
        return out
    }

    /// The answer-changing headers of a request, in key order: for each name of
    /// `APIDialect.answerChangingHeaders`, each of its values with surrounding whitespace removed.
    /// Looks up those three names only: most requests have none, and pay three lookups.
    public static func varyingHeaders(of headers: HTTPHeaders) -> [(name: String, value: String)] {
        var out: [(name: String, value: String)] = []
        for name in APIDialect.answerChangingHeaders {
            for value in headers[name] { out.append((name, String(value.trimmingSpaces()))) }
        }
        return out
    }
}
