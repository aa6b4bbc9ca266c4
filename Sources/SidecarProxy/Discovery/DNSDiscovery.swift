import Logging
import NIOConcurrencyHelpers
import NIOCore
import SidecarCore
import Synchronization

/// Keeps a `discover = "dns"` upstream's address set (`DNSDiscoveryState` decides; this runs the
/// queries and timers on one event loop) and one `UpstreamGroup` per address: its own pools, TLS
/// to the address with the configured host name as SNI and certificate name, `Host` unchanged,
/// and its own health check when the upstream has one.
///
/// Routes read `version` (an atomic) before every pick and copy `members` when it moved, so a
/// new set holds for the next request on every loop. A group whose address left is shut down
/// once no request uses it (`UpstreamGroup.drainAndShutdown`), after a one-second grace for a
/// route that picked it just before it saw the new set.
final class DNSDiscovery: Sendable {
    struct Found: Sendable {
        var address: String
        var group: UpstreamGroup
        /// When it joined, for slow start; nil for the first answer's addresses (all start at once).
        var joined: NIODeadline?
    }

    let slowStart: TimeAmount
    private let name: String
    private let upstream: String
    private let resolver: DNSResolver
    private let loop: EventLoop
    private let logger: Logger
    private let makeGroup: @Sendable (String) throws -> UpstreamGroup
    private let versionCounter = Atomic<Int>(0)
    private let found = NIOLockedValueBox<[Found]>([])
    private let loopState: NIOLoopBoundBox<LoopState>
    /// Succeeds after the first answer (or failure): the server opens its listener after that.
    let firstAnswer: EventLoopFuture<Void>

    private final class LoopState {
        var state: DNSDiscoveryState
        var stopped = false
        var next: Scheduled<Void>?
        var first: EventLoopPromise<Void>?
        init(_ s: DNSDiscoveryState) { state = s }
    }

    init(upstream: String, host: String, discovery: SidecarConfiguration.Discovery, resolver: DNSResolver, loop: EventLoop,
         logger: Logger, makeGroup: @escaping @Sendable (String) throws -> UpstreamGroup) {
        self.upstream = upstream
        self.name = host
        self.slowStart = discovery.slowStart
        self.resolver = resolver
        self.loop = loop
        self.logger = logger
        self.makeGroup = makeGroup
        let first = loop.makePromise(of: Void.self)
        firstAnswer = first.futureResult
        let state = DNSDiscoveryState(minTTL: discovery.minTTL, maxTTL: discovery.maxTTL, now: .now())
        loopState = NIOLoopBoundBox.makeBoxSendingValue(LoopState(state), eventLoop: loop)
        loop.execute { [self] in
            loopState.value.first = first
            query()
        }
    }

    var version: Int { versionCounter.load(ordering: .acquiring) }
    var members: [Found] { found.withLockedValue { $0 } }

    /// No query starts after this; every address's group is shut down (gracefully).
    func stop() {
        loop.execute { [self] in
            let s = loopState.value
            s.stopped = true
            s.next?.cancel()
            s.first?.succeed(())
            s.first = nil
        }
        for f in members { _ = f.group.shutdown() }
    }

    private func query() {
        guard !loopState.value.stopped else { return }
        let bound = NIOLoopBound(self, eventLoop: loop)
        let resolver = self.resolver, name = self.name, loop = self.loop
        Task {
            let result = await resolver.resolve(name, on: loop)
            loop.execute { bound.value.answered(result) }
        }
    }

    private func answered(_ result: DNSDiscoveryState.Result) {
        let s = loopState.value
        guard !s.stopped else { return }
        let now = NIODeadline.now()
        let initial = !s.state.resolvedOnce
        let verdict = s.state.resolved(result, now: now)
        let metadata: Logger.Metadata = ["upstream": "\(upstream)", "name": "\(name)"]
        switch verdict {
        case .unchanged: break
        case .failedFirst(let reason):
            logger.warning("DNS discovery failed; keeping the last addresses found", metadata: metadata.merging(["reason": "\(reason)"]) { a, _ in a })
        case .emptyUnconfirmed:
            logger.notice("DNS discovery found no addresses; asking again before draining", metadata: metadata)
        case .changed(let added, let removed):
            logger.notice("DNS discovery changed the addresses", metadata: metadata.merging([
                "added": "\(added.joined(separator: ","))", "removed": "\(removed.joined(separator: ","))",
                "addresses": "\(s.state.addresses.count)"]) { a, _ in a })
            // An address's group is built off the loop (its pools are made on every loop, this
            // one included); the next query waits for it, so changes apply in order.
            let joined = initial ? nil : now
            let bound = NIOLoopBound(self, eventLoop: loop)
            let loop = self.loop
            Task {
                self.apply(added: added, removed: removed, joined: joined)
                loop.execute { bound.value.scheduleNext() }
            }
            return
        }
        scheduleNext()
    }

    private func scheduleNext() {
        let s = loopState.value
        s.first?.succeed(())
        s.first = nil
        guard !s.stopped else { return }
        s.next = loop.assumeIsolated().scheduleTask(deadline: s.state.nextQuery) { [self] in query() }
    }

    private func apply(added: [String], removed: [String], joined: NIODeadline?) {
        var made: [Found] = []
        for address in added {
            do {
                made.append(Found(address: address, group: try makeGroup(address), joined: joined))
            } catch {
                logger.error("cannot set up a discovered address", metadata: ["upstream": "\(upstream)", "address": "\(address)", "error": "\(error)"])
            }
        }
        let gone = Set(removed)
        let leaving = found.withLockedValue { f -> [Found] in
            let leaving = f.filter { gone.contains($0.address) }
            f.removeAll { gone.contains($0.address) }
            f += made
            return leaving
        }
        versionCounter.wrappingAdd(1, ordering: .releasing)
        for f in leaving {
            let group = f.group
            Task {
                try? await Task.sleep(nanoseconds: 1_000_000_000)
                await group.drainAndShutdown(timeout: .seconds(600))
            }
        }
    }
}
