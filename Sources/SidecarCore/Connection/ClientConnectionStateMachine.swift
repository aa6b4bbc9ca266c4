import NIOCore

/// One client connection's request/response cycle, as a value: which request is being served,
/// whether its request and its response are complete, what was pipelined behind it, whether the
/// connection outlives the response, a refusal waiting for its turn, reads, idleness and the
/// close. `DownstreamHandler` feeds it events and performs what it answers; it holds no IO, no
/// clock (times come with the events) and never sees a byte.
///
/// The order it keeps (RFC 9112 §9.3.2): answers go out in the order requests came. A part that
/// arrives while an earlier request's answer is still open waits in a FIFO (the handler holds the
/// parts, this machine their count); bad bytes are answered after everything that came before
/// them, and then the connection ends.
public struct ClientConnectionStateMachine: Sendable {
    public enum Phase: Equatable, Sendable {
        /// Between requests since `since` (the idle timeout runs from there).
        case idle(since: NIODeadline)
        /// A request is being served.
        case serving(Cycle)
        /// The final answer is being written (`draining` false), then our output is closed and
        /// the client's input read and dropped until it closes or the handler's linger timer ends
        /// it (closing with unread input would send a RST that can destroy the answer before the
        /// client reads it).
        case lingering(draining: Bool)
        /// Closed, or closing once what is written is flushed.
        case closed
    }

    /// The request being served.
    public struct Cycle: Equatable, Sendable {
        /// Its end arrived (or, after a refusal, never will: its rest is unread input).
        public var requestComplete = false
        /// Its answer is written to the end.
        public var responseComplete = false
        /// The connection serves another request after this one.
        public var keepAlive: Bool
    }

    /// Malformed input, in the framing's words: answered in its turn.
    public enum Refusal: Equatable, Sendable {
        case none
        /// Waiting for the requests before the bad bytes to be answered.
        case pending
        /// Being answered (the connection closes after).
        case answering
    }

    /// What the handler does with a part the reader produced.
    public enum Receipt: Equatable, Sendable {
        case deliver
        /// Behind a request whose answer is still open: kept, in order, until `takeQueued`.
        case queue
        /// The connection is past serving (lingering or closed): dropped.
        case drop
    }

    /// What follows the end of a response (`responseFinished`).
    public enum AfterResponse: Equatable, Sendable {
        /// The request's end is still to come (a body the handler answered before reading it all).
        case awaitRequestEnd
        /// Request and response are done and the connection idle: take queued parts
        /// (`takeQueued`), then `cycleDone`.
        case nextRequest
        /// Close once what is written is flushed (the queue is dropped).
        case closeAfterWrite
        /// Close our output once written, drain the client's input for a while, then close.
        case lingerAfterWrite
        /// The refusal's turn has come: `refusalDue`.
        case refuse
    }

    /// What to do with a pending refusal (`refusalDue`).
    public enum RefusalStep: Equatable, Sendable {
        /// Requests before the bad bytes are still being answered.
        case wait
        /// Answer it now. `inBody`: the bad bytes were in the current request's body (so the
        /// access record is that request's). `abandonExchange`: that request's upstream call is
        /// dropped first (its answer never started).
        case answer(inBody: Bool, abandonExchange: Bool)
        /// The bad bytes are in the body of a request whose answer already started: it cannot
        /// end well; close at once so the client sees the cut.
        case cut
    }

    /// Once the cycle is done and the queue taken (`cycleDone`).
    public enum Idle: Equatable, Sendable {
        /// Another request came out of the queue and is being served.
        case busy
        /// Idle: arm the idle check for this deadline.
        case armIdleCheck(NIODeadline)
        /// Idle while the server stops: close.
        case close
        /// The refusal is due (`refusalDue`).
        case refuse
    }

    /// The idle check fired (`idleCheck`).
    public enum IdleCheck: Equatable, Sendable {
        case close
        /// Too early (the connection was busy in between): check again then.
        case recheck(NIODeadline)
        /// Not idle: nothing to do (the next idle period arms its own check).
        case none
    }

    /// Queued parts beyond which the client is not read from.
    public let maxQueuedParts: Int

