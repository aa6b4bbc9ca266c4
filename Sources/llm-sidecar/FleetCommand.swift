import ArgumentParser
import Foundation
import SidecarCore
import SidecarProxy

/// `llm-sidecar fleet status`: connects to the `[fleet]` database and shows the nodes and the
/// budgets' slices (docs/fleet.md).
struct FleetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet", abstract: "The fleet sharing this configuration's [fleet] database.", subcommands: [FleetStatus.self])
}

struct FleetStatus: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Nodes (last heartbeat, outbox) and budget slices per node.")

    @OptionGroup var configOption: ConfigOption

    @Flag(name: .long, help: "JSON instead of a table.")
    var json = false

    func run() async throws {
        let configuration = try await fleetConfiguration(configOption)
        let text = try await reportingErrorsAsync { try await FleetReport.status(configuration, json: json) }
        print(text, terminator: "")
    }
}
