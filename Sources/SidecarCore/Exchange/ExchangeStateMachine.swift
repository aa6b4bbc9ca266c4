import NIOCore

/// The life of one client request through the proxy, as a value type: events in, actions out.
///
/// No IO, no timers, no clock: the IO shell (`ProxyExchange`) holds the leases, timers, buffers
/// and flights, reports what happened, passes the elapsed time, and carries out what it is told.
/// The phase says what the request is doing; the facts are what the phases cannot say alone:
///
///   - `requestReceived`: the client's request is complete (its end arrived);
///   - `responseStarted`: response bytes reached the client (or a flight's followers): from then on
///     nothing is retried, and a failure cuts the response instead of answering an error;
///   - `detached`: the client went away while a flight's followers still wait for the answer;
///   - `replayed`: the request had its one replay after a stale reused connection;
///   - `budgetChecked`: the budget reservation was attempted (once);
///   - `bodyKept`: the whole body is still held, so the request can be sent again;
///   - `attempts`: deployments tried.
///
/// Every failure goes through one policy (`attemptFailed`, from `ProxyError.retry` via
/// `RetryPolicy`) and one exit (`fail`), which ends the request exactly once.
public struct ExchangeStateMachine: Sendable {
    public enum Phase: Hashable, Sendable {
        /// Created: nothing decided yet.
        case admitting
        /// Holding the body until its end (the cache key, the model to route, the price to reserve).
        case collectingBody
        /// A flight leader asking the store (off the loop).
        case cacheLookup
        /// Following an identical request in flight: its answer is ours.
        case followingFlight
        /// Between steps: where to send the request is being chosen (budget, deployment, pool).
        case choosingDeployment
        /// Every deployment of the group is full: queued for the first free one.
        case waitingForDeployment
        /// Asked the pool for a connection.
        case waitingForConnection
        /// The request (head, body so far) is on an upstream connection; no answer yet.
        case upstreamRequestSent
        /// The upstream answered: its response is being streamed back.
        case responseStreaming
        /// Waiting out a backoff (or a deployment's rate) before the next attempt.
        case backingOff
        /// Ended: answered, failed, cut, or left. Terminal.
        case finished
    }

    /// What the shell must give up when the request ends where it is.
    public enum Abandon: Hashable, Sendable {
        case nothing
        case cancelConnectionWait
        /// Close the leased connection (never pooled half-read).
        case closeConnection
        case cancelBackoff
        case cancelDeploymentWait
        case leaveFlight
    }

    /// How the client learns of a failure.
    public enum Exit: Hashable, Sendable {
        /// Nothing was sent: an OpenAI-shaped error.
        case answer(ProxyError)
        /// Response bytes were sent: an abnormal end, never a fake complete answer.
        case cut
        /// The client is gone (a detached leader): only the followers hear of it.
        case none
    }

    public struct Failure: Hashable, Sendable {
        public var abandon: Abandon
        public var exit: Exit

        public init(abandon: Abandon, exit: Exit) {
            self.abandon = abandon
            self.exit = exit
        }
    }

    /// What to do after an upstream attempt failed.
    public enum AttemptFailure: Hashable, Sendable {
        /// Not for this request's current attempt (it already moved on): nothing.
        case ignore
        /// The same request again on a fresh connection (once per request).
        case replayOnFreshConnection
        /// Another deployment may take it: the shell looks for one, then `backoffStarted` (or
        /// `fail` when none is free).
        case tryElsewhere
        /// The one exit: the request fails with this error.
        case fail(ProxyError)
    }

    /// The limits of a routed request's attempts; nil for a request that is not routed.
    public struct RetryLimits: Hashable, Sendable {
        public var maxAttempts: Int
        public var deadline: TimeAmount

        public init(maxAttempts: Int, deadline: TimeAmount) {
            self.maxAttempts = maxAttempts
            self.deadline = deadline
        }
    }

    public enum ClientClosed: Hashable, Sendable {
        /// A follower left its flight: done.
        case leaveFlight
        /// A flight leader: `detach` when followers still wait, else `abandon`.
        case askFollowers
        /// Give up what is held.
        case abandon(Abandon)
    }

