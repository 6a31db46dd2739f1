"""Ships this node's calls to the cluster database, driven by its durable event feed.

Every change to a call is an event with a sequence number in the local store. The shipper reads them in order
(the backlog from the store, then live), upserts each changed call as it is now, and in the same PostgreSQL
transaction moves the node's watermark (`nodes.shipped_seq`) and NOTIFYs the call starts that other nodes' `next`
waiters wait for. After a restart, an outage or falling behind it resumes from the watermark: every change
reaches the database at least once, and an upsert applied twice changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence

import structlog

from gateway.cluster import calls
from gateway.cluster.database import Database
from gateway.errors import ClusterUnavailable, StoreError
from gateway.feed import CALL_STARTED, EventFeed, EventFilter, FeedEvent, SubscriptionDropped
from gateway.model import Call
from gateway.store.rows import snapshot

log = structlog.get_logger(__name__)

CALL_CHANNEL = "gateway_calls"  # NOTIFY payload: {"node", "callID", "parties"} of a call that started
# Events read from the local store per round trip while catching up; also the most shipped in one transaction.
BACKLOG_PAGE_EVENTS = 500
IDLE_WAIT_S = 5.0  # how long the live loop waits for an event before checking it should still run
RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 5.0
# A NOTIFY payload must stay under PostgreSQL's 8000 bytes; a call with more parties than fit is announced
# without them (a waiter's node then reads the call to learn them).
MAX_NOTIFY_PARTIES_CHARS = 2000

# (call ids) → those calls as they are now (memory, else the local store), once their latest changes are committed
# locally.
CallSource = Callable[[Sequence[str]], Awaitable[list[Call]]]


class Shipper:
    def __init__(self, database: Database, node: str, feed: EventFeed, calls_now: CallSource) -> None:
        self._database = database
        self._node = node
        self._feed = feed
        self._calls_now = calls_now
        self.shipped_seq = 0  # the watermark as last committed in the database
        self.shipped_calls = 0

    async def run(self, start_after: Callable[[], Awaitable[int]]) -> None:
        """Ship until cancelled. `start_after()` reads the watermark to resume from (called again after each
        failure, since the database may have been restored)."""
        delay = RETRY_INITIAL_S
        while True:
            try:
                self.shipped_seq = await start_after()
                await self._ship_from_watermark()
            except SubscriptionDropped:
                if self._feed.closed:
                    return
                log.info("cluster shipper fell behind the event feed; catching up from the store")
                delay = RETRY_INITIAL_S
                continue
            except ClusterUnavailable:
                pass  # the database's own failure: Database logged it, once per outage
            except StoreError as error:  # the local store cannot be read: /healthz says why
                log.warning("cluster shipper cannot read the local store; retrying", error=str(error))
            except Exception:  # a bug here must not end shipping for good
                log.exception("cluster shipper failed; retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _ship_from_watermark(self) -> None:
        subscription = self._feed.subscribe(EventFilter())  # before the backlog is read: nothing falls between
        try:
            while self.shipped_seq < subscription.after_seq:
                page = await self._feed.missed(self.shipped_seq, subscription.after_seq, BACKLOG_PAGE_EVENTS)
                if not page:
                    break
                await self._ship(page)
            while True:
                batch = await subscription.next_batch(IDLE_WAIT_S)
                fresh = [event for event in batch if event.seq > self.shipped_seq]
                for start in range(0, len(fresh), BACKLOG_PAGE_EVENTS):
                    await self._ship(fresh[start : start + BACKLOG_PAGE_EVENTS])
        finally:
            self._feed.unsubscribe(subscription)

    async def _ship(self, events: Sequence[FeedEvent]) -> None:
        if not events:
            return
        call_ids = list(dict.fromkeys(str(event.data["callID"]) for event in events if "callID" in event.data))
        snapshots = [snapshot(call) for call in await self._calls_now(call_ids) if call.node is None]
        started = [event for event in events if event.name == CALL_STARTED]
        last_seq = events[-1].seq
        async with self._database.connection() as connection, connection.transaction():
            await calls.save_snapshots(connection, self._node, snapshots)
            for event in started:
                await connection.execute("SELECT pg_notify($1, $2)", CALL_CHANNEL, start_payload(self._node, event))
            await connection.execute(
                "UPDATE nodes SET shipped_seq = $2 WHERE node = $1 AND shipped_seq < $2", self._node, last_seq
            )
        self.shipped_seq = last_seq
        self.shipped_calls += len(snapshots)


def start_payload(node: str, event: FeedEvent) -> str:
    parties = sorted(event.parties)
    if sum(len(number) + 3 for number in parties) > MAX_NOTIFY_PARTIES_CHARS:
        parties = []
    return json.dumps({"node": node, "callID": event.data["callID"], "parties": parties}, separators=(",", ":"))
