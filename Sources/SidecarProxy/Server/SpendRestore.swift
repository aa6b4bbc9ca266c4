import Logging
import NIOCore
import SidecarCore
import SidecarStore

/// Budgets survive restarts: today's and this month's spend are read back from the cache
/// database at start. A read that fails must not reset spend to $0 (the budget could then be
/// spent twice over), so the budgets stay closed (503 `budget_unavailable`, `/readyz` says why)
/// and the read is tried again every 5 s, the cache database's own reopen interval.
extension SidecarServer {
    static let restoreRetryInterval: TimeAmount = .seconds(5)

    /// Reads the spend totals into `budget`; throws when the database cannot be read.
    static func restoreSpend(_ cache: ResponseCache, into budget: BudgetBox) async throws {
        let today = ResponseCache.day(cache.clock())
        let (day, month) = try await cache.database.run { store in
            (try store.spend(since: today), try store.spend(since: UTCDay.firstOfMonth(ofDay: today)))
        }
        var clients: [String: Double] = [:]
        for (k, v) in day { clients[k.client, default: 0] += v.usd }
        budget.load(day: today, spentDay: day.values.reduce(0) { $0 + $1.usd }, spentMonth: month.values.reduce(0) { $0 + $1.usd }, clients: clients)
    }

    /// Tries `restoreSpend` again until it works, then opens the budgets and says so.
    static func retryRestore(_ cache: ResponseCache, state: ServerState, on loop: EventLoop, logger: Logger) {
        loop.scheduleTask(in: restoreRetryInterval) { [weak state] in
            guard let state else { return }  // the server is gone
            Task {
                do {
                    try await restoreSpend(cache, into: state.budget)
                    logger.notice("spend restored from the cache database: budgets open again")
                } catch {
                    retryRestore(cache, state: state, on: loop, logger: logger)
                }
            }
        }
    }
}
