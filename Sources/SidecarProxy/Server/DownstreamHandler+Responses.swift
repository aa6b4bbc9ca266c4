import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore

/// Writing responses to the client (for the exchange, and for answers of the sidecar's own), and ending the request cycle.
extension DownstreamHandler {
    // MARK: responses (called by the exchange)

    func writeResponseHead(_ head: HTTPResponseHead) {
        access.status = Int(head.status.code)
        guard let context else { return }
        var bytes = context.channel.allocator.buffer(capacity: 512)
        writer.writeHead(head, requestMethod: respondingTo, into: &bytes)
        context.write(wrapOutboundOut(bytes), promise: nil)
    }

    /// An upstream's head, with the sidecar's changes applied as it is written.
    func writeForwardedHead(_ head: HTTPResponseHead, _ forwarding: HTTPResponseWriter.Forwarding) {
        access.status = Int(head.status.code)
        guard let context else { return }
        var bytes = context.channel.allocator.buffer(capacity: 512)
        writer.writeForwardedHead(head, forwarding, requestMethod: respondingTo, into: &bytes)
        context.write(wrapOutboundOut(bytes), promise: nil)
    }

    /// An interim (1xx) response, sent at once; the final response follows.
    func writeInterim(_ head: HTTPResponseHead) {
        guard let context else { return }
        var bytes = context.channel.allocator.buffer(capacity: 64)
        writer.writeHead(head, requestMethod: respondingTo, into: &bytes)
        context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
    }

