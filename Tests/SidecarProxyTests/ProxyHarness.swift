import Foundation
import Logging
import NIOCore
import NIOPosix
import SidecarCore
import SidecarProxy
import SidecarTestSupport
import XCTest

/// A real sidecar on 127.0.0.1:0 in front of a real FakeUpstream, for end-to-end tests.
final class ProxyHarness: @unchecked Sendable {
    let group: MultiThreadedEventLoopGroup
    let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let server: SidecarServer
    let port: Int
    /// This harness's own cache database (in a fresh temporary directory).
    let cachePath: String

    static let upstreamKey = "sk-upstream-secret-0123456789"

    init(upstreamURL: String, threads: Int = 2, cachePath: String? = nil, cacheClock: (@Sendable () -> Int64)? = nil,
         configure: (inout SidecarConfiguration) -> Void = { _ in },
         upstream: (inout SidecarConfiguration.Upstream) -> Void = { _ in }) async throws {
        var u: SidecarConfiguration.Upstream
        switch UpstreamURL.parse(upstreamURL) {
        case .success(let url): u = .init(name: "fake", url: url)
        case .failure(let p): throw ConfigurationError(problem: p.reason)
        }
        upstream(&u)
        var server = SidecarConfiguration.Server()
        server.listen = .tcp(host: "127.0.0.1", port: 0)
        server.defaultUpstream = "fake"
        server.threads = threads
        var config = SidecarConfiguration(server: server, upstreams: [u])
        config.cache.path = cachePath ?? Self.temporaryDirectory() + "/cache.sqlite3"
        self.cachePath = config.cache.path
        configure(&config)
        group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let keys = try APIKeys.resolve(config, environment: ["FAKE_KEY": Self.upstreamKey])
        self.server = try await SidecarServer.start(configuration: config, apiKeys: keys, group: group, logger: logger, cacheClock: cacheClock)
        self.port = self.server.localAddress?.port ?? 0
    }

    static func temporaryDirectory() -> String {
        let dir = NSTemporaryDirectory() + "llm-sidecar-test-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    func connection() async throws -> TestHTTPConnection {
        try await TestHTTPConnection.connect(port: port, group: clientGroup)
    }

    /// One request on a new connection.
    func request(_ method: String = "POST", _ path: String = "/v1/chat/completions", headers: [(String, String)] = [],
                 body: String? = #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
                 closeAfterParts: Int? = nil) async throws -> TestResponse {
        let c = try await connection()
        defer { Task { await c.close() } }
        return try await c.request(method, path, headers: headers + [("content-type", "application/json")], body: method == "GET" ? nil : body, closeAfterParts: closeAfterParts)
    }

    func stop() async {
        await server.shutdown(drainTimeout: .seconds(1))
        try? await group.shutdownGracefully()
        try? await clientGroup.shutdownGracefully()
    }
}

/// Polls `condition` every 20 ms for up to `seconds`.
func eventually(_ seconds: Double = 5, _ condition: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        try? await Task.sleep(nanoseconds: 20_000_000)
    }
    return condition()
}

/// Parses an OpenAI-shaped error body into (message, type, code), failing the test if it is not one.
func openAIError(_ body: String, file: StaticString = #filePath, line: UInt = #line) -> (message: String, type: String, code: String)? {
    guard let data = body.data(using: .utf8),
          let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
          let err = obj["error"] as? [String: Any],
          let message = err["message"] as? String, let type = err["type"] as? String, let code = err["code"] as? String else {
        XCTFail("not an OpenAI-shaped error: \(body)", file: file, line: line)
        return nil
    }
    return (message, type, code)
}

/// Runs `script` with the test venv's Python and `arguments`: its exit status, stdout and stderr.
func runPython(_ python: String, _ script: String, _ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: python)
    p.arguments = ["-c", script] + arguments
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    return (p.terminationStatus, output, errors)
}
