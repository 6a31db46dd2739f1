"""The schema: versioned migrations, applied in order at open, and the store's own id they create."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import structlog

from gateway.errors import StoreError

log = structlog.get_logger(__name__)

MIGRATIONS: list[str] = [
    # 1: the initial schema. Times are UTC epoch seconds.
    """
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
        start_time REAL NOT NULL,
        connect_time REAL,
        end_time REAL,
        ring_s REAL,
        duration_s REAL,
        recording_mode TEXT,
        kept INTEGER NOT NULL DEFAULT 0,
        do_not_delete INTEGER NOT NULL DEFAULT 0
    );
    -- Partial: a recorder-only call has no platform id and a PBX-only call no native id; NULLs would
    -- only make every insert touch an index for nothing. `col = ?` lookups use these indexes.
    CREATE INDEX calls_platform_call_id ON calls(platform_call_id) WHERE platform_call_id IS NOT NULL;
    CREATE INDEX calls_native_id ON calls(native_id) WHERE native_id IS NOT NULL;
    CREATE INDEX calls_ongoing ON calls(state) WHERE state = 0;

    CREATE TABLE call_parties (
        call_id TEXT NOT NULL,
        number TEXT NOT NULL,
        end_time REAL,
        -- Keyed by call first: every upsert replaces a call's rows, and get_call reads them, by call_id.
        -- Number lookups use the index below, which (WITHOUT ROWID) carries call_id and so covers them.
        PRIMARY KEY (call_id, number)
    ) WITHOUT ROWID;
    CREATE INDEX call_parties_number_end ON call_parties(number, end_time);

    CREATE TABLE recordings (
        recording_id TEXT PRIMARY KEY,
        call_id TEXT NOT NULL,
        recorder TEXT,
        channel TEXT,
        native_id TEXT,
        start_time REAL NOT NULL,
        end_time REAL,
        manual INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        seq INTEGER,
        -- 1 while on-demand retention may discard it: an undeleted recording of an on-demand call nobody kept
        -- or protected. Rewritten with every save of the call, so the partial index holds only live candidates.
        discardable INTEGER NOT NULL DEFAULT 0
    );
    -- Ordered like get_call reads them, so loading a call's recordings needs no sort.
    CREATE INDEX recordings_call_id ON recordings(call_id, start_time, seq);
    CREATE INDEX recordings_native_id ON recordings(native_id);
    CREATE INDEX recordings_discardable ON recordings(end_time) WHERE discardable = 1;

    CREATE TABLE journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        link TEXT NOT NULL,
        received_at REAL NOT NULL,
        raw BLOB NOT NULL
    );
    CREATE INDEX journal_link_seq ON journal(link, seq);

    CREATE TABLE quarantine (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        journal_seq INTEGER,
        link TEXT NOT NULL,
        received_at REAL NOT NULL,
        raw BLOB NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX quarantine_link ON quarantine(link);
    """,
    # 2: crash recovery (docs/reliability.md). How far each link's journal has been applied, committed in the
    # same transaction as the call saves it covers; the call tracker's open groups, so that a record arriving
    # after a restart still joins the call it belongs to; and a random id of this store, which call ids made
    # from journal lines are derived from (the same line always makes the same callID, in this store only).
    """
    CREATE TABLE link_progress (
        link TEXT PRIMARY KEY,
        applied_seq INTEGER NOT NULL,  -- every journal line of the link up to here has been applied
        replay_from_seq INTEGER NOT NULL,  -- the oldest line the link's parser still needed then (<= applied + 1)
        context_seqs TEXT NOT NULL DEFAULT ''  -- older lines it still read with (page headers), comma-separated
    );
    -- A store from before this migration: what its journal holds was applied (nothing was ever replayed).
    INSERT INTO link_progress (link, applied_seq, replay_from_seq)
        SELECT link, max(seq), max(seq) + 1 FROM journal GROUP BY link;
    CREATE TABLE store_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    INSERT INTO store_meta (key, value) VALUES ('instance_id', lower(hex(randomblob(16))));
    -- The PBX call id of a multi-record call while more parts may follow (IP Office Continuation=1).
    ALTER TABLE calls ADD COLUMN open_group TEXT;
    -- The transfer-leg key (and that leg's direction) while a further leg may join the call.
    ALTER TABLE calls ADD COLUMN open_leg_key TEXT;
    ALTER TABLE calls ADD COLUMN open_leg_direction TEXT;
    -- 1 while a recorder's call waits for the PBX record that describes it.
    ALTER TABLE calls ADD COLUMN awaiting_record INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX calls_open_groups ON calls(link) WHERE open_group IS NOT NULL OR open_leg_key IS NOT NULL;
    CREATE INDEX calls_awaiting_record ON calls(start_time) WHERE awaiting_record = 1;
    -- Why the transport could not frame a line (cut at the length limit, partial at a disconnect): a replay
    -- must see the line as the link did.
    ALTER TABLE journal ADD COLUMN framing_error TEXT;
    -- A line replayed after a crash is quarantined once, however often it is replayed.
    CREATE UNIQUE INDEX quarantine_journal_seq ON quarantine(journal_seq) WHERE journal_seq IS NOT NULL;
    """,
    # 3: retention (gateway/retention.py). The calls a prune may delete, oldest end first, so a batch reads
    # only the rows it deletes; protected calls are left out of the index, ongoing ones never enter it.
    # The journal and the quarantine need no new index: they are pruned oldest first along their seq
    # (the rowid, and journal_link_seq per link), and an index on received_at would cost every journal
    # insert at ingest rates for nothing.
    """
    CREATE INDEX calls_prunable ON calls(end_time) WHERE state = 1 AND do_not_delete = 0;
    """,
    # 4: the event feed (gateway/feed.py) behind GET /events. AUTOINCREMENT: an id is never given twice, even
    # after retention has deleted every event (clients resume with Last-Event-ID). Pruned oldest first by seq.
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        name TEXT NOT NULL,
        extension TEXT,
        parties TEXT NOT NULL,
        data TEXT NOT NULL
    );
    """,
    # 5: API tokens from RequestToken (gateway/tokens.py), so that they survive a restart. Digests only: sha256 of
    # the token and of the lower-cased API key, never either. Expired ones are pruned along expires_at. WITHOUT
    # ROWID: the rows are small and looked up by digest only, so the primary key needs no index of its own.
    """
    CREATE TABLE tokens (
        digest BLOB PRIMARY KEY,
        key_digest BLOB NOT NULL,
        user TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX tokens_expires_at ON tokens(expires_at);
    """,
]

SELECT_STORE_INSTANCE = "SELECT value FROM store_meta WHERE key = 'instance_id'"


def split_statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would COMMIT our transaction)."""
    statements: list[str] = []
    pending = ""
    # Grow the statement one ';' at a time: complete_statement knows about strings, comments and triggers.
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            code = [line for line in pending.splitlines() if not line.strip().startswith("--")]
            if "".join(code).strip() != ";":  # not just the whitespace or comments after the last statement
                statements.append(pending.strip())
            pending = ""
    return statements


def migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Bring the database up to the newest schema version, one migration per transaction."""
    migrations = MIGRATIONS  # read at open time, so a test can extend the list
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            connection.execute("INSERT INTO schema_version (version) VALUES (0)")
            version = 0
        else:
            version = row[0]
        connection.execute("COMMIT")
    except BaseException:
        connection.rollback()
        raise
    if version > len(migrations):
        raise StoreError(f"store {path} has schema version {version}; this gateway knows only {len(migrations)}")
    for number in range(version + 1, len(migrations) + 1):
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            (current,) = connection.execute("SELECT version FROM schema_version").fetchone()
            if current < number:
                for statement in split_statements(migrations[number - 1]):
                    connection.execute(statement)
                connection.execute("UPDATE schema_version SET version = ?", (number,))
            connection.execute("COMMIT")
        except BaseException:
            connection.rollback()
            raise
        log.info("store migrated", path=str(path), version=number)


def instance_id(connection: sqlite3.Connection) -> int:
    """The random id migration 2 gave this store (call ids made from journal lines include it)."""
    (instance_hex,) = connection.execute(SELECT_STORE_INSTANCE).fetchone()
    return int(instance_hex, 16)
