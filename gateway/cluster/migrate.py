"""`gateway migrate-store`: a site's SQLite store file copied into the cluster database, as the calls of one node.

The file is only read (read-only connection, one read transaction: a consistent picture even if a gateway is still
writing to it); its rows become Calls through the store's own row mapping and go into PostgreSQL through the
shipper's own upsert (gateway.cluster.calls.save_snapshots), so a migrated call reads back exactly as the node's
shipper would have written it. Upserts throughout: running it again gives the same database.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import quote

import asyncpg

from gateway.cluster import schema
from gateway.cluster.calls import save_snapshots
from gateway.cluster.database import CONNECT_TIMEOUT_S, DATABASE_ERRORS, describe
from gateway.cluster.tokens import UPSERT_TOKEN
from gateway.errors import StoreError
from gateway.redact import redacted_url
from gateway.store import schema as store_schema
from gateway.store.connections import BUSY_TIMEOUT_MS
from gateway.store.rows import (
    CALL_COLUMNS,
    RECORDING_COLUMNS,
    CallSnapshot,
    call_from_row,
    recording_from_row,
    snapshot,
)

T = TypeVar("T")

BATCH_CALLS = 1000  # calls per PostgreSQL transaction: big enough to amortise the round trips, small to retry
PROGRESS_INTERVAL_S = 1.0  # at most one progress line per this long
# Any one statement of a batch (a thousand calls' upserts); far above what a healthy server needs.
STATEMENT_TIMEOUT_S = 60.0

# Read in call_id order, a page at a time; a page's parties and recordings by the range of its call ids, which is
# how both tables are keyed (call_parties' primary key, recordings_call_id), so no read sorts.
SELECT_CALL_PAGE = f"SELECT {CALL_COLUMNS} FROM calls WHERE call_id > ? ORDER BY call_id LIMIT ?"
SELECT_PARTY_RANGE = "SELECT call_id, number FROM call_parties WHERE call_id >= ? AND call_id <= ?"
SELECT_RECORDING_RANGE = (
    f"SELECT {RECORDING_COLUMNS} FROM recordings WHERE call_id >= ? AND call_id <= ?"
    " ORDER BY call_id, start_time, seq, rowid"
)
COUNT_CALLS = "SELECT count(*) FROM calls"
SELECT_SCHEMA_VERSION = "SELECT version FROM schema_version"
SELECT_UNEXPIRED_TOKENS = "SELECT digest, key_digest, user, expires_at FROM tokens WHERE expires_at > ?"
# What connecting can raise: the server's failures, and asyncpg's ValueError for a URL it cannot use.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, ValueError)
SELECT_OWNERS = "SELECT call_id, node FROM calls WHERE call_id = ANY($1::text[])"


class MigrationError(Exception):
    """Why the migration stopped: a sentence for the operator, never holding the database password."""


@dataclass(slots=True)
class MigrationResult:
    calls: int = 0  # calls read from the file
    new: int = 0  # not in the database before
    replaced: int = 0  # in the database already, as calls of this node: overwritten with the file's
    # Calls the database holds as another node's: left alone (one call has one owner), by that node.
    foreign: dict[str, int] = field(default_factory=dict)
    tokens: int = 0  # unexpired tokens copied
    schema_migrations: int = 0  # cluster schema migrations this run applied
    seconds: float = 0.0

    @property
    def copied(self) -> int:
        return self.new + self.replaced

    @property
    def rate(self) -> float:
        return self.copied / self.seconds if self.seconds > 0 else 0.0


class StoreFileReader:
    """The SQLite file, read-only, on a thread of its own (never on the event loop), in one read transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="migrate-store-reader")
        self._connection: sqlite3.Connection | None = None

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except sqlite3.Error as error:
            raise MigrationError(f"cannot read the store {self.path}: {error}") from error

    async def open(self) -> int:
        """Open the file and start the read transaction; how many calls it holds."""
        return await self._run(self._open)

    def _open(self) -> int:
        if not self.path.is_file():
            raise MigrationError(f"no store file {self.path}")
        # mode=ro: nothing is ever written to the file (a WAL file still needs its -shm, which SQLite manages).
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self._connection = connection
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        connection.execute("BEGIN")  # every read below sees the file as of the first one
        try:
            (version,) = connection.execute(SELECT_SCHEMA_VERSION).fetchone()
        except sqlite3.Error:
            raise MigrationError(f"{self.path} is not a gateway store (it has no schema_version table)") from None
        newest = len(store_schema.MIGRATIONS)
        if version != newest:
            newer_or_older = "a newer" if version > newest else "an older"
            advice = "upgrade this gateway" if version > newest else "start this gateway on it once to upgrade it"
            raise MigrationError(
                f"the store {self.path} has schema version {version}, {newer_or_older} one than this gateway's "
                f"({newest}): {advice}, then migrate"
            )
        return int(connection.execute(COUNT_CALLS).fetchone()[0])

    async def calls_after(self, call_id: str, limit: int) -> list[CallSnapshot]:
        """Up to `limit` calls with ids above `call_id`, in id order, as the rows their shipper would write."""
        return await self._run(self._calls_after, call_id, limit)

    def _calls_after(self, after: str, limit: int) -> list[CallSnapshot]:
        connection = self._connection
        assert connection is not None
        call_rows = connection.execute(SELECT_CALL_PAGE, (after, limit)).fetchall()
        if not call_rows:
            return []
        first, last = call_rows[0][0], call_rows[-1][0]
        parties: dict[str, list[str]] = {}
        for call_id, number in connection.execute(SELECT_PARTY_RANGE, (first, last)):
            parties.setdefault(call_id, []).append(number)
        recordings: dict[str, list[Any]] = {}
        for row in connection.execute(SELECT_RECORDING_RANGE, (first, last)):
            recordings.setdefault(row[1], []).append(recording_from_row(row))
        return [snapshot(call_from_row(row, parties.get(row[0], ()), recordings.get(row[0], []))) for row in call_rows]

    async def unexpired_tokens(self, now_epoch: float) -> list[tuple[bytes, bytes, str, float]]:
        return await self._run(self._unexpired_tokens, now_epoch)

    def _unexpired_tokens(self, now_epoch: float) -> list[tuple[bytes, bytes, str, float]]:
        assert self._connection is not None
        rows = self._connection.execute(SELECT_UNEXPIRED_TOKENS, (now_epoch,)).fetchall()
        return [(bytes(digest), bytes(key_digest), user, float(expires)) for digest, key_digest, user, expires in rows]

    async def close(self) -> None:
        if self._connection is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)  # its one thread is idle by now: the join returns at once

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()  # ends the read transaction: nothing to commit