    public private(set) var phase: Phase
    public private(set) var refusal = Refusal.none
    public private(set) var queuedParts = 0
    /// The server is stopping: the current request is the last.
    public private(set) var quiescing = false
    /// A read was asked for while reads were held back.
    public private(set) var readPending = false
    /// The upstream cannot take more of the request body.
    public private(set) var pausedByUpstream = false

    public init(now: NIODeadline, maxQueuedParts: Int = 64) {
        self.phase = .idle(since: now)
        self.maxQueuedParts = maxQueuedParts
    }

    // MARK: parts

    /// The reader produced a part: deliver it now, or queue it behind the open answer.
    public mutating func receive() -> Receipt {
        switch phase {
        case .lingering, .closed:
            return .drop
        case .idle:
            if queuedParts == 0 { return .deliver }
        case .serving(let cycle):
            if queuedParts == 0 && !(cycle.requestComplete && !cycle.responseComplete) { return .deliver }
        }
        queuedParts += 1
        return .queue
    }

    /// Whether the oldest queued part may be delivered now; if so it is taken off the count and
    /// the handler must deliver it (`delivered`).
    public mutating func takeQueued() -> Bool {
        guard queuedParts > 0 else { return false }
        switch phase {
        case .idle: break
        case .serving(let cycle) where !(cycle.requestComplete && !cycle.responseComplete): break
        default: return false
        }
        queuedParts -= 1
        return true
    }

    /// A head reaches the request's handling: a cycle starts. `keepAlive` is the request's own
    /// `Connection` semantics (and the server's willingness: not while draining).
    public mutating func headDelivered(keepAlive: Bool) {
        guard case .idle = phase else { return }
        phase = .serving(Cycle(keepAlive: keepAlive && !quiescing))
    }

    /// The request's end reaches its handling. Nil while its answer is under way; otherwise what
    /// follows the answer (it went first: a local one, to a request with a body).
    public mutating func endDelivered(now: @autoclosure () -> NIODeadline) -> AfterResponse? {
        guard case .serving(var cycle) = phase else { return nil }
        cycle.requestComplete = true
        guard cycle.responseComplete else {
            phase = .serving(cycle)
            return nil
        }
        cycle.responseComplete = false
        phase = .serving(cycle)
        return responseFinished(now: now())
    }

    // MARK: responses

    /// Whether the current response says `Connection: keep-alive` semantics (no `close`).
    public var keepAlive: Bool {
        if case .serving(let cycle) = phase { return cycle.keepAlive }
        return false
    }

    /// The current request's answer will be the connection's last (a refusal, a body too large
    /// to read, the client's half-close).
    public mutating func closeAfterResponse() {
        if case .serving(var cycle) = phase {
            cycle.keepAlive = false
            phase = .serving(cycle)
        }
    }

    /// The current response is written to the end (at `now`, read only if the connection goes
    /// idle).
    public mutating func responseFinished(now: @autoclosure () -> NIODeadline) -> AfterResponse {
        guard case .serving(var cycle) = phase else { return .awaitRequestEnd }
        cycle.responseComplete = true
        phase = .serving(cycle)
        if refusal == .pending && queuedParts == 0 { return .refuse }
        if !cycle.keepAlive {
            queuedParts = 0
            if cycle.requestComplete {
                phase = .closed
                return .closeAfterWrite
            }
            phase = .lingering(draining: false)
            return .lingerAfterWrite
        }
        guard cycle.requestComplete else { return .awaitRequestEnd }
        phase = .idle(since: now())
        return .nextRequest
    }

    /// The current response cannot be finished (something was sent, the rest cannot be): the
    /// connection ends so the client sees the cut.
    public mutating func responseAborted() {
        phase = .closed
        queuedParts = 0
    }

    /// Request and response are done: the upstream's hold on reads ends with its request.
    public mutating func clearUpstreamPause() {
        pausedByUpstream = false
    }

    /// Request and response are done and the queue is taken as far as it goes (`takeQueued`).
    public mutating func cycleDone(idleTimeout: TimeAmount) -> Idle {
        if refusal == .pending && queuedParts == 0 { return .refuse }
        guard case .idle(let since) = phase else { return .busy }
        if quiescing {
            phase = .closed
            return .close
        }
        return .armIdleCheck(since + idleTimeout)
    }

