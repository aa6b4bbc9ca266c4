import NIOCore

/// The daemon's whole configuration after validation: every value typed, every default applied.
///
/// Built by `SidecarConfiguration.load(toml:file:environment:)` (see `+Decoding`), or by
/// `zeroConfig(listen:upstream:)` for `llm-sidecar serve --upstream URL` with no file.
/// Keys are NOT here: only where to find them (`KeySource`); `resolveKeys` reads them.
public struct SidecarConfiguration: Sendable, Equatable {
    public var server: Server
    /// Upstreams by name, in name order (so every listing and every pool layout is deterministic).
    public var upstreams: [Upstream]
    public var log: Log
    public var cache: Cache
    /// `[prices."MODEL"]`: overrides and additions to `PriceTable.defaults`.
    public var prices: [String: PriceTable.Price]
    /// `[[models]]`: model groups, in file order (docs/routing.md).
    public var models: [ModelGroup] = []
    /// `[limits]`
    public var limits = Limits()
    /// `[budgets]`
    public var budgets = Budgets()
    /// `[otel]`: where traces go; nil: no tracing (docs/observability.md).
    public var otel: OTel?
    /// `[fleet]`: budgets, limits, spend and a cache tier shared through PostgreSQL; nil: this
    /// sidecar is alone (docs/fleet.md).
    public var fleet: Fleet?

    /// `[otel]`
    public struct OTel: Sendable, Equatable {
        /// The collector's OTLP/HTTP traces URL (`http://HOST:PORT/v1/traces`).
        public var endpoint: UpstreamURL
        /// `service.name` of the spans. Default "llm-sidecar".
        public var serviceName = "llm-sidecar"
        /// Record prompts and answers in spans. Default false: never.
        public var captureContent = false
        /// Spans waiting for export; more are dropped (and counted). Default 2048.
        public var maxQueueSpans = 2048
        /// How often spans are sent. Default 1 s.
        public var exportInterval: TimeAmount = .seconds(1)
        public init(endpoint: UpstreamURL) { self.endpoint = endpoint }
    }

    /// `[budgets]`: spend caps in US dollars (docs/spend.md).
    public struct Budgets: Sendable, Equatable {
        public var limits = BudgetLedger.Limits()
        /// What happens to a request that would overshoot a budget.
        public enum OnExhausted: Sendable, Equatable {
            /// 429 `budget_exceeded`.
            case reject
            /// Send it as this (cheaper) model or group instead, saying so in `x-sidecar-downgraded-from`.
            case downgrade(String)
        }
        public var onExhausted: OnExhausted = .reject
        /// What a request for a model without a price does under a budget (it cannot be priced,
        /// so it could spend past the budget unseen).
        public enum Unpriced: String, Sendable, Equatable {
            /// 400 `model_not_priced`, naming the model and the `[prices]` key to add. The default.
            case reject
            /// Sent, reserving and settling $0; logged once per model and counted in
            /// `llm_sidecar_unpriced_requests_total`.
            case allow
        }
        public var unpriced: Unpriced = .reject
        public init() {}
    }

    /// `[limits]`: per client credential (docs/limits.md).
    public struct Limits: Sendable, Equatable {
        /// Requests per minute per client credential; nil: no limit.
        public var clientRPM: Int?
        /// Requests a client may make at once after being idle. Default: `client_rpm`.
        public var clientBurst: Int?
        public init() {}
    }

    public func modelGroup(named name: String) -> ModelGroup? { models.first { $0.name == name } }

