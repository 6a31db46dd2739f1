"""Every node's calls in PostgreSQL: written by their owner's shipper, read by any node's API.

The rows are the SQLite store's (gateway.store.rows: the same columns in the same order) plus the owning node,
so a call reads back exactly as its owner stores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from gateway.model import Call
from gateway.store.rows import CALL_COLUMNS, RECORDING_COLUMNS, CallSnapshot, call_from_row, recording_from_row

_CALL_NAMES = [name.strip() for name in CALL_COLUMNS.split(",")]
_RECORDING_NAMES = [name.strip() for name in RECORDING_COLUMNS.split(",")]


def _upsert(table: str, names: list[str], key: str, guard: str = "") -> str:
    placeholders = ", ".join(f"${index}" for index in range(1, len(names) + 1))
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in names if name != key)
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders})"
        f" ON CONFLICT ({key}) DO UPDATE SET {updates}{guard}"
    )


# A node never overwrites a call another node owns (ids are unique per store; this is the belt to those braces).
UPSERT_CALL = _upsert("calls", [*_CALL_NAMES, "node"], "call_id", " WHERE calls.node = EXCLUDED.node")
UPSERT_RECORDING = _upsert("recordings", _RECORDING_NAMES, "recording_id")
DELETE_PARTIES = "DELETE FROM call_parties WHERE call_id = ANY($1::text[])"
INSERT_PARTY = "INSERT INTO call_parties (call_id, number, end_time) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"

SELECT_CALLS = f"SELECT {CALL_COLUMNS}, node FROM calls WHERE call_id = ANY($1::text[])"
SELECT_PARTIES = "SELECT call_id, number FROM call_parties WHERE call_id = ANY($1::text[])"
SELECT_RECORDINGS = (
    f"SELECT {RECORDING_COLUMNS} FROM recordings WHERE call_id = ANY($1::text[]) ORDER BY call_id, start_time, seq"
)
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
SELECT_BY_PLATFORM_CALL_ID = f"SELECT c.call_id FROM calls AS c WHERE c.platform_call_id = $1 AND {_NODES} LIMIT 2"
SELECT_BY_NATIVE_ID = f"SELECT c.call_id FROM calls AS c WHERE c.native_id = $1 AND {_NODES} LIMIT 2"


async def save_snapshots(connection: asyncpg.Connection, node: str, snapshots: Sequence[CallSnapshot]) -> None:
    """Upsert the calls (their latest snapshot each), replacing their parties; inside the caller's transaction."""
    latest = {snapshot.call_id: snapshot for snapshot in snapshots}
    if not latest:
        return
    await connection.execute(DELETE_PARTIES, list(latest))
    await connection.executemany(UPSERT_CALL, [(*snapshot.call_row, node) for snapshot in latest.values()])
    parties = [row for snapshot in latest.values() for row in snapshot.party_rows]
    if parties:
        await connection.executemany(INSERT_PARTY, parties)
    recordings = [row for snapshot in latest.values() for row in snapshot.recording_rows]
    if recordings:
        await connection.executemany(UPSERT_RECORDING, recordings)


async def read_calls(connection: asyncpg.Connection, call_ids: Sequence[str]) -> list[Call]:
    """The calls with these ids, in full, in the order asked (those that exist)."""
    if not call_ids:
        return []
    ids = list(dict.fromkeys(call_ids))
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        call_rows = await connection.fetch(SELECT_CALLS, ids)
        party_rows = await connection.fetch(SELECT_PARTIES, ids)
        recording_rows = await connection.fetch(SELECT_RECORDINGS, ids)
    parties: dict[str, list[str]] = {}
    for call_id, number in party_rows:
        parties.setdefault(call_id, []).append(number)
    recordings: dict[str, list[Any]] = {}
    for row in recording_rows:
        recordings.setdefault(row[1], []).append(recording_from_row(row))
    by_id: dict[str, Call] = {}
    for row in call_rows:
        call = call_from_row(tuple(row)[:-1], parties.get(row[0], ()), recordings.get(row[0], []))
        call.node = row[-1]
        by_id[call.call_id] = call
    return [by_id[call_id] for call_id in ids if call_id in by_id]
