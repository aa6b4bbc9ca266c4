import NIOCore
import SidecarCore
import XCTest

final class FleetConfigurationTests: XCTestCase, ConfigurationLoading {
    static let upstream = "\n[upstreams.a]\nurl = \"http://127.0.0.1:9\"\n"

    func loadWithURL(_ toml: String) throws(ConfigurationError) -> SidecarConfiguration {
        try SidecarConfiguration.load(toml: toml + Self.upstream, file: "test.toml", environment: ["PG_URL": "postgres://u:secret@db/x"],
                                      fileExists: { $0 == "/run/pg-url" })
    }

    func testDefaultsAndValues() throws {
        XCTAssertNil(try load(Self.upstream).fleet)
        let f = try XCTUnwrap(try loadWithURL("[fleet]\npostgres_url_env = \"PG_URL\"\n").fleet)
        XCTAssertEqual(f.postgresURL, .environment("PG_URL"))
        XCTAssertNil(f.node)
        XCTAssertEqual(f.onUnavailable, .local)
        XCTAssertEqual(f.poolSize, 4)
        XCTAssertEqual(f.leasePeriod, .seconds(30))
        XCTAssertEqual(f.syncInterval, .seconds(2))
        XCTAssertEqual(f.budgetSlice, 0.02)
        XCTAssertTrue(f.sharedCache)
        XCTAssertEqual(f.sharedCacheTimeout, .milliseconds(25))
        XCTAssertEqual(f.sharedCacheMaxBytes, 1 << 30, "cache.max_bytes")
        XCTAssertEqual(f.coalesceWait, .seconds(30))
        let set = try XCTUnwrap(try loadWithURL("""
            [fleet]
            postgres_url_file = "/run/pg-url"
            node = "web-1"
            on_unavailable = "reject"
            pool_size = 2
            lease_period = "9s"
            sync_interval = "3s"
            budget_slice = 0.1
            shared_cache = false
            coalesce_wait = "0s"
            """).fleet)
        XCTAssertEqual(set.postgresURL, .file("/run/pg-url"))
        XCTAssertEqual(set.node, "web-1")
        XCTAssertEqual(set.onUnavailable, .reject)
        XCTAssertEqual(set.poolSize, 2)
        XCTAssertEqual(set.leasePeriod, .seconds(9))
        XCTAssertEqual(set.budgetSlice, 0.1)
        XCTAssertFalse(set.sharedCache)
        XCTAssertEqual(set.coalesceWait, .zero)
    }

    func testBadValuesAreRefusedWithTheirLine() {
        assertRefused("[fleet]\nnode = \"a\"" + Self.upstream, "test.toml:1: fleet: postgres_url_env (or postgres_url_file) is required: the URL holds a password, so it is never written in this file")
        assertRefused("[fleet]\npostgres_url_env = \"NOPE\"" + Self.upstream, "test.toml:2: fleet.postgres_url_env: environment variable NOPE is not set")
        assertRefused("[fleet]\npostgres_url = \"postgres://u:p@h/d\"" + Self.upstream, "test.toml:2: fleet.postgres_url: unknown key (see etc/llm-sidecar/config.toml for every option)")
        let head = "[fleet]\npostgres_url_env = \"PG_URL\"\n"
        func refused(_ toml: String, _ expected: String, line: UInt = #line) {
            do {
                _ = try loadWithURL(toml)
                XCTFail("accepted", line: line)
            } catch {
                XCTAssertEqual(error.description, expected, line: line)
            }
        }
        refused(head + "on_unavailable = \"fail\"", "test.toml:3: fleet.on_unavailable: must be \"local\" or \"reject\"")
        refused(head + "node = \"web 1\"", "test.toml:3: fleet.node: must be 1-200 printable ASCII characters without spaces")
        refused(head + "sync_interval = \"20s\"", "test.toml:3: fleet.sync_interval: must be at most a third of lease_period (leases are renewed at every sync, and must not lapse between two)")
        refused(head + "budget_slice = 1.5", "test.toml:3: fleet.budget_slice: must be more than 0 and at most 1 (a share of each budget), got 1.5")
        refused(head + "postgres_url_file = \"/run/pg-url\"", "test.toml:3: fleet.postgres_url_file: set postgres_url_env or postgres_url_file, not both")
        refused("[cache]\nmode = \"off\"\n" + head, "test.toml:3: fleet: needs the local cache database, and cache.mode is \"off\": the spend outbox and the shared tier live there (set cache.mode = \"deterministic\")")
    }
}
