"""The durable store: calls, recordings, the raw line journal and the quarantine in one SQLite (WAL) file.

One writer thread group-commits every write; readers use their own connections in a small pool, never the loop.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any, NamedTuple, TypeVar

import structlog

from gateway.errors import StoreError
from gateway.events import LinkProgress
from gateway.feed import FeedEvent
from gateway.journal import JournalEntry
from gateway.model import Call, CallState, Direction, Recording, RecordingMode

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_BATCH_MAX = 2000  # ops per transaction: big enough to amortise the fsync, small enough to bound latency
READER_THREADS = 2  # the machine has two cores; more readers would only contend for the GIL
READ_BATCH_MAX = 64  # reads one reader thread answers per wake-up of the event loop
# The writer is the only writer, so a lock is only ever held by another process poking at the file
# (sqlite3 CLI, backup); wait that long rather than fail a whole batch.
BUSY_TIMEOUT_MS = 5000
# The writer's page cache. Call and recording ids are random GUIDs, so a batch of inserts lands on pages all
# over four indexes; with SQLite's 2 MiB default those pages are re-read from the OS for every batch.
WRITER_CACHE_KIB = 64 * 1024
# Committed WAL pages are copied into the database file by a thread of its own, this often: the copy and its
# fsync run in SQLite without the GIL, off the writer's path (on the writer, every few hundred milliseconds of
# a burst one commit took the whole copy).
CHECKPOINT_INTERVAL_S = 0.25
# Pages of WAL (64 MiB) at which the writer checkpoints by itself: a safety net should the checkpoint thread
# fall behind; SQLite's 1000 would make the writer do the work again.
WAL_AUTOCHECKPOINT_PAGES = 16000
DEFAULT_LOOKUP_LIMIT = 2  # callers ask for two to tell "one hit" from "ambiguous"
DEFAULT_PAGE_LIMIT = 1000

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
]

_CALL_COLUMNS = (
    "call_id, state, direction, extension, calling, called, platform_call_id, native_id, recorder, channel, link,"
    " account, trunk, start_time, connect_time, end_time, ring_s, duration_s, recording_mode, kept, do_not_delete,"
    " open_group, open_leg_key, open_leg_direction, awaiting_record"
)
_RECORDING_COLUMNS = (
    "recording_id, call_id, recorder, channel, native_id, start_time, end_time, manual, deleted, seq, discardable"
)


class _RowsStatement(NamedTuple):
    """A statement over many rows at once: `head`, then `rows` groups of `width` placeholders, then `tail`.

    The writer sends a batch's rows in a few such statements instead of executemany: SQLite then runs
    without the GIL once per statement, where executemany gives the GIL up and takes it back for every
    row — and under load each take waits for the event loop thread to yield it (up to the interpreter's
    switch interval), which made the writer, and the journal commits the links wait for, the bottleneck.
    """

    head: str
    width: int  # placeholders per row (1 for an IN list)
    tail: str = ""
    row_open: str = "("
    row_close: str = ")"

    def sql(self, rows: int) -> str:
        return _rows_sql(self, rows)


@functools.lru_cache(maxsize=128)
def _rows_sql(statement: _RowsStatement, rows: int) -> str:
    row = statement.row_open + ", ".join("?" * statement.width) + statement.row_close
    return f"{statement.head}{', '.join([row] * rows)}{statement.tail}"


def _upsert(table: str, columns: str, key: str) -> _RowsStatement:
    names = [name.strip() for name in columns.split(",")]
    updates = ", ".join(f"{name} = excluded.{name}" for name in names if name != key)
    tail = f" ON CONFLICT({key}) DO UPDATE SET {updates}"
    return _RowsStatement(f"INSERT INTO {table} ({columns}) VALUES ", len(names), tail)


_UPSERT_CALL = _upsert("calls", _CALL_COLUMNS, "call_id")
_UPSERT_RECORDING = _upsert("recordings", _RECORDING_COLUMNS, "recording_id")
_DELETE_PARTIES = _RowsStatement("DELETE FROM call_parties WHERE call_id IN (", 1, ")", row_open="", row_close="")
_INSERT_PARTY = _RowsStatement("INSERT INTO call_parties (call_id, number, end_time) VALUES ", 3)
_INSERT_EVENTS = _RowsStatement("INSERT OR REPLACE INTO events (seq, at, name, extension, parties, data) VALUES ", 6)
_INSERT_JOURNAL = _RowsStatement("INSERT INTO journal (link, received_at, raw, framing_error) VALUES ", 4)
# Rows per statement, largest first: a batch of n rows takes a handful of statements, and only these few
# shapes are ever prepared (each is cached by the connection). Capped by SQLite's variable limit per statement.
ROWS_PER_STATEMENT = (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)
SQLITE_MIN_VARIABLE_LIMIT = 999  # SQLite before 3.32 (newer ones allow 32,766)
_DELETE_CALLS = _RowsStatement("DELETE FROM calls WHERE call_id IN (", 1, ")", row_open="", row_close="")
_DELETE_CALL_RECORDINGS = _RowsStatement("DELETE FROM recordings WHERE call_id IN (", 1, ")", row_open="", row_close="")


def _execute_rows(
    cursor: sqlite3.Cursor, statement: _RowsStatement, rows: Sequence[Sequence[Any]], max_variables: int
) -> None:
    done, total = 0, len(rows)
    while done < total:
        left = total - done
        size = next(size for size in ROWS_PER_STATEMENT if size <= left and size * statement.width <= max_variables)
        cursor.execute(statement.sql(size), list(itertools.chain.from_iterable(rows[done : done + size])))
        done += size


_UPSERT_PROGRESS = _upsert("link_progress", "link, applied_seq, replay_from_seq, context_seqs", "link")
# OR IGNORE: a line quarantined before a crash and replayed after it is kept once (unique journal_seq).
_INSERT_QUARANTINE = (
    "INSERT OR IGNORE INTO quarantine (journal_seq, link, received_at, raw, reason) VALUES (?, ?, ?, ?, ?)"
)

# Read queries are module constants so the tests can EXPLAIN exactly what runs.
SELECT_CALL = f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_id = ?"
SELECT_CALL_PARTIES = "SELECT call_id, number FROM call_parties WHERE call_id = ?"
SELECT_CALL_RECORDINGS = (
    f"SELECT {_RECORDING_COLUMNS} FROM recordings WHERE call_id = ? ORDER BY start_time, seq, rowid"
)
SELECT_ONGOING_CALLS = f"SELECT {_CALL_COLUMNS} FROM calls WHERE state = 0"
SELECT_ONGOING_PARTIES = (
    "SELECT p.call_id, p.number FROM calls AS c CROSS JOIN call_parties AS p ON p.call_id = c.call_id WHERE c.state = 0"
)
SELECT_ONGOING_RECORDINGS = (
    f"SELECT {', '.join('r.' + name.strip() for name in _RECORDING_COLUMNS.split(','))}"
    " FROM calls AS c CROSS JOIN recordings AS r ON r.call_id = c.call_id WHERE c.state = 0"
    " ORDER BY r.call_id, r.start_time, r.seq, r.rowid"
)
SELECT_DISCARDABLE = "SELECT call_id FROM recordings WHERE discardable = 1 AND end_time < ? ORDER BY end_time LIMIT ?"
SELECT_BY_PLATFORM_CALL_ID = "SELECT call_id FROM calls WHERE platform_call_id = ? LIMIT ?"
SELECT_BY_NATIVE_ID = "SELECT call_id FROM calls WHERE native_id = ? LIMIT ?"
# CROSS JOIN pins the plan: walk the party index newest end first, check each call's state by primary key.
# `end_time <= ?` (now): a call ending in the future (a PBX clock ahead of ours, a sped-up demo) is nobody's last.
SELECT_LAST_ENDED = (
    "SELECT p.end_time, p.call_id FROM call_parties AS p CROSS JOIN calls AS c ON c.call_id = p.call_id"
    " WHERE p.number = ? AND p.end_time <= ? AND c.state = 1 ORDER BY p.end_time DESC LIMIT ?"
)
SELECT_OPEN_CALL_IDS = (
    "SELECT call_id FROM calls WHERE open_group IS NOT NULL OR open_leg_key IS NOT NULL"
    " UNION SELECT call_id FROM calls WHERE awaiting_record = 1 AND start_time >= ?"
)
SELECT_LINK_PROGRESS = "SELECT link, applied_seq, replay_from_seq, context_seqs FROM link_progress"
SELECT_STORE_INSTANCE = "SELECT value FROM store_meta WHERE key = 'instance_id'"
SELECT_EXISTING_CALL_IDS = "SELECT call_id FROM calls WHERE call_id IN ({})"
SELECT_JOURNAL_SEQS = "SELECT seq, link, received_at, raw, framing_error FROM journal WHERE seq IN ({})"
COUNT_CALLS = "SELECT count(*) FROM calls"
COUNT_ONGOING_CALLS = "SELECT count(*) FROM calls WHERE state = 0"
QUARANTINE_COUNTS = "SELECT link, count(*) FROM quarantine GROUP BY link"
SELECT_JOURNAL = "SELECT seq, link, received_at, raw, framing_error FROM journal WHERE seq > ? ORDER BY seq LIMIT ?"
SELECT_JOURNAL_BY_LINK = (
    "SELECT seq, link, received_at, raw, framing_error FROM journal WHERE link = ? AND seq > ? ORDER BY seq LIMIT ?"
)
SELECT_QUARANTINE = "SELECT seq, journal_seq, link, received_at, raw, reason FROM quarantine ORDER BY seq LIMIT ?"
# Retention (run by the writer). Finished, unprotected calls that ended before the cutoff, oldest first, except
# those with an on-demand recording still to be discarded at the recorder (on-demand retention needs the row).
SELECT_PRUNABLE_CALLS = (
    "SELECT call_id FROM calls WHERE state = 1 AND do_not_delete = 0 AND end_time < ?"
    " AND NOT EXISTS (SELECT 1 FROM recordings AS r WHERE r.call_id = calls.call_id AND r.discardable = 1)"
    " ORDER BY end_time LIMIT ?"
)
SELECT_REPLAY_MARKS = "SELECT link, replay_from_seq, context_seqs FROM link_progress ORDER BY link"
SELECT_OLDEST_JOURNAL_OF_LINK = "SELECT seq, received_at FROM journal WHERE link = ? AND seq < ? ORDER BY seq LIMIT ?"
DELETE_JOURNAL_OF_LINK_UP_TO = "DELETE FROM journal WHERE link = ? AND seq <= ?"
# The same, sparing the lines the link's parser still reads before a replay (page headers): given as a list.
DELETE_JOURNAL_OF_LINK_UP_TO_BUT = "DELETE FROM journal WHERE link = ? AND seq <= ? AND seq NOT IN ({})"
SELECT_OLDEST_QUARANTINE = "SELECT seq, received_at FROM quarantine ORDER BY seq LIMIT ?"
DELETE_QUARANTINE_UP_TO = "DELETE FROM quarantine WHERE seq <= ?"
SELECT_EVENTS_AFTER = "SELECT seq, at, name, extension, parties, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
SELECT_LAST_EVENT_SEQ = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
SELECT_OLDEST_EVENTS = "SELECT seq, at FROM events ORDER BY seq LIMIT ?"
DELETE_EVENTS_UP_TO = "DELETE FROM events WHERE seq <= ?"
SELECT_QUARANTINE_PAGE = (
    "SELECT seq, journal_seq, link, received_at, raw, reason FROM quarantine WHERE link = ? AND seq < ?"
    " ORDER BY seq DESC LIMIT ?"
)
SELECT_SPACE = "SELECT * FROM pragma_page_count(), pragma_freelist_count(), pragma_auto_vacuum(), pragma_page_size()"
SELECT_QUARANTINE_BY_LINK = (
    "SELECT seq, journal_seq, link, received_at, raw, reason FROM quarantine WHERE link = ? ORDER BY seq LIMIT ?"
)


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A raw line no parser could make sense of, kept for a human to look at."""

    seq: int
    journal_seq: int | None
    link: str
    received_at: datetime
    raw: bytes
    reason: str


