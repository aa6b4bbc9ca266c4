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

    /// `head` in wire form (status line, header lines, empty line), for a response written past
    /// the HTTP encoder.
    static func wireForm(_ head: HTTPResponseHead) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeString("HTTP/1.1 \(head.status.code) \(head.status.reasonPhrase)\r\n")
        for (name, value) in head.headers { b.writeString("\(name): \(value)\r\n") }
        b.writeString("\r\n")
        return b
    }
}
