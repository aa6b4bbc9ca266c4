import NIOCore
import SidecarCore
import XCTest

/// The request path as a state machine: each transition, then random event sequences against a
/// shadow model of the rules that must hold whatever happens.
final class ExchangeStateMachineTests: XCTestCase {
    typealias SM = ExchangeStateMachine
    let closed = ProxyError.upstreamClosed("closed before a response")
    let refused = ProxyError.upstreamConnect("refused")
    let firstByte = ProxyError.upstreamTimeout(.firstByte, after: "1s")
    let limits = SM.RetryLimits(maxAttempts: 3, deadline: .seconds(60))

    /// A plain request: sent at once, on a connection granted when asked.
    private func forwarding(collects: Bool = false, reused: Bool = false) -> SM {
        var m = SM(collectsBody: collects)
        if collects { XCTAssertEqual(m.requestEnded(), .decide) } else { XCTAssertTrue(m.start()) }
        m.connectionRequested()
        XCTAssertTrue(m.connectionGranted())
        return m
    }

    func testPlainRequestStreamsAndFinishes() {
        var m = SM(collectsBody: false)
        XCTAssertEqual(m.phase, .admitting)
        XCTAssertTrue(m.start())
        XCTAssertEqual(m.phase, .choosingDeployment)
        XCTAssertTrue(m.budgetCheckDue())
        XCTAssertFalse(m.budgetCheckDue(), "the budget is checked once")
        m.connectionRequested()
        XCTAssertEqual(m.phase, .waitingForConnection)
        XCTAssertTrue(m.connectionGranted())
        XCTAssertEqual(m.phase, .upstreamRequestSent)
        XCTAssertEqual(m.requestEnded(), .sendEnd)
        m.responseBegan(forwarded: true)
        XCTAssertEqual(m.phase, .responseStreaming)
        XCTAssertTrue(m.responseStarted)
        XCTAssertFalse(m.bodyKept)
        XCTAssertTrue(m.responseEnded())
        XCTAssertTrue(m.isFinished)
        XCTAssertFalse(m.responseEnded(), "one end")
        XCTAssertEqual(m.fail(closed), .init(abandon: .nothing, exit: .none), "nothing after the end")
    }

    func testCollectingWaitsForTheWholeBody() {
        var m = SM(collectsBody: true)
        XCTAssertFalse(m.start(), "waits for the body")
        XCTAssertEqual(m.phase, .collectingBody)
        XCTAssertEqual(m.requestEnded(), .decide)
        XCTAssertTrue(m.requestReceived)
        XCTAssertEqual(m.phase, .choosingDeployment)
        var big = SM(collectsBody: true)
        big.stopCollecting()
        XCTAssertEqual(big.phase, .choosingDeployment, "too large to key: forwarded as it arrives")
        XCTAssertEqual(big.requestEnded(), .none)
    }

    func testFailureBeforeAnyByteAnswersAndAfterCuts() {
        var m = forwarding()
        XCTAssertEqual(m.fail(.payloadTooLarge(limit: 1)), .init(abandon: .closeConnection, exit: .answer(.payloadTooLarge(limit: 1))))
        var s = forwarding()
        s.responseBegan(forwarded: true)
        XCTAssertEqual(s.fail(.payloadTooLarge(limit: 1)), .init(abandon: .closeConnection, exit: .cut))
        var held = forwarding()
        held.responseBegan(forwarded: false)
        XCTAssertFalse(held.responseStarted, "a held head reached nobody")
        XCTAssertEqual(held.fail(firstByte).exit, .answer(firstByte))
    }

    func testEachPhaseAbandonsWhatItHolds() {
        var w = SM(collectsBody: false)
        _ = w.start()
        w.connectionRequested()
        XCTAssertEqual(w.abandon(), .cancelConnectionWait)
        var b = SM(collectsBody: false)
        _ = b.start()
        b.backoffStarted()
        XCTAssertEqual(b.clientClosed(), .abandon(.cancelBackoff))
        var q = SM(collectsBody: false)
        _ = q.start()
        q.queuedForDeployment()
        XCTAssertEqual(q.fail(refused).abandon, .cancelDeploymentWait)
        var f = SM(collectsBody: true)
        _ = f.requestEnded()
        f.followStarted()
        XCTAssertEqual(f.clientClosed(), .leaveFlight)
        XCTAssertTrue(f.isFinished)
        var c = SM(collectsBody: true)
        XCTAssertEqual(c.clientClosed(), .abandon(.nothing))
    }

