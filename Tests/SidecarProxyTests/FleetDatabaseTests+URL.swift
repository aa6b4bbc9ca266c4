import Foundation
import Logging
import NIOCore
@testable import SidecarFleet
import SidecarTestSupport
import XCTest

/// The fleet database URL: what each form resolves to, and that the socket forms reach a server.
extension FleetDatabaseTests {
    func testURLFormsResolveToEndpointsAndTLSModes() throws {
        let tcp = try FleetURL.parse("postgresql://fleet:p%40ss%3Aw@db.example:6432/shared?sslmode=require")
        XCTAssertEqual(tcp, FleetURL(endpoint: .tcp(host: "db.example", port: 6432), user: "fleet", password: "p@ss:w", database: "shared", sslMode: .require))
        XCTAssertEqual(try FleetURL.parse("postgres://u@db.example/d").sslMode, .prefer, "a remote host prefers TLS by default")
        XCTAssertEqual(try FleetURL.parse("postgres://u@db.example/d").endpoint, .tcp(host: "db.example", port: 5432))
        XCTAssertEqual(try FleetURL.parse("postgres://u@localhost/d").sslMode, .disable, "loopback: no TLS by default")
        XCTAssertEqual(try FleetURL.parse("postgres://u@127.0.0.1:5433/d").sslMode, .disable)
        XCTAssertEqual(try FleetURL.parse("postgres://u@[::1]:5433/d").endpoint, .tcp(host: "::1", port: 5433))
        XCTAssertEqual(try FleetURL.parse("postgres://u@/d?host=/run/pg&port=6000").endpoint, .unixSocket(path: "/run/pg/.s.PGSQL.6000"))
        XCTAssertEqual(try FleetURL.parse("postgres://u@:6001/d?host=%2Frun%2Fpg").endpoint, .unixSocket(path: "/run/pg/.s.PGSQL.6001"))
        XCTAssertEqual(try FleetURL.parse("postgres://u@/d?host=/run/pg/.s.PGSQL.7000").endpoint, .unixSocket(path: "/run/pg/.s.PGSQL.7000"))
        XCTAssertEqual(try FleetURL.parse("postgres://u@/d?host=/run/pg&sslmode=require").endpoint, .unixSocket(path: "/run/pg/.s.PGSQL.5432"))
        let defaults = try FleetURL.parse("postgresql://u@/")
        XCTAssertEqual(defaults.database, "u", "the database defaults to the user's name")
        XCTAssertEqual(try FleetURL.parse("postgres://u@h/d?user=v&dbname=e&password=x"),
                       FleetURL(endpoint: .tcp(host: "h", port: 5432), user: "v", password: "x", database: "e", sslMode: .prefer))
        XCTAssertThrowsError(try FleetURL.parse("postgres://u@h/d/e"))
        XCTAssertThrowsError(try FleetURL.parse("postgres://u@h:0/d"))
        XCTAssertThrowsError(try FleetURL.parse("postgres://u@[::1/d"))
        XCTAssertEqual(FleetDatabase.bytes(hex: "00ffAB"), [0, 0xFF, 0xAB])
        XCTAssertNil(FleetDatabase.bytes(hex: "0g"))
        XCTAssertNil(FleetDatabase.bytes(hex: "abc"))
    }

    func testEverySocketFormReachesTheServer() async throws {
        let server = try pg()
        let dir = server.socketDirectory
        let encoded = dir.replacingOccurrences(of: "/", with: "%2F")
        let forms = [
            server.url,
            "postgres://postgres@/fleet?host=\(dir)/.s.PGSQL.\(server.port)",
            "postgresql://postgres@:\(server.port)/fleet?host=\(encoded)",
            "postgresql:///fleet?host=\(dir)&port=\(server.port)&user=postgres&sslmode=disable",
        ]
        try await open(server.url, node: "migrator").migrate()
        for (index, url) in forms.enumerated() {
            let database = try open(url, node: "form\(index)")
            try await database.heartbeat(version: "v", startedAt: Int64(index))
        }
        XCTAssertEqual(try server.psql("SELECT string_agg(node, ',' ORDER BY node) FROM fleet_nodes WHERE node LIKE 'form%'"),
                       "form0,form1,form2,form3")
    }
}
