import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore
import SidecarStore
import SidecarTLS
import Foundation

/// Choosing a deployment: weighted least-connections, waits, retries elsewhere, the model rewrite.
extension ProxyExchange {
    // MARK: routing

    /// The value of a top-level string member without escapes (model names have none).
    static func topLevelString(_ key: StaticString, in bytes: [UInt8]) -> String? {
        guard let range = JSONTopLevel.value(of: key, in: bytes) else { return nil }
        let raw = bytes[range]
        guard raw.count >= 2, raw.first == UInt8(ascii: "\""), raw.last == UInt8(ascii: "\""), !raw.contains(UInt8(ascii: "\\")) else { return nil }
        return String(decoding: raw.dropFirst().dropLast(), as: UTF8.self)
    }

    /// Takes a deployment of the request's group, else of its fallbacks in order, and aims the
    /// request at it: its upstream, and the body's `model` rewritten to the deployment's, every
    /// other byte unchanged. False (and answered 429) when all are full or ejected.
    func bindDeployment() -> Bool {
        guard let route else { return true }
        if let (r, i) = nextDeployment() {
            install(r, i)
            return true
        }
        // Full everywhere: wait in the group's queue for the first deployment with room.
        let bound = NIOLoopBound(self, eventLoop: downstream.eventLoop)
        switch route.acquireOrWait(loop: downstream.eventLoop, tokens: needsTokens(route) ? estimatedTokens : 0,
                                   grant: { i in bound.value.deploymentGranted(route, i) }) {
        case .acquired(let i):
            install(route, i)
            return true
        case .queued(let id):
            let timer = downstream.eventLoop.assumeIsolated().scheduleTask(in: route.group.queueTimeout) { [self] in
                guard self.machine.phase == .waitingForDeployment, let wait = self.deploymentWait, wait.route.cancel(waiter: wait.id) else { return }
                self.deploymentWait = nil  // left the queue: nothing more to give up
                self.fail(.deploymentsBusy(wait.route.group.name))
            }
            deploymentWait = (route, id, timer)
            machine.queuedForDeployment()
            return false
        case .refused:
            // Out of rate everywhere (rpm/tpm): wait for the first deployment to have room again,
            // within queue_timeout; else 429.
            let deadline = rateWaitDeadline ?? NIODeadline.now() + route.group.queueTimeout
            rateWaitDeadline = deadline
            if let wait = route.rateLimitWait(tokens: needsTokens(route) ? estimatedTokens : 0), NIODeadline.now() + wait <= deadline {
                waitThenLease(wait)
                return false
            }
            fail(.deploymentsBusy(route.group.name))
            return false
        }
    }

    /// A queued request got a deployment (on this loop).
    func deploymentGranted(_ r: ModelRoute, _ i: Int) {
        guard machine.deploymentGranted() else {
            r.release(i, .neutral)  // we left meanwhile: give it to the next one
            return
        }
        deploymentWait?.timer.cancel()
        deploymentWait = nil
        install(r, i)
        if let p = promptPrefix, r === route { r.learn(p, deployment: i) }
        if let c = charged { charged = (c.route, c.index, 0) }  // a granted slot charged no tokens
        lease(fresh: false)
    }


    static func maxTokens(in bytes: [UInt8]) -> Int? {
        for range in [JSONTopLevel.value(of: "max_tokens", in: bytes), JSONTopLevel.value(of: "max_completion_tokens", in: bytes),
                      JSONTopLevel.value(of: "max_output_tokens", in: bytes)] {
            if let r = range, let n = Int(String(decoding: bytes[r], as: UTF8.self)) { return n }
        }
        return nil
    }

    /// Pause before trying another deployment: full jitter, 50 ms doubling to 2 s.
    static let retryBackoff = Backoff(base: .milliseconds(50), cap: .seconds(2))

    /// A slot on a deployment not tried yet: the group's, then its fallbacks' in order.
    func nextDeployment() -> (ModelRoute, Int)? {
        guard let route else { return nil }
        let tokens = needsTokens(route) ? estimatedTokens : 0
        let home = previousResponseID.flatMap { route.deployment(ofResponse: $0) }
        if let (i, verdict) = route.acquire(excluding: excluded(route), tokens: tokens, prefer: home, prefix: promptPrefix) {
            if let verdict { metrics.promptAffinity(verdict) }
            return (route, i)
        }
        for name in route.group.fallbacks {
            // The prefix names its group: another group's deployments hold none of it.
            guard let r = routes[name] else { continue }
            if let (i, _) = r.acquire(excluding: excluded(r), tokens: needsTokens(r) ? estimatedTokens : 0) { return (r, i) }
        }
        return nil
    }

    func needsTokens(_ r: ModelRoute) -> Bool { r.group.deployments.contains { $0.tpm != nil } }

    func excluded(_ r: ModelRoute) -> Set<Int> {
        if tried.isEmpty { return [] }
        let id = ObjectIdentifier(r)
        return Set(tried.lazy.filter { $0.group == id }.map(\.index))
    }

