/// Spend budgets with reservations: a request reserves its estimated maximum cost before it is
/// sent and settles the real cost after, so concurrent requests can never overshoot a budget
/// together (each sees the others' reservations). Days and months are UTC calendar periods,
/// passed in (`"2026-11-23"`), so the ledger is pure.
public struct BudgetLedger: Sendable {
    public struct Limits: Sendable, Equatable {
        public var dailyUSD: Double?
        public var monthlyUSD: Double?
        /// The same daily cap for each client credential.
        public var clientDailyUSD: Double?
        public var alertPercent: Int = 80
        public init(dailyUSD: Double? = nil, monthlyUSD: Double? = nil, clientDailyUSD: Double? = nil, alertPercent: Int = 80) {
            self.dailyUSD = dailyUSD
            self.monthlyUSD = monthlyUSD
            self.clientDailyUSD = clientDailyUSD
            self.alertPercent = alertPercent
        }
        public var isEmpty: Bool { dailyUSD == nil && monthlyUSD == nil && clientDailyUSD == nil }
    }

    public struct Reservation: Sendable, Equatable {
        public let id: Int
        public let amount: Double
        public let client: String
        public let day: String
        public let month: String
    }

    public enum Refusal: Sendable, Equatable {
        case daily(limit: Double), monthly(limit: Double), clientDaily(limit: Double)
        /// Within the configured limit, but not within this node's slice of the fleet's budget
        /// (`[fleet]`): the node asks the fleet for more of `scope` before it refuses.
        case fleetSlice(scope: FleetBudgetScope, need: Double)
    }

    /// In fleet mode, what this node may spend in each scope (its `used` included): its slices of
    /// the fleet's budgets. A scope without an entry has no slice yet ($0).
    public struct Allotments: Sendable, Equatable {
        public var day: Double
        public var month: Double
        public var clients: [String: Double]
        public init(day: Double = 0, month: Double = 0, clients: [String: Double] = [:]) {
            self.day = day
            self.month = month
            self.clients = clients
        }
    }

    private var day = ""
    private var month = ""
    private var spentDay = 0.0, spentMonth = 0.0
    private var reservedDay = 0.0, reservedMonth = 0.0
    private var clientSpent: [String: Double] = [:]
    private var clientReserved: [String: Double] = [:]
    private var open: [Int: Reservation] = [:]
    private var nextID = 0
    private var alerted: Set<String> = []

    public init() {}

    /// Spend already recorded (at start: today's and this month's totals from the database).
    public mutating func load(day: String, month: String, spentDay: Double, spentMonth: Double, clients: [String: Double]) {
        roll(day: day, month: month)
        self.spentDay = spentDay
        self.spentMonth = spentMonth
        clientSpent = clients
    }

    private mutating func roll(day: String, month: String) {
        if month != self.month { self.month = month; spentMonth = 0; reservedMonth = 0; alerted = alerted.filter { !$0.hasPrefix("month") } }
        if day != self.day { self.day = day; spentDay = 0; reservedDay = 0; clientSpent = [:]; clientReserved = [:]; alerted = alerted.filter { !$0.hasPrefix("day") } }
    }

    /// Reserves `amount` for one request of `client`, or says which budget it would overshoot.
    /// - Parameter fleet: this node's slices of the fleet's budgets (`[fleet]`), checked after
    ///   the configured limits; nil: the node is alone.
    public mutating func reserve(_ amount: Double, client: String, limits: Limits, day: String, month: String,
                                 fleet: Allotments? = nil) -> Result<Reservation, RefusalError> {
        roll(day: day, month: month)
        // A request that costs nothing (an unpriced or free model) cannot overshoot anything.
        if amount > 0 {
            if let refusal = refusal(amount, client: client, limits: limits) { return .failure(.init(refusal: refusal)) }
            if let fleet, let refusal = fleetRefusal(amount, client: client, limits: limits, fleet: fleet, day: day, month: month) {
                return .failure(.init(refusal: refusal))
            }
        }
        nextID += 1
        let r = Reservation(id: nextID, amount: amount, client: client, day: day, month: month)
        open[r.id] = r
        reservedDay += amount
        reservedMonth += amount
        clientReserved[client, default: 0] += amount
        return .success(r)
    }

    private func refusal(_ amount: Double, client: String, limits: Limits) -> Refusal? {
        if let limit = limits.dailyUSD, spentDay + reservedDay + amount > limit { return .daily(limit: limit) }
        if let limit = limits.monthlyUSD, spentMonth + reservedMonth + amount > limit { return .monthly(limit: limit) }
        if let limit = limits.clientDailyUSD, clientSpent[client, default: 0] + clientReserved[client, default: 0] + amount > limit {
            return .clientDaily(limit: limit)
        }
        return nil
    }

