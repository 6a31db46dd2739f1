"""KeepCall semantics against a scripted recorder (a unit-test double of RecorderControl)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest

from gateway.calls import CallTracker
from gateway.config import ExtensionConfig
from gateway.errors import RecorderError, RecorderNotConnected, RecorderTimeout
from gateway.events import CallEnded, CallStarted, RecordingStarted
from gateway.model import Direction, RecordingMode
from gateway.recording import KeepRefused, RecordingService, UnavailableRecorder
from gateway.store import Store

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)
EXTENSIONS = (
    ExtensionConfig("8856", RecordingMode.CONTROLLED, "trunk1", "1/5"),
    ExtensionConfig("8857", RecordingMode.FULL, "trunk1", "1/6"),
    ExtensionConfig("8858", RecordingMode.ON_DEMAND, "trunk1", "1/7"),
    ExtensionConfig("8859", RecordingMode.CONTROLLED_AUTOSTART, "trunk1", "1/8"),
    ExtensionConfig("8860", RecordingMode.DO_NOT_RECORD),
)


@dataclass
class ScriptedRecorder:
    """Answers START/STOP like a device would; `fail_with` makes the next command fail."""

    name: str = "trunk1"
    timeout_s: float = 2.0
    connected: bool = True
    commands: list[tuple[str, str]] = field(default_factory=list)
    fail_with: Exception | None = None
    delay_s: float = 0.0
    _next_rec: int = 0

    async def _answer(self, verb: str, argument: str) -> str:
        self.commands.append((verb, argument))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        self._next_rec += verb == "START"
        return f"R{self._next_rec}"

    async def start(self, channel, ref=None):
        return await self._answer("START", channel)

    async def stop(self, channel):
        return await self._answer("STOP", channel)

    async def discard(self, recording_native_id):
        await self._answer("DISCARD", recording_native_id)


@pytest.fixture
async def tracker(tmp_path):
    store = Store(tmp_path / "calls.db")
    await store.open()
    tracker = CallTracker(store, EXTENSIONS)
    await tracker.start()
    yield tracker
    await tracker.flush()
    await store.close()


@pytest.fixture
def recorder():
    return ScriptedRecorder()


@pytest.fixture
def service(tracker, recorder):
    return RecordingService(tracker, {"trunk1": recorder})


def live_call(tracker, extension="8856", channel="1/5", native_id="TRS1"):
    return tracker.apply(CallStarted("trunk1", channel, native_id, "0170", extension, Direction.IN, T0))


async def test_manual_start_sends_start_and_makes_a_manual_recording(tracker, service, recorder):
    call = live_call(tracker)
    await service.manual_record(call, stop=False)
    assert recorder.commands == [("START", "1/5")]
    assert call.active_recording.manual and call.active_recording.native_id == "R1"


async def test_start_while_recording_sends_nothing(tracker, service, recorder):
    call = live_call(tracker)
    await service.manual_record(call, stop=False)
    await service.manual_record(call, stop=False)
    assert recorder.commands == [("START", "1/5")]


async def test_concurrent_starts_send_one_command(tracker, service, recorder):
    recorder.delay_s = 0.01
    call = live_call(tracker)
    await asyncio.gather(*(service.manual_record(call, stop=False) for _ in range(5)))
    assert recorder.commands == [("START", "1/5")]


async def test_stop_while_idle_sends_nothing(tracker, service, recorder):
    call = live_call(tracker)
    await service.manual_record(call, stop=True)
    assert recorder.commands == []


async def test_restart_makes_a_new_recording(tracker, service, recorder):
    call = live_call(tracker)
    await service.manual_record(call, stop=False)
    await service.manual_record(call, stop=True)
    await service.manual_record(call, stop=False)
    assert [verb for verb, _ in recorder.commands] == ["START", "STOP", "START"]
    assert [r.native_id for r in call.recordings] == ["R1", "R2"]
    assert call.recordings[0].end_time is not None and call.active_recording is call.recordings[1]
    assert call.last_manual_recording is call.recordings[1]


async def test_autostart_recording_can_be_stopped(tracker, service, recorder):
    call = live_call(tracker, "8859", "1/8")
    tracker.apply(RecordingStarted("trunk1", "1/8", "R9", "TRS1", T0))
    await service.manual_record(call, stop=True)
    assert recorder.commands == [("STOP", "1/8")] and call.active_recording is None


@pytest.mark.parametrize("extension", ["8857", "8858", "8860"])
async def test_manual_record_refused_off_controlled_without_a_command(tracker, service, recorder, extension):
    call = live_call(tracker, extension, "1/9")
    with pytest.raises(KeepRefused):
        await service.manual_record(call, stop=False)
    assert recorder.commands == []


async def test_manual_record_needs_an_ongoing_call(tracker, service, recorder):
    call = live_call(tracker)
    tracker.apply(CallEnded("trunk1", "1/5", "TRS1", T0 + timedelta(seconds=5)))
    with pytest.raises(KeepRefused):
        await service.manual_record(call, stop=False)
    assert recorder.commands == []


async def test_recorder_not_connected(tracker):
    service = RecordingService(tracker, {"trunk1": UnavailableRecorder("trunk1")})
    with pytest.raises(RecorderNotConnected):
        await service.manual_record(live_call(tracker), stop=False)


@pytest.mark.parametrize(
    ("error", "result"),
    [
        (None, "ok"),
        (RecorderError("NOCALL", "no call on channel"), "err"),
        (RecorderTimeout("trunk1", 2.0), "timeout"),
        (RecorderNotConnected("trunk1"), "down"),  # the link dropped while the command waited for its reply
    ],
)
async def test_each_command_is_told_with_its_outcome_and_duration(tracker, recorder, error, result):
    observed: list[tuple[str, str, str, float | None]] = []
    service = RecordingService(tracker, {"trunk1": recorder}, observe_command=lambda *told: observed.append(told))
    recorder.fail_with, recorder.delay_s = error, 0.01
    call = live_call(tracker)
    try:
        await service.manual_record(call, stop=False)
    except RecorderError:
        assert error is not None
    [(name, verb, told_result, seconds)] = observed
    assert (name, verb, told_result) == ("trunk1", "START", result)
    assert seconds is not None and 0.01 <= seconds < 1.0


async def test_a_command_not_sent_for_want_of_a_connection_is_told_down_without_a_duration(tracker):
    observed: list[tuple[str, str, str, float | None]] = []
    service = RecordingService(
        tracker, {"trunk1": UnavailableRecorder("trunk1")}, observe_command=lambda *told: observed.append(told)
    )
    with pytest.raises(RecorderNotConnected):
        await service.manual_record(live_call(tracker), stop=True)
    assert observed == [("trunk1", "STOP", "down", None)]


async def test_a_cancelled_command_is_not_told(tracker, recorder):
    observed: list[tuple[str, str, str, float | None]] = []
    service = RecordingService(tracker, {"trunk1": recorder}, observe_command=lambda *told: observed.append(told))
    recorder.delay_s = 5.0
    waiting = asyncio.create_task(service.manual_record(live_call(tracker), stop=False))
    while not recorder.commands:
        await asyncio.sleep(0.001)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert observed == []  # how it would have ended is not known


@pytest.mark.parametrize("error", [RecorderError("NOCALL", "no call on channel"), RecorderTimeout("trunk1", 2.0)])
async def test_recorder_failures_leave_no_recording(tracker, service, recorder, error):
    recorder.fail_with = error
    call = live_call(tracker)
    with pytest.raises(type(error)):
        await service.manual_record(call, stop=False)
    assert call.recordings == []


async def test_keep_requires_a_recording_and_is_committed(tracker, service):
    call = live_call(tracker, "8858", "1/7")
    with pytest.raises(KeepRefused):
        await service.keep(call, unmark=False)
    tracker.apply(RecordingStarted("trunk1", "1/7", "R5", "TRS1", T0))
    await service.keep(call, unmark=False)
    assert call.kept
    stored = await tracker._store.get_call(call.call_id)
    assert stored.kept
    await service.keep(call, unmark=True)
    assert not call.kept


async def test_keep_on_full_extension_is_already_kept(tracker, service):
    call = live_call(tracker, "8857", "1/6")
    await service.keep(call, unmark=False)
    assert not call.kept  # nothing changes: full recordings are kept anyway


async def test_protect_sets_and_clears_the_flag(tracker, service):
    call = live_call(tracker)
    await service.protect(call, unmark=False)
    assert (await tracker._store.get_call(call.call_id)).do_not_delete
    await service.protect(call, unmark=True)
    assert not (await tracker._store.get_call(call.call_id)).do_not_delete
