import NIOCore

/// This node's slices of the fleet's budgets (docs/fleet.md, "Budgets"). Pure: the IO layer
/// sends `claims` to the database, feeds the answer back with `granted`, and passes the
/// allotments to the local `BudgetLedger`, which reserves and settles as it always did, only
/// against the node's slice instead of the whole budget.
///
/// Never overspent: a slice is the node's alone until it expires (by the database's clock, a
/// lease period after the statement ran); the node stops using it a margin earlier, counted
/// from when the statement was sent (so before the database's own `now()`). Between rounds the
/// node spends only from what it holds.
public struct FleetBudgetLeases: Sendable {
    public struct Settings: Sendable, Equatable {
        public var leasePeriod: TimeAmount
        /// The most of a budget one node holds beyond its use (`budget_slice`), as a share of it.
        public var slice: Double
        /// How much earlier than the database the node stops using a slice.
        public var margin: TimeAmount
        /// A scope without new use or need for this long is idle: its unused slice goes back.
        public var idleAfter: TimeAmount
        public init(leasePeriod: TimeAmount, slice: Double, margin: TimeAmount = .seconds(1), idleAfter: TimeAmount = .seconds(4)) {
            self.leasePeriod = leasePeriod
            self.slice = slice
            self.margin = margin
            self.idleAfter = idleAfter
        }
    }

    struct Held: Sendable, Equatable {
        var allotment: Double
        var validUntil: NIODeadline
    }

    public let settings: Settings
    private var held: [FleetBudgetScope: Held] = [:]
    /// What refused reservations needed (the scope's whole use with them), since the last round.
    private var needs: [FleetBudgetScope: Double] = [:]
    /// Use reported in the last round, per scope: its growth says the scope is in use.
    private var reported: [FleetBudgetScope: Double] = [:]
    /// When each scope last grew or needed more.
    private var lastActive: [FleetBudgetScope: NIODeadline] = [:]
    /// The fleet's total allotment and limit per scope, from the last answer.
    public private(set) var fleet: [FleetBudgetScope: (granted: Double, limit: Double)] = [:]

    public init(settings: Settings) { self.settings = settings }

    /// What this node may spend now in the current `day` and `month`, and for `client` (an
    /// expired or missing slice is $0: nothing priced may be reserved against it). Three lookups,
    /// whatever the number of clients.
    public func allotments(day: String, month: String, client: String?, now: NIODeadline) -> BudgetLedger.Allotments {
        func live(_ scope: FleetBudgetScope) -> Double {
            guard let h = held[scope], h.validUntil > now else { return 0 }
            return h.allotment
        }
        var a = BudgetLedger.Allotments(day: live(.init(scope: "day", period: day)), month: live(.init(scope: "month", period: month)))
        if let client { a.clients[client] = live(.init(scope: "client:" + client, period: day)) }
        return a
    }

    /// A reservation did not fit this node's slice of `scope`: the next round asks for enough
    /// for `total` (the scope's use with that reservation).
    public mutating func need(_ scope: FleetBudgetScope, total: Double) {
        needs[scope] = max(needs[scope] ?? 0, total)
    }

    /// Whether the fleet had room left in `scope` at its last answer (else a refused reservation
    /// is final without asking again until the next round).
    public func fleetHasRoom(_ scope: FleetBudgetScope, beyond amount: Double) -> Bool {
        guard let f = fleet[scope] else { return true }
        return f.limit - f.granted + 1e-12 >= amount
    }

    /// The claims of one round: every scope the node uses, holds or needs, with its use (a fact,
    /// always counted) and the headroom it wants: `slice` of the budget while it is in use (or
    /// what a refused reservation needs, if more); an idle scope wants nothing, which gives its
    /// unused slice back. Scopes of past periods are dropped.
    /// - Parameters:
    ///   - use: the ledger's `fleetUse`: this node's spend and reservations per scope.
    ///   - limit: the configured limit of a scope (nil: not limited any more, dropped).
    ///   - releasing: the node is stopping: it wants nothing, so every unused slice goes back now.
    public mutating func claims(use: [FleetBudgetScope: Double], limit: (FleetBudgetScope) -> Double?, now: NIODeadline,
                                releasing: Bool = false) -> [FleetBudgetClaim] {
        // The ledger names the current periods' scopes only: a held scope it no longer names is
        // of a past period, and is dropped.
        var scopes = Set(use.keys).union(needs.keys)
        // A client scope with nothing held beyond its use, no new use and no need: nothing to renew.
        scopes = scopes.filter { s in
            guard s.scope.hasPrefix("client:") else { return true }
            let u = use[s] ?? 0
            return needs[s] != nil || (held[s]?.allotment ?? 0) > u + 1e-12 || u > (reported[s] ?? 0) + 1e-12 || held[s] == nil && u > 0
        }
        var out: [FleetBudgetClaim] = []
        for s in scopes.sorted() {
            guard let l = limit(s) else {
                held[s] = nil
                continue
            }
            let used = use[s] ?? 0
            let extra = max(0, (needs[s] ?? 0) - used)
            let growth = max(0, used - (reported[s] ?? used))
            // In use (more spent or reserved, or a reservation waits, within `idleAfter`): a full
            // slice, so the next requests need no round; idle: nothing, which gives the unused
            // slice back.
            if growth > 0 || extra > 0 { lastActive[s] = now }
            let active = lastActive[s].map { now - $0 < settings.idleAfter } ?? false
            let want = releasing || !active ? 0 : max(extra, l * settings.slice)
            out.append(FleetBudgetClaim(scope: s, limit: l, used: used, want: want))
        }
        // Past periods are forgotten once the round no longer names them.
        let named = Set(out.map(\.scope))
        held = held.filter { named.contains($0.key) }
        lastActive = lastActive.filter { named.contains($0.key) }
        reported = Dictionary(uniqueKeysWithValues: out.map { ($0.scope, $0.used) })
        needs = [:]
        return out
    }

    /// The fleet's answer to a round sent at `sentAt`.
    public mutating func granted(_ grants: [FleetBudgetGrant], sentAt: NIODeadline) {
        let until = sentAt + settings.leasePeriod - settings.margin
        for g in grants {
            held[g.scope] = Held(allotment: g.allotment, validUntil: until)
            fleet[g.scope] = (g.fleetGranted, g.limit)
        }
    }

    /// The round failed: the slices held stay usable until they expire; what was needed is asked
    /// again at the next round.
    public mutating func roundFailed(needs lost: [FleetBudgetClaim]) {
        for c in lost where c.want > 0 { need(c.scope, total: c.used + c.want) }
    }

    /// The earliest moment a held slice lapses (nil: none held).
    public var nextExpiry: NIODeadline? { held.values.map(\.validUntil).min() }

    /// The allotment held in `scope`, expired or not (for `/stats`).
    public func allotment(_ scope: FleetBudgetScope) -> Double? { held[scope]?.allotment }
}
