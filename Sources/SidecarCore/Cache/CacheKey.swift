/// A response cache key: the SHA-256 of `CanonicalRequest.keyMaterial`, held as four words so
/// hashing and comparing it in the hot tier and the in-flight table costs four integer operations.
public struct CacheKey: Hashable, Sendable, CustomStringConvertible {
    public let w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64

    /// From a 32-byte digest.
    public init(digest: [UInt8]) {
        precondition(digest.count == 32, "a cache key is a SHA-256 digest")
        func word(_ i: Int) -> UInt64 {
            var w: UInt64 = 0
            for b in digest[i..<(i + 8)] { w = w << 8 | UInt64(b) }
            return w
        }
        (w0, w1, w2, w3) = (word(0), word(8), word(16), word(24))
    }

    /// The 32 bytes, as stored in SQLite.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(32)
        for w in [w0, w1, w2, w3] { for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: w >> UInt64(shift))) } }
        return out
    }

    /// Lower-case hex, as keys are shown.
    public var description: String {
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 0xF)]] }, as: UTF8.self)
    }
}
