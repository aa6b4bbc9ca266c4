import Metrics
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import SidecarCore
import SidecarStore

/// The daemon's metrics, through swift-metrics into a Prometheus registry of its own (no global
/// bootstrap: every server, and every test, has its own). Labels are bounded: upstream name,
/// status class, error code, connection state. Never paths, keys or models sent by clients.
/// Metric objects are made once per label set, so the hot path touches only atomics and locks
/// inside the histograms.
final class SidecarMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let factory: PrometheusMetricsFactory
    /// Time the sidecar itself adds to a request: total minus the upstream exchange.
    let overhead: Metrics.Timer
    private let upstreams: LabeledFamily<UpstreamMetrics>
    /// `llm_sidecar_errors_total{code}`: failures the sidecar answered itself.
    private let errors: CounterFamily
    /// `x-sidecar-cache` of every proxied answer: hit, miss, coalesced, bypass.
    let cacheResults: [String: Metrics.Counter]
    let cacheMemoryBytes: Metrics.Meter
    let cacheMemoryEntries: Metrics.Meter
    let cacheDatabaseUp: Metrics.Meter
    let cacheDatabaseErrors: Metrics.Meter
    let cacheFlights: Metrics.Meter
    /// `llm_sidecar_cache_write_queue_bytes`: answers handed to the database thread and not yet
    /// written (their bytes plus a fixed overhead each); at `ResponseCache.maxQueuedBytes`,
    /// answers are no longer stored.
    let cacheWriteQueueBytes: Metrics.Meter
    /// `llm_sidecar_cache_reopened_total{reason}`: the database file was found removed or
    /// replaced and opened anew (see `CacheDatabase.reopenChangedFile`).
    let cacheReopened: [String: CounterFollowingTotal]
    /// `llm_sidecar_cache_store_skipped_total`: answers not stored because the database thread
    /// was too far behind (`ResponseCache.maxQueuedBytes` queued).
    let cacheStoreSkipped: CounterFollowingTotal
    /// `llm_sidecar_upstream_tokens_total{kind}` (prompt, completion) and
    /// `llm_sidecar_upstream_spent_usd_total`: the usage and cost of upstream answers, as the
    /// cache database records them for `llm-sidecar spend` (so only while the cache is on).
    private let upstreamTokens: [String: CounterFollowingTotal]
    private let upstreamSpent: Metrics.FloatingPointCounter
    private let upstreamSpentReported = NIOLockedValueBox(0.0)
    /// Refreshes the gauges that are read rather than counted (the cache's), before a scrape.
    let beforeRender = NIOLockedValueBox<[@Sendable () -> Void]>([])
    /// `llm_sidecar_routing_retries_total{reason}`: "connect", "connection", "status_NNN", "first_token".
    private let retries: CounterFamily
    /// `llm_sidecar_accept_errors_total{reason}`: failed `accept` calls on the listener, by
    /// `AcceptFailure.reason` (emfile, enfile, enobufs, enomem, econnaborted, other).
    private let acceptErrors: CounterFamily
    /// `llm_sidecar_provider_cache_tokens_total{deployment,kind}` (prompt, cached, cache_write)
    /// and `llm_sidecar_provider_cache_saved_usd_total{deployment}`: what the providers' prompt
    /// caches did for routed answers; `providerCacheTotals` keeps the same for `/stats`.
    private let providerCacheTokens: LabeledFamily<[String: Metrics.Counter]>
    private let providerCacheSaved: LabeledFamily<Metrics.FloatingPointCounter>
    private let providerCacheTally = NIOLockedValueBox<[String: ProviderCacheTally]>([:])
    /// `llm_sidecar_prompt_affinity_total{result}`: routed requests with a prompt prefix, by what
    /// happened to it (`new`, `kept`, `moved`: PrefixAffinity.Verdict).
    private let promptAffinityResults: CounterFamily
    /// `llm_sidecar_prompt_affinity_prefixes{group}`: prefixes in a group's affinity table.
    private let promptAffinityTable: MeterFamily
    private let deploymentInFlight: MeterFamily
    private let deploymentEjected: MeterFamily
    /// `llm_sidecar_unpriced_requests_total{outcome}`: requests for a model without a price under
    /// a budget, "rejected" or "allowed" (`budgets.unpriced`). The model is logged, not labelled.
    private let unpricedRequests: CounterFamily
    /// `llm_sidecar_unmetered_answers_total`: 2xx answers under a budget whose usage could not be
    /// read (cut short, or compressed), charged their whole reservation.
    private let unmeteredAnswers: Metrics.Counter
    /// `llm_sidecar_otel_spans_total{outcome}`: spans sent to the collector ("exported") or
    /// dropped (queue full, collector down or slow: "dropped").
    private let otelSpans: CounterFamily
    /// Unpriced models already logged (bounded: a client naming endless models cannot grow it).
    private let unpricedLogged = NIOLockedValueBox<Set<String>>([])
    /// The dashboard's tally and recent errors (`GET /stats/live`); the cache's verdicts reach it
    /// through `cacheResult`, as they reach Prometheus.
    let live = LiveStats()

    /// Counts an unpriced request; true the first time `model` is seen (the caller logs it then).
    func unpriced(_ outcome: String, model: String) -> Bool {
        unpricedRequests[outcome].increment()
        return unpricedLogged.withLockedValue { seen in
            guard seen.count < 1_000 else { return false }
            return seen.insert(model).inserted
        }
    }

    func unmeteredAnswer() { unmeteredAnswers.increment() }

    func otelSpansDropped(_ n: Int) { otelSpans["dropped"].increment(by: Int64(n)) }
    func otelSpansExported(_ n: Int) { otelSpans["exported"].increment(by: Int64(n)) }

    /// A deployment's in-flight requests and whether it is ejected (1) or not (0), by `UPSTREAM/MODEL`.
    func deployment(_ name: String, inFlight: Int, ejected: Bool) {
        deploymentInFlight[name].set(inFlight)
        deploymentEjected[name].set(ejected ? 1 : 0)
    }

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        // 100 µs to 10 min: sidecar overhead at the bottom, long generations at the top.
        factory.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
            .seconds(30), .seconds(60), .seconds(120), .seconds(300), .seconds(600),
        ]
        self.factory = factory
        overhead = Metrics.Timer(label: "llm_sidecar_overhead_seconds", factory: factory)
        var results: [String: Metrics.Counter] = [:]
        for r in ["hit", "miss", "coalesced", "bypass"] {
            results[r] = Metrics.Counter(label: "llm_sidecar_cache_requests_total", dimensions: [("result", r)], factory: factory)
        }
        cacheResults = results
        cacheMemoryBytes = Metrics.Meter(label: "llm_sidecar_cache_memory_bytes", factory: factory)
        cacheMemoryEntries = Metrics.Meter(label: "llm_sidecar_cache_memory_entries", factory: factory)
        cacheDatabaseUp = Metrics.Meter(label: "llm_sidecar_cache_database_up", factory: factory)
        cacheDatabaseErrors = Metrics.Meter(label: "llm_sidecar_cache_database_errors", factory: factory)
        cacheWriteQueueBytes = Metrics.Meter(label: "llm_sidecar_cache_write_queue_bytes", factory: factory)
        cacheFlights = Metrics.Meter(label: "llm_sidecar_cache_flights_in_progress", factory: factory)
        var reopened: [String: CounterFollowingTotal] = [:]
        for r in ["removed", "replaced"] {
            reopened[r] = CounterFollowingTotal(Metrics.Counter(label: "llm_sidecar_cache_reopened_total", dimensions: [("reason", r)], factory: factory))
        }
        cacheReopened = reopened
        cacheStoreSkipped = CounterFollowingTotal(Metrics.Counter(label: "llm_sidecar_cache_store_skipped_total", factory: factory))
        var tokens: [String: CounterFollowingTotal] = [:]
        for kind in ["prompt", "completion"] {
            tokens[kind] = CounterFollowingTotal(Metrics.Counter(label: "llm_sidecar_upstream_tokens_total", dimensions: [("kind", kind)], factory: factory))
        }
        upstreamTokens = tokens
        upstreamSpent = Metrics.FloatingPointCounter(label: "llm_sidecar_upstream_spent_usd_total", factory: factory)
        let built = factory
        upstreams = LabeledFamily { UpstreamMetrics(name: $0, factory: built) }
        errors = CounterFamily(label: "llm_sidecar_errors_total", dimension: "code", factory: factory)
        retries = CounterFamily(label: "llm_sidecar_routing_retries_total", dimension: "reason", factory: factory)
        acceptErrors = CounterFamily(label: "llm_sidecar_accept_errors_total", dimension: "reason", factory: factory)
        let f = factory  // a let, for the Sendable closures below
        providerCacheTokens = LabeledFamily { d in
            Dictionary(uniqueKeysWithValues: ["prompt", "cached", "cache_write"].map {
                ($0, Metrics.Counter(label: "llm_sidecar_provider_cache_tokens_total", dimensions: [("deployment", d), ("kind", $0)], factory: f))
            })
        }
        providerCacheSaved = LabeledFamily { Metrics.FloatingPointCounter(label: "llm_sidecar_provider_cache_saved_usd_total", dimensions: [("deployment", $0)], factory: f) }
        promptAffinityTable = MeterFamily(label: "llm_sidecar_prompt_affinity_prefixes", dimension: "group", factory: factory)
        promptAffinityResults = CounterFamily(label: "llm_sidecar_prompt_affinity_total", dimension: "result", factory: factory)
        deploymentInFlight = MeterFamily(label: "llm_sidecar_deployment_in_flight", dimension: "deployment", factory: factory)
        deploymentEjected = MeterFamily(label: "llm_sidecar_deployment_ejected", dimension: "deployment", factory: factory)
        unpricedRequests = CounterFamily(label: "llm_sidecar_unpriced_requests_total", dimension: "outcome", factory: factory)
        unmeteredAnswers = Metrics.Counter(label: "llm_sidecar_unmetered_answers_total", factory: factory)
        otelSpans = CounterFamily(label: "llm_sidecar_otel_spans_total", dimension: "outcome", factory: factory)
        for outcome in ["rejected", "allowed"] { _ = unpricedRequests[outcome] }  // exported at 0 from the start
        // Known reasons exported at 0 too, so a dashboard's rate() has a series before the first failure.
        for reason in ["emfile", "enfile", "enobufs", "enomem", "econnaborted", "other"] { _ = acceptErrors[reason] }
    }

    func cacheResult(_ label: String) {
        cacheResults[label]?.increment()
        live.cacheResult(label)
    }

    /// Moves `llm_sidecar_cache_reopened_total` on to the database's totals, by reason.
    func cacheReopened(totals: [String: Int]) {
        for (reason, n) in totals { cacheReopened[reason]?.follow(n) }
    }

    /// Moves `llm_sidecar_cache_store_skipped_total` on to the cache's total.
    func cacheStoreSkipped(total: Int) { cacheStoreSkipped.follow(total) }

    /// Moves the upstream token and dollar counters on to the cache's totals since the start.
    func upstreamSpend(total: ResponseCacheStore.Spend) {
        upstreamTokens["prompt"]?.follow(Int(total.promptTokens))
        upstreamTokens["completion"]?.follow(Int(total.completionTokens))
        upstreamSpentReported.withLockedValue { reported in
            guard total.usd > reported else { return }
            upstreamSpent.increment(by: total.usd - reported)
            reported = total.usd
        }
    }

    /// A routed answer's usage on deployment `name` (`UPSTREAM/MODEL`), and the dollars its
    /// cached input tokens saved.
    func providerCache(deployment name: String, usage: ResponseInspector.Usage, saved: Double) {
        let tokens = providerCacheTokens[name]
        tokens["prompt"]?.increment(by: usage.promptTokens)
        tokens["cached"]?.increment(by: usage.cachedTokens)
        tokens["cache_write"]?.increment(by: usage.cacheWriteTokens)
        if saved > 0 { providerCacheSaved[name].increment(by: saved) }
        providerCacheTally.withLockedValue { $0[name, default: .init()].add(usage, saved: saved) }
    }

    /// Per deployment, since the daemon started.
    var providerCacheTotals: [String: ProviderCacheTally] { providerCacheTally.withLockedValue { $0 } }

    func promptAffinityPrefixes(group: String, _ n: Int) { promptAffinityTable[group].set(n) }

    func promptAffinity(_ verdict: PrefixAffinity.Verdict) { promptAffinityResults[verdict.rawValue].increment() }

    /// An attempt moved to another deployment.
    func retry(_ reason: String) { retries[reason].increment() }

    /// The listener's `accept` failed (see `ListenerBackoffHandler`).
    func acceptError(_ reason: String) { acceptErrors[reason].increment() }

    func upstream(_ name: String) -> UpstreamMetrics { upstreams[name] }

    /// Counts a failure the sidecar answered itself, by its `error.code`.
    func error(_ code: String) { errors[code].increment() }

    /// The Prometheus text exposition.
    func render() -> [UInt8] {
        for refresh in beforeRender.withLockedValue({ $0 }) { refresh() }
        return registry.emitToBuffer()
    }
}

