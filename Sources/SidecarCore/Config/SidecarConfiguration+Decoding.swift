import NIOCore
import TOMLKit

/// A configuration problem, with the file, the key (as a dotted path) and the line where we could
/// find it, e.g. `config.toml:7: upstreams.openai.url: must start with https:// or http://`.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String?
    public var line: Int?
    public var key: String?
    public var problem: String

    public init(file: String? = nil, line: Int? = nil, key: String? = nil, problem: String) {
        self.file = file
        self.line = line
        self.key = key
        self.problem = problem
    }

    public var description: String {
        var s = file ?? "configuration"
        if let line { s += ":\(line)" }
        s += ": "
        if let key { s += "\(key): " }
        return s + problem
    }
}

extension SidecarConfiguration {
    /// Parses and validates a TOML document. Unknown keys, wrong types, bad URLs, missing key
    /// variables and dangling names are refused with a `ConfigurationError` naming the key and line.
    ///
    /// - Parameters:
    ///   - environment: the process environment, to check that `api_key_env` variables exist.
    ///   - fileExists: whether a path names a readable file (`api_key_file`, `ca_file`, ...).
    ///   - checkSecrets: false for commands that never use keys (`stats`, `cache`): an unset
    ///     `api_key_env` variable or unreadable key file is then not an error.
    public static func load(
        toml: String, file: String?, environment: [String: String], fileExists: @escaping (String) -> Bool, checkSecrets: Bool = true
    ) throws(ConfigurationError) -> SidecarConfiguration {
        let raw: RawConfiguration
        do {
            raw = try TOMLDecoder(strictDecoding: true).decode(RawConfiguration.self, from: toml)
        } catch let error as TOMLParseError {
            throw ConfigurationError(file: file, line: error.source.begin.line, problem: "not valid TOML: \(error.description)")
        } catch let error as UnexpectedKeysError {
            // TOMLKit gives each unknown key with its full coding path (the key included).
            let paths = error.keys.map { key, path -> [String] in
                let p = path.map(\.stringValue)
                return p.last == key ? p : p + [key]
            }.sorted { $0.joined(separator: ".") < $1.joined(separator: ".") }
            let first = paths.first ?? []
            throw ConfigurationError(
                file: file, line: TOMLLocator.line(of: first, in: toml), key: first.joined(separator: "."),
                problem: "unknown key (see etc/llm-sidecar/config.toml for every option)")
        } catch let error as DecodingError {
            let (path, problem) = Self.describe(error)
            throw ConfigurationError(file: file, line: TOMLLocator.line(of: path, in: toml), key: path.joined(separator: "."), problem: problem)
        } catch {
            throw ConfigurationError(file: file, problem: "\(error)")
        }
        var validator = Validator(file: file, source: toml, environment: environment, fileExists: fileExists, checkSecrets: checkSecrets)
        return try validator.validate(raw)
    }

    private static func describe(_ error: DecodingError) -> ([String], String) {
        switch error {
        case .typeMismatch(let type, let ctx):
            return (ctx.codingPath.map(\.stringValue), "expected \(Self.tomlName(type))")
        case .valueNotFound(let type, let ctx):
            return (ctx.codingPath.map(\.stringValue), "expected \(Self.tomlName(type))")
        case .keyNotFound(let key, let ctx):
            // Every field is optional, so TOMLKit only says "not found" for a value of the wrong type.
            var path = ctx.codingPath.map(\.stringValue)
            if path.last != key.stringValue { path.append(key.stringValue) }
            let expected = RawConfiguration.integerKeys.contains(key.stringValue) ? "an integer"
                : RawConfiguration.numberKeys.contains(key.stringValue) ? "a number"
                : RawConfiguration.tableKeys.contains(key.stringValue) ? "a table" : "a string"
            return (path, "expected \(expected)")
        case .dataCorrupted(let ctx):
            return (ctx.codingPath.map(\.stringValue), ctx.debugDescription)
        @unknown default:
            return ([], "\(error)")
        }
    }

