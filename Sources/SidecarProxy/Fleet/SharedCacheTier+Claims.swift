import NIOConcurrencyHelpers
import NIOCore
import SidecarCore

/// Cross-node coalescing: waiting for another node's claimed key, and this node's own claims.
extension SharedCacheTier {
    // MARK: waiting for another node

    /// Completes when a notification for `key` arrives (or arrived since `since`), or after
    /// `coalesce_wait`, whichever is first.
    func wait(for key: CacheKey, since: NIODeadline? = nil, on loop: EventLoop) -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Void.self)
        let id: Int? = state.withLockedValue { s in
            if s.stopped { return nil }
            if let since, let at = s.recent[key], at >= since { return nil }
            let id = s.nextWaiter
            s.nextWaiter += 1
            s.waiters[key, default: [:]][id] = promise
            return id
        }
        guard let id else {
            promise.succeed(())
            return promise.futureResult
        }
        let timer = loop.scheduleTask(in: settings.coalesceWait) { [self] in
            let p = state.withLockedValue { s -> EventLoopPromise<Void>? in
                let p = s.waiters[key]?.removeValue(forKey: id)
                if s.waiters[key]?.isEmpty ?? false { s.waiters.removeValue(forKey: key) }
                return p
            }
            p?.succeed(())
        }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        return promise.futureResult
    }

    /// Wakes every waiter (they look up once more, without a claim).
    func wakeAll() {
        let waiting = state.withLockedValue { s -> [EventLoopPromise<Void>] in
            defer { s.waiters = [:] }
            return s.waiters.values.flatMap { $0.values }
        }
        waiting.forEach { $0.succeed(()) }
    }

    /// A key was stored or released by some node.
    func notified(_ bytes: [UInt8]) {
        guard bytes.count == 32 else { return }
        let key = CacheKey(digest: bytes)
        let now = NIODeadline.now()
        let waiting = state.withLockedValue { s -> [EventLoopPromise<Void>] in
            if s.recent.count >= Self.recentNotices {
                let cutoff = now - .seconds(5)
                s.recent = s.recent.filter { $0.value >= cutoff }
                if s.recent.count >= Self.recentNotices { s.recent.removeAll() }
            }
            s.recent[key] = now
            return s.waiters.removeValue(forKey: key).map { Array($0.values) } ?? []
        }
        waiting.forEach { $0.succeed(()) }
    }

    // MARK: claims

    func settleClaim(_ key: CacheKey, leader: Bool) {
        let release = state.withLockedValue { s -> Bool in
            let claim = s.claims[key]
            if leader {
                // Still ours to answer, unless the flight is over already (or was written behind).
                if claim == .asking {
                    s.claims[key] = .held
                    return false
                }
                if claim == .ended { s.claims.removeValue(forKey: key) }
                return claim == .ended || claim == nil
            }
            if claim == .asking || claim == .ended { s.claims.removeValue(forKey: key) }
            return false
        }
        if release { self.release(key) }
    }

    /// The local flight for `key` is over: a claim still held (nothing was written behind) is
    /// released, so followers on other nodes stop waiting.
    func flightEnded(_ key: CacheKey) {
        let release = state.withLockedValue { s -> Bool in
            switch s.claims[key] {
            case .held?:
                s.claims.removeValue(forKey: key)
                return true
            case .asking?:
                s.claims[key] = .ended
                return false
            case .ended?, nil:
                return false
            }
        }
        if release { self.release(key) }
    }

    func release(_ key: CacheKey) {
        Task { [database, logger] in
            do { try await database.release(key: key.bytes) } catch {
                logger.debug("shared cache claim not released", metadata: ["reason": "\(error)"])
            }
        }
    }

    var claimsHeld: Int { state.withLockedValue { $0.claims.count } }
}