/// One metric (or set of metrics) per value of a label that is bounded but not known up front
/// (upstream and deployment names, error codes, retry reasons): made on first use, then reused.
final class LabeledFamily<M: Sendable>: Sendable {
    private let series = NIOLockedValueBox<[String: M]>([:])
    private let make: @Sendable (String) -> M

    init(make: @escaping @Sendable (String) -> M) { self.make = make }

    subscript(value: String) -> M {
        series.withLockedValue { all in
            if let m = all[value] { return m }
            let m = make(value)
            all[value] = m
            return m
        }
    }
}

typealias CounterFamily = LabeledFamily<Metrics.Counter>
typealias MeterFamily = LabeledFamily<Metrics.Meter>

extension LabeledFamily where M == Metrics.Counter {
    convenience init(label: String, dimension: String, factory: PrometheusMetricsFactory) {
        self.init { Metrics.Counter(label: label, dimensions: [(dimension, $0)], factory: factory) }
    }
}

extension LabeledFamily where M == Metrics.Meter {
    convenience init(label: String, dimension: String, factory: PrometheusMetricsFactory) {
        self.init { Metrics.Meter(label: label, dimensions: [(dimension, $0)], factory: factory) }
    }
}

/// The metrics of one upstream.
final class UpstreamMetrics: Sendable {
    private let requests: [Metrics.Counter]  // by status class, 1xx...5xx
    let duration: Metrics.Timer
    let firstByte: Metrics.Timer
    let streamFirstToken: Metrics.Timer
    let streamDuration: Metrics.Timer
    let connectionsOpen: Metrics.Meter
    let connectionsIdle: Metrics.Meter
    let connectionsCreated: Metrics.Counter
    let connectionsReused: Metrics.Counter
    let tlsHandshakes: Metrics.Counter
    let tlsResumed: Metrics.Counter
    /// Replays of a request whose reused keep-alive connection the server had closed.
    let staleConnectionRetries: Metrics.Counter

