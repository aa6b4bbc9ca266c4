import Foundation

/// Calendar days and months in UTC, as the counters, the spend table and the budgets name them.
public enum UTCDay {
    /// "YYYY-MM-DD" of a Unix time.
    public static func day(_ unix: Int64) -> String {
        var t = time_t(unix)
        var parts = tm()
        gmtime_r(&t, &parts)
        return String(format: "%04d-%02d-%02d", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday))
    }

    /// "YYYY-MM" of a day.
    public static func month(ofDay day: String) -> String { String(day.prefix(7)) }

    /// "YYYY-MM-01": the first day of a day's month.
    public static func firstOfMonth(ofDay day: String) -> String { month(ofDay: day) + "-01" }
}

extension String {
    /// Right-aligned in `width` columns (for the CLI's tables).
    public func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}
