import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SidecarCore

/// A stub resolver for `discover = "dns"`: one UDP query to one recursive resolver (the first
/// `nameserver` in /etc/resolv.conf, or `[server] dns_resolver`, e.g. Consul's 127.0.0.1:8600),
/// answered through `DNSMessage`. Each query gets its own socket (a fresh source port) and a random
/// id, and only a reply from the resolver with that id counts, so a spoofed datagram has to guess
/// both. A queries first; AAAA only when the name has no A records (an IPv6-only fleet).
///
/// No system resolver (getaddrinfo) because it hides the TTL, and the TTL is when to look again.
struct DNSResolver: Sendable {
    let server: SocketAddress
    /// Per attempt, of `attempts` (glibc waits 5 s per try; a resolver on the same host or LAN
    /// answers in milliseconds, and a lost datagram is better retried soon).
    var timeout: TimeAmount = .seconds(1)
    var attempts = 3

    init(_ address: SidecarConfiguration.Server.ResolverAddress?) throws {
        let a = address ?? Self.systemResolver()
        server = try SocketAddress(ipAddress: a.host, port: a.port)
    }

    /// /etc/resolv.conf's first `nameserver`, port 53; 127.0.0.1 when there is none (the
    /// resolver's own default).
    static func systemResolver(path: String = "/etc/resolv.conf") -> SidecarConfiguration.Server.ResolverAddress {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if words.count >= 2, words[0] == "nameserver" { return .init(host: String(words[1]), port: 53) }
        }
        return .init(host: "127.0.0.1", port: 53)
    }

    func resolve(_ name: String, on loop: EventLoop) async -> DNSDiscoveryState.Result {
        let a = await query(name, .a, on: loop)
        guard case .empty = a else { return a }
        return await query(name, .aaaa, on: loop)
    }

    private func query(_ name: String, _ type: DNSMessage.RecordType, on loop: EventLoop) async -> DNSDiscoveryState.Result {
        var last = "no answer"
        for _ in 0..<attempts {
            let id = UInt16.random(in: 0...UInt16.max)
            guard let q = DNSMessage.query(id: id, name: name, type: type) else { return .failed("\(name) is not a DNS name") }
            do {
                let bytes = try await exchange(q, id: id, on: loop)
                let answer = try DNSMessage.parse(bytes, type: type)
                switch answer.rcode {
                case 0 where answer.truncated && answer.records.isEmpty: last = "truncated answer"; continue
                case 0, 3: return answer.records.isEmpty ? .empty : .addresses(answer.records)
                default: last = "resolver answered rcode \(answer.rcode)"
                }
            } catch let p as DNSMessage.Problem {
                last = "malformed answer: \(p)"
            } catch {
                last = "\(error)"
            }
        }
        return .failed("\(last) from \(server)")
    }

    /// Sends `query` and returns the first datagram from the resolver with `id`, or fails after `timeout`.
    private func exchange(_ query: [UInt8], id: UInt16, on loop: EventLoop) async throws -> [UInt8] {
        let reply = loop.makePromise(of: [UInt8].self)
        let server = self.server
        let channel = try await DatagramBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Reply(server: server, id: id, promise: reply)) }
            }
            .bind(host: server.protocol == .inet6 ? "::" : "0.0.0.0", port: 0).get()
        defer { channel.close(promise: nil) }
        let timer = loop.scheduleTask(in: timeout) { reply.fail(ChannelError.connectTimeout(self.timeout)) }
        defer { timer.cancel(); reply.fail(ChannelError.ioOnClosedChannel) }  // no-op once answered
        let envelope = AddressedEnvelope(remoteAddress: server, data: channel.allocator.buffer(bytes: query))
        try await channel.writeAndFlush(envelope).get()
        return try await reply.futureResult.get()
    }

    private final class Reply: ChannelInboundHandler {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let server: SocketAddress
        let id: UInt16
        let promise: EventLoopPromise<[UInt8]>
        init(server: SocketAddress, id: UInt16, promise: EventLoopPromise<[UInt8]>) { self.server = server; self.id = id; self.promise = promise }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = unwrapInboundIn(data)
            let bytes = Array(envelope.data.readableBytesView)
            guard envelope.remoteAddress == server, bytes.count >= 2, UInt16(bytes[0]) << 8 | UInt16(bytes[1]) == id else { return }
            promise.succeed(bytes)
        }
        func errorCaught(context: ChannelHandlerContext, error: Error) { promise.fail(error) }
    }
}
