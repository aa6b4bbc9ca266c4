/// The one place that decides what happens after an upstream attempt fails: replay it on a fresh
/// connection, try another deployment, or answer the error. Pure; the exchange only acts on it.
public enum RetryPolicy {
    public enum Decision: Equatable, Sendable {
        /// The same request again, on a new connection to the same upstream (once per request).
        case replayOnFreshConnection
        /// Another deployment of the group, if the group allows another attempt.
        case tryElsewhere
        /// Answer the error.
        case giveUp
    }

    /// - Parameters:
    ///   - responseStarted: some of the response already reached the upstream side (a head):
    ///     nothing is retried after that.
    ///   - reusedConnection: the attempt ran on a pooled keep-alive connection.
    ///   - replayedAlready: this request already had its one replay.
    ///   - bodyKept: the whole request body is still held (not streamed past the replay limit).
    public static func afterFailure(_ error: ProxyError, responseStarted: Bool, reusedConnection: Bool,
                                    replayedAlready: Bool, bodyKept: Bool) -> Decision {
        guard !responseStarted else { return .giveUp }
        switch error.retry {
        case .never:
            return .giveUp
        case .beforeSending:
            return .tryElsewhere
        case .connectionClosed:
            if reusedConnection, !replayedAlready, bodyKept { return .replayOnFreshConnection }
            return .tryElsewhere
        }
    }
}
