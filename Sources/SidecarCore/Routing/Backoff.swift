import NIOCore

/// Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
/// attempt n waits a random time in [0, min(cap, base × 2^n)]. With base 100 ms and cap 5 s:
///
/// | attempt | upper bound |
/// |---|---|
/// | 0 | 100 ms |
/// | 1 | 200 ms |
/// | 2 | 400 ms |
/// | 5 | 3.2 s |
/// | 6+ | 5 s |
///
/// A `Retry-After` is a floor for retrying that same deployment.
public struct Backoff: Sendable, Equatable {
    public var base: TimeAmount
    public var cap: TimeAmount

    public init(base: TimeAmount = .milliseconds(100), cap: TimeAmount = .seconds(5)) {
        self.base = base
        self.cap = cap
    }

    public func upperBound(attempt: Int) -> TimeAmount {
        let shift = min(attempt, 30)
        let bound = base.nanoseconds.multipliedReportingOverflow(by: Int64(1) << shift)
        return bound.overflow || bound.partialValue > cap.nanoseconds ? cap : .nanoseconds(bound.partialValue)
    }

    public func delay<R: RandomNumberGenerator>(attempt: Int, retryAfter: TimeAmount? = nil, random: inout R) -> TimeAmount {
        let upper = upperBound(attempt: attempt).nanoseconds
        let jittered = TimeAmount.nanoseconds(upper == 0 ? 0 : Int64(random.next(upperBound: UInt64(upper) + 1)))
        if let retryAfter, retryAfter > jittered { return retryAfter }
        return jittered
    }
}
