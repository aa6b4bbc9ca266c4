import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore
import SidecarStore
import SidecarTLS
import Foundation

/// Cache: replaying a stored answer, and following an identical request in flight.
extension ProxyExchange {
    func countHit(_ cache: ResponseCache, _ answer: CachedAnswer) {
        cache.count(model: answer.model) { d in
            d.hits += 1
            d.bytesServed += Int64(answer.body.readableBytes)
            d.promptTokensSaved += answer.promptTokens
            d.completionTokensSaved += answer.completionTokens
        }
    }

    /// The SQLite lookup of a flight leader came back.
    func lookedUp(_ answer: CachedAnswer?, now: Int64) {
        guard machine.phase == .cacheLookup, let c = cacheState, let flight = c.flight else { return }
        if answer == nil, !c.sharedAsked, let tier = c.cache.sharedTier.withLockedValue({ $0 }) {
            // A local miss: the fleet's shared tier next (at most `shared_cache_timeout`, or
            // `coalesce_wait` following another node's identical request). Still a cache lookup
            // meanwhile: a client leaving is handled as during the SQLite lookup.
            cacheState?.sharedAsked = true
            let claim = !c.stream && tier.settings.coalesceWait > .zero
            let key = flight.key
            tier.find(key: key, scope: c.scope, claim: claim, on: downstream.eventLoop).assumeIsolated().whenSuccess { [self] entry in
                guard self.machine.phase == .cacheLookup, self.cacheState != nil else { return }
                self.lookedUp(entry.map { c.cache.adopt($0) }, now: entry == nil ? now : c.cache.clock())
            }
            return
        }
        traceCacheLookupEnded(answer == nil ? "miss" : "hit")
        if let answer {
            // Followers that joined meanwhile get the stored answer too.
            var headers = HTTPHeaders()
            Self.addReplayHeaders(answer, to: &headers)
            flight.publish(.head(HTTPResponseStatus(statusCode: answer.status), headers))
            flight.publish(.body(answer.body))
            flight.publish(.end)
            c.cache.endFlight(flight)
            cacheState = nil
            countHit(c.cache, answer)
            guard machine.lookupFinished(hit: true) == .replay else { return }  // detached: the followers have it
            return replay(answer, age: now - answer.createdAt)
        }
        cacheLabel = "miss"
        metrics.cacheResult("miss")
        c.cache.count(model: c.model) { $0.misses += 1 }
        _ = machine.lookupFinished(hit: false)
        if detached, flight.leaderLeft() {
            c.cache.endFlight(flight)
            cacheState = nil
            machine.end()
            return
        }
        lease(fresh: false)
    }

    /// Answers from memory: the stored status, content type and exact bytes.
    func replay(_ answer: CachedAnswer, age: Int64) {
        machine.answeredLocally()
        cacheLabel = "hit"
        metrics.cacheResult("hit")
        downstream.access.cache = "hit"
        var answer = answer
        if answer.isStream, var filter = usageFilter {
            // Stored with the usage chunk; this client did not ask for it.
            var bytes = filter.feed(answer.body.readableBytesView)
            bytes += filter.finish()
            answer.body = ByteBuffer(bytes: bytes)
        } else {
            // The stored bytes as they are: the prepared head, our two headers, the body, in one
            // writev past the HTTP encoder.
            var head = answer.headPrefix
            head.writeString("x-sidecar-cache: hit\r\nage: \(max(0, age))\r\n")
            head.writeString(downstream.keepAlive ? "\r\n" : "connection: close\r\n\r\n")
            if downstream.writePreparedResponse(status: answer.status, head: head, body: answer.body) { return }
        }
        var headers = HTTPHeaders()
        Self.addReplayHeaders(answer, to: &headers)
        headers.add(name: "x-sidecar-cache", value: "hit")
        headers.add(name: "age", value: String(max(0, age)))
        if !downstream.keepAlive { headers.add(name: "connection", value: "close") }
        downstream.writeResponseHead(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: answer.status), headers: headers))
        downstream.writeResponseBody(answer.body)
        downstream.finishResponse(trailers: nil)
    }

    static func addReplayHeaders(_ answer: CachedAnswer, to headers: inout HTTPHeaders) {
        if let type = answer.contentType { headers.add(name: "content-type", value: type) }
        headers.add(name: "content-length", value: String(answer.body.readableBytes))
    }

    // MARK: following an identical request

    func follow(_ flight: Flight, cache: ResponseCache, model: String) {
        let bound = NIOLoopBound(self, eventLoop: downstream.eventLoop)
        let loop: EventLoop = downstream.eventLoop
        cacheLabel = "coalesced"
        downstream.access.cache = "coalesced"
        machine.followStarted()
        followed = (flight, -1)
        let joined = flight.join({ events in loop.execute { bound.value.flightEvents(events) } })
        if joined == -1 {
            // The answer was complete (and is being stored) when we joined: a hit, not a shared call.
            cacheLabel = "hit"
            downstream.access.cache = "hit"
            metrics.cacheResult("hit")
            // Saved what any hit saves (a hit from the store counts the same from its entry).
            let answer = flight.recordedAnswer
            let usage = answer.flatMap { ResponseInspector.usage(body: $0.body, isStream: $0.isStream) }
            cache.count(model: model) { d in
                d.hits += 1
                d.bytesServed += Int64(answer?.body.count ?? 0)
                d.promptTokensSaved += usage?.promptTokens ?? 0
                d.completionTokensSaved += usage?.completionTokens ?? 0
            }
            cache.touch(flight.key, now: cache.clock())
            return
        }
        guard let id = joined else {
            // The leader's answer outgrew what is kept for late joiners: go on our own.
            cacheLabel = "miss"
            downstream.access.cache = "miss"
            metrics.cacheResult("miss")
            cache.count(model: model) { $0.misses += 1 }
            machine.followAbandoned()
            followed = nil
            return lease(fresh: false)
        }
        metrics.cacheResult("coalesced")
        if machine.isFollowing { followed = (flight, id) }
    }

    /// The leader's answer, as it arrives (on this request's loop).
    func flightEvents(_ events: [Flight.Event]) {
        guard machine.isFollowing else { return }
        for event in events {
            switch event {
            case .head(let status, var headers):
                machine.followedHeadSent()
                if cacheLabel == "hit", !(200..<300).contains(Int(status.code)) { cacheLabel = "coalesced" }  // an error is never a hit
                headers.replaceOrAdd(name: "x-sidecar-cache", value: cacheLabel)
                if !downstream.keepAlive { headers.replaceOrAdd(name: "connection", value: "close") }
                if !(headers.first(name: "content-type")?.hasPrefix("text/event-stream") ?? false) { usageFilter = nil }
                if usageFilter != nil { headers.remove(name: "content-length") }
                downstream.writeResponseHead(HTTPResponseHead(version: .http1_1, status: status, headers: headers))
            case .body(let buffer):
                writeFiltered(buffer)
            case .end:
                followed = nil
                machine.end()
                flushFilter()
                downstream.finishResponse(trailers: nil)
                return
            case .failed(let error):
                followed = nil  // the flight is over: nothing to leave
                fail(error)
                return
            case .aborted:
                followed = nil
                machine.end()
                downstream.abortResponse()
                return
            case .withdrawn:
                // The leader was refused for a reason of its own: this request goes on alone.
                followed = nil
                machine.followAbandoned()
                cacheLabel = "miss"
                downstream.access.cache = "miss"
                return lease(fresh: false)
            }
        }
        downstream.flush()
    }
}