    /// `[[models]]`: one model name the app sends, served by several deployments.
    public struct ModelGroup: Sendable, Equatable {
        public var name: String
        /// Other groups to try, in order, when none of this group's deployments can take a request.
        public var fallbacks: [String] = []
        public var deployments: [Deployment]
        /// Upstream statuses that are tried again on another deployment (before anything reached
        /// the client). Default 429, 500, 502, 503, 504, 529.
        public var retryOn: Set<Int> = Self.defaultRetryOn
        /// Attempts per request, the first included. Default 3.
        public var maxAttempts: Int = 3
        /// No new attempt starts after this long from the request's start. Default 60 s.
        public var retryDeadline: TimeAmount = .seconds(60)
        /// Requests that may wait when every deployment is at `max_concurrency`. Default 1024.
        public var queueSize: Int = 1024
        /// How long such a request waits before 429 with `Retry-After`. Default 30 s.
        public var queueTimeout: TimeAmount = .seconds(30)
        /// A streaming request whose first event has not arrived this long after it was sent moves
        /// to another deployment (the slow attempt is cancelled). Default: off.
        public var firstTokenTimeout: TimeAmount?
        /// Prompt-cache affinity: each prompt prefix kept on the deployment whose provider cache
        /// holds it (docs/routing.md). Default on: `prompt_cache_ttl` 5 min, load factor 1.5,
        /// new prefixes by least-connections. nil: off (`prompt_cache_affinity = false`).
        public var promptCache: PrefixAffinity.Configuration? = PrefixAffinity.Configuration()
        /// The provider's shortest cacheable prompt, in tokens (`prompt_cache_min_tokens`).
        /// Default 1,024 (OpenAI, Anthropic's Sonnet and Opus 4.x, Gemini 2.5 Flash).
        public var promptCacheMinimumTokens = 1024

        public static let defaultRetryOn: Set<Int> = [429, 500, 502, 503, 504, 529]
        /// Statuses that say the request itself is wrong: retrying elsewhere cannot help.
        public static let neverRetried: Set<Int> = [400, 401, 403, 404, 413, 422]

        /// `[[models.deployments]]`
        public struct Deployment: Sendable, Equatable {
            /// A `[upstreams.NAME]`.
            public var upstream: String
            /// The name sent upstream (the body's `model` is rewritten to it).
            public var model: String
            /// Share of the load under saturation. Default 1.
            public var weight: Int = 1
            /// In-flight cap; nil: only the upstream's pool bounds it.
            public var maxConcurrency: Int?
            /// The provider's requests-per-minute limit for this deployment; nil: none.
            public var rpm: Int?
            /// The provider's tokens-per-minute limit: requests are charged their estimated tokens
            /// when sent and corrected by the answer's `usage`; nil: none.
            public var tpm: Int?
            public init(upstream: String, model: String, weight: Int = 1, maxConcurrency: Int? = nil) {
                self.upstream = upstream
                self.model = model
                self.weight = weight
                self.maxConcurrency = maxConcurrency
            }
        }

        public init(name: String, fallbacks: [String] = [], deployments: [Deployment]) {
            self.name = name
            self.fallbacks = fallbacks
            self.deployments = deployments
        }
    }

    public init(server: Server, upstreams: [Upstream], log: Log = Log(), cache: Cache = Cache(), prices: [String: PriceTable.Price] = [:]) {
        self.server = server
        self.upstreams = upstreams.sorted { $0.name < $1.name }
        self.log = log
        self.cache = cache
        self.prices = prices
    }

    /// The price table: built-in defaults with the file's `[prices]` on top.
    public var priceTable: PriceTable { PriceTable(overrides: prices) }

    /// With a budget set: every model a deployment (or `on_exhausted = "downgrade:MODEL"`) sends
    /// that has no price, sorted. Such requests cannot be reserved against the budget, so
    /// `check-config` and start-up warn about each (`budgets.unpriced` decides what they do).
    public var unpricedModelsUnderBudget: [String] {
        guard !budgets.limits.isEmpty else { return [] }
        let table = priceTable
        var names = Set(models.flatMap { $0.deployments.map(\.model) })
        if case .downgrade(let target) = budgets.onExhausted, modelGroup(named: target) == nil { names.insert(target) }
        return names.filter { table.price(of: $0) == nil }.sorted()
    }

    public func upstream(named name: String) -> Upstream? { upstreams.first { $0.name == name } }

