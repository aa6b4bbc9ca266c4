import NIOCore
import NIOPosix
import PostgresNIO

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A fleet database failure, described for logs and status pages. The message never contains the
/// database URL, its password or a statement's parameters: PostgresNIO's errors are mapped from
/// their code, SQLSTATE and the server's primary message only (never `String(reflecting:)`).
public struct FleetError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What kind of failure, for callers that react differently (retry later, give up, fix the config).
    public enum Kind: Sendable, Equatable {
        /// The URL cannot be used; fix the configuration.
        case badURL
        /// No connection to the server (refused, timed out, closed, TLS or authentication failure).
        case unreachable
        /// The statement (or the wait for a connection) took longer than the statement timeout.
        case timeout
        /// The server refused the statement (SQLSTATE in `sqlState`).
        case server
        /// Anything else (an unexpected answer).
        case other
    }

    /// What kind of failure.
    public let kind: Kind
    /// The server's SQLSTATE when `kind == .server` (e.g. `57014` for a cancelled statement).
    public let sqlState: String?
    /// The text for logs and status pages (no URL, password or statement parameters).
    public let message: String

    /// A failure of `kind` described by `message` (which must not contain secrets).
    public init(_ kind: Kind, _ message: String, sqlState: String? = nil) {
        self.kind = kind
        self.message = message
        self.sqlState = sqlState
    }

    /// `message`.
    public var description: String { message }

    /// `fleet database URL: <what>`.
    public static func badURL(_ what: String) -> FleetError {
        FleetError(.badURL, "fleet database URL: \(what)")
    }

    /// `lastConnectFailure`: why the latest direct connection attempt failed, if it did.
    static func timedOut(after timeout: TimeAmount, connected: Bool, lastConnectFailure: String? = nil) -> FleetError {
        let seconds = secondsText(timeout)
        if connected {
            return FleetError(.timeout, "fleet database statement timed out after \(seconds) s")
        }
        let reason = lastConnectFailure.map { " (\($0))" } ?? ""
        return FleetError(.unreachable, "fleet database unreachable: no connection within \(seconds) s\(reason)")
    }

    static let unreachablePrefix = "fleet database unreachable: "

    /// The message without its `fleet database unreachable: ` / `fleet database ` prefix (for a
    /// sentence that names the fleet database already).
    public var reason: String {
        if message.hasPrefix(Self.unreachablePrefix) { return String(message.dropFirst(Self.unreachablePrefix.count)) }
        if message.hasPrefix("fleet database ") { return String(message.dropFirst("fleet database ".count)) }
        return message
    }

    static func secondsText(_ amount: TimeAmount) -> String {
        let seconds = Double(amount.nanoseconds) / 1e9
        return seconds == seconds.rounded() ? String(Int64(seconds)) : String(seconds)
    }

    /// Maps any error thrown by PostgresNIO / NIO to a FleetError with a safe message.
    static func from(_ error: any Error, statementTimeout: TimeAmount) -> FleetError {
        switch error {
        case let error as FleetError:
            return error
        case let error as PostgresTransactionError:
            if let inner = error.closureError ?? error.beginError ?? error.commitError {
                return from(inner, statementTimeout: statementTimeout)
            }
            return FleetError(.other, "fleet database transaction failed")
        case let error as PSQLError:
            return fromPSQL(error, statementTimeout: statementTimeout)
        case let error as PostgresDecodingError:
            return FleetError(.other, "fleet database answer not understood: column '\(error.columnName)' (\(error.code))")
        case is CancellationError:
            return FleetError(.other, "fleet database call cancelled")
        default:
            // The pool's own error type is not public API: recognized by its type's name only.
            if String(describing: type(of: error)).contains("ConnectionPoolError") {
                return FleetError(.unreachable, "fleet database unreachable: connections keep failing")
            }
            return FleetError(.unreachable, "fleet database unreachable: \(describeTransport(error))")
        }
    }

    private static func fromPSQL(_ error: PSQLError, statementTimeout: TimeAmount) -> FleetError {
        switch error.code {
        case .server:
            let state = error.serverInfo?[.sqlState]
            let message = error.serverInfo?[.message] ?? "unknown error"
            if state == "57014" {  // query_canceled: statement_timeout
                return FleetError(.timeout, "fleet database statement timed out after \(secondsText(statementTimeout)) s", sqlState: state)
            }
            // Class 08 (connection exception), 28 (invalid authorization), 3D (no such database),
            // 57P (server shutting down): the database is not usable from here right now.
            if let state, state.hasPrefix("08") || state.hasPrefix("28") || state.hasPrefix("3D") || state.hasPrefix("57P") {
                return FleetError(.unreachable, "fleet database unreachable: \(message) (SQLSTATE \(state))", sqlState: state)
            }
            return FleetError(.server, "fleet database error: \(message) (SQLSTATE \(state ?? "?"))", sqlState: state)
        case .connectionError:
            return FleetError(.unreachable, "fleet database unreachable: \(error.underlying.map(describeTransport) ?? "connection error")")
        case .serverClosedConnection, .uncleanShutdown:
            return FleetError(.unreachable, "fleet database unreachable: the server closed the connection")
        case .clientClosedConnection, .poolClosed:
            return FleetError(.unreachable, "fleet database connection closed")
        case .sslUnsupported:
            return FleetError(.unreachable, "fleet database unreachable: the server does not support TLS (sslmode=require)")
        case .failedToAddSSLHandler, .receivedUnencryptedDataAfterSSLRequest:
            return FleetError(.unreachable, "fleet database unreachable: TLS set-up failed")
        case .unsupportedAuthMechanism, .authMechanismRequiresPassword, .saslError:
            return FleetError(.unreachable, "fleet database unreachable: authentication failed (\(error.code))")
        case .queryCancelled:
            return FleetError(.timeout, "fleet database statement cancelled")
        default:
            return FleetError(.other, "fleet database error (\(error.code))")
        }
    }

    /// A transport error without addresses: the errno's text, or the NIO error's kind.
    private static func describeTransport(_ error: any Error) -> String {
        if let io = error as? IOError {
            return errnoText(io.errnoCode)
        }
        if let connect = error as? NIOConnectionError {
            if let first = connect.connectionErrors.first {
                return describeTransport(first.error)
            }
            return connect.dnsAError != nil || connect.dnsAAAAError != nil ? "host name not resolved" : "connection failed"
        }
        if let channel = error as? ChannelError {
            switch channel {
            case .connectTimeout: return "connect timed out"
            case .ioOnClosedChannel, .alreadyClosed, .eof: return "connection closed"
            default: return "connection error"
            }
        }
        if error is SocketAddressError {
            return "bad address"
        }
        return "connection error"
    }

    private static func errnoText(_ code: Int32) -> String {
        guard let text = strerror(code) else { return "errno \(code)" }
        return String(cString: text).lowercased()
    }
}