    private static func tomlName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Int.Type: return "an integer"
        case is Bool.Type: return "true or false"
        case is Double.Type: return "a number"
        default: return "a table"
        }
    }
}

/// The file as written: every field optional, so defaults and validation live in one place.
struct RawConfiguration: Decodable {
    /// Keys whose values are integers (the rest are strings or tables), for type error messages.
    static let integerKeys: Set<String> = ["max_body_bytes", "max_header_fields", "threads", "max_connections", "queue_size", "ttl_seconds",
                                            "max_bytes", "memory_bytes", "max_entry_bytes", "weight", "max_concurrency", "max_attempts",
                                            "client_rpm", "client_burst", "alert_percent", "rpm", "tpm", "max_queue_spans", "prompt_cache_min_tokens",
                                            "pool_size", "shared_cache_max_bytes"]
    static let tableKeys: Set<String> = ["server", "upstreams", "log", "cache", "prices", "models", "deployments", "limits", "budgets", "otel", "fleet"]

    var server: RawServer?
    var upstreams: [String: RawUpstream]?
    var log: RawLog?
    var cache: RawCache?
    var prices: [String: RawPrice]?
    var models: [RawModel]?
    var limits: RawLimits?
    var budgets: RawBudgets?
    var otel: RawOTel?
    var fleet: RawFleet?

    struct RawFleet: Decodable {
        var postgres_url_env: String?
        var postgres_url_file: String?
        var node: String?
        var on_unavailable: String?
        var pool_size: Int?
        var connect_timeout: String?
        var statement_timeout: String?
        var lease_period: String?
        var sync_interval: String?
        var budget_slice: Number?
        var shared_cache: Bool?
        var shared_cache_timeout: String?
        var shared_cache_max_bytes: Int?
        var coalesce_wait: String?
    }

    struct RawOTel: Decodable {
        var endpoint: String?
        var service_name: String?
        var capture_content: Bool?
        var max_queue_spans: Int?
        var export_interval: String?
    }

    struct RawBudgets: Decodable {
        var daily_usd: Number?
        var monthly_usd: Number?
        var client_daily_usd: Number?
        var alert_percent: Int?
        var on_exhausted: String?
        var unpriced: String?
    }

    struct RawLimits: Decodable {
        var client_rpm: Int?
        var client_burst: Int?
    }

    struct RawModel: Decodable {
        var name: String?
        var fallbacks: [String]?
        var deployments: [RawDeployment]?
        var retry_on: [Int]?
        var max_attempts: Int?
        var retry_deadline: String?
        var queue_size: Int?
        var queue_timeout: String?
        var first_token_timeout: String?
        var prompt_cache_affinity: Bool?
        var prompt_cache_ttl: String?
        var prompt_cache_min_tokens: Int?
        var prompt_cache_load_factor: Number?
        var prompt_cache_placement: String?
    }

    struct RawDeployment: Decodable {
        var upstream: String?
        var model: String?
        var weight: Int?
        var max_concurrency: Int?
        var rpm: Int?
        var tpm: Int?
    }

    struct RawCache: Decodable {
        var mode: String?
        var path: String?
        var ttl_seconds: Int?
        var max_bytes: Int?
        var memory_bytes: Int?
        var max_entry_bytes: Int?
        var scope: String?
    }

    struct RawPrice: Decodable {
        var input_per_mtok: Number?
        var output_per_mtok: Number?
        var cached_input_per_mtok: Number?
        var cache_write_per_mtok: Number?
    }

