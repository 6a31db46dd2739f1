"""One site playing a traffic plan through both simulators on one clock, so the PBX and the recorder agree.

Each planned call starts, is answered and ends at its planned site time. A trunk call (in/out) on an
extension that has a recorder channel appears on the trunk recorder as it happens (CALL SETUP, CONNECT,
RELEASE); every call, recorded or not, is handed to the PBX when it ends, which prints its record(s).
The site clock runs `speed` times faster than real time and is the recorder's clock too, so the recorder's
`ts=` and the PBX's record times describe the same moments.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import IntEnum
from typing import Protocol

import structlog

from simulators.traffic import DIRECTION_IN, DIRECTION_INTERNAL, DIRECTION_OUT, CompletedCall, PlannedCall
from simulators.trunkrec import CAUSE_NO_ANSWER, CAUSE_NORMAL_CLEARING, SimCall, TrunkRecorderSimulator

log = structlog.get_logger(__name__)


class RecordEmitter(Protocol):
    """What the site needs of its PBX (simulators.pbx.PbxSimulator, which imports this module for --traffic)."""

    def emit(self, call: CompletedCall) -> object: ...  # the lines printed (unused here)


# IP Office style Call IDs: ten digits, +1 per call (docs/smdr.md, avaya-ipo).
DEFAULT_FIRST_PBX_CALL_ID = 1_000_020_000
# The PBX's trunk lines for external calls: one E1 (T9001 … T9030); a call takes the lowest free line.
FIRST_TRUNK_LINE = 9001
TRUNK_LINES = 30
# Site times are kept in whole milliseconds (the plan's resolution), so that a call ending and the next
# starting at the same moment compare equal, and the end goes first.
MS_PER_S = 1000
# wait_completed gives up after this long unless told otherwise.
WAIT_TIMEOUT_S = 10.0


class _Step(IntEnum):
    """What happens to a call at a moment; at one moment, ends go first (a channel frees before it is reused)."""

    END = 0
    ANSWER = 1
    START = 2


@dataclass(frozen=True)
class RecorderLeg:
    """A planned call as the trunk recorder carried it."""

    plan: PlannedCall
    pbx_call_id: int
    channel: str
    native_id: str  # the recorder's call id (SimCall.call_id, the API's nativeID)
    start: datetime


@dataclass(slots=True)
class _Active:
    """A call in progress on the site."""

    plan: PlannedCall
    completed: CompletedCall
    channel: str | None = None
    sim_call: SimCall | None = None


def _ms(seconds: float) -> int:
    return round(seconds * MS_PER_S)


# PBX call ids of a run that starts from the clock: a second run against the same gateway store must not reuse
# the first run's ids (the API's platformCallID would find two calls). Ten ids a second of wall time.
CLOCK_CALL_ID_BASE = 1_000_000_000
CLOCK_CALL_IDS_PER_SECOND = 10
CLOCK_CALL_ID_SPAN = 8_000_000_000


def first_call_id_from_clock() -> int:
    """A first PBX call id above every id an earlier run (at ≤ 10 calls/s) can have used."""
    return CLOCK_CALL_ID_BASE + int(time.time()) * CLOCK_CALL_IDS_PER_SECOND % CLOCK_CALL_ID_SPAN


class Site:
    """Plays a plan through both simulators on one site clock, so they agree about every call.

    `channels` maps extensions to recorder channels ("1/5"); only trunk calls (in/out) of those extensions
    reach the recorder — internal calls never cross a trunk. A call whose channel still carries another
    call is left off the recorder (and logged); the PBX still gets it.
    """

    def __init__(
        self,
        plan: Iterable[PlannedCall],
        *,
        pbx: RecordEmitter | None = None,
        recorder: TrunkRecorderSimulator | None = None,
        channels: Mapping[str, str] | None = None,
        speed: float = 1.0,
        start: datetime | None = None,
        first_pbx_call_id: int = DEFAULT_FIRST_PBX_CALL_ID,
        history: int | None = None,
    ) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed!r}")
        if start is None:
            start = datetime.now(timezone.utc).replace(microsecond=0)  # whole seconds, as PBX records print them
        elif start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.channels = dict(channels or {})
        if len(set(self.channels.values())) != len(self.channels):
            raise ValueError("two extensions mapped to one recorder channel")
        if recorder is not None:
            unknown = sorted(set(self.channels.values()) - set(recorder.channel_names))
            if unknown:
                raise ValueError(f"recorder {recorder.name} has no channel {unknown[0]}")
        self.start = start.astimezone(timezone.utc)
        self.speed = float(speed)
        self.pbx = pbx
        self.recorder = recorder
        self._plan = plan
        self._pbx_call_ids = itertools.count(first_pbx_call_id)
        # The calls that ended, oldest first; with `history`, only that many of the latest (an endless demo
        # must not grow without bound). `completed_count` counts them all.
        self.completed: deque[CompletedCall] = deque(maxlen=history)
        self.completed_count = 0
        self._history = history
        # Which calls went to the recorder, by their PBX call id (unique per call, recorder or not).
        self.recorder_calls: dict[int, RecorderLeg] = {}
        self.busy_channel_skips = 0  # trunk calls of mapped extensions left off the recorder: channel busy
        self._active: dict[int, _Active] = {}
        self._trunks_in_use: set[int] = set()
        self._loop_started_at: float | None = None  # loop.time() at site time 0
        self._moment: datetime | None = None  # the planned moment being played, while it is played
        self._changed = asyncio.Event()
        self._played = False
        self._log = log.bind(site_start=self.start.isoformat(), speed=self.speed)
        if recorder is not None:
            recorder.clock = self.clock

    # ---- the site clock

    def clock(self) -> datetime:
        """Site time: while a planned moment is played exactly that moment (so the recorder's ts= and the
        PBX's times agree to the millisecond), otherwise start + elapsed real time × speed."""
        if self._moment is not None:
            return self._moment
        if self._loop_started_at is None:
            return self.start
        elapsed_s = asyncio.get_running_loop().time() - self._loop_started_at
        return self.start + timedelta(seconds=elapsed_s * self.speed)

    def _at(self, site_ms: int) -> datetime:
        return self.start + timedelta(milliseconds=site_ms)

    # ---- playing

    @property
    def ongoing(self) -> int:
        """Calls started and not yet ended."""
        return len(self._active)

    async def run(self) -> None:
        """Play the plan in real time ÷ speed. A finite plan returns once its last call has ended and been
        handed to the PBX; an endless one runs until cancelled. Cancelled, it releases the calls it still
        has on the recorder (the PBX prints nothing for calls that never ended)."""
        if self._played:
            raise RuntimeError("a site plays its plan once")  # its clock and call ids would start over
        self._played = True
        loop = asyncio.get_running_loop()
        self._loop_started_at = loop.time()
        plan: Iterator[PlannedCall] = iter(self._plan)
        pending: list[tuple[int, _Step, int, PlannedCall | int]] = []  # (site ms, step, seq, the plan or its call id)
        sequence = itertools.count()
        next_call = next(plan, None)
        last_start_ms = 0
        self._log.info("site playing")
        try:
            while next_call is not None or pending:
                # Starts join the queue lazily (the plan may be endless), no later than they are due.
                while next_call is not None and (not pending or _ms(next_call.at_s) <= pending[0][0]):
                    at_ms = _ms(next_call.at_s)
                    if at_ms < last_start_ms:
                        raise ValueError(
                            f"the plan is not in start order: a call at {next_call.at_s} s "
                            f"after one at {last_start_ms / MS_PER_S} s"
                        )
                    last_start_ms = at_ms
                    heapq.heappush(pending, (at_ms, _Step.START, next(sequence), next_call))
                    next_call = next(plan, None)
                at_ms, step, _, subject = heapq.heappop(pending)
                delay_s = self._loop_started_at + at_ms / MS_PER_S / self.speed - loop.time()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)  # the schedule itself: not a wait for anyone, so no timeout
                self._moment = self._at(at_ms)
                try:
                    if step is _Step.START:
                        assert isinstance(subject, PlannedCall)
                        for later_ms, later_step, pbx_call_id in self._start(subject):
                            heapq.heappush(pending, (later_ms, later_step, next(sequence), pbx_call_id))
                    elif step is _Step.ANSWER:
                        assert isinstance(subject, int)
                        self._answer(subject)
                    else:
                        assert isinstance(subject, int)
                        self._end(subject)
                finally:
                    self._moment = None
            self._log.info("plan played", calls=self.completed_count, recorder_calls=len(self.recorder_calls))
        finally:
            self._release_all()

    async def wait_completed(self, count: int, timeout_s: float = WAIT_TIMEOUT_S) -> None:
        """Until at least `count` calls have ended (for endless plans)."""
        async with asyncio.timeout(timeout_s):
            while self.completed_count < count:
                await self._changed.wait()

    # ---- one call's steps

    def _start(self, plan: PlannedCall) -> list[tuple[int, _Step, int]]:
        """Seize the call: a PBX call id and trunk line, the recorder's SETUP if it is a recorded trunk call;
        returns its later steps."""
        pbx_call_id = next(self._pbx_call_ids)
        start = self._at(_ms(plan.at_s))
        trunk = "" if plan.direction == DIRECTION_INTERNAL else self._seize_trunk()
        active = _Active(plan, CompletedCall(plan, pbx_call_id, start, trunk))
        self._active[pbx_call_id] = active
        channel = self.channels.get(plan.extension)
        if self.recorder is not None and channel is not None and plan.direction in (DIRECTION_IN, DIRECTION_OUT):
            busy = self.recorder.calls.get(channel)
            if busy is not None:
                self.busy_channel_skips += 1
                self._log.warning(
                    "channel busy, call left off the recorder",
                    extension=plan.extension,
                    channel=channel,
                    busy_with=busy.call_id,
                    pbx_call_id=pbx_call_id,
                )
            else:
                if plan.direction == DIRECTION_IN:
                    calling, called = plan.other, plan.extension
                else:
                    calling, called = plan.extension, plan.other
                active.channel = channel
                active.sim_call = self.recorder.place_call(channel, calling, called, plan.direction)
                self.recorder_calls[pbx_call_id] = RecorderLeg(
                    plan, pbx_call_id, channel, active.sim_call.call_id, start
                )
        steps = [(_ms(plan.at_s + plan.length_s), _Step.END, pbx_call_id)]
        if active.sim_call is not None and plan.answered:
            steps.append((_ms(plan.at_s + plan.ring_s), _Step.ANSWER, pbx_call_id))
        return steps

    def _answer(self, pbx_call_id: int) -> None:
        active = self._active[pbx_call_id]
        if self._still_ours(active):
            assert active.channel is not None
            self.recorder.answer(active.channel)  # type: ignore[union-attr]

    def _end(self, pbx_call_id: int) -> None:
        active = self._active.pop(pbx_call_id)
        if self._still_ours(active):
            assert active.channel is not None
            cause = CAUSE_NORMAL_CLEARING if active.plan.answered else CAUSE_NO_ANSWER
            self.recorder.release(active.channel, cause)  # type: ignore[union-attr]
        if active.completed.trunk:
            self._trunks_in_use.discard(int(active.completed.trunk))
        self.completed.append(active.completed)
        self.completed_count += 1
        if self._history is not None:
            while len(self.recorder_calls) > self._history:
                del self.recorder_calls[next(iter(self.recorder_calls))]
        if self.pbx is not None:
            self.pbx.emit(active.completed)
        self._changed.set()
        self._changed = asyncio.Event()

    def _still_ours(self, active: _Active) -> bool:
        """The recorder still carries this call (a test or the device may have released it meanwhile)."""
        if self.recorder is None or active.sim_call is None or active.channel is None:
            return False
        return self.recorder.calls.get(active.channel) is active.sim_call

    def _seize_trunk(self) -> str:
        line = FIRST_TRUNK_LINE
        while line in self._trunks_in_use and line < FIRST_TRUNK_LINE + TRUNK_LINES - 1:
            line += 1
        self._trunks_in_use.add(line)  # all lines busy: the last one is shared (a record only names it)
        return str(line)

    def _release_all(self) -> None:
        """Stopped mid-plan: calls still on the recorder end now, as they would when a site's lines drop."""
        for active in list(self._active.values()):
            if self._still_ours(active):
                assert active.channel is not None
                self.recorder.release(active.channel, CAUSE_NORMAL_CLEARING)  # type: ignore[union-attr]
        if self._active:
            self._log.info("site stopped", calls_in_progress=len(self._active))
        self._active.clear()
        self._trunks_in_use.clear()


__all__ = ["DEFAULT_FIRST_PBX_CALL_ID", "RecorderLeg", "Site", "first_call_id_from_clock"]
