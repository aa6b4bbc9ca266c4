import NIOCore
import NIOHTTP1
import SidecarCore

/// One client request on its way through the proxy, in named phases:
///
///   `start` (choose the upstream, rewrite the head) -> `lease` (a pooled connection)
///   -> `send` (head, body so far, then the rest as it arrives) -> `upstreamResponse*` (stream back)
///   -> `finish` (release the connection, end the client's response)
///
/// A failure in any phase goes to `fail`, the single exit that either answers with an
/// OpenAI-shaped error (nothing was sent to the client yet) or cuts the client's response (something
/// was, so the client must see an abnormal end, never a fake complete answer).
///
/// Lives on the client connection's event loop, as does its pooled upstream connection.
final class ProxyExchange: UpstreamResponseDelegate {
    private enum Phase {
        case waitingForConnection(ConnectionPoolStateMachine.WaiterID)
        case forwarding(UpstreamPool.Lease)
        case done
    }

    private let downstream: DownstreamHandler
    private let group: UpstreamGroup
    private let pool: UpstreamPool
    private let maxBodyBytes: Int
    private let metrics: SidecarMetrics
    private var upstreamHead: HTTPRequestHead
    // Timings, for the metrics: start, request sent upstream, response head, first body byte.
    private let started = NIODeadline.now()
    private var sentAt: NIODeadline?
    private var headAt: NIODeadline?
    private var firstBodyAt: NIODeadline?
    private var isStream = false
    private var phase: Phase
    /// Body parts received so far, kept (by reference, not copied) until the response starts so
    /// that a request that hit a stale keep-alive connection can be replayed once. Only the first
    /// `maxReplayBytes` are kept: a larger body is streamed without a replay safety net.
    private var body: [ByteBuffer] = []
    private var replayable = true
    static let maxReplayBytes = 1 << 20
    private var bodyBytes = 0
    private var requestEnded = false
    private var replayed = false
    private(set) var responseStarted = false

    init(downstream: DownstreamHandler, head: HTTPRequestHead, group: UpstreamGroup, pool: UpstreamPool, maxBodyBytes: Int,
         metrics: SidecarMetrics) {
        self.metrics = metrics
        self.downstream = downstream
        self.group = group
        self.pool = pool
        self.maxBodyBytes = maxBodyBytes
        let prefix = group.configuration.url.pathPrefix
        self.upstreamHead = HTTPRequestHead(
            version: .http1_1, method: head.method, uri: prefix.isEmpty ? head.uri : prefix + head.uri,
            headers: HeaderPolicy.upstreamRequestHeaders(from: head.headers, host: group.hostHeader, authorization: group.authorization))
        self.phase = .done
    }

    // MARK: phases

    /// Asks the pool for a connection. The grant may arrive before this returns.
    func start() {
        lease(fresh: false)
    }

    private func lease(fresh: Bool) {
        var granted = false
        let waiter = pool.lease(fresh: fresh) { [self] result in
            granted = true
            switch result {
            case .success(let lease): self.send(on: lease)
            case .failure(let error): self.fail(error)
            }
        }
        if !granted { phase = .waitingForConnection(waiter) }
    }

    /// Sends the head, what body has arrived, and the end if it has arrived too.
    private func send(on lease: UpstreamPool.Lease) {
        phase = .forwarding(lease)
        let connection = lease.connection
        connection.delegate = self
        sentAt = .now()
        downstream.access.attempts += 1
        connection.send(head: upstreamHead)
        for part in body { connection.sendBody(part) }
        if bodyBytes > Self.maxReplayBytes {
            replayable = false
            body.removeAll()
        }
        // Flushed at the end of this read burst (`flushUpstream`), or by `sendEnd`.
        if requestEnded { connection.sendEnd() } else if !downstream.inReadBurst { connection.flush() }
    }

    /// The client's read burst is over: send what was written upstream in it, in one write.
    func flushUpstream() {
        if case .forwarding(let lease) = phase { lease.connection.flush() }
    }

    /// More of the client's body.
    func requestBody(_ buffer: ByteBuffer) {
        if bodyBytes == 0, downstream.accessLogOn { downstream.access.model = ModelSniffer.model(in: buffer.readableBytesView) }
        bodyBytes += buffer.readableBytes
        if bodyBytes > maxBodyBytes {
            fail(.payloadTooLarge(limit: maxBodyBytes))
            return
        }
        if !responseStarted {
            if case .forwarding = phase {
                if replayable { keepForReplay(buffer) }
            } else {
                body.append(buffer)  // not sent yet: kept until a connection is granted
            }
        }
        if case .forwarding(let lease) = phase { lease.connection.sendBody(buffer) }  // flushed by `flushUpstream`
    }

    /// The client's request is complete.
    func requestEnd() {
        requestEnded = true
        if case .forwarding(let lease) = phase { lease.connection.sendEnd() }
    }

