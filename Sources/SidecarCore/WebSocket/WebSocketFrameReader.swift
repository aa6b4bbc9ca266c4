import NIOCore

/// Finds the frames in one direction of a WebSocket connection (RFC 6455 §5.2), so the relay can
/// forward each frame's bytes exactly as they came and read the text messages it must understand
/// (a Realtime `response.create`, a `response.done`). Pure: bytes in, frames out.
///
/// Strict where a relay must be: a reserved bit (no extension is negotiated through the sidecar),
/// an unknown opcode, a fragmented or oversized control frame, a 64-bit length with its top bit
/// set, a frame larger than `maxFrameBytes`, a client frame without a mask or a server frame with
/// one: each is a `WebSocketProtocolError`, and the relay closes the session with 1002 (or 1009).
public struct WebSocketFrameReader {
    public enum Opcode: UInt8, Sendable {
        case continuation = 0, text = 1, binary = 2, close = 8, ping = 9, pong = 10
        public var isControl: Bool { rawValue >= 8 }
    }

    public struct Frame {
        public var fin: Bool
        public var opcode: Opcode
        /// The frame exactly as received (header, mask and payload): what is forwarded.
        public var bytes: ByteBuffer
        /// The payload, unmasked.
        public var payload: [UInt8]
    }

    /// Frames from clients are masked, frames from servers are not (RFC 6455 §5.1).
    public let fromClient: Bool
    public let maxFrameBytes: Int
    private var pending: ByteBuffer?

    public init(fromClient: Bool, maxFrameBytes: Int = 16 << 20) {
        self.fromClient = fromClient
        self.maxFrameBytes = maxFrameBytes
    }

    public mutating func append(_ bytes: ByteBuffer) {
        if var held = pending, held.readableBytes > 0 {
            var bytes = bytes
            held.writeBuffer(&bytes)
            pending = held
        } else {
            pending = bytes
        }
    }

    /// Bytes received and not yet part of a whole frame.
    public var bufferedBytes: Int { pending?.readableBytes ?? 0 }

    /// The next whole frame, nil when more bytes are needed.
    public mutating func next() throws(WebSocketProtocolError) -> Frame? {
        guard var buffer = pending, buffer.readableBytes >= 2 else { return nil }
        let header = try buffer.withUnsafeReadableBytes { raw throws(WebSocketProtocolError) in try Self.header(raw) }
        guard let (fin, opcode, headerLength, mask, length) = header else { return nil }
        guard length <= maxFrameBytes else { throw .tooBig(length) }
        guard buffer.readableBytes >= headerLength + length else { return nil }
        guard (mask != nil) == fromClient else { throw .protocolError(fromClient ? "a client frame is not masked" : "a server frame is masked") }
        let bytes = buffer.readSlice(length: headerLength + length)!
        pending = buffer.readableBytes > 0 ? buffer : nil
        var payload = Array(bytes.readableBytesView.dropFirst(headerLength))
        if let mask {
            for i in payload.indices { payload[i] ^= mask[i & 3] }
        }
        return Frame(fin: fin, opcode: opcode, bytes: bytes, payload: payload)
    }

    /// fin, opcode, header length, mask key, payload length; nil when the header is incomplete.
    static func header(_ b: UnsafeRawBufferPointer) throws(WebSocketProtocolError) -> (Bool, Opcode, Int, [UInt8]?, Int)? {
        guard b.count >= 2 else { return nil }
        guard b[0] & 0x70 == 0 else { throw .protocolError("a reserved bit is set (no extension was negotiated)") }
        guard let opcode = Opcode(rawValue: b[0] & 0x0F) else { throw .protocolError("opcode \(b[0] & 0x0F) is reserved") }
        let fin = b[0] & 0x80 != 0
        let masked = b[1] & 0x80 != 0
        var length = Int(b[1] & 0x7F)
        var at = 2
        if opcode.isControl, !fin || length > 125 { throw .protocolError("a control frame is fragmented or longer than 125 bytes") }
        if length == 126 {
            guard b.count >= 4 else { return nil }
            length = Int(b[2]) << 8 | Int(b[3])
            at = 4
        } else if length == 127 {
            guard b.count >= 10 else { return nil }
            guard b[2] & 0x80 == 0 else { throw .protocolError("a 64-bit length has its top bit set") }
            var n: UInt64 = 0
            for i in 2..<10 { n = n << 8 | UInt64(b[i]) }
            guard n <= UInt64(Int32.max) else { throw .tooBig(Int(Int32.max)) }
            length = Int(n)
            at = 10
        }
        var mask: [UInt8]?
        if masked {
            guard b.count >= at + 4 else { return nil }
            mask = [b[at], b[at + 1], b[at + 2], b[at + 3]]
            at += 4
        }
        return (fin, opcode, at, mask, length)
    }

    /// A server's frame with `payload` (unmasked, FIN set): what the relay sends on its own
    /// (an error event, a close).
    public static func serverFrame(_ opcode: Opcode, _ payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x80 | opcode.rawValue]
        if payload.count < 126 {
            out.append(UInt8(payload.count))
        } else if payload.count <= 0xFFFF {
            out += [126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        } else {
            out.append(127)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: payload.count >> shift)) }
        }
        return out + payload
    }

    /// A client's frame (masked with `mask`): a close the relay sends upstream.
    public static func clientFrame(_ opcode: Opcode, _ payload: [UInt8], mask: [UInt8]) -> [UInt8] {
        precondition(payload.count < 126 && mask.count == 4)
        var out: [UInt8] = [0x80 | opcode.rawValue, 0x80 | UInt8(payload.count)] + mask
        for (i, b) in payload.enumerated() { out.append(b ^ mask[i & 3]) }
        return out
    }

    /// A close frame's payload: the status code, then a reason of at most 123 bytes.
    public static func closePayload(_ code: UInt16, _ reason: String) -> [UInt8] {
        [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(reason.utf8.prefix(123))
    }
}

public enum WebSocketProtocolError: Error, Equatable, Sendable {
    case protocolError(String)
    /// A frame (or message) larger than the relay takes.
    case tooBig(Int)

    /// The close code it ends the session with (RFC 6455 §7.4.1).
    public var closeCode: UInt16 {
        switch self {
        case .protocolError: 1002
        case .tooBig: 1009
        }
    }

    public var reason: String {
        switch self {
        case .protocolError(let why): why
        case .tooBig(let n): "a frame of \(n) bytes is larger than the sidecar relays"
        }
    }
}
