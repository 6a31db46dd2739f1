"""KeepCall for a call another node owns.

The asking node inserts a command row for the owner (only if the owner is running: else 503 at once) and
NOTIFYs it; the owner runs the KeepCall on its own tracker and recorders exactly as its API would, writes the
outcome (the HTTP status and message its API would have answered) and NOTIFYs the result back. The asker
answers with that outcome, or 504 when none came within the owner's recorder timeout + COMMAND_MARGIN_S.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import asyncpg
import structlog

from gateway.cluster import members
from gateway.cluster.database import Database
from gateway.cluster.members import NOW
from gateway.errors import ClusterUnavailable, NodeUnavailable

log = structlog.get_logger(__name__)

COMMAND_CHANNEL = "gateway_commands"  # payload: "<owner node> <command id>"
RESULT_CHANNEL = "gateway_command_results"  # payload: "<asking node> <command id>"
KIND_MANUAL_RECORD = "manualrecord"
# Over the owner's recorder timeout: the owner's own 504 (its recorder silent) must reach the asker in time.
COMMAND_MARGIN_S = 0.5
NO_RECORDER_TIMEOUT_S = 5.0  # keep and do_not_delete: only a commit on the owner
DEFAULT_RECORDER_TIMEOUT_S = 2.0  # an owner that publishes no timeout for the call's recorder
# How often the asker checks that the owner still runs while it waits for an outcome.
LIVENESS_CHECK_S = 0.2
EARLY_RESULTS = 1_000  # results that arrived before their asker was waiting (bounded)
STATUS_OK = 200
MESSAGE_INTERNAL = "Internal error; the gateway logged the details."  # as the API says it


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an API would answer: 200 with no message is success; anything else is the error envelope's."""

    status: int
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK and self.message is None


# (call_id, kind, unmark) → the outcome, run on the owner like its own API's KeepCall.
KeepRunner = Callable[[str, str, bool], Awaitable[Outcome]]


class CommandBus:
    def __init__(self, database: Database, node: str, run_keep: KeepRunner) -> None:
        self._database = database
        self._node = node
        self._run_keep = run_keep
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._early: OrderedDict[int, None] = OrderedDict()
        self._running: set[asyncio.Task[None]] = set()

    # ---- asking

    async def request(self, owner: str, call_id: str, kind: str, unmark: bool, recorder: str | None) -> Outcome:
        """Run KeepCall on `owner`; NodeUnavailable when it is not running, TimeoutError when it did not answer."""
        async with self._database.connection() as connection:
            state = await members.node_state(connection, owner)
            if state is None or not state.running:
                raise NodeUnavailable(owner)
            timeout_s = NO_RECORDER_TIMEOUT_S
            if kind == KIND_MANUAL_RECORD:
                timeout_s = _recorder_timeout(state.recorders, recorder) + COMMAND_MARGIN_S
            async with connection.transaction():
                command_id = await connection.fetchval(
                    "INSERT INTO commands (node, from_node, call_id, kind, unmark, created_at, deadline)"
                    f" VALUES ($1, $2, $3, $4, $5, {NOW}, {NOW} + $6) RETURNING id",
                    owner,
                    self._node,
                    call_id,
                    kind,
                    unmark,
                    timeout_s,
                )
                await connection.execute("SELECT pg_notify($1, $2)", COMMAND_CHANNEL, f"{owner} {command_id}")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        try:
            if command_id in self._early:
                self._early.pop(command_id)
            else:
                await self._wait_for_outcome(future, owner, timeout_s)
        finally:
            del self._waiting[command_id]
        row = await self._database.fetchrow("SELECT status, message FROM commands WHERE id = $1", command_id)
        if row is None or row["status"] is None:
            raise ClusterUnavailable(f"command {command_id} lost its outcome")
        return Outcome(int(row["status"]), row["message"])

    async def _wait_for_outcome(self, future: asyncio.Future[None], owner: str, timeout_s: float) -> None:
        """Until the outcome is there (TimeoutError after `timeout_s`); NodeUnavailable as soon as the owner is
        seen gone meanwhile (killed while it ran the command), checked every LIVENESS_CHECK_S."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            done, _ = await asyncio.wait([future], timeout=min(left, LIVENESS_CHECK_S))
            if done:
                return
            async with self._database.connection() as connection:
                state = await members.node_state(connection, owner)
                if state is None or not state.running:
                    raise NodeUnavailable(owner)

    def on_result(self, payload: str) -> None:
        node, _, text = payload.partition(" ")
        if node != self._node or not text.isdigit():
            return
        command_id = int(text)
        future = self._waiting.get(command_id)
        if future is not None:
            if not future.done():
                future.set_result(None)
            return
        self._early[command_id] = None
        while len(self._early) > EARLY_RESULTS:
            self._early.popitem(last=False)

    # ---- running (the owner's side)

    def on_command(self, payload: str) -> None:
        node, _, text = payload.partition(" ")
        if node != self._node or not text.isdigit():
            return
        self._spawn(int(text))

    async def run_pending(self, connection: asyncpg.Connection) -> None:
        """Commands for this node that arrived while its session was down and are not past their deadline."""
        rows = await connection.fetch(
            f"SELECT id FROM commands WHERE node = $1 AND status IS NULL AND deadline > {NOW} ORDER BY id", self._node
        )
        for row in rows:
            self._spawn(int(row["id"]))

    def _spawn(self, command_id: int) -> None:
        task = asyncio.create_task(self._run(command_id), name=f"cluster-command-{command_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, command_id: int) -> None:
        try:
            # Claimed by setting a provisional status in one statement: a command is run once even when both its
            # NOTIFY and a catch-up after reconnecting name it.
            row = await self._database.fetchrow(
                f"UPDATE commands SET status = 0 WHERE id = $1 AND node = $2 AND status IS NULL AND deadline > {NOW}"
                " RETURNING call_id, kind, unmark, from_node",
                command_id,
                self._node,
            )
            if row is None:
                return
            try:
                outcome = await self._run_keep(row["call_id"], row["kind"], bool(row["unmark"]))
            except Exception:
                log.exception("cluster command failed", command=command_id)
                outcome = Outcome(500, MESSAGE_INTERNAL)
            async with self._database.connection() as connection, connection.transaction():
                await connection.execute(
                    f"UPDATE commands SET status = $2, message = $3, done_at = {NOW} WHERE id = $1",
                    command_id,
                    outcome.status,
                    outcome.message,
                )
                await connection.execute("SELECT pg_notify($1, $2)", RESULT_CHANNEL, f"{row['from_node']} {command_id}")
        except ClusterUnavailable as error:
            log.warning("cluster command's outcome could not be written", command=command_id, error=str(error))

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


def _recorder_timeout(recorders: Mapping[str, Mapping[str, object]], recorder: str | None) -> float:
    """The owner's published timeout for the call's recorder, else the longest of its recorders'."""

    def timeout_of(entry: Mapping[str, object]) -> float:
        value = entry.get("timeout_s", DEFAULT_RECORDER_TIMEOUT_S)
        return float(value) if isinstance(value, int | float) else DEFAULT_RECORDER_TIMEOUT_S

    if recorder is not None and recorder in recorders:
        return timeout_of(recorders[recorder])
    return max((timeout_of(entry) for entry in recorders.values()), default=DEFAULT_RECORDER_TIMEOUT_S)
