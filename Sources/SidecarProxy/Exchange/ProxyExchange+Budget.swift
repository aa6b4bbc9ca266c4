import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore
import SidecarStore
import SidecarTLS
import Foundation

/// Budgets and spend: reserve before sending, settle after, record what the answer cost.
extension ProxyExchange {
    // MARK: budgets

    /// Reserves this request's most possible cost against `[budgets]` before anything is sent.
    /// Over budget: 429 `budget_exceeded`, or (`on_exhausted = "downgrade:MODEL"`) the request
    /// goes as MODEL instead, if that fits. False when the request was answered here.
    func reserveBudget() -> Bool {
        guard let budget else { return true }
        if let why = budget.unavailable {
            withdrawFromFlight()
            fail(.budgetUnavailable(why))
            return false
        }
        let fleet = downstream.state.fleet
        if let why = fleet?.rejects {
            withdrawFromFlight()
            fail(.fleetUnavailable(why))
            return false
        }
        let maxTokens = requestMaxTokens
        let client = downstream.scope(of: clientHead.headers)
        let now = accounting?.clock() ?? Int64(Date().timeIntervalSince1970)
        func attempt(_ model: String?) -> Result<BudgetLedger.Reservation, BudgetLedger.RefusalError> {
            let price = prices.price(of: billedModel(for: model) ?? "")
            let most = BudgetLedger.estimate(bodyBytes: bodyBytes, maxTokens: maxTokens, price: price, writesPromptCache: dialect == .anthropic)
            return budget.reserve(most, client: client, limits: budgets.limits, now: now, fleet: fleet)
        }
        if let model = requestModel, prices.price(of: billedModel(for: model) ?? model) == nil {
            // No price: the reservation would be $0 and the spend unseen by the budget.
            let allow = budgets.unpriced == .allow
            if metrics.unpriced(allow ? "allowed" : "rejected", model: model) {
                logger?.warning("request for a model without a price under a budget", metadata: [
                    "model": "\(model.prefix(200))", "budgets.unpriced": "\(budgets.unpriced.rawValue)",
                    "fix": "add [prices.\"\(model.prefix(200))\"]"])
            }
            if !allow {
                withdrawFromFlight()
                fail(.modelNotPriced(model))
                return false
            }
        }
        switch attempt(requestModel) {
        case .success(let r):
            reservation = r
            return true
        case .failure(let refusal):
            if case .fleetSlice(let scope, let need) = refusal.refusal, let fleet {
                // Within the budget, not within this node's slice: ask the fleet for more, once,
                // and try again when it has answered.
                if !askedFleet, fleet.mayGrant(scope, need: need) {
                    askedFleet = true
                    machine.budgetCheckAgain()
                    guard let loop = downstream.eventLoop else { return false }
                    let me = NIOLoopBound(self, eventLoop: loop)
                    fleet.ask(scope, total: need) { reached in
                        loop.execute { me.value.fleetAnswered(reached: reached) }
                    }
                    return false
                }
                if let why = fleet.problem ?? (fleetRoundFailed ? "the budget round did not reach it" : nil) {
                    withdrawFromFlight()
                    fail(.fleetUnavailable(why))
                    return false
                }
            }
            if case .downgrade(let cheaper) = budgets.onExhausted, cheaper != requestModel, case .success(let r) = attempt(cheaper) {
                reservation = r
                downgrade(to: cheaper)
                return true
            }
            withdrawFromFlight()
            if case .fleetSlice(let scope, let need) = refusal.refusal, let fleet {
                logger?.notice("fleet budget refused", metadata: fleet.describe(scope, need: need, asked: askedFleet))
            }
            fail(.budgetExceeded(refusal.refusal))
            return false
        }
    }

    /// The fleet answered the ask for a larger slice: the request goes on (and reserves again)
    /// unless it ended meanwhile (the client left).
    func fleetAnswered(reached: Bool) {
        guard !machine.isFinished else { return }
        fleetRoundFailed = !reached
        lease(fresh: false)
    }

    /// This request will not go upstream, for a reason of its own (its budget, its model's price):
    /// a flight it leads is withdrawn, and its followers go on alone, each against its own budget.
    /// (Ending the request without this left the flight registered: every identical request
    /// after a budget refusal joined it and waited forever.)
    func withdrawFromFlight() {
        guard let c = cacheState else { return }
        cacheState = nil
        guard let flight = c.flight else { return }
        flight.publish(.withdrawn)
        if c.registered { c.cache.endFlight(flight) }
    }

    /// The model a request for `model` is billed as: its group's first deployment's, else itself.
    func billedModel(for model: String?) -> String? {
        guard let model else { return nil }
        return routes[model]?.group.deployments.first?.model ?? model
    }

