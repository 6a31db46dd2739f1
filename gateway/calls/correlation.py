"""PBX call records → calls: a record completes the recorder's live call it describes, joins the multi-record
call or the transfer leg it continues, or makes a call of its own. Never a guess between two calls."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from gateway.calls.index import CallIndex
from gateway.calls.statuses import LastEndedMemo
from gateway.config import ExtensionConfig
from gateway.events import CallRecord
from gateway.feed import CALL_UPDATED
from gateway.model import Call, CallState, Direction, new_id, record_call_id
from gateway.store import Store

log = structlog.get_logger(__name__)

# A PBX record and the recorder's live call are the same call when their starts are this close:
# SMDR rounds to the second or minute and PBX clocks drift from the recorder's.
DEFAULT_CORRELATION_WINDOW_S = 120.0
# Live calls not yet described by a PBX record are remembered this long (PBXs buffer records for hours).
UNCORRELATED_HORIZON = timedelta(hours=24)
# Bounds the live calls remembered per extension for correlation (a channel with no SMDR link never clears them).
MAX_UNCORRELATED_PER_EXTENSION = 1_000
# Multi-record calls (IP Office Continuation=1) are grouped this long waiting for their last part.
PLATFORM_GROUP_TIMEOUT = timedelta(minutes=30)
# Transfer legs (CallRecord.leg_key) are one call when one leg's time meets the other's within this: the
# formats that print legs give minutes, not seconds, for the time of day.
LEG_TOLERANCE = timedelta(minutes=2)
# A leg can be joined this long after it ended (the next leg's record comes when that leg ends).
LEG_WINDOW = timedelta(hours=4)


class CallHost(Protocol):
    """What the correlator needs of the tracker that owns the calls."""

    def save_soon(self, call: Call) -> asyncio.Future[None]: ...

    def changed(self, change: str, call: Call, **detail: object) -> None: ...

    def extension_config(self, number: str | None) -> ExtensionConfig | None: ...


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


def _digits(number: str | None) -> str:
    return "".join(ch for ch in number or "" if ch.isdigit())


def numbers_match(a: str | None, b: str | None) -> bool:
    """Loose match of two renderings of one phone number (prefixes, +, trunk codes differ between PBX and recorder)."""
    da, db = _digits(a), _digits(b)
    if not da or not db:
        return True  # one side does not know the number: no evidence against the match
    shorter, longer = sorted((da, db), key=len)
    return longer.endswith(shorter[-max(4, min(len(shorter), 9)) :])


def record_times(record: CallRecord) -> tuple[datetime, datetime]:
    """A record's start and end, from whatever it gives (formats print one, the other or both)."""
    start = record.start or record.end or record.received_at
    end = record.end
    if end is None:
        end = start + timedelta(seconds=(record.ring_s or 0) + (record.duration_s or 0))
    return start, end


