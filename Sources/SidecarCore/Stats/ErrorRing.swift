/// The last errors, for the dashboard: a fixed number of entries, the oldest overwritten first,
/// so a storm of failures costs the same memory as one. Each entry is cleaned when recorded, so
/// what the ring holds can be shown to anyone allowed on the admin endpoints: the path without
/// its query (a key put in a query string stays out), messages with anything shaped like a
/// credential masked, and every text cut to a length a table row can show. Prompts never get
/// here: nothing from a request body is recorded but the model's name.
public struct ErrorRing: Sendable {
    public struct Entry: Sendable, Equatable {
        /// Unix time in milliseconds.
        public var time: Int64
        /// The status the client got (0: none, the answer was cut short).
        public var status: Int
        /// The sidecar's `error.code`, or `upstream_status` for an upstream's own error answer.
        public var code: String
        public var message: String
        public var model: String?
        public var path: String
        /// The upstream or deployment the request went to, when it got that far.
        public var upstream: String?

        public init(time: Int64, status: Int, code: String, message: String, model: String?, path: String, upstream: String? = nil) {
            self.time = time
            self.status = status
            self.code = code
            self.message = message
            self.model = model
            self.path = path
            self.upstream = upstream
        }
    }

    public static let maxPath = 200
    public static let maxMessage = 300
    public static let maxName = 100

    public let capacity: Int
    private var slots: [Entry] = []
    private var next = 0
    /// Errors recorded since the start, including those already overwritten.
    public private(set) var recorded = 0

    public init(capacity: Int = 50) {
        precondition(capacity > 0)
        self.capacity = capacity
        slots.reserveCapacity(capacity)
    }

    /// Records `entry`, cleaned (see the type's description), overwriting the oldest when full.
    public mutating func record(_ entry: Entry) {
        var e = entry
        e.path = Self.clean(path: e.path)
        e.message = Self.clean(message: e.message)
        e.code = Self.cut(e.code, to: Self.maxName)
        e.model = e.model.map { Self.cut($0, to: Self.maxName) }
        e.upstream = e.upstream.map { Self.cut($0, to: Self.maxName) }
        recorded += 1
        if slots.count < capacity {
            slots.append(e)
        } else {
            slots[next] = e
        }
        next = (next + 1) % capacity
    }

    /// What the ring holds, the newest first.
    public var newestFirst: [Entry] {
        guard slots.count == capacity else { return slots.reversed() }
        return (Array(slots[next...]) + Array(slots[..<next])).reversed()
    }

    /// The path alone: no query, no fragment, at most `maxPath` characters.
    public static func clean(path: String) -> String {
        let bare = path.prefix { $0 != "?" && $0 != "#" }
        return cut(String(bare), to: maxPath)
    }

    /// The message with query strings, bearer tokens and `sk-` keys masked, at most `maxMessage`
    /// characters. (The sidecar's own messages name paths and hosts, never headers; this is the
    /// second line of defence, for a path or an upstream's text quoted in one.)
    public static func clean(message: String) -> String {
        var out = ""
        var words = message.split(separator: " ", omittingEmptySubsequences: false)[...]
        var first = true
        while let word = words.popFirst() {
            if !first { out += " " }
            first = false
            if word.caseInsensitiveEquals("bearer"), let token = words.first, !token.isEmpty {
                out += String(word) + " [redacted]"
                words.removeFirst()
                continue
            }
            out += mask(word)
        }
        return cut(out, to: maxMessage)
    }

    /// One word: a query string and a key-shaped token (`sk-` and 16 or more characters after
    /// it, as OpenAI's and Anthropic's keys are) masked.
    private static func mask(_ word: Substring) -> String {
        var w = String(word)
        if let q = w.firstIndex(of: "?") { w = String(w[..<q]) + "?[redacted]" }
        guard let k = w.range(of: "sk-") else { return w }
        let rest = w[k.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }
        guard rest.count >= 16 else { return w }
        return String(w[..<k.lowerBound]) + "sk-[redacted]" + String(w[rest.endIndex...])
    }

    /// At most `limit` characters, control characters replaced (a table row stays one row).
    static func cut(_ text: String, to limit: Int) -> String {
        var out = String(text.unicodeScalars.prefix(limit).map { $0.value < 0x20 || $0.value == 0x7F ? " " : Character($0) })
        if text.unicodeScalars.count > limit { out += "…" }
        return out
    }
}

extension Substring {
    fileprivate func caseInsensitiveEquals(_ other: String) -> Bool {
        count == other.count && zip(self.utf8, other.utf8).allSatisfy { a, b in (a | 0x20) == (b | 0x20) }
    }
}
