"""What the gateway knows about calls: calls, their recordings, and the enums that classify them."""

from __future__ import annotations

import enum
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone


class RecordingMode(enum.StrEnum):
    """Per-extension recording policy (docs/api.md §7)."""

    FULL = "full"
    ON_DEMAND = "on_demand"
    CONTROLLED = "controlled"
    CONTROLLED_AUTOSTART = "controlled_autostart"
    DO_NOT_RECORD = "do_not_record"

    @property
    def is_controlled(self) -> bool:
        """Controlled extensions accept KeepCall type=manualRecord."""
        return self in (RecordingMode.CONTROLLED, RecordingMode.CONTROLLED_AUTOSTART)

    @property
    def starts_on_connect(self) -> bool:
        return self in (RecordingMode.FULL, RecordingMode.ON_DEMAND, RecordingMode.CONTROLLED_AUTOSTART)


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"
    INTERNAL = "internal"
    UNKNOWN = "unknown"


class CallState(enum.IntEnum):
    """The values are the `state` attribute of GetCallInformation's verbacdr element."""

    ONGOING = 0
    FINISHED = 1


_ID_VERSION_VARIANT = 0x7 << 76 | 0x2 << 62  # version 7; RFC 4122 variant
_ID_KEEP_BITS = ~(0xF << 76 | 0x3 << 62) & ((1 << 128) - 1)  # all but the version and variant bits


def new_id() -> str:
    """A gateway identifier: a GUID in the time-ordered UUIDv7 layout (RFC 9562), never reused.

    48 bits of Unix milliseconds, then 74 random bits. Ids made one after another sort together,
    so the store's primary-key index grows at its right edge instead of touching a random page for
    every new call (random v4 ids made bulk inserts ~1.7x slower, docs/benchmarks.md).
    """
    # Identifiers, not secrets (the API key guards access): the fast generator, no syscall per call.
    value = ((time.time_ns() // 1_000_000) << 80 | random.getrandbits(80)) & _ID_KEEP_BITS | _ID_VERSION_VARIANT
    # Formatted by hand: uuid.UUID(int=…) and str() of it cost twice as much, once per call and record.
    digits = f"{value:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


_RECORD_ID_VERSION_VARIANT = 0x8 << 76 | 0x2 << 62  # version 8 (RFC 9562's custom layout); RFC 4122 variant
_RECORD_ID_INSTANCE_BITS = (1 << 62) - 1
_RECORD_ID_MAX_SEQ = (1 << 48) - 1
_RECORD_ID_MAX_INDEX = 0xFFF


def record_call_id(store_instance: int, journal_seq: int, index: int = 0) -> str:
    """The callID of a call made from the `index`-th record begun on journal line `journal_seq`: the same
    every time that line is read (so a replay after a crash finds the call instead of making a second one),
    and unique to the store (`store_instance` is its random id).

    48 bits of journal seq, so ids of one store sort in arrival order (the primary-key index grows at its
    right edge, as with new_id), 12 bits of index and 62 bits of the store's id.
    """
    if not 0 <= journal_seq <= _RECORD_ID_MAX_SEQ or not 0 <= index <= _RECORD_ID_MAX_INDEX:
        raise ValueError(f"no record call id for line {journal_seq} record {index}")
    value = journal_seq << 80 | index << 64 | (store_instance & _RECORD_ID_INSTANCE_BITS) | _RECORD_ID_VERSION_VARIANT
    digits = f"{value:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


@dataclass(slots=True)
class Recording:
    """One recording of (part of) a call; a manual restart makes a new one."""

    recording_id: str
    call_id: str
    start_time: datetime
    recorder: str | None = None
    channel: str | None = None
    native_id: str | None = None  # the recorder's own recording id (TRUNKREC rec=)
    end_time: datetime | None = None
    manual: bool = False
    deleted: bool = False

    @property
    def active(self) -> bool:
        return self.end_time is None and not self.deleted


@dataclass(slots=True)
class Call:
    """A call as the gateway tracks it; `call_id` is assigned once and never changes."""

    call_id: str
    start_time: datetime
    state: CallState = CallState.ONGOING
    direction: Direction = Direction.UNKNOWN
    extension: str | None = None  # the internal party the call is filed under
    calling: str | None = None  # source caller id
    called: str | None = None  # destination caller id
    other_parties: set[str] = field(default_factory=set)  # further extensions (transfers, multi-part records)
    platform_call_id: str | None = None  # the PBX's call id (API platformCallID)
    native_id: str | None = None  # the recorder's call id (API nativeID)
    recorder: str | None = None
    channel: str | None = None
    link: str | None = None  # the SMDR link that described the call
    account: str | None = None
    trunk: str | None = None
    connect_time: datetime | None = None
    end_time: datetime | None = None
    ring_s: float | None = None
    duration_s: float | None = None
    recording_mode: RecordingMode | None = None
    kept: bool = False
    do_not_delete: bool = False
    recordings: list[Recording] = field(default_factory=list)
    # The call tracker's open business with the call, stored with it so that a restart picks it up again:
    # the PBX call id while more parts of a multi-record call may follow; the transfer-leg key (and that
    # leg's direction) while a further leg may join; a recorder's call still waiting for its PBX record.
    open_group: str | None = None
    open_leg_key: str | None = None
    open_leg_direction: Direction | None = None
    awaiting_record: bool = False
    # The cluster node that tracks the call when that is another gateway (read from the cluster database); None
    # for this gateway's own calls. KeepCall on another node's call is run by that node.
    node: str | None = None

    @property
    def ongoing(self) -> bool:
        return self.state is CallState.ONGOING

    @property
    def parties(self) -> set[str]:
        """Every number the call matches on for extension lookups."""
        numbers = {self.extension, self.calling, self.called}
        numbers.discard(None)
        numbers.discard("")
        if self.other_parties:
            numbers.update(self.other_parties)
        return numbers  # type: ignore[return-value]  # None is discarded above

    @property
    def recorded(self) -> bool:
        return bool(self.recordings)

    @property
    def manual(self) -> bool:
        return any(r.manual for r in self.recordings)

    @property
    def active_recording(self) -> Recording | None:
        for recording in reversed(self.recordings):
            if recording.active:
                return recording
        return None

    @property
    def last_manual_recording(self) -> Recording | None:
        for recording in reversed(self.recordings):
            if recording.manual:
                return recording
        return None

    @property
    def ondemand(self) -> bool:
        return self.recording_mode is RecordingMode.ON_DEMAND

    @property
    def effective_duration_s(self) -> float | None:
        """Talk time: the reported duration, else connect→end when both are known."""
        if self.duration_s is not None:
            return self.duration_s
        if self.connect_time is not None and self.end_time is not None:
            return max(0.0, (self.end_time - self.connect_time).total_seconds())
        return None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
