import SidecarCore
import XCTest

/// `[[models]]` as the routing issue writes it, and what is refused.
final class ModelGroupConfigurationTests: XCTestCase {
    let upstreams = """
    [upstreams.openai]
    url = "https://api.openai.com"
    [upstreams.azure-eu]
    url = "https://eu.example.com/openai"

    """

    func load(_ models: String) throws -> SidecarConfiguration {
        try SidecarConfiguration.load(toml: upstreams + models, file: "c.toml", environment: [:], fileExists: { _ in true })
    }

    func problem(_ models: String) -> String {
        do { _ = try load(models); return "accepted" } catch { return "\(error)" }
    }

    func testTheIssuesExampleParses() throws {
        let c = try load("""
        [[models]]
        name = "gpt-4o-mini"
        fallbacks = ["gpt-4.1-nano"]
          [[models.deployments]]
          upstream = "openai"
          model = "gpt-4o-mini"
          weight = 3
          max_concurrency = 100
          [[models.deployments]]
          upstream = "azure-eu"
          model = "gpt-4o-mini-eu"
          weight = 1

        [[models]]
        name = "gpt-4.1-nano"
          [[models.deployments]]
          upstream = "openai"
        """)
        XCTAssertEqual(c.models.map(\.name), ["gpt-4o-mini", "gpt-4.1-nano"])
        let g = try XCTUnwrap(c.modelGroup(named: "gpt-4o-mini"))
        XCTAssertEqual(g.fallbacks, ["gpt-4.1-nano"])
        XCTAssertEqual(g.deployments, [
            .init(upstream: "openai", model: "gpt-4o-mini", weight: 3, maxConcurrency: 100),
            .init(upstream: "azure-eu", model: "gpt-4o-mini-eu", weight: 1),
        ])
        XCTAssertEqual(c.modelGroup(named: "gpt-4.1-nano")?.deployments.first?.model, "gpt-4.1-nano", "model defaults to the group's name")
    }

    func testMistakesAreRefusedWithTheKey() {
        XCTAssertTrue(problem("[[models]]\nname = \"m\"\n[[models.deployments]]\nupstream = \"nope\"\n")
            .contains(#"models.deployments.upstream: "nope" (in model group "m") is not an [upstreams.NAME]; they are: azure-eu, openai"#))
        XCTAssertTrue(problem("[[models]]\nname = \"m\"\n").contains("needs at least one [[models.deployments]]"))
        XCTAssertTrue(problem("[[models]]\nname = \"m\"\nfallbacks = [\"x\"]\n[[models.deployments]]\nupstream = \"openai\"\n")
            .contains(#""x" (a fallback of "m") is not a model group"#))
        XCTAssertTrue(problem("[[models]]\nname = \"m\"\nfallbacks = [\"m\"]\n[[models.deployments]]\nupstream = \"openai\"\n")
            .contains("cannot fall back to itself"))
        XCTAssertTrue(problem("[[models]]\nname = \"m\"\n[[models.deployments]]\nupstream = \"openai\"\nweight = 0\n")
            .contains("models.deployments.weight: must be between 1 and 1000000, got 0"))
        XCTAssertTrue(problem("[[models]]\nname = \"m\"\n[[models.deployments]]\nupstream = \"openai\"\n[[models]]\nname = \"m\"\n[[models.deployments]]\nupstream = \"openai\"\n")
            .contains("is defined twice"))
        XCTAssertTrue(problem("[[models]]\nname = \"m\"\n[[models.deployments]]\nupstream = \"openai\"\nretry = 1\n").contains("unknown key"))
    }

    func testPromptCacheOptions() throws {
        let group = """
        [[models]]
        name = "g"
        %@
          [[models.deployments]]
          upstream = "openai"

        """
        let defaults = try XCTUnwrap(load(group.replacingOccurrences(of: "%@", with: "")).modelGroup(named: "g"))
        XCTAssertEqual(defaults.promptCache, PrefixAffinity.Configuration(), "on by default")
        XCTAssertEqual(defaults.promptCache?.ttl, .minutes(5))
        XCTAssertEqual(defaults.promptCacheMinimumTokens, 1024)
        let set = try XCTUnwrap(load(group.replacingOccurrences(of: "%@", with: """
        prompt_cache_ttl = "1h"
        prompt_cache_min_tokens = 2048
        prompt_cache_load_factor = 2
        prompt_cache_placement = "hash"
        """)).modelGroup(named: "g"))
        XCTAssertEqual(set.promptCache?.ttl, .hours(1))
        XCTAssertEqual(set.promptCache?.loadFactor, 2)
        XCTAssertEqual(set.promptCache?.placement, .hash)
        XCTAssertEqual(set.promptCacheMinimumTokens, 2048)
        XCTAssertNil(try load(group.replacingOccurrences(of: "%@", with: "prompt_cache_affinity = false")).modelGroup(named: "g")?.promptCache)
        XCTAssertTrue(problem(group.replacingOccurrences(of: "%@", with: "prompt_cache_load_factor = 0.5"))
            .hasSuffix("models.prompt_cache_load_factor: must be between 1 and 100, got 0.5"))
        XCTAssertTrue(problem(group.replacingOccurrences(of: "%@", with: #"prompt_cache_placement = "random""#)).contains("not a placement"))
    }
}
