import Foundation
import SidecarTestSupport
import XCTest

/// One private PostgreSQL server for the whole test run (started by the first test that needs
/// it, stopped and removed when the test bundle finishes); each test class uses databases of its
/// own in it. A test that stops the server starts it again before it ends.
enum TestPostgres {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var started: Result<PostgresServer, any Error>?

    /// The server, or the reason it could not be started (thrown to every test that needs it).
    static func server() throws -> PostgresServer {
        lock.lock()
        defer { lock.unlock() }
        if started == nil {
            started = Result { try PostgresServer.start() }
            if case .success(let s) = started { XCTestObservationCenter.shared.addTestObserver(Shutdown(s)) }
        }
        return try started!.get()
    }

    private final class Shutdown: NSObject, XCTestObservation {
        let server: PostgresServer
        init(_ server: PostgresServer) { self.server = server }
        func testBundleDidFinish(_ testBundle: Bundle) { server.shutdown() }
    }
}
