import Dispatch
import Foundation
import Logging
import NIOCore
import NIOPosix
import SidecarCore

/// Runs the daemon until SIGTERM or SIGINT: start the server, log where it listens, then on the
/// first signal stop gracefully (drain up to `server.drain_timeout`) and on a second exit at once.
public enum SidecarApplication {
    /// - Parameter reloadConfiguration: reads the configuration again (file plus command-line
    ///   overrides) for SIGHUP; nil when there is no file, and a reload is then refused.
    public static func run(
        configuration: SidecarConfiguration, environment: [String: String], logger: Logger,
        reloadConfiguration: (@Sendable () throws -> SidecarConfiguration)? = nil
    ) async throws {
        let keys = try APIKeys.resolve(configuration, environment: environment)
        // Signals first: a supervisor may send TERM the moment it sees the listener or READY=1,
        // and a signal that arrives before its handler exists would be lost.
        let stop = AsyncStream<Int32>.makeStream()
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        let signalQueue = DispatchQueue(label: "llm-sidecar.signals")
        var sources: [DispatchSourceSignal] = []
        let received = SignalCounter()
        signal(SIGHUP, SIG_IGN)
        for sig in [SIGTERM, SIGINT, SIGHUP] {
            let source = DispatchSource.makeSignalSource(signal: sig, queue: signalQueue)
            source.setEventHandler {
                if sig != SIGHUP, received.increment() > 1 {
                    logger.warning("second signal: exiting now")
                    LogSink.standardError.flush()
                    exit(1)
                }
                stop.continuation.yield(sig)
            }
            source.resume()
            sources.append(source)
        }
        let threads = configuration.server.threads ?? CPUAllowanceReader.defaultThreads()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let notifier = SystemdNotifier(environment: environment)
        let inherited = SystemdNotifier.inheritedListener(environment: environment)
        let server: SidecarServer
        do {
            server = try await SidecarServer.start(
                configuration: configuration, apiKeys: keys, group: group, logger: logger, inheritedListener: inherited)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        logger.info("listening", metadata: [
            "address": "\(server.localAddress.map(Self.describe) ?? configuration.server.listen.description)",
            "threads": "\(threads)",
            "upstreams": "\(configuration.upstreams.map { "\($0.name)=\($0.url)" }.joined(separator: ","))",
        ])

        warnUnpriced(configuration, logger: logger)
        let address = server.localAddress.map(Self.describe) ?? configuration.server.listen.description
        notifier.ready(status: "serving on \(address)")
        let housekeeping = Task {
            // STATUS= with live figures every 5 s, WATCHDOG=1 at half of WatchdogSec.
            var sinceStatus = Duration.zero
            let tick = notifier.watchdogInterval.map { min($0, .seconds(5)) } ?? .seconds(5)
            while !Task.isCancelled {
                try? await Task.sleep(for: tick)
                if notifier.watchdogInterval != nil { notifier.watchdog() }
                sinceStatus += tick
                if sinceStatus >= .seconds(5) {
                    sinceStatus = .zero
                    notifier.status("serving on \(address): \(server.requestsInFlight) in flight, \(server.requestsTotal) served")
                }
            }
        }

        for await sig in stop.stream {
            if sig == SIGHUP {
                notifier.reloading()
                do {
                    guard let reloadConfiguration else {
                        throw SidecarServer.ReloadRefused(description: "started without a configuration file; nothing to reload")
                    }
                    let next = try reloadConfiguration()
                    try server.reload(configuration: next, apiKeys: try APIKeys.resolve(next, environment: environment))
                    warnUnpriced(next, logger: logger)
                    notifier.ready(status: "serving on \(address) (reloaded)")
                } catch {
                    logger.error("reload refused; the previous configuration keeps serving", metadata: ["reason": "\(error)"])
                    notifier.ready(status: "serving on \(address); last reload refused: \(error)")
                }
                continue
            }
            logger.info("stopping", metadata: ["signal": "\(sig == SIGTERM ? "TERM" : "INT")", "in-flight": "\(server.requestsInFlight)"])
            break
        }
        notifier.stopping()
        housekeeping.cancel()
        await server.shutdown(drainTimeout: configuration.server.drainTimeout)
        try? await group.shutdownGracefully()
        sources.forEach { $0.cancel() }
        logger.info("stopped")
        LogSink.standardError.flush()
    }
}

extension SidecarApplication {
    /// One warning per deployment model without a price while a budget is set.
    static func warnUnpriced(_ configuration: SidecarConfiguration, logger: Logger) {
        for model in configuration.unpricedModelsUnderBudget {
            logger.warning("model has no price while [budgets] is set", metadata: [
                "model": "\(model)", "fix": "add [prices.\"\(model)\"]",
                "budgets.unpriced": "\(configuration.budgets.unpriced.rawValue)",
            ])
        }
    }

    static func describe(_ address: SocketAddress) -> String {
        switch address {
        case .v4: return "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        case .v6: return "[\(address.ipAddress ?? "?")]:\(address.port ?? 0)"
        case .unixDomainSocket: return "unix:\(address.pathname ?? "?")"
        }
    }
}

private final class SignalCounter: @unchecked Sendable {
    private var count = 0
    // Only touched on the serial signal queue.
    func increment() -> Int {
        count += 1
        return count
    }
}
