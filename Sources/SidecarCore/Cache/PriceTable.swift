/// US dollars per million tokens, by model: what a cache hit saved and (#6) what a call cost.
///
/// Built-in defaults cover common models (list prices, standard tier, as of late 2025); the
/// configuration's `[prices."MODEL"]` overrides or adds. A dated snapshot such as
/// `gpt-4o-mini-2024-07-18` is priced as its family (`gpt-4o-mini`): the longest configured name
/// that is the model's prefix followed by `-` wins.
public struct PriceTable: Sendable, Equatable {
    public struct Price: Sendable, Equatable {
        public var inputPerMTok: Double
        public var outputPerMTok: Double
        /// Input read from the provider's prompt cache; nil: priced as fresh input (never less
        /// than the provider charges).
        public var cachedInputPerMTok: Double?
        /// Input written to the provider's prompt cache (Anthropic, 5-minute cache); nil: 1.25 ×
        /// input, Anthropic's rate. Writes to the 1-hour cache are billed at 2 × input.
        public var cacheWritePerMTok: Double?
        public init(inputPerMTok: Double, outputPerMTok: Double, cachedInputPerMTok: Double? = nil, cacheWritePerMTok: Double? = nil) {
            self.inputPerMTok = inputPerMTok
            self.outputPerMTok = outputPerMTok
            self.cachedInputPerMTok = cachedInputPerMTok
            self.cacheWritePerMTok = cacheWritePerMTok
        }

        /// Dollars for this many tokens, every input token at the fresh price.
        public func cost(promptTokens: Int64, completionTokens: Int64) -> Double {
            (Double(promptTokens) * inputPerMTok + Double(completionTokens) * outputPerMTok) / 1_000_000
        }

        /// Dollars for an answer's usage, each kind of input token at its own price.
        public func cost(_ usage: ResponseInspector.Usage) -> Double {
            let write1h = min(usage.cacheWrite1hTokens, usage.cacheWriteTokens)
            let fresh = max(0, usage.promptTokens - usage.cachedTokens - usage.cacheWriteTokens)
            let input = Double(fresh) * inputPerMTok
                + Double(usage.cachedTokens) * (cachedInputPerMTok ?? inputPerMTok)
                + Double(usage.cacheWriteTokens - write1h) * (cacheWritePerMTok ?? inputPerMTok * 1.25)
                + Double(write1h) * inputPerMTok * 2
            return (input + Double(usage.completionTokens) * outputPerMTok) / 1_000_000
        }

        /// The most one input token can cost (fresh, read or written to the cache): what a budget
        /// reserves per estimated prompt token, so a request that writes its prompt to the cache
        /// cannot cost more than was reserved for it.
        public var mostPerInputMTok: Double {
            max(inputPerMTok, cachedInputPerMTok ?? 0, cacheWritePerMTok ?? inputPerMTok * 1.25, inputPerMTok * 2)
        }

        /// What the dollars a provider's prompt cache saved on `usage` came to: its cached tokens
        /// at the fresh price minus what they cost.
        public func promptCacheSavings(_ usage: ResponseInspector.Usage) -> Double {
            Double(usage.cachedTokens) * (inputPerMTok - (cachedInputPerMTok ?? inputPerMTok)) / 1_000_000
        }
    }

