/// One step of `HTTPBodyFramer`: what a range of the input is. Ranges are offsets into the input
/// given to that step; each starts where the caller asked and the next step starts at its end.
public enum HTTPBodyStep: Sendable, Hashable {
    /// Body bytes, to be passed on as they are.
    case data(Range<Int>)
    /// Chunk sizes, extensions, CRLFs, trailers: framing, not body.
    case framing(Range<Int>)
    /// The message's last framing bytes (possibly none): the body is over, and the input from
    /// `upperBound` on belongs to the next message.
    case end(Range<Int>)
    /// Every byte given has been accounted for; call again with the next input.
    case needMore
}

/// Bounds on chunked framing that are not body data.
public struct HTTPChunkLimits: Sendable, Hashable {
    /// Longest chunk-size line (size and extensions, CRLF excluded). Default 4 KiB: extensions
    /// are allowed but nobody we talk to sends them, and each byte of one is pure overhead.
    public var maxChunkLineBytes: Int
    /// Largest trailer section, final CRLF included. Default 16 KiB, like a head.
    public var maxTrailerBytes: Int

    public init(maxChunkLineBytes: Int = 4096, maxTrailerBytes: Int = 16 * 1024) {
        self.maxChunkLineBytes = maxChunkLineBytes
        self.maxTrailerBytes = maxTrailerBytes
    }
}

/// Follows a body's framing over the bytes as they arrive, without copying them: a
/// Content-Length countdown, or a chunked decoder, or read-until-close. A value-type state
/// machine; the caller owns every input and may drop it as soon as a step has been acted on.
///
/// ```
/// var framer = HTTPBodyFramer(head.framing)
/// var at = 0
/// loop: while true {
///     switch try framer.step(input, from: at) {
///     case .data(let r): forward(input[r]); at = r.upperBound
///     case .framing(let r): at = r.upperBound
///     case .end(let r): nextMessageStartsAt(r.upperBound); break loop
///     case .needMore: break loop   // read more, then call again with the new input from 0
///     }
/// }
/// ```
///
/// Chunked input is refused (400) for: a size that is not hex, overflows Int, or is followed by
/// anything but `;` extensions (optionally after SP/HT) or CRLF; a size line longer than
/// `maxChunkLineBytes`; CTLs in extensions; data not followed by CRLF; bare CR or LF anywhere;
/// a trailer line that is not `token ":" value`, or obs-fold; trailers beyond `maxTrailerBytes`.
/// The result depends only on the bytes, never on how they were split into inputs.
public struct HTTPBodyFramer: Sendable {
    private enum State: Sendable, Hashable {
        case length(remaining: Int)
        case untilClose
        /// Reading hex digits; `digits` so far.
        case chunkSize(digits: Int)
        /// After the size, SP/HT seen: only `;` may follow.
        case chunkSizeWhitespace
        case chunkExtension
        case chunkSizeLF
        case chunkData(remaining: Int)
        case chunkDataCR
        case chunkDataLF
        case trailerLineStart
        case trailerName
        case trailerValue
        case trailerLF
        case finalLF
        case done
    }

    public let limits: HTTPChunkLimits
    private var state: State
    private var chunkSize = 0
    private var chunkLineBytes = 0
    private var trailerBytes = 0

    public init(_ framing: HTTPBodyFraming, limits: HTTPChunkLimits = HTTPChunkLimits()) {
        self.limits = limits
        switch framing {
        case .contentLength(let n): state = n > 0 ? .length(remaining: n) : .done
        case .chunked: state = .chunkSize(digits: 0)
        case .untilClose: state = .untilClose
        }
    }

    /// The whole message has been seen.
    public var isComplete: Bool { state == .done }

    /// Body bytes still expected under Content-Length (nil for other framings).
    public var remainingLength: Int? {
        if case .length(let r) = state { return r }
        return state == .done ? 0 : nil
    }

    /// Says what `input[position...]` starts with. `position` must be within `0...input.count`.
    public mutating func step(_ input: UnsafeRawBufferPointer, from position: Int) throws(HTTPFramingError) -> HTTPBodyStep {
        precondition(position >= 0 && position <= input.count, "position outside the input")
        let available = input.count - position
        switch state {
        case .done:
            return .end(position..<position)
        case .untilClose:
            return available > 0 ? .data(position..<input.count) : .needMore
        case .length(let remaining):
            guard available > 0 else { return .needMore }
            let n = min(remaining, available)
            state = remaining == n ? .done : .length(remaining: remaining - n)
            return .data(position..<(position + n))
        case .chunkData(let remaining):
            guard available > 0 else { return .needMore }
            let n = min(remaining, available)
            state = remaining == n ? .chunkDataCR : .chunkData(remaining: remaining - n)
            return .data(position..<(position + n))
        default:
            break
        }
        var i = position
        while i < input.count {
            try consumeFraming(input[i])
            i += 1
            switch state {
            case .chunkData: return .framing(position..<i)
            case .done: return .end(position..<i)
            default: continue
            }
        }
        return i > position ? .framing(position..<i) : .needMore
    }

