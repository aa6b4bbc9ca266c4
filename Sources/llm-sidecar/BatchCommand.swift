import ArgumentParser
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import SidecarCore
import SidecarProxy

/// `llm-sidecar batch INPUT.jsonl -o OUTPUT.jsonl`: an OpenAI Batch API file pushed through a
/// running sidecar. Finished requests are cache hits the second time, so an interrupted run resumes
/// for free: lines whose `custom_id` is already in the output are skipped.
struct Batch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send an OpenAI Batch API input file through a running sidecar; write Batch API output lines (resumable).")

    @Argument(help: "Input: one request per line (custom_id, method, url, body).")
    var input: String

    @Option(name: [.short, .long], help: "Output file; lines already in it are skipped (resume).")
    var output: String

    @Option(name: .long, help: "The sidecar: http://HOST:PORT or unix:/PATH (default: the configured listener).")
    var url: String?

    @Option(name: .long, help: "Requests in flight at once (default 8).")
    var concurrency = 8

    @OptionGroup var configOption: ConfigOption

    func validate() throws {
        guard (1...1024).contains(concurrency) else { throw ValidationError("--concurrency must be between 1 and 1024") }
    }

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let (configPath, explicit) = configOption.path(environment: environment)
        var configuration: SidecarConfiguration?
        if explicit || FileManager.default.fileExists(atPath: configPath) {
            do { configuration = try ConfigOption.load(path: configPath, environment: environment, checkSecrets: false) } catch {
                FileHandle.standardError.write(Data("llm-sidecar: \(error)\n".utf8))
                throw ExitCode(78)
            }
        }
        let target: LocalHTTPClient.Target
        do { target = try Self.target(url, listen: configuration?.server.listen) } catch {
            FileHandle.standardError.write(Data("llm-sidecar: \(error)\n".utf8))
            throw ExitCode(64)
        }
        guard let inputData = FileManager.default.contents(atPath: input) else {
            FileHandle.standardError.write(Data("llm-sidecar: cannot read \(input)\n".utf8))
            throw ExitCode(66)
        }

        // Nothing is sent (or written) when the sidecar is not there at all.
        let probeGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let probe = LocalHTTPClient(target: target, group: probeGroup)
        do {
            _ = try await probe.request(method: .GET, path: "/healthz", body: nil, timeout: .seconds(10))
            await probe.close()
            try? await probeGroup.shutdownGracefully()
        } catch {
            await probe.close()
            try? await probeGroup.shutdownGracefully()
            FileHandle.standardError.write(Data("llm-sidecar: \(error); start it (llm-sidecar serve, or make run) or pass --url\n".utf8))
            throw ExitCode(69)  // EX_UNAVAILABLE
        }

        // Resume: what the output already has (a partial last line is cut off and redone).
        let existing = FileManager.default.contents(atPath: output).map { Array($0) } ?? []
        let (done, validLength) = BatchFormat.completed(in: existing)
        if !FileManager.default.fileExists(atPath: output) { _ = FileManager.default.createFile(atPath: output, contents: nil) }
        guard let out = FileHandle(forUpdatingAtPath: output) else {
            FileHandle.standardError.write(Data("llm-sidecar: cannot write \(output)\n".utf8))
            throw ExitCode(73)
        }
        try out.truncate(atOffset: UInt64(validLength))
        try out.seekToEnd()

        // Parse every line first: malformed ones are reported by number and do not stop the run.
        var requests: [BatchFormat.Request] = []
        var malformed: [(line: Int, reason: String)] = []
        var seen: Set<String> = []
        for (n, line) in String(decoding: inputData, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            switch BatchFormat.parse(line) {
            case .failure(let e): malformed.append((n + 1, e.reason))
            case .success(let r):
                guard seen.insert(r.customID).inserted else { malformed.append((n + 1, "custom_id \"\(r.customID)\" is used twice")); continue }
                if !done.contains(r.customID) { requests.append(r) }
            }
        }
        for m in malformed { FileHandle.standardError.write(Data("\(input):\(m.line): skipped: \(m.reason)\n".utf8)) }

        let progress = BatchProgress(total: requests.count, skipped: done.count, prices: configuration?.priceTable ?? PriceTable(),
                                     tty: isatty(STDERR_FILENO) == 1)
        let writer = NIOLockedValueBox(out)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let next = NIOLockedValueBox(0)
        let all = requests
        let auth = environment["OPENAI_API_KEY"].map { [("authorization", "Bearer \($0)")] } ?? []
        let ticker = Task { while !Task.isCancelled { progress.draw(); try? await Task.sleep(nanoseconds: progress.tty ? 200_000_000 : 5_000_000_000) } }
        await withTaskGroup(of: Void.self) { tasks in
            for _ in 0..<min(concurrency, max(all.count, 1)) {
                tasks.addTask {
                    let client = LocalHTTPClient(target: target, group: group)
                    while true {
                        let i = next.withLockedValue { n -> Int in defer { n += 1 }; return n }
                        guard i < all.count else { break }
                        let r = all[i]
                        let line: String
                        do {
                            let response = try await client.request(
                                method: HTTPMethod(rawValue: r.method), path: r.url,
                                headers: auth + [("content-type", "application/json")], body: r.body)
                            line = BatchFormat.outputLine(
                                customID: r.customID, status: response.status,
                                requestID: response.headers.first(name: "x-request-id"), body: response.body, error: nil)
                            progress.record(status: response.status, cache: response.headers.first(name: "x-sidecar-cache"),
                                            request: r, response: response.body)
                        } catch {
                            line = BatchFormat.outputLine(customID: r.customID, status: nil, requestID: nil, body: nil,
                                                          error: ("request_failed", "\(error)"))
                            progress.record(status: nil, cache: nil, request: r, response: [])
                            await client.close()
                        }
                        // One write per line, so an interrupted run leaves whole lines (or one partial last line).
                        writer.withLockedValue { $0.write(Data(line.utf8)) }
                    }
                    await client.close()
                }
            }
        }
        ticker.cancel()
        try? out.close()
        try? await group.shutdownGracefully()
        progress.finish()
        let failed = progress.failed
        let summary = "\(progress.summary); \(malformed.count) malformed line\(malformed.count == 1 ? "" : "s"); output: \(output)\n"
        FileHandle.standardError.write(Data(summary.utf8))
        if failed > 0 || !malformed.isEmpty { throw ExitCode(1) }
    }

    static func target(_ url: String?, listen: ListenAddress?) throws -> LocalHTTPClient.Target {
        if let url {
            if url.hasPrefix("unix:") { return .unix(path: String(url.dropFirst(5))) }
            guard case .success(let u) = UpstreamURL.parse(url), !u.tls else {
                throw CommandError("--url \"\(url)\" is not http://HOST:PORT or unix:/PATH (the sidecar listens on plain HTTP)")
            }
            return .tcp(host: u.host, port: u.port)
        }
        switch listen ?? .tcp(host: "127.0.0.1", port: 8080) {
        case .unix(let path): return .unix(path: path)
        case .tcp(let host, let port): return .tcp(host: host == "0.0.0.0" || host == "::" ? "127.0.0.1" : host, port: port)
        }
    }
}