    /// `[server]`
    public struct Server: Sendable, Equatable {
        /// Where clients connect. Default `127.0.0.1:8080`: loopback only unless configured.
        public var listen: ListenAddress = .tcp(host: "127.0.0.1", port: 8080)
        /// Where requests go. Default: the only upstream, when there is exactly one.
        public var defaultUpstream: String?
        /// Largest request body accepted; larger gets 413. Default 32 MiB.
        public var maxBodyBytes: Int = 32 << 20
        /// Most header fields a request head may have; more gets 431. Default 128 (SDKs send ~15).
        public var maxHeaderFields: Int = 128
        /// The range `max_header_fields` may be set in: at least what proxies and SDKs add
        /// together, at most what HTTP field containers hold (NIO's and swift-http-types' 65,534).
        public static let maxHeaderFieldsRange = 32...65_534
        /// Event-loop threads. Default: the CPUs the process may use (`CPUAllowance`).
        public var threads: Int?
        /// How long a client keep-alive connection may sit idle. Default 75 s (nginx's default).
        public var clientIdleTimeout: TimeAmount = .seconds(75)
        /// How long a graceful stop waits for in-flight requests. Default 30 s.
        public var drainTimeout: TimeAmount = .seconds(30)
        /// A WebSocket session (Realtime API) with no frame either way for this long is closed
        /// (1001). Default 5 min.
        public var websocketIdleTimeout: TimeAmount = .minutes(5)
        /// A WebSocket session is closed (1001) after this long, however busy. Default 60 min
        /// (OpenAI ends Realtime sessions at 30).
        public var websocketMaxDuration: TimeAmount = .minutes(60)
        /// Where the token for remote admin access comes from (admin endpoints otherwise answer
        /// loopback and unix-socket clients only). Default: none.
        public var adminToken: KeySource = .none
        /// Where `discover = "dns"` sends its queries (an IP and port). Default: the first
        /// `nameserver` of /etc/resolv.conf, port 53.
        public var dnsResolver: ResolverAddress?
        public struct ResolverAddress: Sendable, Equatable {
            public var host: String
            public var port: Int
            public init(host: String, port: Int) { self.host = host; self.port = port }
        }
        public init() {}
    }

    /// `[upstreams.NAME]`
    public struct Upstream: Sendable, Equatable {
        public var name: String
        public var url: UpstreamURL
        /// How the upstream is authenticated and which client paths reach it. Default `openai`.
        public var api: APIDialect = .openai
        public var apiKey: KeySource = .none
        /// PEM bundle of trusted CAs; nil = the system trust store.
        public var caFile: String?
        /// Client certificate and key (PEM) for mTLS; both or neither.
        public var clientCertificateFile: String?
        public var clientKeyFile: String?
        /// Name sent in SNI and verified in the certificate; default: the URL's host.
        public var serverName: String?
        /// "1.2" (default) or "1.3".
        public var tlsMinimumVersion: TLSVersion = .v1_2
        /// Connections across all threads. Default 64.
        public var maxConnections: Int = 64
        /// Requests that may wait for a connection. Default 1024.
        public var queueSize: Int = 1024
        /// How long a request may wait for a connection before 503. Default 30 s.
        public var queueTimeout: TimeAmount = .seconds(30)
        /// How long an idle pooled connection is kept. Default 90 s.
        public var idleTimeout: TimeAmount = .seconds(90)
        /// TCP connect. Default 10 s.
        public var connectTimeout: TimeAmount = .seconds(10)
        /// TLS handshake. Default 10 s.
        public var tlsHandshakeTimeout: TimeAmount = .seconds(10)
        /// From the request's last byte to the response's first. Default 600 s (OpenAI SDK's timeout).
        public var firstByteTimeout: TimeAmount = .seconds(600)
        /// Longest silence between two response body reads. Default 300 s.
        public var readIdleTimeout: TimeAmount = .seconds(300)
        /// Active health checks; nil (default) = none, only passive ejection.
        public var healthCheck: HealthCheck?
        /// `discover = "dns"`: members found by resolving the URL's host; nil (default) = the
        /// URL is one server.
        public var discovery: Discovery?