def _journal_entries(rows: Iterable[Sequence[Any]]) -> list[JournalEntry]:
    return [
        JournalEntry(seq, link, datetime.fromtimestamp(at, UTC), bytes(raw), framing_error)
        for seq, link, at, raw, framing_error in rows
    ]


@dataclass(frozen=True, slots=True)
class StoreSpace:
    """How big the database file is, and how much of it is free pages."""

    page_count: int
    freelist_count: int
    page_size: int
    incremental_vacuum: bool  # auto_vacuum = INCREMENTAL: free pages can be given back to the OS

    @property
    def file_bytes(self) -> int:
        return self.page_count * self.page_size


def _epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        # A naive datetime is a bug upstream; UTC is the only reading that never shifts stored times.
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


# ---- snapshots: a Call flattened into rows on the loop thread, so later mutations cannot leak in

_CallRow = tuple[Any, ...]
_PartyRow = tuple[str, str, float | None]
_RecordingRow = tuple[Any, ...]


class _CallSnapshot(NamedTuple):
    # Tuples all the way down: once the GC sees they hold only atoms it stops tracking them, which matters
    # when a burst queues a hundred thousand of these.
    call_id: str
    call_row: _CallRow
    party_rows: tuple[_PartyRow, ...]
    recording_rows: tuple[_RecordingRow, ...]


