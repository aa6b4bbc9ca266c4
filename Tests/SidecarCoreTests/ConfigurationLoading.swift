import SidecarCore
import XCTest

/// A configuration test's two moves: load a TOML text (no files exist, no environment), and
/// check that one is refused with exactly this `file:line: key: problem`.
protocol ConfigurationLoading {}

extension ConfigurationLoading {
    func load(_ toml: String) throws(ConfigurationError) -> SidecarConfiguration {
        try SidecarConfiguration.load(toml: toml, file: "test.toml", environment: [:], fileExists: { _ in false })
    }

    func assertRefused(_ toml: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try load(toml)
            XCTFail("accepted", file: file, line: line)
        } catch {
            XCTAssertEqual(error.description, expected, file: file, line: line)
        }
    }
}