async def copy_batch(
    connection: asyncpg.Connection, node: str, batch: Sequence[CallSnapshot], result: MigrationResult
) -> None:
    """Upsert one batch as calls of `node` in one transaction, counting new, replaced and other nodes' calls."""
    async with connection.transaction():
        owners = dict(await connection.fetch(SELECT_OWNERS, [item.call_id for item in batch]))
        mine = [item for item in batch if owners.get(item.call_id, node) == node]
        # Another node's call is not touched: save_snapshots would replace its parties too.
        await save_snapshots(connection, node, mine)
    for item in batch:
        owner = owners.get(item.call_id)
        if owner is None:
            result.new += 1
        elif owner == node:
            result.replaced += 1
        else:
            result.foreign[owner] = result.foreign.get(owner, 0) + 1
    result.calls += len(batch)


async def migrate_store(
    source: Path,
    url: str,
    node: str,
    out: TextIO,
    *,
    batch_calls: int = BATCH_CALLS,
    clock: Callable[[], float] = time.monotonic,
) -> MigrationResult:
    """Copy every call and unexpired token of the store file `source` into the database at `url` as node `node`;
    progress lines go to `out`. MigrationError says why it could not."""
    shown_url = redacted_url(url)
    result = MigrationResult()
    reader = StoreFileReader(source)
    try:
        total = await reader.open()
        try:
            connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S, command_timeout=STATEMENT_TIMEOUT_S)
        except CONNECT_ERRORS as error:
            raise MigrationError(
                f"cannot connect to the cluster database {shown_url}: {describe(error, url)}"
            ) from error
        try:
            result.schema_migrations = await schema.migrate(connection)
            print(f"copying {total:,} calls of {source} into {shown_url} as node {node}", file=out, flush=True)
            started = clock()
            last_shown = started
            next_batch = asyncio.ensure_future(reader.calls_after("", batch_calls))
            try:
                while batch := await next_batch:
                    # The file's next page is read while this one is written.
                    next_batch = asyncio.ensure_future(reader.calls_after(batch[-1].call_id, batch_calls))
                    await copy_batch(connection, node, batch, result)
                    now = clock()
                    if now - last_shown >= PROGRESS_INTERVAL_S:
                        last_shown = now
                        rate = result.calls / (now - started)
                        print(f"  {result.calls:,} of {total:,} calls ({rate:,.0f} calls/s)", file=out, flush=True)
            finally:
                if not next_batch.done():
                    next_batch.cancel()
                    await asyncio.gather(next_batch, return_exceptions=True)
            tokens = await reader.unexpired_tokens(time.time())
            if tokens:
                async with connection.transaction():
                    await connection.executemany(UPSERT_TOKEN, tokens)
            result.tokens = len(tokens)
            result.seconds = clock() - started
        except StoreError as error:  # its schema is newer than this gateway's
            raise MigrationError(f"the cluster database {shown_url}: {error}") from error
        except DATABASE_ERRORS as error:
            done = f" after {result.calls:,} calls" if result.calls else ""
            raise MigrationError(f"the cluster database {shown_url} failed{done}: {describe(error, url)}") from error
        finally:
            try:
                await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT_S)
            except DATABASE_ERRORS:
                connection.terminate()
    finally:
        await reader.close()
    return result


def summary(result: MigrationResult, source: Path, node: str) -> list[str]:
    """The closing lines: what was copied, how fast, and what was not."""
    lines = [
        f"copied {result.copied:,} calls of node {node} in {result.seconds:.1f} s ({result.rate:,.0f} calls/s):"
        f" {result.new:,} new, {result.replaced:,} replaced; {result.tokens:,} unexpired tokens"
    ]
    for owner, count in sorted(result.foreign.items()):
        lines.append(
            f"not copied: {count:,} calls the database already holds as calls of node {owner}"
            f" (was {source} migrated before as node {owner}? then run again with --node {owner})"
        )
    return lines
