import Foundation
import NIOCore
import SidecarCore
import XCTest

/// The simulated agent workload (AgentWorkload) against the shadow provider: provider-cache hits
/// with and without affinity, weights, ejection, the table's bound. `make bench-affinity` prints
/// the report (LLM_SIDECAR_AFFINITY_REPORT=1).
final class PromptAffinityTests: XCTestCase {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    /// gpt-4.1's list prices: cached input is a quarter of fresh.
    let price = PriceTable.defaults["gpt-4.1"]!

    func testAffinityGetsNearlyTheIdealHitRatioAndPlainRoutingDoesNot() {
        let workload = AgentWorkload()
        let ideal = workload.run(.single)
        let plain = workload.run(.plain)
        let affinity = workload.run(.affinity(.init()))
        var hashed = PrefixAffinity.Configuration()
        hashed.placement = .hash
        let hash = workload.run(.affinity(hashed))
        XCTAssertEqual(ideal.promptTokens, affinity.promptTokens, "the same workload")
        XCTAssertGreaterThanOrEqual(affinity.hitRatio, 0.95 * ideal.hitRatio)
        XCTAssertGreaterThanOrEqual(hash.hitRatio, 0.95 * ideal.hitRatio)
        XCTAssertLessThan(plain.hitRatio, affinity.hitRatio - 0.1, "least-connections spreads each conversation")
        XCTAssertLessThan(affinity.inputUSD(price), plain.inputUSD(price))
        report("4 equal deployments, \(workload.conversations) conversations, \(ideal.requests) requests, \(ideal.promptTokens) prompt tokens",
               ["ideal (one deployment)": ideal, "least-connections": plain, "affinity": affinity, "affinity, hash placement": hash])
    }

    func testWeightsHoldOverManyConversations() {
        var workload = AgentWorkload()
        workload.weights = [1, 2, 3, 4]
        workload.conversations = 1_200
        let plain = workload.run(.plain)
        let affinity = workload.run(.affinity(.init()))
        let total = Double(workload.weights.reduce(0, +))
        for (i, w) in workload.weights.enumerated() {
            let want = Double(w) / total
            XCTAssertEqual(affinity.share(i), want, accuracy: 0.1 * want, "deployment \(i) (weight \(w))")
        }
        report("weights 1, 2, 3, 4, \(workload.conversations) conversations", ["least-connections": plain, "affinity": affinity])
    }

    func testAnEjectedDeploymentsPrefixesMoveAndItComesBack() {
        var random = SplitMix64(seed: 3)
        var selector = DeploymentSelector(deployments: Array(repeating: .init(), count: 4))
        var affinity = PrefixAffinity()
        let prefixes = (0..<40).map { PromptPrefix(candidates: [UInt64($0) &* 0x9E37_79B9_7F4A_7C15]) }
        var home: [Int] = []
        for p in prefixes {
            let (i, verdict) = affinity.select(p, selector: &selector, now: t0, random: &random)!
            XCTAssertEqual(verdict, .new)
            home.append(i)
            selector.finished(i, .success(latency: .seconds(1)), now: t0)
        }
        XCTAssertEqual(Set(home), [0, 1, 2, 3])
        // Deployment 2 fails three times: ejected for 5 s.
        for _ in 0..<3 {
            _ = selector.select(now: t0, excluding: [0, 1, 3], random: &random)
            selector.finished(2, .failure, now: t0)
        }
        let during = t0 + .seconds(1)
        for (k, p) in prefixes.enumerated() {
            let (i, verdict) = affinity.select(p, selector: &selector, now: during, random: &random)!
            selector.finished(i, .success(latency: .seconds(1)), now: during)
            if home[k] == 2 {
                XCTAssertNotEqual(i, 2)
                XCTAssertEqual(verdict, .moved)
                home[k] = i
            } else {
                XCTAssertEqual(i, home[k], "the others stay")
                XCTAssertEqual(verdict, .kept)
            }
        }
        XCTAssertFalse(home.contains(2))
        // The ejection ends; the probe succeeds; new prefixes go to deployment 2 again, and the
        // moved ones stay where the provider cached them last.
        let after = t0 + .seconds(10)
        let probe = selector.select(now: after, excluding: [0, 1, 3], random: &random)
        XCTAssertEqual(probe, 2)
        selector.finished(2, .success(latency: .seconds(1)), now: after)
        var fresh: [Int] = []
        for n in 0..<40 {
            let (i, _) = affinity.select(PromptPrefix(candidates: [UInt64(1_000 + n)]), selector: &selector, now: after, random: &random)!
            fresh.append(i)
        }
        XCTAssertGreaterThanOrEqual(fresh.filter { $0 == 2 }.count, 10, "least-connections fills the returned deployment first")
        for (k, p) in prefixes.enumerated() {
            XCTAssertEqual(affinity.home(of: p, now: after), home[k])
        }
    }

    func testAHomeMoreLoadedThanTheLoadFactorAllowsLosesThePrefix() {
        var random = SplitMix64(seed: 4)
        var selector = DeploymentSelector(deployments: Array(repeating: .init(), count: 4))
        var affinity = PrefixAffinity()
        let p = PromptPrefix(candidates: [42])
        let (home, _) = affinity.select(p, selector: &selector, now: t0, random: &random)!
        // 1 in flight in the group: ceil(1.5 × 2 / 4) = 1, so a second request of the prefix moves.
        let (second, verdict) = affinity.select(p, selector: &selector, now: t0, random: &random)!
        XCTAssertNotEqual(second, home)
        XCTAssertEqual(verdict, .moved)
        XCTAssertEqual(affinity.home(of: p, now: t0), second, "the table learns the new home")
        // It expires with the provider's cache: 5 minutes after its last use.
        XCTAssertNil(affinity.home(of: p, now: t0 + .minutes(5)))
    }

