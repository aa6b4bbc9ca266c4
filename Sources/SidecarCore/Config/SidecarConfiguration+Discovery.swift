import NIOCore

extension SidecarConfiguration {
    /// `[upstreams.NAME] discover = "dns"`: the URL's host names a set of servers, not one. Each
    /// address it resolves to is a member of every `[[models]]` deployment on this upstream,
    /// re-resolved on the answer's TTL (docs/routing.md, "Deployments found by DNS").
    public struct Discovery: Sendable, Equatable {
        /// Shortest wait between two queries, whatever the TTL says (Consul answers with TTL 0 by
        /// default). Also the retry delay after a failure. Default 5 s.
        public var minTTL: TimeAmount = .seconds(5)
        /// Longest wait between two queries, whatever the TTL says, so a removed server is
        /// noticed within this long. Default 300 s.
        public var maxTTL: TimeAmount = .seconds(300)
        /// An address that joins after the first answer ramps from 10 % to its full weight over
        /// this long ("0s": at once). Default 30 s.
        public var slowStart: TimeAmount = .seconds(30)
        public init() {}
    }
}

/// The keys of `[upstreams.NAME]` that belong to discovery (every one optional but `discover`).
struct RawDiscovery {
    var discover: String?
    var dns_min_ttl: String?
    var dns_max_ttl: String?
    var slow_start: String?

    /// nil without `discover`; the located error for a TTL key set without it, an unknown
    /// mechanism, a URL host that is already an address, or bounds that contradict each other.
    func validate(at base: [String], url: UpstreamURL, fail: ([String], String) -> ConfigurationError) throws(ConfigurationError) -> SidecarConfiguration.Discovery? {
        guard let discover else {
            for (key, value) in [("dns_min_ttl", dns_min_ttl), ("dns_max_ttl", dns_max_ttl), ("slow_start", slow_start)] where value != nil {
                throw fail(base + [key], "only applies with discover = \"dns\"")
            }
            return nil
        }
        guard discover == "dns" else { throw fail(base + ["discover"], "must be \"dns\", got \"\(discover)\"") }
        guard !Self.isAddress(url.host) else {
            throw fail(base + ["discover"], "the URL's host \(url.host) is an address; discovery needs a name to resolve")
        }
        var d = SidecarConfiguration.Discovery()
        func duration(_ text: String?, _ key: String, _ def: TimeAmount, least: TimeAmount) throws(ConfigurationError) -> TimeAmount {
            guard let text else { return def }
            guard let v = DurationText.parse(text) else { throw fail(base + [key], "\"\(text)\" is not a duration (write e.g. \"5s\", \"5m\")") }
            guard v >= least else { throw fail(base + [key], "must be at least \(DurationText.format(least)), got \"\(text)\"") }
            return v
        }
        d.minTTL = try duration(dns_min_ttl, "dns_min_ttl", d.minTTL, least: .milliseconds(100))
        d.maxTTL = try duration(dns_max_ttl, "dns_max_ttl", d.maxTTL, least: .milliseconds(100))
        guard d.minTTL <= d.maxTTL else {
            throw fail(base + [dns_max_ttl != nil ? "dns_max_ttl" : "dns_min_ttl"],
                       "dns_min_ttl (\(DurationText.format(d.minTTL))) is longer than dns_max_ttl (\(DurationText.format(d.maxTTL)))")
        }
        d.slowStart = try duration(slow_start, "slow_start", d.slowStart, least: .zero)
        return d
    }

    /// An IPv4 dotted quad or anything with a colon (an IPv6 literal).
    static func isAddress(_ host: String) -> Bool {
        if host.contains(":") { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
    }
}

/// `[server] dns_resolver = "HOST:PORT"`: where discovery queries go.
enum DNSResolverAddress {
    static func parse(_ text: String) -> (host: String, port: Int)? {
        guard let (host, port) = HostPort.split(text), RawDiscovery.isAddress(host) else { return nil }
        return (host, port ?? 53)
    }
}