    func testStaleReusedConnectionReplaysOnce() {
        var m = forwarding(reused: true)
        _ = m.requestEnded()
        XCTAssertEqual(m.attemptFailed(closed, upstreamAnswered: false, reusedConnection: true, limits: nil, elapsed: .zero), .replayOnFreshConnection)
        XCTAssertTrue(m.replayed)
        m.connectionRequested()
        XCTAssertTrue(m.connectionGranted())
        XCTAssertEqual(m.attemptFailed(closed, upstreamAnswered: false, reusedConnection: true, limits: nil, elapsed: .zero), .fail(closed),
                       "one replay; unrouted: nowhere else")
        var dropped = forwarding()
        dropped.bodyReleased()
        XCTAssertEqual(dropped.attemptFailed(closed, upstreamAnswered: false, reusedConnection: true, limits: nil, elapsed: .zero), .fail(closed),
                       "a body not kept cannot be replayed")
    }

    func testRetryableFailureMovesElsewhereWhileAttemptsRemain() {
        var m = forwarding(collects: true)
        m.deploymentChosen()
        XCTAssertEqual(m.attemptFailed(refused, upstreamAnswered: false, reusedConnection: false, limits: limits, elapsed: .zero), .tryElsewhere)
        m.deploymentChosen()
        m.backoffStarted()
        XCTAssertTrue(m.backoffElapsed())
        XCTAssertFalse(m.backoffElapsed(), "one wake-up per backoff")
        m.connectionRequested()
        XCTAssertEqual(m.attemptFailed(refused, upstreamAnswered: false, reusedConnection: false, limits: limits, elapsed: .zero), .tryElsewhere)
        m.deploymentChosen()
        m.backoffStarted()
        _ = m.backoffElapsed()
        m.connectionRequested()
        XCTAssertEqual(m.attempts, 3)
        XCTAssertEqual(m.attemptFailed(refused, upstreamAnswered: false, reusedConnection: false, limits: limits, elapsed: .zero), .fail(refused),
                       "no attempts left")
        XCTAssertEqual(m.fail(refused), .init(abandon: .nothing, exit: .answer(refused)))
    }

    func testNoRetryWhenNeverRetryableAnsweredLateOrPastTheDeadline() {
        var m = forwarding(collects: true)
        m.deploymentChosen()
        XCTAssertEqual(m.attemptFailed(firstByte, upstreamAnswered: false, reusedConnection: false, limits: limits, elapsed: .zero), .fail(firstByte))
        var a = forwarding(collects: true)
        a.deploymentChosen()
        XCTAssertEqual(a.attemptFailed(closed, upstreamAnswered: true, reusedConnection: true, limits: limits, elapsed: .zero), .fail(closed))
        var d = forwarding(collects: true)
        d.deploymentChosen()
        XCTAssertEqual(d.attemptFailed(refused, upstreamAnswered: false, reusedConnection: false, limits: limits, elapsed: .seconds(61)), .fail(refused))
        var early = forwarding()
        early.deploymentChosen()
        XCTAssertFalse(early.mayMoveElsewhere(limits: limits, elapsed: .zero), "the request has not fully arrived")
        var gone = forwarding(collects: true)
        gone.detach()
        XCTAssertFalse(gone.mayMoveElsewhere(limits: limits, elapsed: .zero), "a detached leader goes nowhere else")
        XCTAssertEqual(gone.fail(refused).exit, .none, "nobody to answer")
    }

    func testLateEventsAreIgnored() {
        var m = SM(collectsBody: false)
        _ = m.start()
        XCTAssertFalse(m.connectionGranted(), "not waiting")
        XCTAssertFalse(m.deploymentGranted(), "not queued: the shell gives the slot back")
        XCTAssertEqual(m.attemptFailed(refused, upstreamAnswered: false, reusedConnection: false, limits: nil, elapsed: .zero), .ignore)
        XCTAssertEqual(m.lookupFinished(hit: true), .ignore)
        _ = m.fail(refused)
        m.connectionRequested()
        m.backoffStarted()
        XCTAssertTrue(m.isFinished, "finished is terminal")
    }

    func testAttemptMovedOffBeforeAnyByte() {
        var m = forwarding(collects: true)
        m.deploymentChosen()
        XCTAssertTrue(m.mayMoveElsewhere(limits: limits, elapsed: .zero))
        m.attemptAbandoned()
        XCTAssertEqual(m.phase, .choosingDeployment)
        m.deploymentChosen()
        m.backoffStarted()
        XCTAssertEqual(m.abandon(), .cancelBackoff)
        var late = forwarding(collects: true)
        late.deploymentChosen()
        late.responseBegan(forwarded: true)
        XCTAssertFalse(late.mayMoveElsewhere(limits: limits, elapsed: .zero), "never after the response started")
    }

