"""Recording-mode policy and KeepCall semantics: keep, protect, and manual start/stop → recorder commands."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol, TypeVar

import structlog

from gateway.calls import CallTracker, recording_mode_of
from gateway.errors import GatewayError, RecorderError, RecorderNotConnected, RecorderTimeout
from gateway.events import CallConnected
from gateway.feed import CALL_KEPT
from gateway.model import Call, RecordingMode, utc_now

log = structlog.get_logger(__name__)


# The commands the gateway gives a recorder, named by their TRUNKREC/1 verbs (docs/trunkrec.md): the `verb` label of
# gateway_recorder_commands_total.
VERB_START = "START"
VERB_STOP = "STOP"
VERB_DISCARD = "DISCARD"
# How a command ended (the `result` label): answered ok, refused by the recorder, not answered in time, or not sent
# because the recorder was not connected.
RESULT_OK = "ok"
RESULT_ERR = "err"
RESULT_TIMEOUT = "timeout"
RESULT_DOWN = "down"

# (recorder, verb, result, seconds from sending to the end; None when it was not sent) → the metrics.
CommandObserver = Callable[[str, str, str, float | None], None]
_Reply = TypeVar("_Reply")


def _ignore_command(_recorder: str, _verb: str, _result: str, _seconds: float | None) -> None:
    pass


async def issue_command(
    observe: CommandObserver, recorder: str, verb: str, command: Callable[[], Awaitable[_Reply]]
) -> _Reply:
    """Runs one recorder command and tells `observe` how it ended and how long it took. A command cancelled on the
    way (its API client went away) is not told: how it would have ended is not known."""
    started = time.perf_counter()
    try:
        reply = await command()
    except RecorderTimeout:
        observe(recorder, verb, RESULT_TIMEOUT, time.perf_counter() - started)
        raise
    except RecorderNotConnected:  # the link dropped before the reply came
        observe(recorder, verb, RESULT_DOWN, time.perf_counter() - started)
        raise
    except Exception:  # a refusal, or anything a driver may raise
        observe(recorder, verb, RESULT_ERR, time.perf_counter() - started)
        raise
    observe(recorder, verb, RESULT_OK, time.perf_counter() - started)
    return reply


class RecorderControl(Protocol):
    """What the gateway needs from a recorder driver (TRUNKREC/1 client or any other)."""

    name: str
    timeout_s: float

    @property
    def connected(self) -> bool: ...

    async def start(self, channel: str, ref: str | None = None) -> str:
        """Start recording on the channel; returns the recorder's recording id. Raises RecorderError."""

    async def stop(self, channel: str) -> str:
        """Stop recording on the channel; returns the recorder's recording id. Raises RecorderError."""

    async def discard(self, recording_native_id: str) -> None:
        """Delete a finished recording at the recorder. Raises RecorderError."""


@dataclass(slots=True)
class UnavailableRecorder:
    """A configured recorder with no driver attached (yet): never connected, refuses every command."""

    name: str
    timeout_s: float = 2.0

    @property
    def connected(self) -> bool:
        return False

    async def start(self, channel: str, ref: str | None = None) -> str:
        raise RecorderNotConnected(self.name)

    async def stop(self, channel: str) -> str:
        raise RecorderNotConnected(self.name)

    async def discard(self, recording_native_id: str) -> None:
        raise RecorderNotConnected(self.name)


class KeepRefused(GatewayError):
    """KeepCall cannot do what was asked on this call (not recorded, not Controlled, not ongoing …)."""


class RecordingService:
    """KeepCall's three types. Every change is committed before the method returns."""

    def __init__(
        self,
        tracker: CallTracker,
        recorders: Mapping[str, RecorderControl],
        *,
        observe_command: CommandObserver = _ignore_command,
    ) -> None:
        self._tracker = tracker
        self._recorders = recorders
        self._observe_command = observe_command
        # One manual start/stop at a time per channel, so that "already recording?" and the command
        # it leads to cannot interleave with a second request for the same channel.
        self._channel_locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def keep(self, call: Call, *, unmark: bool) -> None:
        """On-demand keep: the call's recordings survive retention (docs/api.md §6 KeepCall, no type)."""
        if recording_mode_of(call, self._tracker) is RecordingMode.FULL:
            return  # every recording of a full extension is kept already
        if not call.recorded:
            raise KeepRefused("Unable to keep the call, because the call was not recorded.")
        if call.kept != (not unmark):
            call.kept = not unmark
            self._tracker.changed(CALL_KEPT, call, type="keep", unmark=unmark)
            await self._tracker.save(call)

    async def protect(self, call: Call, *, unmark: bool) -> None:
        """do_not_delete: the Protected flag; retention never deletes a protected call."""
        if call.do_not_delete != (not unmark):
            call.do_not_delete = not unmark
            self._tracker.changed(CALL_KEPT, call, type="do_not_delete", unmark=unmark)
            await self._tracker.save(call)

    async def manual_record(self, call: Call, *, stop: bool) -> None:
        """Start (or stop) recording a Controlled extension's call; returns after the recorder confirmed."""
        mode = recording_mode_of(call, self._tracker)
        if mode is None or not mode.is_controlled:
            raise KeepRefused(
                "Unable to control the recording, because the extension is not configured for controlled recording."
            )
        extension = self._tracker.extension_config(call.extension)
        if extension is None or not extension.channel or not extension.recorder:
            raise KeepRefused("Unable to control the recording, because the extension has no recorder channel.")
        if not call.ongoing:
            raise KeepRefused("Unable to control the recording, because the call is not in progress.")
        recorder = self._recorders.get(extension.recorder)
        if recorder is None or not recorder.connected:
            self._observe_command(extension.recorder, VERB_STOP if stop else VERB_START, RESULT_DOWN, None)
            raise RecorderNotConnected(extension.recorder)
        lock = self._channel_locks.setdefault((extension.recorder, extension.channel), asyncio.Lock())
        async with lock:
            if not call.ongoing:
                raise KeepRefused("Unable to control the recording, because the call is not in progress.")
            active = call.active_recording
            bound = log.bind(call_id=call.call_id, recorder=recorder.name, channel=extension.channel)
            if not stop:
                if active is not None:
                    return  # already recording: success without a second START
                start = partial(recorder.start, extension.channel, ref=call.call_id)
                native_id = await issue_command(self._observe_command, recorder.name, VERB_START, start)
                self._tracker.recording_started(
                    call, recorder.name, extension.channel, native_id, utc_now(), manual=True
                )
                bound.info("manual recording started", rec=native_id)
            else:
                if active is None:
                    return  # not recording: success without a STOP
                stop_command = partial(recorder.stop, extension.channel)
                native_id = await issue_command(self._observe_command, recorder.name, VERB_STOP, stop_command)
                # The channel records one thing at a time: what it stopped is our active recording.
                self._tracker.end_recording(call, active, utc_now())
                bound.info("manual recording stopped", rec=native_id)
            await self._tracker.save(call)


