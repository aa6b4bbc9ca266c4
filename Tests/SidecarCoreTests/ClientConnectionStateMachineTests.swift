import NIOCore
import SidecarCore
import XCTest

final class ClientConnectionStateMachineTests: XCTestCase {
    typealias SM = ClientConnectionStateMachine
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func testOneKeepAliveRequestAfterAnother() {
        var c = SM(now: t0)
        XCTAssertEqual(c.receive(), .deliver)
        c.headDelivered(keepAlive: true)
        XCTAssertTrue(c.keepAlive)
        XCTAssertEqual(c.receive(), .deliver)  // its body
        XCTAssertNil(c.endDelivered(now: t0))
        XCTAssertEqual(c.responseFinished(now: t0 + .seconds(1)), .nextRequest)
        XCTAssertEqual(c.phase, .idle(since: t0 + .seconds(1)))
        XCTAssertFalse(c.takeQueued())
        XCTAssertEqual(c.cycleDone(idleTimeout: .seconds(60)), .armIdleCheck(t0 + .seconds(61)))
    }

    func testPipelinedPartsWaitBehindTheOpenAnswerAndComeOutInOrder() {
        var c = SM(now: t0)
        _ = c.receive()
        c.headDelivered(keepAlive: true)
        XCTAssertNil(c.endDelivered(now: t0))
        // The next request's head, body and end arrive while the first is answered.
        XCTAssertEqual([c.receive(), c.receive(), c.receive()], [.queue, .queue, .queue])
        XCTAssertFalse(c.takeQueued(), "not while the answer is open")
        XCTAssertEqual(c.responseFinished(now: t0), .nextRequest)
        XCTAssertTrue(c.takeQueued())
        c.headDelivered(keepAlive: true)
        XCTAssertTrue(c.takeQueued())  // body
        XCTAssertTrue(c.takeQueued())  // end
        XCTAssertNil(c.endDelivered(now: t0))
        XCTAssertFalse(c.takeQueued())
        XCTAssertEqual(c.cycleDone(idleTimeout: .seconds(1)), .busy)
        // A new part while the queue is empty but the answer open is still queued.
        XCTAssertEqual(c.receive(), .queue)
    }

    func testAnAnswerBeforeTheRequestsEndWaitsForIt() {
        var c = SM(now: t0)
        c.headDelivered(keepAlive: true)
        XCTAssertEqual(c.responseFinished(now: t0), .awaitRequestEnd)
        XCTAssertEqual(c.receive(), .deliver, "the rest of the body is read (and dropped by the handler)")
        XCTAssertEqual(c.endDelivered(now: t0 + .seconds(2)), .nextRequest)
        XCTAssertEqual(c.phase, .idle(since: t0 + .seconds(2)))
    }

    func testTheLastAnswerClosesOrLingers() {
        var c = SM(now: t0)
        c.headDelivered(keepAlive: false)
        _ = c.endDelivered(now: t0)
        XCTAssertEqual(c.receive(), .queue)
        XCTAssertEqual(c.responseFinished(now: t0), .closeAfterWrite)
        XCTAssertEqual(c.queuedParts, 0, "what was pipelined behind a last answer is dropped")
        XCTAssertEqual(c.receive(), .drop)

        var d = SM(now: t0)
        d.headDelivered(keepAlive: true)
        d.closeAfterResponse()  // e.g. a 413: the body will not be read
        XCTAssertFalse(d.keepAlive)
        XCTAssertEqual(d.responseFinished(now: t0), .lingerAfterWrite)
        XCTAssertEqual(d.receive(), .drop)
        XCTAssertTrue(d.readRequested(), "a lingering connection drains its input")
        XCTAssertFalse(d.inputClosed(), "the answer is still being written")
        XCTAssertTrue(d.lingerStarted(), "written, and the client is done: close")
        XCTAssertEqual(d.phase, .closed)

        var e = SM(now: t0)
        e.headDelivered(keepAlive: true)
        e.closeAfterResponse()
        _ = e.responseFinished(now: t0)
        XCTAssertFalse(e.lingerStarted())
        XCTAssertEqual(e.phase, .lingering(draining: true))
        XCTAssertTrue(e.inputClosed())
    }

