"""The call tracker: driver events → calls, and the lookups the API makes (ongoing / last / next, ids).

It is the one owner of call state. Mutations happen on the event loop, in memory first, and are
queued to the store at once; `save()` waits for the commit when an answer depends on it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from gateway.bounded import ByteBoundedDict
from gateway.config import ExtensionConfig
from gateway.errors import AmbiguousCall, CallNotFound
from gateway.events import (
    CallConnected,
    CallEnded,
    CallRecord,
    CallStarted,
    DriverEvent,
    LinkProgress,
    RecorderSynced,
    RecordingStarted,
    RecordingStopped,
)
from gateway.feed import (
    CALL_CONNECTED,
    CALL_ENDED,
    CALL_STARTED,
    CALL_UPDATED,
    RECORDING_STARTED,
    RECORDING_STOPPED,
)
from gateway.model import Call, CallState, Direction, Recording, RecordingMode, new_id, record_call_id, utc_now
from gateway.store import Store

log = structlog.get_logger(__name__)

STATUS_ONGOING = "ongoing"
STATUS_LAST = "last"
STATUS_NEXT = "next"
LOOKUP_STATUSES = (STATUS_ONGOING, STATUS_LAST, STATUS_NEXT)

# Finished calls kept in memory for fast GetCallInformation/KeepCall right after a call; older ones
# are read back from the store. 10,000 calls is minutes of traffic on a busy site and ~20 MB.
DEFAULT_FINISHED_CACHE_SIZE = 10_000
# A PBX record and the recorder's live call are the same call when their starts are this close:
# SMDR rounds to the second or minute and PBX clocks drift from the recorder's.
DEFAULT_CORRELATION_WINDOW_S = 120.0
# The finished-call cache is trimmed once it is this far over its size, so trimming costs O(1) per call.
EVICTION_BATCH = 1_000
# Live calls not yet described by a PBX record are remembered this long (PBXs buffer records for hours).
UNCORRELATED_HORIZON = timedelta(hours=24)
# Bounds the live calls remembered per extension for correlation (a channel with no SMDR link never clears them).
MAX_UNCORRELATED_PER_EXTENSION = 1_000
# Multi-record calls (IP Office Continuation=1) are grouped this long waiting for their last part.
PLATFORM_GROUP_TIMEOUT = timedelta(minutes=30)
# Bounds the memo of "last call of number N" so that clients asking for random numbers cannot grow it forever.
MAX_LAST_ENDED_ENTRIES = 200_000
# ... and by bytes, since the numbers are what clients ask for: ~40,000 numbers of up to 64 characters.
MAX_LAST_ENDED_BYTES = 16 * 1024 * 1024
# Transfer legs (CallRecord.leg_key) are one call when one leg's time meets the other's within this: the
# formats that print legs give minutes, not seconds, for the time of day.
LEG_TOLERANCE = timedelta(minutes=2)
# A leg can be joined this long after it ended (the next leg's record comes when that leg ends).
LEG_WINDOW = timedelta(hours=4)

# A batch of saves the store refused (disk full, I/O error) is tried again this long after, for as long as it
# fails: the calls stay in memory meanwhile, and the journal still holds the lines they came from.
SAVE_RETRY_S = 1.0

CallListener = Callable[[DriverEvent, Call], None]
# `listener(change, call, detail)` for each change the event feed reports (gateway.feed names: call.started …).
ChangeListener = Callable[[str, Call, Mapping[str, object]], None]
ProgressSource = Callable[[], LinkProgress | None]


@dataclass(frozen=True, slots=True)
class _Leg:
    """A call's latest transfer leg, as the next leg's record is matched against it."""

    call_id: str
    start: datetime
    end: datetime
    direction: Direction


def _same_known_direction(a: Direction, b: Direction) -> bool:
    """Two legs both inbound (or both outbound) are two calls' first legs, not one call's two legs."""
    return a is b and a in (Direction.IN, Direction.OUT)


@dataclass(slots=True)
class _LastEnded:
    """The most recent end time of a number's calls and the calls that ended then (more than one = ambiguous)."""

    end_time: datetime | None
    call_ids: list[str]
    merged_with_store: bool


def _settle(future: asyncio.Future[None], done: asyncio.Future[None]) -> None:
    """Pass a store future's outcome on to the tracker's future for the same save."""
    if future.done():
        return
    if done.cancelled():
        future.cancel()
    elif done.exception() is not None:
        future.set_exception(done.exception())  # type: ignore[arg-type]
    else:
        future.set_result(None)


def parse_statuses(value: str) -> list[str]:
    """`ongoing, next` → ["ongoing", "next"]; ValueError on an empty or unknown item."""
    statuses = [item.strip().lower() for item in value.split(",")]
    if not statuses or any(item not in LOOKUP_STATUSES for item in statuses):
        raise ValueError(value)
    return statuses


def _digits(number: str | None) -> str:
    return "".join(ch for ch in number or "" if ch.isdigit())


def numbers_match(a: str | None, b: str | None) -> bool:
    """Loose match of two renderings of one phone number (prefixes, +, trunk codes differ between PBX and recorder)."""
    da, db = _digits(a), _digits(b)
    if not da or not db:
        return True  # one side does not know the number: no evidence against the match
    shorter, longer = sorted((da, db), key=len)
    return longer.endswith(shorter[-max(4, min(len(shorter), 9)) :])


