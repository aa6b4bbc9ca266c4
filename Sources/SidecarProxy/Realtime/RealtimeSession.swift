import DequeModule
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore
import SidecarStore

/// One WebSocket session (the Realtime API, or any upgrade on a forwarded path) relayed to the
/// upstream of its dialect (docs/dialects.md, "WebSockets").
///
/// The client's upgrade request goes upstream on a connection of its own (not pooled: a session
/// holds it for minutes) with the upstream's key in place of the client's (also when the client
/// sent its key in the `openai-insecure-api-key.` subprotocol, as browsers must) and without
/// `Sec-WebSocket-Extensions` (no compression: the sidecar reads the messages). The upstream's
/// `101` goes back to the client byte for byte (its `Sec-WebSocket-Accept` answers the client's
/// own key); any other answer goes back as the upstream's status and body.
///
/// Then frames pass both ways as they came (`WebSocketFrameReader` finds their boundaries), with
/// backpressure: one side is read only while the other takes writes. Upstream frames go on at
/// once; the sidecar reads its text messages for `response.done` (usage, priced and recorded,
/// settling the budget) and the session's model. A client data message is held until its last
/// frame, so a `response.create` (which may be billed) is checked against `[budgets]` before it
/// is sent: over budget, the client gets the API's own `error` event and the message is dropped.
///
/// The session ends when either side closes; after `websocket_idle_timeout` without a frame,
/// after `websocket_max_duration`, and when a stop's drain timeout runs out, both sides get a
/// close frame (1001) first. It counts as one request in flight, so a stop waits for it.
final class RealtimeSession {
    enum Phase { case connecting, handshaking, open, closed }

    let downstream: DownstreamHandler
    let group: UpstreamGroup
    let clientHead: HTTPRequestHead
    /// The client for limits, budgets and spend: its credential, hashed.
    let client: String
    let settings: SidecarConfiguration.Server
    var phase = Phase.connecting
    var upstream: Channel?
    /// The upstream's answer to the upgrade, until its head (and a refusal's body) is whole.
    var handshake = ByteBuffer()
    var handshakeScanner = HTTPResponseHeadScanner()
    var handshakeHead: ScannedResponseHead?
    var clientFrames = WebSocketFrameReader(fromClient: true)
    var upstreamFrames = WebSocketFrameReader(fromClient: false)
    /// A client data message being assembled: held until its last frame.
    var held: [ByteBuffer] = []
    var heldText: [UInt8] = []
    var heldIsText = false
    /// An upstream text message being assembled to be read (its frames are already forwarded).
    var serverText: [UInt8] = []
    var serverIsText = false
    /// The largest message the sidecar reads (and, from the client, holds); a larger client
    /// message ends the session (1009), a larger server message is forwarded unread.
    static let maxMessageBytes = 4 << 20

    /// The model the session is priced as: the URL's `model=` (or Azure's `deployment=`), else
    /// what `session.created` says.
    var model: String?
    let started = NIODeadline.now()
    var lastFrame = NIODeadline.now()
    var idleTimer: Scheduled<Void>?
    var maxTimer: Scheduled<Void>?
    /// Reads of the client held while the upstream takes no writes (and the reverse, below).
    var clientReadPaused = false
    var clientReadPending = false
    var upstreamReadPaused = false
    var upstreamReadPending = false

    // Budgets: one reservation per `response.create` sent, settled by its `response.done`.
    var reservations: Deque<BudgetLedger.Reservation> = []
    /// `response.created` seen without its `response.done`: billed even if the session is cut.
    var responsesInProgress = 0
    /// The input of the last response (the conversation so far) and the client's bytes since:
    /// the next response's input is at most their sum (bytes at 4 a token overcount audio).
    var lastInputTokens: Int64 = 0
    var clientBytesSinceResponse = 0
    static let maxReservedInputTokens: Int64 = 128_000

    var state: ServerState { downstream.state }
    var logger: Logger { downstream.state.logger }

    init(downstream: DownstreamHandler, group: UpstreamGroup, head: HTTPRequestHead, settings: SidecarConfiguration.Server) {
        self.downstream = downstream
        self.group = group
        self.clientHead = head
        self.settings = settings
        self.client = downstream.scope(of: Self.credentialHeaders(head.headers))
        self.model = RealtimeEvents.model(inTarget: head.uri)
    }

    /// A GET with `Upgrade: websocket` and `Connection: upgrade` (RFC 6455 §4.1). Other methods
    /// are not looked at (every proxied request passes here); their `Upgrade` is hop-by-hop and dropped.
    static func isUpgrade(_ head: HTTPRequestHead) -> Bool {
        head.method == .GET && head.headers[canonicalForm: "upgrade"].contains { HeaderPolicy.equalsIgnoringASCIICase($0, "websocket") }
            && head.headers[canonicalForm: "connection"].contains { HeaderPolicy.equalsIgnoringASCIICase($0, "upgrade") }
    }

