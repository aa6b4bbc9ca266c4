import NIOCore
import SidecarCore
import XCTest

final class ConfigurationTests: XCTestCase {
    let env = ["OPENAI_API_KEY": "sk-x", "AZURE_KEY": "az"]

    func load(_ toml: String, env: [String: String]? = nil, files: Set<String> = []) throws(ConfigurationError) -> SidecarConfiguration {
        try SidecarConfiguration.load(toml: toml, file: "test.toml", environment: env ?? self.env, fileExists: { files.contains($0) })
    }

    func assertRefused(_ toml: String, _ expected: String, env: [String: String]? = nil, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try load(toml, env: env)
            XCTFail("accepted", file: file, line: line)
        } catch {
            XCTAssertEqual(error.description, expected, file: file, line: line)
        }
    }

    func testMinimalConfigurationGetsEveryDefault() throws {
        let c = try load("""
        [upstreams.openai]
        url = "https://api.openai.com"
        """)
        XCTAssertEqual(c.server.listen, .tcp(host: "127.0.0.1", port: 8080))
        XCTAssertTrue(c.server.listen.isLoopback)
        XCTAssertEqual(c.server.defaultUpstream, "openai", "a single upstream is the default")
        XCTAssertEqual(c.server.maxBodyBytes, 32 << 20)
        XCTAssertEqual(c.server.maxHeaderFields, 128)
        let u = try XCTUnwrap(c.upstream(named: "openai"))
        XCTAssertEqual(u.url, UpstreamURL(tls: true, host: "api.openai.com", port: 443))
        XCTAssertEqual(u.apiKey, .none)
        XCTAssertEqual(u.maxConnections, 64)
        XCTAssertEqual(u.idleTimeout, .seconds(90))
        XCTAssertEqual(u.tlsMinimumVersion, .v1_2)
    }

    func testFullConfiguration() throws {
        let c = try load("""
        [server]
        listen = "unix:/run/llm-sidecar/sidecar.sock"
        default_upstream = "openai"
        max_body_bytes = 1048576
        max_header_fields = 64
        threads = 4
        client_idle_timeout = "10s"
        drain_timeout = "0s"

        [upstreams.openai]
        url = "https://api.openai.com"
        api_key_env = "OPENAI_API_KEY"
        ca_file = "/etc/ca.pem"
        max_connections = 8
        queue_size = 0
        queue_timeout = "250ms"
        idle_timeout = "2m"
        connect_timeout = "1.5s"
        tls_min_version = "1.3"

        [upstreams.local]
        url = "http://127.0.0.1:11434/ollama/"
        api_key_file = "/run/credentials/key"

        [log]
        level = "debug"
        format = "json"
        """, files: ["/etc/ca.pem", "/run/credentials/key"])
        XCTAssertEqual(c.server.listen, .unix(path: "/run/llm-sidecar/sidecar.sock"))
        XCTAssertEqual(c.server.threads, 4)
        XCTAssertEqual(c.server.maxHeaderFields, 64)
        XCTAssertEqual(c.server.drainTimeout, .seconds(0))
        XCTAssertEqual(c.upstreams.map(\.name), ["local", "openai"])
        let o = try XCTUnwrap(c.upstream(named: "openai"))
        XCTAssertEqual(o.apiKey, .environment("OPENAI_API_KEY"))
        XCTAssertEqual(o.queueSize, 0)
        XCTAssertEqual(o.queueTimeout, .milliseconds(250))
        XCTAssertEqual(o.idleTimeout, .seconds(120))
        XCTAssertEqual(o.connectTimeout, .milliseconds(1500))
        XCTAssertEqual(o.tlsMinimumVersion, .v1_3)
        let l = try XCTUnwrap(c.upstream(named: "local"))
        XCTAssertEqual(l.url, UpstreamURL(tls: false, host: "127.0.0.1", port: 11434, pathPrefix: "/ollama"))
        XCTAssertEqual(l.url.hostHeader, "127.0.0.1:11434")
        XCTAssertEqual(l.apiKey, .file("/run/credentials/key"))
        XCTAssertEqual(c.log.format, .json)
    }

    func testUnknownKeysAreRefusedWithTheirLine() {
        assertRefused("""
        [server]
        listen = "127.0.0.1:8080"
        max_body_byte = 10

        [upstreams.a]
        url = "http://x"
        """, "test.toml:3: server.max_body_byte: unknown key (see etc/llm-sidecar/config.toml for every option)")
        assertRefused("""
        [upstreams.a]
        url = "http://x"
        api_key = "sk-secret"
        """, "test.toml:3: upstreams.a.api_key: unknown key (see etc/llm-sidecar/config.toml for every option)")
    }

    func testBadValuesAreRefusedPrecisely() {
        assertRefused("""
        [upstreams.openai]
        url = "ftp://api.openai.com"
        """, "test.toml:2: upstreams.openai.url: \"ftp://api.openai.com\" must start with https:// or http://")
        assertRefused("""
        [upstreams.openai]

        url = "https://api.openai.com"
        api_key_env = "NOPE_KEY"
        """, "test.toml:4: upstreams.openai.api_key_env: environment variable NOPE_KEY is not set (export it, or remove api_key_env to pass clients' own Authorization through)")
        assertRefused("""
        [upstreams.openai]
        url = "https://api.openai.com"
        max_connections = "many"
        """, "test.toml:3: upstreams.openai.max_connections: expected an integer")
        assertRefused("""
        [upstreams.openai]
        url = "https://api.openai.com"
        idle_timeout = "soon"
        """, "test.toml:3: upstreams.openai.idle_timeout: \"soon\" is not a duration (write e.g. \"250ms\", \"30s\", \"5m\")")
        assertRefused("""
        [server]
        default_upstream = "azure"
        [upstreams.openai]
        url = "https://api.openai.com"
        """, "test.toml:2: server.default_upstream: names \"azure\", but the upstreams are: openai")
        assertRefused("""
        [server]
        listen = "8080"
        [upstreams.openai]
        url = "https://api.openai.com"
        """, "test.toml:2: server.listen: \"8080\" is not HOST:PORT or unix:/ABSOLUTE/PATH")
        assertRefused("""
        [server]
        listen = "127.0.0.1:8080"
        """, "test.toml: upstreams: at least one [upstreams.NAME] table is required")
        assertRefused("""
        [upstreams.openai]
        url = "https://api.openai.com"
        ca_file = "/nope.pem"
        """, "test.toml:3: upstreams.openai.ca_file: cannot read /nope.pem")
        assertRefused("""
        [upstreams.local]
        url = "http://127.0.0.1:8000"
        tls_min_version = "1.3"
        """, "test.toml:2: upstreams.local.url: TLS options are set but the URL is http://; use https://")
    }

    func testMaxHeaderFieldsIsValidatedToItsRange() throws {
        func config(_ value: String) -> String {
            "[server]\nmax_header_fields = \(value)\n[upstreams.openai]\nurl = \"https://api.openai.com\"\n"
        }
        XCTAssertEqual(try load(config("32")).server.maxHeaderFields, 32)
        XCTAssertEqual(try load(config("65534")).server.maxHeaderFields, 65534)
        assertRefused(config("31"), "test.toml:2: server.max_header_fields: must be between 32 and 65534, got 31")
        assertRefused(config("65535"), "test.toml:2: server.max_header_fields: must be between 32 and 65534, got 65535")
        assertRefused(config("0"), "test.toml:2: server.max_header_fields: must be between 32 and 65534, got 0")
        assertRefused(config("-1"), "test.toml:2: server.max_header_fields: must be between 32 and 65534, got -1")
        assertRefused(config("\"many\""), "test.toml:2: server.max_header_fields: expected an integer")
    }

    func testDuplicateNamesAreRefusedByTheTOMLParser() {
        do {
            _ = try load("""
            [upstreams.openai]
            url = "https://api.openai.com"
            [upstreams.openai]
            url = "https://other"
            """)
            XCTFail("accepted a duplicate table")
        } catch {
            XCTAssertTrue(error.description.hasPrefix("test.toml:3: not valid TOML: "), error.description)
        }
    }

    func testShippedConfigurationFilesAreValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for name in ["config.toml", "config.minimal.toml"] {
            let path = root.appendingPathComponent("etc/llm-sidecar/\(name)").path
            let text = try String(contentsOfFile: path, encoding: .utf8)
            let c = try SidecarConfiguration.load(toml: text, file: name, environment: env, fileExists: { _ in true })
            XCTAssertEqual(c.server.listen, .tcp(host: "127.0.0.1", port: 8080), name)
            XCTAssertEqual(c.server.defaultUpstream, "openai", name)
        }
    }

    func testListenAndURLParsing() {
        XCTAssertEqual(ListenAddress.parse("[::1]:9000"), .tcp(host: "::1", port: 9000))
        XCTAssertEqual(ListenAddress.parse("0.0.0.0:80")?.isLoopback, false)
        XCTAssertNil(ListenAddress.parse("unix:relative.sock"))
        XCTAssertNil(ListenAddress.parse("host:99999"))
        XCTAssertEqual(try UpstreamURL.parse("https://[::1]:8443").get(), UpstreamURL(tls: true, host: "::1", port: 8443))
        XCTAssertEqual(try UpstreamURL.parse("https://[::1]:8443").get().hostHeader, "[::1]:8443")
        XCTAssertThrowsError(try UpstreamURL.parse("https://user:pw@host").get())
        XCTAssertThrowsError(try UpstreamURL.parse("https://host/?q=1").get())
        XCTAssertThrowsError(try UpstreamURL.parse("https://:443").get())
    }

    func testDurations() {
        XCTAssertEqual(DurationText.parse("250ms"), .milliseconds(250))
        XCTAssertEqual(DurationText.parse("30s"), .seconds(30))
        XCTAssertEqual(DurationText.parse("2m"), .seconds(120))
        XCTAssertEqual(DurationText.parse("1h"), .seconds(3600))
        XCTAssertEqual(DurationText.parse("1.5"), .milliseconds(1500))
        XCTAssertNil(DurationText.parse("-1s"))
        XCTAssertNil(DurationText.parse("fast"))
        XCTAssertEqual(DurationText.format(.milliseconds(300)), "300ms")
        XCTAssertEqual(DurationText.format(.seconds(90)), "90s")
    }
}
