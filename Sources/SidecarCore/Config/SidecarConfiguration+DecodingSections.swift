import NIOCore

/// The `[otel]`, `[[models]]` prompt-cache, `[cache]` and `[prices]` sections of the configuration.
extension Validator {
    func otel(_ ro: RawConfiguration.RawOTel) throws(ConfigurationError) -> SidecarConfiguration.OTel {
        let base = ["otel"]
        guard let text = ro.endpoint else { throw fail(base + ["endpoint"], "is required (e.g. \"http://127.0.0.1:4318\", an OpenTelemetry Collector)") }
        guard case .success(var url) = UpstreamURL.parse(text) else { throw fail(base + ["endpoint"], "\"\(text)\" is not an http:// URL") }
        guard !url.tls else {
            throw fail(base + ["endpoint"], "https:// is not supported: spans go to a collector on this host or network over http:// (an OpenTelemetry Collector forwards them on with TLS)")
        }
        if url.pathPrefix.isEmpty { url.pathPrefix = "/v1/traces" }
        var o = SidecarConfiguration.OTel(endpoint: url)
        if let name = ro.service_name {
            guard !name.isEmpty else { throw fail(base + ["service_name"], "must not be empty") }
            o.serviceName = name
        }
        o.captureContent = ro.capture_content ?? false
        o.maxQueueSpans = try positive(ro.max_queue_spans, base + ["max_queue_spans"], default: o.maxQueueSpans, max: 1_000_000)
        o.exportInterval = try duration(ro.export_interval, base + ["export_interval"], default: o.exportInterval)
        return o
    }

    /// A group's `prompt_cache_*` options (docs/routing.md, "Prompt-cache affinity").
    func promptCache(_ rm: RawConfiguration.RawModel, into group: inout SidecarConfiguration.ModelGroup) throws(ConfigurationError) {
        let base = ["models"]
        var affinity = PrefixAffinity.Configuration()
        affinity.ttl = try duration(rm.prompt_cache_ttl, base + ["prompt_cache_ttl"], default: affinity.ttl)
        if let f = rm.prompt_cache_load_factor?.value {
            guard f >= 1, f <= 100 else { throw fail(base + ["prompt_cache_load_factor"], "must be between 1 and 100, got \(f)") }
            affinity.loadFactor = f
        }
        if let p = rm.prompt_cache_placement {
            guard let placement = PrefixAffinity.Placement(rawValue: p) else {
                throw fail(base + ["prompt_cache_placement"], "\"\(p)\" is not a placement; write \"least-connections\" or \"hash\"")
            }
            affinity.placement = placement
        }
        group.promptCacheMinimumTokens = try positive(rm.prompt_cache_min_tokens, base + ["prompt_cache_min_tokens"], default: group.promptCacheMinimumTokens, max: 1_000_000)
        group.promptCache = rm.prompt_cache_affinity == false ? nil : affinity
    }

    func cache(_ rc: RawConfiguration.RawCache?) throws(ConfigurationError) -> SidecarConfiguration.Cache {
        var cache = SidecarConfiguration.Cache()
        let base = ["cache"]
        if let mode = rc?.mode {
            guard let m = CachePolicy.Mode(rawValue: mode) else { throw fail(base + ["mode"], "must be \"deterministic\", \"all\" or \"off\"") }
            cache.mode = m
        }
        if let scope = rc?.scope {
            guard let s = SidecarConfiguration.Cache.Scope(rawValue: scope) else { throw fail(base + ["scope"], "must be \"client\" or \"shared\"") }
            cache.scope = s
        }
        if let path = rc?.path {
            guard path.hasPrefix("/") else { throw fail(base + ["path"], "must be an absolute path") }
            cache.path = path
        } else {
            cache.path = SidecarConfiguration.Cache.defaultPath(environment: environment)
        }
        cache.ttlSeconds = try positive(rc?.ttl_seconds, base + ["ttl_seconds"], default: cache.ttlSeconds)
        cache.maxBytes = Int64(try positive(rc?.max_bytes, base + ["max_bytes"], default: Int(cache.maxBytes)))
        if let m = rc?.memory_bytes {
            guard m >= 0 else { throw fail(base + ["memory_bytes"], "must be 0 (off) or more") }
            cache.memoryBytes = m
        }
        cache.maxEntryBytes = try positive(rc?.max_entry_bytes, base + ["max_entry_bytes"], default: cache.maxEntryBytes)
        return cache
    }

    func prices(_ raw: [String: RawConfiguration.RawPrice]?) throws(ConfigurationError) -> [String: PriceTable.Price] {
        var out: [String: PriceTable.Price] = [:]
        for (model, p) in raw ?? [:] {
            let base = ["prices", model]
            guard let input = p.input_per_mtok?.value, let output = p.output_per_mtok?.value else {
                throw fail(base, "needs both input_per_mtok and output_per_mtok (US dollars per million tokens)")
            }
            let cached = p.cached_input_per_mtok?.value, write = p.cache_write_per_mtok?.value
            guard [input, output, cached ?? 0, write ?? 0].allSatisfy({ $0 >= 0 && $0.isFinite }) else { throw fail(base, "prices must be 0 or more") }
            out[model] = PriceTable.Price(inputPerMTok: input, outputPerMTok: output, cachedInputPerMTok: cached, cacheWritePerMTok: write)
        }
        return out
    }
}