def _snapshot(call: Call) -> _CallSnapshot:
    end_time = _epoch(call.end_time)
    call_row = (
        call.call_id,
        int(call.state),
        call.direction.value,
        call.extension,
        call.calling,
        call.called,
        call.platform_call_id,
        call.native_id,
        call.recorder,
        call.channel,
        call.link,
        call.account,
        call.trunk,
        _epoch(call.start_time),
        _epoch(call.connect_time),
        end_time,
        call.ring_s,
        call.duration_s,
        None if call.recording_mode is None else call.recording_mode.value,
        int(call.kept),
        int(call.do_not_delete),
        call.open_group,
        call.open_leg_key,
        None if call.open_leg_direction is None else call.open_leg_direction.value,
        int(call.awaiting_record),
    )
    party_rows = tuple([(call.call_id, number, end_time) for number in call.parties])
    discardable_call = call.recording_mode is RecordingMode.ON_DEMAND and not call.kept and not call.do_not_delete
    # Stored under the owning call's id: the list a recording sits in is what get_call reads it back by.
    recording_rows = tuple(
        [
            (
                recording.recording_id,
                call.call_id,
                recording.recorder,
                recording.channel,
                recording.native_id,
                _epoch(recording.start_time),
                _epoch(recording.end_time),
                int(recording.manual),
                int(recording.deleted),
                position,
                int(discardable_call and not recording.deleted),
            )
            for position, recording in enumerate(call.recordings)
        ]
    )
    return _CallSnapshot(call.call_id, call_row, party_rows, recording_rows)


def _call_from_row(row: Sequence[Any], parties: Iterable[str], recordings: list[Recording]) -> Call:
    (
        call_id, state, direction, extension, calling, called, platform_call_id, native_id, recorder, channel,
        link, account, trunk, start_time, connect_time, end_time, ring_s, duration_s, recording_mode, kept,
        do_not_delete, open_group, open_leg_key, open_leg_direction, awaiting_record,
    ) = row  # fmt: skip
    own_numbers = {extension, calling, called}
    return Call(
        call_id=call_id,
        start_time=_datetime(start_time),  # type: ignore[arg-type]  # NOT NULL column
        state=CallState(state),
        direction=Direction(direction),
        extension=extension,
        calling=calling,
        called=called,
        # The table holds Call.parties; the "other" ones are whatever the call's own numbers do not explain.
        other_parties={number for number in parties if number not in own_numbers},
        platform_call_id=platform_call_id,
        native_id=native_id,
        recorder=recorder,
        channel=channel,
        link=link,
        account=account,
        trunk=trunk,
        connect_time=_datetime(connect_time),
        end_time=_datetime(end_time),
        ring_s=ring_s,
        duration_s=duration_s,
        recording_mode=None if recording_mode is None else RecordingMode(recording_mode),
        kept=bool(kept),
        do_not_delete=bool(do_not_delete),
        recordings=recordings,
        open_group=open_group,
        open_leg_key=open_leg_key,
        open_leg_direction=None if open_leg_direction is None else Direction(open_leg_direction),
        awaiting_record=bool(awaiting_record),
    )


def _recording_from_row(row: Sequence[Any]) -> Recording:
    recording_id, call_id, recorder, channel, native_id, start_time, end_time, manual, deleted, _, _ = row
    return Recording(
        recording_id=recording_id,
        call_id=call_id,
        start_time=_datetime(start_time),  # type: ignore[arg-type]  # NOT NULL column
        recorder=recorder,
        channel=channel,
        native_id=native_id,
        end_time=_datetime(end_time),
        manual=bool(manual),
        deleted=bool(deleted),
    )


def _statements(script: str) -> list[str]:
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


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so sqlite3 never opens or commits behind our back.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return connection


class _Checkpointer:
    """A thread that copies committed WAL pages into the database file every CHECKPOINT_INTERVAL_S (PASSIVE:
    it never waits for, or blocks, the writer or a reader). Owned by the writer thread, stopped before it
    closes the last connection, which checkpoints whatever is left."""

    def __init__(self, path: Path, sync: str) -> None:
        self._path = path
        self._sync = sync
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-checkpointer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            connection = _connect(self._path)
            # The database file is fsynced before the WAL may be reused, as on the writer.
            connection.execute(f"PRAGMA synchronous = {self._sync.upper()}")
        except sqlite3.Error as exc:
            log.warning("store checkpoints left to the writer", path=str(self._path), error=str(exc))
            return
        failing = False  # one WARNING per spell of failures (a full disk fails every 0.25 s), then DEBUG
        try:
            while not self._stopping.wait(CHECKPOINT_INTERVAL_S):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    if failing:
                        log.debug("store checkpoint failed", path=str(self._path), error=str(exc))
                    else:
                        log.warning("store checkpoint failed", path=str(self._path), error=str(exc))
                        failing = True
                else:
                    failing = False
        finally:
            _close_quietly(connection)


def _raw_bytes(raw: bytes) -> bytes:
    # A bytearray or memoryview could change under us after the call returns; bytes cannot, so no copy.
    return raw if type(raw) is bytes else bytes(raw)


# ---- the writer's operations

_APPEND_JOURNAL = 1
_QUARANTINE = 2
# One queue entry and one future for any number of calls (a single save is a batch of one): per-call
# futures and callbacks cost more event-loop time than the rows' SQL at SMDR ingest rates.
_SAVE_CALLS = 3
_APPEND_JOURNAL_MANY = 4
# Retention: one batch of deletions (payload: which table, cutoff epoch, row limit) → rows deleted; and one step of
# incremental vacuum (payload: pages) → pages still free. Both are short and share a transaction with whatever
# else the writer commits at that moment, like every other op.
_PRUNE = 5
_VACUUM = 6
_APPEND_EVENTS = 7
PRUNE_CALLS, PRUNE_JOURNAL, PRUNE_QUARANTINE, PRUNE_EVENTS = "calls", "journal", "quarantine", "events"
AUTO_VACUUM_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL

# (kind, payload, future); the future is None only for the stop marker.
_Op = tuple[int, Any, "asyncio.Future[Any] | None"]
_STOP: _Op = (-1, None, None)

_NEW, _OPENING, _OPEN, _CLOSING, _CLOSED = range(5)


