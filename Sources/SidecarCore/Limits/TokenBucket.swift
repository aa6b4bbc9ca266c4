import NIOCore

/// A token bucket: `capacity` tokens, refilled continuously at `perMinute` per minute. Pure; the
/// clock is passed in.
public struct TokenBucket: Sendable, Equatable {
    public let capacity: Double
    public let perMinute: Double
    public private(set) var tokens: Double
    private var last: NIODeadline

    public init(capacity: Int, perMinute: Int, now: NIODeadline) {
        self.capacity = Double(capacity)
        self.perMinute = Double(perMinute)
        self.tokens = Double(capacity)
        self.last = now
    }

    public enum Decision: Sendable, Equatable {
        /// Taken; whole tokens left.
        case allowed(remaining: Int)
        /// Not enough tokens: try again after this long (when one token will be there).
        case limited(retryAfter: TimeAmount)
    }

    private mutating func refill(now: NIODeadline) {
        guard now > last else { return }
        tokens = min(capacity, tokens + Double((now - last).nanoseconds) / 60e9 * perMinute)
        last = now
    }

    public mutating func take(_ n: Double = 1, now: NIODeadline) -> Decision {
        refill(now: now)
        if tokens >= n {
            tokens -= n
            return .allowed(remaining: Int(tokens))
        }
        return .limited(retryAfter: .nanoseconds(Int64(((n - tokens) / perMinute * 60e9).rounded(.up))))
    }

    /// Whether `n` tokens are there now (nothing is taken).
    public func has(_ n: Double, now: NIODeadline) -> Bool {
        var b = self
        b.refill(now: now)
        return b.tokens >= n
    }

    /// How long until `n` tokens are there (zero if they are).
    public func timeUntil(_ n: Double, now: NIODeadline) -> TimeAmount {
        var b = self
        b.refill(now: now)
        return b.tokens >= n ? .zero : .nanoseconds(Int64(((n - b.tokens) / perMinute * 60e9).rounded(.up)))
    }

    /// Corrects an earlier `take` once the real amount is known: positive takes more (the balance
    /// may go below zero, so an underestimate is paid back), negative gives back.
    public mutating func adjust(by n: Double, now: NIODeadline) {
        refill(now: now)
        tokens = min(capacity, tokens - n)
    }

    /// How long until the bucket is full again (OpenAI's `x-ratelimit-reset-requests`).
    public func timeToFull(now: NIODeadline) -> TimeAmount {
        var b = self
        b.refill(now: now)
        return .nanoseconds(Int64(((b.capacity - b.tokens) / perMinute * 60e9).rounded(.up)))
    }

    /// Full and idle: forgetting it changes nothing.
    public func isFull(now: NIODeadline) -> Bool {
        var b = self
        b.refill(now: now)
        return b.tokens >= b.capacity
    }
}

/// Request-per-minute limits per client credential (hashed): one bucket per client, created on
/// first use; buckets that have refilled completely are forgotten, so memory follows the clients
/// active in the last minute. Pure; the clock is passed in.
public struct ClientRateLimiter: Sendable {
    public let perMinute: Int
    public let burst: Int
    private var buckets: [String: TokenBucket] = [:]
    private var sweeps = 0

    public init(perMinute: Int, burst: Int) {
        self.perMinute = perMinute
        self.burst = burst
    }

    public struct Verdict: Sendable, Equatable {
        public var allowed: Bool
        public var remaining: Int
        /// When limited: how long to wait for one request.
        public var retryAfter: TimeAmount
        /// How long until the client's bucket is full again.
        public var reset: TimeAmount
        public init(allowed: Bool, remaining: Int, retryAfter: TimeAmount, reset: TimeAmount) {
            self.allowed = allowed
            self.remaining = remaining
            self.retryAfter = retryAfter
            self.reset = reset
        }
    }

    public mutating func request(client: String, now: NIODeadline) -> Verdict {
        sweeps += 1
        if sweeps >= 4096 {
            sweeps = 0
            buckets = buckets.filter { !$0.value.isFull(now: now) }
        }
        var bucket = buckets[client] ?? TokenBucket(capacity: burst, perMinute: perMinute, now: now)
        let decision = bucket.take(now: now)
        buckets[client] = bucket
        switch decision {
        case .allowed(let remaining):
            return Verdict(allowed: true, remaining: remaining, retryAfter: .zero, reset: bucket.timeToFull(now: now))
        case .limited(let wait):
            return Verdict(allowed: false, remaining: 0, retryAfter: wait, reset: bucket.timeToFull(now: now))
        }
    }

    public var clients: Int { buckets.count }

    /// `1s`, `6m0s`, `120ms`: the duration format of OpenAI's `x-ratelimit-reset-*` headers.
    public static func openAIDuration(_ t: TimeAmount) -> String {
        let ms = max(0, (t.nanoseconds + 999_999) / 1_000_000)
        if ms < 1_000 { return "\(ms)ms" }
        let seconds = Double(ms) / 1_000
        if seconds < 60 {
            let s = (seconds * 1_000).rounded() / 1_000
            return s == s.rounded() ? "\(Int(s))s" : "\(s)s"
        }
        let m = Int(seconds) / 60
        return "\(m)m\(Int(seconds) - m * 60)s"
    }
}
