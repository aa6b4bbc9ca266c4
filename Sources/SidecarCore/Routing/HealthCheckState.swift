/// One upstream's active health check verdict, from the results of its probes: consecutive
/// passes and failures against the `healthy` and `unhealthy` thresholds (HAProxy's `rise` and
/// `fall`). A value type; the prober (SidecarProxy's HealthProber) feeds it results in order.
///
/// An upstream starts `pending`, which routes nothing: it has not been seen to work, and a
/// deployment that answers its first probe with 503 must never get a client request (Envoy
/// treats a host it has not checked yet the same way). The first result decides at once (one
/// pass is up, one failure is down); afterwards it takes `unhealthy` failures in a row to go down
/// and `healthy` passes in a row to come back, so one lost probe does not flap a deployment.
///
/// | status | pass | failure |
/// |---|---|---|
/// | pending | up | down |
/// | up | up | down after `unhealthy` in a row |
/// | down | up after `healthy` in a row | down |
public struct HealthCheckState: Sendable, Equatable {
    public enum Status: String, Sendable, Equatable {
        case pending, up, down
    }

    /// What a result changed, for the log and the metrics.
    public enum Transition: Sendable, Equatable {
        case none
        case markedUp
        case markedDown
    }

    public let healthy: Int
    public let unhealthy: Int
    public private(set) var status: Status
    public private(set) var consecutivePasses = 0
    public private(set) var consecutiveFailures = 0

    /// `status` other than `.pending` carries a verdict over (a reload that kept the check).
    public init(healthy: Int, unhealthy: Int, status: Status = .pending) {
        precondition(healthy >= 1 && unhealthy >= 1)
        self.healthy = healthy
        self.unhealthy = unhealthy
        self.status = status
    }

    /// Whether requests may go to the upstream.
    public var routable: Bool { status == .up }

    public mutating func passed() -> Transition {
        consecutivePasses += 1
        consecutiveFailures = 0
        guard status != .up, status == .pending || consecutivePasses >= healthy else { return .none }
        status = .up
        return .markedUp
    }

    public mutating func failed() -> Transition {
        consecutiveFailures += 1
        consecutivePasses = 0
        switch status {
        case .down:
            return .none
        case .pending:
            status = .down
            return .markedDown
        case .up:
            guard consecutiveFailures >= unhealthy else { return .none }
            status = .down
            return .markedDown
        }
    }
}