    /// A TOML integer or float (`3` and `3.0` are both a price).
    struct Number: Decodable {
        var value: Double
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let d = try? c.decode(Double.self) { value = d } else { value = Double(try c.decode(Int.self)) }
        }
    }
    static let numberKeys: Set<String> = ["input_per_mtok", "output_per_mtok", "daily_usd", "monthly_usd", "client_daily_usd", "prompt_cache_load_factor"]

    struct RawServer: Decodable {
        var listen: String?
        var default_upstream: String?
        var max_body_bytes: Int?
        var max_header_fields: Int?
        var threads: Int?
        var client_idle_timeout: String?
        var drain_timeout: String?
        var websocket_idle_timeout: String?
        var websocket_max_duration: String?
        var admin_token_env: String?
        var admin_token_file: String?
        var dns_resolver: String?
    }

    struct RawUpstream: Decodable {
        var url: String?
        var api: String?
        var api_key_env: String?
        var api_key_file: String?
        var ca_file: String?
        var client_cert_file: String?
        var client_key_file: String?
        var server_name: String?
        var tls_min_version: String?
        var max_connections: Int?
        var queue_size: Int?
        var queue_timeout: String?
        var idle_timeout: String?
        var connect_timeout: String?
        var tls_handshake_timeout: String?
        var first_byte_timeout: String?
        var read_idle_timeout: String?
        var health_check: RawHealthCheck?
        var discover: String?
        var dns_min_ttl: String?
        var dns_max_ttl: String?
        var slow_start: String?
    }

    struct RawLog: Decodable {
        var level: String?
        var format: String?
        var access: Bool?
    }
}

/// Checks the raw tables and builds the typed configuration; every problem is a
/// `ConfigurationError` naming the key and its line (sections: `+DecodingSections`).
struct Validator {
    let file: String?
    let source: String
    let environment: [String: String]
    let fileExists: (String) -> Bool
    let checkSecrets: Bool

    func fail(_ path: [String], _ problem: String) -> ConfigurationError {
        ConfigurationError(file: file, line: TOMLLocator.line(of: path, in: source), key: path.joined(separator: "."), problem: problem)
    }

    /// Where a secret is: `NAME_env` (a variable that must be set) or `NAME_file` (a readable
    /// file), never both; `.none` when neither is given. Secrets are never read here.
    func keySource(env: String?, file: String?, _ base: [String], _ name: String,
                   unsetHint: String = "") throws(ConfigurationError) -> SidecarConfiguration.KeySource {
        switch (env, file) {
        case (.some, .some):
            throw fail(base + [name + "_file"], "set \(name)_env or \(name)_file, not both")
        case (.some(let variable), nil):
            guard !checkSecrets || !(environment[variable] ?? "").isEmpty else {
                throw fail(base + [name + "_env"], "environment variable \(variable) is not set\(unsetHint)")
            }
            return .environment(variable)
        case (nil, .some(let path)):
            guard !checkSecrets || fileExists(path) else { throw fail(base + [name + "_file"], "cannot read \(path)") }
            return .file(path)
        case (nil, nil):
            return .none
        }
    }

    func duration(_ text: String?, _ path: [String], default def: TimeAmount, allowZero: Bool = false) throws(ConfigurationError) -> TimeAmount {
        guard let text else { return def }
        guard let d = DurationText.parse(text) else {
            throw fail(path, "\"\(text)\" is not a duration (write e.g. \"250ms\", \"30s\", \"5m\")")
        }
        if !allowZero, d.nanoseconds == 0 { throw fail(path, "must be greater than zero") }
        return d
    }

    func positive(_ value: Int?, _ path: [String], default def: Int, max: Int = Int.max) throws(ConfigurationError) -> Int {
        guard let value else { return def }
        guard value >= 1, value <= max else { throw fail(path, "must be between 1 and \(max), got \(value)") }
        return value
    }

    func integer(_ value: Int?, _ path: [String], default def: Int, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let value else { return def }
        guard range.contains(value) else { throw fail(path, "must be between \(range.lowerBound) and \(range.upperBound), got \(value)") }
        return value
    }

