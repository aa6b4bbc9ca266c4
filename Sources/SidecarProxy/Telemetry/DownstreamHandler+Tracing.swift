import NIOCore
import NIOHTTP1
import SidecarCore
import Tracing

/// The request's span: started when a proxied request is routed (continuing the client's
/// `traceparent`), ended when its exchange ends, with what the client got.
extension DownstreamHandler {
    func startRequestSpan(_ tracer: SidecarTracer, head: HTTPRequestHead, path: Substring, upstream: UpstreamGroup?) -> SidecarSpan {
        var context = InstrumentationContext.topLevel
        tracer.extract(head.headers, into: &context, using: HTTPHeadersExtractor())
        let operation = APIDialect.operation(path)
        let span = tracer.startSpan(operation ?? "\(head.method.rawValue) \(path.prefix(100))", context: context, ofKind: .server)
        if let operation { span.attributes["gen_ai.operation.name"] = operation }
        span.attributes["http.request.method"] = head.method.rawValue
        span.attributes["url.path"] = String(path.prefix(200))
        if let upstream {
            span.attributes["gen_ai.provider.name"] = upstream.configuration.api.providerName
            span.attributes["server.address"] = upstream.configuration.url.host
            span.attributes["server.port"] = upstream.configuration.url.port
        }
        requestSpan = span
        return span
    }

    func endRequestSpan(status: Int, complete: Bool) {
        guard let span = requestSpan else { return }
        requestSpan = nil
        span.attributes["http.response.status_code"] = status
        span.attributes["llm_sidecar.cache"] = access.cache
        if let upstream = access.upstream { span.attributes["llm_sidecar.upstream"] = upstream }
        span.attributes["llm_sidecar.attempts"] = access.attempts
        let total = (NIODeadline.now() - access.started).nanoseconds
        if let upstreamNanos = access.upstreamNanos {
            span.attributes["llm_sidecar.overhead_ms"] = Double(max(0, total - upstreamNanos)) / 1e6
        }
        if !complete {
            span.attributes["error.type"] = "response_cut"
            span.setStatus(SpanStatus(code: .error, message: "the response was cut short"))
        } else if status >= 500 {
            span.setStatus(SpanStatus(code: .error))
        }
        span.end()
    }
}
