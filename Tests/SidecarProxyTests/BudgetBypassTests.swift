import Foundation
import SidecarCore
import SidecarTestSupport
import XCTest

/// A budget holds however the request is shaped: the model late in a long body, an escaped key,
/// a repeated key, a model without a price (issue 11, items 1 and 2).
final class BudgetBypassTests: XCTestCase {
    /// Priced so that a request's reservation equals its real cost exactly (no input price, and
    /// `max_tokens` equal to the fake's 28 completion tokens): the budget then admits exactly
    /// `fits` requests, concurrent or not, with no timing involved.
    static let model = "priced-model"
    static let outputPerMTok = 1_000.0
    static let perRequest = 28 * outputPerMTok / 1_000_000
    static let fits = 10

    private func harness(_ upstream: FakeUpstream, unpriced: SidecarConfiguration.Budgets.Unpriced = .reject) async throws -> ProxyHarness {
        try await ProxyHarness(upstreamURL: upstream.url, configure: { c in
            c.cache.mode = .off
            c.prices[Self.model] = .init(inputPerMTok: 0, outputPerMTok: Self.outputPerMTok)
            c.budgets.limits.dailyUSD = Double(Self.fits) * Self.perRequest + Self.perRequest / 2
            c.budgets.unpriced = unpriced
        })
    }

    /// What the official Python SDK sends for a long conversation: `messages` first, `model`
    /// ~300 KB in, far past the first read (NIO reads at most 64 KiB at a time).
    static func lateModelBody(_ extra: String = "") -> String {
        let long = String(repeating: "a long conversation ", count: 15_000)
        return #"{"messages":[{"role":"user","content":""# + long + #""}],\#(extra)"model":"\#(model)","max_tokens":28}"#
    }

