import NIOCore
import NIOHTTP1
import SidecarCore

/// The one place a `ProxyError` becomes bytes on the wire.
enum ErrorResponses {
    static func head(for error: ProxyError, keepAlive: Bool, extra: [(String, String)] = []) -> (HTTPResponseHead, ByteBuffer) {
        let body = ByteBuffer(string: error.jsonBody)
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.readableBytes))
        if let retry = error.retryAfterSeconds { headers.add(name: "retry-after", value: String(retry)) }
        if let allow = error.allow { headers.add(name: "allow", value: allow) }
        headers.add(name: "x-sidecar-error", value: error.codeString)
        for (name, value) in extra { headers.add(name: name, value: value) }
        if !keepAlive { headers.add(name: "connection", value: "close") }
        return (HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: error.status), headers: headers), body)
    }
}