/// Counts, rate, ETA, cache hits, errors and cost, drawn as a bar on a terminal and as plain
/// lines otherwise.
final class BatchProgress: @unchecked Sendable {
    private let lock = NSLock()
    let total: Int
    let skipped: Int
    let tty: Bool
    private let prices: PriceTable
    private let started = Date()
    private var done = 0
    private(set) var failed = 0
    private var hits = 0
    private var cost = 0.0

    init(total: Int, skipped: Int, prices: PriceTable, tty: Bool) {
        self.total = total
        self.skipped = skipped
        self.prices = prices
        self.tty = tty
    }

    func record(status: Int?, cache: String?, request: BatchFormat.Request, response: [UInt8]) {
        let usage = (status.map { (200..<300).contains($0) } ?? false) ? ResponseInspector.usage(body: response, isStream: false) : nil
        let model = request.body.flatMap { ModelSniffer.model(in: $0) } ?? ""
        lock.lock()
        defer { lock.unlock() }
        done += 1
        if status.map({ !(200..<300).contains($0) }) ?? true { failed += 1 }
        if cache == "hit" || cache == "coalesced" {
            hits += 1
        } else if let usage {
            cost += prices.cost(model: model, promptTokens: usage.promptTokens, completionTokens: usage.completionTokens)
        }
    }

    private var line: String {
        lock.lock()
        defer { lock.unlock() }
        let elapsed = max(Date().timeIntervalSince(started), 0.001)
        let rate = Double(done) / elapsed
        let eta = rate > 0 ? Int(Double(total - done) / rate) : 0
        let width = 24
        let filled = total == 0 ? width : done * width / total
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        return String(format: "[%@] %d/%d  %.1f/s  ETA %ds  cache hits %d  errors %d  $%.4f", bar, done, total, rate, eta, hits, failed, cost)
    }

    func draw() {
        FileHandle.standardError.write(Data((tty ? "\r\u{1B}[K" + line : line + "\n").utf8))
    }

    func finish() {
        draw()
        if tty { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    var summary: String {
        lock.lock()
        defer { lock.unlock() }
        return "batch: \(done) sent (\(done - failed) ok, \(failed) failed, \(hits) from cache), \(skipped) already done, cost $\(String(format: "%.4f", cost))"
    }
}