    // MARK: malformed input

    /// The reader refused the bytes that follow what it delivered. Then `refusalDue`.
    public mutating func framingFailed() {
        if refusal == .none { refusal = .pending }
    }

    /// Whether the pending refusal can be answered now. `hasExchange`/`responseStarted`: the
    /// current request went upstream, and its answer has begun.
    public mutating func refusalDue(hasExchange: Bool, responseStarted: Bool) -> RefusalStep {
        guard refusal == .pending, queuedParts == 0 else { return .wait }
        var inBody = false
        var abandon = false
        switch phase {
        case .lingering, .closed:
            return .wait
        case .idle:
            break
        case .serving(var cycle):
            inBody = !cycle.requestComplete
            if inBody && hasExchange {
                guard !responseStarted else {
                    phase = .closed
                    return .cut
                }
                abandon = true
                cycle.responseComplete = true
            }
            guard cycle.responseComplete else { return .wait }
        }
        refusal = .answering
        // Whatever follows the bad bytes is unread input: the answer is followed by a linger.
        phase = .serving(Cycle(requestComplete: false, responseComplete: false, keepAlive: false))
        return .answer(inBody: inBody, abandonExchange: abandon)
    }

    // MARK: the client's side

    /// The final answer is written and our output closed: drain. True: the client's input had
    /// already ended, close now.
    public mutating func lingerStarted() -> Bool {
        guard case .lingering = phase else { return false }
        if inputEnded {
            phase = .closed
            return true
        }
        phase = .lingering(draining: true)
        return false
    }

    /// The client's input ended (half-close).
    private var inputEnded = false

    /// The client closed its sending side (after the reader accepted that). True: close now.
    public mutating func inputClosed() -> Bool {
        inputEnded = true
        switch phase {
        case .closed, .lingering(draining: false):
            return false  // closing already, once the answer is written
        case .lingering(draining: true):
            phase = .closed
            return true
        case .idle:
            guard queuedParts == 0, refusal != .pending else { return false }
            phase = .closed
            return true
        case .serving:
            closeAfterResponse()
            return false
        }
    }

    /// The connection is gone.
    public mutating func closed() {
        phase = .closed
        queuedParts = 0
    }

    /// The server stops gracefully: the current request is the last. True: close now (idle).
    public mutating func quiesce() -> Bool {
        quiescing = true
        switch phase {
        case .idle:
            phase = .closed
            return true
        case .serving:
            closeAfterResponse()
            return false
        case .lingering, .closed:
            return false
        }
    }

    // MARK: reads

    /// Reads are held back while the queue is long, and while a refusal waits (all the reader
    /// would do with more input is nothing: it stopped at the bad bytes).
    public var mayRead: Bool {
        queuedParts < maxQueuedParts && refusal != .pending && !pausedByUpstream
    }

    /// The channel asks to read. True: read now; false: held until `resumeReads`.
    public mutating func readRequested() -> Bool {
        if case .lingering = phase { return true }  // drained, not held
        if mayRead { return true }
        readPending = true
        return false
    }

    /// The upstream's backpressure on the request body.
    public mutating func upstreamPaused(_ paused: Bool) -> Bool {
        pausedByUpstream = paused
        return paused ? false : resumeReads()
    }

    /// True when a held read should be issued now (after the queue shrank or a pause ended).
    public mutating func resumeReads() -> Bool {
        guard readPending, mayRead else { return false }
        readPending = false
        return true
    }

    // MARK: idleness

    /// The idle check fired at `now`; the connection may be idle for `timeout`.
    public mutating func idleCheck(now: NIODeadline, timeout: TimeAmount) -> IdleCheck {
        guard case .idle(let since) = phase, queuedParts == 0 else { return .none }
        let deadline = since + timeout
        if now < deadline { return .recheck(deadline) }
        phase = .closed
        return .close
    }

    /// Input is read into requests (not lingering, not closed).
    public var readsRequests: Bool {
        switch phase {
        case .idle, .serving: return true
        case .lingering, .closed: return false
        }
    }
}
