import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore
import SidecarStore
import SidecarTLS
import Foundation

/// The upstream request and its response: lease a connection, send, stream the answer back, finish.
extension ProxyExchange {
    func lease(fresh: Bool) {
        if admissionPending {
            leaseDeferred = true
            return
        }
        if machine.budgetCheckDue() {
            guard reserveBudget() else { return }
        }
        if route != nil, slot == nil, !bindDeployment() { return }
        guard let pool else { return fail(.modelNotFound(nil)) }
        var granted = false
        machine.connectionRequested()
        let waiter = pool.lease(fresh: fresh) { [self] result in
            granted = true
            self.connectionWaiter = nil
            switch result {
            case .success(let lease): self.send(on: lease)
            case .failure(let error):
                // Connect, TLS and pool-queue failures: the deployment could not take the request,
                // and the provider never saw it: safe to try another.
                self.attemptFailed(error, upstreamAnswered: false, reused: false, slotOutcome: error.source == .upstream ? .failure : .neutral,
                                   reason: "connect")
            }
        }
        if !granted { connectionWaiter = waiter }
    }

    /// An attempt failed: the machine's one retry policy says replay, try elsewhere, or fail.
    /// The deployment slot is given back with `slotOutcome` unless the same request is replayed.
    func attemptFailed(_ error: ProxyError, upstreamAnswered: Bool, reused: Bool, slotOutcome: DeploymentSelector.Outcome, reason: String) {
        traceAttemptEnded(status: upstreamAnswered ? responseStatus : nil, error: error)
        let decision = machine.attemptFailed(error, upstreamAnswered: upstreamAnswered, reusedConnection: reused, limits: retryLimits,
                                             elapsed: NIODeadline.now() - started)
        switch decision {
        case .ignore:
            return
        case .replayOnFreshConnection:
            group?.metrics.staleConnectionRetries.increment()
            lease(fresh: true)
        case .tryElsewhere:
            releaseSlot(slotOutcome)
            if retryElsewhere(reason: reason) { return }
            fail(error)
        case .fail(let error):
            releaseSlot(slotOutcome)
            fail(error)
        }
    }

    /// Sends the head, what body has arrived, and the end if it has arrived too.
    func send(on lease: UpstreamPool.Lease) {
        guard machine.connectionGranted() else { return drop(lease) }  // no longer waiting for it
        upstream = lease
        let connection = lease.connection
        connection.delegate = self
        sentAt = .now()
        downstream.access.attempts += 1
        armFirstTokenTimer()
        if bodyRewritten {
            upstreamHead.headers.remove(name: "transfer-encoding")
            upstreamHead.headers.replaceOrAdd(name: "content-length", value: String(bodyBytes))
        }
        traceAttemptStarted()
        connection.send(head: upstreamHead)
        for part in body { connection.sendBody(part) }
        if bodyBytes > Self.maxReplayBytes, route == nil {
            // Routed requests keep their (already collected) body for attempts elsewhere.
            machine.bodyReleased()
            body.removeAll()
        }
        // Flushed at the end of this read burst (`flushUpstream`), or by `sendEnd`.
        if requestEnded { connection.sendEnd() } else if !downstream.inReadBurst { connection.flush() }
    }

    /// The client's read burst is over: send what was written upstream in it, in one write.
    func flushUpstream() {
        if machine.isForwarding, let lease = upstream { lease.connection.flush() }
    }

    /// More of the client's body.
    func requestBody(_ buffer: ByteBuffer) {
        if bodyBytes == 0, downstream.accessLogOn || accounting != nil || budget != nil {
            requestModel = ModelSniffer.model(in: buffer.readableBytesView)
            if downstream.accessLogOn { downstream.access.model = requestModel }
        }
        bodyBytes += buffer.readableBytes
        if bodyBytes > maxBodyBytes {
            fail(.payloadTooLarge(limit: maxBodyBytes))
            return
        }
        if machine.phase == .collectingBody {
            body.append(buffer)
            if bodyBytes > Self.maxKeyedBodyBytes, let c = cacheState {
                // Too large to hold for a key: forward it as it streams, uncached, with backpressure.
                cacheState = nil
                metrics.cacheResult("bypass")
                c.cache.count(model: "-") { $0.bypasses += 1 }
                if routes.isEmpty, budget == nil {
                    machine.stopCollecting()
                    lease(fresh: false)
                }  // else routing needs the whole body to read its model, and a budget to price it
            }
            return
        }
        let forwarding = machine.isForwarding ? upstream : nil
        if !responseStarted {
            if forwarding != nil {
                if machine.bodyKept { keepForReplay(buffer) }
            } else {
                body.append(buffer)  // not sent yet: kept until a connection is granted
            }
        }
        forwarding?.connection.sendBody(buffer)  // flushed by `flushUpstream`
    }