    /// The subprotocol browsers carry their key in.
    static let keyProtocolPrefix = "openai-insecure-api-key."

    /// The headers the client is known by: its credential headers, or the key in its subprotocol.
    static func credentialHeaders(_ headers: HTTPHeaders) -> HTTPHeaders {
        for value in headers[canonicalForm: "sec-websocket-protocol"] where value.hasPrefix(keyProtocolPrefix) {
            var out = headers
            out.replaceOrAdd(name: "authorization", value: "Bearer " + value.dropFirst(keyProtocolPrefix.count))
            return out
        }
        return headers
    }

    // MARK: the client's side

    func fromClient(_ buffer: ByteBuffer) {
        lastFrame = .now()
        clientFrames.append(buffer)
        guard phase == .open else {
            // RFC 6455 §4.1: a client sends frames only after the 101. Held until then (bounded).
            if clientFrames.bufferedBytes > Self.maxMessageBytes { end(code: 1009, "frames before the handshake finished") }
            return
        }
        relayClientFrames()
    }

    func relayClientFrames() {
        guard let upstream else { return }
        var wrote = false
        while phase == .open {
            let frame: WebSocketFrameReader.Frame?
            do { frame = try clientFrames.next() } catch { return end(code: error.closeCode, error.reason) }
            guard let frame else { break }
            if frame.opcode.isControl {
                upstream.write(frame.bytes, promise: nil)
                wrote = true
                continue
            }
            if frame.opcode != .continuation {
                heldIsText = frame.opcode == .text
                heldText.removeAll(keepingCapacity: true)
            }
            held.append(frame.bytes)
            clientBytesSinceResponse += frame.payload.count
            if heldIsText { heldText += frame.payload }
            guard heldText.count <= Self.maxMessageBytes else { return end(code: 1009, "a message larger than the sidecar relays") }
            guard frame.fin else { continue }
            let message = held
            held.removeAll(keepingCapacity: true)
            if heldIsText, !admit(heldText) { continue }
            for part in message { upstream.write(part, promise: nil) }
            wrote = true
        }
        if wrote { upstream.flush() }
    }

    /// Whether a complete client text message may go: a `response.create` must fit the budget.
    func admit(_ message: [UInt8]) -> Bool {
        let budgets = downstream.runtime.configuration.budgets
        guard !budgets.limits.isEmpty, RealtimeEvents.type(of: message) == "response.create" else { return true }
        let budget = state.budget
        if let why = budget.unavailable { return refuse("budget_unavailable", why) }
        guard let price = downstream.runtime.priceTable.price(of: model ?? "") else {
            guard budgets.unpriced == .allow else {
                return refuse("model_not_priced", "the session's model \(model ?? "(none named)") has no price, so a response cannot be reserved against [budgets]; add [prices.\"MODEL\"]")
            }
            return true
        }
        let input = min(lastInputTokens + Int64(clientBytesSinceResponse / 4), Self.maxReservedInputTokens)
        let output = Int64(RealtimeEvents.maxOutputTokens(of: message) ?? 4_096)
        let now = state.cache?.clock() ?? Int64(Date().timeIntervalSince1970)
        switch budget.reserve(price.cost(promptTokens: input, completionTokens: output), client: client, limits: budgets.limits, now: now) {
        case .success(let r):
            reservations.append(r)
            return true
        case .failure(let refusal):
            return refuse("budget_exceeded", ProxyError.budgetExceeded(refusal.refusal).message.replacingOccurrences(of: "This request", with: "This response"))
        }
    }

    /// Answers a message that was not forwarded with the API's `error` event.
    func refuse(_ code: String, _ message: String) -> Bool {
        state.metrics.error(code)
        downstream.writeTunnel(ByteBuffer(bytes: WebSocketFrameReader.serverFrame(.text, RealtimeEvents.errorEvent(code: code, message: message))))
        downstream.flush()
        return false
    }

    // MARK: the upstream's side, once open

    func relayUpstreamFrames() {
        var wrote = false
        while phase == .open {
            let frame: WebSocketFrameReader.Frame?
            do { frame = try upstreamFrames.next() } catch { return end(code: error.closeCode, error.reason) }
            guard let frame else { break }
            downstream.writeTunnel(frame.bytes)
            wrote = true
            guard !frame.opcode.isControl else { continue }
            if frame.opcode != .continuation {
                serverIsText = frame.opcode == .text
                serverText.removeAll(keepingCapacity: true)
            }
            if serverIsText, serverText.count + frame.payload.count <= Self.maxMessageBytes { serverText += frame.payload } else { serverIsText = false }
            if frame.fin, serverIsText { read(serverText) }
        }
        if wrote { downstream.flush() }
    }

