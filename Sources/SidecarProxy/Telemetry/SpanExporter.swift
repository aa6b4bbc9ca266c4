import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import SidecarCore

/// Sends finished spans to an OTLP/HTTP collector (`[otel] endpoint`) in batches, on a thread of
/// its own, never on a request's path: a request only appends its spans to a bounded queue (one
/// short lock). A full queue drops new spans; a failed or slow export drops its batch; both are
/// counted (`llm_sidecar_otel_spans_dropped_total`) and a collector that is down is logged once
/// until it is back. No request waits for, or fails because of, the collector.
final class SpanExporter: Sendable {
    let settings: SidecarConfiguration.OTel
    private let queue: NIOLockedValueBox<[OTLPTraceEncoder.FinishedSpan]>
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let client: LocalHTTPClient
    private let resource: [(key: String, value: OTLPTraceEncoder.Value)]
    private let metrics: SidecarMetrics
    private let logger: Logger
    /// An export is under way (one at a time) / the collector's last export failed (logged once).
    private let exporting = NIOLockedValueBox(false)
    private let failing = NIOLockedValueBox(false)
    private let timer = NIOLockedValueBox<RepeatedTask?>(nil)
    static let batchSpans = 512
    static let exportTimeout: TimeAmount = .seconds(5)

    init(settings: SidecarConfiguration.OTel, version: String, metrics: SidecarMetrics, logger: Logger) {
        self.settings = settings
        self.metrics = metrics
        self.logger = logger
        self.queue = NIOLockedValueBox([])
        self.client = LocalHTTPClient(target: .tcp(host: settings.endpoint.host, port: settings.endpoint.port), group: group)
        var host = "localhost"
        if let name = ProcessInfo.processInfo.hostName.split(separator: ".").first { host = String(name) }
        resource = [("service.name", .string(settings.serviceName)), ("service.version", .string(version)),
                    ("host.name", .string(host)), ("telemetry.sdk.name", .string("llm-sidecar")), ("telemetry.sdk.language", .string("swift"))]
        let task = group.next().scheduleRepeatedTask(initialDelay: settings.exportInterval, delay: settings.exportInterval) { [self] _ in
            self.exportBatch()
        }
        timer.withLockedValue { $0 = task }
    }

    func enqueue(_ span: OTLPTraceEncoder.FinishedSpan) {
        let (kept, full) = queue.withLockedValue { q -> (Bool, Bool) in
            guard q.count < settings.maxQueueSpans else { return (false, false) }
            q.append(span)
            return (true, q.count == Self.batchSpans)
        }
        if !kept { metrics.otelSpansDropped(1) }
        if full { flushSoon() }
    }

    func flushSoon() {
        group.next().execute { [self] in self.exportBatch() }
    }

    /// Sends up to `batchSpans` queued spans, unless an export is already under way.
    private func exportBatch() {
        guard exporting.withLockedValue({ busy in defer { busy = true }; return !busy }) else { return }
        let batch = queue.withLockedValue { q -> [OTLPTraceEncoder.FinishedSpan] in
            let n = min(q.count, Self.batchSpans)
            defer { q.removeFirst(n) }
            return Array(q.prefix(n))
        }
        guard !batch.isEmpty else { return exporting.withLockedValue { $0 = false } }
        let body = OTLPTraceEncoder.encode(spans: batch, resource: resource, scopeName: "llm-sidecar", scopeVersion: "1")
        let path = settings.endpoint.pathPrefix
        Task { [self] in
            var problem: String?
            do {
                let r = try await client.request(method: .POST, path: path, headers: [("content-type", "application/x-protobuf")], body: body,
                                                 timeout: Self.exportTimeout)
                if !(200..<300).contains(r.status) { problem = "the collector answered \(r.status)" }
            } catch {
                problem = "\(error)"
            }
            if let problem {
                metrics.otelSpansDropped(batch.count)
                if !failing.withLockedValue({ f in defer { f = true }; return f }) {
                    logger.warning("trace export failed: spans are dropped until the collector takes them", metadata: [
                        "endpoint": "\(settings.endpoint)", "error": "\(problem.prefix(300))"])
                }
            } else {
                metrics.otelSpansExported(batch.count)
                if failing.withLockedValue({ f in defer { f = false }; return f }) { logger.notice("trace export works again") }
            }
            exporting.withLockedValue { $0 = false }
            if queue.withLockedValue({ $0.count >= Self.batchSpans }) { flushSoon() }
        }
    }

    /// Sends what is queued (within the export timeout), then stops.
    func shutdown() async {
        timer.withLockedValue { $0?.cancel() }
        for _ in 0..<50 {
            if queue.withLockedValue({ $0.isEmpty }), !exporting.withLockedValue({ $0 }) { break }
            exportBatch()
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        await client.close()
        try? await group.shutdownGracefully()
    }
}
