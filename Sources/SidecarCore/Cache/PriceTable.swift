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
        public init(inputPerMTok: Double, outputPerMTok: Double) {
            self.inputPerMTok = inputPerMTok
            self.outputPerMTok = outputPerMTok
        }

        /// Dollars for this many tokens.
        public func cost(promptTokens: Int64, completionTokens: Int64) -> Double {
            (Double(promptTokens) * inputPerMTok + Double(completionTokens) * outputPerMTok) / 1_000_000
        }
    }

    public static let defaults: [String: Price] = [
        "gpt-5": .init(inputPerMTok: 1.25, outputPerMTok: 10.00),
        "gpt-5-mini": .init(inputPerMTok: 0.25, outputPerMTok: 2.00),
        "gpt-5-nano": .init(inputPerMTok: 0.05, outputPerMTok: 0.40),
        "gpt-4.1": .init(inputPerMTok: 2.00, outputPerMTok: 8.00),
        "gpt-4.1-mini": .init(inputPerMTok: 0.40, outputPerMTok: 1.60),
        "gpt-4.1-nano": .init(inputPerMTok: 0.10, outputPerMTok: 0.40),
        "gpt-4o": .init(inputPerMTok: 2.50, outputPerMTok: 10.00),
        "gpt-4o-mini": .init(inputPerMTok: 0.15, outputPerMTok: 0.60),
        "gpt-4-turbo": .init(inputPerMTok: 10.00, outputPerMTok: 30.00),
        "gpt-3.5-turbo": .init(inputPerMTok: 0.50, outputPerMTok: 1.50),
        "o1": .init(inputPerMTok: 15.00, outputPerMTok: 60.00),
        "o3": .init(inputPerMTok: 2.00, outputPerMTok: 8.00),
        "o3-mini": .init(inputPerMTok: 1.10, outputPerMTok: 4.40),
        "o4-mini": .init(inputPerMTok: 1.10, outputPerMTok: 4.40),
        "text-embedding-3-small": .init(inputPerMTok: 0.02, outputPerMTok: 0),
        "text-embedding-3-large": .init(inputPerMTok: 0.13, outputPerMTok: 0),
        "text-embedding-ada-002": .init(inputPerMTok: 0.10, outputPerMTok: 0),
        "omni-moderation-latest": .init(inputPerMTok: 0, outputPerMTok: 0),
        "claude-opus-4": .init(inputPerMTok: 15.00, outputPerMTok: 75.00),
        "claude-sonnet-4": .init(inputPerMTok: 3.00, outputPerMTok: 15.00),
        "claude-3-5-haiku": .init(inputPerMTok: 0.80, outputPerMTok: 4.00),
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
}
