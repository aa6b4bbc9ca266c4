import NIOCore
import SidecarCore
import XCTest

final class DiscoveryConfigurationTests: XCTestCase, ConfigurationLoading {
    func testDefaultsAndValues() throws {
        let off = try load("[upstreams.a]\nurl = \"http://vllm.service.consul:8000\"\n")
        XCTAssertNil(off.upstreams[0].discovery)
        XCTAssertNil(off.server.dnsResolver)
        let on = try load("[server]\ndns_resolver = \"127.0.0.1:8600\"\n[upstreams.a]\nurl = \"http://vllm.service.consul:8000\"\ndiscover = \"dns\"\n")
        XCTAssertEqual(on.upstreams[0].discovery, SidecarConfiguration.Discovery())
        XCTAssertEqual(on.upstreams[0].discovery?.minTTL, .seconds(5))
        XCTAssertEqual(on.upstreams[0].discovery?.maxTTL, .seconds(300))
        XCTAssertEqual(on.upstreams[0].discovery?.slowStart, .seconds(30))
        XCTAssertEqual(on.server.dnsResolver, .init(host: "127.0.0.1", port: 8600))
        let set = try load("[upstreams.a]\nurl = \"http://pool:8000\"\ndiscover = \"dns\"\ndns_min_ttl = \"1s\"\ndns_max_ttl = \"1m\"\nslow_start = \"0s\"\n")
        XCTAssertEqual(set.upstreams[0].discovery?.minTTL, .seconds(1))
        XCTAssertEqual(set.upstreams[0].discovery?.maxTTL, .seconds(60))
        XCTAssertEqual(set.upstreams[0].discovery?.slowStart, .zero)
    }

    func testBadValuesAreRefusedWithTheirLine() {
        let head = "[upstreams.a]\nurl = \"http://pool:8000\"\n"
        assertRefused(head + "discover = \"consul\"", "test.toml:3: upstreams.a.discover: must be \"dns\", got \"consul\"")
        assertRefused(head + "dns_min_ttl = \"5s\"", "test.toml:3: upstreams.a.dns_min_ttl: only applies with discover = \"dns\"")
        assertRefused(head + "discover = \"dns\"\ndns_min_ttl = \"10ms\"", "test.toml:4: upstreams.a.dns_min_ttl: must be at least 100ms, got \"10ms\"")
        assertRefused(head + "discover = \"dns\"\ndns_min_ttl = \"10m\"\ndns_max_ttl = \"1m\"",
                      "test.toml:5: upstreams.a.dns_max_ttl: dns_min_ttl (600s) is longer than dns_max_ttl (60s)")
        assertRefused("[upstreams.a]\nurl = \"http://10.0.0.1:8000\"\ndiscover = \"dns\"",
                      "test.toml:3: upstreams.a.discover: the URL's host 10.0.0.1 is an address; discovery needs a name to resolve")
        assertRefused("[server]\ndns_resolver = \"consul:8600\"\n" + head,
                      "test.toml:2: server.dns_resolver: \"consul:8600\" is not IP:PORT (e.g. \"127.0.0.1:8600\" for Consul)")
    }
}