    private func fleetRefusal(_ amount: Double, client: String, limits: Limits, fleet: Allotments, day: String, month: String) -> Refusal? {
        if limits.dailyUSD != nil, spentDay + reservedDay + amount > fleet.day {
            return .fleetSlice(scope: .init(scope: "day", period: day), need: spentDay + reservedDay + amount)
        }
        if limits.monthlyUSD != nil, spentMonth + reservedMonth + amount > fleet.month {
            return .fleetSlice(scope: .init(scope: "month", period: month), need: spentMonth + reservedMonth + amount)
        }
        if limits.clientDailyUSD != nil {
            let use = clientSpent[client, default: 0] + clientReserved[client, default: 0]
            if use + amount > fleet.clients[client, default: 0] {
                return .fleetSlice(scope: .init(scope: "client:" + client, period: day), need: use + amount)
            }
        }
        return nil
    }

    /// This node's use (spent and reserved) of every scope it has budgets for, in fleet terms:
    /// what it reports to the fleet when it renews its slices.
    public func fleetUse(limits: Limits) -> [FleetBudgetScope: Double] {
        var out: [FleetBudgetScope: Double] = [:]
        if limits.dailyUSD != nil, !day.isEmpty { out[.init(scope: "day", period: day)] = spentDay + reservedDay }
        if limits.monthlyUSD != nil, !month.isEmpty { out[.init(scope: "month", period: month)] = spentMonth + reservedMonth }
        if limits.clientDailyUSD != nil, !day.isEmpty {
            for c in Set(clientSpent.keys).union(clientReserved.keys) {
                out[.init(scope: "client:" + c, period: day)] = clientSpent[c, default: 0] + clientReserved[c, default: 0]
            }
        }
        return out
    }

    public struct RefusalError: Error, Sendable, Equatable { public var refusal: Refusal }

    /// Replaces a reservation with the real cost (0 for a request that cost nothing), once.
    /// Returns the budgets whose alert threshold this crossed ("day" or "month").
    @discardableResult
    public mutating func settle(_ r: Reservation, actual: Double, limits: Limits) -> [String] {
        guard open.removeValue(forKey: r.id) != nil else { return [] }
        if r.day == day { reservedDay -= r.amount; spentDay += actual; clientReserved[r.client, default: 0] -= r.amount; clientSpent[r.client, default: 0] += actual }
        if r.month == month { reservedMonth -= r.amount; spentMonth += actual }
        var crossed: [String] = []
        let threshold = Double(limits.alertPercent) / 100
        if let l = limits.dailyUSD, spentDay >= l * threshold, alerted.insert("day").inserted { crossed.append("day") }
        if let l = limits.monthlyUSD, spentMonth >= l * threshold, alerted.insert("month").inserted { crossed.append("month") }
        return crossed
    }

    /// (spent, reserved) today and this month, for `/stats` and metrics.
    public var totals: (day: Double, month: Double, reservedDay: Double, reservedMonth: Double) { (spentDay, spentMonth, reservedDay, reservedMonth) }
    public var openReservations: Int { open.count }

    /// The most a request can cost: its prompt (estimated at 4 bytes per token from the body) plus
    /// `max_tokens` (or `max_completion_tokens` / `max_output_tokens` / Gemini's
    /// `maxOutputTokens`; 4,096 when it sets none).
    /// - Parameter writesPromptCache: the request may write its prompt to the provider's cache at a
    ///   premium (Anthropic's `cache_control`): its prompt is reserved at the dearest input rate.
    public static func estimate(bodyBytes: Int, maxTokens: Int?, price: PriceTable.Price?, writesPromptCache: Bool = false) -> Double {
        guard var price else { return 0 }
        if writesPromptCache { price.inputPerMTok = price.mostPerInputMTok }
        let t = tokens(bodyBytes: bodyBytes, maxTokens: maxTokens)
        return price.cost(promptTokens: t.prompt, completionTokens: t.completion)
    }

    /// The tokens a request can use at most, as estimated before it is sent (also what a
    /// deployment's `tpm` is charged).
    public static func tokens(bodyBytes: Int, maxTokens: Int?) -> (prompt: Int64, completion: Int64) {
        (Int64((bodyBytes + 3) / 4), Int64(maxTokens ?? 4_096))
    }
}
