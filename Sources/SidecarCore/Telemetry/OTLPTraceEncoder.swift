/// Finished spans as an OTLP `ExportTraceServiceRequest` in protobuf (opentelemetry-proto,
/// `collector/trace/v1` and `trace/v1`), what an OTLP/HTTP collector takes at `/v1/traces` with
/// `Content-Type: application/x-protobuf`. Written by hand (a few message types, the wire format
/// of https://protobuf.dev/programming-guides/encoding/), so the exporter needs no generated code
/// and no second TLS or HTTP stack. Pure.
public enum OTLPTraceEncoder {
    public enum Value: Sendable, Equatable {
        case string(String), bool(Bool), int(Int64), double(Double)
    }

    public enum Kind: Int, Sendable {
        case unspecified = 0, `internal` = 1, server = 2, client = 3, producer = 4, consumer = 5
    }

    public struct FinishedSpan: Sendable, Equatable {
        public var traceID: [UInt8]  // 16 bytes
        public var spanID: [UInt8]  // 8 bytes
        public var parentSpanID: [UInt8]?  // 8 bytes
        public var traceState: String
        public var name: String
        public var kind: Kind
        public var startNanos: UInt64
        public var endNanos: UInt64
        public var attributes: [(key: String, value: Value)]
        /// nil: unset; true: OK; false: error, with `statusMessage`.
        public var ok: Bool?
        public var statusMessage: String
        public var flags: UInt8

        public init(traceID: [UInt8], spanID: [UInt8], parentSpanID: [UInt8]?, traceState: String = "", name: String, kind: Kind,
                    startNanos: UInt64, endNanos: UInt64, attributes: [(key: String, value: Value)], ok: Bool?, statusMessage: String = "",
                    flags: UInt8 = 1) {
            self.traceID = traceID
            self.spanID = spanID
            self.parentSpanID = parentSpanID
            self.traceState = traceState
            self.name = name
            self.kind = kind
            self.startNanos = startNanos
            self.endNanos = endNanos
            self.attributes = attributes
            self.ok = ok
            self.statusMessage = statusMessage
            self.flags = flags
        }

        public static func == (a: Self, b: Self) -> Bool {
            a.traceID == b.traceID && a.spanID == b.spanID && a.parentSpanID == b.parentSpanID && a.name == b.name && a.kind == b.kind
                && a.startNanos == b.startNanos && a.endNanos == b.endNanos && a.ok == b.ok && a.statusMessage == b.statusMessage
                && a.attributes.map(\.key) == b.attributes.map(\.key) && a.attributes.map(\.value) == b.attributes.map(\.value)
        }
    }

    /// The request body for `spans`, all from one resource (the sidecar) and one scope.
    public static func encode(spans: [FinishedSpan], resource: [(key: String, value: Value)], scopeName: String, scopeVersion: String) -> [UInt8] {
        var scopeSpans: [UInt8] = []
        var scope: [UInt8] = []
        string(1, scopeName, &scope)
        string(2, scopeVersion, &scope)
        message(1, scope, &scopeSpans)
        for span in spans { message(2, encode(span), &scopeSpans) }
        var resourceMessage: [UInt8] = []
        for a in resource { message(1, keyValue(a.key, a.value), &resourceMessage) }
        var resourceSpans: [UInt8] = []
        message(1, resourceMessage, &resourceSpans)
        message(2, scopeSpans, &resourceSpans)
        var request: [UInt8] = []
        message(1, resourceSpans, &request)
        return request
    }

    static func encode(_ s: FinishedSpan) -> [UInt8] {
        var out: [UInt8] = []
        bytes(1, s.traceID, &out)
        bytes(2, s.spanID, &out)
        if !s.traceState.isEmpty { string(3, s.traceState, &out) }
        if let parent = s.parentSpanID { bytes(4, parent, &out) }
        string(5, s.name, &out)
        tag(6, 0, &out)
        varint(UInt64(s.kind.rawValue), &out)
        fixed64(7, s.startNanos, &out)
        fixed64(8, s.endNanos, &out)
        for a in s.attributes { message(9, keyValue(a.key, a.value), &out) }
        if let ok = s.ok {
            var status: [UInt8] = []
            if !ok, !s.statusMessage.isEmpty { string(2, s.statusMessage, &status) }
            tag(3, 0, &status)
            varint(ok ? 1 : 2, &status)  // STATUS_CODE_OK = 1, STATUS_CODE_ERROR = 2
            message(15, status, &out)
        }
        tag(16, 5, &out)  // flags: fixed32, the W3C trace flags
        for shift in stride(from: 0, to: 32, by: 8) { out.append(UInt8(truncatingIfNeeded: UInt32(s.flags) >> shift)) }
        return out
    }

    static func keyValue(_ key: String, _ value: Value) -> [UInt8] {
        var any: [UInt8] = []
        switch value {
        case .string(let s): string(1, s, &any)
        case .bool(let b): tag(2, 0, &any); varint(b ? 1 : 0, &any)
        case .int(let i): tag(3, 0, &any); varint(UInt64(bitPattern: i), &any)
        case .double(let d): fixed64(4, d.bitPattern, &any)
        }
        var kv: [UInt8] = []
        string(1, key, &kv)
        message(2, any, &kv)
        return kv
    }

    // MARK: the wire format

    static func tag(_ field: Int, _ wireType: Int, _ out: inout [UInt8]) { varint(UInt64(field << 3 | wireType), &out) }

    static func varint(_ v: UInt64, _ out: inout [UInt8]) {
        var v = v
        while v >= 0x80 {
            out.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }

    static func fixed64(_ field: Int, _ v: UInt64, _ out: inout [UInt8]) {
        tag(field, 1, &out)
        for shift in stride(from: 0, to: 64, by: 8) { out.append(UInt8(truncatingIfNeeded: v >> shift)) }
    }

    static func bytes(_ field: Int, _ b: [UInt8], _ out: inout [UInt8]) {
        tag(field, 2, &out)
        varint(UInt64(b.count), &out)
        out += b
    }

    static func string(_ field: Int, _ s: String, _ out: inout [UInt8]) { bytes(field, Array(s.utf8), &out) }

    static func message(_ field: Int, _ m: [UInt8], _ out: inout [UInt8]) { bytes(field, m, &out) }
}
