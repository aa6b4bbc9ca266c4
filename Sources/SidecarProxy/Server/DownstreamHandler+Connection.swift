import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore

/// The client connection's events: reads and backpressure, errors and refusals, close, idle and quiesce.
extension DownstreamHandler {
    // MARK: connection events


    /// The upstream's backpressure on the request body.
    func setReadsPaused(_ paused: Bool) {
        if connection.upstreamPaused(paused) { context?.read() }
    }

    func read(context: ChannelHandlerContext) {
        if let tunnel {
            if tunnel.clientWantsRead() { context.read() }
            return
        }
        if connection.readRequested() { context.read() }
    }

    /// A socket error: nothing to answer on this connection any more.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    /// Malformed HTTP from the client: answered (400, 431, 501, 505, or 405 for CONNECT and
    /// TRACE) in its turn, after the requests before it, then the connection is closed. The
    /// reader stops at the bad bytes, so this happens once per connection.
    func framingFailed(_ error: DownstreamFramingError) {
        guard pendingRefusal == nil else { return }
        pendingRefusal = error.refusal
        connection.framingFailed()
        refuseWhenDue()
    }

    /// Answers `pendingRefusal` once every request the reader delivered before the bad bytes is
    /// answered, then the connection closes. Called when the error arrives and whenever a
    /// response finishes.
    func refuseWhenDue() {
        guard let refusal = pendingRefusal, let context else { return }
        switch connection.refusalDue(hasExchange: exchange != nil, responseStarted: exchange?.responseStarted ?? false) {
        case .wait:
            return
        case .cut:
            // The bad bytes are in the body of a request whose answer is under way: it cannot
            // end well.
            context.close(promise: nil)
        case .answer(let inBody, let abandonExchange):
            if abandonExchange, let exchange {
                // The bad bytes are in this request's body: its upstream request is abandoned.
                self.exchange = nil
                exchangeEnded(status: refusal.status, complete: true)
                exchange.downstreamClosed()
            }
            pendingRefusal = nil
            if !inBody {
                access = AccessRecord(method: "-", path: "-")  // bad bytes where a request head should be
                respondingTo = nil
            }
            state.metrics.error(refusal.codeString)
            recordError(refusal, model: nil)
            let (head, body) = ErrorResponses.head(for: refusal, keepAlive: false)
            writeLocal(head: head, body: body)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        tunnel?.closed(outcome: "client_closed")
        idleTimer?.cancel()
        queued.removeAll()
        connection.closed()
        if let exchange {
            self.exchange = nil
            exchangeEnded(status: access.status, complete: false)
            exchange.downstreamClosed()
            logAccess(outcome: "client_closed")
        }
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        tunnel?.clientWritabilityChanged(writable: context.channel.isWritable)
        exchange?.downstreamWritabilityChanged(writable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tunnel {
            // A session ends when either side closes; a stop waits for it (its drain timeout
            // then closes it with 1001), it does not end it.
            if let e = event as? ChannelEvent, e == .inputClosed { tunnel.closed(outcome: "client_closed") }
            if event is DrainTimeoutEvent { tunnel.end(code: 1001, "the sidecar is stopping") }
            if event is ChannelEvent || event is ChannelShouldQuiesceEvent || event is DrainTimeoutEvent { return }
        }
        if let e = event as? ChannelEvent, e == .inputClosed {
            // The client finished sending (half-close). Answer what is under way, then close; a
            // request cut short is malformed (answered in its turn, like other bad bytes).
            if connection.readsRequests {
                do { try reader.inputClosed() } catch { return framingFailed(error) }
            }
            if connection.inputClosed() { context.close(promise: nil) }
            return
        }
        if event is ChannelShouldQuiesceEvent {
            // Graceful stop: finish the current request, then close.
            if connection.quiesce() { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Starts the idle period. Lazily: one scheduled task per connection, re-armed when it fires
    /// early, instead of cancel + schedule around every request.
    func armIdleTimer(deadline: NIODeadline) {
        guard let context, idleTimer == nil else { return }
        scheduleIdleCheck(at: deadline, context: context)
    }

    func scheduleIdleCheck(at when: NIODeadline, context: ChannelHandlerContext) {
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: when) { [self] in
            self.idleTimer = nil
            switch self.connection.idleCheck(now: .now(), timeout: self.runtime.clientIdleTimeout) {
            case .close: context.close(promise: nil)
            case .recheck(let deadline): self.scheduleIdleCheck(at: deadline, context: context)
            case .none: break
            }
        }
    }
}

/// The connection's side of a WebSocket session (`RealtimeSession`): bytes as they are.
extension DownstreamHandler {
    /// The upstream's 101, byte for byte: from here on the connection carries frames.
    func acceptTunnel(_ answer: ByteBuffer) {
        access.status = 101
        writeTunnel(answer)
        context?.flush()
    }

    func writeTunnel(_ buffer: ByteBuffer) {
        context?.write(wrapOutboundOut(buffer), promise: nil)
    }

    /// Flushes, then runs `done` once what was written is out.
    func flushTunnel(_ done: @escaping () -> Void) {
        guard let context else { return done() }
        context.writeAndFlush(wrapOutboundOut(ByteBuffer())).assumeIsolated().whenComplete { _ in done() }
    }

    /// The session is over: one access line, one request less in flight.
    func tunnelEnded(outcome: String, wasOpen: Bool) {
        tunnel = nil
        guard wasOpen else { return }
        state.requestFinished()
        logAccess(outcome: outcome)
    }
}
