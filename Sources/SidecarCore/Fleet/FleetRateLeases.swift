import NIOCore

/// This node's share of the fleet's per-client request limits (docs/fleet.md, "Rate limits").
/// The exact token bucket of each client lives in the database; a node takes tokens from it in
/// small slices and admits requests from what it holds. So the request path never waits for the
/// database, a node may admit `credit` requests of a client it holds no token for (its first,
/// or one while its ask is on the way); that debt is charged to the fleet bucket with the ask.
/// Bound: a client gets at most `burst + client_rpm × minutes + 2 × nodes × credit` requests
/// (one credit outstanding per node, one charged and not yet refilled)
/// through the fleet in any stretch of time. Pure; the clock is passed in.
public struct FleetRateLeases: Sendable {
    public let perMinute: Int
    public let burst: Int
    /// Requests a node may admit for a client ahead of the fleet's answer.
    public let credit: Int

    struct Client: Sendable, Equatable {
        /// Tokens held (negative: admitted on credit, not yet charged to the fleet).
        var balance = 0
        var asking = false
        /// The debt the ask on the way charges (paid when it is answered).
        var charging = 0
        /// The fleet's bucket was empty: refused here until then, without asking.
        var emptyUntil: NIODeadline?
        /// Requests admitted since the last sync (sizes the next ask; idle clients give back).
        var used = 0
        /// Whether this node may admit on credit: until the fleet has once answered "empty",
        /// and again after it granted tokens (a client at its limit never runs on credit).
        var creditOK = true
    }

    private var clients: [String: Client] = [:]

    public init(perMinute: Int, burst: Int, credit: Int = 1) {
        self.perMinute = perMinute
        self.burst = burst
        self.credit = credit
    }

    public enum Verdict: Sendable, Equatable {
        /// Admitted; `ask` is a claim to send now (the IO layer sends it and calls `answered`).
        case allowed(ask: FleetRateClaim?)
        /// Refused; `ask` (when set) asks the fleet whether tokens are back.
        case limited(retryAfter: TimeAmount, ask: FleetRateClaim?)
    }

    /// One token's time at `perMinute`.
    public var tokenInterval: TimeAmount { .nanoseconds(Int64((60e9 / Double(perMinute)).rounded(.up))) }

    public mutating func admit(client: String, now: NIODeadline) -> Verdict {
        var c = clients[client] ?? Client()
        defer { clients[client] = c }
        if c.balance < 1 {
            if let until = c.emptyUntil, now < until { return .limited(retryAfter: until - now, ask: nil) }
            guard c.creditOK, c.balance > -credit else {
                // At the limit: asks (once at a time) whether a token is back; this one waits.
                guard !c.asking else { return .limited(retryAfter: tokenInterval, ask: nil) }
                c.asking = true
                return .limited(retryAfter: tokenInterval, ask: claim(client, &c, want: 1))
            }
        }
        c.balance -= 1
        c.used += 1
        guard !c.asking, c.balance < max(1, want(c) / 2) else { return .allowed(ask: nil) }
        c.asking = true
        return .allowed(ask: claim(client, &c, want: want(c)))
    }

    /// How many tokens to ask for: twice the requests since the last sync, at least one, at most
    /// a quarter of the burst.
    private func want(_ c: Client) -> Int { max(1, min(max(1, burst / 4), 2 * c.used)) }

    /// Charges the debt with the claim (given back as a negative number); the balance stays
    /// negative until the fleet has answered, so the credit is not spent twice meanwhile.
    private func claim(_ name: String, _ c: inout Client, want: Int) -> FleetRateClaim {
        let debt = max(0, -c.balance)
        c.charging = debt
        return FleetRateClaim(client: name, perMinute: perMinute, burst: burst, want: want, giveBack: -debt)
    }

    /// The fleet's answer to an ask for `client`: `granted` tokens (0: its bucket is empty).
    /// `wanted` 0 (a give-back or a debt charged at a sync) says nothing about the fleet's bucket.
    public mutating func answered(client: String, granted: Int, wanted: Int = 1, now: NIODeadline) {
        var c = clients[client] ?? Client()
        c.asking = false
        c.balance += c.charging + granted
        c.charging = 0
        if wanted > 0 {
            c.emptyUntil = granted == 0 && c.balance < 1 ? now + tokenInterval : nil
            c.creditOK = granted > 0
        }
        clients[client] = c
    }

    /// The ask failed (the database is away): the debt stays charged to the fleet's count when
    /// the next ask goes (the claim's debt is added back).
    public mutating func askFailed(_ claim: FleetRateClaim) {
        guard var c = clients[claim.client] else { return }
        c.asking = false
        if claim.giveBack > 0 { c.balance += claim.giveBack }  // tokens given back are ours again
        c.charging = 0  // the debt stays in the balance, charged with the next ask
        clients[claim.client] = c
    }

    /// The periodic round: clients idle since the last one give their tokens back, debts are
    /// charged; clients with nothing held and nothing owed are forgotten.
    public mutating func sync(now: NIODeadline) -> [FleetRateClaim] {
        var out: [FleetRateClaim] = []
        for (name, var c) in clients {
            defer { clients[name] = c }
            if let until = c.emptyUntil, until <= now { c.emptyUntil = nil }
            guard !c.asking else { continue }
            if c.balance < 0 {
                c.asking = true
                out.append(claim(name, &c, want: 0))
            } else if c.used == 0, c.balance > 0 {
                out.append(FleetRateClaim(client: name, perMinute: perMinute, burst: burst, want: 0, giveBack: c.balance))
                c.balance = 0
                c.asking = true
            }
            c.used = 0
        }
        clients = clients.filter { $0.value.balance != 0 || $0.value.asking || $0.value.emptyUntil != nil || !$0.value.creditOK }
        return out.sorted { $0.client < $1.client }
    }

    /// A clean stop: every token held goes back and every debt is charged.
    public mutating func releaseAll() -> [FleetRateClaim] {
        let out = clients.filter { $0.value.balance != 0 }.map {
            FleetRateClaim(client: $0.key, perMinute: perMinute, burst: burst, want: 0, giveBack: $0.value.balance)
        }
        clients = [:]
        return out.sorted { $0.client < $1.client }
    }

    /// Tokens held for `client` (for tests and `/stats`).
    public func balance(of client: String) -> Int { clients[client]?.balance ?? 0 }
    public var clientCount: Int { clients.count }
}
