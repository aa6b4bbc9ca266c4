import Logging
import PostgresNIO
import SidecarCore

extension FleetDatabase {
    // MARK: budgets

    /// Leases slices of fleet budgets for this node in one statement (the `fleet_lease_budgets`
    /// function), for every scope the node holds or needs. See `FleetBudgetClaim` /
    /// `FleetBudgetGrant`. Claims are taken in (scope, period) order, so concurrent nodes never
    /// deadlock; the grants come back in that order.
    public func leaseBudgets(_ claims: [FleetBudgetClaim], leaseSeconds: Double) async throws -> [FleetBudgetGrant] {
        guard !claims.isEmpty else { return [] }
        guard leaseSeconds.isFinite, leaseSeconds >= 0 else { throw FleetError(.other, "fleet budget lease seconds must be finite and not negative") }
        guard claims.allSatisfy({ $0.limit.isFinite && $0.used.isFinite && $0.want.isFinite }) else {
            throw FleetError(.other, "fleet budget claims must be finite numbers")
        }
        let node = self.node
        let scopes = claims.map(\.scope.scope)
        let periods = claims.map(\.scope.period)
        let limits = claims.map(\.limit)
        let used = claims.map(\.used)
        let want = claims.map(\.want)
        return try await statement { connection, logger in
            let query: PostgresQuery = """
                SELECT r_scope, r_period, r_allotment, r_granted, r_limit
                FROM fleet_lease_budgets(\(node), \(scopes), \(periods), \(limits), \(used), \(want), \(leaseSeconds))
                """
            var grants: [FleetBudgetGrant] = []
            for try await (scope, period, allotment, granted, limit) in try await connection.query(query, logger: logger)
                .decode((String, String, Double, Double, Double).self) {
                grants.append(FleetBudgetGrant(scope: FleetBudgetScope(scope: scope, period: period), allotment: allotment,
                                               fleetGranted: granted, limit: limit))
            }
            return grants
        }
    }

    // MARK: client rate limits

    /// Takes up to `want` tokens per client from the fleet-wide token buckets (and gives back
    /// `giveBack` unused ones first), in one statement (`fleet_lease_rates`). Returns the tokens
    /// granted per client (a client claimed twice: the last grant).
    public func leaseRates(_ claims: [FleetRateClaim]) async throws -> [String: Int] {
        guard !claims.isEmpty else { return [:] }
        let clients = claims.map(\.client)
        let perMinute = claims.map { Double(max(0, $0.perMinute)) }
        let burst = claims.map { Double(max(0, $0.burst)) }
        let want = claims.map { Int64(max(0, $0.want)) }
        let giveBack = claims.map { Int64(max(0, $0.giveBack)) }
        return try await statement { connection, logger in
            let query: PostgresQuery = """
                SELECT r_client, r_granted FROM fleet_lease_rates(\(clients), \(perMinute), \(burst), \(want), \(giveBack))
                """
            var granted: [String: Int] = [:]
            for try await (client, tokens) in try await connection.query(query, logger: logger).decode((String, Int64).self) {
                granted[client] = Int(tokens)
            }
            return granted
        }
    }

    // MARK: outbox

    /// The highest outbox sequence number of this node already applied in PostgreSQL (0 for a
    /// node never seen; its row is created).
    public func pushedSequence() async throws -> Int64 {
        let node = self.node
        return try await statement { connection, logger in
            let query: PostgresQuery = """
                WITH created AS (
                    INSERT INTO fleet_nodes (node) VALUES (\(node)) ON CONFLICT (node) DO NOTHING RETURNING pushed_seq
                )
                SELECT pushed_seq FROM created UNION ALL SELECT pushed_seq FROM fleet_nodes WHERE node = \(node)
                """
            var sequence: Int64 = 0
            for try await value in try await connection.query(query, logger: logger).decode(Int64.self) {
                sequence = value
            }
            return sequence
        }
    }