    func writeResponseBody(_ buffer: ByteBuffer) {
        guard let context, writer.sendsBody else { return }
        if let size = writer.chunkPrefix(count: buffer.readableBytes, allocator: context.channel.allocator) {
            context.write(wrapOutboundOut(size), promise: nil)
            context.write(wrapOutboundOut(buffer), promise: nil)
            context.write(wrapOutboundOut(HTTPResponseWriter.chunkEnd), promise: nil)
        } else if buffer.readableBytes > 0 {
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
    }

    /// Ends the body (the last chunk, if chunked), flushes, and does what follows the response.
    private func writeEnd(trailers: HTTPHeaders?, context: ChannelHandlerContext) {
        finishWriting(writer.end(trailers: trailers, allocator: context.channel.allocator), context: context)
    }

    /// Writes the response's last bytes (if any) and flushes, then does what follows it. A promise
    /// is made only when something waits for the bytes to be written (a close after them).
    private func finishWriting(_ last: ByteBuffer?, context: ChannelHandlerContext) {
        let next = connection.responseFinished(now: .now())
        switch next {
        case .closeAfterWrite, .lingerAfterWrite:
            after(next, written: context.writeAndFlush(wrapOutboundOut(last ?? context.channel.allocator.buffer(capacity: 0))))
        case .awaitRequestEnd, .refuse, .nextRequest:
            if let last { context.write(wrapOutboundOut(last), promise: nil) }
            context.flush()
            after(next)
        }
    }

    func flush() {
        context?.flush()
    }

    /// The response is complete.
    func finishResponse(trailers: HTTPHeaders?) {
        guard let context else { return }
        if let exchange {
            exchangeEnded(status: access.status, complete: true)
            if access.status >= 400 { recordUpstreamError(status: access.status, model: exchange.requestModel) }
        }
        exchange = nil
        logAccess()
        writeEnd(trailers: trailers, context: context)
    }

    /// A whole response already in wire form (a cache hit): head and body as they are, in one
    /// flush. False (nothing written) when the connection is gone.
    func writePreparedResponse(status: Int, head: ByteBuffer, body: ByteBuffer) -> Bool {
        guard let context else { return false }
        access.status = status
        if exchange != nil { exchangeEnded(status: status, complete: true) }
        exchange = nil
        logAccess()
        context.write(wrapOutboundOut(head), promise: nil)
        finishWriting(body, context: context)
        return true
    }

    /// Something was already sent and the rest cannot be: end the connection so the client sees a
    /// truncated response (no fake end of stream).
    func abortResponse() {
        logAccess(outcome: "aborted")
        if exchange != nil { exchangeEnded(status: access.status, complete: false) }
        exchange = nil
        connection.responseAborted()
        queued.removeAll()
        // What was already written still goes out; then the connection ends.
        context?.flush()
        context?.close(promise: nil)
    }

    /// Answers the current request with `error`'s OpenAI-shaped body.
    func respondWithError(_ error: ProxyError, closeAfter: Bool, extraHeaders: [(String, String)] = []) {
        if exchange == nil { state.metrics.error(error.codeString) }  // the exchange counts its own
        recordError(error, model: exchange?.requestModel)
        if exchange != nil { exchangeEnded(status: error.status, complete: true) }
        exchange = nil
        if closeAfter { connection.closeAfterResponse() }
        let (head, body) = ErrorResponses.head(for: error, keepAlive: connection.keepAlive, extra: extraHeaders)
        writeLocal(head: head, body: body)
    }

    /// Refuses the current request and closes the connection once the answer is written. (A
    /// refused CONNECT's 405 keeps its body: only a 2xx answer to CONNECT has none.)
    func refuse(_ error: ProxyError) {
        respondWithError(error, closeAfter: true)
    }

    func respondLocally(status: HTTPResponseStatus, contentType: String, body: ByteBuffer, headOnly: Bool) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: contentType)
        headers.add(name: "content-length", value: String(body.readableBytes))
        if !keepAlive { headers.add(name: "connection", value: "close") }
        writeLocal(head: HTTPResponseHead(version: .http1_1, status: status, headers: headers), body: headOnly ? nil : body)
    }

    func writeLocal(head: HTTPResponseHead, body: ByteBuffer?) {
        guard let context else { return }
        access.status = Int(head.status.code)
        logAccess()
        writeResponseHead(head)
        if let body { writeResponseBody(body) }
        writeEnd(trailers: nil, context: context)
    }

    /// The current response is written: close if the request asked for it, else serve what was
    /// queued or wait for the next request.
    /// Does what follows the end of a response (or of a request answered before its end).
    func after(_ next: ClientConnectionStateMachine.AfterResponse, written: EventLoopFuture<Void>? = nil) {
        guard let context else { return }
        switch next {
        case .awaitRequestEnd:
            return
        case .refuse:
            // Bad bytes followed this request: their answer is next, and closes the connection.
            refuseWhenDue()
        case .closeAfterWrite:
            queued.removeAll()
            if let written {
                written.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            } else {
                context.close(promise: nil)
            }
        case .lingerAfterWrite:
            // The client may still be sending (a body we refused, or garbage): closing with
            // unread input makes the kernel send a RST that can destroy our answer before the
            // client reads it. Close our side only, drain theirs for a moment, then close.
            queued.removeAll()
            if let written {
                written.assumeIsolated().whenComplete { [self] _ in self.lingeringClose(context: context) }
            } else {
                lingeringClose(context: context)
            }
        case .nextRequest:
            requestCycleDone()
        }
    }

    /// Request and response are both done: take the next queued request, or go idle.
    func requestCycleDone() {
        connection.clearUpstreamPause()
        while connection.takeQueued() {
            handle(queued.removeFirst())
        }
        if connection.resumeReads() { context?.read() }
        switch connection.cycleDone(idleTimeout: runtime.clientIdleTimeout) {
        case .busy: return
        // The last request queued before bad bytes may now be current, its body never to come.
        case .refuse: refuseWhenDue()
        case .close: context?.close(promise: nil)
        case .armIdleCheck(let deadline): armIdleTimer(deadline: deadline)
        }
    }

    func lingeringClose(context: ChannelHandlerContext) {
        if connection.lingerStarted() {
            // The client had already finished sending: nothing to drain.
            context.close(promise: nil)
            return
        }
        context.close(mode: .output, promise: nil)
        context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(2)) {
            context.close(promise: nil)
        }
        context.read()
    }
}
