"""The Store: the gateway's SQLite (WAL) file of calls, recordings, the raw line journal, the quarantine, the
event feed and API tokens, as the rest of the gateway sees it: open/close, writes queued to the writer thread, reads run in
the reader pool. Never touches the database on the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway.errors import StoreError
from gateway.events import LinkProgress
from gateway.feed import FeedEvent
from gateway.journal import JournalEntry
from gateway.model import Call
from gateway.store import queries, rows
from gateway.store.prune import PRUNABLE_TABLES
from gateway.store.readers import ReaderPool
from gateway.store.rows import QuarantineEntry, StoreSpace, epoch, raw_bytes, snapshot
from gateway.store.statements import SQLITE_MIN_VARIABLE_LIMIT
from gateway.store.writer import (
    APPEND_EVENTS,
    APPEND_JOURNAL_MANY,
    DEFAULT_BATCH_MAX,
    PRUNE,
    PRUNE_TOKENS,
    PUT_TOKEN,
    QUARANTINE,
    SAVE_CALLS,
    STOP,
    VACUUM,
    Writer,
)
from gateway.tokens import StoredToken

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_LOOKUP_LIMIT = 2  # callers ask for two to tell "one hit" from "ambiguous"
DEFAULT_PAGE_LIMIT = 1000
NO_SEQ_ABOVE = 2**63 - 1  # above every seq SQLite gives (a signed 64-bit rowid)

_NEW, _OPENING, _OPEN, _CLOSING, _CLOSED = range(5)


class Store:
    """The gateway's SQLite store. Writes are group-committed by one thread; reads run in a small pool."""

    def __init__(self, path: str | Path, *, batch_max: int = DEFAULT_BATCH_MAX, sync: str = "full") -> None:
        if sync not in ("full", "normal"):
            raise ValueError(f"sync must be full or normal, not {sync!r}")
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self._path = Path(path)
        self._state = _NEW
        # Guards state + queue.put together, so nothing can be queued behind the stop marker.
        self._state_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer = Writer(self._path, sync=sync, batch_max=batch_max)
        self._readers = ReaderPool(self._path)
        self._closed: asyncio.Future[None] | None = None
        self.tokens = TokenTable(self)

    @property
    def instance_id(self) -> int:
        """This store's random id (made with the file): call ids derived from journal lines include it."""
        return self._writer.instance_id

    @property
    def path(self) -> Path:
        return self._path

    @property
    def write_error(self) -> str | None:
        """Why the last write failed, until one succeeds again (/healthz reports it)."""
        return self._writer.write_error

    # ---- lifecycle

    async def open(self) -> None:
        """Create the folder and database, apply migrations and start the writer thread."""
        if self._state != _NEW:
            raise StoreError(f"store {self._path} was already opened")
        self._state = _OPENING
        loop = asyncio.get_running_loop()
        self._loop = loop
        ready: asyncio.Future[None] = loop.create_future()
        self._writer.start(loop, ready, before_close=self._readers.stop)
        try:
            await ready
        except BaseException:
            # Startup failed or open() was cancelled: the thread must not outlive us either way.
            self._writer.queue.put(STOP)
            self._state = _CLOSED
            raise
        if self._state != _OPENING:
            raise StoreError(f"store {self._path} was closed while opening")
        self._readers.start(loop)
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
            if self._readers.pending:
                await asyncio.gather(*self._readers.pending, return_exceptions=True)
            # The writer drains the queue up to this marker, commits, then closes every connection itself
            # (the last close checkpoints the WAL: disk work that must not run on the loop).
            self._writer.queue.put(STOP)
            await self._writer.stopped()
        finally:
            self._state = _CLOSED
            self._closed.set_result(None)
        log.debug("store closed", path=str(self._path))

    # ---- writes

    def save_call_soon(self, call: Call) -> asyncio.Future[None]:
        """Queue an upsert of the call, its parties and recordings; the future resolves once committed."""
        return self._submit(SAVE_CALLS, ([snapshot(call)], ()))

    async def save_call(self, call: Call) -> None:
        await self.save_call_soon(call)

    def save_calls_soon(self, calls: Iterable[Call], progress: Iterable[LinkProgress] = ()) -> asyncio.Future[None]:
        """Queue several calls as one write (snapshots taken now); one future for all, resolved once committed.

        `progress` is committed in the same transaction: how far each link's journal had been applied when
        the snapshots were taken, so that after a crash exactly the lines after it are replayed.
        """
        progress_rows = tuple([rows.progress_row(item) for item in progress])
        return self._submit(SAVE_CALLS, ([snapshot(call) for call in calls], progress_rows))

    def append_journal_many_soon(
        self, link: str, lines: Iterable[tuple[datetime, bytes] | tuple[datetime, bytes, str | None]]
    ) -> asyncio.Future[list[int]]:
        """Queue raw lines of one link as one write; resolves to their seqs, in order, once committed.
        A line is (received_at, raw) or (received_at, raw, framing error)."""
        journal_rows = []
        last_at: datetime | None = None
        seconds: float | None = None
        for line in lines:
            received_at = line[0]
            if received_at is not last_at:  # the lines of one read share their arrival time
                last_at, seconds = received_at, epoch(received_at)
            journal_rows.append((link, seconds, raw_bytes(line[1]), line[2] if len(line) > 2 else None))
        return self._submit(APPEND_JOURNAL_MANY, journal_rows)

    async def quarantine(
        self, link: str, received_at: datetime, raw: bytes, reason: str, journal_seq: int | None = None
    ) -> None:
        await self._submit(QUARANTINE, (journal_seq, link, epoch(received_at), raw_bytes(raw), reason))

    # ---- retention (gateway/retention.py decides when; what is never pruned: docs/configuration.md)

    async def prune(self, table: str, older_than: datetime, limit: int) -> int:
        """Delete up to `limit` rows of one table (PRUNE_CALLS, PRUNE_JOURNAL, PRUNE_QUARANTINE or PRUNE_EVENTS)
        older than the cutoff, oldest first, in one short write; how many went. A call goes with its parties and
        recordings."""
        if table not in PRUNABLE_TABLES:
            raise ValueError(f"cannot prune {table!r}")
        return await self._submit(PRUNE, (table, epoch(older_than), limit))

    async def incremental_vacuum(self, pages: int) -> int:
        """Give up to `pages` free pages back to the OS (a no-op without incremental auto-vacuum); pages still free."""
        return await self._submit(VACUUM, pages)

    async def space(self) -> StoreSpace:
        """Size of the database in pages, how many are free, and whether incremental auto-vacuum is on."""
        return rows.store_space((await self._read(queries.read_rows, queries.SELECT_SPACE, ()))[0])

    # ---- the event feed (gateway.feed.EventLog)

    def append_events_soon(self, events: Sequence[FeedEvent]) -> asyncio.Future[None]:
        """Queue events (their seqs given) as one write; resolves once committed. Written again with the same
        seqs after a failure, an event replaces itself."""
        return self._submit(APPEND_EVENTS, [rows.event_row(event) for event in events])

    async def events_after(self, seq: int, limit: int) -> list[FeedEvent]:
        return rows.feed_events(await self._read(queries.read_rows, queries.SELECT_EVENTS_AFTER, (seq, limit)))

    async def last_event_seq(self) -> int:
        """The highest event seq ever given (0: none), also when every event has been pruned since."""
        found = await self._read(queries.read_rows, queries.SELECT_LAST_EVENT_SEQ, ())
        return int(found[0][0]) if found else 0

    # ---- API tokens (gateway.tokens; `tokens` is this store as a TokenStore)

    async def put_token(self, grant: StoredToken) -> None:
        """Keep an issued token; returns once committed (and, with sync full, fsynced)."""
        await self._submit(PUT_TOKEN, (grant.digest, grant.key_digest, grant.user, grant.expires_at))

    async def get_token(self, digest: bytes) -> StoredToken | None:
        found = await self._read(queries.read_rows, queries.SELECT_TOKEN, (digest,))
        if not found:
            return None
        stored_digest, key_digest, user, expires_at = found[0]
        return StoredToken(bytes(stored_digest), bytes(key_digest), user, float(expires_at))

    async def prune_tokens(self, now_epoch: float, limit: int) -> int:
        """Delete up to `limit` tokens expired at `now_epoch` (UTC epoch seconds), in one short write; how many went."""
        return await self._submit(PRUNE_TOKENS, (now_epoch, limit))

    def _submit(self, kind: int, payload: Any) -> asyncio.Future[Any]:
        loop = self._loop
        with self._state_lock:
            if self._state != _OPEN or loop is None:
                raise StoreError(f"store {self._path} is not open")
            future: asyncio.Future[Any] = loop.create_future()
            self._writer.queue.put((kind, payload, future))
        return future

    # ---- reads

    async def get_call(self, call_id: str) -> Call | None:
        """The full call with its recordings (by start time, then insertion) and parties, or None."""
        return await self._read(queries.read_call, call_id)

    async def call_ids_by_platform_call_id(self, platform_call_id: str, limit: int = DEFAULT_LOOKUP_LIMIT) -> list[str]:
        """Calls carrying this PBX call id, oldest stored first."""
        return await self._read(queries.read_ids, queries.SELECT_BY_PLATFORM_CALL_ID, (platform_call_id, limit))

    async def call_ids_by_native_id(self, native_id: str, limit: int = DEFAULT_LOOKUP_LIMIT) -> list[str]:
        """Calls carrying this recorder call id, oldest stored first."""
        return await self._read(queries.read_ids, queries.SELECT_BY_NATIVE_ID, (native_id, limit))

    async def calls_by_platform_call_id(self, platform_call_id: str, limit: int = DEFAULT_LOOKUP_LIMIT) -> list[Call]:
        """Like call_ids_by_platform_call_id, with each call read in full in the same trip."""
        return await self._read(queries.read_calls_by, queries.SELECT_BY_PLATFORM_CALL_ID, (platform_call_id, limit))

    async def calls_by_native_id(self, native_id: str, limit: int = DEFAULT_LOOKUP_LIMIT) -> list[Call]:
        """Like call_ids_by_native_id, with each call read in full in the same trip."""
        return await self._read(queries.read_calls_by, queries.SELECT_BY_NATIVE_ID, (native_id, limit))

    async def last_ended_call_ids(
        self, extension: str, limit: int = DEFAULT_LOOKUP_LIMIT, *, ended_by: datetime | None = None
    ) -> list[tuple[datetime, str]]:
        """Finished calls that `extension` was a party to and that ended by `ended_by` (default: now), newest end
        first."""
        bound = epoch(ended_by or datetime.now(UTC))
        found = await self._read(queries.read_rows, queries.SELECT_LAST_ENDED, (extension, bound, limit))
        return [(datetime.fromtimestamp(end_time, UTC), call_id) for end_time, call_id in found]

    async def expired_on_demand_call_ids(self, ended_before: datetime, limit: int) -> list[str]:
        """Calls of on-demand recordings that ended before the cutoff, unkept, unprotected and not yet deleted.

        Oldest recording first; at most `limit` calls (fewer when one call has several such recordings).
        """
        call_ids = await self._read(queries.read_ids, queries.SELECT_DISCARDABLE, (epoch(ended_before), limit))
        return list(dict.fromkeys(call_ids))

    async def load_ongoing_calls(self) -> list[Call]:
        """Every call still ONGOING, in full (what the tracker reloads after a restart)."""
        return await self._read(queries.read_ongoing_calls)

    async def load_open_calls(self, awaiting_since: datetime) -> list[Call]:
        """Finished calls the tracker still has business with (a multi-record call or a transfer leg that more
        may join), and recorder calls since `awaiting_since` still waiting for their PBX record; in full."""
        return await self._read(queries.read_calls_by, queries.SELECT_OPEN_CALL_IDS, (epoch(awaiting_since),))

    async def link_progress(self) -> dict[str, LinkProgress]:
        """How far each link's journal had been applied at the last commit."""
        return rows.link_progress_from_rows(await self._read(queries.read_rows, queries.SELECT_LINK_PROGRESS, ()))

    async def journal_lines(self, seqs: Sequence[int]) -> list[JournalEntry]:
        """The journal lines with these seqs (those still there), in seq order."""
        found = await self._rows_where_in(queries.SELECT_JOURNAL_SEQS, seqs)
        return sorted(rows.journal_entries(found), key=lambda entry: entry.seq)

    async def get_calls(self, call_ids: Sequence[str]) -> list[Call]:
        """The calls with these ids that the store holds, in full (a read transaction per SQLite variable limit
        of them, not a trip to the reader threads per call)."""
        return await self._where_in(queries.read_calls_by, queries.SELECT_EXISTING_CALL_IDS, call_ids)

    async def existing_call_ids(self, call_ids: Sequence[str]) -> set[str]:
        """Which of these calls the store holds."""
        found = await self._rows_where_in(queries.SELECT_EXISTING_CALL_IDS, call_ids)
        return {call_id for (call_id,) in found}

    async def _rows_where_in(self, sql_template: str, values: Sequence[Any]) -> list[Any]:
        return await self._where_in(queries.read_rows, sql_template, values)

    async def _where_in(
        self, read: Callable[[Any, str, Sequence[Any]], list[T]], sql_template: str, values: Sequence[Any]
    ) -> list[T]:
        """What `read` makes of `sql_template` (its `{}` an IN list) for all `values`, a statement per
        SQLITE_MIN_VARIABLE_LIMIT of them."""
        found: list[T] = []
        for start in range(0, len(values), SQLITE_MIN_VARIABLE_LIMIT):
            chunk = list(values[start : start + SQLITE_MIN_VARIABLE_LIMIT])
            sql = sql_template.format(", ".join("?" * len(chunk)))
            found.extend(await self._read(read, sql, chunk))
        return found

    async def count_calls(self) -> int:
        # count(*) walks the narrowest index: linear, but off the loop and only for status pages.
        return (await self._read(queries.read_rows, queries.COUNT_CALLS, ()))[0][0]

    async def quarantine_counts(self) -> dict[str, int]:
        """Quarantined lines per link name."""
        return dict(await self._read(queries.read_rows, queries.QUARANTINE_COUNTS, ()))

    async def journal_entries(
        self, link: str | None = None, after_seq: int = 0, limit: int = DEFAULT_PAGE_LIMIT
    ) -> list[JournalEntry]:
        """Journal lines with seq > after_seq in seq order, optionally of one link."""
        if link is None:
            found = await self._read(queries.read_rows, queries.SELECT_JOURNAL, (after_seq, limit))
        else:
            found = await self._read(queries.read_rows, queries.SELECT_JOURNAL_BY_LINK, (link, after_seq, limit))
        return rows.journal_entries(found)

    async def quarantined_page(
        self, link: str, before_seq: int | None = None, limit: int = DEFAULT_PAGE_LIMIT
    ) -> list[QuarantineEntry]:
        """A link's quarantined lines, newest first, with seq below `before_seq` (None: from the newest)."""
        before = before_seq if before_seq is not None else NO_SEQ_ABOVE
        found = await self._read(queries.read_rows, queries.SELECT_QUARANTINE_PAGE, (link, before, limit))
        return rows.quarantine_entries(found)

    async def _read(self, function: Callable[..., T], *args: Any) -> T:
        if self._state != _OPEN or self._loop is None:
            raise StoreError(f"store {self._path} is not open")
        return await self._readers.submit(function, args)


class TokenTable:
    """The store's token table as a gateway.tokens.TokenStore (the Store's own `prune` is retention's)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def put(self, grant: StoredToken) -> None:
        await self._store.put_token(grant)

    async def get(self, digest: bytes) -> StoredToken | None:
        return await self._store.get_token(digest)

    async def prune(self, now_epoch: float, limit: int) -> int:
        return await self._store.prune_tokens(now_epoch, limit)
