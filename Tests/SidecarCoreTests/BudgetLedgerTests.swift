import SidecarCore
import XCTest

/// Budgets with reservations, against a manual calendar.
final class BudgetLedgerTests: XCTestCase {
    let limits = BudgetLedger.Limits(dailyUSD: 1.0, monthlyUSD: 5.0, alertPercent: 80)

    func testAHundredConcurrentReservationsCannotOvershootABudgetThatFitsTen() {
        var ledger = BudgetLedger()
        var granted: [BudgetLedger.Reservation] = []
        for _ in 0..<100 {
            if case .success(let r) = ledger.reserve(0.1, client: "c", limits: limits, day: "2026-11-23", month: "2026-11") { granted.append(r) }
        }
        XCTAssertEqual(granted.count, 10, "reservations count against the budget before any request finished")
        // They cost less than reserved: the difference comes back.
        for r in granted.prefix(5) { ledger.settle(r, actual: 0.02, limits: limits) }
        XCTAssertEqual(ledger.totals.day, 0.1, accuracy: 1e-9)
        var more = 0
        for _ in 0..<100 where (try? ledger.reserve(0.1, client: "c", limits: limits, day: "2026-11-23", month: "2026-11").get()) != nil { more += 1 }
        XCTAssertEqual(more, 4, "0.1 spent + 0.5 still reserved + 4 × 0.1 = 1.0")
        XCTAssertEqual(ledger.openReservations, 9)
    }

    func testAlertsOnceRefusesByWhichBudgetAndRollsOverAtMidnight() {
        var ledger = BudgetLedger()
        ledger.load(day: "2026-11-23", month: "2026-11", spentDay: 0.76, spentMonth: 4.9, clients: [:])
        let r = try! ledger.reserve(0.05, client: "c", limits: limits, day: "2026-11-23", month: "2026-11").get()
        XCTAssertEqual(ledger.settle(r, actual: 0.05, limits: limits), ["day", "month"])
        let again = try! ledger.reserve(0.01, client: "c", limits: limits, day: "2026-11-23", month: "2026-11").get()
        XCTAssertEqual(ledger.settle(again, actual: 0.01, limits: limits), [], "an alert is raised once")
        XCTAssertEqual(ledger.settle(again, actual: 0.01, limits: limits), [], "settling twice changes nothing")
        guard case .failure(let e) = ledger.reserve(0.1, client: "c", limits: limits, day: "2026-11-23", month: "2026-11") else {
            return XCTFail("the month is full")
        }
        XCTAssertEqual(e.refusal, .monthly(limit: 5.0))
        // A new day (same month): the daily budget is fresh, the monthly one is not.
        XCTAssertNotNil(try? ledger.reserve(0.01, client: "c", limits: limits, day: "2026-11-24", month: "2026-11").get())
        // A new month: both are fresh.
        XCTAssertNotNil(try? ledger.reserve(0.5, client: "c", limits: limits, day: "2026-12-01", month: "2026-12").get())
    }

    func testPerClientDailyBudgets() {
        var ledger = BudgetLedger()
        let perClient = BudgetLedger.Limits(clientDailyUSD: 0.2)
        XCTAssertNotNil(try? ledger.reserve(0.2, client: "a", limits: perClient, day: "d", month: "m").get())
        guard case .failure(let e) = ledger.reserve(0.01, client: "a", limits: perClient, day: "d", month: "m") else { return XCTFail() }
        XCTAssertEqual(e.refusal, .clientDaily(limit: 0.2))
        XCTAssertNotNil(try? ledger.reserve(0.2, client: "b", limits: perClient, day: "d", month: "m").get(), "another client has its own")
    }

    func testBudgetsConfiguration() throws {
        let base = "[upstreams.a]\nurl = \"http://x\"\n[budgets]\n"
        let c = try SidecarConfiguration.load(toml: base + "daily_usd = 5\nmonthly_usd = 100.5\nalert_percent = 90\non_exhausted = \"downgrade:gpt-4.1-nano\"\n",
                                              file: "c.toml", environment: [:], fileExists: { _ in true })
        XCTAssertEqual(c.budgets.limits, BudgetLedger.Limits(dailyUSD: 5, monthlyUSD: 100.5, alertPercent: 90))
        XCTAssertEqual(c.budgets.onExhausted, .downgrade("gpt-4.1-nano"))
        XCTAssertThrowsError(try SidecarConfiguration.load(toml: base + "on_exhausted = \"shrug\"\n", file: "c.toml", environment: [:], fileExists: { _ in true })) {
            XCTAssertEqual("\($0)", #"c.toml:4: budgets.on_exhausted: must be "reject" or "downgrade:MODEL""#)
        }
    }

    func testEstimate() {
        let price = PriceTable.Price(inputPerMTok: 1, outputPerMTok: 2)
        XCTAssertEqual(BudgetLedger.estimate(bodyBytes: 4_000, maxTokens: 1_000, price: price), (1_000 * 1 + 1_000 * 2) / 1e6, accuracy: 1e-12)
        XCTAssertEqual(BudgetLedger.estimate(bodyBytes: 0, maxTokens: nil, price: price), 4_096 * 2 / 1e6, accuracy: 1e-12)
        XCTAssertEqual(BudgetLedger.estimate(bodyBytes: 100, maxTokens: 10, price: nil), 0, "an unpriced model reserves nothing")
    }
}
