import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A loopback DNS server for discovery tests: answers every A query with the addresses it is
/// currently given (`set`), each with `ttl`, the answer's name a compression pointer to the
/// question as real servers write it. AAAA queries get an empty answer. Counts queries.
public final class FakeDNSServer: Sendable {
    private let channel: Channel
    private let answer: NIOLockedValueBox<(addresses: [String], ttl: UInt32, queries: Int)>
    public var port: Int { channel.localAddress!.port! }
    public var queries: Int { answer.withLockedValue { $0.queries } }

    private init(channel: Channel, answer: NIOLockedValueBox<(addresses: [String], ttl: UInt32, queries: Int)>) {
        self.channel = channel
        self.answer = answer
    }

    public func set(_ addresses: [String], ttl: UInt32 = 1) {
        answer.withLockedValue { $0.addresses = addresses; $0.ttl = ttl }
    }

    public static func start(addresses: [String], ttl: UInt32 = 1, group: EventLoopGroup) async throws -> FakeDNSServer {
        let answer = NIOLockedValueBox<(addresses: [String], ttl: UInt32, queries: Int)>((addresses, ttl, 0))
        let channel = try await DatagramBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Handler(answer: answer)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return FakeDNSServer(channel: channel, answer: answer)
    }

    public func stop() async { try? await channel.close() }

    /// The reply a server would send to `query`: the question copied, then one A record per
    /// IPv4 address (none for other types), each name a compression pointer to the question.
    /// (The same as `DNSMessage.reply`; this module does not depend on SidecarCore.)
    static func reply(to query: [UInt8], addresses: [String], ttl: UInt32) -> [UInt8]? {
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

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        typealias OutboundOut = AddressedEnvelope<ByteBuffer>
        let answer: NIOLockedValueBox<(addresses: [String], ttl: UInt32, queries: Int)>
        init(answer: NIOLockedValueBox<(addresses: [String], ttl: UInt32, queries: Int)>) { self.answer = answer }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = unwrapInboundIn(data)
            let (addresses, ttl) = answer.withLockedValue { a in a.queries += 1; return (a.addresses, a.ttl) }
            guard let bytes = FakeDNSServer.reply(to: Array(envelope.data.readableBytesView), addresses: addresses, ttl: ttl) else { return }
            context.writeAndFlush(wrapOutboundOut(AddressedEnvelope(remoteAddress: envelope.remoteAddress, data: context.channel.allocator.buffer(bytes: bytes))), promise: nil)
        }
    }
}
