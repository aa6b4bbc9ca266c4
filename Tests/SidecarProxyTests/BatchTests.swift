import Foundation
import SidecarCore
import SidecarTestSupport
import XCTest

/// `llm-sidecar batch` through the real binary against a real sidecar.
final class BatchTests: XCTestCase {
    func testAThousandLinesWithFiveMalformedInterruptedAndResumed() async throws {
        let upstream = try await FakeUpstream.start()
        defer { Task { await upstream.stop() } }
        upstream.extraDelayMs.withLockedValue { $0 = 20 }
        let harness = try await ProxyHarness(upstreamURL: upstream.url)
        defer { Task { await harness.stop() } }

        let dir = ProxyHarness.temporaryDirectory()
        let input = dir + "/input.jsonl", output = dir + "/output.jsonl"
        var lines: [String] = []
        var valid: Set<String> = []
        let malformedAt: [Int: String] = [
            10: "{not json",
            200: #"{"method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini"}}"#,
            400: #"{"custom_id":"x400","method":"POST","url":"https://elsewhere.example/v1/chat","body":{}}"#,
            600: #"{"custom_id":"x600","method":"POST","url":"/v1/chat/completions"}"#,
            800: #"{"custom_id":"req-1","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[]}}"#,
        ]
        for n in 1...1_000 {
            if let bad = malformedAt[n] { lines.append(bad); continue }
            let id = "req-\(n)"
            valid.insert(id)
            lines.append(#"{"custom_id":"\#(id)","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"question \#(n)"}]}}"#)
        }
        try lines.joined(separator: "\n").write(toFile: input, atomically: true, encoding: .utf8)
        let args = ["batch", input, "-o", output, "--url", "http://127.0.0.1:\(harness.port)", "--concurrency", "8"]

        // First run, killed part way through.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: BinaryTests.binary)
        p.arguments = args
        p.environment = ["PATH": "/usr/bin:/bin"]
        p.standardError = FileHandle.nullDevice
        try p.run()
        let written = { (try? String(contentsOfFile: output, encoding: .utf8))?.split(separator: "\n").count ?? 0 }
        let reached = await eventually(20) { written() >= 150 }
        XCTAssertTrue(reached)
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        let partial = written()
        XCTAssertLessThan(partial, 995, "interrupted before the end")

        // Second run: resumes, finishes, reports the malformed lines by number, exits non-zero.
        let r = try BinaryTests.run(args)
        XCTAssertEqual(r.status, 1, "malformed lines make the run fail: \(r.stderr)")
        for n in malformedAt.keys.sorted() { XCTAssertTrue(r.stderr.contains("input.jsonl:\(n): skipped"), "line \(n): \(r.stderr)") }
        XCTAssertTrue(r.stderr.contains("already done"), r.stderr)
        XCTAssertTrue(r.stderr.contains("5 malformed lines"), r.stderr)

        let text = try String(contentsOfFile: output, encoding: .utf8)
        var ids: [String] = []
        for line in text.split(separator: "\n") {
            let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], String(line))
            ids.append(try XCTUnwrap(o["custom_id"] as? String))
            XCTAssertTrue((o["id"] as? String)?.hasPrefix("batch_req_") ?? false)
            let response = try XCTUnwrap(o["response"] as? [String: Any])
            XCTAssertEqual(response["status_code"] as? Int, 200)
            XCTAssertEqual(((response["body"] as? [String: Any])?["object"] as? String), "chat.completion")
            XCTAssertTrue(o["error"] is NSNull)
        }
        XCTAssertEqual(ids.count, 995, "exactly one output line per valid input line")
        XCTAssertEqual(Set(ids), valid)
    }

    func testNoSidecarMeansAClearErrorAndNothingWritten() throws {
        let dir = ProxyHarness.temporaryDirectory()
        try #"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#.write(toFile: dir + "/in.jsonl", atomically: true, encoding: .utf8)
        let r = try BinaryTests.run(["batch", dir + "/in.jsonl", "-o", dir + "/out.jsonl", "--url", "http://127.0.0.1:1"])
        XCTAssertEqual(r.status, 69)
        XCTAssertEqual(r.stderr, "llm-sidecar: cannot connect to the sidecar at http://127.0.0.1:1: connection refused; start it (llm-sidecar serve, or make run) or pass --url\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.jsonl"), "a later run must not skip lines that were never sent")
    }
}