    func testARefusalWaitsForTheAnswersBeforeIt() {
        var c = SM(now: t0)
        c.headDelivered(keepAlive: true)
        _ = c.endDelivered(now: t0)
        _ = c.receive()  // a queued head before the bad bytes
        c.framingFailed()
        XCTAssertFalse(c.mayRead)
        XCTAssertEqual(c.refusalDue(hasExchange: true, responseStarted: true), .wait)
        XCTAssertEqual(c.responseFinished(now: t0), .nextRequest)
        XCTAssertTrue(c.takeQueued())
        c.headDelivered(keepAlive: true)
        XCTAssertEqual(c.refusalDue(hasExchange: false, responseStarted: false), .wait, "that request's answer is not written yet")
        XCTAssertEqual(c.responseFinished(now: t0), .refuse)
        XCTAssertEqual(c.refusalDue(hasExchange: false, responseStarted: false), .answer(inBody: true, abandonExchange: false))
        XCTAssertFalse(c.keepAlive)
        XCTAssertEqual(c.refusal, .answering)
        XCTAssertEqual(c.responseFinished(now: t0), .lingerAfterWrite)
    }

    func testBadBytesInABodyAbandonOrCutItsRequest() {
        var c = SM(now: t0)
        c.headDelivered(keepAlive: true)
        c.framingFailed()
        XCTAssertEqual(c.refusalDue(hasExchange: true, responseStarted: false), .answer(inBody: true, abandonExchange: true))

        var d = SM(now: t0)
        d.headDelivered(keepAlive: true)
        d.framingFailed()
        XCTAssertEqual(d.refusalDue(hasExchange: true, responseStarted: true), .cut)
        XCTAssertEqual(d.phase, .closed)

        var idle = SM(now: t0)
        idle.framingFailed()
        XCTAssertEqual(idle.refusalDue(hasExchange: false, responseStarted: false), .answer(inBody: false, abandonExchange: false))
    }

    func testHalfCloseAndQuiesce() {
        var idle = SM(now: t0)
        XCTAssertTrue(idle.inputClosed())

        var busy = SM(now: t0)
        busy.headDelivered(keepAlive: true)
        _ = busy.endDelivered(now: t0)
        XCTAssertFalse(busy.inputClosed())
        XCTAssertEqual(busy.responseFinished(now: t0), .closeAfterWrite)

        var q = SM(now: t0)
        q.headDelivered(keepAlive: true)
        XCTAssertFalse(q.quiesce())
        XCTAssertFalse(q.keepAlive, "the current request is the last")
        XCTAssertTrue(SM(now: t0).quiesceCopy(), "idle: close now")
    }

    func testReadsAreHeldWhileTheQueueIsLongOrTheUpstreamIsFull() {
        var c = SM(now: t0, maxQueuedParts: 2)
        c.headDelivered(keepAlive: true)
        _ = c.endDelivered(now: t0)
        _ = c.receive()
        XCTAssertTrue(c.readRequested())
        _ = c.receive()
        XCTAssertFalse(c.readRequested())
        XCTAssertTrue(c.readPending)
        XCTAssertFalse(c.resumeReads())
        _ = c.responseFinished(now: t0)
        XCTAssertTrue(c.takeQueued())
        XCTAssertTrue(c.resumeReads(), "the queue shrank: the held read goes")
        XCTAssertFalse(c.resumeReads(), "once")

        var u = SM(now: t0)
        XCTAssertFalse(u.upstreamPaused(true))
        XCTAssertFalse(u.readRequested())
        XCTAssertTrue(u.upstreamPaused(false))
    }

    func testIdleChecksWithAManualClock() {
        var c = SM(now: t0)
        XCTAssertEqual(c.idleCheck(now: t0 + .seconds(30), timeout: .seconds(60)), .recheck(t0 + .seconds(60)))
        c.headDelivered(keepAlive: true)
        XCTAssertEqual(c.idleCheck(now: t0 + .seconds(90), timeout: .seconds(60)), .none, "busy is not idle")
        _ = c.endDelivered(now: t0)
        _ = c.responseFinished(now: t0 + .seconds(100))
        XCTAssertEqual(c.idleCheck(now: t0 + .seconds(120), timeout: .seconds(60)), .recheck(t0 + .seconds(160)))
        XCTAssertEqual(c.idleCheck(now: t0 + .seconds(160), timeout: .seconds(60)), .close)
        XCTAssertEqual(c.phase, .closed)
    }