    /// A whole server text message: the events that bill, and the model.
    func read(_ message: [UInt8]) {
        switch RealtimeEvents.type(of: message) {
        case "response.created":
            responsesInProgress += 1
        case "response.done":
            responsesInProgress = max(0, responsesInProgress - 1)
            settle(RealtimeEvents.usage(ofResponseDone: message))
        case "session.created", "session.updated":
            if model == nil { model = RealtimeEvents.sessionModel(of: message) }
        default:
            break
        }
    }

    /// One response is done: its cost settles the oldest reservation and is recorded as spend.
    func settle(_ usage: ResponseInspector.Usage?) {
        let reservation = reservations.popFirst()
        let limits = downstream.runtime.configuration.budgets.limits
        guard let usage else {
            // Usage unread: the budget keeps the reservation (the most it could cost).
            if let r = reservation { _ = state.budget.settle(r, actual: r.amount, limits: limits) }
            state.metrics.unmeteredAnswer()
            return
        }
        lastInputTokens = usage.promptTokens
        clientBytesSinceResponse = 0
        let usd = downstream.runtime.priceTable.cost(model: model ?? "", usage: usage)
        if let r = reservation { _ = state.budget.settle(r, actual: usd, limits: limits) }
        var spend = ResponseCacheStore.Spend()
        spend.requests = 1
        spend.promptTokens = usage.promptTokens
        spend.completionTokens = usage.completionTokens
        spend.cachedTokens = usage.cachedTokens
        spend.usd = usd
        state.cache?.recordSpend(.init(model: model ?? "-", deployment: group.configuration.name, client: client), spend)
    }

    // MARK: backpressure

    /// The client's socket takes writes again (or not): the upstream is read only while it does.
    func clientWritabilityChanged(writable: Bool) {
        upstreamReadPaused = !writable
        if writable, upstreamReadPending {
            upstreamReadPending = false
            upstream?.read()
        }
    }

    func upstreamWritabilityChanged(writable: Bool) {
        clientReadPaused = !writable
        if writable, clientReadPending {
            clientReadPending = false
            downstream.context?.read()
        }
    }

    /// The client's channel wants to read: granted unless the upstream is not taking writes.
    func clientWantsRead() -> Bool {
        if clientReadPaused { clientReadPending = true }
        return !clientReadPaused
    }

    func upstreamWantsRead() -> Bool {
        if upstreamReadPaused { upstreamReadPending = true }
        return !upstreamReadPaused
    }

    // MARK: the end

    /// Ends the session with a close frame to both sides (`code`, `reason`), then closes both.
    /// The session is over (and the client's connection no longer its) before either frame is
    /// written: a close that completes at once must not end it a second time.
    func end(code: UInt16, _ reason: String) {
        guard phase != .closed else { return }
        guard phase == .open else { return closed(outcome: "closed_\(code)") }
        let payload = WebSocketFrameReader.closePayload(code, reason)
        let upstream = self.upstream
        self.upstream = nil  // closed below, after its own close frame
        closed(outcome: "closed_\(code)", closeClient: false)
        downstream.writeTunnel(ByteBuffer(bytes: WebSocketFrameReader.serverFrame(.close, payload)))
        let context = downstream.context
        downstream.flushTunnel { context?.close(promise: nil) }
        if let upstream {
            var random = SystemRandomNumberGenerator()
            let mask = (0..<4).map { _ in UInt8.random(in: 0...255, using: &random) }
            upstream.writeAndFlush(ByteBuffer(bytes: WebSocketFrameReader.clientFrame(.close, payload, mask: mask))).whenComplete { _ in
                upstream.close(promise: nil)
            }
        }
    }

    /// Either side is gone: the other is closed, reservations settled, the session logged once.
    func closed(outcome: String, closeClient: Bool = true) {
        guard phase != .closed else { return }
        let wasOpen = phase == .open
        phase = .closed
        idleTimer?.cancel()
        maxTimer?.cancel()
        upstream?.close(promise: nil)
        if wasOpen, closeClient { downstream.context?.close(promise: nil) }
        let limits = downstream.runtime.configuration.budgets.limits
        // A response under way when the session ended was billed for something: it keeps its
        // reservation. Responses not started cost nothing.
        while let r = reservations.popFirst() {
            _ = state.budget.settle(r, actual: responsesInProgress > 0 ? r.amount : 0, limits: limits)
            responsesInProgress = max(0, responsesInProgress - 1)
        }
        downstream.tunnelEnded(outcome: outcome, wasOpen: wasOpen)
    }
}

/// Fired on every client connection still open when a stop's drain timeout runs out: a WebSocket
/// session sends its close frames (1001) before the connection is closed.
struct DrainTimeoutEvent {}
