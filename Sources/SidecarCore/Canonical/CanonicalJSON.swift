import Foundation

/// JSON written so that two documents that mean the same produce the same bytes:
///
/// - object keys sorted by their UTF-8 bytes (after NFC), insignificant whitespace dropped;
/// - strings (keys and values) in Unicode NFC, with only `"`, `\` and control characters escaped;
/// - numbers normalised *as decimals*: `1`, `1.0`, `1e0`, `10e-1` are all `1`; `0.5` is `5e-1`.
///   No binary floating point is involved, so distinct values never collide (two seeds that
///   differ beyond 2^53 stay distinct);
/// - array order kept.
///
/// Input that is not strict RFC 8259 JSON, nests deeper than 256, or repeats a key in one object
/// (its meaning then depends on the reader) has no canonical form: `canonicalize` returns nil and
/// the request is simply not cached.
public enum CanonicalJSON {
    public static let maxDepth = 256

    /// The canonical bytes of `input`, or nil when it has none.
    public static func canonicalize(_ input: [UInt8]) -> [UInt8]? {
        guard let value = parse(input) else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(input.count)
        write(value, to: &out)
        return out
    }

    /// A parsed JSON value, numbers already in canonical decimal form.
    public indirect enum Value: Equatable, Sendable {
        case null
        case bool(Bool)
        case number(String)
        case string(String)
        case array([Value])
        /// Members sorted by canonical key.
        case object([(key: String, value: Value)])

        public static func == (a: Value, b: Value) -> Bool {
            switch (a, b) {
            case (.null, .null): return true
            case (.bool(let x), .bool(let y)): return x == y
            case (.number(let x), .number(let y)): return x == y
            case (.string(let x), .string(let y)): return x == y
            case (.array(let x), .array(let y)): return x == y
            case (.object(let x), .object(let y)):
                return x.count == y.count && zip(x, y).allSatisfy { $0.key == $1.key && $0.value == $1.value }
            default: return false
            }
        }

        /// The member `key` of an object.
        public subscript(key: String) -> Value? {
            guard case .object(let members) = self else { return nil }
            return members.first { $0.key == key }?.value
        }
    }

    public static func parse(_ input: [UInt8]) -> Value? {
        var p = Parser(bytes: input)
        guard let v = p.value(depth: 0) else { return nil }
        p.skipWhitespace()
        return p.i == input.count ? v : nil
    }

    // MARK: writing