    /// A client pipelines random requests (some with bodies, some `Connection: close`, some bad
    /// bytes at the end) and a handler answers them, some before their body ends, while a
    /// shadow model checks what must hold: parts reach the handler exactly once and in the order
    /// they arrived; a head only when the connection is idle; answers in request order, one at a
    /// time; nothing after the last answer; the refusal only after every answer before it; reads
    /// never asked for while the queue is full.
    func testRandomPipelinesAgainstAShadowModel() {
        var rng = SplitMix64(seed: 0x5EED)
        for round in 0..<400 {
            let maxQueued = Int(rng.next() % 4) + 1
            var c = SM(now: t0, maxQueuedParts: maxQueued)
            // The client's parts: (request index, kind, keepAlive).
            var script: [(request: Int, kind: Int, keepAlive: Bool)] = []
            let requests = Int(rng.next() % 5) + 1
            for r in 0..<requests {
                let keepAlive = rng.next() % 6 != 0
                script.append((r, 0, keepAlive))
                for _ in 0..<Int(rng.next() % 3) { script.append((r, 1, keepAlive)) }
                script.append((r, 2, keepAlive))
            }
            let badBytes = rng.next() % 3 == 0
            var next = 0                         // next part the client sends
            var queue: [Int] = []                // parts queued, by script index
            var delivered: [Int] = []            // script indices, in delivery order
            var serving: Int?                    // request being answered
            var answered: [Int] = []
            var responseOpen = false
            var closed = false
            var refusalAnswered = false

            func deliver(_ i: Int) {
                let part = script[i]
                delivered.append(i)
                switch part.kind {
                case 0:
                    XCTAssertFalse(responseOpen, "round \(round): a head while an answer is open")
                    if case .idle = c.phase {} else { XCTFail("round \(round): a head while not idle: \(c.phase)") }
                    c.headDelivered(keepAlive: part.keepAlive)
                    serving = part.request
                    responseOpen = true
                case 2:
                    if let after = c.endDelivered(now: t0) { perform(after) }
                default:
                    break
                }
            }
            func perform(_ after: SM.AfterResponse) {
                switch after {
                case .awaitRequestEnd: break
                case .nextRequest: cycle()
                case .closeAfterWrite, .lingerAfterWrite: closed = true
                case .refuse: refuse()
                }
            }
            func cycle() {
                c.clearUpstreamPause()
                while c.takeQueued() { deliver(queue.removeFirst()) }
                _ = c.resumeReads()
                switch c.cycleDone(idleTimeout: .seconds(5)) {
                case .busy, .armIdleCheck: break
                case .close: closed = true
                case .refuse: refuse()
                }
            }
            func refuse() {
                switch c.refusalDue(hasExchange: false, responseStarted: false) {
                case .wait: break
                case .cut: closed = true
                case .answer:
                    XCTAssertTrue(queue.isEmpty, "round \(round): refusal before queued requests")
                    XCTAssertFalse(responseOpen, "round \(round): refusal while an answer is open")
                    XCTAssertFalse(refusalAnswered)
                    refusalAnswered = true
                    responseOpen = true
                    serving = -1
                }
            }

            for _ in 0..<200 where !closed {
                switch rng.next() % 3 {
                case 0:
                    // The client's next bytes, if the handler reads.
                    guard c.readRequested() else { continue }
                    XCTAssertLessThan(c.queuedParts, maxQueued, "round \(round): read while the queue is full")
                    if next < script.count {
                        switch c.receive() {
                        case .deliver: deliver(next)
                        case .queue: queue.append(next)
                        case .drop: break
                        }
                        next += 1
                    } else if badBytes && c.refusal == .none {
                        c.framingFailed()
                        refuse()
                    }
                case 1:
                    // The handler finishes the open answer (possibly before the request's end).
                    guard responseOpen, let s = serving else { continue }
                    responseOpen = false
                    if s >= 0 {
                        XCTAssertEqual(s, answered.count, "round \(round): answers out of order")
                        answered.append(s)
                    }
                    perform(c.responseFinished(now: t0))
                default:
                    // Backpressure from the upstream comes and goes.
                    _ = c.upstreamPaused(rng.next() % 2 == 0)
                }
            }
            // Shadow: delivered parts are the arrived ones, in order, each once.
            XCTAssertEqual(delivered, Array(0..<delivered.count), "round \(round): order")
            XCTAssertEqual(answered, Array(0..<answered.count), "round \(round): answers in order")
            if let last = script.first(where: { !$0.keepAlive })?.request {
                XCTAssertTrue(delivered.allSatisfy { script[$0].request <= last }, "round \(round): a request after a Connection: close one was read")
            }
            if refusalAnswered { XCTAssertTrue(queue.isEmpty) }
        }
    }
}

private extension ClientConnectionStateMachine {
    func quiesceCopy() -> Bool {
        var copy = self
        return copy.quiesce()
    }
}
