import NIOCore
import SidecarCore
import XCTest

final class DNSMessageTests: XCTestCase {
    func testQueryEncodesTheNameAndType() throws {
        let q = try XCTUnwrap(DNSMessage.query(id: 0xbeef, name: "vllm.service.consul", type: .a))
        XCTAssertEqual(Array(q[0..<4]), [0xbe, 0xef, 0x01, 0x00], "id, RD set")
        XCTAssertEqual(Array(q[12...]), [4] + Array("vllm".utf8) + [7] + Array("service".utf8) + [6] + Array("consul".utf8) + [0, 0, 1, 0, 1])
        XCTAssertEqual(DNSMessage.query(id: 1, name: "trailing.dot.", type: .aaaa)?.suffix(4), [0, 28, 0, 1])
        XCTAssertNil(DNSMessage.query(id: 1, name: "a..b", type: .a), "empty label")
        XCTAssertNil(DNSMessage.query(id: 1, name: String(repeating: "x", count: 64), type: .a), "label over 63 bytes")
    }

    func testParsesAnswersWithCompressionPointersAndTTLs() throws {
        let q = try XCTUnwrap(DNSMessage.query(id: 7, name: "pool.local", type: .a))
        let reply = try XCTUnwrap(DNSMessage.reply(to: q, addresses: ["10.0.0.2", "10.0.0.3"], ttl: 30))
        let answer = try DNSMessage.parse(reply, type: .a)
        XCTAssertEqual(answer.id, 7)
        XCTAssertEqual(answer.rcode, 0)
        XCTAssertEqual(answer.records, [.init(address: "10.0.0.2", ttl: 30), .init(address: "10.0.0.3", ttl: 30)])
        XCTAssertEqual(try DNSMessage.parse(reply, type: .aaaa).records, [], "records of another type are ignored")
    }

    func testParsesAAAAAsRFC5952Text() throws {
        var m: [UInt8] = [0, 1, 0x81, 0x80, 0, 0, 0, 1, 0, 0, 0, 0]
        m += [1, UInt8(ascii: "x"), 0, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]
        m += [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
        XCTAssertEqual(try DNSMessage.parse(m, type: .aaaa).records, [.init(address: "fd00::2", ttl: 60)])
    }

    func testRejectsForwardPointersTruncationAndQueries() throws {
        let q = try XCTUnwrap(DNSMessage.query(id: 7, name: "pool.local", type: .a))
        XCTAssertThrowsError(try DNSMessage.parse(q, type: .a), "a query is not a response")
        var reply = try XCTUnwrap(DNSMessage.reply(to: q, addresses: ["10.0.0.2"], ttl: 30))
        XCTAssertThrowsError(try DNSMessage.parse(Array(reply.dropLast()), type: .a), "cut short")
        let pointer = reply.count - 16
        XCTAssertEqual(reply[pointer], 0xc0)
        reply[pointer + 1] = UInt8(pointer)
        XCTAssertThrowsError(try DNSMessage.parse(reply, type: .a), "pointer to itself")
    }

    /// Random bytes, and random corruptions of a valid answer, never crash the parser.
    func testRandomInputNeverCrashes() throws {
        var rng = SplitMix64(seed: 13)
        let q = try XCTUnwrap(DNSMessage.query(id: 7, name: "pool.local", type: .a))
        let valid = try XCTUnwrap(DNSMessage.reply(to: q, addresses: ["10.0.0.2", "10.0.0.3"], ttl: 30))
        for round in 0..<20_000 {
            var bytes: [UInt8]
            if round % 2 == 0 {
                bytes = (0..<Int(rng.next() % 80)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                if bytes.count > 2 { bytes[2] |= 0x80 }
            } else {
                bytes = valid
                for _ in 0..<(1 + rng.next() % 4) { bytes[Int(rng.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: rng.next()) }
                bytes = Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count + 1))))
            }
            _ = try? DNSMessage.parse(bytes, type: .a)
            _ = try? DNSMessage.parse(bytes, type: .aaaa)
        }
    }
}

final class DNSDiscoveryStateTests: XCTestCase {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    func testTTLIsClampedAndChangesAreReported() {
        var s = DNSDiscoveryState(minTTL: .seconds(5), maxTTL: .seconds(300), now: t0)
        XCTAssertEqual(s.resolved(.addresses([.init(address: "10.0.0.2", ttl: 0), .init(address: "10.0.0.1", ttl: 60)]), now: t0),
                       .changed(added: ["10.0.0.1", "10.0.0.2"], removed: []))
        XCTAssertEqual(s.nextQuery, t0 + .seconds(5), "TTL 0 (Consul's default) is held to dns_min_ttl")
        XCTAssertEqual(s.resolved(.addresses([.init(address: "10.0.0.1", ttl: 86_400)]), now: t0), .changed(added: [], removed: ["10.0.0.2"]))
        XCTAssertEqual(s.nextQuery, t0 + .seconds(300), "a day-long TTL is held to dns_max_ttl")
        XCTAssertEqual(s.resolved(.addresses([.init(address: "10.0.0.1", ttl: 30)]), now: t0), .unchanged)
        XCTAssertEqual(s.nextQuery, t0 + .seconds(30))
    }

    func testFailuresKeepTheSetAndAreReportedOnce() {
        var s = DNSDiscoveryState(minTTL: .seconds(5), maxTTL: .seconds(300), now: t0)
        _ = s.resolved(.addresses([.init(address: "10.0.0.1", ttl: 30)]), now: t0)
        XCTAssertEqual(s.resolved(.failed("timeout"), now: t0), .failedFirst("timeout"))
        XCTAssertEqual(s.resolved(.failed("timeout"), now: t0), .unchanged)
        XCTAssertEqual(s.addresses, ["10.0.0.1"])
        XCTAssertEqual(s.nextQuery, t0 + .seconds(5), "retried after dns_min_ttl")
        _ = s.resolved(.addresses([.init(address: "10.0.0.1", ttl: 30)]), now: t0)
        XCTAssertEqual(s.resolved(.failed("SERVFAIL"), now: t0), .failedFirst("SERVFAIL"), "a new run of failures logs again")
    }

    func testAnEmptyAnswerDrainsOnlyWhenTheNextSaysTheSame() {
        var s = DNSDiscoveryState(minTTL: .seconds(5), maxTTL: .seconds(300), now: t0)
        _ = s.resolved(.addresses([.init(address: "10.0.0.1", ttl: 30)]), now: t0)
        XCTAssertEqual(s.resolved(.empty, now: t0), .emptyUnconfirmed)
        XCTAssertEqual(s.addresses, ["10.0.0.1"])
        XCTAssertEqual(s.nextQuery, t0 + .seconds(5))
        XCTAssertEqual(s.resolved(.addresses([.init(address: "10.0.0.1", ttl: 30)]), now: t0), .unchanged, "a blip")
        XCTAssertEqual(s.resolved(.empty, now: t0), .emptyUnconfirmed)
        XCTAssertEqual(s.resolved(.failed("timeout"), now: t0), .failedFirst("timeout"))
        XCTAssertEqual(s.resolved(.empty, now: t0), .changed(added: [], removed: ["10.0.0.1"]), "confirmed: drained")
    }
}