    /// List prices, standard tier, prompts up to 200k tokens, as of late 2025. Anthropic's cache
    /// writes are its 5-minute rate (1.25 × input); Gemini bills its context cache's storage by
    /// the hour, not per written token, so it has no write price here.
    public static let defaults: [String: Price] = [
        "gpt-5": .init(inputPerMTok: 1.25, outputPerMTok: 10.00, cachedInputPerMTok: 0.125),
        "gpt-5-mini": .init(inputPerMTok: 0.25, outputPerMTok: 2.00, cachedInputPerMTok: 0.025),
        "gpt-5-nano": .init(inputPerMTok: 0.05, outputPerMTok: 0.40, cachedInputPerMTok: 0.005),
        "gpt-4.1": .init(inputPerMTok: 2.00, outputPerMTok: 8.00, cachedInputPerMTok: 0.50),
        "gpt-4.1-mini": .init(inputPerMTok: 0.40, outputPerMTok: 1.60, cachedInputPerMTok: 0.10),
        "gpt-4.1-nano": .init(inputPerMTok: 0.10, outputPerMTok: 0.40, cachedInputPerMTok: 0.025),
        "gpt-4o": .init(inputPerMTok: 2.50, outputPerMTok: 10.00, cachedInputPerMTok: 1.25),
        "gpt-4o-mini": .init(inputPerMTok: 0.15, outputPerMTok: 0.60, cachedInputPerMTok: 0.075),
        "gpt-4-turbo": .init(inputPerMTok: 10.00, outputPerMTok: 30.00),
        "gpt-3.5-turbo": .init(inputPerMTok: 0.50, outputPerMTok: 1.50),
        "o1": .init(inputPerMTok: 15.00, outputPerMTok: 60.00, cachedInputPerMTok: 7.50),
        "o3": .init(inputPerMTok: 2.00, outputPerMTok: 8.00, cachedInputPerMTok: 0.50),
        "o3-mini": .init(inputPerMTok: 1.10, outputPerMTok: 4.40, cachedInputPerMTok: 0.55),
        "o4-mini": .init(inputPerMTok: 1.10, outputPerMTok: 4.40, cachedInputPerMTok: 0.275),
        // Realtime models at their audio rates (text costs less): a session's usage does not
        // always say which, and a budget must never count less than was spent.
        "gpt-realtime": .init(inputPerMTok: 32.00, outputPerMTok: 64.00, cachedInputPerMTok: 0.40),
        "gpt-realtime-mini": .init(inputPerMTok: 10.00, outputPerMTok: 20.00, cachedInputPerMTok: 0.30),
        "gpt-4o-realtime-preview": .init(inputPerMTok: 40.00, outputPerMTok: 80.00, cachedInputPerMTok: 2.50),
        "text-embedding-3-small": .init(inputPerMTok: 0.02, outputPerMTok: 0),
        "text-embedding-3-large": .init(inputPerMTok: 0.13, outputPerMTok: 0),
        "text-embedding-ada-002": .init(inputPerMTok: 0.10, outputPerMTok: 0),
        "omni-moderation-latest": .init(inputPerMTok: 0, outputPerMTok: 0),
        "claude-opus-4-5": .init(inputPerMTok: 5.00, outputPerMTok: 25.00, cachedInputPerMTok: 0.50, cacheWritePerMTok: 6.25),
        "claude-opus-4-1": .init(inputPerMTok: 15.00, outputPerMTok: 75.00, cachedInputPerMTok: 1.50, cacheWritePerMTok: 18.75),
        "claude-opus-4": .init(inputPerMTok: 15.00, outputPerMTok: 75.00, cachedInputPerMTok: 1.50, cacheWritePerMTok: 18.75),
        "claude-sonnet-4-5": .init(inputPerMTok: 3.00, outputPerMTok: 15.00, cachedInputPerMTok: 0.30, cacheWritePerMTok: 3.75),
        "claude-sonnet-4": .init(inputPerMTok: 3.00, outputPerMTok: 15.00, cachedInputPerMTok: 0.30, cacheWritePerMTok: 3.75),
        "claude-3-7-sonnet": .init(inputPerMTok: 3.00, outputPerMTok: 15.00, cachedInputPerMTok: 0.30, cacheWritePerMTok: 3.75),
        "claude-haiku-4-5": .init(inputPerMTok: 1.00, outputPerMTok: 5.00, cachedInputPerMTok: 0.10, cacheWritePerMTok: 1.25),
        "claude-3-5-haiku": .init(inputPerMTok: 0.80, outputPerMTok: 4.00, cachedInputPerMTok: 0.08, cacheWritePerMTok: 1.00),
        "claude-3-haiku": .init(inputPerMTok: 0.25, outputPerMTok: 1.25, cachedInputPerMTok: 0.03, cacheWritePerMTok: 0.30),
        "gemini-3-pro-preview": .init(inputPerMTok: 2.00, outputPerMTok: 12.00, cachedInputPerMTok: 0.20),
        "gemini-2.5-pro": .init(inputPerMTok: 1.25, outputPerMTok: 10.00, cachedInputPerMTok: 0.125),
        "gemini-2.5-flash": .init(inputPerMTok: 0.30, outputPerMTok: 2.50, cachedInputPerMTok: 0.03),
        "gemini-2.5-flash-lite": .init(inputPerMTok: 0.10, outputPerMTok: 0.40, cachedInputPerMTok: 0.01),
        "gemini-2.0-flash": .init(inputPerMTok: 0.10, outputPerMTok: 0.40, cachedInputPerMTok: 0.025),
        "gemini-2.0-flash-lite": .init(inputPerMTok: 0.075, outputPerMTok: 0.30),
        "gemini-embedding-001": .init(inputPerMTok: 0.15, outputPerMTok: 0),
    ]

    public private(set) var prices: [String: Price]

    public init(overrides: [String: Price] = [:]) {
        prices = Self.defaults.merging(overrides) { _, new in new }
    }

    /// The price of `model`, or nil when neither it nor its family is in the table.
    public func price(of model: String) -> Price? {
        if let p = prices[model] { return p }
        var best: (name: String, price: Price)?
        for (name, price) in prices where model.hasPrefix(name + "-") {
            if best == nil || name.count > best!.name.count { best = (name, price) }
        }
        return best?.price
    }

    /// Dollars for `model`'s tokens; 0 for a model without a price.
    public func cost(model: String, promptTokens: Int64, completionTokens: Int64) -> Double {
        price(of: model)?.cost(promptTokens: promptTokens, completionTokens: completionTokens) ?? 0
    }

    /// Dollars for `model`'s answer, each kind of input token at its own price; 0 without a price.
    public func cost(model: String, usage: ResponseInspector.Usage) -> Double {
        price(of: model)?.cost(usage) ?? 0
    }
}
