import ArgumentParser
import Foundation
import Logging
import SidecarCore
import SidecarProxy

/// The version printed by `llm-sidecar version`.
let sidecarVersion = SidecarServer.version

@main
struct LLMSidecar: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llm-sidecar",
        abstract: "A local sidecar that makes an app's OpenAI-compatible API calls cheaper, faster and sturdier.",
        subcommands: [Serve.self, CheckConfig.self, Stats.self, SpendCommand.self, Cache.self, FleetCommand.self, Batch.self, Version.self],
        defaultSubcommand: Serve.self)
}

/// Where the configuration comes from: `--config`, else `$LLM_SIDECAR_CONFIG`, else
/// `/etc/llm-sidecar/config.toml`.
struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Configuration file (default: $LLM_SIDECAR_CONFIG, then /etc/llm-sidecar/config.toml).")
    var config: String?

    func path(environment: [String: String]) -> (path: String, explicit: Bool) {
        if let config { return (config, true) }
        if let env = environment["LLM_SIDECAR_CONFIG"], !env.isEmpty { return (env, true) }
        return ("/etc/llm-sidecar/config.toml", false)
    }

    static func load(path: String, environment: [String: String], checkSecrets: Bool = true) throws(ConfigurationError) -> SidecarConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(file: path, problem: "cannot read the file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigurationError(file: path, problem: "is not UTF-8 text")
        }
        return try SidecarConfiguration.load(
            toml: text, file: path, environment: environment,
            fileExists: { FileManager.default.isReadableFile(atPath: $0) }, checkSecrets: checkSecrets)
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the proxy (the default command).")

    @OptionGroup var configOption: ConfigOption

    @Option(name: .long, help: "Listen on HOST:PORT or unix:/PATH (overrides server.listen).")
    var listen: String?

    @Option(name: .long, help: "Forward to this upstream URL with no configuration file, e.g. https://api.openai.com.")
    var upstream: String?

    @Option(name: .long, help: "Event-loop threads (overrides server.threads; default: the CPUs this process may use, by affinity mask and cgroup quota).")
    var threads: Int?

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        let configuration: SidecarConfiguration
        do {
            configuration = try resolveConfiguration(environment: environment)
        } catch {
            FileHandle.standardError.write(Data("llm-sidecar: \(error)\n".utf8))
            throw ExitCode(78)  // EX_CONFIG
        }
        let level = Logger.Level(rawValue: configuration.log.level) ?? .info
        let format = configuration.log.format
        LoggingSystem.bootstrap { label in SidecarLogHandler(label: label, level: level, format: format) }
        defer { LogSink.standardError.flush() }
        let logger = Logger(label: "llm-sidecar")
        do {
            let (path, explicit) = configOption.path(environment: environment)
            let fromFile = explicit || upstream == nil
            let command = self
            try await SidecarApplication.run(
                configuration: configuration, environment: environment, logger: logger,
                reloadConfiguration: fromFile ? { @Sendable in
                    var next = try ConfigOption.load(path: path, environment: environment)
                    command.applyOverrides(&next)
                    return next
                } : nil)
        } catch let error as ConfigurationError {
            logger.critical("configuration refused", metadata: ["reason": "\(error)"])
            throw ExitCode(78)
        } catch {
            logger.critical("cannot start", metadata: ["reason": "\(error)"])
            throw ExitCode(1)
        }
    }

    /// The command-line flags that override the file, applied at start and on every reload.
    func applyOverrides(_ configuration: inout SidecarConfiguration) {
        if let listen, let parsed = ListenAddress.parse(listen) { configuration.server.listen = parsed }
        if let threads { configuration.server.threads = threads }
    }

    private func resolveConfiguration(environment: [String: String]) throws -> SidecarConfiguration {
        let listenAddress: ListenAddress?
        if let listen {
            guard let parsed = ListenAddress.parse(listen) else {
                throw ConfigurationError(key: "--listen", problem: "\"\(listen)\" is not HOST:PORT or unix:/ABSOLUTE/PATH")
            }
            listenAddress = parsed
        } else {
            listenAddress = nil
        }
        let (path, explicit) = configOption.path(environment: environment)
        if let upstream, !explicit {
            switch UpstreamURL.parse(upstream) {
            case .success(let url):
                var configuration = SidecarConfiguration.zeroConfig(listen: listenAddress, upstream: url, environment: environment)
                applyOverrides(&configuration)
                return configuration
            case .failure(let problem):
                throw ConfigurationError(key: "--upstream", problem: "\"\(upstream)\" \(problem.reason)")
            }
        }
        if !explicit, !FileManager.default.fileExists(atPath: path) {
            throw ConfigurationError(file: path, problem: "no configuration file; pass --config PATH or --upstream URL")
        }
        var configuration = try ConfigOption.load(path: path, environment: environment)
        applyOverrides(&configuration)
        if upstream != nil {
            throw ConfigurationError(key: "--upstream", problem: "cannot be combined with a configuration file; set [upstreams.NAME] url instead")
        }
        return configuration
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config", abstract: "Validate a configuration file and exit non-zero with the problem if it is invalid.")

    @OptionGroup var configOption: ConfigOption

    func run() throws {
        let environment = ProcessInfo.processInfo.environment
        let (path, _) = configOption.path(environment: environment)
        do {
            let configuration = try ConfigOption.load(path: path, environment: environment)
            _ = try APIKeys.resolve(configuration, environment: environment)
            for model in configuration.unpricedModelsUnderBudget {
                FileHandle.standardError.write(Data("warning: model \"\(model)\" has no price while [budgets] is set: add [prices.\"\(model)\"] (requests for it are \(configuration.budgets.unpriced == .allow ? "sent and counted as $0" : "refused with 400 model_not_priced"), budgets.unpriced = \"\(configuration.budgets.unpriced.rawValue)\")\n".utf8))
            }
            print("\(path): OK (\(configuration.upstreams.count) upstream\(configuration.upstreams.count == 1 ? "" : "s"), listening on \(configuration.server.listen))")
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(78)
        }
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version.")
    func run() { print("llm-sidecar \(sidecarVersion)") }
}
