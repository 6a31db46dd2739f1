"""The writer engine: one thread takes queued ops, group-commits them in batches and settles their futures.

An op that fails fails only its own future (the batch is retried one savepoint per op); `write_error` says why
writes are failing until one succeeds again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import structlog

from gateway.errors import StoreError
from gateway.store import prune, schema, writes
from gateway.store.checkpointer import Checkpointer
from gateway.store.connections import close_quietly, connect, rollback
from gateway.store.handoff import Result, call_soon, settle, settle_all
from gateway.store.rows import CallSnapshot
from gateway.store.statements import SQLITE_MIN_VARIABLE_LIMIT

log = structlog.get_logger(__name__)

DEFAULT_BATCH_MAX = 2000  # ops per transaction: big enough to amortise the fsync, small enough to bound latency
# The writer's page cache. Call and recording ids are random GUIDs, so a batch of inserts lands on pages all
# over four indexes; with SQLite's 2 MiB default those pages are re-read from the OS for every batch.
WRITER_CACHE_KIB = 64 * 1024
# Pages of WAL (64 MiB) at which the writer checkpoints by itself: a safety net should the checkpoint thread
# fall behind; SQLite's 1000 would make the writer do the work again.
WAL_AUTOCHECKPOINT_PAGES = 16000

# ---- the writer's operations (kind, payload)

QUARANTINE = 2  # payload: a quarantine row
# One queue entry and one future for any number of calls (a single save is a batch of one): per-call
# futures and callbacks cost more event-loop time than the rows' SQL at SMDR ingest rates.
SAVE_CALLS = 3  # payload: (call snapshots, link progress rows)
APPEND_JOURNAL_MANY = 4  # payload: journal rows of one link → their seqs
# Retention: one batch of deletions (payload: which table, cutoff epoch, row limit) → rows deleted; and one step of
# incremental vacuum (payload: pages) → pages still free. Both are short and share a transaction with whatever
# else the writer commits at that moment, like every other op.
PRUNE = 5
VACUUM = 6
APPEND_EVENTS = 7  # payload: event rows
PUT_TOKEN = 8  # payload: a tokens row
PRUNE_TOKENS = 9  # payload: (now epoch, row limit) → tokens deleted

# (kind, payload, future); the future is None only for the stop marker.
Op = tuple[int, Any, "asyncio.Future[Any] | None"]
STOP: Op = (-1, None, None)


class Writer:
    """The store's one writer thread. Ops go in `queue`; STOP, queued last, makes it commit what is left, run
    `before_close` (the readers stop) and close the last connection, which checkpoints the WAL."""

    def __init__(self, path: Path, *, sync: str, batch_max: int) -> None:
        self._path = path
        self._sync = sync
        self._batch_max = batch_max
        self._max_variables = SQLITE_MIN_VARIABLE_LIMIT  # the writer connection's own limit, once it is open
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._done: asyncio.Future[None] | None = None
        self.queue: SimpleQueue[Op] = SimpleQueue()
        self.instance_id = 0  # read from the file at open
        # Why the last write failed, until one succeeds again (set by the writer thread, read by /healthz).
        self.write_error: str | None = None

    def start(
        self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None], before_close: Callable[[], None]
    ) -> None:
        """Start the thread; `ready` resolves once the database is open and migrated (or fails with why not)."""
        self._loop = loop
        self._done = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready, before_close), name="store-writer", daemon=True)
        self._thread.start()

    async def stopped(self) -> None:
        """Return once the thread has committed everything up to STOP and closed every connection."""
        assert self._done is not None
        await asyncio.shield(self._done)
        if self._thread is not None:
            self._thread.join()  # the thread has signalled its last act; this returns at once

    def _run(self, ready: asyncio.Future[None], before_close: Callable[[], None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            connection = self._open_connection()
        except Exception as exc:  # noqa: BLE001 — any failure here means the store cannot open
            error = exc
            if not isinstance(exc, StoreError):
                error = StoreError(f"cannot open store {self._path}: {exc}")
                error.__cause__ = exc
            call_soon(loop, settle, ready, None, error)
            call_soon(loop, settle, self._done, None, None)
            return
        call_soon(loop, settle, ready, None, None)
        checkpointer = Checkpointer(self._path, self._sync)
        try:
            self._write_until_stopped(connection)
        finally:
            checkpointer.stop()
            # Readers first (their pool is idle: close() waited for every read), so the writer's close is the
            # last one and checkpoints the WAL back into the database file.
            before_close()
            close_quietly(connection)
            call_soon(loop, settle, self._done, None, None)

    def _open_connection(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        connection = connect(self._path)
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
            schema.migrate(connection, self._path)
            self.instance_id = schema.instance_id(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _write_until_stopped(self, connection: sqlite3.Connection) -> None:
        loop = self._loop
        assert loop is not None
        cursor = connection.cursor()
        batch_max = self._batch_max
        queue = self.queue
        stopping = False
        # The stop marker is the last thing ever queued (the store queues nothing once closing), so the batch
        # holding it empties the queue.
        while not stopping:
            batch: list[Op] = [queue.get()]
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
                rollback(connection)
                error = StoreError(f"store {self._path}: internal error in the writer")
                results = [(op[2], None, error) for op in ops]
            # One hop to the loop per batch, not per op.
            call_soon(loop, settle_all, results)

    def _write_batch(self, connection: sqlite3.Connection, cursor: sqlite3.Cursor, ops: list[Op]) -> list[Result]:
        """Commit a batch in one transaction; each op's result or error, in order."""
        try:
            results = self._apply_fast(cursor, ops)
        except Exception:  # noqa: BLE001 — some op failed; find which, one savepoint each
            rollback(connection)
            try:
                results = self._apply_isolated(cursor, ops)
            except Exception as exc:  # noqa: BLE001 — BEGIN or COMMIT itself failed: nothing was stored
                rollback(connection)
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

    def _apply_fast(self, cursor: sqlite3.Cursor, ops: list[Op]) -> list[Result]:
        # The common case: nothing fails, so no savepoint per op, and the batch's journal lines and call saves
        # go in as one row set each. Statements, not rows, set the writer's pace under load: each gives the GIL
        # up while SQLite runs and must take it back, which waits for the busy event loop to yield it.
        cursor.execute("BEGIN IMMEDIATE")
        values: list[Any] = []
        snapshots: list[CallSnapshot] = []
        progress_rows: list[tuple[Any, ...]] = []
        journal_rows: list[tuple[Any, ...]] = []
        journal_ops: list[tuple[int, int, int]] = []  # (index in values, first row, rows) of each journal op
        for kind, payload, _ in ops:
            value: Any = None
            if kind == SAVE_CALLS:
                snapshots.extend(payload[0])
                progress_rows.extend(payload[1])
            elif kind == APPEND_JOURNAL_MANY:
                journal_ops.append((len(values), len(journal_rows), len(payload)))
                journal_rows.extend(payload)
                value = []
            else:
                value = self._apply(cursor, kind, payload)
            values.append(value)
        if snapshots:
            writes.save_snapshots(cursor, snapshots, self._max_variables)
        if progress_rows:
            writes.save_progress(cursor, progress_rows, self._max_variables)
        if journal_rows:
            first_seq = writes.append_journal_rows(cursor, journal_rows, self._max_variables)
            for index, first_row, rows in journal_ops:
                seq = first_seq + first_row
                values[index] = list(range(seq, seq + rows))
        cursor.execute("COMMIT")
        return [(future, value, None) for (_, _, future), value in zip(ops, values)]

    def _apply_isolated(self, cursor: sqlite3.Cursor, ops: list[Op]) -> list[Result]:
        cursor.execute("BEGIN IMMEDIATE")
        results: list[Result] = []
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
        if kind == SAVE_CALLS:
            if payload[0]:
                writes.save_snapshots(cursor, payload[0], self._max_variables)
            writes.save_progress(cursor, payload[1], self._max_variables)
            return None
        if kind == APPEND_JOURNAL_MANY:
            if not payload:
                return []
            first_seq = writes.append_journal_rows(cursor, payload, self._max_variables)
            return list(range(first_seq, first_seq + len(payload)))
        if kind == QUARANTINE:
            writes.insert_quarantine(cursor, payload)
            return None
        if kind == APPEND_EVENTS:
            writes.insert_events(cursor, payload, self._max_variables)
            return None
        if kind == PRUNE:
            table, cutoff, limit = payload
            return prune.prune(cursor, table, cutoff, limit, self._max_variables)
        if kind == VACUUM:
            return prune.vacuum_step(cursor, payload)
        if kind == PUT_TOKEN:
            writes.insert_token(cursor, payload)
            return None
        if kind == PRUNE_TOKENS:
            return prune.prune_tokens(cursor, *payload)
        raise AssertionError(f"unknown store op {kind}")


def _describe(kind: int, payload: Any) -> str:
    if kind == PRUNE:
        return f"prune of {payload[0]}"
    if kind == VACUUM:
        return f"incremental vacuum of {payload} pages"
    if kind == APPEND_EVENTS:
        return f"append of {len(payload)} events"
    if kind == PUT_TOKEN:
        return "save of an API token"  # its row is digests, but no digest goes into a message either
    if kind == PRUNE_TOKENS:
        return "prune of expired API tokens"
    if kind == SAVE_CALLS:
        snapshots = payload[0]
        return f"save call {snapshots[0].call_id}" if len(snapshots) == 1 else f"save {len(snapshots)} calls"
    if kind == APPEND_JOURNAL_MANY:
        return f"journal append of {len(payload)} lines on link {payload[0][0] if payload else '?'}"
    return f"quarantine on link {payload[1]}"