    func testTheBoundedLoadRule() {
        var selector = DeploymentSelector(deployments: Array(repeating: .init(), count: 4))
        var random = SplitMix64(seed: 5)
        XCTAssertTrue(selector.admits(0, loadFactor: 1.5, now: t0))
        // 8 in flight, 3 of them on deployment 0: ceil(1.5 × 9 / 4) = 4 admits a fourth, not a fifth.
        for _ in 0..<3 { _ = selector.select(now: t0, excluding: [1, 2, 3], random: &random) }
        for _ in 0..<5 { _ = selector.select(now: t0, excluding: [0], random: &random) }
        XCTAssertTrue(selector.admits(0, loadFactor: 1.5, now: t0))
        _ = selector.select(now: t0, excluding: [1, 2, 3], random: &random)
        _ = selector.select(now: t0, excluding: [0], random: &random)
        // 10 in flight, 4 on deployment 0: ceil(1.5 × 11 / 4) = 5.
        XCTAssertTrue(selector.admits(0, loadFactor: 1.5, now: t0))
        _ = selector.select(now: t0, excluding: [1, 2, 3], random: &random)
        XCTAssertFalse(selector.admits(0, loadFactor: 1.5, now: t0), "11 in flight, 5 here: ceil(1.5 × 12 / 4) = 5")
    }

    func testRendezvousFollowsTheWeightsAndMovesOnlyWhatItMust() {
        var counts = [0, 0, 0, 0]
        var moved = 0
        for k in 0..<20_000 {
            let key = PrefixAffinity.splitMixForTests(UInt64(k))
            let order = PrefixAffinity.rendezvousOrder(key, weights: [1, 2, 3, 4])
            counts[order[0]] += 1
            // Without deployment 3, only its keys move.
            let without = PrefixAffinity.rendezvousOrder(key, weights: [1, 2, 3])
            if order[0] != 3, without[0] != order[0] { moved += 1 }
        }
        for (i, w) in [1, 2, 3, 4].enumerated() {
            XCTAssertEqual(Double(counts[i]) / 20_000, Double(w) / 10, accuracy: 0.01)
        }
        XCTAssertEqual(moved, 0)
    }

    func testTheTableIsBounded() {
        var configuration = PrefixAffinity.Configuration()
        configuration.capacity = 100
        var affinity = PrefixAffinity(configuration: configuration)
        for k in 0..<10_000 { affinity.learn(PromptPrefix(candidates: [UInt64(k)]), deployment: k % 4, now: t0) }
        XCTAssertEqual(affinity.count, 100)
        XCTAssertEqual(affinity.home(of: PromptPrefix(candidates: [9_999]), now: t0), 3)
        XCTAssertNil(affinity.home(of: PromptPrefix(candidates: [0]), now: t0), "the least recently used went first")
        var workload = AgentWorkload()
        workload.conversations = 100
        XCTAssertLessThanOrEqual(workload.run(.affinity(configuration)).tableSize, 100)
    }

    /// Prints a comparison when LLM_SIDECAR_AFFINITY_REPORT is set (`make bench-affinity`).
    func report(_ title: String, _ runs: KeyValuePairs<String, AgentWorkload.Result>) {
        guard ProcessInfo.processInfo.environment["LLM_SIDECAR_AFFINITY_REPORT"] != nil else { return }
        let baseline = runs.first { $0.key == "least-connections" }?.value
        var out = "\n\(title); input priced as gpt-4.1 ($\(price.inputPerMTok) fresh, $\(price.cachedInputPerMTok!) cached per MTok)\n"
        out += "  routing".padding(toLength: 30, withPad: " ", startingAt: 0) + "hit ratio".padding(toLength: 11, withPad: " ", startingAt: 0)
            + "input $".padding(toLength: 11, withPad: " ", startingAt: 0) + "vs least-conn".padding(toLength: 15, withPad: " ", startingAt: 0) + "requests per deployment\n"
        for (name, r) in runs {
            let saved = baseline.map { String(format: "%+.2f", r.inputUSD(price) - $0.inputUSD(price)) } ?? "-"
            out += ("  " + name).padding(toLength: 30, withPad: " ", startingAt: 0)
                + String(format: "%.1f%%", r.hitRatio * 100).padding(toLength: 11, withPad: " ", startingAt: 0)
                + String(format: "%.2f", r.inputUSD(price)).padding(toLength: 11, withPad: " ", startingAt: 0)
                + saved.padding(toLength: 15, withPad: " ", startingAt: 0)
                + r.perDeployment.map { String(format: "%.1f%%", Double($0) / Double(r.requests) * 100) }.joined(separator: " ")
            if !r.verdicts.isEmpty {
                out += "  (" + PrefixAffinity.Verdict.allCases.map { "\($0.rawValue) \(r.verdicts[$0] ?? 0)" }.joined(separator: ", ") + ")"
            }
            out += "\n"
        }
        print(out)
    }
}

extension PrefixAffinity {
    static func splitMixForTests(_ x: UInt64) -> UInt64 {
        var g = SplitMix64(seed: x)
        return g.next()
    }
}
