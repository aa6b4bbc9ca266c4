import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore
import SidecarStore
import SidecarTLS
import Foundation

/// Admit: the whole body is here (or not needed); key it, and look it up, follow, or go upstream.
extension ProxyExchange {
    // MARK: phases

    /// Asks the pool for a connection (the grant may arrive before this returns), or, for a
    /// cache candidate, waits for the whole body first.
    func start() {
        if listModelsIfNeeded() { return }
        guard machine.start() else { return }  // the whole body first
        lease(fresh: false)
    }

    /// The fleet admitted the request (`[fleet]` client limit): it goes on where it waited.
    func admitted() {
        admissionPending = false
        guard !machine.isFinished else { return }
        let leaseWaited = leaseDeferred
        leaseDeferred = false
        start()
        if decideDeferred {
            decideDeferred = false
            decide()
        } else if leaseWaited, machine.phase == .choosingDeployment {
            lease(fresh: false)  // a body too large to key began to stream while it waited
        }
    }

    /// The whole body is here: look it up, follow an identical request, or go upstream.
    func decide() {
        if admissionPending {
            decideDeferred = true
            return
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(bodyBytes)
        for part in body { bytes += part.readableBytesView }
        if budget != nil, clientHead.method == .POST {
            // The whole body, as the upstream will read it, prices the reservation (never a sniff
            // of the first read: the model may come after a long `messages`).
            switch PricedRequest.read(bytes) {
            case .success(let priced):
                requestModel = priced.model ?? APIDialect.modelInPath(Self.barePath(clientHead.uri))
                requestMaxTokens = priced.maxTokens
                if downstream.accessLogOn { downstream.access.model = priced.model }
            case .failure:
                cacheState = nil
                return fail(.badRequest("the request body is not strict JSON (a repeated key, or a value the sidecar cannot read), so its cost cannot be reserved against [budgets]; it was not sent"))
            }
        } else if requestModel == nil, accounting != nil || downstream.accessLogOn || span != nil {
            requestModel = Self.topLevelString("model", in: bytes) ?? APIDialect.modelInPath(Self.barePath(clientHead.uri))
            if downstream.accessLogOn { downstream.access.model = requestModel }
        }
        traceDecided(bytes)
        var parsedOnce: CanonicalJSON.Value??  // parsed for the prompt prefix, kept for the cache key
        if !routes.isEmpty {
            let model = Self.topLevelString("model", in: bytes)
            if let model, let r = routes[model] {
                // A group of another dialect would get a body it cannot read (an `openai` group
                // may serve Anthropic requests: before `api` existed, that was how it was done).
                if let served = r.upstreams.first?.configuration.api, served != dialect, !(served == .openai && dialect == .anthropic) {
                    cacheState = nil
                    return fail(.dialectMismatch(model: model, group: served, request: dialect))
                }
                route = r
                if Self.barePath(clientHead.uri) == "/v1/responses" {
                    previousResponseID = Self.topLevelString("previous_response_id", in: bytes)
                    remembersResponseID = true
                }
                if r.group.promptCache != nil, r.hasSeveralMembers,
                   bytes.count >= r.group.promptCacheMinimumTokens * 4 || JSONTopLevel.value(of: "prompt_cache_key", in: bytes) != nil {
                    // Only a body long enough to pass the provider's minimum (or naming its cache) is parsed.
                    let parsed = CanonicalJSON.parse(bytes)
                    parsedOnce = .some(parsed)
                    promptPrefix = parsed.flatMap {
                        PromptPrefix.of($0, path: Self.barePath(clientHead.uri), group: r.group.name, minimumTokens: r.group.promptCacheMinimumTokens)
                    }
                }
                if r.group.firstTokenTimeout != nil, let v = JSONTopLevel.value(of: "stream", in: bytes) {
                    wantsStream = bytes[v].elementsEqual("true".utf8)
                }
                downstream.access.model = model
            } else if let defaultGroup {
                target(defaultGroup)
            } else {
                cacheState = nil
                return fail(.modelNotFound(model))
            }
        }
        if accounting != nil || budget != nil, APIDialect.isChatCompletions(Self.barePath(clientHead.uri)),
           let stream = JSONTopLevel.value(of: "stream", in: bytes), bytes[stream].elementsEqual("true".utf8) {
            let options = JSONTopLevel.value(of: "stream_options", in: bytes)
            let asked = options.flatMap { CanonicalJSON.parse(Array(bytes[$0])) }?["include_usage"] == .bool(true)
            if !asked { usageFilter = SSEUsageFilter() }
            if options == nil, let open = bytes.firstIndex(of: UInt8(ascii: "{")) {
                // Ask for the usage chunk, so this stream can be accounted for.
                var injected = bytes
                injected.insert(contentsOf: Array(#""stream_options":{"include_usage":true}"#.utf8) + (bytes[(open + 1)...].contains { $0 != 0x20 && $0 != 0x0A && $0 != 0x0D && $0 != 0x09 && $0 != UInt8(ascii: "}") } ? [UInt8(ascii: ",")] : []), at: open + 1)
                body = [ByteBuffer(bytes: injected)]
                bodyBytes = injected.count
                bodyRewritten = true
            }
        }
        guard var c = cacheState else { return lease(fresh: false) }
        let policy = CachePolicy(mode: c.settings.mode, defaultTTL: c.settings.ttlSeconds)
        if policy.certainlySampled(path: Self.barePath(c.path), body: bytes) {
            cacheState = nil
            metrics.cacheResult("bypass")
            // The model was read above (the cache is the accounting): not scanned for again.
            c.cache.count(model: requestModel ?? "-") { $0.bypasses += 1 }
            return lease(fresh: false)
        }
        let parsed = parsedOnce ?? CanonicalJSON.parse(bytes)
        if case .string(let m)? = parsed?["model"] { c.model = m } else if let m = APIDialect.modelInPath(Self.barePath(c.path)) { c.model = m }
        let decision = policy
            .decide(method: c.method, path: Self.barePath(c.path), body: parsed, cacheControl: c.cacheControl, ttlHeader: c.ttlHeader)
        let ttl: Int
        let lookup: Bool
        switch decision {
        case .bypass:
            cacheState = nil
            metrics.cacheResult("bypass")
            c.cache.count(model: c.model) { $0.bypasses += 1 }
            return lease(fresh: false)
        case .storeOnly(let t): (ttl, lookup) = (t, false)
        case .lookupAndStore(let t): (ttl, lookup) = (t, true)
        }
        c.scope = downstream.cacheScope(of: c.headers, shared: c.settings.scope == .shared)
        let vary = CanonicalRequest.varyingHeaders(of: c.headers)
        guard let parsed, let material = CanonicalRequest.keyMaterial(
            method: c.method, path: c.path, modelGroup: c.model, scope: c.scope, vary: vary, parsed: parsed) else {
            cacheState = nil
            metrics.cacheResult("bypass")
            c.cache.count(model: c.model) { $0.bypasses += 1 }  // /stats counts what /metrics counts
            return lease(fresh: false)
        }
        let key = CacheKey(digest: SHA256.hash(material))
        c.key = key
        c.ttl = ttl
        c.stream = parsed["stream"] == .bool(true) || Self.barePath(c.path).hasSuffix(":streamGenerateContent")
        downstream.access.cacheKey = key
        let now = c.cache.clock()
        if lookup { traceCacheLookupStarted() }
        if lookup, let answer = c.cache.hotLookup(key, now: now) {
            traceCacheLookupEnded("hit")
            cacheState = nil
            countHit(c.cache, answer)
            return replay(answer, age: now - answer.createdAt)
        }
        if !lookup {
            // `Cache-Control: no-cache`: a fresh answer, recorded for the store, shared with nobody.
            c.flight = Flight(key: key, maxBytes: c.settings.maxEntryBytes)
            cacheState = c
            cacheLabel = "miss"
            metrics.cacheResult("miss")
            c.cache.count(model: c.model) { $0.misses += 1 }
            return lease(fresh: false)
        }
        switch c.cache.flight(for: key) {
        case .follower(let flight):
            traceCacheLookupEnded("coalesced")
            cacheState = nil
            follow(flight, cache: c.cache, model: c.model)
        case .leader(let flight):
            c.flight = flight
            c.registered = true
            cacheState = c
            machine.cacheLookupStarted()
            // A key the database certainly does not hold: a miss now, no trip to SQLite's thread.
            guard c.cache.mayBeStored(key) else { return lookedUp(nil, now: now) }
            c.cache.diskLookup(key, now: now, on: downstream.eventLoop).assumeIsolated().whenSuccess { [self] answer in
                self.lookedUp(answer, now: now)
            }
        }
    }
}
