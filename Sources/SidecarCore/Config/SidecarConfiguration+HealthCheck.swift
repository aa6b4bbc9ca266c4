import NIOCore

extension SidecarConfiguration {
    /// `[upstreams.NAME] health_check = { path, interval, timeout, healthy, unhealthy }`: a probe
    /// sent to the upstream every `interval`, so a deployment that stopped answering is taken out
    /// of its groups before a client request finds out, and put back once it answers again
    /// (docs/routing.md, "Active health checks"). Off unless the table is present.
    public struct HealthCheck: Sendable, Equatable {
        /// `GET` this path from the upstream's host root (the URL's path prefix is not added, so
        /// vLLM's and llama.cpp's `/health` and Ollama's `/` work as they are). Default `/health`.
        public var path: String = "/health"
        /// Between the end of one probe and the start of the next. Default 10 s.
        public var interval: TimeAmount = .seconds(10)
        /// Connect, TLS and answer together; longer counts as a failure. Default 2 s.
        public var timeout: TimeAmount = .seconds(2)
        /// Consecutive passing probes that bring a down upstream back. Default 2.
        public var healthy: Int = 2
        /// Consecutive failing probes that take an up upstream out. Default 2.
        public var unhealthy: Int = 2
        public init() {}
    }
}

/// The TOML shape of `health_check` (every key optional; defaults in `HealthCheck`).
struct RawHealthCheck: Decodable {
    var path: String?
    var interval: String?
    var timeout: String?
    var healthy: Int?
    var unhealthy: Int?

    /// Validates against the limits an operator could mean: thresholds 1...100 and a timeout
    /// shorter than the interval (a probe still running when the next is due means the interval
    /// is too short to say anything). `fail` turns a key and a problem into the located error.
    func validate(at base: [String], fail: ([String], String) -> ConfigurationError) throws(ConfigurationError) -> SidecarConfiguration.HealthCheck {
        var check = SidecarConfiguration.HealthCheck()
        if let path {
            guard path.hasPrefix("/"), !path.contains(where: { $0 == " " || $0 == "\r" || $0 == "\n" || $0 == "\t" }) else {
                throw fail(base + ["path"], "\"\(path)\" must be an absolute path without spaces (e.g. \"/health\")")
            }
            check.path = path
        }
        func duration(_ text: String?, _ key: String, _ def: TimeAmount) throws(ConfigurationError) -> TimeAmount {
            guard let text else { return def }
            guard let d = DurationText.parse(text) else {
                throw fail(base + [key], "\"\(text)\" is not a duration (write e.g. \"250ms\", \"10s\")")
            }
            guard d >= .milliseconds(10) else { throw fail(base + [key], "must be at least 10ms, got \"\(text)\"") }
            return d
        }
        check.interval = try duration(interval, "interval", check.interval)
        check.timeout = try duration(timeout, "timeout", check.timeout)
        guard check.timeout <= check.interval else {
            throw fail(base + ["timeout"], "must not be longer than interval (\(DurationText.format(check.interval)))")
        }
        for (key, value) in [("healthy", healthy), ("unhealthy", unhealthy)] {
            if let value, !(1...100).contains(value) { throw fail(base + [key], "must be between 1 and 100, got \(value)") }
        }
        check.healthy = healthy ?? check.healthy
        check.unhealthy = unhealthy ?? check.unhealthy
        return check
    }
}