    private let name: String
    private let factory: PrometheusMetricsFactory

    init(name: String, factory: PrometheusMetricsFactory) {
        self.name = name
        self.factory = factory
        let u = [("upstream", name)]
        requests = (1...5).map { Metrics.Counter(label: "llm_sidecar_requests_total", dimensions: u + [("status_class", "\($0)xx")], factory: factory) }
        duration = Metrics.Timer(label: "llm_sidecar_request_duration_seconds", dimensions: u, factory: factory)
        firstByte = Metrics.Timer(label: "llm_sidecar_upstream_first_byte_seconds", dimensions: u, factory: factory)
        streamFirstToken = Metrics.Timer(label: "llm_sidecar_stream_first_token_seconds", dimensions: u, factory: factory)
        streamDuration = Metrics.Timer(label: "llm_sidecar_stream_duration_seconds", dimensions: u, factory: factory)
        connectionsOpen = Metrics.Meter(label: "llm_sidecar_upstream_connections", dimensions: u + [("state", "open")], factory: factory)
        connectionsIdle = Metrics.Meter(label: "llm_sidecar_upstream_connections", dimensions: u + [("state", "idle")], factory: factory)
        connectionsCreated = Metrics.Counter(label: "llm_sidecar_upstream_connections_created_total", dimensions: u, factory: factory)
        connectionsReused = Metrics.Counter(label: "llm_sidecar_upstream_connections_reused_total", dimensions: u, factory: factory)
        tlsHandshakes = Metrics.Counter(label: "llm_sidecar_tls_handshakes_total", dimensions: u + [("resumed", "false")], factory: factory)
        tlsResumed = Metrics.Counter(label: "llm_sidecar_tls_handshakes_total", dimensions: u + [("resumed", "true")], factory: factory)
        staleConnectionRetries = Metrics.Counter(label: "llm_sidecar_retries_total", dimensions: u + [("reason", "stale_connection")], factory: factory)
    }

