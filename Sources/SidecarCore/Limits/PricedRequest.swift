/// What a budget must know of a request before anything is sent: the model it will be billed as
/// and the most output it may produce, read from the WHOLE body as the upstream will read it.
///
/// A budget reservation priced from a guess is a budget bypass: the official Python SDK writes
/// `messages` before `model`, so a sniff of the first read missed the model of every long
/// conversation and reserved $0 (30 of 30 concurrent requests passed a budget that fits 10).
/// So the body is parsed fully (escapes decoded: `"mod\u0065l"` is `model` to the upstream, and
/// to us), and a body whose meaning depends on the reader (a repeated key: which `model` wins?)
/// is refused rather than priced at the cheaper reading.
public struct PricedRequest: Sendable, Equatable {
    /// The top-level `model`; nil when the body names none (the upstream then bills nothing: it
    /// refuses a model-less request) or is not JSON (uploads; see docs/spend.md).
    public var model: String?
    /// The largest of `max_tokens`, `max_completion_tokens`, `max_output_tokens` and Gemini's
    /// `generationConfig.maxOutputTokens`; nil when none.
    public var maxTokens: Int?

    public init(model: String?, maxTokens: Int?) {
        self.model = model
        self.maxTokens = maxTokens
    }

    /// Why a body cannot be priced.
    public enum Refusal: Error, Equatable, Sendable {
        /// A JSON object the strict parser refuses (a repeated key, a number or escape it does not
        /// accept): readers may disagree on its model, so it is not sent under a budget.
        case ambiguous
    }

    /// The largest `max_tokens` taken from a body: a trillion tokens is beyond every model, and
    /// keeps the Int conversion safe for absurd numbers such as `1e300`.
    static let maxTokensCeiling = 1_000_000_000_000.0

    public static func read(_ bytes: [UInt8]) -> Result<PricedRequest, Refusal> {
        guard !bytes.isEmpty else { return .success(.init(model: nil, maxTokens: nil)) }
        guard let parsed = CanonicalJSON.parse(bytes) else {
            // The lenient walker sees an object the strict parser refused: ambiguous JSON.
            // Neither sees an object: not JSON at all (multipart uploads), no model to price.
            return JSONTopLevel.members(bytes) == nil ? .success(.init(model: nil, maxTokens: nil)) : .failure(.ambiguous)
        }
        guard case .object = parsed else { return .success(.init(model: nil, maxTokens: nil)) }
        var model: String?
        if case .string(let m)? = parsed["model"] { model = m }
        var most: Int?
        let generation = parsed["generationConfig"]  // Gemini's native API
        for value in ["max_tokens", "max_completion_tokens", "max_output_tokens"].map({ parsed[$0] }) + [generation?["maxOutputTokens"]] {
            // Canonical numbers are decimals such as `4096`, `4.096e3`, `1e3`: Double reads them all.
            guard case .number(let text)? = value, let d = Double(text), d.isFinite, d >= 0 else { continue }
            let n = Int(min(d.rounded(.up), maxTokensCeiling))
            most = max(most ?? 0, n)
        }
        return .success(.init(model: model, maxTokens: most))
    }
}