    func testHeldHeadThenErrorAnswers() {
        var m = forwarding()
        _ = m.requestEnded()
        m.responseBegan(forwarded: false)  // a model list held for merging
        XCTAssertEqual(m.phase, .responseStreaming)
        XCTAssertEqual(m.attemptFailed(closed, upstreamAnswered: true, reusedConnection: true, limits: nil, elapsed: .zero), .fail(closed),
                       "the upstream answered: no replay")
        XCTAssertEqual(m.fail(closed), .init(abandon: .nothing, exit: .answer(closed)))
    }

    func testCacheLookupAndDetachedLeader() {
        var hit = SM(collectsBody: true)
        _ = hit.requestEnded()
        hit.cacheLookupStarted()
        XCTAssertEqual(hit.lookupFinished(hit: true), .replay)
        hit.answeredLocally()
        XCTAssertTrue(hit.isFinished && hit.responseStarted)
        var miss = SM(collectsBody: true)
        _ = miss.requestEnded()
        miss.cacheLookupStarted()
        XCTAssertEqual(miss.clientClosed(), .askFollowers)
        miss.detach()
        XCTAssertEqual(miss.lookupFinished(hit: false), .goUpstream)
        var detachedHit = SM(collectsBody: true)
        _ = detachedHit.requestEnded()
        detachedHit.cacheLookupStarted()
        detachedHit.detach()
        XCTAssertEqual(detachedHit.lookupFinished(hit: true), .finished)
        XCTAssertTrue(detachedHit.isFinished)
    }

    func testFollowerWithdrawnGoesAlone() {
        var m = SM(collectsBody: true)
        _ = m.requestEnded()
        m.followStarted()
        XCTAssertTrue(m.isFollowing)
        m.followAbandoned()
        XCTAssertEqual(m.phase, .choosingDeployment)
        var h = SM(collectsBody: true)
        _ = h.requestEnded()
        h.followStarted()
        h.followedHeadSent()
        XCTAssertEqual(h.fail(closed), .init(abandon: .leaveFlight, exit: .cut))
    }