    /// `llm_sidecar_upstream_health_check_up{upstream}` (1 up, 0 down or not yet checked) and
    /// `llm_sidecar_upstream_health_checks_total{upstream,result}` (`pass`, `fail`): made only for
    /// upstreams with a `health_check`, so an unchecked upstream does not read as down.
    func healthCheck() -> (up: Metrics.Meter, passed: Metrics.Counter, failed: Metrics.Counter) {
        let u = [("upstream", name)]
        return (Metrics.Meter(label: "llm_sidecar_upstream_health_check_up", dimensions: u, factory: factory),
                Metrics.Counter(label: "llm_sidecar_upstream_health_checks_total", dimensions: u + [("result", "pass")], factory: factory),
                Metrics.Counter(label: "llm_sidecar_upstream_health_checks_total", dimensions: u + [("result", "fail")], factory: factory))
    }

    func response(status: Int) {
        let i = min(max(status / 100, 1), 5) - 1
        requests[i].increment()
    }
}

/// A counter for something another part keeps a running total of (the database, the cache):
/// before each scrape it is moved on by what the total grew since.
final class CounterFollowingTotal: Sendable {
    private let counter: Metrics.Counter
    private let reported = NIOLockedValueBox(0)

    init(_ counter: Metrics.Counter) { self.counter = counter }

    func follow(_ total: Int) {
        reported.withLockedValue { reported in
            guard total > reported else { return }
            counter.increment(by: Int64(total - reported))
            reported = total
        }
    }
}
