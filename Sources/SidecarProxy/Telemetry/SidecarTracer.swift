import Foundation
import NIOConcurrencyHelpers
import SidecarCore
import Tracing
import W3CTraceContext

/// The sidecar's `Tracer` (swift-distributed-tracing's API): spans with W3C trace context
/// (`traceparent` continued from the client and passed upstream), finished into
/// `SpanExporter`'s bounded queue. Created only with `[otel]`; without it no span exists and a
/// request pays nothing for tracing.
final class SidecarTracer: Tracer, Sendable {
    typealias Span = SidecarSpan

    let exporter: SpanExporter

    init(exporter: SpanExporter) {
        self.exporter = exporter
    }

    func startSpan<Instant: TracerInstant>(
        _ operationName: String, context: @autoclosure () -> InstrumentationContext, ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt
    ) -> SidecarSpan {
        var context = context()
        let parent = context.traceContext
        let trace = TraceContext(traceID: parent?.traceID ?? .random(), spanID: .random(), flags: parent?.flags ?? .sampled,
                                 state: parent?.state ?? TraceState())
        context.traceContext = trace
        return SidecarSpan(name: operationName, kind: kind, context: context, trace: trace, parent: parent?.spanID,
                           start: instant().nanosecondsSinceEpoch, exporter: exporter)
    }

    func forceFlush() { exporter.flushSoon() }

    func extract<Carrier, Extract>(_ carrier: Carrier, into context: inout InstrumentationContext, using extractor: Extract)
    where Extract: Extractor, Extract.Carrier == Carrier {
        guard let parent = extractor.extract(key: "traceparent", from: carrier),
              let trace = try? TraceContext(traceParentHeaderValue: parent, traceStateHeaderValue: extractor.extract(key: "tracestate", from: carrier))
        else { return }
        context.traceContext = trace
    }

    func inject<Carrier, Inject>(_ context: InstrumentationContext, into carrier: inout Carrier, using injector: Inject)
    where Inject: Injector, Inject.Carrier == Carrier {
        guard let trace = context.traceContext else { return }
        injector.inject(trace.traceParentHeaderValue, forKey: "traceparent", into: &carrier)
        if let state = trace.traceStateHeaderValue { injector.inject(state, forKey: "tracestate", into: &carrier) }
    }
}

/// The W3C trace context of the current span, in an `InstrumentationContext`.
enum TraceContextKey: InstrumentationContextKey {
    typealias Value = TraceContext
}

extension InstrumentationContext {
    var traceContext: TraceContext? {
        get { self[TraceContextKey.self] }
        set { self[TraceContextKey.self] = newValue }
    }
}

/// One span: its fields behind a lock (the API lets any thread touch a span), handed to the
/// exporter once, when it ends.
final class SidecarSpan: Tracing.Span, Sendable {
    let context: InstrumentationContext
    let trace: TraceContext
    private let parent: SpanID?
    private let start: UInt64
    private let kind: SpanKind
    private let exporter: SpanExporter

    private struct State {
        var name: String
        var attributes = SpanAttributes()
        var status: SpanStatus?
        var ended = false
    }
    private let state: NIOLockedValueBox<State>

    init(name: String, kind: SpanKind, context: InstrumentationContext, trace: TraceContext, parent: SpanID?, start: UInt64, exporter: SpanExporter) {
        self.context = context
        self.trace = trace
        self.parent = parent
        self.start = start
        self.kind = kind
        self.exporter = exporter
        self.state = NIOLockedValueBox(State(name: name))
    }

    var operationName: String {
        get { state.withLockedValue { $0.name } }
        set { state.withLockedValue { $0.name = newValue } }
    }

    var attributes: SpanAttributes {
        get { state.withLockedValue { $0.attributes } }
        set { state.withLockedValue { $0.attributes = newValue } }
    }

    var isRecording: Bool { state.withLockedValue { !$0.ended } }

    func setStatus(_ status: SpanStatus) {
        state.withLockedValue { s in
            // OK is final; an error may not be downgraded to unset.
            if s.status?.code != .ok { s.status = status }
        }
    }

    func addEvent(_ event: SpanEvent) {}

    func recordError<Instant: TracerInstant>(_ error: Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant) {
        setStatus(SpanStatus(code: .error, message: "\(error)"))
    }

    func addLink(_ link: SpanLink) {}

    func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        let end = instant().nanosecondsSinceEpoch
        guard let s = state.withLockedValue({ s -> State? in
            guard !s.ended else { return nil }
            s.ended = true
            return s
        }) else { return }
        var attributes: [(key: String, value: OTLPTraceEncoder.Value)] = []
        s.attributes.forEach { key, value in
            if let v = Self.value(value) { attributes.append((key, v)) }
        }
        let otlpKind: OTLPTraceEncoder.Kind
        switch kind {
        case .server: otlpKind = .server
        case .client: otlpKind = .client
        case .producer: otlpKind = .producer
        case .consumer: otlpKind = .consumer
        default: otlpKind = .internal
        }
        exporter.enqueue(OTLPTraceEncoder.FinishedSpan(
            traceID: withUnsafeBytes(of: trace.traceID.bytes) { Array($0) }, spanID: withUnsafeBytes(of: trace.spanID.bytes) { Array($0) },
            parentSpanID: parent.map { p in withUnsafeBytes(of: p.bytes) { Array($0) } }, traceState: trace.traceStateHeaderValue ?? "",
            name: s.name, kind: otlpKind, startNanos: start, endNanos: max(start, end), attributes: attributes,
            ok: s.status.map { $0.code == .ok }, statusMessage: s.status?.message ?? "", flags: trace.flags.rawValue))
    }

    static func value(_ a: SpanAttribute) -> OTLPTraceEncoder.Value? {
        switch a {
        case .int32(let i): return .int(Int64(i))
        case .int64(let i): return .int(i)
        case .double(let d): return .double(d)
        case .bool(let b): return .bool(b)
        case .string(let s): return .string(s)
        case .stringConvertible(let c): return .string(c.description)
        default: return nil
        }
    }
}
