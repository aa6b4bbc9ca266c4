import NIOCore

// ByteBuffer entry points. Offsets in the results count from the buffer's readerIndex. Kept in
// their own file so the rest of Framing/ builds without NIO (the fuzz harness compiles it alone).

extension HTTPRequestHeadScanner {
    /// Scans the readable bytes of `buffer` (see `scan(_:)` for the contract).
    public mutating func scan(_ buffer: ByteBuffer) throws(HTTPFramingError) -> ScannedRequestHead? {
        try buffer.withUnsafeReadableBytes { bytes in
            Result { () throws(HTTPFramingError) in try self.scan(bytes) }
        }.get()
    }
}

extension HTTPResponseHeadScanner {
    /// Scans the readable bytes of `buffer` (see `scan(_:)` for the contract).
    public mutating func scan(_ buffer: ByteBuffer) throws(HTTPFramingError) -> ScannedResponseHead? {
        try buffer.withUnsafeReadableBytes { bytes in
            Result { () throws(HTTPFramingError) in try self.scan(bytes) }
        }.get()
    }
}

extension HTTPBodyFramer {
    /// One step over the readable bytes of `buffer`, from `position` (relative to readerIndex).
    public mutating func step(_ buffer: ByteBuffer, from position: Int) throws(HTTPFramingError) -> HTTPBodyStep {
        try buffer.withUnsafeReadableBytes { bytes in
            Result { () throws(HTTPFramingError) in try self.step(bytes, from: position) }
        }.get()
    }
}

extension ByteBuffer {
    /// The body bytes a framer step found at `range` (relative to readerIndex), as a slice of
    /// this buffer (no copy), consuming everything up to the range's end.
    public mutating func takeBody(_ range: Range<Int>) -> ByteBuffer {
        let slice = getSlice(at: readerIndex + range.lowerBound, length: range.count)!
        moveReaderIndex(forwardBy: range.upperBound)
        return slice
    }

    /// Appends `head` (scanned from `source`'s readable bytes) rewritten by `rewrite`, reserving
    /// the upper bound once and writing in place. Returns the bytes written.
    @discardableResult
    public mutating func writeRewrittenHead(
        _ head: ScannedRequestHead, from source: ByteBuffer, _ rewrite: HTTPHeadRewrite
    ) -> Int {
        source.withUnsafeReadableBytes { bytes in
            self.writeWithUnsafeMutableBytes(minimumWritableBytes: rewrite.maximumLength(headLength: head.length)) {
                HTTPHeadRewriter.rewrite(bytes, request: head, rewrite, into: $0)
            }
        }
    }

    /// Appends the response `head` (scanned from `source`'s readable bytes) rewritten by `rewrite`.
    @discardableResult
    public mutating func writeRewrittenHead(
        _ head: ScannedResponseHead, from source: ByteBuffer, _ rewrite: HTTPHeadRewrite
    ) -> Int {
        source.withUnsafeReadableBytes { bytes in
            self.writeWithUnsafeMutableBytes(minimumWritableBytes: rewrite.maximumLength(headLength: head.length)) {
                HTTPHeadRewriter.rewrite(bytes, response: head, rewrite, into: $0)
            }
        }
    }
}
