import Metrics
import Prometheus

/// Fleet mode's metrics (docs/fleet.md, "Metrics").
struct FleetMetrics: Sendable {
    /// 1 while the fleet database answers.
    let connected: Metrics.Meter
    /// Statements sent to the fleet database (what `make bench` divides by requests).
    let statements: Metrics.Counter
    let errors: Metrics.Counter
    /// Outbox rows waiting for the fleet database.
    let outboxRows: Metrics.Meter
    private let allotments: [String: Metrics.Meter]
    private let granted: [String: Metrics.Meter]

    init(factory: PrometheusMetricsFactory) {
        connected = Metrics.Meter(label: "llm_sidecar_fleet_connected", factory: factory)
        statements = Metrics.Counter(label: "llm_sidecar_fleet_statements_total", factory: factory)
        errors = Metrics.Counter(label: "llm_sidecar_fleet_errors_total", factory: factory)
        outboxRows = Metrics.Meter(label: "llm_sidecar_fleet_outbox_rows", factory: factory)
        var a: [String: Metrics.Meter] = [:], g: [String: Metrics.Meter] = [:]
        for p in ["day", "month"] {
            a[p] = Metrics.Meter(label: "llm_sidecar_fleet_budget_allotment_usd", dimensions: [("period", p)], factory: factory)
            g[p] = Metrics.Meter(label: "llm_sidecar_fleet_budget_granted_usd", dimensions: [("period", p)], factory: factory)
        }
        allotments = a
        granted = g
    }

    /// This node's slice of the daily or monthly budget.
    func allotment(_ period: String) -> Metrics.Meter { allotments[period] ?? allotments["day"]! }
    /// The whole fleet's slices of it.
    func fleetGranted(_ period: String) -> Metrics.Meter { granted[period] ?? granted["day"]! }
}