    /// Sends the request as `model` (a group, or a model for the default upstream) instead.
    func downgrade(to model: String) {
        downgradedFrom = requestModel
        logger?.notice("budget exhausted: request downgraded", metadata: ["from": "\(requestModel ?? "-")", "to": "\(model)"])
        if let r = routes[model] {
            route = r
        } else {
            route = nil
            if let defaultGroup { target(defaultGroup) }
            rewriteModel(to: model)
        }
        requestModel = model
    }

    /// The upstream began a 2xx answer whose usage cannot be read (cut short by either side, or in
    /// a content coding the sidecar does not read): the provider billed something, and nothing
    /// says how little, so the budget keeps the whole reservation (the most the request could
    /// cost) and spend records it, so a restart restores the same total. Before any 2xx head
    /// (an error, a refusal, a retry elsewhere) nothing was billed: the reservation is returned.
    func settleUnmetered(deployment: String? = nil) {
        guard let r = reservation else { return }
        guard (200..<300).contains(responseStatus) else { return settleBudget(actual: 0) }
        settleBudget(actual: r.amount)
        guard r.amount > 0 else { return }
        metrics.unmeteredAnswer()
        logger?.notice("answer without readable usage: charged its reservation", metadata: [
            "model": "\(requestModel?.prefix(200) ?? "-")", "usd": "\(r.amount)", "encoded": "\(encodedAnswer)"])
        var spend = ResponseCacheStore.Spend()
        spend.requests = 1
        spend.usd = r.amount
        let deployment = deployment ?? slot.map { $0.route.name($0.index) } ?? group?.configuration.name ?? "-"
        accounting?.recordSpend(.init(model: requestModel ?? "-", deployment: deployment, client: downstream.scope(of: clientHead.headers)), spend)
    }

    /// Replaces the reservation with what the request really cost, once.
    func settleBudget(actual: Double) {
        guard let r = reservation, let budget else { return }
        reservation = nil
        for period in budget.settle(r, actual: actual, limits: budgets.limits) {
            logger?.warning("budget alert threshold crossed", metadata: ["period": "\(period)", "alert_percent": "\(budgets.limits.alertPercent)"])
        }
    }

    /// Whether an answer's usage is read: for spend, budgets and `tpm`, and from every routed
    /// answer for its deployment's provider-cache hit ratio.
    var readsUsage: Bool { accounting != nil || budget != nil || charged != nil || route != nil || span != nil }

    /// The answer's usage and cost, for `llm-sidecar spend` (only answers from upstream: a cache
    /// hit or a coalesced follower costs nothing), and what the provider's prompt cache saved on
    /// it, per deployment.
    func recordSpend(deployment: String, billedModel: String?) {
        guard billed, readsUsage, (200..<300).contains(responseStatus) else { return }
        var tail: [UInt8] = []
        tail.reserveCapacity(usageTailBytes)
        for part in usageTail { tail += part.readableBytesView }
        usageTail = []
        let head = usageHead
        usageHead = []
        guard !encodedAnswer, let usage = ResponseInspector.usage(body: tail, head: head, isStream: isStream) else {
            return settleUnmetered(deployment: deployment)
        }
        answerUsage = usage
        if route != nil {
            metrics.providerCache(deployment: deployment, usage: usage, saved: prices.price(of: billedModel ?? "")?.promptCacheSavings(usage) ?? 0)
        }
        var spend = ResponseCacheStore.Spend()
        spend.requests = 1
        spend.promptTokens = usage.promptTokens
        spend.completionTokens = usage.completionTokens
        spend.cachedTokens = usage.cachedTokens
        spend.cacheWriteTokens = usage.cacheWriteTokens
        spend.usd = prices.cost(model: billedModel ?? "", usage: usage)
        traceUsage(usage, usd: spend.usd, tail: tail)
        settleBudget(actual: spend.usd)
        if let c = charged {
            charged = nil
            c.route.correctTokens(c.index, by: Double(usage.promptTokens + usage.completionTokens) - c.tokens)
        }
        accounting?.recordSpend(.init(model: requestModel ?? "-", deployment: deployment, client: downstream.scope(of: clientHead.headers)), spend)
    }

    func recordCompletion() {
        let now = NIODeadline.now()
        let total = (now - started).nanoseconds
        group?.metrics.duration.recordNanoseconds(total)
        if let sentAt {
            metrics.overhead.recordNanoseconds(max(0, total - (now - sentAt).nanoseconds))
            downstream.access.upstreamNanos = (now - sentAt).nanoseconds
        }
        if isStream, let headAt { group?.metrics.streamDuration.recordNanoseconds((now - headAt).nanoseconds) }
    }
}
