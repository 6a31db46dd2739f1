"""ClusterNode: this gateway as a member of a cluster on PostgreSQL. It owns the node's session (lock, LISTEN,
heartbeat), the shipper of its calls and the command bus, and answers the API's questions about other nodes'
calls."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from gateway.calls import CallTracker
from gateway.cluster import calls, members, schema
from gateway.cluster.commands import COMMAND_CHANNEL, RESULT_CHANNEL, CommandBus, KeepRunner, Outcome
from gateway.cluster.database import Database
from gateway.cluster.listener import NodeSession
from gateway.cluster.members import Directory, PublishedExtension
from gateway.cluster.shipper import CALL_CHANNEL, Shipper
from gateway.config import ExtensionConfig, RecorderConfig
from gateway.errors import ClusterUnavailable
from gateway.feed import EventFeed
from gateway.model import Call
from gateway.store.rows import epoch

log = structlog.get_logger(__name__)

# How long start() waits for the first session with the database; the gateway starts without one after that
# (links and recorders run; what needs the cluster answers 503 until the database is back).
JOIN_WAIT_S = 5.0
HEALTH_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 5.0

Sites = Sequence[str] | None  # the nodes a caller may see; None: every node


class ClusterNode:
    def __init__(
        self,
        url: str,
        node: str,
        *,
        tracker: CallTracker,
        feed: EventFeed,
        store_instance: Callable[[], int],
        extensions: Sequence[ExtensionConfig],
        recorders: Sequence[RecorderConfig],
        recorder_states: Callable[[], Mapping[str, str]],
        key_sites: Mapping[str, Sequence[str] | None] | None = None,  # API key name → its `sites`
    ) -> None:
        self.node = node
        self.database = Database(url)
        self._tracker = tracker
        self._feed = feed
        self._store_instance = store_instance  # read at join: the store is open by then
        self._instance = secrets.token_hex(8)
        self._extensions = [
            PublishedExtension(extension.number, extension.mode.value, extension.recorder) for extension in extensions
        ]
        self._recorder_timeouts = {recorder.name: recorder.timeout_s for recorder in recorders}
        self._recorder_states = recorder_states
        self._key_sites = dict(key_sites or {})
        # Extensions this node shares with another node that some API key sees both of: lookups of them by
        # extension can only answer "more than one call" while both have one (a configuration to fix).
        self.shared_extensions: list[dict[str, object]] = []
        self.directory = Directory(self.database)
        self.shipper = Shipper(self.database, node, feed, tracker.current_calls)
        self.commands: CommandBus | None = None
        self.session: NodeSession | None = None
        self._migrated = False
        self._joined = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._wakes: set[asyncio.Task[None]] = set()

    def serve_commands(self, run_keep: KeepRunner) -> None:
        """How this node runs KeepCalls other nodes send it (the API's own KeepCall); before start()."""
        self.commands = CommandBus(self.database, self.node, run_keep)

    async def start(self) -> None:
        assert self.commands is not None, "serve_commands() first"
        self.session = NodeSession(
            self.database,
            self.node,
            {
                CALL_CHANNEL: self._on_call_started,
                COMMAND_CHANNEL: self.commands.on_command,
                RESULT_CHANNEL: self.commands.on_result,
            },
            on_session=self._on_session,
            heartbeat=self._beat,
        )
        self._tasks = [
            asyncio.create_task(self.session.run(), name=f"cluster-session-{self.node}"),
            asyncio.create_task(self.shipper.run(self._watermark), name=f"cluster-shipper-{self.node}"),
        ]
        try:
            async with asyncio.timeout(JOIN_WAIT_S):
                await self._joined.wait()
        except TimeoutError:
            log.warning(
                "cluster database not reachable at start; running on the local store meanwhile",
                url=self.database.display_url,
                error=self.database.error,
            )

    async def stop(self) -> None:
        self.directory.close()
        for task in [*self._tasks, *self._wakes]:
            task.cancel()
        pending = [*self._tasks, *self._wakes]
        if pending:
            await asyncio.wait(pending, timeout=STOP_TIMEOUT_S)
        if self.commands is not None:
            await self.commands.close()
        await self.database.close()

    # ---- the session

    async def _on_session(self, connection: Any) -> None:
        if not self._migrated:
            await schema.migrate(connection)
            self._migrated = True
        await members.join(
            connection, self.node, self._instance, f"{self._store_instance():x}", self._extensions, self._recorders()
        )
        self.shared_extensions = self._ambiguous(
            await members.shared_extensions(connection, self.node, [extension.number for extension in self._extensions])
        )
        for shared in self.shared_extensions:
            log.warning(
                "extension published by several nodes that one API key sees: its lookups by extension will be "
                "ambiguous (give the key `sites`, or each site its own numbers)",
                **shared,
            )
        await self.directory.load(connection)  # so that an outage right after start finds it read
        if self.commands is not None:
            await self.commands.run_pending(connection)
        if not self._joined.is_set():
            log.info("joined the cluster", node=self.node, url=self.database.display_url)
        self._joined.set()

    def _ambiguous(self, shared: Mapping[str, Sequence[str]]) -> list[dict[str, object]]:
        found: list[dict[str, object]] = []
        for number, others in sorted(shared.items()):
            for other in sorted(others):
                keys = sorted(
                    name
                    for name, sites in self._key_sites.items()
                    if sites is None or (self.node in sites and other in sites)
                )
                if keys:
                    found.append({"extension": number, "nodes": [self.node, other], "keys": keys})
        return found

    async def _beat(self, connection: Any) -> None:
        await members.heartbeat(connection, self.node, self._instance, self._recorders())

    def _recorders(self) -> dict[str, dict[str, object]]:
        states = self._recorder_states()
        return {
            name: {"timeout_s": timeout_s, "state": states.get(name, "down")}
            for name, timeout_s in self._recorder_timeouts.items()
        }

    async def _watermark(self) -> int:
        await self._joined.wait()
        return await members.watermark(self.database, self.node)

    def _on_call_started(self, payload: str) -> None:
        """Another node's call started: wake this node's `next` waiters for its numbers (read it first)."""
        try:
            started = json.loads(payload)
            node, call_id, parties = str(started["node"]), str(started["callID"]), list(started["parties"])
        except (ValueError, KeyError, TypeError):
            log.warning("malformed cluster call notification ignored")
            return
        if node == self.node or (parties and not self._tracker.waiting_for_next(parties)):
            return
        if not parties and not self._tracker.next_waiter_count:
            return
        task = asyncio.create_task(self._wake(call_id), name="cluster-next-wake")
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def _wake(self, call_id: str) -> None:
        try:
            found = await self._read([call_id])
        except ClusterUnavailable:
            return
        for call in found:
            self._tracker.wake_next_waiters(call)

    # ---- what the API asks about other nodes' calls

    async def owners(self, number: str) -> frozenset[str]:
        return await self.directory.owners(number)

    async def get_call(self, call_id: str, sites: Sites) -> Call | None:
        found = await self._read([call_id])
        if not found or found[0].node == self.node or (sites is not None and found[0].node not in sites):
            return None
        return found[0]

    async def ongoing_of(self, number: str, sites: Sites) -> list[Call]:
        rows = await self.database.fetch(calls.SELECT_ONGOING_CALLS_OF, number, self.node, _sites(sites))
        return calls.calls_from_rows(rows)

    async def last_of(self, number: str, sites: Sites, ended_by: datetime | None = None) -> list[Call]:
        """The other nodes' call(s) of `number` that ended last (more than one only when they ended together)."""
        bound = epoch(ended_by or datetime.now(UTC))
        rows = await self.database.fetch(calls.SELECT_LAST_ENDED_CALLS_OF, number, self.node, _sites(sites), bound)
        return calls.calls_from_rows(rows)

    async def ids_by_platform_call_id(self, platform_call_id: str, sites: Sites) -> list[str]:
        """Only the callIDs: one query, no call read (all GetCallID needs)."""
        rows = await self.database.fetch(calls.SELECT_BY_PLATFORM_CALL_ID, platform_call_id, self.node, _sites(sites))
        return [row["call_id"] for row in rows]

    async def ids_by_native_id(self, native_id: str, sites: Sites) -> list[str]:
        rows = await self.database.fetch(calls.SELECT_BY_NATIVE_ID, native_id, self.node, _sites(sites))
        return [row["call_id"] for row in rows]

    async def by_platform_call_id(self, platform_call_id: str, sites: Sites) -> list[Call]:
        rows = await self.database.fetch(calls.SELECT_BY_PLATFORM_CALL_ID, platform_call_id, self.node, _sites(sites))
        return await self._read([row["call_id"] for row in rows])

    async def by_native_id(self, native_id: str, sites: Sites) -> list[Call]:
        rows = await self.database.fetch(calls.SELECT_BY_NATIVE_ID, native_id, self.node, _sites(sites))
        return await self._read([row["call_id"] for row in rows])

    async def keep(self, call: Call, kind: str, unmark: bool) -> Outcome:
        """KeepCall on the node that owns `call`."""
        assert self.commands is not None and call.node is not None
        return await self.commands.request(call.node, call.call_id, kind, unmark, call.recorder)

    async def _read(self, call_ids: Sequence[str]) -> list[Call]:
        if not call_ids:
            return []
        async with self.database.connection() as connection:
            return await calls.read_calls(connection, call_ids)

    # ---- health

    @property
    def session_up(self) -> bool:
        return self.session is not None and self.session.connected.is_set()

    @property
    def unshipped_events(self) -> int:
        return max(0, self._feed.delivered_seq - self.shipper.shipped_seq)

    async def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "backend": "postgresql",
            "url": self.database.display_url,
            "node": self.node,
            "reachable": self.database.reachable,
            "error": self.database.error,
            "session": self.session_up,
            "shippedSeq": self.shipper.shipped_seq,
            "unshippedEvents": self.unshipped_events,
            "sharedExtensions": self.shared_extensions,
        }
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                states = await members.node_states(self.database)
            report["nodes"] = {state.node: state.as_dict() for state in states}
        except (ClusterUnavailable, TimeoutError):
            report["nodes"] = None
        return report


def _sites(sites: Sites) -> list[str] | None:
    return None if sites is None else list(sites)
