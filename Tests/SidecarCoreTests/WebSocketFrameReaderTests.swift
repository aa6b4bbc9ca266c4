import NIOCore
import SidecarCore
import XCTest

/// The relay's frame reader and the Realtime events it reads.
final class WebSocketFrameReaderTests: XCTestCase {
    /// Frames of every length class, masked and not, come out the same however the bytes are
    /// split: exactly as sent, payload unmasked.
    func testFramesAreFoundWhateverTheSplitAndForwardedAsTheyCame() throws {
        let mask: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]
        let payloads: [[UInt8]] = [[], Array("hello".utf8), Array(repeating: 0x41, count: 125), Array(repeating: 0x42, count: 126),
                                   Array(repeating: 0x43, count: 70_000)]
        for fromClient in [true, false] {
            var wire: [UInt8] = []
            for p in payloads {
                wire += fromClient ? Self.maskedFrame(.binary, p, mask: mask) : WebSocketFrameReader.serverFrame(.binary, p)
            }
            for split in [1, 2, 3, 7, 64, 1000, wire.count] {
                var reader = WebSocketFrameReader(fromClient: fromClient)
                var frames: [WebSocketFrameReader.Frame] = []
                var at = 0
                while at < wire.count {
                    reader.append(ByteBuffer(bytes: wire[at..<min(at + split, wire.count)]))
                    at += split
                    while let f = try reader.next() { frames.append(f) }
                }
                XCTAssertEqual(frames.map(\.payload), payloads, "split \(split)")
                XCTAssertEqual(frames.flatMap { Array($0.bytes.readableBytesView) }, wire, "the bytes are forwarded exactly")
                XCTAssertEqual(reader.bufferedBytes, 0)
            }
        }
        XCTAssertEqual(WebSocketFrameReader.clientFrame(.close, [3, 233], mask: mask), Self.maskedFrame(.close, [3, 233], mask: mask))
    }

    /// Random and mutated bytes never crash the reader: each ends in frames, an error, or a wait for more.
    func testRandomBytesNeverCrashIt() {
        var random = SystemRandomNumberGenerator()
        let valid = Self.maskedFrame(.text, Array(#"{"type":"response.create"}"#.utf8), mask: [1, 2, 3, 4])
        for round in 0..<5_000 {
            var bytes = round % 2 == 0 ? valid : (0..<Int.random(in: 0...40, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            if round % 2 == 0, !bytes.isEmpty { bytes[Int.random(in: 0..<bytes.count, using: &random)] = UInt8.random(in: 0...255, using: &random) }
            var reader = WebSocketFrameReader(fromClient: round % 3 != 0, maxFrameBytes: 1 << 16)
            reader.append(ByteBuffer(bytes: bytes))
            var frames = 0
            while frames < 64, (try? reader.next()).flatMap({ $0 }) != nil { frames += 1 }
            XCTAssertLessThanOrEqual(frames, bytes.count / 2)
        }
    }

    func testWhatARelayMustRefuse() {
        func error(_ bytes: [UInt8], fromClient: Bool = true, max: Int = 1 << 20) -> WebSocketProtocolError? {
            var r = WebSocketFrameReader(fromClient: fromClient, maxFrameBytes: max)
            r.append(ByteBuffer(bytes: bytes))
            do { _ = try r.next(); return nil } catch { return error }
        }
        XCTAssertEqual(error([0xC1, 0x80, 0, 0, 0, 0])?.closeCode, 1002, "RSV1 (compression) was never negotiated")
        XCTAssertEqual(error([0x83, 0x80, 0, 0, 0, 0])?.closeCode, 1002, "reserved opcode")
        XCTAssertEqual(error([0x09, 0x80, 0, 0, 0, 0])?.closeCode, 1002, "a fragmented ping")
        XCTAssertEqual(error([0x89, 0xFE, 0, 126])?.closeCode, 1002, "a ping longer than 125 bytes")
        XCTAssertEqual(error([0x81, 0x00]), .protocolError("a client frame is not masked"))
        XCTAssertEqual(error([0x81, 0x80, 0, 0, 0, 0], fromClient: false), .protocolError("a server frame is masked"))
        XCTAssertEqual(error([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0])?.closeCode, 1002, "a 64-bit length with its top bit set")
        XCTAssertEqual(error([0x82, 0xFE, 0x10, 0x00] + [1, 2, 3, 4], max: 1000), .tooBig(4096))
        XCTAssertNil(error([0x82, 0xFE, 0x10]), "an incomplete header is not an error: more bytes are needed")
    }

    func testTheRealtimeEventsTheSidecarReads() {
        let create = Array(#"{"type":"response.create","event_id":"e1","response":{"max_output_tokens":300,"instructions":"be brief"}}"#.utf8)
        XCTAssertEqual(RealtimeEvents.type(of: create), "response.create")
        XCTAssertEqual(RealtimeEvents.maxOutputTokens(of: create), 300)
        XCTAssertNil(RealtimeEvents.maxOutputTokens(of: Array(#"{"type":"response.create","response":{"max_output_tokens":"inf"}}"#.utf8)))
        XCTAssertNil(RealtimeEvents.type(of: Array("not json".utf8)))
        let done = Array(#"{"type":"response.done","response":{"id":"r","usage":{"total_tokens":52,"input_tokens":40,"output_tokens":12,"input_token_details":{"cached_tokens":32,"audio_tokens":0}}}}"#.utf8)
        XCTAssertEqual(RealtimeEvents.usage(ofResponseDone: done), .init(promptTokens: 40, completionTokens: 12, cachedTokens: 32))
        XCTAssertEqual(RealtimeEvents.sessionModel(of: Array(#"{"type":"session.created","session":{"model":"gpt-realtime-mini"}}"#.utf8)), "gpt-realtime-mini")
        XCTAssertEqual(RealtimeEvents.model(inTarget: "/v1/realtime?model=gpt-4o-realtime-preview%2D2025"), "gpt-4o-realtime-preview-2025")
        XCTAssertEqual(RealtimeEvents.model(inTarget: "/openai/realtime?api-version=2025-04-01-preview&deployment=rt-prod"), "rt-prod")
        XCTAssertNil(RealtimeEvents.model(inTarget: "/v1/realtime"))
        let error = String(decoding: RealtimeEvents.errorEvent(code: "budget_exceeded", message: "over \"budget\""), as: UTF8.self)
        XCTAssertEqual(error, #"{"type":"error","error":{"type":"invalid_request_error","code":"budget_exceeded","message":"over \"budget\""}}"#)
    }

    static func maskedFrame(_ opcode: WebSocketFrameReader.Opcode, _ payload: [UInt8], mask: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x80 | opcode.rawValue]
        if payload.count < 126 {
            out.append(0x80 | UInt8(payload.count))
        } else if payload.count <= 0xFFFF {
            out += [0xFE, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        } else {
            out.append(0xFF)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: payload.count >> shift)) }
        }
        out += mask
        for (i, b) in payload.enumerated() { out.append(b ^ mask[i & 3]) }
        return out
    }
}