    func testTheModelLateInALongBodyPricesTheReservation() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let harness = try await harness(upstream)
        defer { Task { await harness.stop() } }
        let body = Self.lateModelBody()
        XCTAssertGreaterThan(body.utf8.count, 256 * 1024)
        // 30 at once, each held 300 ms upstream so that they overlap.
        let statuses = try await withThrowingTaskGroup(of: (Int, String?).self) { group in
            for _ in 0..<30 {
                group.addTask {
                    let r = try await harness.request(headers: [("x-fake-delay-ms", "300")], body: body)
                    return (r.status, r.status == 200 ? nil : openAIError(r.body)?.code)
                }
            }
            return try await group.reduce(into: [(Int, String?)]()) { $0.append($1) }
        }
        XCTAssertEqual(statuses.filter { $0.0 == 200 }.count, Self.fits, "\(statuses)")
        XCTAssertEqual(statuses.filter { $0.0 == 429 && $0.1 == "budget_exceeded" }.count, 30 - Self.fits, "\(statuses)")
        XCTAssertEqual(upstream.requests.count, Self.fits, "the refused requests never reached the upstream")
    }

    /// A body too large to key for the cache (over 8 MiB) used to be forwarded as it streamed,
    /// reserved before its model had arrived; under a budget it is now read to the end first.
    func testABodyTooLargeToCacheIsStillPricedByItsModel() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let harness = try await ProxyHarness(upstreamURL: upstream.url, configure: { c in
            c.prices[Self.model] = .init(inputPerMTok: 0, outputPerMTok: Self.outputPerMTok)
            c.budgets.limits.dailyUSD = Self.perRequest * 1.5
        })
        defer { Task { await harness.stop() } }
        let long = String(repeating: "x", count: 9 << 20)
        let body = #"{"messages":[{"role":"user","content":"\#(long)"}],"temperature":0,"model":"\#(Self.model)","max_tokens":28}"#
        try await expectEqual(try await harness.request(body: body).status, 200)
        let second = try await harness.request(body: body.replacingOccurrences(of: "\"temperature\":0", with: "\"temperature\":1"))
        XCTAssertEqual(second.status, 429, String(second.body.prefix(300)))
        XCTAssertEqual(upstream.requests.count, 1)
    }

    /// Escapes in the key are decoded as the upstream decodes them; a repeated key (which `model`
    /// wins depends on the reader) is refused under a budget rather than priced at the cheaper one.
    func testEscapedAndRepeatedModelKeysCannotDodgeTheBudget() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let harness = try await harness(upstream)
        defer { Task { await harness.stop() } }
        let escaped = #"{"messages":[],"mod\u0065l":"\#(Self.model)","max_tokens":28}"#
        for _ in 0..<Self.fits { try await expectEqual(try await harness.request(body: escaped).status, 200) }
        let over = try await harness.request(body: escaped)
        XCTAssertEqual(over.status, 429, over.body)
        let repeated = #"{"model":"gpt-4o-mini","messages":[],"model":"\#(Self.model)","max_tokens":28}"#
        let r = try await harness.request(body: repeated)
        XCTAssertEqual(r.status, 400, r.body)
        XCTAssertEqual(openAIError(r.body)?.code, "bad_request")
        XCTAssertTrue(openAIError(r.body)?.message.contains("[budgets]") == true, r.body)
        XCTAssertEqual(upstream.requests.count, Self.fits)
    }

    /// A model without a price is refused by default (naming the model and the key to add), or,
    /// with `unpriced = "allow"`, sent; counted either way.
    func testAnUnpricedModelIsRefusedOrAllowedAndCounted() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let body = Self.lateModelBody().replacingOccurrences(of: Self.model, with: "no-such-price-model")
        for policy in [SidecarConfiguration.Budgets.Unpriced.reject, .allow] {
            let harness = try await harness(upstream, unpriced: policy)
            let before = upstream.requests.count
            let r = try await harness.request(body: body)
            let metrics = try await harness.request("GET", "/metrics").body
            await harness.stop()
            if policy == .reject {
                XCTAssertEqual(r.status, 400, r.body)
                let error = try XCTUnwrap(openAIError(r.body))
                XCTAssertEqual(error.code, "model_not_priced")
                XCTAssertTrue(error.message.contains("no-such-price-model") && error.message.contains(#"[prices."no-such-price-model"]"#), error.message)
                XCTAssertEqual(upstream.requests.count, before, "never sent")
                XCTAssertTrue(metrics.contains(#"llm_sidecar_unpriced_requests_total{outcome="rejected"} 1"#), metrics)
            } else {
                XCTAssertEqual(r.status, 200, r.body)
                XCTAssertEqual(upstream.requests.count, before + 1)
                XCTAssertTrue(metrics.contains(#"llm_sidecar_unpriced_requests_total{outcome="allowed"} 1"#), metrics)
            }
        }
    }

    /// `check-config` warns for every deployment model without a price while a budget is set.
    func testCheckConfigWarnsAboutUnpricedDeploymentModels() throws {
        let dir = ProxyHarness.temporaryDirectory()
        let path = dir + "/config.toml"
        try """
        [server]
        default_upstream = "openai"
        [upstreams.openai]
        url = "https://api.openai.com"
        [budgets]
        daily_usd = 5.0
        [[models]]
        name = "chat"
        deployments = [{ upstream = "openai", model = "gpt-4o-mini" }, { upstream = "openai", model = "my-finetune-x" }]
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let r = try BinaryTests.run(["check-config", "--config", path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains(#"model "my-finetune-x" has no price"#), r.stderr)
        XCTAssertFalse(r.stderr.contains(#""gpt-4o-mini""#), "priced by the built-in table: \(r.stderr)")
    }
}

extension BudgetBypassTests {
    /// Spend that cannot be read back at start closes the budgets (503, and /readyz says why)
    /// instead of restarting them from $0; they open by themselves once the database is readable.
    func testSpendThatCannotBeRestoredClosesTheBudgetsUntilItCan() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let dir = ProxyHarness.temporaryDirectory()
        let path = dir + "/cache.sqlite3"
        try Data(repeating: 0x42, count: 64 * 1024).write(to: URL(fileURLWithPath: path))  // not a database
        let harness = try await ProxyHarness(upstreamURL: upstream.url, cachePath: path, configure: { c in
            c.prices[Self.model] = .init(inputPerMTok: 0, outputPerMTok: Self.outputPerMTok)
            c.budgets.limits.dailyUSD = 1
        })
        defer { Task { await harness.stop() } }
        let body = #"{"model":"\#(Self.model)","max_tokens":28,"messages":[]}"#
        let refused = try await harness.request(body: body)
        XCTAssertEqual(refused.status, 503, refused.body)
        XCTAssertEqual(openAIError(refused.body)?.code, "budget_unavailable")
        XCTAssertTrue(openAIError(refused.body)?.message.contains("spend could not be restored") == true, refused.body)
        XCTAssertEqual(upstream.requests.count, 0)
        let ready = try await harness.request("GET", "/readyz")
        XCTAssertEqual(ready.status, 503)
        XCTAssertTrue(ready.body.contains("spend could not be restored"), ready.body)

        // The file becomes usable: the database reopens (every 5 s) and the budgets open.
        try FileManager.default.removeItem(atPath: path)
        let deadline = Date() + 30
        var status = 0
        while Date() < deadline {
            status = try await harness.request("GET", "/readyz").status
            if status == 200 { break }
            try await Task.sleep(for: .milliseconds(200))  // polling a condition, not waiting for time
        }
        XCTAssertEqual(status, 200, "budgets reopened once spend could be read")
        try await expectEqual(try await harness.request(body: body).status, 200)
    }
}

extension BudgetBypassTests {
    /// `max_tokens` twice what the fake answers: each reservation is 2 requests' worth, so a
    /// budget of 10.5 admits 9 requests if their usage is read (settled at 1 each), 5 if each is
    /// charged its whole reservation.
    static let doubleReservation = #"{"model":"\#(model)","messages":[],"max_tokens":56,"temperature":0}"#

    /// The SDKs (httpx) send `Accept-Encoding: gzip`, and providers behind a CDN compress when
    /// asked: the answer was unreadable, its usage unknown, and it cost $0 against the budget (and
    /// a cached copy would replay gzip bytes without their `Content-Encoding`). The sidecar asks
    /// upstream for identity, so usage is read and the client gets plain JSON.
    func testAnSDKsAcceptEncodingCannotMakeAnswersUnmetered() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let harness = try await harness(upstream)
        defer { Task { await harness.stop() } }
        var statuses: [Int] = []
        for _ in 0..<12 {
            let r = try await harness.request(headers: [("accept-encoding", "gzip, deflate"), ("x-fake-gzip", "when-asked")], body: Self.doubleReservation)
            statuses.append(r.status)
            if r.status == 200 {
                XCTAssertNil(r.header("content-encoding"))
                XCTAssertTrue(r.body.contains(#""completion_tokens":28"#), r.body)
            }
        }
        XCTAssertEqual(statuses.filter { $0 == 200 }.count, 9, "usage read: each settled at its real cost, \(statuses)")
        XCTAssertTrue(upstream.requests.allSatisfy { $0.header("accept-encoding") == "identity" }, "\(upstream.requests.map { $0.header("accept-encoding") })")
    }

    /// An upstream that compresses although asked not to: the answer is forwarded as it came
    /// (with its `Content-Encoding`), never cached, and charged its whole reservation, never $0.
    func testACompressedAnswerIsChargedItsReservationAndNotCached() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let harness = try await ProxyHarness(upstreamURL: upstream.url, configure: { c in
            c.prices[Self.model] = .init(inputPerMTok: 0, outputPerMTok: Self.outputPerMTok)
            c.budgets.limits.dailyUSD = Double(Self.fits) * Self.perRequest + Self.perRequest / 2
        })
        defer { Task { await harness.stop() } }
        var answers: [TestResponse] = []
        for _ in 0..<8 { answers.append(try await harness.request(headers: [("x-fake-gzip", "always")], body: Self.doubleReservation)) }
        // Each upstream call is charged 2 of 10.5: five fit. A request may also arrive while the one
        // before it is still finishing on the sidecar (its client already has every byte) and
        // share its answer ("coalesced": no upstream call, nothing charged); none is a cache hit.
        let called = answers.filter { $0.status == 200 && $0.header("x-sidecar-cache") == "miss" }
        XCTAssertEqual(called.count, 5, "each charged 2 of 10.5: \(answers.map { "\($0.status) \($0.header("x-sidecar-cache") ?? "-")" })")
        XCTAssertEqual(answers.prefix(5).map(\.status), [200, 200, 200, 200, 200])
        XCTAssertEqual(answers.last?.status, 429)
        for r in answers where r.status == 200 {
            XCTAssertEqual(r.header("content-encoding"), "gzip")
            XCTAssertNotEqual(r.header("x-sidecar-cache"), "hit", "identical and deterministic, but never stored compressed")
        }
        XCTAssertEqual(upstream.requests.count, 5)
        let metrics = try await harness.request("GET", "/metrics").body
        XCTAssertTrue(metrics.contains("llm_sidecar_unmetered_answers_total 5"), metrics)
    }

    /// A cacheable request refused by its budget leads a flight it never completes: it left the
    /// flight registered, and every identical request after it joined and waited forever.
    func testABudgetRefusalLeavesNoFlightBehind() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        let harness = try await ProxyHarness(upstreamURL: upstream.url, configure: { c in
            c.prices[Self.model] = .init(inputPerMTok: 0, outputPerMTok: Self.outputPerMTok)
            c.budgets.limits.dailyUSD = Self.perRequest / 2  // not one request fits
        })
        defer { Task { await harness.stop() } }
        for _ in 0..<3 {
            let r = try await harness.request(body: Self.doubleReservation)
            XCTAssertEqual(r.status, 429, r.body)
            XCTAssertEqual(openAIError(r.body)?.code, "budget_exceeded")
        }
        XCTAssertEqual(upstream.requests.count, 0)
    }
}
