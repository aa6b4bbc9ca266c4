/// Why a message's framing was refused, with the status a server answers it with.
///
/// A struct with a private code (not a public enum) so new reasons never break callers. Equality
/// is by reason only: the same bytes always give the same error, however they were split.
public struct HTTPFramingError: Error, Hashable, Sendable, CustomStringConvertible {
    private enum Code: UInt8, Sendable {
        // Limits (431).
        case headTooLarge, tooManyFields
        // Line syntax.
        case bareLF, bareCR, emptyStartLine, obsFold, whitespaceBeforeColon, emptyFieldName
        case invalidFieldName, missingColon, invalidFieldValue
        // Request line.
        case invalidMethod, invalidTarget, unsupportedTargetForm, invalidVersion, unsupportedVersion
        // Status line.
        case invalidStatusLine, invalidStatusCode
        // Fields.
        case missingHost, repeatedHost, invalidHost, repeatedField
        case invalidContentLength, repeatedContentLength
        case contentLengthWithTransferEncoding, transferEncodingInHTTP10
        case invalidTransferEncoding, chunkedNotFinal, unsupportedTransferCoding
        case invalidConnection
        // Body.
        case invalidChunkSize, chunkSizeOverflow, chunkLineTooLong, invalidChunkExtension
        case missingCRLFAfterChunk, invalidTrailer, trailersTooLarge, truncatedBody
        // Exchange.
        case unsolicitedResponse, unrequestedUpgrade
    }

    private let code: Code

    private init(_ code: Code) { self.code = code }

    /// The status a server answers with: 431 for the size limits, 505 for a well-formed but
    /// unsupported HTTP version, 501 for a transfer coding we do not implement, else 400. For a
    /// response from upstream the caller answers its own client with 502 instead.
    public var status: Int {
        switch code {
        case .headTooLarge, .tooManyFields: return 431
        case .unsupportedVersion: return 505
        case .unsupportedTransferCoding: return 501
        default: return 400
        }
    }

    /// A short reason, safe to send to a client and to log (it never quotes the input).
    public var reason: String {
        switch code {
        case .headTooLarge: return "header section too large"
        case .tooManyFields: return "too many header fields"
        case .bareLF: return "bare LF where CRLF is required"
        case .bareCR: return "bare CR"
        case .emptyStartLine: return "empty start line"
        case .obsFold: return "obsolete line folding"
        case .whitespaceBeforeColon: return "whitespace between field name and colon"
        case .emptyFieldName: return "empty field name"
        case .invalidFieldName: return "invalid character in field name"
        case .missingColon: return "field line without colon"
        case .invalidFieldValue: return "invalid character in field value"
        case .invalidMethod: return "invalid method"
        case .invalidTarget: return "invalid request target"
        case .unsupportedTargetForm: return "request target must be origin-form or absolute-form (or * for OPTIONS)"
        case .invalidVersion: return "invalid HTTP version"
        case .unsupportedVersion: return "HTTP version not supported"
        case .invalidStatusLine: return "invalid status line"
        case .invalidStatusCode: return "invalid status code"
        case .missingHost: return "missing Host"
        case .repeatedHost: return "repeated Host"
        case .invalidHost: return "invalid Host"
        case .repeatedField: return "repeated singleton field"
        case .invalidContentLength: return "invalid Content-Length"
        case .repeatedContentLength: return "repeated Content-Length"
        case .contentLengthWithTransferEncoding: return "both Content-Length and Transfer-Encoding"
        case .transferEncodingInHTTP10: return "Transfer-Encoding in HTTP/1.0"
        case .invalidTransferEncoding: return "invalid Transfer-Encoding"
        case .chunkedNotFinal: return "chunked is not the final transfer coding"
        case .unsupportedTransferCoding: return "unsupported transfer coding"
        case .invalidConnection: return "invalid Connection"
        case .invalidChunkSize: return "invalid chunk size"
        case .chunkSizeOverflow: return "chunk size overflow"
        case .chunkLineTooLong: return "chunk size line too long"
        case .invalidChunkExtension: return "invalid chunk extension"
        case .missingCRLFAfterChunk: return "missing CRLF after chunk data"
        case .invalidTrailer: return "invalid trailer field"
        case .trailersTooLarge: return "trailer section too large"
        case .truncatedBody: return "connection closed before the body ended"
        case .unsolicitedResponse: return "bytes that answer no request (sent after the response ended, or before any request)"
        case .unrequestedUpgrade: return "101 Switching Protocols, though no upgrade was asked for"
        }
    }

    public var description: String { "\(status) \(reason)" }

    public static let headTooLarge = Self(.headTooLarge)
    public static let tooManyFields = Self(.tooManyFields)
    public static let bareLF = Self(.bareLF)
    public static let bareCR = Self(.bareCR)
    public static let emptyStartLine = Self(.emptyStartLine)
    public static let obsFold = Self(.obsFold)
    public static let whitespaceBeforeColon = Self(.whitespaceBeforeColon)
    public static let emptyFieldName = Self(.emptyFieldName)
    public static let invalidFieldName = Self(.invalidFieldName)
    public static let missingColon = Self(.missingColon)
    public static let invalidFieldValue = Self(.invalidFieldValue)
    public static let invalidMethod = Self(.invalidMethod)
    public static let invalidTarget = Self(.invalidTarget)
    public static let unsupportedTargetForm = Self(.unsupportedTargetForm)
    public static let invalidVersion = Self(.invalidVersion)
    public static let unsupportedVersion = Self(.unsupportedVersion)
    public static let invalidStatusLine = Self(.invalidStatusLine)
    public static let invalidStatusCode = Self(.invalidStatusCode)
    public static let missingHost = Self(.missingHost)
    public static let repeatedHost = Self(.repeatedHost)
    public static let invalidHost = Self(.invalidHost)
    public static let repeatedField = Self(.repeatedField)
    public static let invalidContentLength = Self(.invalidContentLength)
    public static let repeatedContentLength = Self(.repeatedContentLength)
    public static let contentLengthWithTransferEncoding = Self(.contentLengthWithTransferEncoding)
    public static let transferEncodingInHTTP10 = Self(.transferEncodingInHTTP10)
    public static let invalidTransferEncoding = Self(.invalidTransferEncoding)
    public static let chunkedNotFinal = Self(.chunkedNotFinal)
    public static let unsupportedTransferCoding = Self(.unsupportedTransferCoding)
    public static let invalidConnection = Self(.invalidConnection)
    public static let invalidChunkSize = Self(.invalidChunkSize)
    public static let chunkSizeOverflow = Self(.chunkSizeOverflow)
    public static let chunkLineTooLong = Self(.chunkLineTooLong)
    public static let invalidChunkExtension = Self(.invalidChunkExtension)
    public static let missingCRLFAfterChunk = Self(.missingCRLFAfterChunk)
    public static let invalidTrailer = Self(.invalidTrailer)
    public static let trailersTooLarge = Self(.trailersTooLarge)
    public static let truncatedBody = Self(.truncatedBody)
    public static let unsolicitedResponse = Self(.unsolicitedResponse)
    public static let unrequestedUpgrade = Self(.unrequestedUpgrade)
}