    /// The client's request is complete.
    func requestEnd() {
        switch machine.requestEnded() {
        case .decide: decide()
        case .sendEnd: upstream?.connection.sendEnd()
        case .none: break
        }
    }

    // MARK: the response

    func upstreamResponseHead(_ head: HTTPResponseHead) {
        let status = Int(head.status.code)
        if let s = slot, s.route.group.retryOn.contains(status), machine.isForwarding, let lease = upstream, mayRetry, let next = nextDeployment() {
            // A status the group retries, and another deployment is free: this answer is dropped
            // (its connection closed unread) and never reaches the client.
            responseStatus = status
            retryAfter = status == 429 ? head.headers.first(name: "retry-after").flatMap(Self.retryAfterSeconds).map { .seconds($0) } : nil
            group?.metrics.response(status: status)
            traceAttemptEnded(status: status)
            moveAttempt(off: lease, outcome: outcome, reason: "status_\(status)", to: next)
            return
        }
        if firstTokenTimer != nil {
            deferredHead = head
            return
        }
        processResponseHead(head)
    }

    func processResponseHead(_ head: HTTPResponseHead) {
        // A model list to merge is held back (sent merged at the end, or replaced by an error).
        machine.responseBegan(forwarded: !(modelsToMerge != nil && head.status.code == 200 && !detached))
        body.removeAll()
        let now = NIODeadline.now()
        headAt = now
        if let sentAt { group?.metrics.firstByte.recordNanoseconds((now - sentAt).nanoseconds) }
        group?.metrics.response(status: Int(head.status.code))
        let contentType = head.headers.first(name: "content-type")
        isStream = contentType?.hasPrefix("text/event-stream") ?? false
        responseStatus = Int(head.status.code)
        encodedAnswer = HeaderPolicy.isEncoded(head.headers)
        if responseStatus == 429 { retryAfter = head.headers.first(name: "retry-after").flatMap(Self.retryAfterSeconds).map { .seconds($0) } }
        // The client's head is written from the upstream's with these changes applied as it is
        // written (`HTTPResponseWriter.writeForwardedHead`); only a flight's followers and a held
        // model list get the fields built into a head of their own.
        var forwarding = HTTPResponseWriter.Forwarding(extra: [("x-sidecar-cache", cacheLabel)])
        if let from = downgradedFrom { forwarding.extra.append(("x-sidecar-downgraded-from", from)) }
        if let s = slot {
            forwarding.extra.append(("x-sidecar-deployment", s.route.name(s.index)))
            forwarding.extra.append(("x-sidecar-attempts", String(attempt)))
        }
        if var c = cacheState, let flight = c.flight {
            c.status = Int(head.status.code)
            c.contentType = contentType
            c.framed = head.headers.contains(name: "content-length")
                || head.headers[canonicalForm: "transfer-encoding"].contains { HeaderPolicy.equalsIgnoringASCIICase($0, "chunked") }
            c.encoded = encodedAnswer
            cacheState = c
            flight.publish(.head(head.status, forwarding.headers(from: head.headers)))
        }
        downstream.access.cache = cacheLabel
        if detached { return }
        if !isStream { usageFilter = nil }
        forwarding.dropLength = usageFilter != nil  // bytes are removed: chunked framing
        if !downstream.keepAlive { forwarding.extra.append(("connection", "close")) }
        if modelsToMerge != nil, responseStatus == 200 {
            // Sent with the merged list.
            heldHead = HTTPResponseHead(version: .http1_1, status: head.status, headers: forwarding.headers(from: head.headers))
            return
        }
        modelsToMerge = nil
        downstream.writeForwardedHead(head, forwarding)
    }

