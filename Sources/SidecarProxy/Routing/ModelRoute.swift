import NIOConcurrencyHelpers
import NIOCore
import SidecarCore

/// One model group's routing state, shared by every event loop: the pure `DeploymentSelector`
/// (in-flight counts, latency, ejection) behind one short lock, and each deployment's upstream.
/// Every `acquire` is matched by exactly one `release` (ProxyExchange keeps the slot and gives it
/// back once, whatever way the request ends).
final class ModelRoute: Sendable {
    let group: SidecarConfiguration.ModelGroup
    let upstreams: [UpstreamGroup]
    private let state: NIOLockedValueBox<(selector: DeploymentSelector, random: SystemRandomNumberGenerator)>

    init(group: SidecarConfiguration.ModelGroup, upstreams: [UpstreamGroup]) {
        self.group = group
        self.upstreams = upstreams
        let selector = DeploymentSelector(deployments: group.deployments.map { .init(weight: $0.weight, maxConcurrency: $0.maxConcurrency) })
        state = NIOLockedValueBox((selector, SystemRandomNumberGenerator()))
    }

    /// A deployment for one request (weighted least-connections over the healthy ones), or nil
    /// when every deployment is at its cap or ejected.
    func acquire(excluding: Set<Int> = [], now: NIODeadline = .now()) -> Int? {
        state.withLockedValue { s in s.selector.select(now: now, excluding: excluding, random: &s.random) }
    }

    func release(_ i: Int, _ outcome: DeploymentSelector.Outcome, now: NIODeadline = .now()) {
        state.withLockedValue { s in s.selector.finished(i, outcome, now: now) }
    }

    /// `UPSTREAM/MODEL`, as `x-sidecar-deployment` says.
    func name(_ i: Int) -> String { "\(group.deployments[i].upstream)/\(group.deployments[i].model)" }

    /// Per deployment: name, requests in flight, health (for `/stats`).
    var snapshot: [(name: String, inFlight: Int, health: String)] {
        state.withLockedValue { s in
            group.deployments.indices.map { i in
                let health: String
                switch s.selector.health(i) {
                case .healthy: health = "healthy"
                case .ejected: health = "ejected"
                case .halfOpen: health = "half-open"
                }
                return (name(i), s.selector.inFlight(i), health)
            }
        }
    }
}