    mutating func validate(_ raw: RawConfiguration) throws(ConfigurationError) -> SidecarConfiguration {
        var server = SidecarConfiguration.Server()
        let rs = raw.server
        if let listen = rs?.listen {
            guard let parsed = ListenAddress.parse(listen) else {
                throw fail(["server", "listen"], "\"\(listen)\" is not HOST:PORT or unix:/ABSOLUTE/PATH")
            }
            server.listen = parsed
        }
        server.maxBodyBytes = try positive(rs?.max_body_bytes, ["server", "max_body_bytes"], default: server.maxBodyBytes)
        server.maxHeaderFields = try integer(rs?.max_header_fields, ["server", "max_header_fields"], default: server.maxHeaderFields,
                                             in: SidecarConfiguration.Server.maxHeaderFieldsRange)
        if let t = rs?.threads { server.threads = try positive(t, ["server", "threads"], default: 1, max: 256) }
        server.clientIdleTimeout = try duration(rs?.client_idle_timeout, ["server", "client_idle_timeout"], default: server.clientIdleTimeout)
        server.drainTimeout = try duration(rs?.drain_timeout, ["server", "drain_timeout"], default: server.drainTimeout, allowZero: true)
        server.websocketIdleTimeout = try duration(rs?.websocket_idle_timeout, ["server", "websocket_idle_timeout"], default: server.websocketIdleTimeout)
        server.websocketMaxDuration = try duration(rs?.websocket_max_duration, ["server", "websocket_max_duration"], default: server.websocketMaxDuration)
        server.adminToken = try keySource(env: rs?.admin_token_env, file: rs?.admin_token_file, ["server"], "admin_token")

        if let text = rs?.dns_resolver {
            guard let (host, port) = DNSResolverAddress.parse(text) else {
                throw fail(["server", "dns_resolver"], "\"\(text)\" is not IP:PORT (e.g. \"127.0.0.1:8600\" for Consul)")
            }
            server.dnsResolver = .init(host: host, port: port)
        }

        var upstreams: [SidecarConfiguration.Upstream] = []
        for (name, ru) in (raw.upstreams ?? [:]).sorted(by: { $0.key < $1.key }) {
            upstreams.append(try upstream(name, ru))
        }
        if upstreams.isEmpty {
            throw fail(["upstreams"], "at least one [upstreams.NAME] table is required")
        }
        if let d = rs?.default_upstream {
            guard upstreams.contains(where: { $0.name == d }) else {
                throw fail(["server", "default_upstream"], "names \"\(d)\", but the upstreams are: \(upstreams.map(\.name).joined(separator: ", "))")
            }
            server.defaultUpstream = d
        } else if upstreams.count == 1 {
            server.defaultUpstream = upstreams[0].name
        }

        var log = SidecarConfiguration.Log()
        if let level = raw.log?.level {
            let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
            guard levels.contains(level) else { throw fail(["log", "level"], "must be one of \(levels.joined(separator: ", "))") }
            log.level = level
        }
        if let format = raw.log?.format {
            guard let f = SidecarConfiguration.Log.Format(rawValue: format) else { throw fail(["log", "format"], "must be \"logfmt\" or \"json\"") }
            log.format = f
        }
        if let access = raw.log?.access { log.access = access }
        var configuration = SidecarConfiguration(server: server, upstreams: upstreams, log: log, cache: try cache(raw.cache), prices: try prices(raw.prices))
        configuration.models = try models(raw.models ?? [], upstreams: Set(upstreams.map(\.name)),
                                          dialects: Dictionary(uniqueKeysWithValues: upstreams.map { ($0.name, $0.api) }))
        if let rpm = raw.limits?.client_rpm { configuration.limits.clientRPM = try positive(rpm, ["limits", "client_rpm"], default: 1, max: 100_000_000) }
        if let rb = raw.budgets {
            var b = SidecarConfiguration.Budgets()
            for (key, value) in [("daily_usd", rb.daily_usd), ("monthly_usd", rb.monthly_usd), ("client_daily_usd", rb.client_daily_usd)] {
                guard let v = value?.value else { continue }
                guard v >= 0, v.isFinite else { throw fail(["budgets", key], "must be 0 or more US dollars") }
                switch key {
                case "daily_usd": b.limits.dailyUSD = v
                case "monthly_usd": b.limits.monthlyUSD = v
                default: b.limits.clientDailyUSD = v
                }
            }
            if let a = rb.alert_percent { b.limits.alertPercent = try positive(a, ["budgets", "alert_percent"], default: 80, max: 100) }
            if let o = rb.on_exhausted {
                if o == "reject" {
                    b.onExhausted = .reject
                } else if o.hasPrefix("downgrade:"), o.count > 10 {
                    b.onExhausted = .downgrade(String(o.dropFirst(10)))
                } else {
                    throw fail(["budgets", "on_exhausted"], "must be \"reject\" or \"downgrade:MODEL\"")
                }
            }
            if let u = rb.unpriced {
                guard let v = SidecarConfiguration.Budgets.Unpriced(rawValue: u) else {
                    throw fail(["budgets", "unpriced"], "must be \"reject\" or \"allow\"")
                }
                b.unpriced = v
            }
            configuration.budgets = b
        }
        if let ro = raw.otel { configuration.otel = try otel(ro) }
        if let rf = raw.fleet {
            guard configuration.cache.mode != .off else {
                throw fail(["fleet"], "needs the local cache database, and cache.mode is \"off\": the spend outbox and the shared tier live there (set cache.mode = \"deterministic\")")
            }
            configuration.fleet = try fleet(rf, cache: configuration.cache)
        }
        if let burst = raw.limits?.client_burst {
            guard configuration.limits.clientRPM != nil else { throw fail(["limits", "client_burst"], "needs client_rpm") }
            configuration.limits.clientBurst = try positive(burst, ["limits", "client_burst"], default: 1, max: 100_000_000)
        }
        return configuration
    }

