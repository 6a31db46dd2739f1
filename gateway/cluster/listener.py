"""The node's own session with the cluster database: one connection, not pooled, that

- holds the node's advisory lock: the node is running exactly while this session lives, so another node sees a
  gateway killed with SIGKILL as gone at once (its socket closes, its session ends, the lock goes with it);
- LISTENs for call starts and commands from other nodes;
- beats the node's heartbeat, which also proves the session is still there.

Lost (server restart, failover, network), it is made again with backoff, forever.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping

import asyncpg
import structlog

from gateway.cluster.database import CONNECT_TIMEOUT_S, DATABASE_ERRORS, QUERY_TIMEOUT_S, Database, describe

log = structlog.get_logger(__name__)

HEARTBEAT_S = 1.0
RECONNECT_INITIAL_S = 0.1
RECONNECT_MAX_S = 5.0
# A machine that vanishes without closing its socket: the server notices in about 5 + 3 × 2 s and ends the session
# (and its lock). Settable per session, so no server configuration is needed.
SERVER_KEEPALIVES = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3"}

# (payload) → None; called on the event loop for each NOTIFY of its channel.
NotificationHandler = Callable[[str], None]


def node_lock_key(node: str) -> tuple[int, int]:
    """The node's advisory lock: two non-negative int4 keys, as pg_locks shows them (classid, objid; objsubid 2)."""
    value = int.from_bytes(hashlib.sha256(f"gateway node {node}".encode()).digest()[:8], "big")
    return (value >> 31) & 0x7FFFFFFF, value & 0x7FFFFFFF


class NodeLockHeld(Exception):
    """Another running gateway holds this node name."""


class NodeSession:
    def __init__(
        self,
        database: Database,
        node: str,
        handlers: Mapping[str, NotificationHandler],
        on_session: Callable[[asyncpg.Connection], Awaitable[None]],
        heartbeat: Callable[[asyncpg.Connection], Awaitable[None]],
    ) -> None:
        self._database = database
        self._node = node
        self._handlers = dict(handlers)
        self._on_session = on_session
        self._heartbeat = heartbeat
        self.connected = asyncio.Event()
        self.error: str | None = "not connected yet"

    async def run(self) -> None:
        """Keep the session up until cancelled."""
        delay = RECONNECT_INITIAL_S
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(
                    self._database.url,
                    timeout=CONNECT_TIMEOUT_S,
                    command_timeout=QUERY_TIMEOUT_S,
                    server_settings=SERVER_KEEPALIVES,
                )
                await self._hold_lock(connection)
                for channel, handler in self._handlers.items():
                    await connection.add_listener(channel, _callback(handler))
                await self._on_session(connection)
                self.connected.set()
                self.error = None
                self._database.succeeded()
                delay = RECONNECT_INITIAL_S
                while True:
                    await self._heartbeat(connection)
                    await asyncio.sleep(HEARTBEAT_S)
            except NodeLockHeld as error:
                self.error = str(error)
                log.error("cluster node name in use; retrying", node=self._node, error=str(error))
            except DATABASE_ERRORS as error:
                self.error = describe(error, self._database.url)
                self._database.failed(error)
            finally:
                self.connected.clear()
                if connection is not None:
                    connection.terminate()  # the lock and the LISTENs go with the session
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _hold_lock(self, connection: asyncpg.Connection) -> None:
        high, low = node_lock_key(self._node)
        if not await connection.fetchval("SELECT pg_try_advisory_lock($1::int, $2::int)", high, low):
            raise NodeLockHeld(
                f"another gateway is running as node {self._node!r}: give each gateway its own `node` name"
            )


def _callback(handler: NotificationHandler) -> Callable[[object, int, str, str], None]:
    def received(_connection: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            handler(payload)
        except Exception:  # a handler bug must not end the session
            log.exception("cluster notification handler failed")

    return received