    func install(_ r: ModelRoute, _ i: Int) {
        slot = (r, i)
        let member = r.member(i)
        charged = member.deployment.tpm != nil ? (r, i, estimatedTokens) : nil
        tried.append((ObjectIdentifier(r), i))
        machine.deploymentChosen()
        target(member.upstream)
        downstream.access.upstream = member.name
        rewriteModel(to: member.deployment.model)
    }

    /// Whether another attempt may start: routed, nothing sent to the client yet, the body kept,
    /// attempts and the group's deadline left (the machine's one policy).
    var mayRetry: Bool {
        machine.mayMoveElsewhere(limits: retryLimits, elapsed: NIODeadline.now() - started)
    }

    /// Closes a leased connection whose response will not be read to its end (never pooled).
    func drop(_ lease: UpstreamPool.Lease) {
        lease.connection.delegate = nil
        pool?.release(lease.connection, reusable: false, keepAlive: nil)
    }

    /// Gives up the current attempt before anything reached the client (its connection closed
    /// unread, its slot given back with `outcome`) and starts the next on `next`.
    func moveAttempt(off lease: UpstreamPool.Lease, outcome: DeploymentSelector.Outcome, reason: String, to next: (ModelRoute, Int)) {
        drop(lease)
        upstream = nil
        releaseSlot(outcome)
        machine.attemptAbandoned()
        _ = retryElsewhere(reason: reason, next: next)
    }

    /// Starts the next attempt on another deployment, after a backoff, if one may go and a
    /// deployment can take it. The current attempt's slot must already be given back.
    func retryElsewhere(reason: String, next: (ModelRoute, Int)? = nil) -> Bool {
        guard mayRetry, let (r, i) = next ?? nextDeployment() else { return false }
        install(r, i)
        metrics.retry(reason)
        waitThenLease(Self.retryBackoff.delay(attempt: attempt - 2, random: &random))
        return true
    }

    /// Backs off for `delay` (a retry's backoff, or a deployment's rate), then leases again.
    func waitThenLease(_ delay: TimeAmount) {
        backoffTimer = downstream.eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
            guard self.machine.backoffElapsed() else { return }
            self.backoffTimer = nil
            self.lease(fresh: false)
        }
        machine.backoffStarted()
    }


    // MARK: first-token timeout (streams)


    func armFirstTokenTimer() {
        firstTokenTimer?.cancel()
        firstTokenTimer = nil
        guard wantsStream, let timeout = slot?.route.group.firstTokenTimeout else { return }
        firstTokenTimer = downstream.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            self.firstTokenTimer = nil
            guard self.machine.isForwarding, let lease = self.upstream, self.mayRetry, let next = self.nextDeployment() else {
                return  // nowhere else to go: keep waiting on this one
            }
            self.deferredHead = nil
            self.moveAttempt(off: lease, outcome: .failure, reason: "first_token", to: next)
        }
    }

    /// The first event (or the end) arrived: the deferred head goes out now.
    func releaseDeferredHead() {
        firstTokenTimer?.cancel()
        firstTokenTimer = nil
        guard let head = deferredHead else { return }
        deferredHead = nil
        processResponseHead(head)
    }

    func rewriteModel(to model: String) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(bodyBytes)
        for part in body { bytes += part.readableBytesView }
        if let range = JSONTopLevel.value(of: "model", in: bytes) {
            var value = ""
            JSONString.append(model, to: &value)
            if !bytes[range].elementsEqual(value.utf8) {
                bytes.replaceSubrange(range, with: Array(value.utf8))
                body = [ByteBuffer(bytes: bytes)]
                bodyBytes = bytes.count
                bodyRewritten = true
            }
        }
        if bodyRewritten {
            upstreamHead.headers.remove(name: "transfer-encoding")
            upstreamHead.headers.replaceOrAdd(name: "content-length", value: String(bodyBytes))
        }
    }

    /// Gives the deployment slot back, once, saying how the request went.
    func releaseSlot(_ outcome: DeploymentSelector.Outcome) {
        guard let s = slot else { return }
        slot = nil
        s.route.release(s.index, outcome)
    }

    /// `Retry-After` in seconds: a number, or an HTTP date (RFC 9110 §10.2.3).
    static func retryAfterSeconds(_ value: String) -> Int64? {
        let v = value.trimmingCharacters(in: .whitespaces)
        if let n = Int64(v) { return max(0, n) }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = f.date(from: v) else { return nil }
        return max(0, Int64(date.timeIntervalSinceNow.rounded(.up)))
    }

    /// What an upstream answer says about its deployment.
    var outcome: DeploymentSelector.Outcome {
        switch responseStatus {
        case 429: return .rateLimited(retryAfter: retryAfter)
        case 500...599: return .failure
        case 200..<500: return .success(latency: sentAt.map { .nanoseconds((NIODeadline.now() - $0).nanoseconds) } ?? .zero)
        default: return .neutral
        }
    }
}
