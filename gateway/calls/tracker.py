"""The call tracker: driver events → calls, and the lookups the API makes (ongoing / last / next, ids).

It is the one owner of call state. Mutations happen on the event loop, in memory first, and are
queued to the store at once; `save()` waits for the commit when an answer depends on it. Recorder events are
applied here; PBX records by the correlator (correlation.py); the calls in memory are in index.py, saving in
saving.py, and what status=last/next need in statuses.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime

import structlog

from gateway.calls.correlation import DEFAULT_CORRELATION_WINDOW_S, UNCORRELATED_HORIZON, RecordCorrelator
from gateway.calls.index import DEFAULT_FINISHED_CACHE_SIZE, CallIndex
from gateway.calls.saving import CallSaver, ProgressSource
from gateway.calls.statuses import STATUS_LAST, STATUS_NEXT, STATUS_ONGOING, LastEndedMemo, NextCallWaiters
from gateway.config import ExtensionConfig
from gateway.errors import AmbiguousCall, CallNotFound
from gateway.events import (
    CallConnected,
    CallEnded,
    CallRecord,
    CallStarted,
    DriverEvent,
    RecorderSynced,
    RecordingStarted,
    RecordingStopped,
)
from gateway.feed import CALL_CONNECTED, CALL_ENDED, CALL_STARTED, RECORDING_STARTED, RECORDING_STOPPED
from gateway.model import Call, CallState, Direction, Recording, RecordingMode, new_id, utc_now
from gateway.store import Store

log = structlog.get_logger(__name__)

CallListener = Callable[[DriverEvent, Call], None]
# `listener(change, call, detail)` for each change the event feed reports (gateway.feed names: call.started …).
ChangeListener = Callable[[str, Call, Mapping[str, object]], None]


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
        self._saver = CallSaver(store)
        self._index = CallIndex(
            finished_cache_size, unsaved=self._saver.unsaved, grouped=lambda: self._records.grouped_call_ids()
        )
        self._last_ended = LastEndedMemo()
        self._next_waiters = NextCallWaiters()
        self._records = RecordCorrelator(
            store,
            self._index,
            self._last_ended,
            self,
            correlation_window_s=correlation_window_s,
            correlation_window_by_link=correlation_window_by_link,
        )
        self._listeners: list[CallListener] = []
        self._change_listeners: list[ChangeListener] = []
        self._loading: dict[str, asyncio.Future[Call | None]] = {}
        self._recorder_calls_created = 0

    # ---- life cycle

    async def start(self) -> None:
        """Load the calls that were ongoing when the gateway stopped (recorders reconcile them on sync), and
        those it still had business with: multi-record calls and transfer legs that more records may join,
        recorder calls waiting for their PBX record."""
        for call in await self._store.load_ongoing_calls():
            self._index.index_ongoing(call)
            for recording in call.recordings:
                if recording.active and recording.recorder and recording.native_id:
                    self._index.active_recordings[(recording.recorder, recording.native_id)] = recording
        if self._index.ongoing_by_id:
            log.info("ongoing calls restored", calls=len(self._index.ongoing_by_id))
        now = utc_now()
        open_calls = await self._store.load_open_calls(awaiting_since=now - UNCORRELATED_HORIZON)
        for call in sorted(open_calls, key=lambda open_call: open_call.start_time):
            restored = self._index.ongoing_by_id.get(call.call_id) or call
            if not restored.ongoing:
                self._index.remember_finished(restored)
            self._records.restore(restored, now)
        if open_calls:
            log.info("open calls restored", calls=len(open_calls), groups=self._records.group_count)

    async def flush(self) -> None:
        """Wait until every queued save has committed."""
        await self._saver.flush()

    async def stored(self, call_id: str) -> None:
        """Return once the call's latest change is committed (at once when nothing is queued): an answer that
        hands out a callID or reports a change must not outlive a crash the call did not."""
        await self._saver.stored(call_id)

    def add_progress_source(self, source: ProgressSource) -> None:
        """`source()` is asked at every batch how far a link has applied its journal; the answer is committed
        with the batch's call saves (the records of those lines are in them)."""
        self._saver.add_progress_source(source)

    def note_progress(self) -> None:
        """A link parsed lines that changed no call (headers, quarantined lines): write its progress anyway."""
        self._saver.pending_batch()

    async def apply_replayed(self, records: Sequence[CallRecord]) -> int:
        """Apply records read again from the journal after a restart; a record whose call the store already
        holds (it was applied before the crash) is skipped, so a line never makes a second call. The count
        applied."""
        ids = {
            index: call_id for index, record in enumerate(records) if (call_id := self._records.record_call_id(record))
        }
        existing = await self._store.existing_call_ids(list(ids.values())) if ids else set()
        applied = 0
        for index, record in enumerate(records):
            call_id = ids.get(index)
            if call_id is not None and (call_id in existing or self._index.call(call_id) is not None):
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
        return len(self._index.ongoing_by_id)

    @property
    def new_call_count(self) -> int:
        """Calls created since start (for the health report's stored count)."""
        return self._recorder_calls_created + self._records.calls_created

    def extension_config(self, number: str | None) -> ExtensionConfig | None:
        return self._extensions.get(number) if number else None

    # ---- persistence

    def save_soon(self, call: Call) -> asyncio.Future[None]:
        """Queue the call's state for the store; the future resolves when it is committed (see CallSaver)."""
        return self._saver.save_soon(call)

    async def save(self, call: Call) -> None:
        """Queue the call's current state and wait for the commit (API answers that report a change)."""
        await self.save_soon(call)

    def close(self) -> None:
        """Stop retrying failed saves (the gateway is stopping)."""
        self._saver.close()

    # ---- events

    def apply(self, event: DriverEvent) -> Call | None:
        """Apply one driver event; returns the call it touched (None when it concerned no known call)."""
        call: Call | None
        match event:
            case CallRecord():  # first: a busy SMDR link hands in thousands a second
                call = self._records.apply(event)
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
        existing = self._index.ongoing_by_native(event.recorder, event.native_id)
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
        self._recorder_calls_created += 1
        self._index.index_ongoing(call)
        if call.extension:
            self._records.remember_uncorrelated(call)
        self.save_soon(call)
        self._next_waiters.wake(call)
        self.changed(CALL_STARTED, call)
        log.debug("call started", call_id=call.call_id, recorder=event.recorder, channel=event.channel)
        return call

    def _guess_internal_party(self, event: CallStarted) -> str | None:
        """A channel not in the configuration: the internal party is the called number inbound, the caller outbound."""
        if event.direction is Direction.IN:
            return event.called or None
        if event.direction is Direction.OUT:
            return event.calling or None
        return None

    def _call_connected(self, event: CallConnected) -> Call | None:
        call = self._index.ongoing_by_native(event.recorder, event.native_id)
        if call is None:
            log.debug("connect for unknown call", recorder=event.recorder, native_id=event.native_id)
            return None
        if call.connect_time is None:
            call.connect_time = event.at
            self.save_soon(call)
            self.changed(CALL_CONNECTED, call)
        return call

    def _call_ended(self, event: CallEnded) -> Call | None:
        call = self._index.ongoing_by_native(event.recorder, event.native_id)
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
        self._index.unindex_ongoing(call)
        self._index.remember_finished(call)
        self._last_ended.note_ended(call)
        self.save_soon(call)
        self.changed(CALL_ENDED, call)

    def _recording_event_started(self, event: RecordingStarted) -> Call | None:
        call = None
        if event.call_native_id:
            call = self._index.ongoing_by_native(event.recorder, event.call_native_id)
        if call is None:
            call = self._index.ongoing_on_channel(event.recorder, event.channel)
        if call is None:
            log.warning("recording started for unknown call", recorder=event.recorder, channel=event.channel)
            return None
        self.recording_started(call, event.recorder, event.channel, event.recording_native_id, event.at)
        return call

    def recording_started(
        self, call: Call, recorder: str, channel: str, native_id: str, at: datetime, *, manual: bool = False
    ) -> Recording:
        """Record that `native_id` is running on the call; idempotent (START's reply and the STARTED event both call it)."""
        active = self._index.active_recordings
        recording = active.get((recorder, native_id))
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
                active[(recorder, native_id)] = recording
            self.changed(RECORDING_STARTED, call, recordingID=recording.recording_id, manual=manual)
        elif manual and not recording.manual:
            recording.manual = True
        self.save_soon(call)
        return recording

    def _recording_stopped(self, event: RecordingStopped) -> Call | None:
        recording = self._index.active_recordings.get((event.recorder, event.recording_native_id))
        if recording is None:
            return None  # already stopped (STOP's reply came first) or never seen
        call = self._index.call(recording.call_id)
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
            self._index.active_recordings.pop((recording.recorder, recording.native_id), None)
        if call is not None:
            self.changed(RECORDING_STOPPED, call, recordingID=recording.recording_id)

    def _recorder_synced(self, event: RecorderSynced) -> None:
        """Calls and recordings this recorder did not replay ended while the link was down."""
        for call in [c for c in self._index.ongoing_by_id.values() if c.recorder == event.recorder]:
            if call.native_id not in event.live_native_ids:
                log.info("call ended while the recorder link was down", call_id=call.call_id, recorder=event.recorder)
                self._finish(call, event.at)
        for (recorder, native_id), recording in list(self._index.active_recordings.items()):
            if recorder == event.recorder and native_id not in event.live_recording_native_ids:
                recorded_call = self._index.call(recording.call_id)
                self._end_recording(recording, event.at, recorded_call)
                if recorded_call is not None:
                    self.save_soon(recorded_call)

    # ---- lookups

    def ongoing_calls(self) -> list[Call]:
        return list(self._index.ongoing_by_id.values())

    def recent_finished(self, limit: int) -> list[Call]:
        """The calls that finished last (those still cached in memory), newest first."""
        return self._index.recent_finished(limit)

    def ongoing_calls_of(self, number: str) -> list[Call]:
        return self._index.ongoing_of(number)

    async def last_calls_of(self, number: str) -> list[Call]:
        """The most recently ended call(s) of a number: more than one only when they ended at the same moment.
        A call ending in the future is not the last one until then."""
        calls = []
        for call_id in await self._last_ended.last_call_ids(number, self._store, self.flush):
            call = await self.get_call(call_id)
            if call is not None:
                calls.append(call)
        return calls

    def wait_for_next_call(self, number: str, timeout_s: float) -> Awaitable[Call | None]:
        """Wait for a call of `number` to start; None when none starts within `timeout_s`.

        Woken by the call-start event itself. Cancelling the waiting task (a client that disconnected) removes the
        waiter. Not a coroutine of its own: every frame a parked request holds costs memory ten thousand times.
        """
        return self._next_waiters.wait(number, timeout_s)

    def waiting_for_next(self, numbers: Iterable[str]) -> bool:
        """Whether a status=next request waits for a call of one of these numbers."""
        return self._next_waiters.waiting_for(numbers)

    def wake_next_waiters(self, call: Call) -> None:
        """A call that started on another cluster node: it is the next call of its numbers here too."""
        self._next_waiters.wake(call)

    @property
    def next_waiter_count(self) -> int:
        """status=next requests waiting now: the one sign that a waiter was registered, or left behind."""
        return self._next_waiters.count

    def find_by_status(self, number: str, statuses: Iterable[str], next_window_s: float) -> Awaitable[Call]:
        """Try each status in order; the first that finds exactly one call wins. Raises CallNotFound/AmbiguousCall.

        `ongoing` … then `next` last (what CRMs ask for a screen pop) needs no store read before it waits: then the
        waiter itself is the request's awaitable (no frame of this method stays parked with each of thousands)."""
        statuses = list(statuses)
        if statuses and statuses[-1] == STATUS_NEXT and all(status == STATUS_ONGOING for status in statuses[:-1]):
            if statuses[:-1]:
                found = self.ongoing_calls_of(number)
                if len(found) == 1:
                    return _settled(found[0])
                if len(found) > 1:
                    return _settled(AmbiguousCall(f"{len(found)} calls of {number} match status {STATUS_ONGOING}"))
            return self._next_waiters.wait_or_raise(number, next_window_s)
        return self._find_by_status(number, statuses, next_window_s)

    async def _find_by_status(self, number: str, statuses: list[str], next_window_s: float) -> Call:
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
        call = self._index.call(call_id)
        if call is not None:
            return call
        loading = self._loading.get(call_id)
        if loading is not None:  # another request is already reading it: share its object
            return await asyncio.shield(loading)
        future: asyncio.Future[Call | None] = asyncio.get_running_loop().create_future()
        self._loading[call_id] = future
        try:
            call = await self._store.get_call(call_id)
            in_memory = self._index.call(call_id)  # an event may have loaded it meanwhile
            if in_memory is not None:
                call = in_memory
            elif call is not None:
                self._index.adopt(call)
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
        in_memory = self._index.ids_by_platform_call_id(platform_call_id)
        stored = await self._store.calls_by_platform_call_id(platform_call_id, limit=2)
        return self._single(in_memory, stored, f"platformCallID {platform_call_id}")

    async def find_by_native_id(self, native_id: str) -> Call:
        in_memory = self._index.ids_by_native_id(native_id)
        stored = await self._store.calls_by_native_id(native_id, limit=2)
        return self._single(in_memory, stored, f"nativeID {native_id}")

    async def find_id_by_platform_call_id(self, platform_call_id: str) -> str:
        """Only the callID: one indexed query, no call read (GetCallID needs nothing more)."""
        call_ids = self._index.ids_by_platform_call_id(platform_call_id)
        call_ids.update(await self._store.call_ids_by_platform_call_id(platform_call_id, limit=2))
        return self._single_id(call_ids, f"platformCallID {platform_call_id}")

    async def find_id_by_native_id(self, native_id: str) -> str:
        call_ids = self._index.ids_by_native_id(native_id)
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
        call = self._index.call(call_id)
        if call is None:  # only in the store: its object becomes the one in memory
            call = next(stored_call for stored_call in stored if stored_call.call_id == call_id)
            self._index.adopt(call)
        return call


def _settled(outcome: Call | Exception) -> asyncio.Future[Call]:
    """An awaitable already holding its outcome, without a coroutine."""
    future: asyncio.Future[Call] = asyncio.get_running_loop().create_future()
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
    return future


def recording_mode_of(call: Call, tracker: CallTracker) -> RecordingMode | None:
    """The call's mode: fixed when the call started, else the extension's configured mode."""
    if call.recording_mode is not None:
        return call.recording_mode
    extension = tracker.extension_config(call.extension)
    return extension.mode if extension else None
