import NIOCore

/// Durations in the configuration are written the way people say them: `"250ms"`, `"5s"`, `"2m"`,
/// `"1h"`, `"7d"`, or a bare number of seconds.
public enum DurationText {
    public static func parse(_ text: String) -> TimeAmount? {
        let t = text.trimmingSpaces()
        let units: [(String, Int64)] = [("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000), ("d", 86_400_000_000_000)]
        for (suffix, nanos) in units where t.hasSuffix(suffix) {
            let number = t.dropLast(suffix.count)
            if suffix == "s", number.hasSuffix("m") { continue }  // "ms" handled first
            guard let v = Double(number), v >= 0, v.isFinite else { return nil }
            return .nanoseconds(Int64(v * Double(nanos)))
        }
        guard let v = Double(t), v >= 0, v.isFinite else { return nil }
        return .nanoseconds(Int64(v * 1_000_000_000))
    }

    /// `TimeAmount` as people write it: `"90s"`, `"250ms"`.
    public static func format(_ amount: TimeAmount) -> String {
        let ns = amount.nanoseconds
        if ns % 1_000_000_000 == 0 { return "\(ns / 1_000_000_000)s" }
        if ns % 1_000_000 == 0 { return "\(ns / 1_000_000)ms" }
        return "\(Double(ns) / 1e9)s"
    }
}
