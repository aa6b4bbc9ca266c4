import Logging
import NIOCore
import PostgresNIO
import SidecarCore

extension FleetDatabase {
    // MARK: shared cache tier

    /// Looks `key` up in the shared tier; on a miss with `claimSeconds` set, claims the in-flight
    /// leadership for it at the same time (one statement, `fleet_cache_lookup`): `.leader` when
    /// this node now holds the claim (it was absent, expired or already ours), `.follower(node)`
    /// when another node's claim is live, `.miss` otherwise. An answer stored under another scope
    /// (credential) is never a hit.
    public func lookup(key: [UInt8], scope: String, claimSeconds: Double?) async throws -> FleetCacheLookup {
        if let claimSeconds, !(claimSeconds.isFinite && claimSeconds >= 0) {
            throw FleetError(.other, "fleet cache claim seconds must be finite and not negative")
        }
        let node = self.node
        let keyBytes = ByteBuffer(bytes: key)
        return try await statement { connection, logger in
            let query: PostgresQuery = """
                SELECT r_kind, r_holder, r_model, r_endpoint, r_status, r_content_type, r_body, r_is_stream, r_created_at,
                       r_expires_at, r_prompt_tokens, r_completion_tokens
                FROM fleet_cache_lookup(\(keyBytes), \(scope), \(node), \(claimSeconds))
                """
            var result = FleetCacheLookup.miss
            for try await (kind, holder, model, endpoint, status, contentType, body, isStream, createdAt, expiresAt, prompt, completion)
                in try await connection.query(query, logger: logger)
                .decode((String, String?, String?, String?, Int32?, String?, ByteBuffer?, Bool?, Int64?, Int64?, Int64?, Int64?).self) {
                switch kind {
                case "hit":
                    guard let model, let endpoint, let status, let body, let isStream, let createdAt, let expiresAt else {
                        throw FleetError(.other, "fleet cache answer incomplete")
                    }
                    result = .hit(FleetCachedAnswer(key: key, scope: scope, model: model, endpoint: endpoint, status: Int(status),
                                                    contentType: contentType, body: Array(body.readableBytesView), isStream: isStream,
                                                    createdAt: createdAt, expiresAt: expiresAt, promptTokens: prompt,
                                                    completionTokens: completion))
                case "leader":
                    result = .leader
                case "follower":
                    result = holder.map { .follower(node: $0) } ?? .miss
                default:
                    result = .miss
                }
            }
            return result
        }
    }

    /// Stores answers (upsert), drops this node's claims on their keys and notifies listeners
    /// (channel `llm_sidecar_cache`, payload the key in hex), one transaction.
    public func store(_ answers: [FleetCachedAnswer]) async throws {
        guard !answers.isEmpty else { return }
        let node = self.node
        let channel = FleetSchema.cacheChannel
        try await transaction { connection, logger in
            for answer in answers {
                let size = Int64(answer.body.count)
                let key = ByteBuffer(bytes: answer.key)
                let body = ByteBuffer(bytes: answer.body)
                let status = Int32(clamping: answer.status)
                try await connection.query("""
                    INSERT INTO fleet_cache (key, scope, model, endpoint, status, content_type, body, is_stream, created_at,
                                             expires_at, prompt_tokens, completion_tokens, size)
                    VALUES (\(key), \(answer.scope), \(answer.model), \(answer.endpoint), \(status), \(answer.contentType),
                            \(body), \(answer.isStream), \(answer.createdAt), \(answer.expiresAt), \(answer.promptTokens),
                            \(answer.completionTokens), \(size))
                    ON CONFLICT (key) DO UPDATE SET scope = excluded.scope, model = excluded.model, endpoint = excluded.endpoint,
                        status = excluded.status, content_type = excluded.content_type, body = excluded.body,
                        is_stream = excluded.is_stream, created_at = excluded.created_at, expires_at = excluded.expires_at,
                        prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens, size = excluded.size
                    """, logger: logger)
            }
            let keys = answers.map { ByteBuffer(bytes: $0.key) }
            try await connection.query("DELETE FROM fleet_inflight WHERE key = ANY(\(keys)) AND node = \(node)", logger: logger)
            try await connection.query("SELECT pg_notify(\(channel), encode(k, 'hex')) FROM unnest(\(keys)) AS k", logger: logger)
        }
    }

