"""What every SMDR/CDR format parser provides — one `feed()` template over each format's `parse()` — and the
time rules they share (docs/smdr.md)."""

from __future__ import annotations

import abc
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, ClassVar

from gateway.errors import LinkError
from gateway.events import CallRecord

# A record "more than 1 day after the receive time" belongs to the previous year (`12/31` read on `01/01`).
FUTURE_TOLERANCE = timedelta(days=1)
# Blank lines and page decoration (rules of dashes, equals signs, stars, dots): never a record, in any format.
_DECORATION_CHARS = " \t\v\r\n-=_*+|#~."
_DECORATION = re.compile(r"^[\s\-=_*+|#~.]*$")
_DECORATION_START = frozenset(_DECORATION_CHARS)  # a line starting with anything else is not decoration (fast)
# What a format's `parse` may raise on a line it did not expect: turned into a quarantine reason by `feed`.
STRAY_PARSE_ERRORS: tuple[type[Exception], ...] = (ValueError, IndexError, OverflowError)


class SmdrParseError(LinkError):
    """A line that is neither a record nor a known non-record line; quarantined with `reason`."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass
class HeldRecord:
    """A record kept back for a continuation line (NEC `NEXT`, a custom `attach_regex`): the CallRecord fields
    so far, built into a record only when released."""

    raw: str
    received_at: datetime
    fields: dict[str, Any]
    seq: int | None = None  # the journal line the record began on
    continuation_lines: list[str] = field(default_factory=list)


class RecordParser(abc.ABC):
    """One link's parser. Stateful: page headers carry years, continuation lines attach to held records.

    `feed` gets one framed line at a time — terminators, NULs and form feeds already removed by the
    transport, leading spaces kept (column 1 can matter) — decoded as latin-1 unless the link says
    otherwise. It returns the records the line completes: usually one; none for headers, titles,
    separators and blank or status lines (skipped silently), or while a record is held waiting for a
    possible continuation. A line that cannot be understood raises SmdrParseError(reason): the link
    quarantines it and goes on with the next line.

    A format implements `parse` (one non-blank, non-decoration line) and, when it has options,
    `compile_options` (options → one frozen settings object, used both to refuse bad options at start-up and
    by the parser as `self.settings`). `feed` does the rest once for every format.
    """

    format: ClassVar[str]
    # How a quarantine reason names the format ("unreadable <vendor> record: …").
    vendor: ClassVar[str] = "SMDR"
    # Exceptions a stray value can raise inside `parse`; they become quarantine reasons, not parser failures.
    parse_errors: ClassVar[tuple[type[Exception], ...]] = STRAY_PARSE_ERRORS
    # Seconds a held record may wait for a continuation line before `flush` releases it (0: never holds).
    hold_timeout_s: ClassVar[float] = 0.0

    def __init__(self, link: str, *, tz: tzinfo, options: Mapping[str, Any] | None = None) -> None:
        self.link = link
        self.tz = tz
        self.options: Mapping[str, Any] = options or {}
        self.settings: Any = self.compile_options(self.options)
        # The journal seq of the line being fed (None when the caller has no journal, e.g. `gateway tap`):
        # records remember the line they began on, which is what a crash replay identifies them by.
        self.line_seq: int | None = None
        self._records_begun_on_line = 0
        # Lines whose content this parser still relies on (a page header, a date line): re-read before a
        # replay after a crash, however old. At most one per kind of context.
        self._context_seqs: dict[str, int] = {}
        self._held: HeldRecord | None = None

    # ---- options

    @classmethod
    def compile_options(cls, options: Mapping[str, Any]) -> Any:
        """Options → this format's frozen settings; ValueError naming the key when one is wrong. Default: none.
        Other keys are not refused: the link's own settings (idle_timeout, keepalive, encoding) arrive here too."""
        return None

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> None:
        """Refuse bad format options at start-up (raise ValueError naming the key)."""
        cls.compile_options(options)

    def variant(self) -> str:
        """How this link's lines are being read (layout, time semantics, date order …), for `gateway tap` and
        `gateway check`: a wrong guess should be visible at once."""
        return self.vendor

    # ---- crash-recovery bookkeeping

    def begin_line(self, seq: int | None) -> None:
        """The next `feed` is of journal line `seq`."""
        self.line_seq = seq
        self._records_begun_on_line = 0

    def note_context(self, kind: str) -> None:
        """The line being fed sets context later lines are read with (a header's columns, a page date)."""
        if self.line_seq is not None:
            self._context_seqs[kind] = self.line_seq

    @property
    def context_seqs(self) -> list[int]:
        """Journal lines to re-read (records discarded) before replaying, so the parser reads the rest alike."""
        return sorted(set(self._context_seqs.values()))

    def held_since_seq(self) -> int | None:
        """The journal line the oldest record this parser still holds began on (None: holds nothing)."""
        return self._held.seq if self._held is not None else None

    def resume(self) -> None:  # noqa: B027 — a hook: only formats with per-connection state override it
        """Reading resumes mid-stream from the journal after a restart: no connection has just opened, so
        nothing per-connection (such as lines to skip after connecting) applies."""

    # ---- lines

    def feed(self, line: str, received_at: datetime) -> list[CallRecord]:
        """Parse one line; `received_at` is timezone-aware UTC. Blank and decoration lines are skipped here;
        everything else goes to the format's `parse`, and a stray ValueError/IndexError becomes a quarantine
        reason (SmdrParseError) instead of a parser failure."""
        if not line or (line[0] in _DECORATION_START and _DECORATION.match(line)):
            return self.skip_line()
        try:
            return self.parse(line, received_at)
        except SmdrParseError:
            raise
        except self.parse_errors as error:
            raise SmdrParseError(f"unreadable {self.vendor} record: {error}") from None

    @abc.abstractmethod
    def parse(self, line: str, received_at: datetime) -> list[CallRecord]:
        """One line that is neither blank nor decoration → the records it completes (see the class docstring)."""

    def skip_line(self) -> list[CallRecord]:
        """A blank or decoration line: no record of its own; it ends any record held for a continuation."""
        return self.release_held()

    def flush(self, now: datetime) -> list[CallRecord]:
        """Release a record held longer than `hold_timeout_s` (the link passes a time far in the future to
        release everything when it closes)."""
        held = self._held
        if held is not None and (now - held.received_at).total_seconds() >= self.hold_timeout_s:
            return self.release_held()
        return []

    def reset(self) -> None:  # noqa: B027 — a hook: only formats with per-connection state override it
        """The link reconnected: forget per-connection state (e.g. lines to skip after connecting)."""

    # ---- held records (one helper for every format that waits for continuation lines)

    def hold(self, raw: str, received_at: datetime, fields: dict[str, Any]) -> list[CallRecord]:
        """Keep a record (its CallRecord fields) back for continuation lines; returns the one held before."""
        released = self.release_held()
        self._held = HeldRecord(raw, received_at, fields, self.line_seq)
        return released

    @property
    def held(self) -> HeldRecord | None:
        return self._held

    def release_held(self) -> list[CallRecord]:
        """The held record, built now (it keeps the journal line it began on), or nothing."""
        held, self._held = self._held, None
        if held is None:
            return []
        return [self.record(held.raw, held.received_at, origin_seq=held.seq, **held.fields)]

    def record(self, raw: str, received_at: datetime, *, origin_seq: int | None = None, **fields: Any) -> CallRecord:
        """A CallRecord of this link and format, begun on the line being fed (or on `origin_seq`: a held record
        built only when released)."""
        if origin_seq is None or origin_seq == self.line_seq:
            origin_seq, origin_index = self.line_seq, self._records_begun_on_line
            self._records_begun_on_line += 1
        else:
            origin_index = 0
        return CallRecord(
            format=self.format,
            source=self.link,
            raw=raw,
            received_at=received_at,
            origin_seq=origin_seq,
            origin_index=origin_index,
            **fields,
        )


