import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore

/// The access log: one line per request, written when its response ends.
extension DownstreamHandler {
    /// What the access line of the current request says.
    struct AccessRecord {
        var method = ""
        var path = ""
        var started = NIODeadline.now()
        var status = 0
        var upstream: String?
        var model: String?
        var attempts = 0
        var upstreamNanos: Int64?
        var outcome = "ok"
        /// `x-sidecar-cache` of the answer, and the key when there was one.
        var cache = "-"
        var cacheKey: CacheKey?
    }

    /// One info line per request: static message, data in metadata, never keys or bodies.
    func logAccess(outcome: String? = nil) {
        guard accessLogOn, access.status != 0 || outcome != nil else { return }
        let total = (NIODeadline.now() - access.started).nanoseconds
        var m: Logger.Metadata = [
            "method": .string(access.method),
            "path": .string(String(access.path.prefix(200))),
            "status": .stringConvertible(access.status),
            "total_ms": .string(Self.milliseconds(total)),
            "cache": .string(access.cache),
        ]
        if let key = access.cacheKey { m["cache_key"] = .string(String(key.description.prefix(16))) }
        if let u = access.upstream { m["deployment"] = .string(u) }
        if let model = access.model { m["model"] = .string(model) }
        if access.attempts > 0 { m["attempts"] = .stringConvertible(access.attempts) }
        if let n = access.upstreamNanos { m["upstream_ms"] = .string(Self.milliseconds(n)) }
        if let outcome { m["outcome"] = .string(outcome) }
        state.logger.info("request", metadata: m)
        access.status = 0
    }

    static func milliseconds(_ nanos: Int64) -> String {
        let tenths = nanos / 100_000
        return "\(tenths / 10).\(tenths % 10)"
    }

}
