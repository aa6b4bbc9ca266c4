import NIOCore
import SidecarCore
import Synchronization

/// What every client connection shares: the configuration snapshot, the upstream groups, and a
/// few counters. Immutable apart from atomics, so any event loop reads it without locks.
final class ProxyRuntime: Sendable {
    let configuration: SidecarConfiguration
    let groups: [String: UpstreamGroup]
    let defaultUpstream: UpstreamGroup?
    let maxBodyBytes: Int
    let clientIdleTimeout: TimeAmount
    private let inFlight = Atomic<Int>(0)
    private let draining = Atomic<Bool>(false)
    private let total = Atomic<Int>(0)

    init(configuration: SidecarConfiguration, groups: [String: UpstreamGroup]) {
        self.configuration = configuration
        self.groups = groups
        self.defaultUpstream = configuration.server.defaultUpstream.flatMap { groups[$0] }
        self.maxBodyBytes = configuration.server.maxBodyBytes
        self.clientIdleTimeout = configuration.server.clientIdleTimeout
    }

    func requestStarted() {
        inFlight.wrappingAdd(1, ordering: .relaxed)
        total.wrappingAdd(1, ordering: .relaxed)
    }

    func requestFinished() { inFlight.wrappingSubtract(1, ordering: .relaxed) }

    var requestsInFlight: Int { inFlight.load(ordering: .relaxed) }
    var requestsTotal: Int { total.load(ordering: .relaxed) }

    var isDraining: Bool { draining.load(ordering: .relaxed) }
    func startDraining() { draining.store(true, ordering: .relaxed) }
}