class Store:
    """The gateway's SQLite store. Writes are group-committed by one thread; reads run in a small pool."""

    def __init__(self, path: str | Path, *, batch_max: int = DEFAULT_BATCH_MAX, sync: str = "full") -> None:
        if sync not in ("full", "normal"):
            raise ValueError(f"sync must be full or normal, not {sync!r}")
        self._sync = sync
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self._path = Path(path)
        self._batch_max = batch_max
        self._max_variables = SQLITE_MIN_VARIABLE_LIMIT  # the writer connection's own limit, once it is open
        self._state = _NEW
        # Guards state + queue.put together, so nothing can be queued behind the stop marker.
        self._state_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: SimpleQueue[_Op] = SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_done: asyncio.Future[None] | None = None
        self._readers: list[threading.Thread] | None = None
        self._read_queue: SimpleQueue[_Read | None] = SimpleQueue()
        self._reader_local = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._reader_connections_lock = threading.Lock()
        self._pending_reads: set[asyncio.Future[Any]] = set()
        self._closed: asyncio.Future[None] | None = None
        self._instance_id = 0  # read from the file at open
        # Why the last write failed, until one succeeds again (set by the writer thread, read by /healthz).
        self.write_error: str | None = None

    @property
    def instance_id(self) -> int:
        """This store's random id (made with the file): call ids derived from journal lines include it."""
        return self._instance_id

    @property
    def path(self) -> Path:
        return self._path

    # ---- lifecycle

    async def open(self) -> None:
        """Create the folder and database, apply migrations and start the writer thread."""
        if self._state != _NEW:
            raise StoreError(f"store {self._path} was already opened")
        self._state = _OPENING
        loop = asyncio.get_running_loop()
        self._loop = loop
        ready: asyncio.Future[None] = loop.create_future()
        self._writer_done = loop.create_future()
        self._writer = threading.Thread(target=self._run_writer, args=(ready,), name="store-writer", daemon=True)
        self._writer.start()
        try:
            await ready
        except BaseException:
            # Startup failed or open() was cancelled: the thread must not outlive us either way.
            self._queue.put(_STOP)
            self._state = _CLOSED
            raise
        if self._state != _OPENING:
            raise StoreError(f"store {self._path} was closed while opening")
        self._readers = [
            threading.Thread(target=self._run_reader, name=f"store-reader-{index}", daemon=True)
            for index in range(READER_THREADS)
        ]
        for reader in self._readers:
            reader.start()
        self._state = _OPEN
        log.debug("store opened", path=str(self._path))

    async def close(self) -> None:
        """Commit every queued write, stop the writer and close all connections. Safe to call twice."""
        if self._state in (_NEW, _CLOSED) and self._closed is None:
            self._state = _CLOSED
            return
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        try:
            with self._state_lock:
                self._state = _CLOSING
            # Reads already running finish before their connections go away.
            if self._pending_reads:
                await asyncio.gather(*self._pending_reads, return_exceptions=True)
            # The writer drains the queue up to this marker, commits, then closes every connection itself
            # (the last close checkpoints the WAL: disk work that must not run on the loop).
            self._queue.put(_STOP)
            assert self._writer_done is not None
            await asyncio.shield(self._writer_done)
            if self._writer is not None:
                self._writer.join()  # the thread has signalled its last act; this returns at once
        finally:
            self._state = _CLOSED
            self._closed.set_result(None)
        log.debug("store closed", path=str(self._path))

    # ---- writes

    def save_call_soon(self, call: Call) -> asyncio.Future[None]:
        """Queue an upsert of the call, its parties and recordings; the future resolves once committed."""
        return self._submit(_SAVE_CALLS, ([_snapshot(call)], ()))

    async def save_call(self, call: Call) -> None:
        await self.save_call_soon(call)

    def save_calls_soon(self, calls: Iterable[Call], progress: Iterable[LinkProgress] = ()) -> asyncio.Future[None]:
        """Queue several calls as one write (snapshots taken now); one future for all, resolved once committed.

        `progress` is committed in the same transaction: how far each link's journal had been applied when
        the snapshots were taken, so that after a crash exactly the lines after it are replayed.
        """
        progress_rows = tuple(
            [
                (item.link, item.applied_seq, item.replay_from_seq, ",".join(map(str, item.context_seqs)))
                for item in progress
            ]
        )
        return self._submit(_SAVE_CALLS, ([_snapshot(call) for call in calls], progress_rows))

    def append_journal_many_soon(
        self, link: str, lines: Iterable[tuple[datetime, bytes] | tuple[datetime, bytes, str | None]]
    ) -> asyncio.Future[list[int]]:
        """Queue raw lines of one link as one write; resolves to their seqs, in order, once committed.
        A line is (received_at, raw) or (received_at, raw, framing error)."""
        rows = []
        last_at: datetime | None = None
        epoch: float | None = None
        for line in lines:
            received_at = line[0]
            if received_at is not last_at:  # the lines of one read share their arrival time
                last_at, epoch = received_at, _epoch(received_at)
            rows.append((link, epoch, _raw_bytes(line[1]), line[2] if len(line) > 2 else None))
        return self._submit(_APPEND_JOURNAL_MANY, rows)

    def append_journal_soon(
        self, link: str, received_at: datetime, raw: bytes, framing_error: str | None = None
    ) -> asyncio.Future[int]:
        """Queue a raw line for the journal; the future resolves to its seq once committed."""
        return self._submit(_APPEND_JOURNAL, (link, _epoch(received_at), _raw_bytes(raw), framing_error))

    async def append_journal(
        self, link: str, received_at: datetime, raw: bytes, framing_error: str | None = None
    ) -> int:
        return await self.append_journal_soon(link, received_at, raw, framing_error)

    async def quarantine(
        self, link: str, received_at: datetime, raw: bytes, reason: str, journal_seq: int | None = None
    ) -> None:
        await self._submit(_QUARANTINE, (journal_seq, link, _epoch(received_at), _raw_bytes(raw), reason))

    # ---- retention (gateway/retention.py decides when; what is never pruned: docs/configuration.md)

    async def prune(self, table: str, older_than: datetime, limit: int) -> int:
        """Delete up to `limit` rows of one table (PRUNE_CALLS, PRUNE_JOURNAL or PRUNE_QUARANTINE) older than the
        cutoff, oldest first, in one short write; how many went. A call goes with its parties and recordings."""
        if table not in (PRUNE_CALLS, PRUNE_JOURNAL, PRUNE_QUARANTINE, PRUNE_EVENTS):
            raise ValueError(f"cannot prune {table!r}")
        return await self._submit(_PRUNE, (table, _epoch(older_than), limit))

    # ---- the event feed (gateway.feed.EventLog)

    def append_events_soon(self, events: Sequence[FeedEvent]) -> asyncio.Future[None]:
        """Queue events (their seqs given) as one write; resolves once committed. Written again with the same
        seqs after a failure, an event replaces itself."""
        rows = [
            (
                event.seq,
                _epoch(event.at),
                event.name,
                event.extension,
                json.dumps(sorted(event.parties)),
                event.data_json(),
            )
            for event in events
        ]
        return self._submit(_APPEND_EVENTS, rows)

    async def events_after(self, seq: int, limit: int) -> list[FeedEvent]:
        rows = await self._read(self._read_rows, SELECT_EVENTS_AFTER, (seq, limit))
        return [
            FeedEvent(
                seq_, name, datetime.fromtimestamp(at, UTC), json.loads(data), extension, frozenset(json.loads(parties))
            )
            for seq_, at, name, extension, parties, data in rows
        ]

    async def last_event_seq(self) -> int:
        """The highest event seq ever given (0: none), also when every event has been pruned since."""
        rows = await self._read(self._read_rows, SELECT_LAST_EVENT_SEQ, ())
        return int(rows[0][0]) if rows else 0

    async def incremental_vacuum(self, pages: int) -> int:
        """Give up to `pages` free pages back to the OS (a no-op without incremental auto-vacuum); pages still free."""
        return await self._submit(_VACUUM, pages)

    async def space(self) -> StoreSpace:
        """Size of the database in pages, how many are free, and whether incremental auto-vacuum is on."""
        page_count, freelist_count, auto_vacuum, page_size = (await self._read(self._read_rows, SELECT_SPACE, ()))[0]
        return StoreSpace(page_count, freelist_count, page_size, auto_vacuum == AUTO_VACUUM_INCREMENTAL)

    def _submit(self, kind: int, payload: Any) -> asyncio.Future[Any]:
        loop = self._loop
        with self._state_lock:
            if self._state != _OPEN or loop is None:
                raise StoreError(f"store {self._path} is not open")
            future: asyncio.Future[Any] = loop.create_future()
            self._queue.put((kind, payload, future))
        return future

    # ---- the writer thread

    def _run_writer(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            connection = self._open_writer_connection()
        except Exception as exc:  # noqa: BLE001 — any failure here means the store cannot open
            error = exc
            if not isinstance(exc, StoreError):
                error = StoreError(f"cannot open store {self._path}: {exc}")
                error.__cause__ = exc
            self._call_soon(loop, _settle, ready, None, error)
            self._call_soon(loop, _settle, self._writer_done, None, None)
            return
        self._call_soon(loop, _settle, ready, None, None)
        checkpointer = _Checkpointer(self._path, self._sync)
        try:
            self._write_until_stopped(connection)
        finally:
            checkpointer.stop()
            self._close_connections(connection)
            self._call_soon(loop, _settle, self._writer_done, None, None)

    def _open_writer_connection(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        connection = _connect(self._path)
        try:
            # FULL: the WAL is fsynced at every COMMIT, before any future resolves. NORMAL could lose the last
            # acknowledged commits on power loss.
            connection.execute(f"PRAGMA synchronous = {self._sync.upper()}")
            # Freed pages go back to the OS after pruning (retention). Only takes on a new, empty database, and
            # only before WAL is switched on; an existing store keeps its mode (docs/configuration.md).
            connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"store {self._path}: cannot use WAL journal (got {mode!r})")
            connection.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            connection.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            self._max_variables = connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._migrate(connection)
            (instance_hex,) = connection.execute(SELECT_STORE_INSTANCE).fetchone()
            self._instance_id = int(instance_hex, 16)
        except BaseException:
            connection.close()
            raise
        return connection

    def _migrate(self, connection: sqlite3.Connection) -> None:
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
            raise StoreError(
                f"store {self._path} has schema version {version}; this gateway knows only {len(migrations)}"
            )
        for number in range(version + 1, len(migrations) + 1):
            connection.execute("BEGIN IMMEDIATE")
            try:
                # Re-read under the write lock: another process may have migrated meanwhile.
                (current,) = connection.execute("SELECT version FROM schema_version").fetchone()
                if current < number:
                    for statement in _statements(migrations[number - 1]):
                        connection.execute(statement)
                    connection.execute("UPDATE schema_version SET version = ?", (number,))
                connection.execute("COMMIT")
            except BaseException:
                connection.rollback()
                raise
            log.info("store migrated", path=str(self._path), version=number)

    def _write_until_stopped(self, connection: sqlite3.Connection) -> None:
        loop = self._loop
        assert loop is not None
        cursor = connection.cursor()
        batch_max = self._batch_max
        queue = self._queue
        stopping = False
        # The stop marker is the last thing ever queued (see _submit), so the batch holding it empties the queue.
        while not stopping:
            batch: list[_Op] = [queue.get()]
            while len(batch) < batch_max and not queue.empty():
                batch.append(queue.get_nowait())
            ops = [op for op in batch if op[2] is not None]
            stopping = len(ops) != len(batch)
            if not ops:
                continue
            try:
                results = self._write_batch(connection, cursor, ops)
            except Exception:  # noqa: BLE001 — a bug here must not kill the thread and hang every later write
                log.exception("store writer failed a batch", path=str(self._path), ops=len(ops))
                _rollback(connection)
                error = StoreError(f"store {self._path}: internal error in the writer")
                results = [(op[2], None, error) for op in ops]
            # One hop to the loop per batch, not per op.
            self._call_soon(loop, _settle_all, results)

    def _write_batch(self, connection: sqlite3.Connection, cursor: sqlite3.Cursor, ops: list[_Op]) -> list[_Result]:
        """Commit a batch in one transaction; each op's result or error, in order."""
        try:
            results = self._apply_fast(cursor, ops)
        except Exception:  # noqa: BLE001 — some op failed; find which, one savepoint each
            _rollback(connection)
            try:
                results = self._apply_isolated(cursor, ops)
            except Exception as exc:  # noqa: BLE001 — BEGIN or COMMIT itself failed: nothing was stored
                _rollback(connection)
                log.debug("store batch failed", path=str(self._path), ops=len(ops), error=str(exc))
                error = StoreError(f"store {self._path}: commit failed: {exc}")
                error.__cause__ = exc
                results = [(op[2], None, error) for op in ops]
        self._note_outcome(next((error for _, _, error in results if error is not None), None))
        return results

    def _note_outcome(self, error: BaseException | None) -> None:
        """Keep `write_error` current: one WARNING when writes start failing (a full disk fails every retry),
        one INFO when they succeed again."""
        if error is None:
            if self.write_error is not None:
                log.info("store writes succeed again", path=str(self._path))
                self.write_error = None
        else:
            if self.write_error is None:
                log.warning("store writes failing", path=str(self._path), error=str(error))
            self.write_error = str(error)

    def _apply_fast(self, cursor: sqlite3.Cursor, ops: list[_Op]) -> list[_Result]:
        # The common case: nothing fails, so no savepoint per op, and the batch's journal lines and call saves
        # go in as one row set each. Statements, not rows, set the writer's pace under load: each gives the GIL
        # up while SQLite runs and must take it back, which waits for the busy event loop to yield it.
        cursor.execute("BEGIN IMMEDIATE")
        values: list[Any] = []
        snapshots: list[_CallSnapshot] = []
        progress_rows: list[tuple[Any, ...]] = []
        journal_rows: list[tuple[Any, ...]] = []
        journal_ops: list[tuple[int, int, int]] = []  # (index in values, first row, rows) of each journal op
        for kind, payload, _ in ops:
            value: Any = None
            if kind == _SAVE_CALLS:
                snapshots.extend(payload[0])
                progress_rows.extend(payload[1])
            elif kind == _APPEND_JOURNAL_MANY:
                journal_ops.append((len(values), len(journal_rows), len(payload)))
                journal_rows.extend(payload)
                value = []
            elif kind == _APPEND_JOURNAL:
                journal_ops.append((len(values), len(journal_rows), -1))
                journal_rows.append(payload)
            else:
                value = self._apply(cursor, kind, payload)
            values.append(value)
        if snapshots:
            self._save_snapshots(cursor, snapshots)
        if progress_rows:
            self._save_progress(cursor, progress_rows)
        if journal_rows:
            first_seq = self._append_journal_rows(cursor, journal_rows)
            for index, first_row, rows in journal_ops:
                seq = first_seq + first_row
                values[index] = seq if rows < 0 else list(range(seq, seq + rows))
        cursor.execute("COMMIT")
        return [(future, value, None) for (_, _, future), value in zip(ops, values)]

    def _apply_isolated(self, cursor: sqlite3.Cursor, ops: list[_Op]) -> list[_Result]:
        cursor.execute("BEGIN IMMEDIATE")
        results: list[_Result] = []
        for kind, payload, future in ops:
            cursor.execute("SAVEPOINT op")
            try:
                value = self._apply(cursor, kind, payload)
            except Exception as exc:  # noqa: BLE001 — the op's own failure goes to its own future only
                cursor.execute("ROLLBACK TO op")
                cursor.execute("RELEASE op")
                error = StoreError(f"store {self._path}: {_describe(kind, payload)} failed: {exc}")
                error.__cause__ = exc
                results.append((future, None, error))
                log.debug("store write failed", path=str(self._path), op=_describe(kind, payload), error=str(exc))
            else:
                cursor.execute("RELEASE op")
                results.append((future, value, None))
        cursor.execute("COMMIT")
        return results

    def _apply(self, cursor: sqlite3.Cursor, kind: int, payload: Any) -> Any:
        if kind == _APPEND_JOURNAL:
            return self._append_journal_rows(cursor, [payload])
        if kind == _SAVE_CALLS:
            if payload[0]:
                self._save_snapshots(cursor, payload[0])
            self._save_progress(cursor, payload[1])
            return None
        if kind == _APPEND_JOURNAL_MANY:
            if not payload:
                return []
            first_seq = self._append_journal_rows(cursor, payload)
            return list(range(first_seq, first_seq + len(payload)))
        if kind == _QUARANTINE:
            cursor.execute(_INSERT_QUARANTINE, payload)
            return None
        if kind == _APPEND_EVENTS:
            _execute_rows(cursor, _INSERT_EVENTS, payload, self._max_variables)
            return None
        if kind == _PRUNE:
            return self._prune(cursor, *payload)
        if kind == _VACUUM:
            return self._vacuum_step(cursor, payload)
        raise AssertionError(f"unknown store op {kind}")

    def _save_snapshots(self, cursor: sqlite3.Cursor, snapshots: list[_CallSnapshot]) -> None:
        max_variables = self._max_variables
        # A call's parties are replaced: deleted before the upserts, so that a call saved twice in one
        # batch keeps the rows of its last snapshot only.
        _execute_rows(cursor, _DELETE_PARTIES, [(snapshot.call_id,) for snapshot in snapshots], max_variables)
        _execute_rows(cursor, _UPSERT_CALL, [snapshot.call_row for snapshot in snapshots], max_variables)
        latest = {snapshot.call_id: snapshot for snapshot in snapshots}
        party_rows = [row for snapshot in latest.values() for row in snapshot.party_rows]
        _execute_rows(cursor, _INSERT_PARTY, party_rows, max_variables)
        recording_rows = [row for snapshot in snapshots for row in snapshot.recording_rows]
        if recording_rows:
            _execute_rows(cursor, _UPSERT_RECORDING, recording_rows, max_variables)

    def _save_progress(self, cursor: sqlite3.Cursor, rows: Sequence[tuple[Any, ...]]) -> None:
        latest = {row[0]: row for row in rows}  # queued in order: a link's last row is its newest progress
        if latest:
            _execute_rows(cursor, _UPSERT_PROGRESS, list(latest.values()), self._max_variables)

    def _prune(self, cursor: sqlite3.Cursor, table: str, cutoff: float, limit: int) -> int:
        """Delete up to `limit` rows of `table` older than `cutoff` (epoch s), oldest first; how many went."""
        if table == PRUNE_CALLS:
            call_ids = [(call_id,) for (call_id,) in cursor.execute(SELECT_PRUNABLE_CALLS, (cutoff, limit))]
            for statement in (_DELETE_PARTIES, _DELETE_CALL_RECORDINGS, _DELETE_CALLS):
                _execute_rows(cursor, statement, call_ids, self._max_variables)
            return len(call_ids)
        if table == PRUNE_JOURNAL:
            # Only links with a replay mark, and only below it: a crash replay reads from there on.
            deleted = 0
            # The lines its parser still reads first (page headers) are kept too, however old.
            for link, replay_from_seq, context_text in cursor.execute(SELECT_REPLAY_MARKS).fetchall():
                if deleted >= limit:
                    break
                context = [int(seq) for seq in context_text.split(",") if seq]
                rows = cursor.execute(
                    SELECT_OLDEST_JOURNAL_OF_LINK, (link, replay_from_seq, limit - deleted + len(context))
                )
                last = _last_of_old_prefix(rows, cutoff, spared=frozenset(context))
                if last is not None:
                    if context:
                        sql = DELETE_JOURNAL_OF_LINK_UP_TO_BUT.format(", ".join("?" * len(context)))
                        cursor.execute(sql, (link, last[0], *context))
                    else:
                        cursor.execute(DELETE_JOURNAL_OF_LINK_UP_TO, (link, last[0]))
                    deleted += last[1]
            return deleted
        if table in (PRUNE_QUARANTINE, PRUNE_EVENTS):
            select, delete = (
                (SELECT_OLDEST_QUARANTINE, DELETE_QUARANTINE_UP_TO)
                if table == PRUNE_QUARANTINE
                else (SELECT_OLDEST_EVENTS, DELETE_EVENTS_UP_TO)
            )
            last = _last_of_old_prefix(cursor.execute(select, (limit,)), cutoff)
            if last is None:
                return 0
            cursor.execute(delete, (last[0],))
            return last[1]
        raise AssertionError(f"unknown table to prune: {table}")

    @staticmethod
    def _vacuum_step(cursor: sqlite3.Cursor, pages: int) -> int:
        """Release up to `pages` free pages to the OS (incremental auto-vacuum); the free pages left."""
        # One execute() steps a statement once, and a step of incremental_vacuum releases one page: so one
        # statement per page (a few µs each), not incremental_vacuum(N), which would release a single page.
        for _ in range(pages):
            cursor.execute("PRAGMA incremental_vacuum(1)")
        return cursor.execute("PRAGMA freelist_count").fetchone()[0]

    def _append_journal_rows(self, cursor: sqlite3.Cursor, rows: list[tuple[Any, ...]]) -> int:
        """Inserts the rows; the seq of the first. This thread is the only writer, inside one transaction:
        the seqs given are consecutive."""
        _execute_rows(cursor, _INSERT_JOURNAL, rows, self._max_variables)
        last_seq = cursor.lastrowid
        assert last_seq is not None  # rows were inserted just now
        return last_seq - len(rows) + 1

    def _close_connections(self, writer_connection: sqlite3.Connection) -> None:
        # Readers first (their pool is idle: close() waited for every read), so the writer's close is the last
        # one and checkpoints the WAL back into the database file.
        if self._readers is not None:
            for _ in self._readers:
                self._read_queue.put(None)
            for reader in self._readers:
                reader.join()
        with self._reader_connections_lock:
            connections, self._reader_connections = self._reader_connections, []
        for connection in connections:
            _close_quietly(connection)
        _close_quietly(writer_connection)

    @staticmethod
    def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody is left to await these futures

    # ---- reads

    async def get_call(self, call_id: str) -> Call | None:
        """The full call with its recordings (by start time, then insertion) and parties, or None."""
        return await self._read(self._read_call, call_id)

    async def call_ids_by_platform_call_id(self, platform_call_id: str, limit: int = DEFAULT_LOOKUP_LIMIT) -> list[str]:
        """Calls carrying this PBX call id, oldest stored first."""
        return await self._read(self._read_ids, SELECT_BY_PLATFORM_CALL_ID, (platform_call_id, limit))

    async def call_ids_by_native_id(self, native_id: str, limit: int = DEFAULT_LOOKUP_LIMIT) -> list[str]:
        """Calls carrying this recorder call id, oldest stored first."""
        return await self._read(self._read_ids, SELECT_BY_NATIVE_ID, (native_id, limit))

    async def calls_by_platform_call_id(self, platform_call_id: str, limit: int = DEFAULT_LOOKUP_LIMIT) -> list[Call]:
        """Like call_ids_by_platform_call_id, with each call read in full in the same trip."""
        return await self._read(self._read_calls_by, SELECT_BY_PLATFORM_CALL_ID, (platform_call_id, limit))

    async def calls_by_native_id(self, native_id: str, limit: int = DEFAULT_LOOKUP_LIMIT) -> list[Call]:
        """Like call_ids_by_native_id, with each call read in full in the same trip."""
        return await self._read(self._read_calls_by, SELECT_BY_NATIVE_ID, (native_id, limit))

    async def last_ended_call_ids(
        self, extension: str, limit: int = DEFAULT_LOOKUP_LIMIT, *, ended_by: datetime | None = None
    ) -> list[tuple[datetime, str]]:
        """Finished calls that `extension` was a party to and that ended by `ended_by` (default: now), newest end
        first."""
        bound = _epoch(ended_by or datetime.now(UTC))
        rows = await self._read(self._read_rows, SELECT_LAST_ENDED, (extension, bound, limit))
        return [(datetime.fromtimestamp(end_time, UTC), call_id) for end_time, call_id in rows]

    async def expired_on_demand_call_ids(self, ended_before: datetime, limit: int) -> list[str]:
        """Calls of on-demand recordings that ended before the cutoff, unkept, unprotected and not yet deleted.

        Oldest recording first; at most `limit` calls (fewer when one call has several such recordings).
        """
        call_ids = await self._read(self._read_ids, SELECT_DISCARDABLE, (_epoch(ended_before), limit))
        return list(dict.fromkeys(call_ids))

    async def load_ongoing_calls(self) -> list[Call]:
        """Every call still ONGOING, in full (what the tracker reloads after a restart)."""
        return await self._read(self._read_ongoing_calls)

    async def load_open_calls(self, awaiting_since: datetime) -> list[Call]:
        """Finished calls the tracker still has business with (a multi-record call or a transfer leg that more
        may join), and recorder calls since `awaiting_since` still waiting for their PBX record; in full."""
        return await self._read(self._read_calls_by, SELECT_OPEN_CALL_IDS, (_epoch(awaiting_since),))

    async def link_progress(self) -> dict[str, LinkProgress]:
        """How far each link's journal had been applied at the last commit."""
        rows = await self._read(self._read_rows, SELECT_LINK_PROGRESS, ())
        return {
            link: LinkProgress(link, applied, replay_from, tuple(int(seq) for seq in context.split(",") if seq))
            for link, applied, replay_from, context in rows
        }

    async def journal_lines(self, seqs: Sequence[int]) -> list[JournalEntry]:
        """The journal lines with these seqs (those still there), in seq order."""
        rows = await self._rows_where_in(SELECT_JOURNAL_SEQS, seqs)
        return sorted(_journal_entries(rows), key=lambda entry: entry.seq)

    async def existing_call_ids(self, call_ids: Sequence[str]) -> set[str]:
        """Which of these calls the store holds."""
        rows = await self._rows_where_in(SELECT_EXISTING_CALL_IDS, call_ids)
        return {call_id for (call_id,) in rows}

    async def _rows_where_in(self, sql_template: str, values: Sequence[Any]) -> list[Any]:
        """The rows of `sql_template` (its `{}` an IN list) for all `values`, a statement per
        SQLITE_MIN_VARIABLE_LIMIT of them."""
        rows: list[Any] = []
        for start in range(0, len(values), SQLITE_MIN_VARIABLE_LIMIT):
            chunk = list(values[start : start + SQLITE_MIN_VARIABLE_LIMIT])
            rows.extend(await self._read(self._read_rows, sql_template.format(", ".join("?" * len(chunk))), chunk))
        return rows

    async def count_calls(self) -> int:
        # count(*) walks the narrowest index: linear, but off the loop and only for status pages.
        return (await self._read(self._read_rows, COUNT_CALLS, ()))[0][0]

    async def count_ongoing_calls(self) -> int:
        return (await self._read(self._read_rows, COUNT_ONGOING_CALLS, ()))[0][0]

    async def quarantine_counts(self) -> dict[str, int]:
        """Quarantined lines per link name."""
        return dict(await self._read(self._read_rows, QUARANTINE_COUNTS, ()))

    async def journal_entries(
        self, link: str | None = None, after_seq: int = 0, limit: int = DEFAULT_PAGE_LIMIT
    ) -> list[JournalEntry]:
        """Journal lines with seq > after_seq in seq order, optionally of one link."""
        if link is None:
            rows = await self._read(self._read_rows, SELECT_JOURNAL, (after_seq, limit))
        else:
            rows = await self._read(self._read_rows, SELECT_JOURNAL_BY_LINK, (link, after_seq, limit))
        return _journal_entries(rows)

    async def quarantined(self, link: str | None = None, limit: int = DEFAULT_PAGE_LIMIT) -> list[QuarantineEntry]:
        """Quarantined lines in seq order (oldest first), optionally of one link."""
        if link is None:
            rows = await self._read(self._read_rows, SELECT_QUARANTINE, (limit,))
        else:
            rows = await self._read(self._read_rows, SELECT_QUARANTINE_BY_LINK, (link, limit))
        return [
            QuarantineEntry(seq, journal_seq, link_, datetime.fromtimestamp(at, UTC), bytes(raw), reason)
            for seq, journal_seq, link_, at, raw, reason in rows
        ]

    async def quarantined_page(self, link: str, before_seq: int | None, limit: int) -> list[QuarantineEntry]:
        """A link's quarantined lines, newest first, with seq below `before_seq` (None: from the newest)."""
        before = before_seq if before_seq is not None else 2**63 - 1
        rows = await self._read(self._read_rows, SELECT_QUARANTINE_PAGE, (link, before, limit))
        return [
            QuarantineEntry(seq, journal_seq, link_, datetime.fromtimestamp(at, UTC), bytes(raw), reason)
            for seq, journal_seq, link_, at, raw, reason in rows
        ]

    async def _read(self, function: Callable[..., T], *args: Any) -> T:
        loop = self._loop
        if self._state != _OPEN or loop is None or self._readers is None:
            raise StoreError(f"store {self._path} is not open")
        future: asyncio.Future[T] = loop.create_future()
        self._pending_reads.add(future)
        future.add_done_callback(self._pending_reads.discard)
        self._read_queue.put((function, args, future))
        return await future

    def _run_reader(self) -> None:
        """A reader thread: takes every read queued (up to READ_BATCH_MAX), runs them, settles them in one hop.

        Under load many lookups wait at once; answering them with one wake-up of the loop instead of
        one each is what keeps store lookups near the cost of the queries themselves.
        """
        loop = self._loop
        assert loop is not None
        while True:
            item = self._read_queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < READ_BATCH_MAX:
                try:
                    item = self._read_queue.get_nowait()
                except Empty:
                    break
                if item is None:
                    self._read_queue.put(None)  # keep the stop marker for this thread's next turn
                    break
                batch.append(item)
            results: list[_Result] = []
            for function, args, future in batch:
                try:
                    results.append((future, self._run_read(function, args), None))
                except Exception as error:  # noqa: BLE001 — handed to the awaiting coroutine
                    results.append((future, None, error))
            self._call_soon(loop, _settle_all, results)

    def _run_read(self, function: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return function(self._reader_connection(), *args)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: read failed: {exc}") from exc

    def _reader_connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._reader_local, "connection", None)
        if connection is None:
            connection = _connect(self._path)
            connection.execute("PRAGMA query_only = ON")
            self._reader_local.connection = connection
            with self._reader_connections_lock:
                self._reader_connections.append(connection)
        return connection

    # Each of these runs in a reader thread. Autocommit mode: a lone SELECT sees every commit made before it
    # started; several SELECTs that must agree share one read transaction.

    @staticmethod
    def _read_rows(connection: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
        return connection.execute(sql, params).fetchall()

    @staticmethod
    def _read_ids(connection: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[str]:
        return [call_id for (call_id,) in connection.execute(sql, params).fetchall()]

    @staticmethod
    def _read_call(connection: sqlite3.Connection, call_id: str) -> Call | None:
        connection.execute("BEGIN")
        try:
            return Store._read_call_in_transaction(connection, call_id)
        finally:
            connection.execute("COMMIT")

    @staticmethod
    def _read_call_in_transaction(connection: sqlite3.Connection, call_id: str) -> Call | None:
        row = connection.execute(SELECT_CALL, (call_id,)).fetchone()
        if row is None:
            return None
        parties = [number for _, number in connection.execute(SELECT_CALL_PARTIES, (call_id,)).fetchall()]
        recordings = [_recording_from_row(r) for r in connection.execute(SELECT_CALL_RECORDINGS, (call_id,)).fetchall()]
        return _call_from_row(row, parties, recordings)

    @staticmethod
    def _read_calls_by(connection: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Call]:
        """The calls an id query finds, read in full in the same read transaction (one trip to the thread)."""
        connection.execute("BEGIN")
        try:
            call_ids = [row[0] for row in connection.execute(sql, params).fetchall()]
            calls = [Store._read_call_in_transaction(connection, call_id) for call_id in call_ids]
        finally:
            connection.execute("COMMIT")
        return [call for call in calls if call is not None]

    @staticmethod
    def _read_ongoing_calls(connection: sqlite3.Connection) -> list[Call]:
        connection.execute("BEGIN")
        try:
            rows = connection.execute(SELECT_ONGOING_CALLS).fetchall()
            party_rows = connection.execute(SELECT_ONGOING_PARTIES).fetchall()
            recording_rows = connection.execute(SELECT_ONGOING_RECORDINGS).fetchall()
        finally:
            connection.execute("COMMIT")
        parties_by_call: dict[str, list[str]] = {}
        for call_id, number in party_rows:
            parties_by_call.setdefault(call_id, []).append(number)
        recordings_by_call: dict[str, list[Recording]] = {}
        for recording_row in recording_rows:
            recordings_by_call.setdefault(recording_row[1], []).append(_recording_from_row(recording_row))
        return [
            _call_from_row(row, parties_by_call.get(row[0], ()), recordings_by_call.get(row[0], [])) for row in rows
        ]


# ---- settling futures on the loop (these run on the loop thread)

_Result = tuple["asyncio.Future[Any] | None", Any, "BaseException | None"]
_Read = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


def _settle(future: asyncio.Future[Any] | None, value: Any, error: BaseException | None) -> None:
    if future is None or future.done():  # cancelled by its awaiter: the write happened anyway
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _settle_all(results: list[_Result]) -> None:
    for future, value, error in results:
        _settle(future, value, error)


def _rollback(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back (e.g. after an I/O error)


def _close_quietly(connection: sqlite3.Connection) -> None:
    try:
        connection.close()
    except sqlite3.Error as exc:
        log.warning("store connection close failed", error=str(exc))


def _last_of_old_prefix(
    rows: Iterable[tuple[int, float]], cutoff: float, spared: frozenset[int] = frozenset()
) -> tuple[int, int] | None:
    """Of (seq, received_at) rows in seq order: the seq of the last row before the first one not older than
    the cutoff, and how many rows that is (not counting `spared` ones, which are not deleted); None when there
    are none. Rows are read only up to the first young one, so a prune reads no more than it deletes (plus one
    and the spared) even after the clock was set back."""
    count, last_seq = 0, 0
    for seq, received_at in rows:
        if received_at >= cutoff:
            break
        if seq in spared:
            continue
        count, last_seq = count + 1, seq
    return (last_seq, count) if count else None


def _describe(kind: int, payload: Any) -> str:
    if kind == _PRUNE:
        return f"prune of {payload[0]}"
    if kind == _VACUUM:
        return f"incremental vacuum of {payload} pages"
    if kind == _APPEND_EVENTS:
        return f"append of {len(payload)} events"
    if kind == _SAVE_CALLS:
        snapshots = payload[0]
        return f"save call {snapshots[0].call_id}" if len(snapshots) == 1 else f"save {len(snapshots)} calls"
    if kind == _APPEND_JOURNAL:
        return f"journal append on link {payload[0]}"
    if kind == _APPEND_JOURNAL_MANY:
        return f"journal append of {len(payload)} lines on link {payload[0][0] if payload else '?'}"
    return f"quarantine on link {payload[1]}"