# ---- time helpers


# In the hour a DST change repeats, the later reading is taken unless it lies more than this after the
# record arrived (a PBX clock may run a little ahead of ours; the two readings are an hour apart).
REPEATED_HOUR_TOLERANCE = timedelta(minutes=15)
# Zone offsets are looked up per quarter of an hour of wall-clock time (every DST change in the tz database
# since 1970 falls on a quarter hour) and cached: records arrive in time order, so the cache nearly always hits.
OFFSET_BUCKET_MINUTES = 15


@functools.lru_cache(maxsize=4096)
def _offsets(tz: tzinfo, year: int, month: int, day: int, hour: int, quarter: int) -> tuple[timedelta, timedelta]:
    """The zone's UTC offset for a wall-clock time in this quarter hour: its first and its second reading."""
    probe = datetime(year, month, day, hour, quarter * OFFSET_BUCKET_MINUTES)
    first = probe.replace(tzinfo=tz).utcoffset()
    second = probe.replace(tzinfo=tz, fold=1).utcoffset()
    assert first is not None and second is not None  # a zone, not a naive marker
    return first, second


def to_utc(local: datetime, tz: tzinfo, received_at: datetime | None = None) -> datetime:
    """A PBX wall-clock time (naive) in the link's zone → aware UTC.

    A time in the hour that repeats when DST ends (02:30 twice in Europe/Budapest) has two readings; records
    describe the past, so with `received_at` it is the later reading that is not after the record arrived
    (without it, the first reading). A time in the hour skipped when DST starts reads with the offset before
    the change.
    """
    if tz is timezone.utc:
        return local.replace(tzinfo=timezone.utc)
    first, second = _offsets(tz, local.year, local.month, local.day, local.hour, local.minute // OFFSET_BUCKET_MINUTES)
    if received_at is not None and second < first:  # the repeated hour: the second reading is an hour later
        later = (local - second).replace(tzinfo=timezone.utc)
        if later <= received_at + REPEATED_HOUR_TOLERANCE:
            return later
    return (local - first).replace(tzinfo=timezone.utc)


def local_now(received_at: datetime, tz: tzinfo) -> datetime:
    """The receive time on the PBX's wall clock (naive), for year inference."""
    return received_at.astimezone(tz).replace(tzinfo=None)


def infer_year(month: int, day: int, received_local: datetime) -> int:
    """The year of a date printed without one: the receive year, or the previous one when that would put the
    record more than a day in the future (records come late, never early)."""
    year = received_local.year
    try:
        candidate = datetime(year, month, day)
    except ValueError:  # 29 February of a non-leap receive year: it was last year's... only if that was leap
        return year - 1
    if candidate - received_local > FUTURE_TOLERANCE:
        return year - 1
    return year


def two_digit_year(yy: int, received_local: datetime) -> int:
    """2000 + yy, unless that is more than a year in the future (then 1900 + yy: manual samples use 94–98)."""
    year = 2000 + yy
    if year > received_local.year + 1:
        return 1900 + yy
    return year


_CLOCK_12H = re.compile(r"^\*?(\d{1,2}):(\d\d)(?::(\d\d))?\s*([AaPp])[Mm]?$")


def parse_clock(text: str) -> tuple[int, int, int]:
    """`10:03AM`, `1:04PM`, `12:52PM`, `13:14`, `13:14:13`, `11:42p` → (hour, minute, second); ValueError otherwise.

    12-hour rules: `12:xxAM` = 00:xx, `12:xxPM` = 12:xx; a lone `p`/`P` after the minutes is PM (Mitel).
    """
    text = text.strip()
    match = _CLOCK_12H.match(text)
    if match:
        hour, minute, second = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
        if not 1 <= hour <= 12:
            raise ValueError(f"bad 12-hour clock {text!r}")
        pm = match.group(4) in "Pp"
        hour = (hour % 12) + (12 if pm else 0)
    else:
        parts = text.lstrip("*").split(":")
        if len(parts) not in (2, 3) or not all(part.isdigit() for part in parts):
            raise ValueError(f"bad time {text!r}")
        hour, minute = int(parts[0]), int(parts[1])
        second = int(parts[2]) if len(parts) == 3 else 0
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"bad time {text!r}")
    return hour, minute, second


