import Foundation

/// Where and how to connect, parsed from a `postgres://` / `postgresql://` URL. Errors name the
/// part that is wrong, never the URL or the password.
struct FleetURL: Sendable, Equatable {
    enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        /// The socket file (`<dir>/.s.PGSQL.<port>`).
        case unixSocket(path: String)
    }

    enum SSLMode: String, Sendable, Equatable {
        case disable, prefer, require
    }

    var endpoint: Endpoint
    var user: String
    var password: String?
    var database: String
    /// Meaningful for TCP only (a unix socket never uses TLS).
    var sslMode: SSLMode

    static let defaultSocketDirectories = ["/var/run/postgresql", "/run/postgresql", "/tmp"]

    /// Parses `postgres://[user[:password]@][host][:port]/database[?name=value&...]`. Query
    /// parameters: `host` (a directory holding the socket, the socket file itself, or a TCP host),
    /// `port`, `user`, `password`, `dbname`, `sslmode` (`disable`, `prefer`, `require`),
    /// `application_name` (ignored).
    static func parse(_ url: String) throws -> FleetURL {
        let rest: Substring
        if url.hasPrefix("postgres://") {
            rest = url.dropFirst("postgres://".count)
        } else if url.hasPrefix("postgresql://") {
            rest = url.dropFirst("postgresql://".count)
        } else {
            throw FleetError.badURL("the scheme must be postgres:// or postgresql://")
        }
        if rest.contains("#") { throw FleetError.badURL("a fragment (#) is not allowed") }

        // Split off the query, then the path (database), then the authority.
        let beforeQuery: Substring
        var query: Substring = ""
        if let q = rest.firstIndex(of: "?") {
            beforeQuery = rest[..<q]
            query = rest[rest.index(after: q)...]
        } else {
            beforeQuery = rest
        }
        let authority: Substring
        var path: Substring = ""
        if let slash = beforeQuery.firstIndex(of: "/") {
            authority = beforeQuery[..<slash]
            path = beforeQuery[beforeQuery.index(after: slash)...]
        } else {
            authority = beforeQuery
        }

        var user: String?
        var password: String?
        var hostPort = authority
        if let at = authority.lastIndex(of: "@") {
            let userInfo = authority[..<at]
            hostPort = authority[authority.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                user = try decode(userInfo[..<colon], what: "user name")
                password = try decode(userInfo[userInfo.index(after: colon)...], what: "password")
            } else {
                user = try decode(userInfo, what: "user name")
            }
        }

        var host = ""
        var portText: Substring?
        if hostPort.hasPrefix("[") {  // [IPv6]:port
            guard let close = hostPort.firstIndex(of: "]") else { throw FleetError.badURL("unclosed [ in the host") }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw FleetError.badURL("unexpected text after the host") }
                portText = after.dropFirst()
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = try decode(hostPort[..<colon], what: "host")
            portText = hostPort[hostPort.index(after: colon)...]
        } else {
            host = try decode(hostPort, what: "host")
        }
        var port = 5432
        if let portText, !portText.isEmpty { port = try parsePort(portText) }
        if path.contains("/") { throw FleetError.badURL("the path must be just the database name") }
        var database = try decode(path, what: "database name")
        var sslMode: SSLMode?
        var socketHost: String?

        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let name: Substring
            let value: String
            if let eq = pair.firstIndex(of: "=") {
                name = pair[..<eq]
                value = try decode(pair[pair.index(after: eq)...], what: "parameter value")
            } else {
                name = pair
                value = ""
            }
            switch name {
            case "host": socketHost = value
            case "port": port = try parsePort(Substring(value))
            case "user": user = value
            case "password": password = value
            case "dbname": database = value
            case "sslmode":
                guard let mode = SSLMode(rawValue: value) else {
                    throw FleetError.badURL("unknown sslmode '\(value.prefix(20))' (disable, prefer or require)")
                }
                sslMode = mode
            case "application_name", "connect_timeout": break
            default:
                throw FleetError.badURL("unknown parameter '\(name.prefix(40))'")
            }
        }
        if let socketHost, !socketHost.isEmpty { host = socketHost }

        let resolvedUser = user.flatMap { $0.isEmpty ? nil : $0 } ?? currentUserName()
        guard !resolvedUser.isEmpty else { throw FleetError.badURL("no user name") }
        if database.isEmpty { database = resolvedUser }

        let endpoint: Endpoint
        if host.isEmpty {
            let directory = defaultSocketDirectories.first { FileManager.default.fileExists(atPath: $0) } ?? "/tmp"
            endpoint = .unixSocket(path: "\(directory)/.s.PGSQL.\(port)")
        } else if host.hasPrefix("/") {
            endpoint = .unixSocket(path: socketPath(host, port: port))
        } else {
            endpoint = .tcp(host: host, port: port)
        }
        let mode: SSLMode
        if let sslMode {
            mode = sslMode
        } else if case .tcp(let host, _) = endpoint, !isLoopback(host) {
            mode = .prefer
        } else {
            mode = .disable
        }
        return FleetURL(endpoint: endpoint, user: resolvedUser, password: password, database: database, sslMode: mode)
    }

    /// A directory → its socket file for `port`; a path that names a socket file stays as is.
    static func socketPath(_ path: String, port: Int) -> String {
        let last = path.split(separator: "/").last.map(String.init) ?? ""
        if last.hasPrefix(".s.PGSQL.") { return path }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue {
            return path  // an existing non-directory: the socket file itself
        }
        let directory = path.hasSuffix("/") && path.count > 1 ? String(path.dropLast()) : path
        return "\(directory)/.s.PGSQL.\(port)"
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    private static func parsePort(_ text: Substring) throws -> Int {
        guard let port = Int(text), (1...65535).contains(port) else {
            throw FleetError.badURL("the port must be a number from 1 to 65535")
        }
        return port
    }

    /// Percent-decoding; `what` names the part in the error.
    static func decode(_ text: Substring, what: String) throws -> String {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        var utf8 = Array(text.utf8)[...]
        while let byte = utf8.popFirst() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard utf8.count >= 2, let high = hexValue(utf8[utf8.startIndex]), let low = hexValue(utf8[utf8.startIndex + 1]) else {
                throw FleetError.badURL("bad percent-encoding in the \(what)")
            }
            bytes.append(high << 4 | low)
            utf8 = utf8.dropFirst(2)
        }
        guard let decoded = String(bytes: bytes, encoding: .utf8) else {
            throw FleetError.badURL("the \(what) is not UTF-8 once percent-decoded")
        }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    private static func currentUserName() -> String {
        ProcessInfo.processInfo.environment["USER"].flatMap { $0.isEmpty ? nil : $0 } ?? NSUserName()
    }
}