        public init(name: String, url: UpstreamURL) {
            self.name = name
            self.url = url
        }
    }

    /// `[log]`
    public struct Log: Sendable, Equatable {
        public enum Format: String, Sendable { case logfmt, json }
        /// trace, debug, info (default), notice, warning, error, critical.
        public var level: String = "info"
        public var format: Format = .logfmt
        /// One access line per request at info level. Default on.
        public var access: Bool = true
        public init() {}
    }

    /// `[cache]`: the response cache and in-flight coalescing (docs/caching.md).
    public struct Cache: Sendable, Equatable {
        /// Whose answers a request may see.
        public enum Scope: String, Sendable {
            /// Entries are keyed by a hash of the client's credential: two keys never share.
            case client
            /// One cache for every client (single-tenant hosts).
            case shared
        }
        /// "deterministic" (default), "all" or "off".
        public var mode: CachePolicy.Mode = .deterministic
        /// The SQLite file. Default: `$STATE_DIRECTORY/cache.sqlite3` under systemd, else
        /// `$XDG_STATE_HOME/llm-sidecar/cache.sqlite3` (`~/.local/state/...`). Resolved by `load`;
        /// empty only in configurations built in code, which then resolve it with `defaultPath`.
        public var path: String = ""
        /// Lifetime of an entry unless the request says `x-sidecar-cache-ttl`. Default one day.
        public var ttlSeconds: Int = 86_400
        /// Size cap of the stored bodies; least-recently-hit entries are evicted beyond it. Default 1 GiB.
        public var maxBytes: Int64 = 1 << 30
        /// The in-memory hot tier in front of SQLite. Default 8 MiB (about 5,000 typical answers,
        /// counted at what they really hold); 0 turns it off. A sidecar runs beside every app:
        /// everything else stays on disk, where a hit costs one SQLite read.
        public var memoryBytes: Int = 8 << 20
        /// Larger answers are served but not stored (nor shared with late joiners). Default 8 MiB.
        public var maxEntryBytes: Int = 8 << 20
        public var scope: Scope = .client
        public init() {}

        /// Where the database goes when `cache.path` is not set.
        public static func defaultPath(environment: [String: String]) -> String {
            if let state = environment["STATE_DIRECTORY"]?.split(separator: ":").first, !state.isEmpty {
                return "\(state)/cache.sqlite3"
            }
            if let xdg = environment["XDG_STATE_HOME"], xdg.hasPrefix("/") {
                return "\(xdg)/llm-sidecar/cache.sqlite3"
            }
            let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? "/root"
            return "\(home)/.local/state/llm-sidecar/cache.sqlite3"
        }
    }

    public enum TLSVersion: String, Sendable { case v1_2 = "1.2", v1_3 = "1.3" }

    /// Where an upstream's API key comes from. Never the configuration file itself.
    public enum KeySource: Sendable, Equatable {
        case none
        case environment(String)
        case file(String)
    }

    /// The zero-config daemon of `llm-sidecar serve --upstream URL`: one upstream named "default",
    /// its key from `OPENAI_API_KEY` when that is set, else clients' own `Authorization` passes through.
    public static func zeroConfig(
        listen: ListenAddress?, upstream: UpstreamURL, environment: [String: String]
    ) -> SidecarConfiguration {
        var server = Server()
        if let listen { server.listen = listen }
        server.defaultUpstream = "default"
        var up = Upstream(name: "default", url: upstream)
        if let key = environment["OPENAI_API_KEY"], !key.isEmpty { up.apiKey = .environment("OPENAI_API_KEY") }
        var cache = Cache()
        cache.path = Cache.defaultPath(environment: environment)
        return SidecarConfiguration(server: server, upstreams: [up], cache: cache)
    }
}

