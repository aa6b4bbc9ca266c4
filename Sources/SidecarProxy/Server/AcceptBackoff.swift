import Logging
import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the listener does when `accept` fails for want of a resource (descriptors, kernel
/// memory): it stops accepting for `delay`, and says so once per episode.
///
/// Without it a listener out of descriptors spins: the pending connection keeps the socket
/// readable, `accept4` fails with EMFILE at once, and the loop tries again, ~47,000 times a
/// second on one core (95% of it, measured), which also starves the requests that would free
/// descriptors. NIO's own `AcceptBackoffHandler` does not help here (NIO 2.101): it delays the
/// next `read()`, but a failed accept leaves the channel's read pending (only a successful accept
/// clears it), so no `read()` ever comes and the listener stays registered for readability. So we
/// turn `autoRead` off, which takes the listener out of epoll, and on again after `delay`.
enum AcceptBackoff {
    /// How long to stop accepting after a resource failure. 200 ms is 5 failed `accept4` calls a
    /// second while out of descriptors (nothing measurable), and a connection waits at most that
    /// long in the backlog (1,024) once descriptors free up. NIO's default, 1 s, is a long pause
    /// for a client when the shortage was a burst.
    static let delay: TimeAmount = .milliseconds(200)
}

/// One failed `accept`, by the errno NIO lets a server channel survive (any other error closes
/// the listener, see `ServerSocketChannel.shouldCloseOnReadError`).
struct AcceptFailure {
    /// The metric label: bounded to these five values.
    let reason: String
    /// Resource exhaustion (back off) rather than one client's aborted handshake (accept the next).
    let backsOff: Bool

    init(_ error: IOError) {
        switch error.errnoCode {
        case EMFILE: (reason, backsOff) = ("emfile", true)
        case ENFILE: (reason, backsOff) = ("enfile", true)
        case ENOBUFS: (reason, backsOff) = ("enobufs", true)
        case ENOMEM: (reason, backsOff) = ("enomem", true)
        case ECONNABORTED: (reason, backsOff) = ("econnaborted", false)
        default: (reason, backsOff) = ("other", true)
        }
    }
}

/// On the server channel: pauses accepting for `AcceptBackoff.delay` after a resource failure,
/// counts every failed `accept` (`llm_sidecar_accept_errors_total{reason}`) and logs an episode of
/// resource failures twice, a warning at the first failure and an info line with the count at the
/// first accept that works again, instead of a line per failure.
final class ListenerBackoffHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = Channel
    typealias InboundOut = Channel

    private let logger: Logger
    private let metrics: SidecarMetrics
    /// Failures in the current episode; 0 when accepting works.
    private var failures = 0
    private var episodeStart: NIODeadline?
    private var resume: Scheduled<Void>?

    init(logger: Logger, metrics: SidecarMetrics) {
        self.logger = logger
        self.metrics = metrics
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let io = error as? IOError else {
            context.fireErrorCaught(error)
            return
        }
        let failure = AcceptFailure(io)
        metrics.acceptError(failure.reason)
        guard failure.backsOff else { return }
        failures += 1
        if failures == 1 {
            episodeStart = .now()
            logger.warning("accepting connections failed: pausing accept and retrying", metadata: [
                "reason": "\(failure.reason)", "error": "\(io)", "retry-ms": "\(AcceptBackoff.delay.nanoseconds / 1_000_000)",
                "hint": "raise the descriptor limit (LimitNOFILE in the systemd unit) if the reason is emfile",
            ])
        }
        pause(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if failures > 0 {
            let ms = episodeStart.map { (NIODeadline.now() - $0).nanoseconds / 1_000_000 } ?? 0
            logger.info("accepting connections again", metadata: ["failures": "\(failures)", "paused-ms": "\(ms)"])
            failures = 0
            episodeStart = nil
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
    }

    /// Takes the listener out of the poll set until the delay is over, then accepts again.
    private func pause(_ context: ChannelHandlerContext) {
        guard resume == nil, let options = context.channel.syncOptions else { return }
        try? options.setOption(.autoRead, value: false)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        resume = context.eventLoop.scheduleTask(in: AcceptBackoff.delay) {
            let (handler, context) = loopBound.value
            handler.resume = nil
            guard context.channel.isActive else { return }
            try? context.channel.syncOptions?.setOption(.autoRead, value: true)
        }
    }
}
