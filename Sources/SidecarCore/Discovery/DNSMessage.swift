/// The two DNS messages `discover = "dns"` needs (RFC 1035 §4): a query for one name's A or AAAA
/// records, and the answer's addresses with their TTLs. Pure, over byte arrays; the UDP side is
/// `DNSResolver` in SidecarProxy.
///
/// The parser is written for hostile input (any datagram that reaches the socket): every read is
/// bounds-checked, compression pointers must point backwards (names are skipped, never followed,
/// so no pointer loop can spin), and anything malformed is a `DNSMessage.Problem`, never a crash
/// (a random-input test checks).
public enum DNSMessage {
    public enum RecordType: UInt16, Sendable { case a = 1, aaaa = 28 }

    /// One address from an answer, as text ("10.0.0.2", "fd00::2"), with its TTL in seconds.
    public struct Record: Sendable, Equatable {
        public var address: String
        public var ttl: UInt32
        public init(address: String, ttl: UInt32) { self.address = address; self.ttl = ttl }
    }

    public struct Answer: Sendable, Equatable {
        public var id: UInt16
        /// RCODE: 0 no error, 2 server failure, 3 the name does not exist (NXDOMAIN).
        public var rcode: UInt8
        /// Set when the answer did not fit in 512 bytes; the addresses are then a partial set.
        public var truncated: Bool
        public var records: [Record]
    }

    public struct Problem: Error, Equatable, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = d }
    }

    /// A recursive query (RD set) for `name`'s records of `type`. Nil for a name that is not a
    /// valid DNS name (a label longer than 63 bytes, an empty label, over 253 bytes).
    public static func query(id: UInt16, name: String, type: RecordType) -> [UInt8]? {
        var out: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xff), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        let trimmed = name.hasSuffix(".") ? String(name.dropLast()) : name
        guard !trimmed.isEmpty, trimmed.utf8.count <= 253 else { return nil }
        for label in trimmed.split(separator: ".", omittingEmptySubsequences: false) {
            let bytes = Array(label.utf8)
            guard (1...63).contains(bytes.count) else { return nil }
            out.append(UInt8(bytes.count))
            out += bytes
        }
        out += [0, UInt8(type.rawValue >> 8), UInt8(type.rawValue & 0xff), 0, 1]
        return out
    }

    /// The answer records of `type` in `message` (CNAMEs in front of them are skipped: the
    /// resolver already followed them). Records of other types and classes are ignored.
    public static func parse(_ message: [UInt8], type: RecordType) throws(Problem) -> Answer {
        var r = Reader(bytes: message)
        let id = try r.u16()
        let flags = try r.u16()
        guard flags & 0x8000 != 0 else { throw Problem("not a response") }
        let questions = try r.u16()
        let answers = try r.u16()
        _ = try r.u16()
        _ = try r.u16()
        for _ in 0..<questions {
            try r.skipName()
            try r.skip(4)
        }
        var records: [Record] = []
        for _ in 0..<answers {
            try r.skipName()
            let rtype = try r.u16()
            let rclass = try r.u16()
            let ttl = try r.u32()
            let length = Int(try r.u16())
            let data = try r.take(length)
            guard rtype == type.rawValue, rclass == 1 else { continue }
            switch type {
            case .a:
                guard data.count == 4 else { throw Problem("A record of \(data.count) bytes") }
                records.append(Record(address: data.map(String.init).joined(separator: "."), ttl: ttl))
            case .aaaa:
                guard data.count == 16 else { throw Problem("AAAA record of \(data.count) bytes") }
                records.append(Record(address: ipv6Text(data), ttl: ttl))
            }
        }
        return Answer(id: id, rcode: UInt8(flags & 0x000f), truncated: flags & 0x0200 != 0, records: records)
    }

    /// The reply a server would send to `query`: the question copied, then one A record per
    /// IPv4 address (none for other types), each name a compression pointer to the question.
    /// For test servers and tests; the sidecar itself only asks.
    public static func reply(to query: [UInt8], addresses: [String], ttl: UInt32) -> [UInt8]? {
        guard query.count > 12 else { return nil }
        var end = 12
        while end < query.count, query[end] != 0 { end += Int(query[end]) + 1 }
        guard end + 5 <= query.count else { return nil }
        let question = query[12...(end + 4)]
        let isA = query[end + 1] == 0 && query[end + 2] == 1
        let records = isA ? addresses : []
        var out: [UInt8] = [query[0], query[1], 0x81, 0x80, 0, 1, UInt8(records.count >> 8), UInt8(records.count & 0xff), 0, 0, 0, 0]
        out += question
        for a in records {
            out += [0xc0, 12, 0, 1, 0, 1]
            out += [UInt8(ttl >> 24), UInt8(ttl >> 16 & 0xff), UInt8(ttl >> 8 & 0xff), UInt8(ttl & 0xff), 0, 4]
            out += a.split(separator: ".").map { UInt8($0)! }
        }
        return out
    }

    /// RFC 5952 text: lowercase hex, the longest run of two or more zero groups as "::".
    static func ipv6Text(_ b: ArraySlice<UInt8>) -> String {
        let bytes = Array(b)
        let groups = (0..<8).map { UInt16(bytes[2 * $0]) << 8 | UInt16(bytes[2 * $0 + 1]) }
        var bestStart = -1, bestLength = 0, i = 0
        while i < 8 {
            guard groups[i] == 0 else { i += 1; continue }
            var j = i
            while j < 8, groups[j] == 0 { j += 1 }
            if j - i > bestLength, j - i >= 2 { bestStart = i; bestLength = j - i }
            i = j
        }
        func hex(_ range: Range<Int>) -> String { range.map { String(groups[$0], radix: 16) }.joined(separator: ":") }
        guard bestStart >= 0 else { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }

    private struct Reader {
        let bytes: [UInt8]
        var at = 0

        mutating func take(_ n: Int) throws(Problem) -> ArraySlice<UInt8> {
            guard n >= 0, at <= bytes.count - n else { throw Problem("message ends early at byte \(at)") }
            defer { at += n }
            return bytes[at..<(at + n)]
        }
        mutating func skip(_ n: Int) throws(Problem) { _ = try take(n) }
        mutating func u16() throws(Problem) -> UInt16 {
            let s = try take(2)
            return UInt16(s[s.startIndex]) << 8 | UInt16(s[s.startIndex + 1])
        }
        mutating func u32() throws(Problem) -> UInt32 {
            UInt32(try u16()) << 16 | UInt32(try u16())
        }

        /// Moves past a name at the cursor: labels up to a zero byte, or up to a compression
        /// pointer (two bytes; the name continues elsewhere, which skipping does not need, but
        /// the pointer must still land inside the message and before itself).
        mutating func skipName() throws(Problem) {
            var total = 0
            while true {
                let length = try take(1).first!
                switch length & 0xc0 {
                case 0x00:
                    if length == 0 { return }
                    total += Int(length) + 1
                    guard total <= 255 else { throw Problem("name longer than 255 bytes") }
                    try skip(Int(length))
                case 0xc0:
                    let low = try take(1).first!
                    let target = Int(length & 0x3f) << 8 | Int(low)
                    guard target < at - 2 else { throw Problem("compression pointer forward or to itself") }
                    return
                default:
                    throw Problem("label type \(length >> 6) is not supported")
                }
            }
        }
    }
}
