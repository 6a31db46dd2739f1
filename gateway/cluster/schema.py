"""The cluster's tables in PostgreSQL, as versioned migrations. Two gateways starting at once never migrate twice:
the migrations run in one transaction that first takes a transaction-level advisory lock, so the second gateway
waits for the first's commit and then finds nothing left to do."""

from __future__ import annotations

import asyncpg
import structlog

from gateway.errors import StoreError

log = structlog.get_logger(__name__)

# pg_advisory_xact_lock key of the migrations ("gateway!" in ASCII): any fixed number, the same for every node.
MIGRATION_LOCK_KEY = 0x6761746577617921

# Times are UTC epoch seconds (double precision), as in the SQLite store; the column order of calls and recordings
# is the SQLite store's (gateway.store.rows), so both read and write rows through the same mapping.
MIGRATIONS: list[str] = [
    # 1: the initial cluster schema.
    """
    CREATE TABLE nodes (
        node TEXT PRIMARY KEY,
        instance TEXT NOT NULL,              -- the running process (new at every start)
        store_instance TEXT NOT NULL,        -- the node's local store: shipped_seq counts its events
        started_at DOUBLE PRECISION NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL,  -- the database's clock: nodes' clocks may differ
        shipped_seq BIGINT NOT NULL DEFAULT 0,   -- every local event up to here is in these tables
        recorders JSONB NOT NULL DEFAULT '{}'    -- name -> {"timeout_s", "state"}
    );
    CREATE TABLE node_extensions (
        node TEXT NOT NULL,
        number TEXT NOT NULL,
        mode TEXT NOT NULL,
        recorder TEXT,
        PRIMARY KEY (node, number)
    );
    CREATE INDEX node_extensions_number ON node_extensions (number);

    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY,
        state INTEGER NOT NULL,
        direction TEXT NOT NULL,
        extension TEXT,
        calling TEXT,
        called TEXT,
        platform_call_id TEXT,
        native_id TEXT,
        recorder TEXT,
        channel TEXT,
        link TEXT,
        account TEXT,
        trunk TEXT,
        start_time DOUBLE PRECISION NOT NULL,
        connect_time DOUBLE PRECISION,
        end_time DOUBLE PRECISION,
        ring_s DOUBLE PRECISION,
        duration_s DOUBLE PRECISION,
        recording_mode TEXT,
        kept INTEGER NOT NULL DEFAULT 0,
        do_not_delete INTEGER NOT NULL DEFAULT 0,
        open_group TEXT,
        open_leg_key TEXT,
        open_leg_direction TEXT,
        awaiting_record INTEGER NOT NULL DEFAULT 0,
        node TEXT NOT NULL                   -- the gateway that tracks the call (and runs its KeepCalls)
    );
    CREATE INDEX calls_platform_call_id ON calls (platform_call_id) WHERE platform_call_id IS NOT NULL;
    CREATE INDEX calls_native_id ON calls (native_id) WHERE native_id IS NOT NULL;

    CREATE TABLE call_parties (
        call_id TEXT NOT NULL,
        number TEXT NOT NULL,
        end_time DOUBLE PRECISION,
        PRIMARY KEY (call_id, number)
    );
    CREATE INDEX call_parties_number_end ON call_parties (number, end_time DESC NULLS FIRST);

    CREATE TABLE recordings (
        recording_id TEXT PRIMARY KEY,
        call_id TEXT NOT NULL,
        recorder TEXT,
        channel TEXT,
        native_id TEXT,
        start_time DOUBLE PRECISION NOT NULL,
        end_time DOUBLE PRECISION,
        manual INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        seq INTEGER,
        discardable INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX recordings_call_id ON recordings (call_id, start_time, seq);

    -- KeepCall for a call another node owns: the asking node inserts, the owner runs it and writes the outcome.
    CREATE TABLE commands (
        id BIGSERIAL PRIMARY KEY,
        node TEXT NOT NULL,                  -- who runs it: the call's owner
        from_node TEXT NOT NULL,
        call_id TEXT NOT NULL,
        kind TEXT NOT NULL,                  -- keep | do_not_delete | manualrecord
        unmark BOOLEAN NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        deadline DOUBLE PRECISION NOT NULL,  -- after this the asker has answered 504: the owner skips it
        status INTEGER,                      -- the HTTP status the owner would have answered (NULL: not run yet)
        message TEXT,                        -- its error message (NULL: success)
        done_at DOUBLE PRECISION
    );
    CREATE INDEX commands_pending ON commands (node, id) WHERE status IS NULL;

    -- RequestToken's tokens, by the SHA-256 of the token and of the API key: never the secrets themselves.
    CREATE TABLE tokens (
        digest BYTEA PRIMARY KEY,
        key_digest BYTEA NOT NULL,
        user_name TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX tokens_expires_at ON tokens (expires_at);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(connection: asyncpg.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION; the number of migrations this call applied."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = await connection.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the cluster database has schema version {current}, newer than this gateway's {SCHEMA_VERSION}: "
                "upgrade this gateway"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            await connection.execute(MIGRATIONS[version - 1])
            await connection.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("cluster schema migrated", version=version)
        return SCHEMA_VERSION - current