    public enum RequestEnd: Hashable, Sendable {
        /// The whole body is here: key it, route it, price it.
        case decide
        /// Send the end upstream.
        case sendEnd
        case none
    }

    public private(set) var phase: Phase
    public private(set) var requestReceived = false
    public private(set) var responseStarted = false
    public private(set) var detached = false
    public private(set) var replayed = false
    public private(set) var budgetChecked = false
    public private(set) var bodyKept = true
    public private(set) var attempts = 0

    public init(collectsBody: Bool) {
        phase = collectsBody ? .collectingBody : .admitting
    }

    // MARK: observation

    public var isFinished: Bool { phase == .finished }
    /// An upstream connection is leased and carries this request.
    public var isForwarding: Bool { phase == .upstreamRequestSent || phase == .responseStreaming }

    // MARK: admitting and the body

    /// The request may go: true to choose where now, false to wait for the whole body first.
    public mutating func start() -> Bool {
        guard phase == .admitting else { return false }
        phase = .choosingDeployment
        return true
    }

    /// The body is too large to hold for a key: it is forwarded as it arrives instead.
    public mutating func stopCollecting() {
        if phase == .collectingBody { phase = .choosingDeployment }
    }

    /// The shell no longer holds the whole body: no replay, no other deployment.
    public mutating func bodyReleased() {
        bodyKept = false
    }

    public mutating func requestEnded() -> RequestEnd {
        requestReceived = true
        if phase == .collectingBody {
            phase = .choosingDeployment
            return .decide
        }
        return isForwarding ? .sendEnd : .none
    }

    /// True (once) when the budget reservation is due.
    public mutating func budgetCheckDue() -> Bool {
        if budgetChecked { return false }
        budgetChecked = true
        return true
    }

    /// The reservation waits for the fleet (a larger slice, `[fleet]`): it is tried again when
    /// the request goes on.
    public mutating func budgetCheckAgain() {
        budgetChecked = false
    }

    // MARK: answered here

    /// Answered without going upstream (a cache hit, the local model list): done.
    public mutating func answeredLocally() {
        guard phase != .finished else { return }
        responseStarted = true
        phase = .finished
    }

    // MARK: the cache

    public mutating func cacheLookupStarted() {
        enter(.cacheLookup)
    }

    public enum LookupResult: Hashable, Sendable {
        /// Not looking up any more: ignore.
        case ignore
        /// Replay the stored answer to the client (`answeredLocally`).
        case replay
        /// The client is gone: the followers have the answer; done.
        case finished
        /// A miss: go upstream (a detached leader only if followers still wait: `end` otherwise).
        case goUpstream
    }

    public mutating func lookupFinished(hit: Bool) -> LookupResult {
        guard phase == .cacheLookup else { return .ignore }
        if hit {
            if detached {
                phase = .finished
                return .finished
            }
            return .replay
        }
        phase = .choosingDeployment
        return .goUpstream
    }

    public mutating func followStarted() {
        enter(.followingFlight)
    }

    /// The followed flight could not be joined, or its leader withdrew: go on alone.
    public mutating func followAbandoned() {
        if phase == .followingFlight { phase = .choosingDeployment }
    }

    public var isFollowing: Bool { phase == .followingFlight }

    /// The leader's head reached this follower's client.
    public mutating func followedHeadSent() {
        if phase == .followingFlight { responseStarted = true }
    }

    /// Ends without an exit of its own (the followed answer ended or was cut, the client left a
    /// flight, a detached leader's followers are gone).
    public mutating func end() {
        phase = .finished
    }

    // MARK: deployments and backoff

    /// A deployment slot was taken for the next attempt.
    public mutating func deploymentChosen() {
        attempts += 1
    }

    public mutating func queuedForDeployment() {
        enter(.waitingForDeployment)
    }

    /// A queued request got a deployment (true), or had left already (false: give it back).
    public mutating func deploymentGranted() -> Bool {
        guard phase == .waitingForDeployment else { return false }
        phase = .choosingDeployment
        return true
    }

    public mutating func backoffStarted() {
        enter(.backingOff)
    }

    /// The backoff is over: true to try again now.
    public mutating func backoffElapsed() -> Bool {
        guard phase == .backingOff else { return false }
        phase = .choosingDeployment
        return true
    }

    // MARK: the upstream attempt

