// make bench-framing: nanoseconds per head scan of a typical chat-completions request (18 field
// lines, as the official Python client sends them), built with swiftc -O together with
// Sources/SidecarCore/HTTP/Framing (no SwiftPM, no NIO). Not a test: no thresholds.

let head = """
POST /v1/chat/completions HTTP/1.1\r
Host: api.openai.com\r
Accept-Encoding: gzip, deflate\r
Connection: keep-alive\r
Accept: application/json\r
Content-Type: application/json\r
User-Agent: OpenAI/Python 1.109.1\r
X-Stainless-Lang: python\r
X-Stainless-Package-Version: 1.109.1\r
X-Stainless-OS: Linux\r
X-Stainless-Arch: x64\r
X-Stainless-Runtime: CPython\r
X-Stainless-Runtime-Version: 3.12.3\r
Authorization: Bearer sk-proj-0123456789abcdefghijklmnopqrstuvwxyz\r
X-Stainless-Async: false\r
x-stainless-retry-count: 0\r
x-stainless-read-timeout: 600\r
x-sidecar-cache-ttl: 3600\r
Content-Length: 98\r
\r

"""

@inline(never)
func blackHole(_ x: Int) {
    if x == -1 { print("unreachable") }
}

/// Best of `rounds` rounds of `iterations` calls, in ns per call.
func measure(_ name: String, iterations: Int = 200_000, rounds: Int = 7, _ body: () -> Int) {
    let clock = ContinuousClock()
    var best = Double.infinity
    for _ in 0..<rounds {
        var sink = 0
        let elapsed = clock.measure {
            for _ in 0..<iterations { sink &+= body() }
        }
        blackHole(sink)
        let ns = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
        best = min(best, ns / Double(iterations))
    }
    let tenths = Int(best * 10 + 0.5)
    print("\(name): \(tenths / 10).\(tenths % 10) ns")
}

@main
struct FramingBench {
    static func main() {
        let bytes = Array(head.utf8)
        var rewrite = HTTPHeadRewrite()
        rewrite.replace(HTTPFieldName("Host")!, with: HTTPFieldValue("example.openai.azure.com")!)
        rewrite.replace(HTTPFieldName("Authorization")!, with: HTTPFieldValue("Bearer sk-upstream")!)
        rewrite.dropsSidecarFields = true
        var output = [UInt8](repeating: 0, count: rewrite.maximumLength(headLength: bytes.count))
        bytes.withUnsafeBytes { b in
            let half = UnsafeRawBufferPointer(rebasing: b[0..<(b.count / 2)])
            print("head: \(b.count) bytes, 18 fields")
            measure("scan, whole head") {
                var scanner = HTTPRequestHeadScanner()
                return (try? scanner.scan(b))??.length ?? 0
            }
            measure("scan, head in two reads") {
                var scanner = HTTPRequestHeadScanner()
                _ = try? scanner.scan(half)
                return (try? scanner.scan(b))??.length ?? 0
            }
            var scanner = HTTPRequestHeadScanner()
            let scanned = (try? scanner.scan(b))!!
            output.withUnsafeMutableBytes { out in
                measure("rewrite (Host, Authorization, drop hop-by-hop and x-sidecar-*)") {
                    HTTPHeadRewriter.rewrite(b, request: scanned, rewrite, into: out)
                }
            }
        }
    }
}
