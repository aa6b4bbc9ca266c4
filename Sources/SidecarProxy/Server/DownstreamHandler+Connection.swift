import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore

/// The client connection's events: reads and backpressure, errors and refusals, close, idle and quiesce.
extension DownstreamHandler {
    // MARK: connection events


    func setReadsPaused(_ paused: Bool) {
        readsPausedByUpstream = paused
        if !paused, readPending, mayRead, let context {
            readPending = false
            context.read()
        }
    }

    func read(context: ChannelHandlerContext) {
        if !mayRead || readsPausedByUpstream { readPending = true } else { context.read() }
    }

    /// Not while the queue is long, nor while a decoder error waits for its turn (all the decoder
    /// would do with more input is report it as another error).
    var mayRead: Bool { queued.count < Self.maxQueuedParts && pendingRefusal == nil }

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
        refuseWhenDue()
    }


    /// Answers `pendingRefusal` once every request the decoder delivered before the bad bytes
    /// is answered, and closes the connection. Called when the error arrives and whenever a
    /// response finishes.
    func refuseWhenDue() {
        guard let refusal = pendingRefusal, queued.isEmpty, let context else { return }
        let inBody = requestOpen
        if requestOpen, let exchange {
            // The bad bytes are in this request's body: its upstream request is abandoned.
            guard !exchange.responseStarted else {
                // Its answer is already under way and cannot end well: cut it.
                context.close(promise: nil)
                return
            }
            self.exchange = nil
            state.requestFinished()
            exchange.downstreamClosed()
            responseOpen = false
        }
        guard !responseOpen else { return }  // a request before the bad bytes is still being answered
        pendingRefusal = nil
        keepAlive = false
        closeAfterResponse = true
        responseOpen = true
        requestOpen = true  // whatever follows the bad bytes is unread input
        if !inBody {
            access = AccessRecord(method: "-", path: "-")  // bad bytes where a request head should be
            respondingTo = nil
        }
        state.metrics.error(refusal.codeString)
        let (head, body) = ErrorResponses.head(for: refusal, keepAlive: false)
        writeLocal(head: head, body: body)
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        queued.removeAll()
        if let exchange {
            self.exchange = nil
            state.requestFinished()
            exchange.downstreamClosed()
            logAccess(outcome: "client_closed")
        }
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        exchange?.downstreamWritabilityChanged(writable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed {
            // The client finished sending (half-close). Answer what is under way, then close; a
            // request cut short is malformed (answered in its turn, like other bad bytes).
            if !lingering {
                do { try reader.inputClosed() } catch { return framingFailed(error) }
            }
            if lingering || (!requestOpen && !responseOpen && queued.isEmpty) {
                context.close(promise: nil)
            } else {
                closeAfterResponse = true
            }
            return
        }
        if event is ChannelShouldQuiesceEvent {
            // Graceful stop: finish the current request, then close.
            quiescing = true
            keepAlive = false
            if !requestOpen && !responseOpen { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }


    /// Starts the idle period. Lazily: one scheduled task per connection, re-armed when it fires
    /// early, instead of cancel + schedule around every request.
    func armIdleTimer() {
        guard let context else { return }
        let deadline = NIODeadline.now() + runtime.clientIdleTimeout
        idleDeadline = deadline
        if idleTimer == nil { scheduleIdleCheck(at: deadline, context: context) }
    }

    func scheduleIdleCheck(at when: NIODeadline, context: ChannelHandlerContext) {
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: when) { [self] in
            self.idleTimer = nil
            guard let deadline = self.idleDeadline, self.exchange == nil, !self.requestOpen, !self.responseOpen else { return }
            if NIODeadline.now() < deadline {
                self.scheduleIdleCheck(at: deadline, context: context)
            } else {
                context.close(promise: nil)
            }
        }
    }
}
