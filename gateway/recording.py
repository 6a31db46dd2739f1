"""Recording-mode policy and KeepCall semantics: keep, protect, and manual start/stop → recorder commands."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from gateway.calls import CallTracker, recording_mode_of
from gateway.errors import GatewayError, RecorderNotConnected
from gateway.model import Call, RecordingMode, utc_now

log = structlog.get_logger(__name__)


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

    def __init__(self, tracker: CallTracker, recorders: Mapping[str, RecorderControl]) -> None:
        self._tracker = tracker
        self._recorders = recorders
        # One manual start/stop at a time per channel, so that "already recording?" and the command
        # it leads to cannot interleave with a second request for the same channel.
        self._channel_locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def keep(self, call: Call, *, unmark: bool) -> None:
        """On-demand keep: the call's recordings survive retention (api.md §6 KeepCall, no type)."""
        if recording_mode_of(call, self._tracker) is RecordingMode.FULL:
            return  # every recording of a full extension is kept already
        if not call.recorded:
            raise KeepRefused("Unable to keep the call, because the call was not recorded.")
        if call.kept != (not unmark):
            call.kept = not unmark
            await self._tracker.save(call)

    async def protect(self, call: Call, *, unmark: bool) -> None:
        """do_not_delete: the Protected flag; retention never deletes a protected call."""
        if call.do_not_delete != (not unmark):
            call.do_not_delete = not unmark
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
                native_id = await recorder.start(extension.channel, ref=call.call_id)
                self._tracker.recording_started(
                    call, recorder.name, extension.channel, native_id, utc_now(), manual=True
                )
                bound.info("manual recording started", rec=native_id)
            else:
                if active is None:
                    return  # not recording: success without a STOP
                native_id = await recorder.stop(extension.channel)
                # The channel records one thing at a time: what it stopped is our active recording.
                self._tracker.end_recording(call, active, utc_now())
                bound.info("manual recording stopped", rec=native_id)
            await self._tracker.save(call)