class RecordCorrelator:
    """Applies PBX call records; remembers what later records may join: live calls still waiting for their
    record, open multi-record groups and recent transfer legs."""

    def __init__(
        self,
        store: Store,
        index: CallIndex,
        last_ended: LastEndedMemo,
        host: CallHost,
        *,
        correlation_window_s: float,
        correlation_window_by_link: Mapping[str, float] | None,
    ) -> None:
        self._store = store
        self._index = index
        self._last_ended = last_ended
        self._host = host
        self._correlation_window = timedelta(seconds=correlation_window_s)
        self._correlation_window_by_link = {
            link: timedelta(seconds=seconds) for link, seconds in (correlation_window_by_link or {}).items()
        }
        self.uncorrelated_live: dict[str, dict[str, Call]] = defaultdict(dict)  # extension → recorder calls w/o record
        self._platform_groups: dict[tuple[str, str], tuple[str, datetime]] = {}  # (link, pcid) → (call id, seen)
        self._legs: dict[tuple[str, str], list[_Leg]] = defaultdict(list)  # (link, leg key) → recent legs
        self.calls_created = 0

    @property
    def group_count(self) -> int:
        return len(self._platform_groups)

    def grouped_call_ids(self) -> set[str]:
        """Calls a multi-record group still waits to complete (they stay in memory)."""
        return {call_id for call_id, _ in self._platform_groups.values()}

    def restore(self, call: Call, now: datetime) -> None:
        """After a restart: the open business the store says this call had (a group, a leg, a record awaited)."""
        if call.open_group and call.link:
            # Seen now: the group gets its whole timeout again rather than expiring for the time we were down.
            self._platform_groups[(call.link, call.open_group)] = (call.call_id, now)
        if call.open_leg_key and call.link and call.open_leg_direction is not None:
            end = call.end_time or call.start_time
            if end >= now - LEG_WINDOW:
                leg = _Leg(call.call_id, call.start_time, end, call.open_leg_direction)
                self._legs[(call.link, call.open_leg_key)].append(leg)
        if call.awaiting_record and call.extension:
            self.uncorrelated_live[call.extension][call.call_id] = call

    def remember_uncorrelated(self, call: Call) -> None:
        """Keep a live call for PBX records to complete; calls older than the horizon go (records never came)."""
        waiting = self.uncorrelated_live[call.extension or ""]
        horizon = call.start_time - UNCORRELATED_HORIZON
        for old_id in [old_id for old_id, old in waiting.items() if old.start_time < horizon]:
            del waiting[old_id]
        if len(waiting) >= MAX_UNCORRELATED_PER_EXTENSION:  # a trunk channel without SMDR: keep the newest
            del waiting[next(iter(waiting))]
        waiting[call.call_id] = call
        call.awaiting_record = True

    def record_call_id(self, record: CallRecord) -> str | None:
        """The callID a call made from this record gets: derived from the journal line it began on, so that
        read again after a crash the record makes this same callID (None: not journalled)."""
        if record.origin_seq is None:
            return None
        return record_call_id(self._store.instance_id, record.origin_seq, record.origin_index)

    def apply(self, record: CallRecord) -> Call:
        self._expire_platform_groups(record.received_at)
        group_key = (record.source, record.platform_call_id) if record.platform_call_id else None
        call = None
        joined = False
        if group_key is not None and group_key in self._platform_groups:
            call = self._index.call(self._platform_groups[group_key][0])
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
        self._host.save_soon(call)
        self._host.changed(CALL_UPDATED, call)
        return call

    def _earlier_leg(self, record: CallRecord) -> Call | None:
        """The one call whose last leg this record's leg continues (meets it in time, same link and key); None
        when there is none, or more than one — never a guess."""
        if not record.joins_leg:
            return None
        start, end = record_times(record)
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
        return self._index.call(matches[0].call_id)

    def _join_leg(self, call: Call, record: CallRecord) -> None:
        """Another party's leg of the call: one more party; talk time adds up when the legs follow each other,
        not when they run side by side (an incoming and an outgoing leg of one forwarded call)."""
        start, _ = record_times(record)
        side_by_side = call.end_time is not None and start < call.end_time - LEG_TOLERANCE
        self._merge_record_part(call, record, side_by_side=side_by_side)
        if call.direction is Direction.UNKNOWN:
            call.direction = record.direction

    def _remember_leg(self, call: Call, record: CallRecord, *, joined: bool) -> None:
        """Offer the call to the next leg — unless this leg completed an inbound + outbound pair (a call
        forwarded or transferred out to another line has exactly those two)."""
        start, end = record_times(record)
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
            call = self._index.call(call_id)
            if call is not None and call.open_group == key[1]:
                call.open_group = None
                self._host.save_soon(call)

    def _correlate(self, record: CallRecord) -> Call | None:
        """The recorder's live call this record describes, if exactly one fits (closest start wins)."""
        if not record.extension:
            return None
        candidates = self.uncorrelated_live.get(record.extension)
        if not candidates:
            return None
        start, _ = record_times(record)
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
            self._index.index_platform_call_id(call, record.platform_call_id)
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
        _, end = record_times(record)
        self._add_party(call, record.extension)
        if record.direction is Direction.INTERNAL:
            self._add_party(call, record.other_number)
        if record.duration_s is not None:
            previous = call.duration_s or 0
            call.duration_s = max(previous, record.duration_s) if side_by_side else previous + record.duration_s
        if not call.ongoing and (call.end_time is None or end > call.end_time):
            call.end_time = end
            self._last_ended.note_ended(call)
        call.account = call.account or record.account

    def _add_party(self, call: Call, number: str | None) -> None:
        if number and number not in call.parties:
            call.other_parties.add(number)
            if call.ongoing:
                self._index.index_party(call, number)
            else:
                self._last_ended.note_ended(call)

    def _call_from_record(self, record: CallRecord) -> Call:
        start, end = record_times(record)
        if record.direction is Direction.IN:
            calling, called = record.other_number, record.extension
        else:
            calling, called = record.extension, record.other_number
        answered = record.answered if record.answered is not None else bool(record.duration_s)
        extension_config = self._host.extension_config(record.extension)
        call = Call(
            call_id=self.record_call_id(record) or new_id(),
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
        self.calls_created += 1
        self._index.remember_finished(call)
        self._last_ended.note_ended(call)
        return call
