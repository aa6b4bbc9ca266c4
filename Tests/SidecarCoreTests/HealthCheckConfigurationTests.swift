import NIOCore
import SidecarCore
import XCTest

final class HealthCheckConfigurationTests: XCTestCase, ConfigurationLoading {
    func testDefaultsAndValues() throws {
        let off = try load("[upstreams.a]\nurl = \"http://10.0.0.1:8000\"\n")
        XCTAssertNil(off.upstreams[0].healthCheck, "off unless asked for")
        let defaults = try load("[upstreams.a]\nurl = \"http://10.0.0.1:8000\"\nhealth_check = {}\n")
        XCTAssertEqual(defaults.upstreams[0].healthCheck, SidecarConfiguration.HealthCheck())
        XCTAssertEqual(defaults.upstreams[0].healthCheck?.path, "/health")
        XCTAssertEqual(defaults.upstreams[0].healthCheck?.interval, .seconds(10))
        XCTAssertEqual(defaults.upstreams[0].healthCheck?.timeout, .seconds(2))
        let set = try load("""
        [upstreams.a]
        url = "http://10.0.0.1:11434"
        health_check = { path = "/", interval = "5s", timeout = "500ms", healthy = 3, unhealthy = 1 }
        """)
        let c = try XCTUnwrap(set.upstreams[0].healthCheck)
        XCTAssertEqual([c.path, DurationText.format(c.interval), DurationText.format(c.timeout)], ["/", "5s", "500ms"])
        XCTAssertEqual([c.healthy, c.unhealthy], [3, 1])
    }

    func testBadValuesAreRefusedWithTheirLine() {
        let head = "[upstreams.a]\nurl = \"http://10.0.0.1:8000\"\n"
        assertRefused(head + "health_check = { path = \"health\" }",
                      "test.toml:3: upstreams.a.health_check.path: \"health\" must be an absolute path without spaces (e.g. \"/health\")")
        assertRefused(head + "health_check = { interval = \"often\" }",
                      "test.toml:3: upstreams.a.health_check.interval: \"often\" is not a duration (write e.g. \"250ms\", \"10s\")")
        assertRefused(head + "health_check = { interval = \"1ms\" }",
                      "test.toml:3: upstreams.a.health_check.interval: must be at least 10ms, got \"1ms\"")
        assertRefused(head + "health_check = { interval = \"1s\", timeout = \"2s\" }",
                      "test.toml:3: upstreams.a.health_check.timeout: must not be longer than interval (1s)")
        assertRefused(head + "health_check = { healthy = 0 }",
                      "test.toml:3: upstreams.a.health_check.healthy: must be between 1 and 100, got 0")
        assertRefused(head + "health_check = { unhealthy = 101 }",
                      "test.toml:3: upstreams.a.health_check.unhealthy: must be between 1 and 100, got 101")
        assertRefused(head + "health_check = { paht = \"/health\" }",
                      "test.toml:3: upstreams.a.health_check.paht: unknown key (see etc/llm-sidecar/config.toml for every option)")
    }
}
