import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import SidecarCore

/// One upstream call that identical requests share (in-flight coalescing), and the recording of
/// its answer for the cache.
///
/// The leader's exchange publishes the answer as it arrives; followers, on any event loop, receive
/// everything published so far when they join and then each event as it is published (a tee: a
/// streamed answer reaches followers event by event, not at the end). Deliveries happen under the
/// flight's lock and only enqueue work on the follower's loop, so every follower sees the events
/// in order. Once the answer grows past `maxBytes` the recording is dropped: the flight can no
/// longer be joined from the start, and nothing is stored.
final class Flight: Sendable {
    enum Event: Sendable {
        /// Status and the headers a client gets (hop-by-hop already removed).
        case head(HTTPResponseStatus, HTTPHeaders)
        case body(ByteBuffer)
        case end
        /// The leader failed before any response: followers answer with the same error.
        case failed(ProxyError)
        /// The answer broke after it started: followers' responses are cut the same way.
        case aborted
        /// The leader will not call upstream for a reason of its own (its budget): followers go
        /// on alone.
        case withdrawn
    }

    typealias Deliver = @Sendable ([Event]) -> Void

    private struct State {
        var events: [Event] = []
        var bytes = 0
        var recording = true
        var finished = false
        var closedToJoiners = false
        var subscribers: [Int: Deliver] = [:]
        var nextID = 0
        var joined = 0
    }

    let key: CacheKey
    let maxBytes: Int
    private let state = NIOLockedValueBox(State())

    init(key: CacheKey, maxBytes: Int) {
        self.key = key
        self.maxBytes = maxBytes
    }

    /// Joins as a follower: `deliver` gets what was published so far at once, then every event.
    /// Returns a subscription id, `-1` when the whole answer was delivered already, or nil when
    /// the flight cannot be joined (its recording was dropped, or its leader gave up).
    func join(_ deliver: @escaping Deliver) -> Int? {
        state.withLockedValue { s in
            guard s.recording, !s.closedToJoiners else { return nil }
            // Ended otherwise than complete (failed, withdrawn, cut): nothing to share any more.
            if s.finished, case .end? = s.events.last {} else if s.finished { return nil }
            s.joined += 1
            if !s.events.isEmpty { deliver(s.events) }
            if s.finished { return -1 }
            let id = s.nextID
            s.nextID += 1
            s.subscribers[id] = deliver
            return id
        }
    }

    /// A follower's client went away.
    func leave(_ id: Int) {
        _ = state.withLockedValue { $0.subscribers.removeValue(forKey: id) }
    }

    /// The leader's client went away. Returns true when nobody follows, so the upstream call can be
    /// abandoned (the flight is then closed to joiners); false when followers still wait for it.
    func leaderLeft() -> Bool {
        state.withLockedValue { s in
            guard s.subscribers.isEmpty else { return false }
            s.closedToJoiners = true
            return true
        }
    }

    /// On the leader's loop.
    func publish(_ event: Event) {
        state.withLockedValue { s in
            guard !s.finished else { return }
            if case .body(let b) = event, s.recording {
                s.bytes += b.readableBytes
                if s.bytes > maxBytes {
                    s.recording = false
                    s.events.removeAll()
                }
            }
            if s.recording { s.events.append(event) }
            switch event {
            case .end, .failed, .aborted, .withdrawn: s.finished = true
            case .head, .body: break
            }
            for deliver in s.subscribers.values { deliver([event]) }
            if s.finished { s.subscribers.removeAll() }
        }
    }

    /// Replaces the recorded body parts of a complete answer by `body` (the same bytes, in one
    /// exact buffer), so the recording no longer holds the connection's read buffers.
    func replaceRecordedBody(with body: ByteBuffer) {
        state.withLockedValue { s in
            guard s.recording, s.finished, case .end? = s.events.last else { return }
            var events = s.events.filter { if case .body = $0 { return false } else { return true } }
            events.insert(.body(body), at: events.count - 1)
            s.events = events
        }
    }

        /// How many followers joined (each one is an upstream call saved).
    var joinedCount: Int { state.withLockedValue { $0.joined } }

    /// The recorded answer's body as one array and whether it is a stream, when it ended normally
    /// and was small enough to keep (a late joiner's hit counts what it saved from it).
    var recordedAnswer: (body: [UInt8], isStream: Bool)? {
        state.withLockedValue { s in
            guard s.recording, s.finished, case .end? = s.events.last else { return nil }
            var body: [UInt8] = []
            var isStream = false
            for event in s.events {
                switch event {
                case .head(_, let headers): isStream = headers.first(name: "content-type")?.hasPrefix("text/event-stream") ?? false
                case .body(let b): body += b.readableBytesView
                default: break
                }
            }
            return (body, isStream)
        }
    }

    /// The recorded body parts, when the answer ended normally and was small enough to keep.
    var recordedBody: [ByteBuffer]? {
        state.withLockedValue { s in
            guard s.recording, s.finished, case .end? = s.events.last else { return nil }
            return s.events.compactMap { if case .body(let b) = $0 { return b } else { return nil } }
        }
    }
}
