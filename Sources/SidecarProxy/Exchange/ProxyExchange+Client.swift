import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore
import Tracing
import SidecarStore
import SidecarTLS
import Foundation

/// The client side: its writability, its going away, and the single exit for failures.
extension ProxyExchange {
    // MARK: the client

    /// Keeps a sent part for the one replay, up to `maxReplayBytes`; beyond that, gives up the
    /// replay and the memory.
    func keepForReplay(_ buffer: ByteBuffer) {
        if bodyBytes <= Self.maxReplayBytes {
            body.append(buffer)
        } else {
            machine.bodyReleased()
            body.removeAll()
        }
    }

    /// Backpressure the other way: an upstream that cannot take more pauses reading the client's body.
    func upstreamWritabilityChanged(writable: Bool) {
        if !detached { downstream.setReadsPaused(!writable) }
    }

    /// Backpressure: a client that cannot take more pauses reading from the upstream. (A flight's
    /// followers do not pause it: what they have not read yet waits in their own buffers, at most
    /// `max_entry_bytes` for late joiners.)
    func downstreamWritabilityChanged(writable: Bool) {
        if machine.isForwarding, !detached, let lease = upstream { lease.connection.setReadsPaused(!writable) }
    }

    /// The client went away: stop waiting, or close the upstream connection (never pool a
    /// connection whose response was not read to its end). A flight leader with followers goes on
    /// without its client: the followers still need the answer.
    func downstreamClosed() {
        switch machine.clientClosed() {
        case .leaveFlight:
            if let f = followed { f.flight.leave(f.id) }
            followed = nil
        case .askFollowers:
            if let c = cacheState, c.registered, let flight = c.flight {
                if !flight.leaderLeft() {
                    machine.detach()
                    retainedWhileDetached = self
                    if machine.isForwarding, let lease = upstream { lease.connection.setReadsPaused(false) }
                    return
                }
                c.cache.endFlight(flight)
                cacheState = nil
            }
            if machine.phase == .cacheLookup { return machine.end() }
            abandonUpstream()
        case .abandon(let held):
            giveUp(held)
        }
    }

    /// Stops waiting for a connection, or closes the leased one (never pooled half-read): ends here.
    func abandonUpstream() {
        giveUp(machine.abandon())
    }

    /// Gives up what the request held where it ended (the machine says what), its deployment
    /// slot, and a reservation the answer did not settle.
    func giveUp(_ held: ExchangeStateMachine.Abandon) {
        firstTokenTimer?.cancel()
        firstTokenTimer = nil
        switch held {
        case .nothing:
            break
        case .cancelConnectionWait:
            if let waiter = connectionWaiter { pool?.cancel(waiter) }
        case .closeConnection:
            if let lease = upstream { drop(lease) }
        case .cancelBackoff:
            backoffTimer?.cancel()
        case .cancelDeploymentWait:
            if let wait = deploymentWait {
                wait.timer.cancel()
                _ = wait.route.cancel(waiter: wait.id)  // if already granted, the grant sees we left and gives it back
            }
        case .leaveFlight:
            if let f = followed { f.flight.leave(f.id) }
        }
        connectionWaiter = nil
        upstream = nil
        backoffTimer = nil
        deploymentWait = nil
        followed = nil
        releaseSlot(.neutral)
        settleUnmetered()
    }

    // MARK: the single exit for failures

    /// Ends the request with `error` (the machine's one exit): gives up what it holds, then
    /// answers the error if nothing was sent, or cuts the response if something was.
    func fail(_ error: ProxyError) {
        traceAttemptEnded(status: nil, error: error)
        span?.setStatus(SpanStatus(code: .error, message: error.message))
        span?.attributes["error.type"] = error.codeString
        let failure = machine.fail(error)
        giveUp(failure.abandon)
        if case .cut = failure.exit { downstream.recordError(error, model: requestModel, cut: true) }  // answered errors: respondWithError
        tellClient(failure.exit, error)
    }

    private func tellClient(_ exit: ExchangeStateMachine.Exit, _ error: ProxyError) {
        settleUnmetered()
        if let c = cacheState, let flight = c.flight {
            // Followers get the same end: the same error, or the same cut.
            flight.publish(responseStarted ? .aborted : .failed(error))
            if c.registered { c.cache.endFlight(flight) }
            if flight.joinedCount > 0 { c.cache.finish(.init(
                key: flight.key, scope: c.scope, model: c.model, endpoint: "", status: 0, contentType: nil, isStream: false, framed: false,
                ttl: 0, body: nil, coalesced: flight.joinedCount, usage: nil, flight: nil)) }
            cacheState = nil
        }
        switch exit {
        case .none:
            return  // a detached leader: only its followers hear of it
        case .cut:
            metrics.error(error.codeString)
            downstream.abortResponse()
        case .answer(let error):
            metrics.error(error.codeString)
            group?.metrics.response(status: error.status)
            // 413: the rest of a too-large body is not worth reading; close instead.
            downstream.respondWithError(error, closeAfter: error.status == 413,
                                        extraHeaders: attempt > 0 ? [("x-sidecar-attempts", String(attempt))] : [])
        }
    }
}