# How often on-demand retention looks for expired recordings; retention is hours, so a minute is precise enough.
RETENTION_SWEEP_INTERVAL_S = 60.0
# Recordings discarded per sweep at most, so that a backlog after downtime does not stall the recorder.
RETENTION_BATCH = 500


class RecordingPolicy:
    """Recording modes in action (docs/api.md §7): start on CONNECT where the mode says so; on-demand retention."""

    def __init__(
        self,
        tracker: CallTracker,
        recorders: Mapping[str, RecorderControl],
        *,
        retention_s: float,
        sweep_interval_s: float = RETENTION_SWEEP_INTERVAL_S,
        observe_command: CommandObserver = _ignore_command,
    ) -> None:
        self._tracker = tracker
        self._recorders = recorders
        self._retention_s = retention_s
        self._sweep_interval_s = sweep_interval_s
        self._observe_command = observe_command
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        tracker.subscribe(self._on_event)

    # ---- start on connect

    def _on_event(self, event: object, call: Call) -> None:
        if not isinstance(event, CallConnected):
            return
        mode = recording_mode_of(call, self._tracker)
        if mode is None or not mode.starts_on_connect or call.active_recording is not None:
            return
        task = asyncio.create_task(self._autostart(call, mode), name=f"autostart-{call.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _autostart(self, call: Call, mode: RecordingMode) -> None:
        extension = self._tracker.extension_config(call.extension)
        if extension is None or not extension.channel or not extension.recorder:
            return
        recorder = self._recorders.get(extension.recorder)
        bound = log.bind(call_id=call.call_id, recorder=extension.recorder, channel=extension.channel, mode=mode.value)
        if recorder is None or not recorder.connected:
            self._observe_command(extension.recorder, VERB_START, RESULT_DOWN, None)
            bound.warning("cannot start recording: recorder not connected")
            return
        try:
            start = partial(recorder.start, extension.channel, ref=call.call_id)
            native_id = await issue_command(self._observe_command, recorder.name, VERB_START, start)
        except RecorderError as error:
            if error.code == "ALREADY":
                return  # the device records it already; its STARTED event tells us the id
            bound.warning("recording did not start", code=error.code, reason=error.text)
            return
        if call.ongoing:
            self._tracker.recording_started(call, recorder.name, extension.channel, native_id, utc_now())
        bound.info("recording started", rec=native_id)

    # ---- on-demand retention

    async def sweep_retention(self, now: datetime | None = None) -> int:
        """Discard on-demand recordings older than the retention that nobody kept or protected; returns how many."""
        cutoff = (now or utc_now()) - timedelta(seconds=self._retention_s)
        discarded = 0
        for call_id in await self._tracker.expired_on_demand_call_ids(cutoff, RETENTION_BATCH):
            call = await self._tracker.get_call(call_id)
            if (
                call is None
                or call.kept
                or call.do_not_delete
                or recording_mode_of(call, self._tracker) is not RecordingMode.ON_DEMAND
            ):
                continue
            changed = False
            for recording in call.recordings:
                if recording.deleted or recording.end_time is None or recording.end_time > cutoff:
                    continue
                recorder = self._recorders.get(recording.recorder or "")
                if recorder is None or not recorder.connected:
                    continue  # retried on the next sweep
                try:
                    if recording.native_id:
                        discard = partial(recorder.discard, recording.native_id)
                        await issue_command(self._observe_command, recorder.name, VERB_DISCARD, discard)
                except RecorderError as error:
                    if error.code != "NOREC":  # NOREC: already gone at the recorder, mark it deleted too
                        log.warning("discard failed", call_id=call.call_id, rec=recording.native_id, code=error.code)
                        continue
                recording.deleted = True
                changed = True
                discarded += 1
            if changed:
                await self._tracker.save(call)
        if discarded:
            log.info("on-demand retention discarded recordings", recordings=discarded)
        return discarded

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep_retention()
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(self._sweep_interval_s)

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="on-demand-retention")

    async def close(self) -> None:
        tasks = list(self._tasks) + ([self._sweeper] if self._sweeper else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sweeper = None