    func models(_ raw: [RawConfiguration.RawModel], upstreams: Set<String>,
                dialects: [String: APIDialect] = [:]) throws(ConfigurationError) -> [SidecarConfiguration.ModelGroup] {
        var groups: [SidecarConfiguration.ModelGroup] = []
        for (i, rm) in raw.enumerated() {
            let base = ["models"]
            guard let name = rm.name, !name.isEmpty else { throw fail(base + ["name"], "model group \(i + 1) needs a name (what the app sends as \"model\")") }
            guard !groups.contains(where: { $0.name == name }) else { throw fail(base + ["name"], "\"\(name)\" is defined twice") }
            let rds = rm.deployments ?? []
            guard !rds.isEmpty else { throw fail(base + ["deployments"], "model group \"\(name)\" needs at least one [[models.deployments]]") }
            var deployments: [SidecarConfiguration.ModelGroup.Deployment] = []
            for rd in rds {
                let dbase = base + ["deployments"]
                guard let upstream = rd.upstream else { throw fail(dbase + ["upstream"], "every deployment of \"\(name)\" needs an upstream") }
                guard upstreams.contains(upstream) else {
                    throw fail(dbase + ["upstream"], "\"\(upstream)\" (in model group \"\(name)\") is not an [upstreams.NAME]; they are: \(upstreams.sorted().joined(separator: ", "))")
                }
                var d = SidecarConfiguration.ModelGroup.Deployment(upstream: upstream, model: rd.model ?? name)
                d.weight = try positive(rd.weight, dbase + ["weight"], default: 1, max: 1_000_000)
                if let c = rd.max_concurrency { d.maxConcurrency = try positive(c, dbase + ["max_concurrency"], default: 1, max: 1_000_000) }
                if let r = rd.rpm { d.rpm = try positive(r, dbase + ["rpm"], default: 1, max: 100_000_000) }
                if let t = rd.tpm { d.tpm = try positive(t, dbase + ["tpm"], default: 1, max: 1_000_000_000) }
                guard !deployments.contains(where: { $0.upstream == d.upstream && $0.model == d.model }) else {
                    throw fail(dbase, "model group \"\(name)\" lists \(upstream)/\(d.model) twice")
                }
                // One body format and one set of paths per group: a request is sent as it came.
                if let first = deployments.first, let a = dialects[first.upstream], let b = dialects[upstream], a != b {
                    throw fail(dbase + ["upstream"], "model group \"\(name)\" mixes api = \"\(a.rawValue)\" (\(first.upstream)) and api = \"\(b.rawValue)\" (\(upstream)); a group's deployments speak one API")
                }
                deployments.append(d)
            }
            var group = SidecarConfiguration.ModelGroup(name: name, fallbacks: rm.fallbacks ?? [], deployments: deployments)
            if let codes = rm.retry_on {
                for code in codes {
                    guard (100...599).contains(code) else { throw fail(base + ["retry_on"], "\(code) is not an HTTP status") }
                    guard !SidecarConfiguration.ModelGroup.neverRetried.contains(code) else {
                        throw fail(base + ["retry_on"], "\(code) says the request itself is wrong; it is never retried")
                    }
                }
                group.retryOn = Set(codes)
            }
            group.maxAttempts = try positive(rm.max_attempts, base + ["max_attempts"], default: group.maxAttempts, max: 10)
            group.retryDeadline = try duration(rm.retry_deadline, base + ["retry_deadline"], default: group.retryDeadline)
            if let q = rm.queue_size {
                guard q >= 0 else { throw fail(base + ["queue_size"], "must be 0 or more") }
                group.queueSize = q
            }
            group.queueTimeout = try duration(rm.queue_timeout, base + ["queue_timeout"], default: group.queueTimeout)
            if let t = rm.first_token_timeout { group.firstTokenTimeout = try duration(t, base + ["first_token_timeout"], default: .seconds(0)) }
            try promptCache(rm, into: &group)
            groups.append(group)
        }
        let names = Set(groups.map(\.name))
        for g in groups {
            for f in g.fallbacks {
                guard names.contains(f) else { throw fail(["models", "fallbacks"], "\"\(f)\" (a fallback of \"\(g.name)\") is not a model group") }
                guard f != g.name else { throw fail(["models", "fallbacks"], "\"\(g.name)\" cannot fall back to itself") }
            }
        }
        return groups
    }