    /// Applies `rows` (this node's outbox rows with `seq` in `(after, upTo]`) if and only if the
    /// node's applied sequence is still `after` (compare-and-set, one transaction); returns the
    /// applied sequence afterwards (`upTo` on success, the stored value when it was not `after`:
    /// the caller drops its rows up to that and tries again). Rows are added to `fleet_spend`
    /// under this node's name (the rows' `node` field is not used); rows with the same key are
    /// summed first.
    public func push(_ rows: [FleetSpendRow], after: Int64, upTo: Int64) async throws -> Int64 {
        guard upTo >= after else { throw FleetError(.other, "fleet outbox push: upTo \(upTo) is below after \(after)") }
        let node = self.node
        let columns = SpendColumns(Self.summed(rows))
        return try await transaction { connection, logger in
            try await connection.query("INSERT INTO fleet_nodes (node) VALUES (\(node)) ON CONFLICT (node) DO NOTHING", logger: logger)
            var stored: Int64 = 0
            for try await value in try await connection.query(
                "SELECT pushed_seq FROM fleet_nodes WHERE node = \(node) FOR UPDATE", logger: logger).decode(Int64.self) {
                stored = value
            }
            guard stored == after else { return stored }
            if !columns.day.isEmpty {
                let c = columns
                try await connection.query("""
                    INSERT INTO fleet_spend AS s (day, node, model, deployment, client, requests, prompt_tokens, completion_tokens,
                        cached_tokens, cache_write_tokens, usd, hits, misses, coalesced, bypasses, bytes_served,
                        prompt_tokens_saved, completion_tokens_saved)
                    SELECT t.day, \(node), t.model, t.deployment, t.client, t.requests, t.prompt_tokens, t.completion_tokens,
                        t.cached_tokens, t.cache_write_tokens, t.usd, t.hits, t.misses, t.coalesced, t.bypasses, t.bytes_served,
                        t.prompt_tokens_saved, t.completion_tokens_saved
                    FROM unnest(\(c.day), \(c.model), \(c.deployment), \(c.client), \(c.requests), \(c.promptTokens),
                                \(c.completionTokens), \(c.cachedTokens), \(c.cacheWriteTokens), \(c.usd), \(c.hits), \(c.misses),
                                \(c.coalesced), \(c.bypasses), \(c.bytesServed), \(c.promptTokensSaved), \(c.completionTokensSaved))
                        AS t(day, model, deployment, client, requests, prompt_tokens, completion_tokens, cached_tokens,
                             cache_write_tokens, usd, hits, misses, coalesced, bypasses, bytes_served, prompt_tokens_saved,
                             completion_tokens_saved)
                    ON CONFLICT (day, node, model, deployment, client) DO UPDATE SET
                        requests = s.requests + excluded.requests,
                        prompt_tokens = s.prompt_tokens + excluded.prompt_tokens,
                        completion_tokens = s.completion_tokens + excluded.completion_tokens,
                        cached_tokens = s.cached_tokens + excluded.cached_tokens,
                        cache_write_tokens = s.cache_write_tokens + excluded.cache_write_tokens,
                        usd = s.usd + excluded.usd,
                        hits = s.hits + excluded.hits,
                        misses = s.misses + excluded.misses,
                        coalesced = s.coalesced + excluded.coalesced,
                        bypasses = s.bypasses + excluded.bypasses,
                        bytes_served = s.bytes_served + excluded.bytes_served,
                        prompt_tokens_saved = s.prompt_tokens_saved + excluded.prompt_tokens_saved,
                        completion_tokens_saved = s.completion_tokens_saved + excluded.completion_tokens_saved
                    """, logger: logger)
            }
            try await connection.query("UPDATE fleet_nodes SET pushed_seq = \(upTo) WHERE node = \(node)", logger: logger)
            return upTo
        }
    }

    /// Rows with the same (day, model, deployment, client) added together, in first-seen order.
    static func summed(_ rows: [FleetSpendRow]) -> [FleetSpendRow] {
        struct Key: Hashable { var day, model, deployment, client: String }
        var index: [Key: Int] = [:]
        var result: [FleetSpendRow] = []
        for row in rows {
            let key = Key(day: row.day, model: row.model, deployment: row.deployment, client: row.client)
            guard let at = index[key] else {
                index[key] = result.count
                result.append(row)
                continue
            }
            result[at].requests &+= row.requests
            result[at].promptTokens &+= row.promptTokens
            result[at].completionTokens &+= row.completionTokens
            result[at].cachedTokens &+= row.cachedTokens
            result[at].cacheWriteTokens &+= row.cacheWriteTokens
            result[at].usd += row.usd
            result[at].hits &+= row.hits
            result[at].misses &+= row.misses
            result[at].coalesced &+= row.coalesced
            result[at].bypasses &+= row.bypasses
            result[at].bytesServed &+= row.bytesServed
            result[at].promptTokensSaved &+= row.promptTokensSaved
            result[at].completionTokensSaved &+= row.completionTokensSaved
        }
        return result
    }
}

/// Spend rows as column arrays, bound as PostgreSQL arrays and `unnest`ed (one round trip).
private struct SpendColumns: Sendable {
    var day: [String] = [], model: [String] = [], deployment: [String] = [], client: [String] = []
    var requests: [Int64] = [], promptTokens: [Int64] = [], completionTokens: [Int64] = [], cachedTokens: [Int64] = []
    var cacheWriteTokens: [Int64] = [], usd: [Double] = [], hits: [Int64] = [], misses: [Int64] = [], coalesced: [Int64] = []
    var bypasses: [Int64] = [], bytesServed: [Int64] = [], promptTokensSaved: [Int64] = [], completionTokensSaved: [Int64] = []

    init(_ rows: [FleetSpendRow]) {
        for row in rows {
            day.append(row.day)
            model.append(row.model)
            deployment.append(row.deployment)
            client.append(row.client)
            requests.append(row.requests)
            promptTokens.append(row.promptTokens)
            completionTokens.append(row.completionTokens)
            cachedTokens.append(row.cachedTokens)
            cacheWriteTokens.append(row.cacheWriteTokens)
            usd.append(row.usd.isFinite ? row.usd : 0)
            hits.append(row.hits)
            misses.append(row.misses)
            coalesced.append(row.coalesced)
            bypasses.append(row.bypasses)
            bytesServed.append(row.bytesServed)
            promptTokensSaved.append(row.promptTokensSaved)
            completionTokensSaved.append(row.completionTokensSaved)
        }
    }
}