    func upstreamResponseBody(_ body: ByteBuffer) {
        if deferredHead != nil || firstTokenTimer != nil { releaseDeferredHead() }
        if isStream, firstBodyAt == nil, let sentAt {
            let now = NIODeadline.now()
            firstBodyAt = now
            group?.metrics.streamFirstToken.recordNanoseconds((now - sentAt).nanoseconds)
            traceFirstByte()
        }
        if readsUsage, (200..<300).contains(responseStatus) {
            if dialect == .anthropic, isStream, usageHead.count < Self.usageHeadBytes {
                usageHead += body.readableBytesView.prefix(Self.usageHeadBytes - usageHead.count)
            }
            // By reference, no copy: the last parts that cover `usageTailBytes`.
            usageTail.append(body)
            usageTailBytes += body.readableBytes
            while let first = usageTail.first, usageTailBytes - first.readableBytes >= Self.usageTailBytes {
                usageTailBytes -= first.readableBytes
                usageTail.removeFirst()
            }
        }
        if remembersResponseID, (200..<300).contains(responseStatus), let s = slot {
            // The id is in the answer's first bytes: looked for once, in the first part.
            remembersResponseID = false
            if let id = ResponseID.find(in: body.readableBytesView) { s.route.remember(response: id, deployment: s.index) }
        }
        cacheState?.flight?.publish(.body(body))
        if heldHead != nil {
            heldBody += body.readableBytesView
            return
        }
        if !detached { writeFiltered(body) }
    }

    /// Writes an answer's bytes to this client, without the usage chunk it did not ask for.
    func writeFiltered(_ buffer: ByteBuffer) {
        guard usageFilter != nil else { return downstream.writeResponseBody(buffer) }
        let out = usageFilter!.feed(buffer.readableBytesView)
        if !out.isEmpty { downstream.writeResponseBody(ByteBuffer(bytes: out)) }
    }

    func flushFilter() {
        guard usageFilter != nil else { return }
        let rest = usageFilter!.finish()
        if !rest.isEmpty { downstream.writeResponseBody(ByteBuffer(bytes: rest)) }
    }

    func upstreamReadComplete() {
        if !detached, heldHead == nil { downstream.flush() }
    }

    func upstreamResponseEnd(_ trailers: HTTPHeaders?) {
        guard machine.isForwarding, let lease = upstream else { return }
        releaseDeferredHead()
        upstream = nil
        let keepAlive = lease.connection.lastResponseKeepAlive
        // A connection whose request was not sent to its end cannot carry another request.
        pool?.release(lease.connection, reusable: keepAlive.reusable && requestEnded, keepAlive: keepAlive.timeout)
        let deployment = slot.map { $0.route.name($0.index) } ?? group?.configuration.name ?? "-"
        let billedModel = slot.map { $0.route.deployment($0.index).model } ?? requestModel
        releaseSlot(outcome)
        recordCompletion()
        recordSpend(deployment: deployment, billedModel: billedModel)
        traceAttemptEnded(status: responseStatus)
        settleBudget(actual: 0)  // not a 2xx answer: nothing billed
        if let c = cacheState, let flight = c.flight, let key = c.key {
            flight.publish(.end)
            c.cache.finish(.init(
                key: key, scope: c.scope, model: c.model, endpoint: String(Self.barePath(c.path)), status: c.status, contentType: c.contentType,
                isStream: isStream, framed: c.framed, encoded: c.encoded, ttl: c.ttl, body: flight.recordedBody, coalesced: flight.joinedCount,
                usage: answerUsage, flight: c.registered ? flight : nil))
            cacheState = nil
        }
        if var head = heldHead, let names = modelsToMerge {
            heldHead = nil
            guard let list = Self.mergeModels(names, into: heldBody) else {
                // Nothing was written to the client yet: it gets a proper error, not an empty 200.
                return fail(.upstreamProtocol("the default upstream's GET /v1/models answer is not a JSON model list (an object with a `data` array), so the [[models]] groups could not be added to it"))
            }
            let merged = ByteBuffer(bytes: list)
            head.headers.remove(name: "transfer-encoding")
            head.headers.replaceOrAdd(name: "content-length", value: String(merged.readableBytes))
            downstream.writeResponseHead(head)
            downstream.writeResponseBody(merged)
        }
        _ = machine.responseEnded()
        if !detached {
            flushFilter()
            downstream.finishResponse(trailers: trailers)
        }
    }

    func upstreamFailed(_ error: ProxyError, beforeResponse: Bool) {
        firstTokenTimer?.cancel()
        firstTokenTimer = nil
        deferredHead = nil

        guard machine.isForwarding, let lease = upstream else { return }
        upstream = nil
        pool?.release(lease.connection, reusable: false, keepAlive: nil)
        // The server may close a keep-alive connection just as we reuse it: nothing reached the
        // provider's application, so one replay on a fresh connection is safe. Closed, refused or
        // broken before any response byte: another deployment may be tried. Nothing else is
        // retried (a POST that reached the provider may already be billed).
        attemptFailed(error, upstreamAnswered: !beforeResponse, reused: lease.reused, slotOutcome: beforeResponse ? .failure : outcome,
                      reason: "connection")
    }
}
