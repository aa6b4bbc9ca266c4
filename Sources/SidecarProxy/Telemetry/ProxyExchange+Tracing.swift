import Foundation
import NIOCore
import NIOHTTP1
import SidecarCore
import Tracing

/// A request's spans (docs/observability.md, "Traces"): the request's own (the client
/// connection's, ended by `DownstreamHandler.exchangeEnded`), and its children, started and ended
/// here: the cache lookup, each upstream attempt (whose context goes upstream as `traceparent`),
/// and a stream's first token. Nothing here runs without `[otel]`: every function returns at
/// once when the request has no span.
extension ProxyExchange {
    /// The body is read: the model and the request's parameters.
    func traceDecided(_ bytes: [UInt8]) {
        guard let span else { return }
        let path = Self.barePath(clientHead.uri)
        let operation = APIDialect.operation(path) ?? "http"
        if let model = requestModel {
            span.operationName = "\(operation) \(model)"
            span.attributes["gen_ai.request.model"] = model
        }
        if let r = JSONTopLevel.value(of: "temperature", in: bytes), let d = Double(String(decoding: bytes[r], as: UTF8.self)) {
            span.attributes["gen_ai.request.temperature"] = d
        }
        if let r = JSONTopLevel.value(of: "top_p", in: bytes), let d = Double(String(decoding: bytes[r], as: UTF8.self)) {
            span.attributes["gen_ai.request.top_p"] = d
        }
        if let max = Self.maxTokens(in: bytes) { span.attributes["gen_ai.request.max_tokens"] = max }
        if let stream = JSONTopLevel.value(of: "stream", in: bytes) { span.attributes["llm_sidecar.stream"] = bytes[stream].elementsEqual("true".utf8) }
        if tracer?.exporter.settings.captureContent == true {
            span.attributes["gen_ai.input.messages"] = String(decoding: bytes.prefix(Self.capturedBytes), as: UTF8.self)
        }
    }

    static let capturedBytes = 16 << 10

    func traceCacheLookupStarted() {
        guard let span, let tracer else { return }
        cacheSpan = tracer.startSpan("cache lookup", context: span.context, ofKind: .internal)
    }

    /// The lookup's answer: "hit", "miss" or "coalesced" (an identical request is in flight).
    func traceCacheLookupEnded(_ result: String) {
        guard let s = cacheSpan else { return }
        cacheSpan = nil
        s.attributes["llm_sidecar.cache.result"] = result
        s.end()
    }

    /// An attempt is about to be sent: its span, and its context in the upstream's `traceparent`.
    func traceAttemptStarted() {
        guard let span, let tracer, let group else { return }
        let model = slot.map { $0.route.deployment($0.index).model } ?? requestModel
        let operation = APIDialect.operation(Self.barePath(clientHead.uri)) ?? "http"
        if span.attributes["gen_ai.request.model"] == nil, let requested = requestModel {
            // A request whose body was not read whole: the model sniffed from its first bytes.
            span.operationName = "\(operation) \(requested)"
            span.attributes["gen_ai.request.model"] = requested
        }
        let child = tracer.startSpan(model.map { "\(operation) \($0)" } ?? operation, context: span.context, ofKind: .client)
        child.attributes["gen_ai.operation.name"] = operation
        child.attributes["gen_ai.provider.name"] = group.configuration.api.providerName
        if let model { child.attributes["gen_ai.request.model"] = model }
        child.attributes["server.address"] = group.configuration.url.host
        child.attributes["server.port"] = group.configuration.url.port
        child.attributes["llm_sidecar.attempt"] = max(1, machine.attempts)
        if let s = slot { child.attributes["llm_sidecar.deployment"] = s.route.name(s.index) }
        attemptSpan = child
        sentWallNanos = DefaultTracerClock.now.nanosecondsSinceEpoch
        var headers = upstreamHead.headers
        headers.remove(name: "traceparent")
        headers.remove(name: "tracestate")
        tracer.inject(child.context, into: &headers, using: HTTPHeadersInjector())
        upstreamHead.headers = headers
    }

    /// A stream's first body bytes: the time to first token, as a span from the send.
    func traceFirstByte() {
        guard let attempt = attemptSpan, let tracer, isStream else { return }
        let first = tracer.startSpan("first token", context: attempt.context, ofKind: .internal,
                                     at: DefaultTracerClock.Timestamp(nanosecondsSinceEpoch: sentWallNanos))
        first.end()
    }

    /// The attempt is over: its status, or the error that ended it.
    func traceAttemptEnded(status: Int?, error: ProxyError? = nil) {
        guard let s = attemptSpan else { return }
        attemptSpan = nil
        if let status { s.attributes["http.response.status_code"] = status }
        if let error {
            s.attributes["error.type"] = error.codeString
            s.setStatus(SpanStatus(code: .error, message: error.message))
        } else if let status, status >= 400 {
            s.attributes["error.type"] = String(status)
            s.setStatus(SpanStatus(code: .error))
        }
        s.end()
    }

    /// The answer's usage and what it cost, on the request's span and the attempt's.
    func traceUsage(_ usage: ResponseInspector.Usage, usd: Double, tail: [UInt8]) {
        guard let span else { return }
        for s in [span, attemptSpan].compactMap({ $0 }) {
            s.attributes["gen_ai.usage.input_tokens"] = Int(usage.promptTokens)
            s.attributes["gen_ai.usage.output_tokens"] = Int(usage.completionTokens)
            if usage.cachedTokens > 0 { s.attributes["gen_ai.usage.cache_read.input_tokens"] = Int(usage.cachedTokens) }
            if usage.cacheWriteTokens > 0 { s.attributes["gen_ai.usage.cache_creation.input_tokens"] = Int(usage.cacheWriteTokens) }
            if let model = Self.topLevelString("model", in: tail) ?? Self.lastModel(in: tail) { s.attributes["gen_ai.response.model"] = model }
        }
        span.attributes["llm_sidecar.cost_usd"] = usd
        if tracer?.exporter.settings.captureContent == true {
            span.attributes["gen_ai.output.messages"] = String(decoding: tail.suffix(Self.capturedBytes), as: UTF8.self)
        }
    }

    /// The `"model"` of a stream's last event that names one.
    static func lastModel(in tail: [UInt8]) -> String? {
        let key = Array(#""model":""#.utf8)
        var i = tail.count - key.count
        while i >= 0 {
            if tail[i] == key[0], tail[i..<(i + key.count)].elementsEqual(key) {
                let start = i + key.count
                guard let end = tail[start...].firstIndex(of: UInt8(ascii: "\"")), end - start < 200 else { return nil }
                return String(decoding: tail[start..<end], as: UTF8.self)
            }
            i -= 1
        }
        return nil
    }
}

/// Writes trace context into an upstream request's headers.
struct HTTPHeadersInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout HTTPHeaders) {
        carrier.replaceOrAdd(name: key, value: value)
    }
}

/// Reads trace context from a client request's headers.
struct HTTPHeadersExtractor: Extractor {
    func extract(key: String, from carrier: HTTPHeaders) -> String? {
        carrier.first(name: key)
    }
}