class CallTracker:
    """Turns driver events into calls and answers lookups; never guesses between two calls."""

    def __init__(
        self,
        store: Store,
        extensions: Sequence[ExtensionConfig] = (),
        *,
        correlation_window_s: float = DEFAULT_CORRELATION_WINDOW_S,
        correlation_window_by_link: Mapping[str, float] | None = None,
        finished_cache_size: int = DEFAULT_FINISHED_CACHE_SIZE,
    ) -> None:
        self._store = store
        self._extensions = {extension.number: extension for extension in extensions}
        self._extension_by_channel = {
            (extension.recorder, extension.channel): extension for extension in extensions if extension.channel
        }
        self._correlation_window = timedelta(seconds=correlation_window_s)
        self._correlation_window_by_link = {
            link: timedelta(seconds=seconds) for link, seconds in (correlation_window_by_link or {}).items()
        }
        self._finished_cache_size = finished_cache_size
        self._eviction_batch = max(1, min(EVICTION_BATCH, finished_cache_size // 10))
        self._evict_at = finished_cache_size + self._eviction_batch

        self._ongoing_by_id: dict[str, Call] = {}
        self._ongoing_by_party: dict[str, dict[str, Call]] = defaultdict(dict)
        self._ongoing_by_native: dict[tuple[str, str], Call] = {}
        self._finished_by_id: OrderedDict[str, Call] = OrderedDict()
        # Calls in memory (ongoing or cached) by their external ids, so lookups see calls not yet committed.
        self._memory_ids_by_platform: dict[str, set[str]] = defaultdict(set)
        self._memory_ids_by_native: dict[str, set[str]] = defaultdict(set)
        self._active_recordings: dict[tuple[str, str], Recording] = {}  # (recorder, rec native id)
        self._last_ended: dict[str, _LastEnded] = ByteBoundedDict(MAX_LAST_ENDED_BYTES)
        self._next_waiters: dict[str, set[asyncio.Future[Call]]] = defaultdict(set)
        self._uncorrelated_live: dict[str, dict[str, Call]] = defaultdict(dict)  # extension → recorder calls w/o record
        self._platform_groups: dict[tuple[str, str], tuple[str, datetime]] = {}  # (link, pcid) → (call id, seen)
        self._legs: dict[tuple[str, str], list[_Leg]] = defaultdict(list)  # (link, leg key) → recent legs
        self._unsaved: dict[str, asyncio.Future[None]] = {}  # call id → latest save not yet committed
        self._dirty: dict[str, Call] = {}  # changed this loop turn, not yet snapshotted
        self._dirty_batch: asyncio.Future[None] | None = None  # the future of this turn's batch
        self._listeners: list[CallListener] = []
        self._change_listeners: list[ChangeListener] = []
        # Asked at each batch: how far each SMDR link has applied its journal, committed with the batch.
        self._progress_sources: list[ProgressSource] = []
        self._retry_handle: asyncio.TimerHandle | None = None
        self._loading: dict[str, asyncio.Future[Call | None]] = {}
        self.new_call_count = 0  # calls created since start (for the health report's stored count)

    # ---- life cycle

    async def start(self) -> None:
        """Load the calls that were ongoing when the gateway stopped (recorders reconcile them on sync), and
        those it still had business with: multi-record calls and transfer legs that more records may join,
        recorder calls waiting for their PBX record."""
        for call in await self._store.load_ongoing_calls():
            self._index_ongoing(call)
            for recording in call.recordings:
                if recording.active and recording.recorder and recording.native_id:
                    self._active_recordings[(recording.recorder, recording.native_id)] = recording
        if self._ongoing_by_id:
            log.info("ongoing calls restored", calls=len(self._ongoing_by_id))
        now = utc_now()
        open_calls = await self._store.load_open_calls(awaiting_since=now - UNCORRELATED_HORIZON)
        for call in sorted(open_calls, key=lambda open_call: open_call.start_time):
            self._restore_open_business(self._ongoing_by_id.get(call.call_id) or call, now)
        if open_calls:
            log.info("open calls restored", calls=len(open_calls), groups=len(self._platform_groups))

    def _restore_open_business(self, call: Call, now: datetime) -> None:
        if not call.ongoing:
            self._remember_finished(call)
        if call.open_group and call.link:
            # Seen now: the group gets its whole timeout again rather than expiring for the time we were down.
            self._platform_groups[(call.link, call.open_group)] = (call.call_id, now)
        if call.open_leg_key and call.link and call.open_leg_direction is not None:
            end = call.end_time or call.start_time
            if end >= now - LEG_WINDOW:
                leg = _Leg(call.call_id, call.start_time, end, call.open_leg_direction)
                self._legs[(call.link, call.open_leg_key)].append(leg)
        if call.awaiting_record and call.extension:
            self._uncorrelated_live[call.extension][call.call_id] = call

    async def flush(self) -> None:
        """Wait until every queued save has committed."""
        pending = list(self._unsaved.values())
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def stored(self, call_id: str) -> None:
        """Return once the call's latest change is committed (at once when nothing is queued): an answer that
        hands out a callID or reports a change must not outlive a crash the call did not."""
        pending = self._unsaved.get(call_id)
        if pending is not None:
            await asyncio.shield(pending)

    def add_progress_source(self, source: ProgressSource) -> None:
        """`source()` is asked at every batch how far a link has applied its journal; the answer is committed
        with the batch's call saves (the records of those lines are in them)."""
        self._progress_sources.append(source)

    def note_progress(self) -> None:
        """A link parsed lines that changed no call (headers, quarantined lines): write its progress anyway."""
        self._pending_batch()

    async def apply_replayed(self, records: Sequence[CallRecord]) -> int:
        """Apply records read again from the journal after a restart; a record whose call the store already
        holds (it was applied before the crash) is skipped, so a line never makes a second call. The count
        applied."""
        ids = {index: call_id for index, record in enumerate(records) if (call_id := self._record_call_id(record))}
        existing = await self._store.existing_call_ids(list(ids.values())) if ids else set()
        applied = 0
        for index, record in enumerate(records):
            call_id = ids.get(index)
            if call_id is not None and (call_id in existing or self._call_in_memory(call_id) is not None):
                continue
            self.apply(record)
            applied += 1
        return applied

    def subscribe(self, listener: CallListener) -> None:
        """Call `listener(event, call)` after each event is applied. Listeners must not block."""
        self._listeners.append(listener)

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener(change, call, detail)` for every change to a call as it happens (in memory; the save
        is queued): started, connected, ended, recording started/stopped, completed by a PBX record, kept."""
        self._change_listeners.append(listener)

    def changed(self, change: str, call: Call, **detail: object) -> None:
        for listener in self._change_listeners:
            try:
                listener(change, call, detail)
            except Exception:  # a listener bug must not stop the tracker
                log.exception("change listener failed", change=change, call_id=call.call_id)

    # ---- counts for health

    @property
    def ongoing_count(self) -> int:
        return len(self._ongoing_by_id)

    def extension_config(self, number: str | None) -> ExtensionConfig | None:
        return self._extensions.get(number) if number else None

    # ---- persistence

    def save_soon(self, call: Call) -> asyncio.Future[None]:
        """Queue the call's state for the store; the future resolves when it is committed.

        Everything changed within one turn of the event loop is written as one batch, snapshotted at
        the end of that turn: a call changed twice (an OK reply and the event in the same read) is
        written once, and a burst of PBX records costs one queue entry and one future, not one each.
        """
        batch = self._pending_batch()
        self._dirty[call.call_id] = call
        self._unsaved[call.call_id] = batch
        return batch

    def _pending_batch(self) -> asyncio.Future[None]:
        """This loop turn's batch, scheduled to be written at the end of the turn."""
        batch = self._dirty_batch
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._dirty_batch = loop.create_future()
            loop.call_soon(self._write_dirty)
        return batch

    def _write_dirty(self) -> None:
        batch, self._dirty_batch = self._dirty_batch, None
        dirty, self._dirty = self._dirty, {}
        assert batch is not None
        # Taken now, with the snapshots: every record of every line up to here is in this batch or an earlier one.
        progress = [item for source in self._progress_sources if (item := source()) is not None]
        try:
            stored = self._store.save_calls_soon(dirty.values(), progress)
        except Exception as error:  # the store is closed: the callers learn it from the future
            stored = asyncio.get_running_loop().create_future()
            stored.set_exception(error)

        def saved(done: asyncio.Future[None]) -> None:
            _settle(batch, done)
            for call_id in dirty:
                if self._unsaved.get(call_id) is batch:
                    del self._unsaved[call_id]
            if not done.cancelled() and done.exception() is not None:
                # The store logs the spell of failures once; this is every batch of it.
                log.debug("calls could not be stored; retrying", calls=len(dirty), error=str(done.exception()))
                self._retry_later(dirty)

        stored.add_done_callback(saved)

    def _retry_later(self, calls: dict[str, Call]) -> None:
        """Queue the calls of a failed batch again (unless changed since: then they are queued already), with
        the progress of that moment, SAVE_RETRY_S from now — or sooner, with the next batch. (A batch already
        queued when this one failed still carries its own progress: a narrow window under store faults.)"""
        for call_id, call in calls.items():
            self._dirty.setdefault(call_id, call)
        if self._retry_handle is None and calls:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._retry_handle = loop.call_later(SAVE_RETRY_S, self._retry_now)

    def _retry_now(self) -> None:
        self._retry_handle = None
        if self._dirty:
            batch = self._pending_batch()
            for call_id in self._dirty:
                self._unsaved.setdefault(call_id, batch)

    def close(self) -> None:
        """Stop retrying failed saves (the gateway is stopping)."""
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None

    async def save(self, call: Call) -> None:
        """Queue the call's current state and wait for the commit (API answers that report a change)."""
        await self.save_soon(call)

    # ---- events

    def apply(self, event: DriverEvent) -> Call | None:
        """Apply one driver event; returns the call it touched (None when it concerned no known call)."""
        call: Call | None
        match event:
            case CallRecord():  # first: a busy SMDR link hands in thousands a second
                call = self._call_record(event)
            case CallStarted():
                call = self._call_started(event)
            case CallConnected():
                call = self._call_connected(event)
            case CallEnded():
                call = self._call_ended(event)
            case RecordingStarted():
                call = self._recording_event_started(event)
            case RecordingStopped():
                call = self._recording_stopped(event)
            case RecorderSynced():
                self._recorder_synced(event)
                return None
            case _:
                raise TypeError(f"not a driver event: {event!r}")
        if call is not None:
            for listener in self._listeners:
                try:
                    listener(event, call)
                except Exception:  # a listener bug must not stop the event stream
                    log.exception("call listener failed", event=type(event).__name__, call_id=call.call_id)
        return call

    def _call_started(self, event: CallStarted) -> Call:
        existing = self._ongoing_by_native.get((event.recorder, event.native_id))
        if existing is not None:  # replayed after a reconnect: the same call, not a new one
            return existing
        mapped = self._extension_by_channel.get((event.recorder, event.channel))
        call = Call(
            call_id=new_id(),
            start_time=event.at,
            direction=event.direction,
            extension=mapped.number if mapped else self._guess_internal_party(event),
            calling=event.calling or None,
            called=event.called or None,
            native_id=event.native_id,
            recorder=event.recorder,
            channel=event.channel,
            recording_mode=mapped.mode if mapped else None,
        )
        self.new_call_count += 1
        self._index_ongoing(call)
        if call.extension:
            self._remember_uncorrelated(call)
        self.save_soon(call)
        self._wake_next_waiters(call)
        self.changed(CALL_STARTED, call)
        log.debug("call started", call_id=call.call_id, recorder=event.recorder, channel=event.channel)
        return call

    def _remember_uncorrelated(self, call: Call) -> None:
        """Keep a live call for PBX records to complete; calls older than the horizon go (records never came)."""
        waiting = self._uncorrelated_live[call.extension or ""]
        horizon = call.start_time - UNCORRELATED_HORIZON
        for old_id in [old_id for old_id, old in waiting.items() if old.start_time < horizon]:
            del waiting[old_id]
        if len(waiting) >= MAX_UNCORRELATED_PER_EXTENSION:  # a trunk channel without SMDR: keep the newest
            del waiting[next(iter(waiting))]
        waiting[call.call_id] = call
        call.awaiting_record = True

    def _guess_internal_party(self, event: CallStarted) -> str | None:
        """A channel not in the configuration: the internal party is the called number inbound, the caller outbound."""
        if event.direction is Direction.IN:
            return event.called or None
        if event.direction is Direction.OUT:
            return event.calling or None
        return None

    def _call_connected(self, event: CallConnected) -> Call | None:
        call = self._ongoing_by_native.get((event.recorder, event.native_id))
        if call is None:
            log.debug("connect for unknown call", recorder=event.recorder, native_id=event.native_id)
            return None
        if call.connect_time is None:
            call.connect_time = event.at
            self.save_soon(call)
            self.changed(CALL_CONNECTED, call)
        return call

    def _call_ended(self, event: CallEnded) -> Call | None:
        call = self._ongoing_by_native.get((event.recorder, event.native_id))
        if call is None:
            log.debug("release for unknown call", recorder=event.recorder, native_id=event.native_id)
            return None
        self._finish(call, event.at)
        return call

    def _finish(self, call: Call, at: datetime) -> None:
        for recording in call.recordings:
            if recording.active:  # the device stops recordings itself when a call ends
                self._end_recording(recording, at, call)
        call.state = CallState.FINISHED
        call.end_time = at
        if call.duration_s is None and call.connect_time is not None:
            call.duration_s = max(0.0, (at - call.connect_time).total_seconds())
        self._unindex_ongoing(call)
        self._remember_finished(call)
        self._note_ended(call)
        self.save_soon(call)
        self.changed(CALL_ENDED, call)

    def _recording_event_started(self, event: RecordingStarted) -> Call | None:
        call = None
        if event.call_native_id:
            call = self._ongoing_by_native.get((event.recorder, event.call_native_id))
        if call is None:
            call = self._ongoing_call_on_channel(event.recorder, event.channel)
        if call is None:
            log.warning("recording started for unknown call", recorder=event.recorder, channel=event.channel)
            return None
        self.recording_started(call, event.recorder, event.channel, event.recording_native_id, event.at)
        return call

    def _ongoing_call_on_channel(self, recorder: str, channel: str) -> Call | None:
        for call in self._ongoing_by_id.values():
            if call.recorder == recorder and call.channel == channel:
                return call
        return None

    def recording_started(
        self, call: Call, recorder: str, channel: str, native_id: str, at: datetime, *, manual: bool = False
    ) -> Recording:
        """Record that `native_id` is running on the call; idempotent (START's reply and the STARTED event both call it)."""
        recording = self._active_recordings.get((recorder, native_id))
        if recording is None:
            recording = next((r for r in call.recordings if r.recorder == recorder and r.native_id == native_id), None)
        if recording is None:
            recording = Recording(
                recording_id=new_id(),
                call_id=call.call_id,
                start_time=at,
                recorder=recorder,
                channel=channel,
                native_id=native_id,
                manual=manual,
            )
            call.recordings.append(recording)
            if recording.active:
                self._active_recordings[(recorder, native_id)] = recording
            self.changed(RECORDING_STARTED, call, recordingID=recording.recording_id, manual=manual)
        elif manual and not recording.manual:
            recording.manual = True
        self.save_soon(call)
        return recording

    def _recording_stopped(self, event: RecordingStopped) -> Call | None:
        recording = self._active_recordings.get((event.recorder, event.recording_native_id))
        if recording is None:
            return None  # already stopped (STOP's reply came first) or never seen
        call = self._call_in_memory(recording.call_id)
        self._end_recording(recording, event.at, call)
        if call is not None:
            self.save_soon(call)
        return call

    def end_recording(self, call: Call, recording: Recording, at: datetime) -> None:
        """A recording of the call ended (the reply to STOP); the STOPPED event that follows finds nothing to do."""
        if recording.end_time is None:
            self._end_recording(recording, at, call)
            self.save_soon(call)

    def _end_recording(self, recording: Recording, at: datetime, call: Call | None) -> None:
        recording.end_time = at
        if recording.recorder and recording.native_id:
            self._active_recordings.pop((recording.recorder, recording.native_id), None)
        if call is not None:
            self.changed(RECORDING_STOPPED, call, recordingID=recording.recording_id)

    def _recorder_synced(self, event: RecorderSynced) -> None:
        """Calls and recordings this recorder did not replay ended while the link was down."""
        for call in [c for c in self._ongoing_by_id.values() if c.recorder == event.recorder]:
            if call.native_id not in event.live_native_ids:
                log.info("call ended while the recorder link was down", call_id=call.call_id, recorder=event.recorder)
                self._finish(call, event.at)
        for (recorder, native_id), recording in list(self._active_recordings.items()):
            if recorder == event.recorder and native_id not in event.live_recording_native_ids:
                recorded_call = self._call_in_memory(recording.call_id)
                self._end_recording(recording, event.at, recorded_call)
                if recorded_call is not None:
                    self.save_soon(recorded_call)

    # ---- PBX call records

    def _call_record(self, record: CallRecord) -> Call:
        self._expire_platform_groups(record.received_at)
        group_key = (record.source, record.platform_call_id) if record.platform_call_id else None
        call = None
        joined = False
        if group_key is not None and group_key in self._platform_groups:
            call = self._call_in_memory(self._platform_groups[group_key][0])
        if call is not None:
            self._merge_record_part(call, record)
        elif record.leg_key is not None and (call := self._earlier_leg(record)) is not None:
            self._join_leg(call, record)
            joined = True
        else:
            call = self._correlate(record)
            if call is not None:
                self._complete_with_record(call, record)
            else:
                call = self._call_from_record(record)
        if record.leg_key is not None:
            self._remember_leg(call, record, joined=joined)
        if group_key is not None:
            if record.more_follows:
                self._platform_groups[group_key] = (call.call_id, record.received_at)
                call.open_group = record.platform_call_id
            else:
                self._platform_groups.pop(group_key, None)
                call.open_group = None
        self.save_soon(call)
        self.changed(CALL_UPDATED, call)
        return call

    def _earlier_leg(self, record: CallRecord) -> Call | None:
        """The one call whose last leg this record's leg continues (meets it in time, same link and key); None
        when there is none, or more than one — never a guess."""
        if not record.joins_leg:
            return None
        start, end = self._record_times(record)
        matches = [
            leg
            for leg in self._legs.get((record.source, record.leg_key or ""), ())
            if leg.start - LEG_TOLERANCE <= end
            and start <= leg.end + LEG_TOLERANCE
            and not _same_known_direction(leg.direction, record.direction)
        ]
        if record.leg_on_line and matches:
            # One call at a time on a line: the calls before the latest one on it had ended when it began. Starts
            # are printed to the minute, so of two in one minute the one that ended later came second.
            latest = max((leg.start, leg.end) for leg in matches)
            matches = [leg for leg in matches if (leg.start, leg.end) == latest]
        if len(matches) != 1:
            if matches:
                log.info("transfer leg matches several calls; kept apart", link=record.source, leg=record.leg_key)
            return None
        return self._call_in_memory(matches[0].call_id)

    def _join_leg(self, call: Call, record: CallRecord) -> None:
        """Another party's leg of the call: one more party; talk time adds up when the legs follow each other,
        not when they run side by side (an incoming and an outgoing leg of one forwarded call)."""
        start, _ = self._record_times(record)
        side_by_side = call.end_time is not None and start < call.end_time - LEG_TOLERANCE
        self._merge_record_part(call, record, side_by_side=side_by_side)
        if call.direction is Direction.UNKNOWN:
            call.direction = record.direction

    def _remember_leg(self, call: Call, record: CallRecord, *, joined: bool) -> None:
        """Offer the call to the next leg — unless this leg completed an inbound + outbound pair (a call
        forwarded or transferred out to another line has exactly those two)."""
        start, end = self._record_times(record)
        key = (record.source, record.leg_key or "")
        legs = self._legs[key]
        horizon = record.received_at - LEG_WINDOW
        earlier = next((leg for leg in legs if leg.call_id == call.call_id), None)
        legs[:] = [leg for leg in legs if leg.end >= horizon and leg.call_id != call.call_id]
        pair_complete = (
            joined and earlier is not None and {earlier.direction, record.direction} == {Direction.IN, Direction.OUT}
        )
        if not pair_complete:
            legs.append(
                _Leg(call.call_id, min(start, call.start_time), max(end, call.end_time or end), record.direction)
            )
            call.open_leg_key, call.open_leg_direction = record.leg_key, record.direction
        else:
            call.open_leg_key, call.open_leg_direction = None, None
        if not legs:
            del self._legs[key]

    def _expire_platform_groups(self, now: datetime) -> None:
        if not self._platform_groups:
            return
        stale = [key for key, (_, seen) in self._platform_groups.items() if now - seen > PLATFORM_GROUP_TIMEOUT]
        for key in stale:
            log.warning("multi-record call never completed", link=key[0], platform_call_id=key[1])
            call_id, _ = self._platform_groups.pop(key)
            call = self._call_in_memory(call_id)
            if call is not None and call.open_group == key[1]:
                call.open_group = None
                self.save_soon(call)

    @staticmethod
    def _record_times(record: CallRecord) -> tuple[datetime, datetime]:
        start = record.start or record.end or record.received_at
        end = record.end
        if end is None:
            end = start + timedelta(seconds=(record.ring_s or 0) + (record.duration_s or 0))
        return start, end

    def _correlate(self, record: CallRecord) -> Call | None:
        """The recorder's live call this record describes, if exactly one fits (closest start wins)."""
        if not record.extension:
            return None
        candidates = self._uncorrelated_live.get(record.extension)
        if not candidates:
            return None
        start, _ = self._record_times(record)
        best: Call | None = None
        best_delta = self._correlation_window_by_link.get(record.source, self._correlation_window)
        for call in list(candidates.values()):
            if record.received_at - call.start_time > UNCORRELATED_HORIZON:
                del candidates[call.call_id]
                continue
            delta = abs(call.start_time - start)
            other = call.calling if call.extension == call.called else call.called
            if delta <= best_delta and numbers_match(record.other_number, other):
                best, best_delta = call, delta
        if best is not None:
            del candidates[best.call_id]
            best.awaiting_record = False
        return best

    def _complete_with_record(self, call: Call, record: CallRecord) -> None:
        """Add what only the PBX knows (its call id, account, ring and talk times) to a live call."""
        if record.platform_call_id and not call.platform_call_id:
            call.platform_call_id = record.platform_call_id
            self._memory_ids_by_platform[record.platform_call_id].add(call.call_id)
        call.link = call.link or record.source
        call.account = call.account or record.account
        call.trunk = call.trunk or record.trunk
        if record.ring_s is not None:
            call.ring_s = record.ring_s
        if record.duration_s is not None:
            call.duration_s = record.duration_s
        if call.direction is Direction.UNKNOWN:
            call.direction = record.direction
        self._add_party(call, record.extension)

    def _merge_record_part(self, call: Call, record: CallRecord, *, side_by_side: bool = False) -> None:
        """A further segment of a multi-record call: one more party, later end, more talk time (the longer one
        when the segments ran side by side rather than one after the other)."""
        _, end = self._record_times(record)
        self._add_party(call, record.extension)
        if record.direction is Direction.INTERNAL:
            self._add_party(call, record.other_number)
        if record.duration_s is not None:
            previous = call.duration_s or 0
            call.duration_s = max(previous, record.duration_s) if side_by_side else previous + record.duration_s
        if not call.ongoing and (call.end_time is None or end > call.end_time):
            call.end_time = end
            self._note_ended(call)
        call.account = call.account or record.account

    def _add_party(self, call: Call, number: str | None) -> None:
        if number and number not in call.parties:
            call.other_parties.add(number)
            if call.ongoing:
                self._ongoing_by_party[number][call.call_id] = call
            else:
                self._note_ended(call)

    def _record_call_id(self, record: CallRecord) -> str | None:
        """The callID a call made from this record gets: derived from the journal line it began on, so that
        read again after a crash the record makes this same callID (None: not journalled)."""
        if record.origin_seq is None:
            return None
        return record_call_id(self._store.instance_id, record.origin_seq, record.origin_index)

    def _call_from_record(self, record: CallRecord) -> Call:
        start, end = self._record_times(record)
        if record.direction is Direction.IN:
            calling, called = record.other_number, record.extension
        else:
            calling, called = record.extension, record.other_number
        answered = record.answered if record.answered is not None else bool(record.duration_s)
        extension_config = self.extension_config(record.extension)
        call = Call(
            call_id=self._record_call_id(record) or new_id(),
            start_time=start,
            state=CallState.FINISHED,
            direction=record.direction,
            extension=record.extension,
            calling=calling,
            called=called,
            platform_call_id=record.platform_call_id,
            link=record.source,
            account=record.account,
            trunk=record.trunk,
            connect_time=start + timedelta(seconds=record.ring_s or 0) if answered else None,
            end_time=end,
            ring_s=record.ring_s,
            duration_s=record.duration_s,
            recording_mode=extension_config.mode if extension_config else None,
        )
        if record.direction is Direction.INTERNAL and record.other_number:
            call.other_parties.add(record.other_number)
        self.new_call_count += 1
        self._remember_finished(call)
        self._note_ended(call)
        return call

    # ---- in-memory indexes

    def _index_ongoing(self, call: Call) -> None:
        self._ongoing_by_id[call.call_id] = call
        for number in call.parties:
            self._ongoing_by_party[number][call.call_id] = call
        if call.recorder and call.native_id:
            self._ongoing_by_native[(call.recorder, call.native_id)] = call
        self._index_external_ids(call)

    def _unindex_ongoing(self, call: Call) -> None:
        self._ongoing_by_id.pop(call.call_id, None)
        for number in call.parties:
            calls = self._ongoing_by_party.get(number)
            if calls is not None:
                calls.pop(call.call_id, None)
                if not calls:
                    del self._ongoing_by_party[number]
        if call.recorder and call.native_id:
            self._ongoing_by_native.pop((call.recorder, call.native_id), None)

    def _index_external_ids(self, call: Call) -> None:
        if call.platform_call_id:
            self._memory_ids_by_platform[call.platform_call_id].add(call.call_id)
        if call.native_id:
            self._memory_ids_by_native[call.native_id].add(call.call_id)

    def _unindex_external_ids(self, call: Call) -> None:
        for index, value in (
            (self._memory_ids_by_platform, call.platform_call_id),
            (self._memory_ids_by_native, call.native_id),
        ):
            if value and value in index:
                index[value].discard(call.call_id)
                if not index[value]:
                    del index[value]

    def _remember_finished(self, call: Call) -> None:
        finished = self._finished_by_id
        if call.call_id in finished:
            finished.move_to_end(call.call_id)  # a new one goes to the end by itself
        finished[call.call_id] = call
        self._index_external_ids(call)
        if len(self._finished_by_id) >= self._evict_at:
            self._evict_finished()

    def _evict_finished(self) -> None:
        """Drop the oldest cached calls down to the cache size, in one pass (amortised over EVICTION_BATCH calls).

        A call whose save is still queued stays (the store would not find it yet), and so does one
        waiting for the rest of its multi-record group.
        """
        excess = len(self._finished_by_id) - self._finished_cache_size
        pinned = {call_id for call_id, _ in self._platform_groups.values()}
        evictable: list[str] = []
        for call_id in self._finished_by_id:  # oldest first; stop as soon as enough are found
            if call_id not in self._unsaved and call_id not in pinned:
                evictable.append(call_id)
                if len(evictable) >= excess:
                    break
        for call_id in evictable:
            self._unindex_external_ids(self._finished_by_id.pop(call_id))
        # Next pass a batch later, even when little could go (saves still queued): never a scan per call.
        self._evict_at = max(len(self._finished_by_id), self._finished_cache_size) + self._eviction_batch

    def _call_in_memory(self, call_id: str) -> Call | None:
        return self._ongoing_by_id.get(call_id) or self._finished_by_id.get(call_id)

    def _note_ended(self, call: Call) -> None:
        """Keep `last` answers current: the call is now the newest ended call of its numbers, or ties with it."""
        assert call.end_time is not None
        for number in call.parties:
            entry = self._last_ended.get(number)
            if entry is None:
                # What the store holds for this number is merged in at the first lookup.
                self._last_ended[number] = _LastEnded(call.end_time, [call.call_id], merged_with_store=False)
            elif entry.end_time is None or call.end_time > entry.end_time:
                entry.end_time, entry.call_ids = call.end_time, [call.call_id]
            elif call.end_time == entry.end_time and call.call_id not in entry.call_ids:
                entry.call_ids.append(call.call_id)
        if len(self._last_ended) > MAX_LAST_ENDED_ENTRIES:
            self._last_ended.clear()  # a memo only: everything is re-read from the store on demand

    # ---- lookups

    def ongoing_calls(self) -> list[Call]:
        return list(self._ongoing_by_id.values())

    def recent_finished(self, limit: int) -> list[Call]:
        """The calls that finished last (those still cached in memory), newest first."""
        found: list[Call] = []
        for call in reversed(self._finished_by_id.values()):
            if len(found) >= limit:
                break
            found.append(call)
        return found

    def ongoing_calls_of(self, number: str) -> list[Call]:
        return list(self._ongoing_by_party.get(number, {}).values())

    async def last_calls_of(self, number: str) -> list[Call]:
        """The most recently ended call(s) of a number: more than one only when they ended at the same moment.
        A call ending in the future (a PBX clock ahead of ours, a sped-up demo) is not the last one until then."""
        now = utc_now()
        entry = self._last_ended.get(number)
        if entry is None or not entry.merged_with_store:
            stored = await self._store.last_ended_call_ids(number, limit=2, ended_by=now)
            entry = self._last_ended.get(number)  # may have changed while the store answered
            if entry is None:
                entry = self._last_ended[number] = _LastEnded(None, [], merged_with_store=True)
            entry.merged_with_store = True
            for end_time, call_id in stored:
                if entry.end_time is None or end_time > entry.end_time:
                    entry.end_time, entry.call_ids = end_time, [call_id]
                elif end_time == entry.end_time and call_id not in entry.call_ids:
                    entry.call_ids.append(call_id)
        if entry.end_time is not None and entry.end_time > now:
            # The memo keeps only the newest end, so the last one up to now is the store's (saves committed first).
            await self.flush()
            stored = await self._store.last_ended_call_ids(number, limit=2, ended_by=now)
            return await self._calls([call_id for end_time, call_id in stored if end_time == stored[0][0]])
        return await self._calls(list(entry.call_ids))

    async def _calls(self, call_ids: Sequence[str]) -> list[Call]:
        calls = []
        for call_id in call_ids:
            call = await self.get_call(call_id)
            if call is not None:
                calls.append(call)
        return calls

    async def wait_for_next_call(self, number: str, timeout_s: float) -> Call | None:
        """Wait for a call of `number` to start; None when none starts within `timeout_s`.

        Woken by the call-start event itself. Cancelling the waiting task (a client that
        disconnected) removes the waiter.
        """
        future: asyncio.Future[Call] = asyncio.get_running_loop().create_future()
        waiters = self._next_waiters[number]
        waiters.add(future)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return None
        finally:
            waiters.discard(future)
            if not waiters:
                self._next_waiters.pop(number, None)

    def _wake_next_waiters(self, call: Call) -> None:
        for number in call.parties:
            for future in self._next_waiters.get(number, ()):
                if not future.done():
                    future.set_result(call)

    @property
    def next_waiter_count(self) -> int:
        return sum(len(waiters) for waiters in self._next_waiters.values())

    async def find_by_status(self, number: str, statuses: Iterable[str], next_window_s: float) -> Call:
        """Try each status in order; the first that finds exactly one call wins. Raises CallNotFound/AmbiguousCall."""
        for status in statuses:
            if status == STATUS_ONGOING:
                found = self.ongoing_calls_of(number)
            elif status == STATUS_LAST:
                found = await self.last_calls_of(number)
            elif status == STATUS_NEXT:
                call = await self.wait_for_next_call(number, next_window_s)
                found = [call] if call is not None else []
            else:
                raise ValueError(status)
            if len(found) > 1:
                raise AmbiguousCall(f"{len(found)} calls of {number} match status {status}")
            if found:
                return found[0]
        raise CallNotFound(number)

    async def get_call(self, call_id: str) -> Call | None:
        """The one in-memory Call object for an id, read from the store (once) when not in memory."""
        call = self._call_in_memory(call_id)
        if call is not None:
            return call
        loading = self._loading.get(call_id)
        if loading is not None:  # another request is already reading it: share its object
            return await asyncio.shield(loading)
        future: asyncio.Future[Call | None] = asyncio.get_running_loop().create_future()
        self._loading[call_id] = future
        try:
            call = await self._store.get_call(call_id)
            in_memory = self._call_in_memory(call_id)  # an event may have loaded it meanwhile
            if in_memory is not None:
                call = in_memory
            elif call is not None:
                self._adopt(call)
            future.set_result(call)
            return call
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # consumed: waiters re-raise it themselves
            raise
        finally:
            del self._loading[call_id]

    async def expired_on_demand_call_ids(self, ended_before: datetime, limit: int) -> list[str]:
        """Calls with an on-demand recording that ended before the cutoff and nobody kept or protected."""
        await self.flush()  # flags just set in memory must be in the store the query reads
        return await self._store.expired_on_demand_call_ids(ended_before, limit)

    async def find_by_platform_call_id(self, platform_call_id: str) -> Call:
        in_memory = set(self._memory_ids_by_platform.get(platform_call_id, ()))
        stored = await self._store.calls_by_platform_call_id(platform_call_id, limit=2)
        return self._single(in_memory, stored, f"platformCallID {platform_call_id}")

    async def find_by_native_id(self, native_id: str) -> Call:
        in_memory = set(self._memory_ids_by_native.get(native_id, ()))
        stored = await self._store.calls_by_native_id(native_id, limit=2)
        return self._single(in_memory, stored, f"nativeID {native_id}")

    async def find_id_by_platform_call_id(self, platform_call_id: str) -> str:
        """Only the callID: one indexed query, no call read (GetCallID needs nothing more)."""
        call_ids = set(self._memory_ids_by_platform.get(platform_call_id, ()))
        call_ids.update(await self._store.call_ids_by_platform_call_id(platform_call_id, limit=2))
        return self._single_id(call_ids, f"platformCallID {platform_call_id}")

    async def find_id_by_native_id(self, native_id: str) -> str:
        call_ids = set(self._memory_ids_by_native.get(native_id, ()))
        call_ids.update(await self._store.call_ids_by_native_id(native_id, limit=2))
        return self._single_id(call_ids, f"nativeID {native_id}")

    @staticmethod
    def _single_id(call_ids: set[str], what: str) -> str:
        if len(call_ids) > 1:
            raise AmbiguousCall(f"{len(call_ids)} calls have {what}")
        if not call_ids:
            raise CallNotFound(what)
        return call_ids.pop()

    def _single(self, in_memory: set[str], stored: list[Call], what: str) -> Call:
        """Exactly one call between memory (not yet committed) and the store, as the one shared object."""
        call_id = self._single_id(in_memory | {call.call_id for call in stored}, what)
        call = self._call_in_memory(call_id)
        if call is None:  # only in the store: its object becomes the one in memory
            call = next(stored_call for stored_call in stored if stored_call.call_id == call_id)
            self._adopt(call)
        return call

    def _adopt(self, call: Call) -> None:
        if call.ongoing:
            self._index_ongoing(call)
        else:
            self._remember_finished(call)


def recording_mode_of(call: Call, tracker: CallTracker) -> RecordingMode | None:
    """The call's mode: fixed when the call started, else the extension's configured mode."""
    if call.recording_mode is not None:
        return call.recording_mode
    extension = tracker.extension_config(call.extension)
    return extension.mode if extension else None


__all__ = [
    "CallTracker",
    "LOOKUP_STATUSES",
    "STATUS_LAST",
    "STATUS_NEXT",
    "STATUS_ONGOING",
    "numbers_match",
    "parse_statuses",
    "recording_mode_of",
]