/// Where the daemon listens.
public enum ListenAddress: Sendable, Hashable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    /// `"127.0.0.1:8080"`, `"[::1]:8080"`, `"localhost:8080"`, `"0.0.0.0:8080"`, `"unix:/run/x.sock"`.
    public static func parse(_ text: String) -> ListenAddress? {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            return path.hasPrefix("/") ? .unix(path: path) : nil
        }
        guard let (host, port) = HostPort.split(text), let port, (0...65535).contains(port), !host.isEmpty else { return nil }
        return .tcp(host: host, port: port)
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): return "unix:\(path)"
        }
    }

    /// True for 127.0.0.0/8, ::1, localhost and unix sockets.
    public var isLoopback: Bool {
        switch self {
        case .unix: return true
        case .tcp(let host, _): return host == "localhost" || host == "::1" || host.hasPrefix("127.")
        }
    }
}

/// `https://api.openai.com`, `http://127.0.0.1:11434`, `https://example.com/openai` (a path prefix).
public struct UpstreamURL: Sendable, Hashable, CustomStringConvertible {
    public var tls: Bool
    public var host: String
    public var port: Int
    /// Prefix put before every forwarded path; "" for none. Never ends with "/".
    public var pathPrefix: String

    public init(tls: Bool, host: String, port: Int, pathPrefix: String = "") {
        self.tls = tls
        self.host = host
        self.port = port
        self.pathPrefix = pathPrefix
    }

    /// nil with a reason for anything that is not `http(s)://host[:port][/prefix]`.
    public static func parse(_ text: String) -> Result<UpstreamURL, URLProblem> {
        let tls: Bool
        var rest: Substring
        if text.hasPrefix("https://") { tls = true; rest = text.dropFirst(8) }
        else if text.hasPrefix("http://") { tls = false; rest = text.dropFirst(7) }
        else { return .failure(.init("must start with https:// or http://")) }
        var prefix = ""
        if let slash = rest.firstIndex(of: "/") {
            prefix = String(rest[slash...])
            rest = rest[..<slash]
            while prefix.hasSuffix("/") { prefix.removeLast() }
        }
        if prefix.contains("?") || prefix.contains("#") || rest.contains("@") {
            return .failure(.init("must not contain a query, a fragment or user info"))
        }
        guard let (host, port) = HostPort.split(String(rest)), !host.isEmpty else {
            return .failure(.init("has no host"))
        }
        if let port, !(1...65535).contains(port) { return .failure(.init("has an invalid port")) }
        let allowed = host.unicodeScalars.allSatisfy { $0.properties.isAlphabetic || ("0"..."9").contains($0) || "-.:".unicodeScalars.contains($0) }
        guard allowed else { return .failure(.init("has an invalid host \"\(host)\"")) }
        return .success(UpstreamURL(tls: tls, host: host, port: port ?? (tls ? 443 : 80), pathPrefix: prefix))
    }

    public struct URLProblem: Error, Equatable { public var reason: String; init(_ r: String) { reason = r } }

    /// The value of the `Host` header: the port only when it is not the scheme's default.
    public var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == (tls ? 443 : 80) ? h : "\(h):\(port)"
    }

    public var description: String { "\(tls ? "https" : "http")://\(hostHeader)\(pathPrefix)" }
}

enum HostPort {
    /// "host:port", "[v6]:port", "host" -> (host, port?); nil when malformed.
    static func split(_ text: String) -> (String, Int?)? {
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            let host = String(text[text.index(after: text.startIndex)..<close])
            let after = text[text.index(after: close)...]
            if after.isEmpty { return (host, nil) }
            guard after.hasPrefix(":"), let p = Int(after.dropFirst()) else { return nil }
            return (host, p)
        }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        if parts.count == 1 { return (text, nil) }
        guard parts.count == 2, let p = Int(parts[1]) else { return nil }
        return (String(parts[0]), p)
    }
}