def parse_duration(text: str) -> int:
    """`HH:MM:SS`, `hhhh:mm:ss`, `MM:SS`, `HH:MM'SS` (Panasonic), `M'SS` → seconds; ValueError otherwise."""
    if len(text) == 8 and text[2] == ":" and text[5] == ":":  # the common HH:MM:SS, without the general split
        hours, minutes, seconds_text = text[:2], text[3:5], text[6:]
        if hours.isdigit() and minutes.isdigit() and seconds_text.isdigit():
            return int(hours) * 3600 + int(minutes) * 60 + int(seconds_text)
    cleaned = text.strip().replace("'", ":")
    parts = cleaned.split(":")
    if not 1 <= len(parts) <= 3 or not all(part.isdigit() for part in parts):
        raise ValueError(f"bad duration {text!r}")
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds


# ---- option helpers (fixed-width layouts)


def column_span(value: Any, key: str) -> tuple[int, int]:
    """`[first, last]` (1-based inclusive) or a single column number → (first, last); ValueError naming `key`."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, int) and not isinstance(value, bool):
        first = last = value
    elif (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(part, int) and not isinstance(part, bool) for part in value)
    ):
        first, last = value
    else:
        raise ValueError(f"{key}: must be [first, last] column numbers (1-based, inclusive), not {value!r}")
    if first < 1:
        raise ValueError(f"{key}: columns start at 1, not {first}")
    if last < first:
        raise ValueError(f"{key}: last column {last} is before first column {first}")
    return first, last
