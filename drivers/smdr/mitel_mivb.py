"""Mitel MiVoice Business / 3300 ICP (SX-2000 lineage) SMDR: one fixed-width line per call (docs/smdr.md).

Long for a reason: a PBX format's parser, listing its fixed-width fields and their layouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from drivers.smdr.base import (
    RecordParser,
    SmdrParseError,
    column_span,
    infer_year,
    local_now,
    parse_clock,
    parse_duration,
    to_utc,
)
from gateway.events import CallRecord
from gateway.model import Direction

Columns = dict[str, tuple[int, int]]  # field name → (first, last), 1-based inclusive

# ---- options (link `options:`)
OPT_LAYOUT = "layout"
OPT_SECONDS_IN_TIME = "seconds_in_time"
OPT_EXTENDED_TIME_TO_ANSWER = "extended_time_to_answer"
OPT_METERING = "metering"
OPT_CLOCK = "clock"
OPT_COLUMNS = "columns"

LAYOUT_STANDARD = "standard"
LAYOUT_EXTENDED = "extended"
LAYOUT_OBSERVED_207 = "observed-207"
LAYOUT_ALIASES = {"207": LAYOUT_OBSERVED_207, "observed207": LAYOUT_OBSERVED_207}
LAYOUTS = (LAYOUT_STANDARD, LAYOUT_EXTENDED, LAYOUT_OBSERVED_207)
CLOCK_12H = 12
CLOCK_24H = 24

# ---- field names (also their keys in CallRecord.extra)
COL_LONG_CALL = "long_call"
COL_DATE = "date"
COL_START = "start"
COL_DURATION = "duration"
COL_CALLING = "calling"
COL_ATTENDANT = "attendant"
COL_ANSWER_TIME = "time_to_answer"
COL_DIGITS = "digits"
COL_METER = "meter_pulses"
COL_COMPLETION = "completion"
COL_FORWARD = "speed_forward"
COL_CALLED = "called"
COL_TRANSFER = "transfer"
COL_THIRD_PARTY = "third_party"
COL_ACCOUNT = "account"
COL_SYSTEM_FLAG = "system_flag"
COL_SYSTEM_ID = "system_id"
COL_ANI = "ani"
COL_DNIS = "dnis"
COL_PLATFORM_CALL_ID = "platform_call_id"  # Network OLI (originating) when enabled
COL_OLI_TERMINATING = "oli_terminating"
# Fields that become CallRecord fields, not extra.
NORMALISED_COLUMNS = frozenset({COL_DATE, COL_START, COL_DURATION, COL_ACCOUNT, COL_PLATFORM_CALL_ID})
EXTRA_DID = "did"
EXTRA_PARTIAL = "partial"
EXTRA_UNPARSED = "unparsed"
EXTRA_DURATION_OVERFLOW = "duration_overflow"
EXTRA_TRANSFERRED = "transferred"
EXTRA_CONFERENCE = "conference"
EXTRA_FORWARDED = "forwarded"
EXTRA_SPEED_CALL = "speed_call"
TRANSFER_FLAGS = frozenset({"T", "X"})
CONFERENCE_FLAG = "C"
FORWARD_FLAG = "F"
SPEED_CALL_FLAG = "S"

# Standard 90-character record (vendor field table). ANI/DNIS and Network OLI follow when enabled.
STANDARD_COLUMNS: Columns = {
    COL_LONG_CALL: (1, 1),
    COL_DATE: (2, 6),
    COL_START: (8, 13),
    COL_DURATION: (15, 22),
    COL_CALLING: (24, 27),
    COL_ATTENDANT: (29, 29),
    COL_ANSWER_TIME: (30, 32),
    COL_DIGITS: (34, 59),
    COL_COMPLETION: (60, 60),
    COL_FORWARD: (61, 61),
    COL_CALLED: (62, 65),
    COL_TRANSFER: (66, 66),
    COL_THIRD_PARTY: (68, 71),
    COL_ACCOUNT: (73, 84),
    COL_SYSTEM_FLAG: (85, 85),
    COL_SYSTEM_ID: (86, 88),
    COL_ANI: (92, 101),
    COL_DNIS: (103, 112),
    COL_PLATFORM_CALL_ID: (114, 122),
    COL_OLI_TERMINATING: (124, 131),
}
STANDARD_TIME_TO_ANSWER = {COL_ATTENDANT: (28, 28), COL_ANSWER_TIME: (29, 32)}  # Extended Time to Answer
STANDARD_METERING = {COL_DIGITS: (34, 54), COL_METER: (55, 59)}
# Extended Digit Length (101 characters). Vendor: duration..digits; after the digits the widths are inferred
# from the standard record with 7-character parties (spec: "verify"); ANI/DNIS/OLI placed by analogy.
EXTENDED_COLUMNS: Columns = {
    COL_LONG_CALL: (1, 1),
    COL_DATE: (2, 6),
    COL_START: (8, 13),
    COL_DURATION: (15, 24),
    COL_CALLING: (26, 32),
    COL_ATTENDANT: (34, 34),
    COL_ANSWER_TIME: (35, 37),
    COL_DIGITS: (39, 64),
    COL_COMPLETION: (65, 65),
    COL_FORWARD: (66, 66),
    COL_CALLED: (67, 73),
    COL_TRANSFER: (74, 74),
    COL_THIRD_PARTY: (76, 82),
    COL_ACCOUNT: (84, 95),
    COL_SYSTEM_FLAG: (96, 96),
    COL_SYSTEM_ID: (97, 99),
    COL_ANI: (103, 112),
    COL_DNIS: (114, 123),
    COL_PLATFORM_CALL_ID: (125, 133),
    COL_OLI_TERMINATING: (135, 142),
}
EXTENDED_TIME_TO_ANSWER = {COL_ATTENDANT: (33, 33), COL_ANSWER_TIME: (34, 37)}
EXTENDED_METERING = {COL_DIGITS: (39, 59), COL_METER: (60, 64)}
# Seconds in the start time: `hh:mm:ss` at 8–15, `p` at 16, every later column +3.
SECONDS_SHIFT = 3
SECONDS_SHIFT_FROM_COLUMN = 14  # every column after the start field (8–13)
START_WITH_SECONDS = (8, 16)
# Observed 207-character records (Extended Digit Length + Extended Time to Answer + seconds + metering; several
# options on; unverified). Columns up to `called` match the samples; transfer/third party/account are derived
# (blank in the samples); the later tokens' meanings are inferred from their values.
OBSERVED_207_COLUMNS: Columns = {
    COL_LONG_CALL: (1, 1),
    COL_DATE: (2, 6),
    COL_START: (8, 16),
    COL_DURATION: (18, 27),
    COL_CALLING: (29, 35),
    COL_ATTENDANT: (36, 36),
    COL_ANSWER_TIME: (37, 40),
    COL_DIGITS: (42, 62),
    COL_METER: (63, 67),
    COL_COMPLETION: (68, 68),
    COL_FORWARD: (69, 69),
    COL_CALLED: (70, 76),
    COL_TRANSFER: (77, 77),
    COL_THIRD_PARTY: (79, 85),
    COL_ACCOUNT: (87, 98),
    COL_SYSTEM_ID: (108, 110),  # `001`
    COL_ANI: (114, 133),  # the caller's number: external on incoming records, a DN on outgoing ones
    COL_DNIS: (135, 152),  # equals the DID digits on incoming records
    "call_ref": (154, 161),  # call-id-like `C0099410`; map to platform_call_id with `columns` if it is one
    "flag_163": (163, 163),
}
# A line longer than any documented layout (131 with Network OLI) is one of the long site layouts.
LONGEST_DOCUMENTED_LENGTH = 131

# Long-call flag (col 1): blank < 5 min, `-` 5–10 min, `%` 10–30 min, `+` ≥ 30 min.
LONG_CALL_FLAGS = " -%+"
DURATION_OVERFLOW = "99:99:99"  # ≥ 100 h
DURATION_OVERFLOW_S = 100 * 3600
UNANSWERED_MARK = "*"  # time to answer `***` / `****`
PM_MARKS = "pP"
TWELVE = 12

_DATE = re.compile(r"^(\d\d)/(\d\d)$")
_START = re.compile(r"^\d{1,2}:\d\d(?::\d\d)?[pP]?$")
_DURATION = re.compile(r"^\d{1,4}:\d\d:\d\d$")
_DURATION_STANDARD = re.compile(r"\d\d:\d\d:\d\d")
_DURATION_EXTENDED = re.compile(r"\d{4}:\d\d:\d\d")
_TRUNK = re.compile(r"^[TX]\d+$", re.IGNORECASE)
_ATTENDANT = re.compile(r"^ATT\d*$", re.IGNORECASE)
# Collapsed or damaged lines: flag, date, start, optional duration, calling party, rest.
_TOKENS = re.compile(
    r"^\s*(?P<flag>[-%+])?(?P<date>\d\d/\d\d)\s+(?P<start>\d{1,2}:\d\d(?::\d\d)?)(?P<pm>[pP])?"
    r"(?:\s+(?P<duration>\d{1,4}:\d\d:\d\d))?(?:\s+(?P<calling>\S+))?(?P<rest>.*)$"
)


@dataclass(frozen=True)
class MitelOptions:
    layout: str | None  # None: detected per line
    seconds_in_time: bool | None  # None: detected per line
    extended_time_to_answer: bool
    metering: bool
    clock: int | None  # None: 12 h once a `p` was seen, else 24 h
    column_overrides: dict[str, tuple[int, int] | None]


class MitelMivbParser(RecordParser):
    """MiVoice Business / 3300 / SX-2000 SMDR. Layout from options (`layout`, `seconds_in_time`,
    `extended_time_to_answer`, `metering`, `columns`) or detected per line; one record per line, no holding."""

    format = "mitel-mivb"
    vendor = "Mitel SMDR"
    settings: MitelOptions

    def __init__(self, link: str, *, tz: tzinfo, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(link, tz=tz, options=options)
        self._settings = self.settings
        self._layouts: dict[tuple[str, bool], Columns] = {}
        self._last_layout: tuple[str, bool] | None = None
        self._seen_pm = False  # a `p` proves a 12 h clock: then `12:xx` without it is just after midnight

    @classmethod
    def compile_options(cls, options: Mapping[str, Any]) -> MitelOptions:
        return _compile_options(options)

    def variant(self) -> str:
        settings = self._settings
        seconds: bool | None
        if self._last_layout is not None:
            layout, seconds = self._last_layout
        else:
            layout, seconds = settings.layout or "auto", settings.seconds_in_time
        parts = [f"{layout} layout"]
        if seconds:
            parts.append("seconds in the start time")
        if settings.extended_time_to_answer:
            parts.append("extended time to answer")
        if settings.metering:
            parts.append("meter pulses")
        if settings.clock == CLOCK_24H:
            parts.append("24-hour clock")
        elif settings.clock == CLOCK_12H or self._seen_pm:
            parts.append("12-hour clock (p = PM)")
        else:
            parts.append("24-hour clock until a `p` is seen")
        parts.append("start times, year inferred")
        return "Mitel: " + ", ".join(parts)

    def parse(self, line: str, received_at: datetime) -> list[CallRecord]:
        columns = self._layout_for(line)
        record = self._from_columns(line, columns, received_at)
        if record is None:
            record = self._from_tokens(line, received_at)
        return [record]

    # ---- layout

    def _layout_for(self, line: str) -> Columns:
        settings = self._settings
        seconds = settings.seconds_in_time
        if seconds is None:
            seconds = len(line) > 14 and line[9] == ":" and line[12] == ":" and line[13:15].isdigit()
        layout = settings.layout
        if layout is None:
            offset = SECONDS_SHIFT if seconds else 0
            duration_area = line[14 + offset : 24 + offset]
            if _DURATION_EXTENDED.match(duration_area):
                extended = True
            elif _DURATION_STANDARD.match(duration_area):
                extended = False
            else:  # blank duration: only the length tells
                extended = len(line) > LONGEST_DOCUMENTED_LENGTH
            if extended and seconds and len(line) > LONGEST_DOCUMENTED_LENGTH:
                layout = LAYOUT_OBSERVED_207
            else:
                layout = LAYOUT_EXTENDED if extended else LAYOUT_STANDARD
        key = (layout, seconds)
        self._last_layout = key
        columns = self._layouts.get(key)
        if columns is None:
            columns = _build_layout(layout, seconds, settings)
            self._layouts[key] = columns
        return columns

    # ---- column parsing

    def _from_columns(self, line: str, columns: Columns, received_at: datetime) -> CallRecord | None:
        """The record, or None when the line does not fit the layout (then tokens are tried)."""
        values = {name: _slice(line, span) for name, span in columns.items()}
        date_text = values.get(COL_DATE, "")
        start_text = values.get(COL_START, "")
        duration_text = values.get(COL_DURATION, "")
        if not _DATE.match(date_text) or not _START.match(start_text):
            return None
        if duration_text and not _DURATION.match(duration_text):
            return None
        start = self._start(date_text, start_text, received_at)
        duration_s, overflow = _duration(duration_text)
        end = start + timedelta(seconds=duration_s) if duration_s is not None else None

        answer_text = values.get(COL_ANSWER_TIME, "")
        unanswered = answer_text.startswith(UNANSWERED_MARK)
        ring_s: int | None = None
        if answer_text and not unanswered:
            if not answer_text.isdigit():
                raise SmdrParseError(f"time to answer {answer_text!r} is neither seconds nor `***`")
            ring_s = int(answer_text)

        calling = values.get(COL_CALLING, "")
        called = values.get(COL_CALLED, "")
        digits = values.get(COL_DIGITS, "")
        ani = values.get(COL_ANI, "")
        extra: dict[str, Any] = {
            name: value for name, value in values.items() if value and name not in NORMALISED_COLUMNS
        }
        if overflow:
            extra[EXTRA_DURATION_OVERFLOW] = True

        # Transfer/conference identifier (col 66 standard): T or X a transfer, C a conference, the second station
        # in Third Party; speed call / call forward flag (col 61): S speed call, F forwarded.
        transfer_flag = values.get(COL_TRANSFER, "").upper()
        if transfer_flag in TRANSFER_FLAGS:
            extra[EXTRA_TRANSFERRED] = True
        elif transfer_flag == CONFERENCE_FLAG:
            extra[EXTRA_CONFERENCE] = True
        forward_flag = values.get(COL_FORWARD, "").upper()
        if forward_flag == FORWARD_FLAG:
            extra[EXTRA_FORWARDED] = True
        elif forward_flag == SPEED_CALL_FLAG:
            extra[EXTRA_SPEED_CALL] = True

        direction, extension, other_number, trunk = _parties(calling, called, digits, ani)
        if direction is Direction.IN and digits:
            extra[EXTRA_DID] = digits
        return self.record(
            line,
            received_at,
            start=start,
            end=end,
            duration_s=duration_s,
            ring_s=ring_s,
            extension=extension,
            other_number=other_number,
            direction=direction,
            trunk=trunk,
            account=values.get(COL_ACCOUNT) or None,
            platform_call_id=values.get(COL_PLATFORM_CALL_ID) or None,
            answered=not (unanswered or duration_s is None),
            extra=extra,
        )

    def _from_tokens(self, line: str, received_at: datetime) -> CallRecord:
        """A collapsed, merged or truncated line: a partial record (date, start, duration, calling party)."""
        match = _TOKENS.match(line)
        if match is None:
            raise SmdrParseError("not a Mitel SMDR record: no `mm/dd hh:mm` date and start time")
        start = self._start(match["date"], match["start"] + (match["pm"] or ""), received_at)
        duration_s, overflow = _duration(match["duration"] or "")
        calling = match["calling"] or ""
        extra: dict[str, Any] = {EXTRA_PARTIAL: True}
        if match["flag"]:
            extra[COL_LONG_CALL] = match["flag"]
        if calling:
            extra[COL_CALLING] = calling
        if rest := match["rest"].strip():
            extra[EXTRA_UNPARSED] = rest
        if overflow:
            extra[EXTRA_DURATION_OVERFLOW] = True
        trunk = calling if _TRUNK.match(calling) else None
        return self.record(
            line,
            received_at,
            start=start,
            end=start + timedelta(seconds=duration_s) if duration_s is not None else None,
            duration_s=duration_s,
            extension=None if trunk else (calling or None),
            direction=Direction.IN if trunk else Direction.UNKNOWN,
            trunk=trunk,
            extra=extra,
        )

    def _start(self, date_text: str, start_text: str, received_at: datetime) -> datetime:
        """`mm/dd` + `hh:mm[:ss][p]` (PBX wall clock, no year) → aware UTC."""
        date_match = _DATE.match(date_text)
        if date_match is None:
            raise SmdrParseError(f"date {date_text!r} is not mm/dd")
        month, day = int(date_match[1]), int(date_match[2])
        if not (1 <= month <= 12 and 1 <= day <= 31):
            raise SmdrParseError(f"date {date_text!r} is not mm/dd")
        try:
            hour, minute, second = self._clock(start_text)
        except ValueError:
            raise SmdrParseError(f"start time {start_text!r} is not hh:mm[:ss] with an optional `p`") from None
        year = infer_year(month, day, local_now(received_at, self.tz))
        try:
            local = datetime(year, month, day, hour, minute, second)
        except ValueError:
            raise SmdrParseError(f"date {date_text!r} does not exist in {year}") from None
        return to_utc(local, self.tz, received_at)

    def _clock(self, text: str) -> tuple[int, int, int]:
        """12 h (`p`/`P` after the minutes = PM, nothing = AM) or 24 h, by option or by what the link has shown."""
        pm = text[-1:] in PM_MARKS if text else False
        if pm:
            if not self._seen_pm:
                self.note_context("twelve_hour_clock")
            self._seen_pm = True
            return parse_clock(text)
        hour, minute, second = parse_clock(text)
        twelve_hour = self._settings.clock == CLOCK_12H or (self._settings.clock is None and self._seen_pm)
        if twelve_hour and hour == TWELVE:  # `12:05` on a 12 h clock is 00:05 (12:05 PM prints `12:05p`)
            hour = 0
        return hour, minute, second


PARSER = MitelMivbParser


# ---- helpers


def _slice(line: str, span: tuple[int, int]) -> str:
    """Columns first..last (1-based inclusive) of a line, right-padded; surrounding blanks removed."""
    first, last = span
    return line[first - 1 : last].strip()


def _duration(text: str) -> tuple[int | None, bool]:
    """Seconds (None when blank) and whether the PBX printed its ≥ 100 h overflow."""
    if not text:
        return None, False
    if text.endswith(DURATION_OVERFLOW):
        return DURATION_OVERFLOW_S, True
    try:
        return parse_duration(text), False
    except ValueError:
        raise SmdrParseError(f"duration {text!r} is not hh:mm:ss") from None


def _party_kind(party: str) -> str:
    if not party:
        return "none"
    if _TRUNK.match(party):
        return "trunk"
    if _ATTENDANT.match(party):
        return "attendant"
    return "extension"


def _parties(calling: str, called: str, digits: str, ani: str) -> tuple[Direction, str | None, str | None, str | None]:
    """(direction, extension, other_number, trunk) from the calling and called parties.

    Calling trunk → in; called trunk → out; two stations → internal. A missing party (site layouts and
    anonymised logs leave one blank) reads as the trunk side: a station that dialled digits → out, a station
    that was called → in.
    """
    calling_kind, called_kind = _party_kind(calling), _party_kind(called)
    calling_is_station = calling_kind in ("extension", "attendant")
    called_is_station = called_kind in ("extension", "attendant")
    if calling_kind == "trunk":
        return Direction.IN, called if called_is_station else None, ani or None, calling
    if called_kind == "trunk":
        return Direction.OUT, calling or None, digits or None, called
    if calling_is_station and called_is_station:
        return Direction.INTERNAL, calling, called, None
    if calling_is_station:
        return (Direction.OUT if digits else Direction.UNKNOWN), calling, digits or None, None
    if called_is_station:
        return Direction.IN, called, ani or None, None
    return Direction.UNKNOWN, None, None, None


def _build_layout(layout: str, seconds: bool, settings: MitelOptions) -> Columns:
    if layout == LAYOUT_OBSERVED_207:
        columns = dict(OBSERVED_207_COLUMNS)
    else:
        extended = layout == LAYOUT_EXTENDED
        columns = dict(EXTENDED_COLUMNS if extended else STANDARD_COLUMNS)
        if settings.extended_time_to_answer:
            columns.update(EXTENDED_TIME_TO_ANSWER if extended else STANDARD_TIME_TO_ANSWER)
        if settings.metering:
            columns.update(EXTENDED_METERING if extended else STANDARD_METERING)
        if seconds:
            columns = {
                name: (first + SECONDS_SHIFT, last + SECONDS_SHIFT) if first >= SECONDS_SHIFT_FROM_COLUMN else span
                for name, span in columns.items()
                for first, last in [span]
            }
            columns[COL_START] = START_WITH_SECONDS
    for name, span in settings.column_overrides.items():
        if span is None:
            columns.pop(name, None)
        else:
            columns[name] = span
    return columns


def _compile_options(options: Mapping[str, Any]) -> MitelOptions:
    """Options → settings; ValueError naming the key when one is wrong (start-up refusal)."""
    layout = options.get(OPT_LAYOUT)
    if layout is not None:
        if not isinstance(layout, (str, int)) or isinstance(layout, bool):
            raise ValueError(f"{OPT_LAYOUT}: must be one of {', '.join(LAYOUTS)}")
        layout = LAYOUT_ALIASES.get(str(layout).strip().lower(), str(layout).strip().lower())
        if layout == "auto":
            layout = None
        elif layout not in LAYOUTS:
            raise ValueError(f"{OPT_LAYOUT}: unknown layout {options.get(OPT_LAYOUT)!r} (one of {', '.join(LAYOUTS)})")
    seconds = _optional_bool(options, OPT_SECONDS_IN_TIME)
    clock = options.get(OPT_CLOCK)
    if clock is not None:
        text = str(clock).strip().lower().removesuffix("h")
        if text == "auto":
            clock = None
        elif text in ("12", "24") and not isinstance(clock, bool):
            clock = int(text)
        else:
            raise ValueError(f"{OPT_CLOCK}: must be 12 or 24, not {clock!r}")
    overrides: dict[str, tuple[int, int] | None] = {}
    raw_columns = options.get(OPT_COLUMNS)
    if raw_columns is not None:
        if not isinstance(raw_columns, Mapping):
            raise ValueError(f"{OPT_COLUMNS}: must be a mapping of field name → [first, last]")
        for name, span in raw_columns.items():
            overrides[str(name)] = None if span is None else column_span(span, f"{OPT_COLUMNS}.{name}")
    return MitelOptions(
        layout=layout,
        seconds_in_time=seconds,
        extended_time_to_answer=bool(_optional_bool(options, OPT_EXTENDED_TIME_TO_ANSWER)),
        metering=bool(_optional_bool(options, OPT_METERING)),
        clock=clock,
        column_overrides=overrides,
    )


def _optional_bool(options: Mapping[str, Any], key: str) -> bool | None:
    value = options.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise ValueError(f"{key}: must be true or false, not {value!r}")
