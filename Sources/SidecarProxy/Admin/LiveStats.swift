import Foundation
import NIOConcurrencyHelpers
import SidecarCore

/// What the dashboard polls besides the configuration and the database: the running
/// `RequestTally` and the `ErrorRing` of recent errors, shared by every event loop. The tally is
/// kept in shards, one per thread that counts (by the thread's identity), so each request takes
/// an uncontended lock when it ends, not one all event loops fight over; a poll sums the shards.
/// An error takes the ring's lock. Both live as long as the server, so a reload (SIGHUP) leaves
/// the page's counts going up where they were.
final class LiveStats: Sendable {
    private static let shards = 16
    private let tallies = (0..<LiveStats.shards).map { _ in NIOLockedValueBox(RequestTally()) }
    private let ring = NIOLockedValueBox(ErrorRing(capacity: LiveStats.errorsKept))
    /// Unix seconds when the server started: the page takes a change of it for a restart (its
    /// counters began again from zero) rather than for negative rates.
    let started = Date().timeIntervalSince1970

    /// How many recent errors are kept and shown.
    static let errorsKept = 50

    /// This thread's shard: event loops are threads that live as long as the server.
    private var tally: NIOLockedValueBox<RequestTally> {
        tallies[Int(UInt(bitPattern: pthread_self().hashValue) % UInt(Self.shards))]
    }

    func finished(status: Int, complete: Bool, nanoseconds: Int64) {
        tally.withLockedValue { $0.finished(status: status, complete: complete, nanoseconds: nanoseconds) }
    }

    func cacheResult(_ name: String) {
        tally.withLockedValue { $0.cacheResult(name) }
    }

    func error(_ entry: ErrorRing.Entry) {
        ring.withLockedValue { $0.record(entry) }
    }

    var counts: RequestTally {
        var sum = RequestTally()
        for t in tallies { sum.add(t.withLockedValue { $0 }) }
        return sum
    }

    var errors: (recent: [ErrorRing.Entry], recorded: Int) { ring.withLockedValue { ($0.newestFirst, $0.recorded) } }
}