    /// The leader gave up on `key` (error, not cacheable): drops its claim and notifies, so
    /// followers stop waiting.
    public func release(key: [UInt8]) async throws {
        let node = self.node
        let channel = FleetSchema.cacheChannel
        let key = ByteBuffer(bytes: key)
        try await statement { connection, logger in
            _ = try await connection.query("""
                WITH released AS (DELETE FROM fleet_inflight WHERE key = \(key) AND node = \(node))
                SELECT pg_notify(\(channel), encode(\(key)::bytea, 'hex'))
                """, logger: logger)
        }
    }

    /// Deletes expired answers and claims and, past `maxBytes` of bodies, the oldest answers
    /// (by `created_at`) until under; only one node at a time (a `pg_try_advisory_xact_lock`);
    /// returns answers deleted, nil when another node is pruning.
    public func prune(maxBytes: Int64) async throws -> Int? {
        try await transaction { connection, logger in
            var locked = false
            for try await acquired in try await connection.query(
                "SELECT pg_try_advisory_xact_lock(\(FleetSchema.pruneLock))", logger: logger).decode(Bool.self) {
                locked = acquired
            }
            guard locked else { return nil }
            var deleted: Int64 = 0
            for try await count in try await connection.query("""
                WITH gone AS (DELETE FROM fleet_cache WHERE expires_at <= extract(epoch FROM now()) RETURNING 1)
                SELECT count(*) FROM gone
                """, logger: logger).decode(Int64.self) {
                deleted += count
            }
            try await connection.query("DELETE FROM fleet_inflight WHERE expires_at <= now()", logger: logger)
            for try await count in try await connection.query("""
                WITH ranked AS (
                    SELECT key, sum(size) OVER (ORDER BY created_at DESC, key DESC) AS newer_bytes FROM fleet_cache
                ), gone AS (
                    DELETE FROM fleet_cache WHERE key IN (SELECT key FROM ranked WHERE newer_bytes > \(maxBytes)) RETURNING 1
                )
                SELECT count(*) FROM gone
                """, logger: logger).decode(Int64.self) {
                deleted += count
            }
            return Int(deleted)
        }
    }

    /// Keys stored or released by any node, as they are notified (LISTEN on a connection of its
    /// own, outside the pool). After a connection loss it connects and listens again (every
    /// second until it can); notifications sent meanwhile are lost. Ends when the consumer stops
    /// iterating.
    public func cacheNotifications() -> AsyncStream<[UInt8]> {
        cacheNotifications(onSubscribe: {})
    }

    /// `cacheNotifications()`, calling `onSubscribe` each time LISTEN is in effect (first and after
    /// every reconnection: a consumer waiting on keys may look them up again, since notifications
    /// sent while disconnected are lost).
    public func cacheNotifications(onSubscribe: @escaping @Sendable () -> Void) -> AsyncStream<[UInt8]> {
        let (stream, continuation) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingNewest(10_000))
        let configuration = listenConfiguration
        let logger = self.logger
        let timeout = statementTimeout
        let task = Task {
            var connectionID = 0
            // Logged once per outage (the agent logs the outage itself), not at every retry.
            var failing = false
            while !Task.isCancelled {
                connectionID += 1
                do {
                    let connection = try await PostgresConnection.connect(configuration: configuration, id: connectionID, logger: logger)
                    failing = false
                    do {
                        try await connection.listen(on: FleetSchema.cacheChannel) { notifications in
                            onSubscribe()
                            for try await notification in notifications {
                                if let key = Self.bytes(hex: notification.payload) {
                                    continuation.yield(key)
                                }
                            }
                        }
                    } catch {
                        if !Task.isCancelled {
                            logger.warning("fleet cache notifications lost", metadata: ["error": "\(FleetError.from(error, statementTimeout: timeout))"])
                        }
                    }
                    try? await connection.close()
                } catch {
                    if !failing {
                        logger.warning("fleet cache notifications: cannot listen (retried every second)", metadata: ["error": "\(FleetError.from(error, statementTimeout: timeout))"])
                    }
                    failing = true
                }
                try? await Task.sleep(nanoseconds: 1_000_000_000)
            }
            continuation.finish()
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    /// Lower- or upper-case hex to bytes; nil for anything else.
    static func bytes(hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = nibble(digits[index]), let low = nibble(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func nibble(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return digit - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