    /// The connection closed: fine for a body read until close (it ends here) or one that is
    /// already complete; otherwise the body was cut short.
    public mutating func inputClosed() throws(HTTPFramingError) {
        switch state {
        case .done: return
        case .untilClose: state = .done
        default: throw .truncatedBody
        }
    }

    /// One byte of chunk framing.
    @inline(__always)
    private mutating func consumeFraming(_ b: UInt8) throws(HTTPFramingError) {
        switch state {
        case .chunkSize(let digits):
            if b != HTTPSyntax.cr { try countChunkLineByte() }
            if let v = HTTPSyntax.hexValue(b) {
                guard chunkSize <= Int.max >> 4 else { throw .chunkSizeOverflow }
                chunkSize = chunkSize << 4 | v
                state = .chunkSize(digits: digits + 1)
                return
            }
            guard digits > 0 else { throw b == HTTPSyntax.lf ? .bareLF : .invalidChunkSize }
            switch b {
            case HTTPSyntax.cr: state = .chunkSizeLF
            case HTTPSyntax.semicolon: state = .chunkExtension
            case HTTPSyntax.sp, HTTPSyntax.ht: state = .chunkSizeWhitespace
            case HTTPSyntax.lf: throw .bareLF
            default: throw .invalidChunkSize
            }
        case .chunkSizeWhitespace:
            try countChunkLineByte()
            switch b {
            case HTTPSyntax.sp, HTTPSyntax.ht: break
            case HTTPSyntax.semicolon: state = .chunkExtension
            case HTTPSyntax.lf: throw .bareLF
            default: throw .invalidChunkSize
            }
        case .chunkExtension:
            switch b {
            case HTTPSyntax.cr: state = .chunkSizeLF
            case HTTPSyntax.lf: throw .bareLF
            default:
                try countChunkLineByte()
                guard HTTPSyntax.isFieldValueByte(b) else { throw .invalidChunkExtension }
            }
        case .chunkSizeLF:
            guard b == HTTPSyntax.lf else { throw .bareCR }
            chunkLineBytes = 0
            if chunkSize == 0 {
                state = .trailerLineStart
            } else {
                state = .chunkData(remaining: chunkSize)
                chunkSize = 0
            }
        case .chunkDataCR:
            guard b == HTTPSyntax.cr else { throw .missingCRLFAfterChunk }
            state = .chunkDataLF
        case .chunkDataLF:
            guard b == HTTPSyntax.lf else { throw .missingCRLFAfterChunk }
            state = .chunkSize(digits: 0)
        case .trailerLineStart, .trailerName, .trailerValue, .trailerLF, .finalLF:
            try consumeTrailer(b)
        case .length, .untilClose, .chunkData, .done:
            preconditionFailure("not a framing state")
        }
    }

    @inline(__always)
    private mutating func countChunkLineByte() throws(HTTPFramingError) {
        chunkLineBytes += 1
        guard chunkLineBytes <= limits.maxChunkLineBytes else { throw .chunkLineTooLong }
    }

    /// One byte of the trailer section (RFC 9112 §7.1.2): field lines, then CRLF.
    private mutating func consumeTrailer(_ b: UInt8) throws(HTTPFramingError) {
        trailerBytes += 1
        guard trailerBytes <= limits.maxTrailerBytes else { throw .trailersTooLarge }
        switch state {
        case .trailerLineStart:
            if b == HTTPSyntax.cr { state = .finalLF }
            else if b == HTTPSyntax.lf { throw .bareLF }
            else if HTTPSyntax.isToken(b) { state = .trailerName }
            else { throw .invalidTrailer }
        case .trailerName:
            if b == HTTPSyntax.colon { state = .trailerValue }
            else if !HTTPSyntax.isToken(b) { throw b == HTTPSyntax.lf ? .bareLF : .invalidTrailer }
        case .trailerValue:
            if b == HTTPSyntax.cr { state = .trailerLF }
            else if b == HTTPSyntax.lf { throw .bareLF }
            else if !HTTPSyntax.isFieldValueByte(b) { throw .invalidTrailer }
        case .trailerLF:
            guard b == HTTPSyntax.lf else { throw .bareCR }
            state = .trailerLineStart
        case .finalLF:
            guard b == HTTPSyntax.lf else { throw .bareCR }
            state = .done
        default:
            preconditionFailure("not a trailer state")
        }
    }
}
