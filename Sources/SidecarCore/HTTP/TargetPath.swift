/// The request target's path with its dot segments removed (RFC 3986 §5.2.4), and whether it
/// stays under a prefix the sidecar forwards (`/v1`, `/v1beta`, `/openai`: `APIDialect`).
///
/// The sidecar forwards the path it is given, with the upstream's key attached, after the
/// upstream URL's own path. Dot segments there are a way out: `/v1/../metrics` is the sidecar's
/// own admin endpoint to an upstream that normalises it, and `/v1/../../other` with an upstream
/// at `https://host/openai` is `https://host/other`. So a target with dot segments is resolved
/// here first: inside `/v1` it is forwarded in its resolved form, outside it is refused.
///
/// What counts as a dot segment is decided the way the most lenient upstream would decide it:
/// a segment is `.` or `..` also when its dots are percent-encoded (`%2e`, `%2E`), segments are
/// separated also by percent-encoded slashes (`%2f`, `%2F`) and backslashes (`\`, which several
/// servers and every WHATWG URL parser treat as `/`), and a segment's path parameters do not hide
/// it (`..;x` is `..`, as Tomcat and Jetty read it). Only the `?` starts the query, which is kept as sent;
/// a `#` is part of the path here (a target has no fragment, RFC 9112 §3.2), so nothing can hide behind one.
public enum TargetPath {
    public enum Verdict: Equatable, Sendable {
        /// No dot segments: the target exactly as the client sent it (routing decides the rest).
        case unchanged
        /// Dot segments resolved and the result is under a forwarded prefix: forward this target
        /// (the resolved path, then the query exactly as sent).
        case normalised(String)
        /// Dot segments resolved and the result is outside every forwarded prefix: refuse. The resolved path, for the message.
        case escapes(String)
    }

    private static let slash = UInt8(ascii: "/")
    private static let backslash = UInt8(ascii: "\\")
    private static let percent = UInt8(ascii: "%")
    private static let dot = UInt8(ascii: ".")
    private static let semicolon = UInt8(ascii: ";")
    private static let question = UInt8(ascii: "?")

    /// Resolves `target` (an origin-form request target, `/path?query`). Targets of other forms
    /// (`*`, `host:port`, `http://...`) are `unchanged`: they do not start with `/`, so routing
    /// never forwards them.
    public static func check(_ target: String) -> Verdict {
        // Most targets: no `.` and no `%` before the query, so no segment can be a dot segment.
        var target = target
        let plain = target.withUTF8 { p in
            for b in p {
                if b == question { return true }
                if b == dot || b == percent { return false }
            }
            return true
        }
        if plain { return .unchanged }
        let bytes = Array(target.utf8)
        guard bytes.first == slash else { return .unchanged }
        let end = bytes.firstIndex(of: question) ?? bytes.endIndex
        // Segments between separators: `/`, `\`, `%2f`, `%2F`. The first starts after the leading `/`.
        var segments: [ArraySlice<UInt8>] = []
        var start = 1
        var i = 1
        while i < end {
            let width = separatorWidth(bytes, at: i, end: end)
            if width > 0 {
                segments.append(bytes[start..<i])
                i += width
                start = i
            } else {
                i += 1
            }
        }
        segments.append(bytes[start..<end])
        guard segments.contains(where: { dots(in: $0) != nil }) else { return .unchanged }

        // remove_dot_segments over the segment list: `.` is dropped, `..` drops the segment before
        // it (none at the root); a dot segment at the end leaves a trailing `/` ("/a/b/.." is "/a/").
        var kept: [ArraySlice<UInt8>] = []
        var trailingSlash = false
        for segment in segments {
            switch dots(in: segment) {
            case 1:
                trailingSlash = true
            case 2:
                if !kept.isEmpty { kept.removeLast() }
                trailingSlash = true
            default:
                kept.append(segment)
                trailingSlash = false
            }
        }
        var path: [UInt8] = [slash]
        for (n, segment) in kept.enumerated() {
            if n > 0 { path.append(slash) }
            path += segment
        }
        if trailingSlash, !kept.isEmpty { path.append(slash) }
        let resolved = String(decoding: path, as: UTF8.self)
        guard APIDialect.isUnder(resolved, APIDialect.forwardedPrefixes) else { return .escapes(resolved) }
        return .normalised(resolved + String(decoding: bytes[end...], as: UTF8.self))
    }

    /// `/v1` itself or a path below it (`/v1x` is neither).
    public static func isUnderV1<S: StringProtocol>(_ path: S) -> Bool {
        path == "/v1" || path.hasPrefix("/v1/")
    }

    /// 1 for `/`, `\`; 3 for `%2f` / `%2F`; 0 for anything else.
    private static func separatorWidth(_ bytes: [UInt8], at i: Int, end: Int) -> Int {
        let b = bytes[i]
        if b == slash || b == backslash { return 1 }
        if b == percent, i + 2 < end, bytes[i + 1] == UInt8(ascii: "2"), bytes[i + 2] | 0x20 == UInt8(ascii: "f") { return 3 }
        return 0
    }

    /// 1 when `segment` is `.`, 2 when it is `..` (dots plain or `%2e` / `%2E`, path parameters
    /// after a `;` ignored); nil otherwise.
    private static func dots(in segment: ArraySlice<UInt8>) -> Int? {
        var count = 0
        var i = segment.startIndex
        while i < segment.endIndex, segment[i] != semicolon {
            if segment[i] == dot {
                i += 1
            } else if segment[i] == percent, i + 2 < segment.endIndex, segment[i + 1] == UInt8(ascii: "2"),
                      segment[i + 2] | 0x20 == UInt8(ascii: "e") {
                i += 3
            } else {
                return nil
            }
            count += 1
            if count > 2 { return nil }
        }
        return count == 0 ? nil : count
    }
}
