import SidecarCore

/// A message the generator made, with what any correct parser must find in it.
struct GeneratedMessage {
    var bytes: [UInt8]
    var isRequest: Bool
    var method = ""
    var target = ""
    var status = 0
    var reason = ""
    var version: HTTPVersionNumber
    var fields: [(name: String, value: String)]
    var body: [UInt8]
    /// Offset just past the whole message (head and framed body).
    var end: Int
    var framing: HTTPBodyFraming
}

/// Valid HTTP/1.1 messages from a seeded generator: the corpus of the differential and property
/// tests. Everything produced is accepted by a strict parser: single spaces, CRLF, token names,
/// OWS around values, one Host, framing fields consistent with the body.
struct HTTPMessageGenerator {
    var rng: SplitMix64

    init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    private mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &rng) }
    private mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }
    private mutating func pick<T>(_ xs: [T]) -> T { xs[int(0...(xs.count - 1))] }

    private static let tokenBytes = Array("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
    private static let pathBytes = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%[]{}|^`\"<>\\".utf8)
    private static let names = [
        "Accept", "User-Agent", "Content-Type", "X-Stainless-Lang", "X-Stainless-Package-Version", "Accept-Encoding",
        "Cache-Control", "x-sidecar-cache-ttl", "X-Sidecar-Cache", "traceparent", "X-Request-ID", "Date", "Server",
    ]
    private static let singletons = ["Authorization", "api-key", "x-api-key", "OpenAI-Organization", "OpenAI-Project"]

    private mutating func token(_ length: ClosedRange<Int>) -> String {
        String(decoding: (0..<int(length)).map { _ in pick(Self.tokenBytes) }, as: UTF8.self)
    }

    /// A field value: visible ASCII with inner SP/HT, never starting or ending in whitespace.
    private mutating func value() -> String {
        let n = int(0...40)
        var v: [UInt8] = []
        for i in 0..<n {
            let inner = i > 0 && i < n - 1
            if inner && chance(0.1) { v.append(chance(0.8) ? 0x20 : 0x09) } else { v.append(UInt8(int(0x21...0x7E))) }
        }
        return String(decoding: v, as: UTF8.self)
    }

    private mutating func ows() -> String { pick(["", "", " ", "  ", "\t", " \t"]) }

    private mutating func fields(required: [(String, String)], forbidden: Set<String>) -> [(name: String, value: String)] {
        var out: [(name: String, value: String)] = required.map { (name: $0.0, value: $0.1) }
        var used = Set(required.map { $0.0.lowercased() })
        for _ in 0..<int(0...14) {
            var name = chance(0.6) ? pick(Self.names) : token(1...20)
            if chance(0.15) { name = pick(Self.singletons) }
            let lower = name.lowercased()
            let isSingleton = Self.singletons.contains { $0.lowercased() == lower }
            if forbidden.contains(lower) || ["host", "content-length", "transfer-encoding", "connection", "expect",
                                             "content-type", "te", "upgrade"].contains(lower) { continue }
            if isSingleton && used.contains(lower) { continue }
            used.insert(lower)
            out.insert((name: name, value: value()), at: int(0...out.count))
        }
        return out
    }

    private mutating func bodyBytes() -> [UInt8] {
        let n = chance(0.2) ? int(0...4) : int(0...300)
        return (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    /// The chunked encoding of `body`, with random chunk sizes, hex case, extensions, trailers.
    private mutating func chunked(_ body: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        var at = 0
        while at < body.count {
            let n = min(body.count - at, int(1...80))
            var size = String(n, radix: 16, uppercase: chance(0.5))
            if chance(0.1) { size = "0" + size }
            out += Array(size.utf8)
            if chance(0.15) { out += Array(";\(token(1...6))=\(token(1...6))".utf8) }
            out += [0x0D, 0x0A] + body[at..<(at + n)] + [0x0D, 0x0A]
            at += n
        }
        out += Array("0\r\n".utf8)
        for _ in 0..<(chance(0.2) ? int(1...2) : 0) { out += Array("X-\(token(1...8)): \(value())\r\n".utf8) }
        return out + [0x0D, 0x0A]
    }

    private mutating func assemble(startLine: String, fields: [(name: String, value: String)]) -> [UInt8] {
        var head = startLine + "\r\n"
        for f in fields {
            // Framing fields never end in HT: we refuse that, llhttp misreads it.
            let isFraming = ["content-length", "transfer-encoding"].contains(f.name.lowercased())
            head += "\(f.name):\(ows())\(f.value)\(isFraming ? pick(["", " "]) : ows())\r\n"
        }
        return Array((head + "\r\n").utf8)
    }

    mutating func request() -> GeneratedMessage {
        let method = pick(["GET", "POST", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
        var target = "/"
        for _ in 0..<int(0...4) {
            target += String(decoding: (0..<int(1...12)).map { _ in pick(Self.pathBytes) }.filter { $0 != 0x25 }, as: UTF8.self) + "/"
        }
        if chance(0.3) { target += "?api-version=2024-10-21&x=\(token(1...5).filter { $0.isLetter || $0.isNumber })" }
        let version: HTTPVersionNumber = chance(0.9) ? .http1_1 : .http1_0
        var required: [(String, String)] = []
        if version == .http1_1 || chance(0.5) { required.append((pick(["Host", "host", "HOST"]), pick(["api.openai.com", "localhost:8080", "[::1]:443", "127.0.0.1"]))) }
        var body: [UInt8] = []
        var framing = HTTPBodyFraming.contentLength(0)
        var encoded: [UInt8] = []
        switch int(0...2) {
        case 1:
            body = bodyBytes()
            framing = .contentLength(body.count)
            encoded = body
            required.append((pick(["Content-Length", "content-length"]), String(body.count)))
        case 2 where version == .http1_1:
            body = bodyBytes()
            framing = .chunked
            encoded = chunked(body)
            required.append((pick(["Transfer-Encoding", "transfer-encoding"]), pick(["chunked", "Chunked"])))
        default:
            break
        }
        if chance(0.3) { required.append(("Connection", pick(["keep-alive", "close", "Keep-Alive"]))) }
        let fields = fields(required: required, forbidden: [])
        let versionText = version == .http1_1 ? "HTTP/1.1" : "HTTP/1.0"
        let head = assemble(startLine: "\(method) \(target) \(versionText)", fields: fields)
        return GeneratedMessage(bytes: head + encoded, isRequest: true, method: method, target: target, version: version,
                                fields: fields, body: body, end: head.count + encoded.count, framing: framing)
    }

    /// A response; `untilClose` bodies are generated only when `allowUntilClose`.
    mutating func response(allowUntilClose: Bool = true) -> GeneratedMessage {
        let status = pick([200, 200, 201, 204, 304, 400, 401, 404, 429, 500, 502, 503])
        let reason = pick(["OK", "", "Too Many Requests", "Bad  Gateway", "x\ty"])
        let version: HTTPVersionNumber = chance(0.9) ? .http1_1 : .http1_0
        var required: [(String, String)] = [("Content-Type", pick(["application/json", "text/event-stream; charset=utf-8"]))]
        var body: [UInt8] = []
        var framing = HTTPBodyFraming.contentLength(0)
        var encoded: [UInt8] = []
        let noBody = status == 204 || status == 304
        switch int(0...2) {
        case 0 where !noBody:
            body = bodyBytes()
            framing = .contentLength(body.count)
            encoded = body
            required.append(("Content-Length", String(body.count)))
        case 1 where !noBody && version == .http1_1:
            body = bodyBytes()
            framing = .chunked
            encoded = chunked(body)
            required.append(("Transfer-Encoding", "chunked"))
        case 2 where !noBody && allowUntilClose:
            body = bodyBytes()
            framing = .untilClose
            encoded = body
            required.append(("Connection", "close"))
        default:
            if !noBody { required.append(("Content-Length", "0")) }
        }
        let fields = fields(required: required, forbidden: [])
        let versionText = version == .http1_1 ? "HTTP/1.1" : "HTTP/1.0"
        let head = assemble(startLine: "\(versionText) \(status) \(reason)", fields: fields)
        return GeneratedMessage(bytes: head + encoded, isRequest: false, status: status, reason: reason, version: version,
                                fields: fields, body: body, end: head.count + encoded.count, framing: framing)
    }
}