    // MARK: the response

    func upstreamResponseHead(_ head: HTTPResponseHead) {
        responseStarted = true
        body.removeAll()
        let now = NIODeadline.now()
        headAt = now
        if let sentAt { group.metrics.firstByte.recordNanoseconds((now - sentAt).nanoseconds) }
        group.metrics.response(status: Int(head.status.code))
        isStream = head.headers.first(name: "content-type")?.hasPrefix("text/event-stream") ?? false
        var headers = HeaderPolicy.downstreamResponseHeaders(from: head.headers)
        if !downstream.keepAlive { headers.add(name: "connection", value: "close") }
        downstream.writeResponseHead(HTTPResponseHead(version: .http1_1, status: head.status, headers: headers))
    }

    func upstreamResponseBody(_ body: ByteBuffer) {
        if isStream, firstBodyAt == nil, let sentAt {
            let now = NIODeadline.now()
            firstBodyAt = now
            group.metrics.streamFirstToken.recordNanoseconds((now - sentAt).nanoseconds)
        }
        downstream.writeResponseBody(body)
    }

    func upstreamReadComplete() {
        downstream.flush()
    }

    func upstreamResponseEnd(_ trailers: HTTPHeaders?) {
        guard case .forwarding(let lease) = phase else { return }
        phase = .done
        let keepAlive = lease.connection.lastResponseKeepAlive
        // A connection whose request was not sent to its end cannot carry another request.
        pool.release(lease.connection, reusable: keepAlive.reusable && requestEnded, keepAlive: keepAlive.timeout)
        recordCompletion()
        downstream.finishResponse(trailers: trailers)
    }

    private func recordCompletion() {
        let now = NIODeadline.now()
        let total = (now - started).nanoseconds
        group.metrics.duration.recordNanoseconds(total)
        if let sentAt {
            metrics.overhead.recordNanoseconds(max(0, total - (now - sentAt).nanoseconds))
            downstream.access.upstreamNanos = (now - sentAt).nanoseconds
        }
        if isStream, let headAt { group.metrics.streamDuration.recordNanoseconds((now - headAt).nanoseconds) }
    }

    func upstreamFailed(_ error: ProxyError, beforeResponse: Bool) {
        guard case .forwarding(let lease) = phase else { return }
        pool.release(lease.connection, reusable: false, keepAlive: nil)
        // The server may close a keep-alive connection just as we reuse it. Nothing reached the
        // provider's application then, so one replay on a fresh connection is safe; no other
        // failure is replayed here (a POST that reached the provider may already be billed).
        if beforeResponse, lease.reused, !replayed, replayable, Self.isStaleClose(error) {
            replayed = true
            group.metrics.staleConnectionRetries.increment()
            phase = .done
            self.lease(fresh: true)
            return
        }
        phase = .done
        answer(error)
    }

    private static func isStaleClose(_ error: ProxyError) -> Bool {
        error.codeString == "upstream_connection_closed"
    }

    // MARK: the client

    /// Keeps a sent part for the one replay, up to `maxReplayBytes`; beyond that, gives up the
    /// replay and the memory.
    private func keepForReplay(_ buffer: ByteBuffer) {
        if bodyBytes <= Self.maxReplayBytes {
            body.append(buffer)
        } else {
            replayable = false
            body.removeAll()
        }
    }

    /// Backpressure the other way: an upstream that cannot take more pauses reading the client's body.
    func upstreamWritabilityChanged(writable: Bool) {
        downstream.setReadsPaused(!writable)
    }

    /// Backpressure: a client that cannot take more pauses reading from the upstream.
    func downstreamWritabilityChanged(writable: Bool) {
        if case .forwarding(let lease) = phase { lease.connection.setReadsPaused(!writable) }
    }

    /// The client went away: stop waiting, or close the upstream connection (never pool a
    /// connection whose response was not read to its end).
    func downstreamClosed() {
        abandonUpstream()
    }

    /// Stops waiting for a connection, or closes the leased one (never pooled half-read).
    private func abandonUpstream() {
        switch phase {
        case .waitingForConnection(let waiter):
            pool.cancel(waiter)
        case .forwarding(let lease):
            lease.connection.delegate = nil
            pool.release(lease.connection, reusable: false, keepAlive: nil)
        case .done:
            break
        }
        phase = .done
    }

    // MARK: the single exit for failures

    private func fail(_ error: ProxyError) {
        abandonUpstream()
        answer(error)
    }

    private func answer(_ error: ProxyError) {
        metrics.error(error.codeString)
        if !responseStarted { group.metrics.response(status: error.status) }
        if responseStarted {
            downstream.abortResponse()
        } else {
            // 413: the rest of a too-large body is not worth reading; close instead.
            downstream.respondWithError(error, closeAfter: error.status == 413)
        }
    }
}
