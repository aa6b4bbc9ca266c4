import Foundation
import Logging
import NIOConcurrencyHelpers
import SidecarCore

/// Log lines for the journal: `ts=… level=info msg=request method=POST …` (logfmt) or one JSON
/// object per line. Messages are static; data goes in metadata. Lines are buffered and written
/// every 200 ms (or at 64 KiB), so an access line per request does not cost a system call each.
public struct SidecarLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let label: String
    private let format: SidecarConfiguration.Log.Format
    private let sink: LogSink

    public init(label: String, level: Logger.Level, format: SidecarConfiguration.Log.Format, sink: LogSink = .standardError) {
        self.label = label
        self.logLevel = level
        self.format = format
        self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = self.metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        let ts = Self.timestamp()
        var line = ""
        switch format {
        case .logfmt:
            line = "ts=\(ts) level=\(event.level) msg=\(Self.logfmtValue(event.message.description))"
            for (k, v) in all.sorted(by: { $0.key < $1.key }) {
                line += " \(k)=\(Self.logfmtValue(v.description))"
            }
        case .json:
            line = #"{"ts":"\#(ts)","level":"\#(event.level)","msg":"#
            JSONString.append(event.message.description, to: &line)
            for (k, v) in all.sorted(by: { $0.key < $1.key }) {
                line += ","
                JSONString.append(k, to: &line)
                line += ":"
                JSONString.append(v.description, to: &line)
            }
            line += "}"
        }
        line += "\n"
        sink.write(line, urgent: event.level >= .warning)
    }

    static func logfmtValue(_ s: String) -> String {
        if !s.isEmpty, s.utf8.allSatisfy({ $0 > 0x20 && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "=") && $0 != 0x7F }) { return s }
        var out = ""
        JSONString.append(s, to: &out)  // a quoted, escaped string
        return out
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tm = tm()
        var t = ts.tv_sec
        gmtime_r(&t, &tm)
        let ms = ts.tv_nsec / 1_000_000
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms)
    }
}

/// A buffered writer to a file descriptor, shared by every logger.
public final class LogSink: Sendable {
    public static let standardError = LogSink(fd: 2)
    private let fd: Int32
    private let buffer = NIOLockedValueBox<[UInt8]>([])
    private let flusher = NIOLockedValueBox<Bool>(false)

    public init(fd: Int32) { self.fd = fd }

    func write(_ line: String, urgent: Bool) {
        let pending = buffer.withLockedValue { b -> [UInt8]? in
            b.append(contentsOf: line.utf8)
            if urgent || b.count >= 64 * 1024 {
                let out = b
                b.removeAll(keepingCapacity: true)
                return out
            }
            return nil
        }
        if let pending { writeAll(pending) } else { startFlusher() }
    }

    /// Writes out whatever is buffered.
    public func flush() {
        let pending = buffer.withLockedValue { b -> [UInt8] in
            let out = b
            b.removeAll(keepingCapacity: true)
            return out
        }
        if !pending.isEmpty { writeAll(pending) }
    }

    private func startFlusher() {
        let start = flusher.withLockedValue { running -> Bool in
            if running { return false }
            running = true
            return true
        }
        guard start else { return }
        let thread = Thread { [self] in
            while true {
                Thread.sleep(forTimeInterval: 0.2)
                self.flush()
            }
        }
        thread.name = "llm-sidecar-log"
        thread.start()
    }

    private func writeAll(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n <= 0 { if errno == EINTR { continue } else { return } }
                offset += n
            }
        }
    }
}
