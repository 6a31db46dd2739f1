"""What drivers report to the call tracker: typed events, never changed once handed in (the only way data enters)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.model import Direction


class LinkState(enum.StrEnum):
    """A PBX link's state as its transport reports it (`on_state`); `/healthz` shows it."""

    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A recorder saw a call appear on a channel (TRUNKREC `EVT CALL … SETUP`)."""

    recorder: str
    channel: str
    native_id: str
    calling: str | None
    called: str | None
    direction: Direction
    at: datetime


@dataclass(frozen=True, slots=True)
class CallConnected:
    recorder: str
    channel: str
    native_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class CallEnded:
    recorder: str
    channel: str
    native_id: str
    at: datetime
    cause: str | None = None


@dataclass(frozen=True, slots=True)
class RecordingStarted:
    recorder: str
    channel: str
    recording_native_id: str
    call_native_id: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class RecordingStopped:
    recorder: str
    channel: str
    recording_native_id: str
    at: datetime
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class RecorderSynced:
    """End of a recorder's state replay: calls it did not replay have ended while the link was down."""

    recorder: str
    live_native_ids: frozenset[str]  # the recorder's call ids it replayed as in progress
    at: datetime
    live_recording_native_ids: frozenset[str] = frozenset()  # recordings it replayed as running


@dataclass(slots=True)
class CallRecord:
    """One normalised SMDR/CDR record (docs/smdr.md, "The normalised record"). Treat it as immutable once handed in.

    Not `frozen`: a frozen dataclass sets each of these 17 fields through object.__setattr__, which
    made building a record cost 3.5 µs instead of 1 µs — paid for every record a busy link reads.
    """

    format: str
    source: str  # the link name
    raw: str
    received_at: datetime
    start: datetime | None = None
    end: datetime | None = None
    duration_s: float | None = None
    ring_s: float | None = None
    extension: str | None = None
    other_number: str | None = None
    direction: Direction = Direction.UNKNOWN
    trunk: str | None = None
    account: str | None = None
    platform_call_id: str | None = None
    more_follows: bool = False
    answered: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Legs of one call that the PBX prints a record per party for, with no call id (NEC PTRS/ITRS on a trunk
    # line, Panasonic TR/FW pairs): records of one link with the same leg_key are one call's legs when
    # their times meet. A record with joins_leg looks for the leg before it; every record with a key can be found.
    leg_key: str | None = None
    joins_leg: bool = False
    # The key names a trunk line, which carries one call at a time: a joining leg continues the latest call on
    # it (otherwise it must match exactly one call).
    leg_on_line: bool = False
    # The journal line the record began on and its place among the records begun there: a record read again
    # from the journal after a crash is the same record, and makes the same call (None: not journalled).
    origin_seq: int | None = None
    origin_index: int = 0


@dataclass(frozen=True, slots=True)
class LinkProgress:
    """How far an SMDR link's journal has been applied: stored with the call saves it covers, read back after
    a crash to replay what was journalled but not applied."""

    link: str
    applied_seq: int  # every journal line of the link up to this seq has been parsed and its records applied
    replay_from_seq: int  # the oldest line a record still held by the parser began on (applied_seq + 1: none)
    context_seqs: tuple[int, ...] = ()  # older lines whose content the parser still reads with (page headers)


@dataclass(slots=True)
class LinkHealth:
    """What a link driver reports about itself; the driver updates it, `/healthz` reads it."""

    name: str
    state: LinkState = LinkState.DOWN
    records: int = 0  # records parsed from lines this link read since start-up
    errors: int = 0  # lines quarantined
    # Records of lines journalled before a restart but not applied then, read again from the journal at
    # start-up (not in `records`, which counts what the link itself read).
    replayed: int = 0
    last_record_at: datetime | None = None
    # Times the link came up again after it had been up (a dropped TCP session, a PBX that connects per burst);
    # the first connection is not one.
    reconnects: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "records": self.records,
            "errors": self.errors,
            "replayed": self.replayed,
            "reconnects": self.reconnects,
            "last_record_at": self.last_record_at.isoformat() if self.last_record_at else None,
        }


DriverEvent = (
    CallStarted | CallConnected | CallEnded | RecordingStarted | RecordingStopped | RecorderSynced | CallRecord
)