    /// Random event sequences (a shell that may also report late or stray events) against a shadow
    /// model that knows only the rules: the end is reached once and stays; what is held is given
    /// up exactly once, and only what is held; nothing is retried once the response started; one
    /// replay at most; another deployment only while attempts and time remain; a failure answers
    /// only when nothing was sent, cuts when something was, and is silent for a detached leader.
    func testRandomEventsAgainstShadowModel() {
        var rng = SplitMix64(seed: 0xE5C4A1)
        let errors = [closed, refused, firstByte, .upstreamTLS("x"), .upstreamProtocol("x"), .upstreamTimeout(.poolQueue, after: "1s")]
        // Weighted towards the upstream attempt (ask, grant, fail, back off), where the rules bite.
        let events = [0, 1, 1, 1, 2, 2, 2, 3, 4, 4, 4, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 12, 13, 14]
        for round in 0..<1000 {
            let routed = rng.next() % 2 == 0
            let lim: SM.RetryLimits? = routed ? .init(maxAttempts: Int(rng.next() % 4) + 1, deadline: .seconds(10)) : nil
            var m = SM(collectsBody: rng.next() % 2 == 0)
            // The shadow model.
            var held = SM.Abandon.nothing
            var ended = false
            var sent = false, received = false, detached = false, kept = true
            var replays = 0, attempts = 0, terminals = 0
            var forwarding = false  // an upstream connection is carrying this request

            func ends(_ what: String) {
                XCTAssertFalse(ended, "round \(round): \(what) ended twice")
                ended = true
                terminals += 1
                held = .nothing
                forwarding = false
            }
            func failed(_ f: SM.Failure, _ e: ProxyError, _ what: String) {
                if ended {
                    XCTAssertEqual(f, .init(abandon: .nothing, exit: .none), "round \(round): \(what) after the end")
                    return
                }
                XCTAssertEqual(f.abandon, held, "round \(round): \(what) gave up the wrong thing")
                XCTAssertEqual(f.exit, detached ? .none : sent ? .cut : .answer(e), "round \(round): \(what)")
                ends(what)
            }

            for step in 0..<60 {
                let what = "step \(step)"
                switch events[Int(rng.next() % UInt64(events.count))] {
                case 0:
                    let r = m.requestEnded()
                    received = true
                    if r == .sendEnd { XCTAssertTrue(forwarding, "round \(round): \(what) sendEnd while not forwarding") }
                case 1:
                    if !ended, held == .nothing, !forwarding { m.connectionRequested(); held = .cancelConnectionWait }
                case 2:
                    let ok = m.connectionGranted()
                    XCTAssertEqual(ok, held == .cancelConnectionWait, "round \(round): \(what) grant")
                    if ok { held = .closeConnection; forwarding = true }
                case 3:
                    if forwarding {
                        let fwd = rng.next() % 4 != 0
                        m.responseBegan(forwarded: fwd)
                        if fwd { sent = true }
                        kept = false
                    }
                case 4:
                    let e = errors[Int(rng.next() % UInt64(errors.count))]
                    let answered = rng.next() % 4 == 0, reused = rng.next() % 2 == 0
                    let elapsed = TimeAmount.seconds(Int64(rng.next() % 12))
                    let r = m.attemptFailed(e, upstreamAnswered: answered, reusedConnection: reused, limits: lim, elapsed: elapsed)
                    guard !ended, held == .cancelConnectionWait || held == .closeConnection else {
                        XCTAssertEqual(r, .ignore, "round \(round): \(what) stray failure")
                        break
                    }
                    held = .nothing
                    forwarding = false
                    let late = sent || answered || m.phase == .finished
                    switch r {
                    case .replayOnFreshConnection:
                        XCTAssertFalse(late, "round \(round): \(what) replay after the response started")
                        XCTAssertTrue(reused && kept && e.retry == .connectionClosed, "round \(round): \(what)")
                        replays += 1
                        XCTAssertLessThanOrEqual(replays, 1, "round \(round): \(what) replayed twice")
                    case .tryElsewhere:
                        XCTAssertFalse(late, "round \(round): \(what) retry after the response started")
                        XCTAssertNotEqual(e.retry, .never)
                        XCTAssertTrue(lim != nil && attempts < lim!.maxAttempts && elapsed < lim!.deadline && received && kept && !detached,
                                      "round \(round): \(what) retried without attempts, time, the body or the client")
                        if rng.next() % 3 == 0 { failed(m.fail(e), e, what) } else { m.backoffStarted(); held = .cancelBackoff }
                    case .fail(let err):
                        XCTAssertEqual(err, e)
                        failed(m.fail(err), err, what)
                    case .ignore:
                        XCTFail("round \(round): \(what) ignored a failure of the current attempt")
                    }
                case 5:
                    let ok = m.backoffElapsed()
                    XCTAssertEqual(ok, held == .cancelBackoff, "round \(round): \(what) backoff")
                    if ok { held = .nothing }
                case 6:
                    if !ended, held == .nothing, !forwarding { m.queuedForDeployment(); held = .cancelDeploymentWait }
                case 7:
                    let ok = m.deploymentGranted()
                    XCTAssertEqual(ok, held == .cancelDeploymentWait, "round \(round): \(what) deployment grant")
                    if ok { held = .nothing }
                case 8:
                    if !ended, held == .nothing, !forwarding, m.phase != .collectingBody { m.deploymentChosen(); attempts += 1 }
                case 9:
                    if rng.next() % 3 == 0 { m.bodyReleased(); kept = false }
                case 10:
                    if !ended, held == .closeConnection || m.phase == .cacheLookup, rng.next() % 2 == 0 {
                        m.detach()
                        detached = true
                    }
                case 11:
                    let e = errors[Int(rng.next() % UInt64(errors.count))]
                    if rng.next() % 3 == 0 { failed(m.fail(e), e, what) }
                case 12:
                    if rng.next() % 4 == 0 {
                        let was = ended
                        let hadConnection = held == .closeConnection
                        let ok = m.responseEnded()
                        XCTAssertEqual(ok, hadConnection && !was, "round \(round): \(what) end")
                        if ok { ends(what) }
                    }
                case 13:
                    // A status the group retries, or no first token in time: the shell moves the attempt.
                    if forwarding, m.mayMoveElsewhere(limits: lim, elapsed: .zero) {
                        XCTAssertFalse(sent, "round \(round): \(what) moved after the response started")
                        m.attemptAbandoned()
                        held = .nothing
                        forwarding = false
                    }
                default:
                    XCTAssertFalse(m.mayMoveElsewhere(limits: lim, elapsed: .zero) && (sent || !received || !kept || detached || lim == nil),
                                   "round \(round): \(what) may move")
                }
                XCTAssertEqual(m.isFinished, ended, "round \(round): after \(what)")
                XCTAssertEqual(m.responseStarted, sent, "round \(round): after \(what)")
                XCTAssertEqual(m.replayed, replays == 1, "round \(round): after \(what)")
                XCTAssertEqual(m.attempts, attempts, "round \(round): after \(what)")
            }
            // Whatever happened, the request ends exactly once.
            let e = errors[0]
            failed(m.fail(e), e, "the final failure")
            XCTAssertEqual(terminals, 1, "round \(round)")
            XCTAssertTrue(m.isFinished)
        }
    }
}
