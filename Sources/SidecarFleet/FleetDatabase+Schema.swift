/// The fleet database's schema: tables and the PL/pgSQL functions behind the one-statement
/// operations. Migration N (1-based) is `migrations[N - 1]`, one statement per string (the
/// extended query protocol runs one statement at a time); they run in one transaction.
enum FleetSchema {
    /// `pg_advisory_xact_lock` key serializing `migrate()` across nodes.
    static let migrationLock: Int64 = 0x6C6C_6D73_6D69_6701  // "llmsmig"
    /// `pg_try_advisory_xact_lock` key: one node prunes the shared cache at a time.
    static let pruneLock: Int64 = 0x6C6C_6D73_7072_6E01  // "llmsprn"
    /// LISTEN/NOTIFY channel of stored or released cache keys (payload: the key in hex).
    static let cacheChannel = "llm_sidecar_cache"

    static let migrations: [[String]] = [version1]

    static let version1: [String] = [
        """
        CREATE TABLE fleet_nodes (
            node text PRIMARY KEY,
            version text,
            started_at bigint,
            last_seen timestamptz,
            pushed_seq bigint NOT NULL DEFAULT 0
        )
        """,
        """
        CREATE TABLE fleet_budgets (
            scope text NOT NULL,
            period text NOT NULL,
            limit_usd float8 NOT NULL,
            granted float8 NOT NULL DEFAULT 0,
            PRIMARY KEY (scope, period)
        )
        """,
        """
        CREATE TABLE fleet_leases (
            scope text NOT NULL,
            period text NOT NULL,
            node text NOT NULL,
            allotment float8 NOT NULL,
            used float8 NOT NULL,
            expires_at timestamptz NOT NULL,
            PRIMARY KEY (scope, period, node)
        )
        """,
        """
        CREATE TABLE fleet_rates (
            client text PRIMARY KEY,
            tokens float8 NOT NULL,
            updated_at timestamptz NOT NULL
        )
        """,
        """
        CREATE TABLE fleet_spend (
            day text NOT NULL,
            node text NOT NULL,
            model text NOT NULL,
            deployment text NOT NULL,
            client text NOT NULL,
            requests bigint NOT NULL DEFAULT 0,
            prompt_tokens bigint NOT NULL DEFAULT 0,
            completion_tokens bigint NOT NULL DEFAULT 0,
            cached_tokens bigint NOT NULL DEFAULT 0,
            cache_write_tokens bigint NOT NULL DEFAULT 0,
            usd float8 NOT NULL DEFAULT 0,
            hits bigint NOT NULL DEFAULT 0,
            misses bigint NOT NULL DEFAULT 0,
            coalesced bigint NOT NULL DEFAULT 0,
            bypasses bigint NOT NULL DEFAULT 0,
            bytes_served bigint NOT NULL DEFAULT 0,
            prompt_tokens_saved bigint NOT NULL DEFAULT 0,
            completion_tokens_saved bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (day, node, model, deployment, client)
        )
        """,
        """
        CREATE TABLE fleet_cache (
            key bytea PRIMARY KEY,
            scope text NOT NULL,
            model text NOT NULL,
            endpoint text NOT NULL,
            status int NOT NULL,
            content_type text,
            body bytea NOT NULL,
            is_stream bool NOT NULL,
            created_at bigint NOT NULL,
            expires_at bigint NOT NULL,
            prompt_tokens bigint,
            completion_tokens bigint,
            size bigint NOT NULL
        )
        """,
        "CREATE INDEX fleet_cache_expires_at ON fleet_cache (expires_at)",
        "CREATE INDEX fleet_cache_created_at ON fleet_cache (created_at)",
        """
        CREATE TABLE fleet_inflight (
            key bytea PRIMARY KEY,
            node text NOT NULL,
            expires_at timestamptz NOT NULL
        )
        """,
        // Budget leases: per claim in (scope, period) order (no deadlocks between nodes), the
        // budget row is upserted and locked; other nodes' expired leases give back what they did
        // not use (their use stays counted: it was spent); this node's allotment is its use plus
        // what it wants, within what the others leave of the limit (never below its use: a fact).
        // `granted` is the sum of the allotments, recomputed from the leases (no float drift).
        """
        CREATE FUNCTION fleet_lease_budgets(p_node text, p_scopes text[], p_periods text[], p_limits float8[],
                                            p_used float8[], p_want float8[], p_lease_seconds float8)
        RETURNS TABLE (r_scope text, r_period text, r_allotment float8, r_granted float8, r_limit float8)
        LANGUAGE plpgsql AS $$
        DECLARE
            c record;
            v_others float8;
            v_new float8;
        BEGIN
            FOR c IN
                SELECT t.s, t.p, t.lim, greatest(t.u, 0) AS u, greatest(t.w, 0) AS w
                FROM unnest(p_scopes, p_periods, p_limits, p_used, p_want) AS t(s, p, lim, u, w)
                ORDER BY t.s, t.p
            LOOP
                INSERT INTO fleet_budgets AS b (scope, period, limit_usd) VALUES (c.s, c.p, c.lim)
                ON CONFLICT (scope, period) DO UPDATE SET limit_usd = excluded.limit_usd;
                PERFORM 1 FROM fleet_budgets b WHERE b.scope = c.s AND b.period = c.p FOR UPDATE;

                UPDATE fleet_leases l SET allotment = l.used
                WHERE l.scope = c.s AND l.period = c.p AND l.node <> p_node
                  AND l.expires_at < now() AND l.allotment > l.used;

                SELECT coalesce(sum(l.allotment), 0) INTO v_others
                FROM fleet_leases l WHERE l.scope = c.s AND l.period = c.p AND l.node <> p_node;

                v_new := greatest(c.u, least(c.u + c.w, c.lim - v_others));

                INSERT INTO fleet_leases AS l (scope, period, node, allotment, used, expires_at)
                VALUES (c.s, c.p, p_node, v_new, c.u, now() + make_interval(secs => p_lease_seconds))
                ON CONFLICT (scope, period, node) DO UPDATE
                SET allotment = excluded.allotment, used = excluded.used, expires_at = excluded.expires_at;

                UPDATE fleet_budgets b SET granted = v_others + v_new WHERE b.scope = c.s AND b.period = c.p;

                r_scope := c.s;
                r_period := c.p;
                r_allotment := v_new;
                r_granted := v_others + v_new;
                r_limit := c.lim;
                RETURN NEXT;
            END LOOP;
        END
        $$
        """,
        // Client token buckets: per client in order, the row is upserted (a new client starts
        // full) and locked; refill by the time since its last update (clock_timestamp(): the
        // time the lock was held, so serialized callers never count a refill twice), give-backs
        // added, capped at burst; grant up to `want` whole tokens.
        """
        CREATE FUNCTION fleet_lease_rates(p_clients text[], p_per_minute float8[], p_burst float8[],
                                          p_want bigint[], p_give_back bigint[])
        RETURNS TABLE (r_client text, r_granted bigint)
        LANGUAGE plpgsql AS $$
        DECLARE
            c record;
            v_tokens float8;
            v_updated timestamptz;
            v_now timestamptz;
            v_granted bigint;
        BEGIN
            FOR c IN
                SELECT t.cl, t.pm, t.b, greatest(t.w, 0) AS w, greatest(t.g, 0) AS g
                FROM unnest(p_clients, p_per_minute, p_burst, p_want, p_give_back) AS t(cl, pm, b, w, g)
                ORDER BY t.cl
            LOOP
                INSERT INTO fleet_rates AS r (client, tokens, updated_at) VALUES (c.cl, c.b, clock_timestamp())
                ON CONFLICT (client) DO NOTHING;
                SELECT r.tokens, r.updated_at INTO v_tokens, v_updated FROM fleet_rates r WHERE r.client = c.cl FOR UPDATE;
                v_now := greatest(clock_timestamp(), v_updated);
                v_tokens := least(c.b, v_tokens + extract(epoch FROM v_now - v_updated)::float8 * c.pm / 60.0 + c.g);
                v_granted := greatest(0, least(c.w, floor(v_tokens)::bigint));
                UPDATE fleet_rates r SET tokens = v_tokens - v_granted, updated_at = v_now WHERE r.client = c.cl;
                r_client := c.cl;
                r_granted := v_granted;
                RETURN NEXT;
            END LOOP;
        END
        $$
        """,
        // Shared cache lookup and in-flight claim in one statement: a live answer in this scope
        // is a hit; else (when a claim is asked for) the claim is taken if absent, expired or
        // already ours (leader), or the live holder is named (follower).
        """
        CREATE FUNCTION fleet_cache_lookup(p_key bytea, p_scope text, p_node text, p_claim_seconds float8)
        RETURNS TABLE (r_kind text, r_holder text, r_model text, r_endpoint text, r_status int, r_content_type text,
                       r_body bytea, r_is_stream bool, r_created_at bigint, r_expires_at bigint,
                       r_prompt_tokens bigint, r_completion_tokens bigint)
        LANGUAGE plpgsql AS $$
        DECLARE
            v_holder text;
        BEGIN
            RETURN QUERY
            SELECT 'hit'::text, NULL::text, c.model, c.endpoint, c.status, c.content_type, c.body, c.is_stream,
                   c.created_at, c.expires_at, c.prompt_tokens, c.completion_tokens
            FROM fleet_cache c
            WHERE c.key = p_key AND c.scope = p_scope AND c.expires_at > extract(epoch FROM now());
            IF FOUND THEN
                RETURN;
            END IF;
            IF p_claim_seconds IS NULL THEN
                r_kind := 'miss';
                RETURN NEXT;
                RETURN;
            END IF;
            INSERT INTO fleet_inflight AS f (key, node, expires_at)
            VALUES (p_key, p_node, now() + make_interval(secs => p_claim_seconds))
            ON CONFLICT (key) DO UPDATE SET node = excluded.node, expires_at = excluded.expires_at
            WHERE f.expires_at <= now() OR f.node = excluded.node
            RETURNING f.node INTO v_holder;
            IF v_holder IS NOT NULL THEN
                r_kind := 'leader';
            ELSE
                SELECT f.node INTO v_holder FROM fleet_inflight f WHERE f.key = p_key;
                r_kind := CASE WHEN v_holder IS NULL THEN 'miss' ELSE 'follower' END;
                r_holder := v_holder;
            END IF;
            RETURN NEXT;
        END
        $$
        """,
    ]
}
