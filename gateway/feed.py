"""The event feed behind `GET /events` and the status page: what happened, numbered, stored, fanned out.

Every event gets the next sequence number when it is published, is written to the store (`EventLog`), and is
handed to subscribers only once its batch is committed and every earlier batch is too. So an `id:` a client saw
is never reused after a crash, and a client resuming with `Last-Event-ID` reads from the store exactly what it
missed. Subscribers each get a bounded queue; one that falls behind is dropped (its stream ends and the client
resumes with `Last-Event-ID`), so a slow consumer never slows ingest or the API.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson
import structlog

from gateway.model import Call, utc_now

log = structlog.get_logger(__name__)

CALL_STARTED = "call.started"
CALL_CONNECTED = "call.connected"
CALL_ENDED = "call.ended"
CALL_UPDATED = "call.updated"  # a PBX record completed (or described) the call
RECORDING_STARTED = "recording.started"
RECORDING_STOPPED = "recording.stopped"
CALL_KEPT = "call.kept"
LINK_STATE = "link.state"
RECORDER_STATE = "recorder.state"
LINE_QUARANTINED = "line.quarantined"
# A link's counters (records, errors, last record). Not stored and without an id: it says how things are now, so a
# resumed stream has nothing to catch up on. Sent at most every LINK_COUNTS_INTERVAL_S per link, and only to a
# subscriber that names it in `types` (the status page): a consumer asking for "everything" gets the durable events.
LINK_COUNTS = "link.counts"
TRANSIENT_NAMES = (LINK_COUNTS,)
EVENT_NAMES = (
    CALL_STARTED,
    CALL_CONNECTED,
    CALL_ENDED,
    CALL_UPDATED,
    RECORDING_STARTED,
    RECORDING_STOPPED,
    CALL_KEPT,
    LINK_STATE,
    RECORDER_STATE,
    LINE_QUARANTINED,
)
KNOWN_NAMES = EVENT_NAMES + TRANSIENT_NAMES

# Events a subscriber may have queued before it counts as too slow and is dropped.
SUBSCRIBER_QUEUE_EVENTS = 2_000
# The latest delivered events kept in memory, so that a client reconnecting after a blip resumes without a read.
RECENT_EVENTS = 2_000
# A batch the store refused is written again after this long (the store logs the failure spell once).
WRITE_RETRY_S = 1.0
# At shutdown, events still being written get this long before the store closes.
CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class FeedEvent:
    seq: int  # 0 for a transient event (never stored, sent without an id)
    name: str
    at: datetime
    data: Mapping[str, Any]  # JSON-able; call events carry at least callID and extension
    extension: str | None = None  # the call's extension, what `?extension=` filters on
    parties: frozenset[str] = frozenset()  # every number of the call (filters match any of them)
    # The JSON, made once: the store and every subscriber's stream use the same text.
    _json: list[str] = field(default_factory=list, compare=False, repr=False)

    def data_json(self) -> str:
        if not self._json:
            self._json.append(encode_json(self.data))
        return self._json[0]


def encode_json(data: Mapping[str, Any] | Sequence[Any]) -> str:
    """Compact JSON, UTF-8 as it is (the same text json.dumps(…, separators=(",", ":"), ensure_ascii=False) gives
    for these values), by orjson: every event is encoded once, and json's encoder was a tenth of an SMDR record's
    cost on the way in."""
    return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode()


class EventLog(Protocol):
    """Where events are kept (the store): appended in sequence order, read back after a sequence number."""

    def append_events_soon(self, events: Sequence[FeedEvent]) -> asyncio.Future[None]: ...

    async def events_after(self, seq: int, limit: int) -> list[FeedEvent]: ...

    async def last_event_seq(self) -> int: ...


@dataclass(frozen=True, slots=True)
class EventFilter:
    """`?extension=…&types=…`: comma-separated lists; empty means any."""

    extensions: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()

    def matches(self, event: FeedEvent) -> bool:
        if event.seq == 0:
            return event.name in self.names  # transient events go only to who asked for them by name
        if self.names and event.name not in self.names:
            return False
        if self.extensions:
            return event.extension in self.extensions or not self.extensions.isdisjoint(event.parties)
        return True


def parse_filter(extensions: str | None, types: str | None) -> EventFilter:
    """The filter of a request; ValueError naming the unknown event type (a `call.*` prefix selects a family)."""
    names: set[str] = set()
    for item in _items(types):
        if item.endswith(".*") and any(name.startswith(item[:-1]) for name in KNOWN_NAMES):
            names.update(name for name in KNOWN_NAMES if name.startswith(item[:-1]))
        elif item in KNOWN_NAMES:
            names.add(item)
        else:
            raise ValueError(f"unknown event type {item!r}; known: {', '.join(KNOWN_NAMES)}")
    return EventFilter(frozenset(_items(extensions)), frozenset(names))


def _items(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


class Subscription:
    """One consumer's live events, in order. Bounded: the feed drops a subscription that falls behind, and `next`
    then raises `SubscriptionDropped` at once (its stream ends; the client resumes with `Last-Event-ID`)."""

    __slots__ = ("after_seq", "dropped", "filter", "_items", "_ready")

    def __init__(self, event_filter: EventFilter, after_seq: int) -> None:
        self.filter = event_filter
        self.after_seq = after_seq  # every event up to here was delivered before the subscription began
        self.dropped = False
        self._items: deque[FeedEvent] = deque()
        self._ready = asyncio.Event()

    def offer(self, event: FeedEvent) -> bool:
        """Queue a matching event; False when the subscriber is SUBSCRIBER_QUEUE_EVENTS behind."""
        if len(self._items) >= SUBSCRIBER_QUEUE_EVENTS:
            return False
        self._items.append(event)
        self._ready.set()
        return True

    def drop(self) -> None:
        self.dropped = True
        self._items.clear()
        self._ready.set()

    @property
    def queued(self) -> int:
        return len(self._items)

    async def next_batch(self, timeout_s: float) -> list[FeedEvent]:
        """Every queued event, waiting up to timeout_s for the first; [] when none came (time for a keep-alive).
        A stream writes them in one go: per-write costs are paid once per batch, not once per event."""
        first = await self.next(timeout_s)
        if first is None:
            return []
        batch = [first, *self._items]
        self._items.clear()
        return batch

    async def next(self, timeout_s: float) -> FeedEvent | None:
        """The next event; None when none came within timeout_s (time for a keep-alive)."""
        if not self._items and not self.dropped:
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._ready.wait()
            except TimeoutError:
                return None
        if self.dropped:
            raise SubscriptionDropped
        return self._items.popleft()


class SubscriptionDropped(Exception):
    """The subscriber fell behind (or the gateway is stopping): its stream ends."""


@dataclass(slots=True)
class _Batch:
    events: list[FeedEvent]
    committed: bool = False
    written: asyncio.Future[None] | None = None  # the latest write attempt


class EventFeed:
    """Publishes events (on the loop, never blocking) and serves subscribers and resumes."""

    def __init__(self, event_log: EventLog) -> None:
        self._log = event_log
        self._next_seq = 1
        self._delivered_seq = 0
        self._pending: list[FeedEvent] = []  # published this loop turn, not yet handed to the store
        self._in_flight: deque[_Batch] = deque()  # handed to the store, in sequence order
        self._recent: deque[FeedEvent] = deque(maxlen=RECENT_EVENTS)
        self._subscribers: set[Subscription] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._closed = False

    async def start(self) -> None:
        """Continue the sequence after the last stored event."""
        self._delivered_seq = await self._log.last_event_seq()
        self._next_seq = self._delivered_seq + 1

    def end_streams(self) -> None:
        """Every subscriber's stream ends now (the gateway is stopping: the HTTP server waits for its requests)."""
        for subscription in list(self._subscribers):
            self._drop(subscription)

    async def close(self) -> None:
        """Write what was published (for at most CLOSE_TIMEOUT_S), then publish nothing more."""
        self._flush()
        writes = [batch.written for batch in self._in_flight if batch.written is not None]
        if writes:
            await asyncio.wait(writes, timeout=CLOSE_TIMEOUT_S)
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.end_streams()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def delivered_seq(self) -> int:
        return self._delivered_seq

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    # ---- publishing

    def publish(
        self,
        name: str,
        data: Mapping[str, Any],
        *,
        extension: str | None = None,
        parties: Collection[str] = (),
        at: datetime | None = None,
    ) -> None:
        if self._closed:
            return
        event = FeedEvent(self._next_seq, name, at or utc_now(), data, extension, frozenset(parties))
        self._next_seq += 1
        self._pending.append(event)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def publish_transient(self, name: str, data: Mapping[str, Any]) -> None:
        """To the live subscribers that asked for `name`, now; not stored, no sequence number."""
        if self._closed:
            return
        event = FeedEvent(0, name, utc_now(), data)
        for subscription in list(self._subscribers):
            if subscription.filter.matches(event) and not subscription.offer(event):
                log.info("event subscriber too slow; dropped", queued=subscription.queued)
                self._drop(subscription)

    def publish_call(self, name: str, call: Call, **extra: Any) -> None:
        self.publish(name, {**call_data(call), **extra}, extension=call.extension, parties=call.parties)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending or self._closed:
            return
        batch = _Batch(self._pending)
        self._pending = []
        self._in_flight.append(batch)
        self._write(batch)

    def _write(self, batch: _Batch) -> None:
        try:
            written = batch.written = self._log.append_events_soon(batch.events)
        except Exception as error:  # the store is closed
            log.debug("events could not be stored", events=len(batch.events), error=str(error))
            return
        written.add_done_callback(lambda done: self._written(batch, done))

    def _written(self, batch: _Batch, done: asyncio.Future[None]) -> None:
        if done.cancelled() or done.exception() is not None:
            if not self._closed and self._retry is None:
                self._retry = asyncio.get_running_loop().call_later(WRITE_RETRY_S, self._rewrite_failed)
            return
        batch.committed = True
        while self._in_flight and self._in_flight[0].committed:
            for event in self._in_flight.popleft().events:
                self._deliver(event)

    def _rewrite_failed(self) -> None:
        """Write again every batch still waiting; one already committed is written only once (same seqs)."""
        self._retry = None
        for batch in self._in_flight:
            if not batch.committed:
                self._write(batch)

    def _deliver(self, event: FeedEvent) -> None:
        self._delivered_seq = event.seq
        self._recent.append(event)
        for subscription in list(self._subscribers):
            if subscription.filter.matches(event) and not subscription.offer(event):
                log.info("event subscriber too slow; dropped", queued=subscription.queued)
                self._drop(subscription)

    # ---- subscribing

    def subscribe(self, event_filter: EventFilter) -> Subscription:
        subscription = Subscription(event_filter, self._delivered_seq)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def _drop(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        subscription.drop()

    async def missed(self, after_seq: int, until_seq: int, limit: int) -> list[FeedEvent]:
        """Delivered events with after_seq < seq ≤ until_seq, oldest first, at most `limit`: from memory when the
        recent ones cover the range, else from the store."""
        if after_seq >= until_seq:
            return []
        recent = self._recent
        if recent and recent[0].seq <= after_seq + 1:
            found = [event for event in recent if after_seq < event.seq <= until_seq]
            return found[:limit]
        stored = await self._log.events_after(after_seq, limit)
        return [event for event in stored if event.seq <= until_seq]


def call_data(call: Call) -> dict[str, Any]:
    """A call as events describe it (the API's field names)."""
    recording = call.active_recording
    return {
        "callID": call.call_id,
        "extension": call.extension,
        "state": call.state.value,
        "direction": call.direction.value,
        "calling": call.calling,
        "called": call.called,
        "platformCallID": call.platform_call_id,
        "nativeID": call.native_id,
        "recorder": call.recorder,
        "channel": call.channel,
        "link": call.link,
        "start": _iso(call.start_time),
        "connect": _iso(call.connect_time),
        "end": _iso(call.end_time),
        "recording": recording is not None,
        "kept": call.kept,
        "doNotDelete": call.do_not_delete,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