    func upstream(_ name: String, _ ru: RawConfiguration.RawUpstream) throws(ConfigurationError) -> SidecarConfiguration.Upstream {
        let base = ["upstreams", name]
        guard !name.isEmpty, name.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-_".unicodeScalars.contains($0)) }) else {
            throw fail(base, "upstream names may use letters, digits, '-' and '_'")
        }
        guard let urlText = ru.url else { throw fail(base + ["url"], "is required (e.g. \"https://api.openai.com\")") }
        let url: UpstreamURL
        switch UpstreamURL.parse(urlText) {
        case .success(let u): url = u
        case .failure(let p): throw fail(base + ["url"], "\"\(urlText)\" \(p.reason)")
        }
        var up = SidecarConfiguration.Upstream(name: name, url: url)
        if let api = ru.api {
            guard let dialect = APIDialect(rawValue: api) else {
                throw fail(base + ["api"], "\"\(api)\" is not an API dialect: use \"openai\", \"anthropic\", \"azure\" or \"gemini\"")
            }
            up.api = dialect
        }
        up.apiKey = try keySource(env: ru.api_key_env, file: ru.api_key_file, base, "api_key",
                                  unsetHint: " (export it, or remove api_key_env to pass clients' own Authorization through)")
        for (key, value) in [("ca_file", ru.ca_file), ("client_cert_file", ru.client_cert_file), ("client_key_file", ru.client_key_file)] {
            if let value, !fileExists(value) { throw fail(base + [key], "cannot read \(value)") }
        }
        if (ru.client_cert_file == nil) != (ru.client_key_file == nil) {
            throw fail(base + [ru.client_cert_file == nil ? "client_key_file" : "client_cert_file"], "client_cert_file and client_key_file go together")
        }
        if !url.tls, ru.ca_file != nil || ru.client_cert_file != nil || ru.server_name != nil || ru.tls_min_version != nil {
            throw fail(base + ["url"], "TLS options are set but the URL is http://; use https://")
        }
        up.caFile = ru.ca_file
        up.clientCertificateFile = ru.client_cert_file
        up.clientKeyFile = ru.client_key_file
        up.serverName = ru.server_name
        if let v = ru.tls_min_version {
            guard let parsed = SidecarConfiguration.TLSVersion(rawValue: v) else { throw fail(base + ["tls_min_version"], "must be \"1.2\" or \"1.3\"") }
            up.tlsMinimumVersion = parsed
        }
        up.maxConnections = try positive(ru.max_connections, base + ["max_connections"], default: up.maxConnections, max: 100_000)
        if let q = ru.queue_size {
            guard q >= 0 else { throw fail(base + ["queue_size"], "must be 0 or more") }
            up.queueSize = q
        }
        up.queueTimeout = try duration(ru.queue_timeout, base + ["queue_timeout"], default: up.queueTimeout)
        up.idleTimeout = try duration(ru.idle_timeout, base + ["idle_timeout"], default: up.idleTimeout)
        up.connectTimeout = try duration(ru.connect_timeout, base + ["connect_timeout"], default: up.connectTimeout)
        up.tlsHandshakeTimeout = try duration(ru.tls_handshake_timeout, base + ["tls_handshake_timeout"], default: up.tlsHandshakeTimeout)
        up.firstByteTimeout = try duration(ru.first_byte_timeout, base + ["first_byte_timeout"], default: up.firstByteTimeout)
        up.readIdleTimeout = try duration(ru.read_idle_timeout, base + ["read_idle_timeout"], default: up.readIdleTimeout)
        up.healthCheck = try ru.health_check?.validate(at: base + ["health_check"], fail: fail)
        up.discovery = try RawDiscovery(discover: ru.discover, dns_min_ttl: ru.dns_min_ttl, dns_max_ttl: ru.dns_max_ttl, slow_start: ru.slow_start)
            .validate(at: base, url: url, fail: fail)
        return up
    }
}