    public mutating func connectionRequested() {
        enter(.waitingForConnection)
    }

    /// A connection was granted: true to send on it (false: this request is not waiting for one).
    public mutating func connectionGranted() -> Bool {
        guard phase == .waitingForConnection else { return false }
        phase = .upstreamRequestSent
        return true
    }

    /// The upstream's answer begins; `forwarded` is false when its head is held back (sent later,
    /// rewritten, or replaced by an error).
    public mutating func responseBegan(forwarded: Bool) {
        guard isForwarding else { return }
        phase = .responseStreaming
        bodyKept = false
        if forwarded { responseStarted = true }
    }

    /// The upstream's answer ended: true when it was this request's (then done).
    public mutating func responseEnded() -> Bool {
        guard isForwarding else { return false }
        phase = .finished
        return true
    }

    /// Whether another attempt on another deployment may start now (routed, the whole request
    /// here and kept, nothing sent, the client still there, attempts and time left).
    public func mayMoveElsewhere(limits: RetryLimits?, elapsed: TimeAmount) -> Bool {
        guard let limits, !detached, requestReceived, bodyKept, !responseStarted, phase != .finished else { return false }
        return attempts < limits.maxAttempts && elapsed < limits.deadline
    }

    /// The current attempt is given up before anything reached the client (a status the group
    /// retries, no first token in time): the shell closed its connection; it moves elsewhere.
    public mutating func attemptAbandoned() {
        if isForwarding || phase == .waitingForConnection { phase = .choosingDeployment }
    }

    /// The one retry policy. `upstreamAnswered`: a response byte arrived on the attempt;
    /// `reusedConnection`: the attempt ran on a pooled keep-alive connection (a lease failure:
    /// false). The shell closed or never had the connection.
    public mutating func attemptFailed(_ error: ProxyError, upstreamAnswered: Bool, reusedConnection: Bool,
                                       limits: RetryLimits?, elapsed: TimeAmount) -> AttemptFailure {
        guard isForwarding || phase == .waitingForConnection else { return .ignore }
        phase = .choosingDeployment
        switch RetryPolicy.afterFailure(error, responseStarted: upstreamAnswered || responseStarted, reusedConnection: reusedConnection,
                                        replayedAlready: replayed, bodyKept: bodyKept) {
        case .replayOnFreshConnection:
            replayed = true
            return .replayOnFreshConnection
        case .tryElsewhere where mayMoveElsewhere(limits: limits, elapsed: elapsed):
            return .tryElsewhere
        case .tryElsewhere, .giveUp:
            return .fail(error)
        }
    }

    // MARK: the client goes away

    public mutating func clientClosed() -> ClientClosed {
        switch phase {
        case .followingFlight:
            phase = .finished
            return .leaveFlight
        case .cacheLookup, .waitingForConnection, .upstreamRequestSent, .responseStreaming:
            return .askFollowers
        default:
            return .abandon(abandon())
        }
    }

    /// The leader's client is gone but followers wait: the call goes on without it.
    public mutating func detach() {
        if phase != .finished { detached = true }
    }

    /// Ends here, giving up what the phase holds.
    public mutating func abandon() -> Abandon {
        let what = holding
        phase = .finished
        return what
    }

    /// The single exit for failures: ends the request, once. After the end: nothing to do.
    public mutating func fail(_ error: ProxyError) -> Failure {
        if phase == .finished { return Failure(abandon: .nothing, exit: .none) }
        let what = abandon()
        if detached { return Failure(abandon: what, exit: .none) }
        return Failure(abandon: what, exit: responseStarted ? .cut : .answer(error))
    }

    /// Moves to `next` unless the request has ended (the end is terminal).
    private mutating func enter(_ next: Phase) {
        if phase != .finished { phase = next }
    }

    private var holding: Abandon {
        switch phase {
        case .waitingForConnection: return .cancelConnectionWait
        case .upstreamRequestSent, .responseStreaming: return .closeConnection
        case .backingOff: return .cancelBackoff
        case .waitingForDeployment: return .cancelDeploymentWait
        case .followingFlight: return .leaveFlight
        case .admitting, .collectingBody, .cacheLookup, .choosingDeployment, .finished: return .nothing
        }
    }
}
