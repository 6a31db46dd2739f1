"""The status=ongoing/last/next vocabulary, the waiters `next` parks, and the memo `last` answers from."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from gateway.bounded import ByteBoundedDict
from gateway.errors import CallNotFound
from gateway.model import Call, utc_now
from gateway.store import Store

STATUS_ONGOING = "ongoing"
STATUS_LAST = "last"
STATUS_NEXT = "next"
LOOKUP_STATUSES = (STATUS_ONGOING, STATUS_LAST, STATUS_NEXT)

# Bounds the memo of "last call of number N" so that clients asking for random numbers cannot grow it forever.
MAX_LAST_ENDED_ENTRIES = 200_000
# ... and by bytes, since the numbers are what clients ask for: ~40,000 numbers of up to 64 characters.
MAX_LAST_ENDED_BYTES = 16 * 1024 * 1024


def parse_statuses(value: str) -> list[str]:
    """`ongoing, next` → ["ongoing", "next"]; ValueError on an empty or unknown item."""
    statuses = [item.strip().lower() for item in value.split(",")]
    if not statuses or any(item not in LOOKUP_STATUSES for item in statuses):
        raise ValueError(value)
    return statuses


class NextCallWaiters:
    """Requests waiting for the next call of a number to start (status=next), woken by the call start itself."""

    def __init__(self) -> None:
        # Lists, not sets: most numbers have one waiter (an agent's desktop), and a one-item list is a quarter of
        # an empty set's size; removing from a few hundred is still quick.
        self._by_number: dict[str, list[asyncio.Future[Call | None]]] = defaultdict(list)

    def wait(self, number: str, timeout_s: float) -> Awaitable[Call | None]:
        """The next call of `number` to start; None when none starts within `timeout_s`."""
        return self._wait(number, timeout_s, False)

    async def _wait(self, number: str, timeout_s: float, raise_when_none: bool) -> Call | None:
        """Cancelling the waiting task (a client that disconnected) removes the waiter.

        One future and one timer per waiter, resolved with None when the window ends: asyncio.wait_for would add
        a second future, a callback and a coroutine of its own to each of ten thousand parked requests."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Call | None] = loop.create_future()
        waiters = self._by_number[number]
        waiters.append(future)
        timer = loop.call_later(timeout_s, _window_over, future)
        try:
            call = await future
        finally:
            timer.cancel()
            waiters.remove(future)
            if not waiters:
                self._by_number.pop(number, None)
        if call is None and raise_when_none:
            raise CallNotFound(number)
        return call

    def wait_or_raise(self, number: str, timeout_s: float) -> Awaitable[Call]:
        """Like wait(), raising CallNotFound when no call starts within `timeout_s` (one coroutine, not two)."""
        return self._wait(number, timeout_s, True)  # type: ignore[return-value]  # never None when raising

    def wake(self, call: Call) -> None:
        for number in call.parties:
            for future in self._by_number.get(number, ()):
                if not future.done():
                    future.set_result(call)

    def waiting_for(self, numbers: Iterable[str]) -> bool:
        return any(number in self._by_number for number in numbers)

    @property
    def count(self) -> int:
        return sum(len(waiters) for waiters in self._by_number.values())


def _window_over(future: asyncio.Future[Call | None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(slots=True)
class _LastEnded:
    """The most recent end time of a number's calls and the calls that ended then (more than one = ambiguous)."""

    end_time: datetime | None
    call_ids: list[str]
    merged_with_store: bool


class LastEndedMemo:
    """Per number, the call(s) that ended last (status=last): kept current as calls end, merged with what the
    store holds at a number's first lookup, bounded in entries and bytes."""

    def __init__(self) -> None:
        self.by_number: dict[str, _LastEnded] = ByteBoundedDict(MAX_LAST_ENDED_BYTES)

    def note_ended(self, call: Call) -> None:
        """The call is now the newest ended call of its numbers, or ties with it."""
        assert call.end_time is not None
        for number in call.parties:
            entry = self.by_number.get(number)
            if entry is None:
                # What the store holds for this number is merged in at the first lookup.
                self.by_number[number] = _LastEnded(call.end_time, [call.call_id], merged_with_store=False)
            elif entry.end_time is None or call.end_time > entry.end_time:
                entry.end_time, entry.call_ids = call.end_time, [call.call_id]
            elif call.end_time == entry.end_time and call.call_id not in entry.call_ids:
                entry.call_ids.append(call.call_id)
        if len(self.by_number) > MAX_LAST_ENDED_ENTRIES:
            self.by_number.clear()  # a memo only: everything is re-read from the store on demand

    async def last_call_ids(self, number: str, store: Store, flush: Callable[[], Awaitable[None]]) -> list[str]:
        """The ids of the most recently ended call(s) of a number: more than one only when they ended at the
        same moment. A call ending in the future (a PBX clock ahead of ours, a sped-up demo) is not the last one
        until then; `flush` commits pending saves when the store must answer instead of the memo."""
        now = utc_now()
        entry = self.by_number.get(number)
        if entry is None or not entry.merged_with_store:
            stored = await store.last_ended_call_ids(number, limit=2, ended_by=now)
            entry = self.by_number.get(number)  # may have changed while the store answered
            if entry is None:
                entry = self.by_number[number] = _LastEnded(None, [], merged_with_store=True)
            entry.merged_with_store = True
            for end_time, call_id in stored:
                if entry.end_time is None or end_time > entry.end_time:
                    entry.end_time, entry.call_ids = end_time, [call_id]
                elif end_time == entry.end_time and call_id not in entry.call_ids:
                    entry.call_ids.append(call_id)
        if entry.end_time is not None and entry.end_time > now:
            # The memo keeps only the newest end, so the last one up to now is the store's (saves committed first).
            await flush()
            stored = await store.last_ended_call_ids(number, limit=2, ended_by=now)
            return [call_id for end_time, call_id in stored if end_time == stored[0][0]]
        return list(entry.call_ids)