/// Finds the line of a dotted key in TOML source text, for error messages. Understands
/// `[table]` / `[table.sub]` headers and `key = value` lines; good enough for our flat files.
enum TOMLLocator {
    static func line(of path: [String], in source: String) -> Int? {
        guard !path.isEmpty else { return nil }
        var table: [String] = []
        var tableLine: Int?
        var best: Int?
        for (i, rawLine) in source.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingSpaces()
            if line.hasPrefix("[") && !line.hasPrefix("[[") {
                let inner = line.dropFirst().prefix { $0 != "]" }
                table = inner.split(separator: ".").map { String($0.trimmingSpaces()).trimmingCharacters("\"") }
                if table == path { return i + 1 }
                if table.count <= path.count, Array(path.prefix(table.count)) == table { tableLine = i + 1 } else { tableLine = nil }
                continue
            }
            guard let eq = line.firstIndex(of: "=") else { continue }
            let key = String(line[..<eq].trimmingSpaces()).trimmingCharacters("\"")
            let full = table + key.split(separator: ".").map(String.init)
            if full == path { return i + 1 }
            if best == nil, full.count <= path.count, Array(path.prefix(full.count)) == full { best = i + 1 }
        }
        return best ?? tableLine
    }
}

extension String {
    func trimmingCharacters(_ c: Character) -> String {
        var s = Substring(self)
        while s.first == c { s.removeFirst() }
        while s.last == c { s.removeLast() }
        return String(s)
    }
}
