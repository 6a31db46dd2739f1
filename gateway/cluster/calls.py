"""Every node's calls in PostgreSQL: written by their owner's shipper, read by any node's API.

The rows are the SQLite store's (gateway.store.rows: the same columns in the same order) plus the owning node,
so a call reads back exactly as its owner stores it.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from gateway.model import Call
from gateway.store.rows import CALL_COLUMNS, RECORDING_COLUMNS, CallSnapshot, call_from_row, recording_from_row

_CALL_NAMES = [name.strip() for name in CALL_COLUMNS.split(",")]
_RECORDING_NAMES = [name.strip() for name in RECORDING_COLUMNS.split(",")]


# Each column's PostgreSQL type: a batch is written as one array per column (unnest), one statement per table.
_CALL_TYPES = {
    **dict.fromkeys(_CALL_NAMES, "text"),
    **dict.fromkeys(("state", "kept", "do_not_delete", "awaiting_record"), "int"),
    **dict.fromkeys(("start_time", "connect_time", "end_time", "ring_s", "duration_s"), "float8"),
    "node": "text",
}
_RECORDING_TYPES = {
    **dict.fromkeys(_RECORDING_NAMES, "text"),
    **dict.fromkeys(("manual", "deleted", "seq", "discardable"), "int"),
    **dict.fromkeys(("start_time", "end_time"), "float8"),
}
_PARTY_TYPES = {"call_id": "text", "number": "text", "end_time": "float8"}


def _unnest_insert(table: str, types: dict[str, str], conflict: str) -> str:
    """INSERT of any number of rows given as one array per column: one statement whatever the batch's size (a
    row at a time, PostgreSQL's per-statement work set the pace of shipping a burst)."""
    names = list(types)
    arrays = ", ".join(f"${index}::{kind}[]" for index, kind in enumerate(types.values(), start=1))
    return f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM unnest({arrays}) {conflict}"


def _updates(names: list[str], key: str) -> str:
    return ", ".join(f"{name} = EXCLUDED.{name}" for name in names if name != key)


# A node never overwrites a call another node owns (ids are unique per store; this is the belt to those braces).
UPSERT_CALLS = _unnest_insert(
    "calls",
    _CALL_TYPES,
    f"ON CONFLICT (call_id) DO UPDATE SET {_updates(list(_CALL_TYPES), 'call_id')} WHERE calls.node = EXCLUDED.node",
)
UPSERT_RECORDINGS = _unnest_insert(
    "recordings",
    _RECORDING_TYPES,
    f"ON CONFLICT (recording_id) DO UPDATE SET {_updates(_RECORDING_NAMES, 'recording_id')}",
)
DELETE_PARTIES = "DELETE FROM call_parties WHERE call_id = ANY($1::text[])"
INSERT_PARTIES = _unnest_insert("call_parties", _PARTY_TYPES, "ON CONFLICT DO NOTHING")


def _columns(rows: Sequence[Sequence[object]], width: int) -> list[list[object]]:
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]


# A call with its parties and recordings in one statement: one round trip per read, whatever the number of calls.
_FULL_CALL = (
    f"SELECT {CALL_COLUMNS}, node,"
    " ARRAY(SELECT p.number FROM call_parties AS p WHERE p.call_id = c.call_id) AS parties,"
    f" ARRAY(SELECT ROW({RECORDING_COLUMNS}) FROM recordings AS r WHERE r.call_id = c.call_id"
    " ORDER BY r.start_time, r.seq) AS recordings"
    " FROM calls AS c"
)
SELECT_CALLS = f"{_FULL_CALL} WHERE c.call_id = ANY($1::text[])"
# $2: this node (its own calls are read from memory and its local store, never from here); $3: the nodes the
# caller may see (NULL: every node).
_NODES = "c.node <> $2 AND ($3::text[] IS NULL OR c.node = ANY($3::text[]))"
SELECT_ONGOING_OF = (
    "SELECT c.call_id FROM call_parties AS p JOIN calls AS c ON c.call_id = p.call_id"
    f" WHERE p.number = $1 AND p.end_time IS NULL AND c.state = 0 AND {_NODES} LIMIT 3"
)
SELECT_LAST_ENDED_OF = (
    "SELECT p.end_time, p.call_id FROM call_parties AS p JOIN calls AS c ON c.call_id = p.call_id"
    f" WHERE p.number = $1 AND p.end_time <= $4 AND c.state = 1 AND {_NODES} ORDER BY p.end_time DESC LIMIT 2"
)
# The same searches returning the calls in full, in one round trip (the id query as a subquery).
SELECT_ONGOING_CALLS_OF = f"{_FULL_CALL} WHERE c.call_id IN ({SELECT_ONGOING_OF})"
# The other nodes' call(s) of a number that ended last: ties are all returned (then the lookup is ambiguous).
SELECT_LAST_ENDED_CALLS_OF = (
    f"WITH last AS ({SELECT_LAST_ENDED_OF})"
    f" {_FULL_CALL} WHERE c.call_id IN (SELECT call_id FROM last WHERE end_time = (SELECT max(end_time) FROM last))"
)
SELECT_BY_PLATFORM_CALL_ID = f"SELECT c.call_id FROM calls AS c WHERE c.platform_call_id = $1 AND {_NODES} LIMIT 2"
SELECT_BY_NATIVE_ID = f"SELECT c.call_id FROM calls AS c WHERE c.native_id = $1 AND {_NODES} LIMIT 2"


async def save_snapshots(connection: asyncpg.Connection, node: str, snapshots: Sequence[CallSnapshot]) -> None:
    """Upsert the calls (their latest snapshot each), replacing their parties; inside the caller's transaction.
    Four statements for any number of calls."""
    latest = {snapshot.call_id: snapshot for snapshot in snapshots}
    if not latest:
        return
    await connection.execute(DELETE_PARTIES, list(latest))
    call_rows = [(*snapshot.call_row, node) for snapshot in latest.values()]
    await connection.execute(UPSERT_CALLS, *_columns(call_rows, len(_CALL_TYPES)))
    parties = [row for snapshot in latest.values() for row in snapshot.party_rows]
    if parties:
        await connection.execute(INSERT_PARTIES, *_columns(parties, len(_PARTY_TYPES)))
    # The latest row of each recording: one INSERT … ON CONFLICT may not touch a row twice.
    recordings = {row[0]: row for snapshot in latest.values() for row in snapshot.recording_rows}
    if recordings:
        await connection.execute(UPSERT_RECORDINGS, *_columns(list(recordings.values()), len(_RECORDING_TYPES)))


async def read_calls(connection: asyncpg.Connection, call_ids: Sequence[str]) -> list[Call]:
    """The calls with these ids, in full, in the order asked (those that exist)."""
    if not call_ids:
        return []
    ids = list(dict.fromkeys(call_ids))
    by_id = {call.call_id: call for call in calls_from_rows(await connection.fetch(SELECT_CALLS, ids))}
    return [by_id[call_id] for call_id in ids if call_id in by_id]


def calls_from_rows(rows: Sequence[asyncpg.Record]) -> list[Call]:
    """Rows of a `_FULL_CALL` statement as the model's calls, each with its owning node."""
    found = []
    for row in rows:
        values = tuple(row)
        recordings = [recording_from_row(recording) for recording in values[-1]]
        call = call_from_row(values[: len(_CALL_NAMES)], values[-2], recordings)
        call.node = values[len(_CALL_NAMES)]
        found.append(call)
    return found
