import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore
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
            replayable = false
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
        if case .forwarding(let lease) = phase, !detached { lease.connection.setReadsPaused(!writable) }
    }

    /// The client went away: stop waiting, or close the upstream connection (never pool a
    /// connection whose response was not read to its end). A flight leader with followers goes on
    /// without its client: the followers still need the answer.
    func downstreamClosed() {
        switch phase {
        case .following(let flight, let id):
            flight.leave(id)
            phase = .done
            return
        case .lookingUp, .waitingForConnection, .forwarding:
            if let c = cacheState, c.registered, let flight = c.flight {
                if !flight.leaderLeft() {
                    detached = true
                    retainedWhileDetached = self
                    if case .forwarding(let lease) = phase { lease.connection.setReadsPaused(false) }
                    return
                }
                c.cache.endFlight(flight)
                cacheState = nil
            }
            if case .lookingUp = phase { phase = .done; return }
        default:
            break
        }
        abandonUpstream()
    }

    /// Stops waiting for a connection, or closes the leased one (never pooled half-read).
    func abandonUpstream() {
        firstTokenTimer?.cancel()
        firstTokenTimer = nil
        switch phase {
        case .waitingForConnection(let waiter):
            pool?.cancel(waiter)
        case .forwarding(let lease):
            drop(lease)
        case .backingOff(let timer):
            timer.cancel()
        case .waitingForDeployment(let r, let id, let timer):
            timer.cancel()
            _ = r.cancel(waiter: id)  // if already granted, the grant sees we left and gives it back
        case .done, .collecting, .lookingUp:
            break
        case .following(let flight, let id):
            flight.leave(id)
        }
        phase = .done
        releaseSlot(.neutral)
        settleUnmetered()
    }

    // MARK: the single exit for failures

    func fail(_ error: ProxyError) {
        abandonUpstream()
        answer(error)
    }

    func answer(_ error: ProxyError) {
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
        if detached { return }
        metrics.error(error.codeString)
        if !responseStarted { group?.metrics.response(status: error.status) }
        if responseStarted {
            downstream.abortResponse()
        } else {
            // 413: the rest of a too-large body is not worth reading; close instead.
            downstream.respondWithError(error, closeAfter: error.status == 413,
                                        extraHeaders: attempt > 0 ? [("x-sidecar-attempts", String(attempt))] : [])
        }
    }
}