    public static func write(_ v: Value, to out: inout [UInt8]) {
        switch v {
        case .null: out += Array("null".utf8)
        case .bool(let b): out += Array((b ? "true" : "false").utf8)
        case .number(let n): out += Array(n.utf8)
        case .string(let s): writeString(s, to: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                write(item, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            for (i, m) in members.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                writeString(m.key, to: &out)
                out.append(UInt8(ascii: ":"))
                write(m.value, to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func writeString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        let hex = Array("0123456789abcdef".utf8)
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0..<0x20: out += [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 0xF)]]
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// NFC, with an ASCII fast path (ASCII is always NFC).
    static func nfc(_ s: String) -> String {
        s.utf8.allSatisfy { $0 < 0x80 } ? s : s.precomposedStringWithCanonicalMapping
    }

    /// The canonical decimal text of a JSON number's parts: digits without leading or trailing
    /// zeros and a power of ten; written as an integer when that is short, else as `De±E`.
    static func canonicalNumber(negative: Bool, integer: ArraySlice<UInt8>, fraction: ArraySlice<UInt8>, exponent: Int) -> String? {
        var digits = Array(integer) + Array(fraction)
        var power = exponent - fraction.count
        while let f = digits.first, f == UInt8(ascii: "0") { digits.removeFirst() }
        if digits.isEmpty { return "0" }  // every zero, including -0 and 0e5, is 0
        while let l = digits.last, l == UInt8(ascii: "0") { digits.removeLast(); power += 1 }
        let sign = negative ? "-" : ""
        let d = String(decoding: digits, as: UTF8.self)
        if power >= 0 && digits.count + power <= 40 {
            return sign + d + String(repeating: "0", count: power)
        }
        return sign + d + "e" + String(power)
    }

    struct Parser {
        let bytes: [UInt8]
        var i = 0

        init(bytes: [UInt8]) { self.bytes = bytes }

        mutating func skipWhitespace() {
            while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0A || bytes[i] == 0x0D { i += 1 }
        }

        mutating func value(depth: Int) -> Value? {
            guard depth < CanonicalJSON.maxDepth else { return nil }
            skipWhitespace()
            guard i < bytes.count else { return nil }
            switch bytes[i] {
            case UInt8(ascii: "{"): return object(depth: depth)
            case UInt8(ascii: "["): return array(depth: depth)
            case UInt8(ascii: "\""): return string().map { .string($0) }
            case UInt8(ascii: "t"): return literal("true", .bool(true))
            case UInt8(ascii: "f"): return literal("false", .bool(false))
            case UInt8(ascii: "n"): return literal("null", .null)
            default: return number()
            }
        }

        mutating func literal(_ word: StaticString, _ v: Value) -> Value? {
            let n = word.utf8CodeUnitCount
            guard i + n <= bytes.count else { return nil }
            let matches = word.withUTF8Buffer { w in (0..<n).allSatisfy { bytes[i + $0] == w[$0] } }
            guard matches else { return nil }
            i += n
            return v
        }

        mutating func object(depth: Int) -> Value? {
            i += 1
            var members: [(key: String, value: Value)] = []
            var seen: Set<String> = []
            skipWhitespace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object([]) }
            while true {
                skipWhitespace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\""), let key = string() else { return nil }
                guard seen.insert(key).inserted else { return nil }  // duplicate key: ambiguous
                skipWhitespace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { return nil }
                i += 1
                guard let v = value(depth: depth + 1) else { return nil }
                members.append((key, v))
                skipWhitespace()
                guard i < bytes.count else { return nil }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; break }
                return nil
            }
            members.sort { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
            return .object(members)
        }

        mutating func array(depth: Int) -> Value? {
            i += 1
            var items: [Value] = []
            skipWhitespace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array([]) }
            while true {
                guard let v = value(depth: depth + 1) else { return nil }
                items.append(v)
                skipWhitespace()
                guard i < bytes.count else { return nil }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                return nil
            }
        }

        /// A string at `i` (which is a quote), unescaped and in NFC.
        mutating func string() -> String? {
            i += 1
            // Fast path: no escapes and only ASCII (already NFC, already valid UTF-8): one copy.
            var j = i
            while j < bytes.count, bytes[j] != UInt8(ascii: "\""), bytes[j] != UInt8(ascii: "\\"), bytes[j] >= 0x20, bytes[j] < 0x80 { j += 1 }
            if j < bytes.count, bytes[j] == UInt8(ascii: "\"") {
                let s = String(decoding: bytes[i..<j], as: UTF8.self)
                i = j + 1
                return s
            }
            var out: [UInt8] = []
            while i < bytes.count {
                let b = bytes[i]
                if b == UInt8(ascii: "\"") {
                    i += 1
                    guard let s = Self.decodeUTF8(out) else { return nil }
                    return CanonicalJSON.nfc(s)
                }
                if b < 0x20 { return nil }
                if b == UInt8(ascii: "\\") {
                    i += 1
                    guard i < bytes.count else { return nil }
                    switch bytes[i] {
                    case UInt8(ascii: "\""): out.append(0x22)
                    case UInt8(ascii: "\\"): out.append(0x5C)
                    case UInt8(ascii: "/"): out.append(0x2F)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        guard var scalar = hex4(at: i + 1) else { return nil }
                        i += 4
                        if (0xD800..<0xDC00).contains(scalar) {
                            guard i + 2 < bytes.count, bytes[i + 1] == UInt8(ascii: "\\"), bytes[i + 2] == UInt8(ascii: "u"),
                                  let low = hex4(at: i + 3), (0xDC00..<0xE000).contains(low) else { return nil }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                            i += 6
                        } else if (0xDC00..<0xE000).contains(scalar) {
                            return nil  // a lone low surrogate
                        }
                        guard let u = Unicode.Scalar(scalar) else { return nil }
                        out += Array(String(Character(u)).utf8)
                    default: return nil
                    }
                    i += 1
                    continue
                }
                out.append(b)
                i += 1
            }
            return nil
        }

        /// Strict UTF-8 decoding (invalid bytes make the document uncanonicalizable).
        static func decodeUTF8(_ bytes: [UInt8]) -> String? {
            String(validating: bytes, as: UTF8.self)
        }

        func hex4(at j: Int) -> UInt32? {
            guard j + 4 <= bytes.count else { return nil }
            var v: UInt32 = 0
            for k in j..<(j + 4) {
                let c = bytes[k]
                let d: UInt32
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
                default: return nil
                }
                v = v << 4 | d
            }
            return v
        }

        /// RFC 8259 §6: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
        mutating func number() -> Value? {
            let isDigit = { (b: UInt8) in b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
            var negative = false
            if i < bytes.count, bytes[i] == UInt8(ascii: "-") { negative = true; i += 1 }
            let intStart = i
            guard i < bytes.count, isDigit(bytes[i]) else { return nil }
            if bytes[i] == UInt8(ascii: "0") { i += 1 } else { while i < bytes.count, isDigit(bytes[i]) { i += 1 } }
            let integer = bytes[intStart..<i]
            var fraction = bytes[i..<i]
            if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
                i += 1
                let f = i
                while i < bytes.count, isDigit(bytes[i]) { i += 1 }
                guard i > f else { return nil }
                fraction = bytes[f..<i]
            }
            var exponent = 0
            if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
                i += 1
                var expNegative = false
                if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") {
                    expNegative = bytes[i] == UInt8(ascii: "-")
                    i += 1
                }
                let e = i
                while i < bytes.count, isDigit(bytes[i]) { i += 1 }
                guard i > e, i - e <= 9 else { return nil }  // exponents beyond 10^9 are not numbers anyone means
                exponent = Int(String(decoding: bytes[e..<i], as: UTF8.self))! * (expNegative ? -1 : 1)
            }
            return CanonicalJSON.canonicalNumber(negative: negative, integer: integer, fraction: fraction, exponent: exponent).map { .number($0) }
        }
    }
}
