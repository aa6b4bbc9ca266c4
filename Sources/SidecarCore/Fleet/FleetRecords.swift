/// The values exchanged with the fleet database (SidecarFleet) and the pure fleet state machines.

/// A budget scope and period: `day` / `2026-12-02`, `month` / `2026-12`, `client:<scope hash>` / `2026-12-02`.
public struct FleetBudgetScope: Hashable, Sendable, Comparable {
    public var scope: String
    public var period: String
    public init(scope: String, period: String) {
        self.scope = scope
        self.period = period
    }
    public static func < (a: Self, b: Self) -> Bool { (a.scope, a.period) < (b.scope, b.period) }
}

/// What a node asks of one fleet budget: `used` is what it has spent and still holds reserved
/// in the period (a fact, always counted), `want` the headroom it would like beyond that.
public struct FleetBudgetClaim: Sendable, Equatable {
    public var scope: FleetBudgetScope
    public var limit: Double
    public var used: Double
    public var want: Double
    public init(scope: FleetBudgetScope, limit: Double, used: Double, want: Double) {
        self.scope = scope
        self.limit = limit
        self.used = used
        self.want = want
    }
}

/// What the fleet granted: the node may spend up to `allotment` (its `used` included) in the
/// period until the lease expires; `fleetGranted` is the sum of every node's allotment.
public struct FleetBudgetGrant: Sendable, Equatable {
    public var scope: FleetBudgetScope
    public var allotment: Double
    public var fleetGranted: Double
    public var limit: Double
    public init(scope: FleetBudgetScope, allotment: Double, fleetGranted: Double, limit: Double) {
        self.scope = scope
        self.allotment = allotment
        self.fleetGranted = fleetGranted
        self.limit = limit
    }
}

/// One client's request tokens: take up to `want` from the fleet bucket (`perMinute`, `burst`)
/// after giving back `giveBack` unused ones.
public struct FleetRateClaim: Sendable, Equatable {
    public var client: String
    public var perMinute: Int
    public var burst: Int
    public var want: Int
    public var giveBack: Int
    public init(client: String, perMinute: Int, burst: Int, want: Int, giveBack: Int) {
        self.client = client
        self.perMinute = perMinute
        self.burst = burst
        self.want = want
        self.giveBack = giveBack
    }
}

/// Spend and cache counters of one day, node, model, deployment and client (counters carry
/// deployment and client "-").
public struct FleetSpendRow: Sendable, Equatable {
    public var day: String
    public var node: String
    public var model: String
    public var deployment: String
    public var client: String
    public var requests: Int64 = 0, promptTokens: Int64 = 0, completionTokens: Int64 = 0, cachedTokens: Int64 = 0, cacheWriteTokens: Int64 = 0
    public var usd: Double = 0
    public var hits: Int64 = 0, misses: Int64 = 0, coalesced: Int64 = 0, bypasses: Int64 = 0
    public var bytesServed: Int64 = 0, promptTokensSaved: Int64 = 0, completionTokensSaved: Int64 = 0
    public init(day: String, node: String, model: String, deployment: String, client: String) {
        self.day = day
        self.node = node
        self.model = model
        self.deployment = deployment
        self.client = client
    }
}

/// A cached answer as the shared tier holds it (the local store's entry, without hit counts).
public struct FleetCachedAnswer: Sendable, Equatable {
    public var key: [UInt8]
    public var scope: String
    public var model: String
    public var endpoint: String
    public var status: Int
    public var contentType: String?
    public var body: [UInt8]
    public var isStream: Bool
    public var createdAt: Int64
    public var expiresAt: Int64
    public var promptTokens: Int64?
    public var completionTokens: Int64?
    public init(key: [UInt8], scope: String, model: String, endpoint: String, status: Int, contentType: String?, body: [UInt8],
                isStream: Bool, createdAt: Int64, expiresAt: Int64, promptTokens: Int64? = nil, completionTokens: Int64? = nil) {
        self.key = key
        self.scope = scope
        self.model = model
        self.endpoint = endpoint
        self.status = status
        self.contentType = contentType
        self.body = body
        self.isStream = isStream
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
    }
}

public enum FleetCacheLookup: Sendable, Equatable {
    case hit(FleetCachedAnswer)
    /// Not stored; this node now holds the in-flight claim on the key.
    case leader
    /// Not stored; `node` holds a live claim: its answer will be notified.
    case follower(node: String)
    /// Not stored, no claim asked for or taken.
    case miss
}

public struct FleetNodeRow: Sendable, Equatable {
    public var node: String
    public var version: String
    public var startedAt: Int64
    /// Seconds since the node's last heartbeat (by the database's clock).
    public var secondsSinceSeen: Double
    public var pushedSequence: Int64
    public init(node: String, version: String, startedAt: Int64, secondsSinceSeen: Double, pushedSequence: Int64) {
        self.node = node
        self.version = version
        self.startedAt = startedAt
        self.secondsSinceSeen = secondsSinceSeen
        self.pushedSequence = pushedSequence
    }
}

public struct FleetBudgetRow: Sendable, Equatable {
    public var scope: FleetBudgetScope
    public var limit: Double
    public var granted: Double
    /// Per node: allotment, reported use, seconds until the lease expires (negative: expired).
    public var leases: [String: (allotment: Double, used: Double, expiresIn: Double)]
    public init(scope: FleetBudgetScope, limit: Double, granted: Double, leases: [String: (allotment: Double, used: Double, expiresIn: Double)]) {
        self.scope = scope
        self.limit = limit
        self.granted = granted
        self.leases = leases
    }
    public static func == (a: Self, b: Self) -> Bool {
        a.scope == b.scope && a.limit == b.limit && a.granted == b.granted && a.leases.keys.sorted() == b.leases.keys.sorted()
            && a.leases.allSatisfy { k, v in b.leases[k].map { $0 == v } ?? false }
    }
}
