"""Who is in the cluster: each node's row (heartbeat, watermark, recorders), the extensions it publishes, and
whether it is running — its session holds its advisory lock and its heartbeat is fresh."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.cluster.database import Database
from gateway.cluster.listener import node_lock_key
from gateway.errors import ClusterUnavailable

# A node whose heartbeat is older than this is down even if its session lingers (a hung process).
DEAD_AFTER_S = 5.0
DIRECTORY_TTL_S = 2.0
SELECT_DIRECTORY = "SELECT number, node FROM node_extensions"  # how long the extension directory read from the database is used before reading it again

NOW = "extract(epoch from clock_timestamp())"  # the database's clock: the one every node agrees on
_LOCKED_SQL = (
    "EXISTS (SELECT 1 FROM pg_locks AS l WHERE l.locktype = 'advisory' AND l.granted"
    " AND l.classid = $2::bigint::oid AND l.objid = $3::bigint::oid AND l.objsubid = 2)"
)


@dataclass(frozen=True, slots=True)
class PublishedExtension:
    number: str
    mode: str
    recorder: str | None


@dataclass(frozen=True, slots=True)
class NodeState:
    node: str
    running: bool
    heartbeat_age_s: float | None
    shipped_seq: int
    recorders: Mapping[str, Mapping[str, object]]

    def as_dict(self) -> dict[str, object]:
        return {
            "running": self.running,
            "heartbeatAgeS": None if self.heartbeat_age_s is None else round(self.heartbeat_age_s, 2),
            "shippedSeq": self.shipped_seq,
            "recorders": dict(self.recorders),
        }


async def join(
    connection: asyncpg.Connection,
    node: str,
    instance: str,
    store_instance: str,
    extensions: Sequence[PublishedExtension],
    recorders: Mapping[str, Mapping[str, object]],
) -> int:
    """Write this node's row and its extensions (replacing what an earlier run published); the watermark to ship
    from: the stored one, unless the local store is another one than the watermark counted (then from 0)."""
    async with connection.transaction():
        # The watermark stays while the local store is the one it counted (a shipper may be moving it right now),
        # and starts again at 0 for another one.
        shipped = await connection.fetchval(
            f"INSERT INTO nodes (node, instance, store_instance, started_at, heartbeat_at, shipped_seq, recorders)"
            f" VALUES ($1, $2, $3, {NOW}, {NOW}, 0, $4::jsonb)"
            " ON CONFLICT (node) DO UPDATE SET instance = EXCLUDED.instance, store_instance = EXCLUDED.store_instance,"
            " started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, recorders = EXCLUDED.recorders,"
            " shipped_seq = CASE WHEN nodes.store_instance = EXCLUDED.store_instance THEN nodes.shipped_seq ELSE 0 END"
            " RETURNING shipped_seq",
            node,
            instance,
            store_instance,
            json.dumps(recorders),
        )
        await connection.execute("DELETE FROM node_extensions WHERE node = $1", node)
        await connection.executemany(
            "INSERT INTO node_extensions (node, number, mode, recorder) VALUES ($1, $2, $3, $4)",
            [(node, extension.number, extension.mode, extension.recorder) for extension in extensions],
        )
    return int(shipped)


async def heartbeat(
    connection: asyncpg.Connection, node: str, instance: str, recorders: Mapping[str, Mapping[str, object]]
) -> None:
    await connection.execute(
        f"UPDATE nodes SET heartbeat_at = {NOW}, recorders = $3::jsonb WHERE node = $1 AND instance = $2",
        node,
        instance,
        json.dumps(recorders),
    )


async def shared_extensions(connection: asyncpg.Connection, node: str, numbers: Sequence[str]) -> dict[str, list[str]]:
    """Of `numbers`, those other nodes publish too, with those nodes."""
    rows = await connection.fetch(
        "SELECT number, array_agg(node ORDER BY node) AS nodes FROM node_extensions"
        " WHERE number = ANY($1::text[]) AND node <> $2 GROUP BY number",
        list(numbers),
        node,
    )
    return {row["number"]: list(row["nodes"]) for row in rows}


async def watermark(database: Database, node: str) -> int:
    value = await database.fetchrow("SELECT shipped_seq FROM nodes WHERE node = $1", node)
    return int(value["shipped_seq"]) if value is not None else 0


async def node_state(connection: asyncpg.Connection, node: str) -> NodeState | None:
    """One node's state (running: its lock is held and its heartbeat fresh); None when it never joined."""
    high, low = node_lock_key(node)
    row = await connection.fetchrow(
        f"SELECT node, {_LOCKED_SQL} AS locked, {NOW} - heartbeat_at AS age, shipped_seq, recorders"
        " FROM nodes WHERE node = $1",
        node,
        high,
        low,
    )
    return None if row is None else _state(row)


async def node_states(database: Database) -> list[NodeState]:
    rows = await database.fetch(f"SELECT node, {NOW} - heartbeat_at AS age, shipped_seq, recorders FROM nodes")
    locked = {
        (int(row["classid"]), int(row["objid"]))
        for row in await database.fetch(
            "SELECT classid::bigint AS classid, objid::bigint AS objid FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND objsubid = 2"
        )
    }
    states = []
    for row in rows:
        states.append(_state({**dict(row), "locked": node_lock_key(row["node"]) in locked}))
    return sorted(states, key=lambda state: state.node)


def _state(row: Mapping[str, Any]) -> NodeState:
    """A node's row (asyncpg returns JSONB as its text) and whether its lock is held."""
    age = row["age"]
    age_s = float(age) if isinstance(age, int | float) else None
    recorders = row["recorders"]
    return NodeState(
        node=str(row["node"]),
        running=bool(row["locked"]) and age_s is not None and age_s < DEAD_AFTER_S,
        heartbeat_age_s=age_s,
        shipped_seq=int(row["shipped_seq"]),
        recorders=json.loads(recorders) if isinstance(recorders, str) else dict(recorders or {}),
    )


class Directory:
    """Which nodes publish which extension numbers, read from the database at most every DIRECTORY_TTL_S."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._owners: dict[str, frozenset[str]] = {}
        self._read_at = float("-inf")
        self._reloading: asyncio.Future[None] | None = None

    async def owners(self, number: str) -> frozenset[str]:
        """The nodes that publish `number` (empty: none does). While the database is unreachable, what it said
        last (nodes publish their extensions at start only, so it is rarely stale); ClusterUnavailable when it
        has never been read."""
        if time.monotonic() - self._read_at > DIRECTORY_TTL_S:
            # One reload at a time: the requests arriving meanwhile wait for it rather than each read the table.
            if self._reloading is None or self._reloading.done():
                self._reloading = asyncio.ensure_future(self._reload())
                # Whoever awaits it gets its error; this only keeps asyncio from calling it unretrieved.
                self._reloading.add_done_callback(lambda done: done.cancelled() or done.exception())
            try:
                await asyncio.shield(self._reloading)
            except ClusterUnavailable:
                if self._read_at == float("-inf"):
                    raise
        return self._owners.get(number, frozenset())

    def close(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()

    async def _reload(self) -> None:
        async with self._database.connection() as connection:
            await self.load(connection)

    async def load(self, connection: asyncpg.Connection) -> None:
        owners: dict[str, set[str]] = {}
        for row in await connection.fetch(SELECT_DIRECTORY):
            owners.setdefault(row["number"], set()).add(row["node"])
        self._owners = {number: frozenset(nodes) for number, nodes in owners.items()}
        self._read_at = time.monotonic()

    def cached_owners(self, number: str) -> frozenset[str]:
        return self._owners.get(number, frozenset())
