/// A field name for an edit: a token (RFC 9110 §5.1), written as given, matched ignoring case.
public struct HTTPFieldName: Sendable, Hashable {
    public let bytes: [UInt8]
    let lowercased: [UInt8]

    /// Nil unless `name` is 1*tchar.
    public init?(_ name: String) {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.allSatisfy(HTTPSyntax.isToken) else { return nil }
        self.bytes = bytes
        self.lowercased = bytes.map(HTTPSyntax.lowercased)
    }
}

/// A field value for an edit: field-vchar, SP and HT only, no surrounding whitespace — so an
/// edit can never inject a line (no CR, no LF).
public struct HTTPFieldValue: Sendable, Hashable {
    public let bytes: [UInt8]

    /// Nil when `value` has a CTL other than HT, DEL, or leading or trailing whitespace.
    public init?(_ value: String) {
        let bytes = Array(value.utf8)
        guard bytes.allSatisfy(HTTPSyntax.isFieldValueByte),
              !(bytes.first.map(HTTPSyntax.isWhitespace) ?? false),
              !(bytes.last.map(HTTPSyntax.isWhitespace) ?? false)
        else { return nil }
        self.bytes = bytes
    }
}

/// An origin-form request target for an edit (`/`, then visible ASCII without `#`).
public struct HTTPRequestTarget: Sendable, Hashable {
    public let bytes: [UInt8]

    public init?(_ target: String) {
        let bytes = Array(target.utf8)
        guard bytes.first == HTTPSyntax.slash, bytes.allSatisfy(HTTPSyntax.isTargetByte) else { return nil }
        self.bytes = bytes
    }
}

/// One field line to write.
public struct HTTPFieldEdit: Sendable, Hashable {
    public let name: HTTPFieldName
    public let value: HTTPFieldValue
}

/// The edits `HTTPHeadRewriter` applies to a scanned head. Built once per exchange (or once
/// for all, for the fixed parts); each list is short, so matching is a linear walk.
public struct HTTPHeadRewrite: Sendable, Hashable {
    /// Replaces the request target (requests only).
    public var target: HTTPRequestTarget?
    /// Drops the hop-by-hop fields (RFC 9110 §7.6.1) — `Connection` and every field it names,
    /// `Keep-Alive`, `TE`, `Trailer`, `Upgrade`, `Proxy-*` (`Proxy-Connection`,
    /// `Proxy-Authorization`: meant for us, never for upstream), the list `HeaderPolicy` uses.
    /// Default true.
    public var dropsHopByHop = true
    /// Drops `Transfer-Encoding` too: for when the body is re-framed on the way out.
    public var dropsTransferEncoding = false
    /// Drops every `x-sidecar-*` field (our own controls, not for upstream).
    public var dropsSidecarFields = false
    public private(set) var drops: [HTTPFieldName] = []
    public private(set) var replacements: [HTTPFieldEdit] = []
    public private(set) var additions: [HTTPFieldEdit] = []

    public init() {}

    /// Drops every line of `name`.
    public mutating func drop(_ name: HTTPFieldName) {
        drops.append(name)
    }

    /// Every line of `name` goes; one `name: value` line takes the first one's place, or is added
    /// at the end when there was none. At most 64 replacements.
    public mutating func replace(_ name: HTTPFieldName, with value: HTTPFieldValue) {
        precondition(replacements.count < 64, "at most 64 replacements")
        replacements.append(HTTPFieldEdit(name: name, value: value))
    }

    /// Adds a `name: value` line at the end, whatever is there already.
    public mutating func add(_ name: HTTPFieldName, _ value: HTTPFieldValue) {
        additions.append(HTTPFieldEdit(name: name, value: value))
    }

    /// An upper bound on the rewritten head's length, for a head of `headLength` bytes.
    public func maximumLength(headLength: Int) -> Int {
        var n = headLength + (target?.bytes.count ?? 0)
        for e in replacements { n += e.name.bytes.count + e.value.bytes.count + 4 }
        for e in additions { n += e.name.bytes.count + e.value.bytes.count + 4 }
        return n
    }
}
