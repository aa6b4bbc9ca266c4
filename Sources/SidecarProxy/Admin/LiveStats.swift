import Foundation
import NIOConcurrencyHelpers
import SidecarCore

/// What the dashboard polls besides the configuration and the database: the running
/// `RequestTally` and the `ErrorRing` of recent errors, shared by every event loop. Each request
/// takes the tally's lock once, when it ends (the Prometheus histograms it also feeds take theirs
/// the same way); an error takes the ring's. Both live as long as the server, so a reload
/// (SIGHUP) leaves the page's counts going up where they were.
final class LiveStats: Sendable {
    private let tally = NIOLockedValueBox(RequestTally())
    private let ring = NIOLockedValueBox(ErrorRing(capacity: LiveStats.errorsKept))
    /// Unix seconds when the server started: the page takes a change of it for a restart (its
    /// counters began again from zero) rather than for negative rates.
    let started = Date().timeIntervalSince1970

    /// How many recent errors are kept and shown.
    static let errorsKept = 50

    func finished(status: Int, complete: Bool, nanoseconds: Int64) {
        tally.withLockedValue { $0.finished(status: status, complete: complete, nanoseconds: nanoseconds) }
    }

    func cacheResult(_ name: String) {
        tally.withLockedValue { $0.cacheResult(name) }
    }

    func error(_ entry: ErrorRing.Entry) {
        ring.withLockedValue { $0.record(entry) }
    }

    var counts: RequestTally { tally.withLockedValue { $0 } }

    var errors: (recent: [ErrorRing.Entry], recorded: Int) { ring.withLockedValue { ($0.newestFirst, $0.recorded) } }
}
