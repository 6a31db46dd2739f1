"""Generic configurable SMDR/CDR format: delimited, fixed-width or regex lines mapped by link options (docs/smdr.md)."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drivers.smdr.base import (
    RecordParser,
    SmdrParseError,
    column_span,
    infer_year,
    local_now,
    parse_clock,
    parse_duration,
    to_utc,
    two_digit_year,
)
from gateway.events import CallRecord
from gateway.model import Direction

# ---- option keys (a `format: custom` link takes them directly or under `options:`)
OPT_MODE = "mode"
OPT_SKIP_FIRST = "skip_first"
OPT_SKIP_REGEX = "skip_regex"
OPT_RECORD_REGEX = "record_regex"
OPT_MIN_LENGTH = "min_length"
OPT_ATTACH_REGEX = "attach_regex"
OPT_ATTACH_TO = "attach_to"
OPT_DELIMITER = "delimiter"
OPT_QUOTECHAR = "quotechar"
OPT_MIN_FIELDS = "min_fields"
OPT_FIELDS = "fields"
OPT_COLUMNS = "columns"
OPT_PATTERN = "pattern"
OPT_DATE_FORMAT = "date_format"
OPT_TIME_FORMAT = "time_format"
OPT_DATETIME_FORMAT = "datetime_format"
OPT_YEAR = "year"
OPT_TIME_IS = "time_is"
OPT_TIMEZONE = "timezone"
OPT_DURATION_FORMAT = "duration_format"
OPT_DIRECTION_MAP = "direction_map"
OPT_INTERNAL_IF = "internal_if"
OPT_PLATFORM_CALL_ID_FIELD = "platform_call_id_field"
OPT_MORE_FOLLOWS_FIELD = "more_follows_field"
OPT_MORE_FOLLOWS_VALUE = "more_follows_value"
# encoding, terminator and strip are the transport's; accepted here and ignored.

MODE_DELIMITED = "delimited"
MODE_FIXED = "fixed"
MODE_REGEX = "regex"
MODES = (MODE_DELIMITED, MODE_FIXED, MODE_REGEX)
MAPPING_KEY_BY_MODE = {MODE_DELIMITED: OPT_FIELDS, MODE_FIXED: OPT_COLUMNS, MODE_REGEX: OPT_PATTERN}

YEAR_RECORD = "record"
YEAR_INFER = "infer"
YEAR_MODES = (YEAR_RECORD, YEAR_INFER)
TIME_IS_START = "start"
TIME_IS_END = "end"
TIME_IS_ANSWER = "answer"
TIME_IS_VALUES = (TIME_IS_START, TIME_IS_END, TIME_IS_ANSWER)
DURATION_HMS = "HH:MM:SS"
DURATION_SECONDS = "seconds"
# Named formats (case-insensitive) read by parse_duration: `hh:mm:ss`, `hhhh:mm:ss`, `mm:ss`, `m'ss`, plain seconds.
DURATION_CLOCK_NAMES = ("hh:mm:ss", "h:mm:ss", "mm:ss")
DURATION_GROUPS = ("h", "m", "s")

DEFAULT_DELIMITER = ","
DEFAULT_QUOTECHAR = '"'
DEFAULT_ATTACH_TO = "continuation"  # → extra["continuation"]
ATTACH_JOIN = " "
RAW_LINE_JOIN = "\n"  # a held record's raw text gains its continuation lines
# A record waits this long for a continuation line (e.g. a `NEXT` name line) before it is released.
HOLD_TIMEOUT_S = 2.0
# A record with a time but no date is dated on the receive day, or the day before when that would put it more
# than this far in the future (records arrive late, never early; allows for a PBX clock running a little fast).
TIME_ONLY_FUTURE_TOLERANCE = timedelta(hours=1)

# ---- mapping targets
T_DATE, T_TIME, T_DATETIME, T_START, T_END = "date", "time", "datetime", "start", "end"
T_DURATION, T_DURATION_S, T_RING, T_RING_S = "duration", "duration_s", "ring", "ring_s"
T_EXTENSION, T_OTHER_NUMBER, T_CALLER, T_CALLED = "extension", "other_number", "caller", "called"
T_DIRECTION, T_TRUNK, T_ACCOUNT = "direction", "trunk", "account"
T_PLATFORM_CALL_ID, T_MORE_FOLLOWS, T_ANSWERED = "platform_call_id", "more_follows", "answered"
TIME_TARGETS = frozenset({T_DATE, T_TIME, T_DATETIME, T_START, T_END})
PARTY_TARGETS = frozenset({T_EXTENSION, T_OTHER_NUMBER, T_CALLER, T_CALLED})
# Text fields of CallRecord a value (or a continuation line) can go to as it is.
TEXT_FIELDS = (T_EXTENSION, T_OTHER_NUMBER, T_TRUNK, T_ACCOUNT, T_PLATFORM_CALL_ID)
KNOWN_TARGETS = (
    TIME_TARGETS
    | PARTY_TARGETS
    | {
        T_DURATION,
        T_DURATION_S,
        T_RING,
        T_RING_S,
        T_DIRECTION,
        T_TRUNK,
        T_ACCOUNT,
        T_PLATFORM_CALL_ID,
        T_MORE_FOLLOWS,
        T_ANSWERED,
    }
)
# Kept in extra as printed, besides their normalised use.
RAW_IN_EXTRA = (T_CALLER, T_CALLED, T_DIRECTION)
RESERVED_TARGETS = frozenset({"raw", "format", "source", "received_at", "extra"})
# What a continuation line cannot be appended to.
NOT_ATTACHABLE = (KNOWN_TARGETS - set(TEXT_FIELDS)) | RESERVED_TARGETS

DIRECTION_WORDS: dict[str, Direction] = {
    "in": Direction.IN,
    "i": Direction.IN,
    "incoming": Direction.IN,
    "inbound": Direction.IN,
    "out": Direction.OUT,
    "o": Direction.OUT,
    "outgoing": Direction.OUT,
    "outbound": Direction.OUT,
    "internal": Direction.INTERNAL,
    "int": Direction.INTERNAL,
    "unknown": Direction.UNKNOWN,
}
TRUE_WORDS = frozenset({"1", "y", "yes", "true", "t", "a", "answered"})
FALSE_WORDS = frozenset({"0", "n", "no", "false", "f", "", "-"})

# Tried in order when no date_format / datetime_format is configured.
DEFAULT_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%m/%d/%Y", "%m/%d/%y", "%d.%m.%Y", "%d.%m.%y", "%m/%d")
DEFAULT_DATETIME_FORMATS = (
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%y %H:%M:%S",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%y %H:%M:%S",
    "%Y%m%d%H%M%S",
)
YEAR_DIRECTIVES = ("%Y", "%y", "%G")
TWO_DIGIT_YEAR_DIRECTIVE = "%y"
# A year-less date is parsed with a leap year appended, so 02/29 is readable; the real year is inferred.
PLACEHOLDER_LEAP_YEAR = 2000
FORMAT_PROBE = datetime(2000, 12, 31, 13, 4, 5)  # every directive prints something strptime reads back

# Page rules and other decoration lines: skipped silently.
_DECORATION = re.compile(r"^[\s\-=_*+|#~.]*$")


@dataclass(frozen=True)
class CustomSettings:
    """The options of a `format: custom` link, checked and compiled."""

    mode: str
    targets: frozenset[str]  # names the mapping fills
    fields: dict[str, int] = field(default_factory=dict)
    columns: dict[str, tuple[int, int]] = field(default_factory=dict)
    pattern: re.Pattern[str] | None = None
    delimiter: str = DEFAULT_DELIMITER
    quotechar: str | None = DEFAULT_QUOTECHAR
    min_fields: int = 0
    skip_first: int = 0
    skip_patterns: tuple[re.Pattern[str], ...] = ()
    record_pattern: re.Pattern[str] | None = None
    min_length: int = 0
    attach_pattern: re.Pattern[str] | None = None
    attach_to: str = DEFAULT_ATTACH_TO
    date_format: str | None = None
    time_format: str | None = None
    datetime_format: str | None = None
    year: str | None = None  # None: from the record when its format has one, else inferred
    time_is: str = TIME_IS_START
    timezone: tzinfo | None = None
    duration_pattern: re.Pattern[str] | None = None  # None: duration_format is a named one
    duration_in_seconds: bool = False
    direction_map: dict[str, Direction] = field(default_factory=dict)
    internal_number: re.Pattern[str] | None = None  # internal_if as one regex: what an internal number looks like
    internal_fields: dict[str, re.Pattern[str]] = field(default_factory=dict)  # internal_if as {target: regex}
    platform_call_id_field: str | None = None
    more_follows_field: str | None = None
    more_follows_value: str | None = None


class CustomParser(RecordParser):
    """A PBX without a dedicated parser, described by link options: how to cut a line into named values
    (`mode` + `fields`/`columns`/`pattern`) and how to read them (formats, year, direction map, grouping)."""

    format = "custom"
    vendor = "custom-format"
    parse_errors = (ValueError, IndexError, OverflowError, csv.Error)
    settings: CustomSettings
    hold_timeout_s = HOLD_TIMEOUT_S  # only used when attach_regex is set

    def __init__(self, link: str, *, tz: tzinfo, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(link, tz=tz, options=options)
        self._settings = self.settings
        if self._settings.timezone is not None:
            self.tz = self._settings.timezone
        self._skip_remaining = self._settings.skip_first

    @classmethod
    def compile_options(cls, options: Mapping[str, Any]) -> CustomSettings:
        return compile_options(options)

    def reset(self) -> None:
        self._skip_remaining = self._settings.skip_first

    def resume(self) -> None:
        self._skip_remaining = 0

    def variant(self) -> str:
        settings = self._settings
        return f"custom: {settings.mode}, {settings.time_is} times" + (
            ", continuation lines attached" if settings.attach_pattern is not None else ""
        )

    def skip_line(self) -> list[CallRecord]:
        if self._skip_remaining > 0:  # a blank line right after connecting counts among the lines to skip
            self._skip_remaining -= 1
            return []
        return super().skip_line()

    def parse(self, line: str, received_at: datetime) -> list[CallRecord]:
        settings = self._settings
        if self._skip_remaining > 0:
            self._skip_remaining -= 1
            return []
        if settings.attach_pattern is not None and (match := settings.attach_pattern.search(line)):
            self._attach(line, _attached_text(line, match))
            return []
        if self._is_skipped(line):
            return self.release_held()
        if len(line) < settings.min_length:
            raise SmdrParseError(f"line of {len(line)} characters, records have at least {settings.min_length}")
        fields = self._fields(self._values(line), received_at)
        if settings.attach_pattern is not None:
            return self.hold(line, received_at, fields)
        return [*self.release_held(), self.record(line, received_at, **fields)]

    # ---- line → named values

    def _is_skipped(self, line: str) -> bool:
        settings = self._settings
        if _DECORATION.match(line):
            return True
        if any(pattern.search(line) for pattern in settings.skip_patterns):
            return True
        return settings.record_pattern is not None and not settings.record_pattern.search(line)

    def _values(self, line: str) -> dict[str, str]:
        """The mapped names and their text, stripped of stray spaces ("" when absent)."""
        settings = self._settings
        if settings.mode == MODE_DELIMITED:
            parts = _split(line, settings.delimiter, settings.quotechar)
            if len(parts) < settings.min_fields:
                raise SmdrParseError(f"{len(parts)} fields, at least {settings.min_fields} needed")
            return {name: parts[index].strip() if index < len(parts) else "" for name, index in settings.fields.items()}
        if settings.mode == MODE_FIXED:
            return {name: line[first - 1 : last].strip() for name, (first, last) in settings.columns.items()}
        assert settings.pattern is not None
        match = settings.pattern.search(line)
        if match is None:
            raise SmdrParseError("line does not match the configured pattern")
        return {name: (value or "").strip() for name, value in match.groupdict().items()}

    # ---- named values → CallRecord fields

    def _fields(self, values: dict[str, str], received_at: datetime) -> dict[str, Any]:
        settings = self._settings
        received_local = local_now(received_at, self.tz)
        duration_s = self._seconds(values, T_DURATION, T_DURATION_S)
        ring_s = self._seconds(values, T_RING, T_RING_S)

        start = end = None
        anchor = self._anchor(values, received_local, received_at)
        if anchor is not None:
            if settings.time_is == TIME_IS_END:
                end = anchor
            elif settings.time_is == TIME_IS_ANSWER:
                start = anchor - timedelta(seconds=ring_s or 0)
            else:
                start = anchor
        if values.get(T_START):
            start = self._datetime(values[T_START], received_local, received_at)
        if values.get(T_END):
            end = self._datetime(values[T_END], received_local, received_at)
        if duration_s is not None:  # elapsed time, added in UTC: right across a DST change
            if end is None and start is not None:
                end = start + timedelta(seconds=(ring_s or 0) + duration_s)
            elif start is None and end is not None:
                start = end - timedelta(seconds=duration_s + (ring_s or 0))

        direction, extension, other_number = self._parties(values)
        extra: dict[str, Any] = {
            name: value
            for name, value in values.items()
            if value and (name not in KNOWN_TARGETS or name in RAW_IN_EXTRA)
        }
        if values.get(T_DATE) and anchor is None:  # a date without a time: checked and kept, not a start
            extra[T_DATE] = self._date(values[T_DATE], received_local).isoformat()
        if settings.targets & TIME_TARGETS and not any(values.get(name) for name in TIME_TARGETS):
            raise SmdrParseError("no date or time in the line")
        if start is None and end is None and extension is None and other_number is None:
            raise SmdrParseError("no time and no party in the line")

        platform_call_id = values.get(T_PLATFORM_CALL_ID) or None
        if settings.platform_call_id_field:
            platform_call_id = values.get(settings.platform_call_id_field) or platform_call_id
        more_follows = _truth(values.get(T_MORE_FOLLOWS, "")) is True
        if settings.more_follows_field:
            flag = values.get(settings.more_follows_field, "")
            if settings.more_follows_value is not None:
                more_follows = flag.casefold() == settings.more_follows_value.casefold()
            else:
                more_follows = _truth(flag) is True
        return {
            "start": start,
            "end": end,
            "duration_s": duration_s,
            "ring_s": ring_s,
            "extension": extension,
            "other_number": other_number,
            "direction": direction,
            "trunk": values.get(T_TRUNK) or None,
            "account": values.get(T_ACCOUNT) or None,
            "platform_call_id": platform_call_id,
            "more_follows": more_follows,
            "answered": _truth(values[T_ANSWERED]) if values.get(T_ANSWERED) else None,
            "extra": extra,
        }

    def _anchor(self, values: dict[str, str], received_local: datetime, received_at: datetime) -> datetime | None:
        """The record's call time (aware UTC) from `datetime`, or `date` + `time`; None when it has none."""
        if values.get(T_DATETIME):
            return self._datetime(values[T_DATETIME], received_local, received_at)
        time_text = values.get(T_TIME)
        if not time_text:
            return None
        clock = self._time(time_text)
        if values.get(T_DATE):
            local = datetime.combine(self._date(values[T_DATE], received_local), clock)
        else:
            local = datetime.combine(received_local.date(), clock)
            if local - received_local > TIME_ONLY_FUTURE_TOLERANCE:
                local -= timedelta(days=1)
        return to_utc(local, self.tz, received_at)

    def _date(self, text: str, received_local: datetime) -> date:
        formats = (self._settings.date_format,) if self._settings.date_format else DEFAULT_DATE_FORMATS
        parsed = self._strptime(text, formats, "date", received_local)
        return parsed.date()

    def _time(self, text: str) -> time:
        time_format = self._settings.time_format
        try:
            if time_format:
                return datetime.strptime(text, time_format).time()
            hour, minute, second = parse_clock(text)
        except ValueError:
            raise SmdrParseError(f"time {text!r} does not match {time_format or 'hh:mm[:ss][AM|PM]'}") from None
        return time(hour, minute, second)

    def _datetime(self, text: str, received_local: datetime, received_at: datetime) -> datetime:
        datetime_format = self._settings.datetime_format
        if datetime_format:
            parsed = self._strptime(text, (datetime_format,), "date and time", received_local)
        else:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                parsed = self._strptime(text, DEFAULT_DATETIME_FORMATS, "date and time", received_local)
        if parsed.tzinfo is not None:  # the PBX printed an offset: trust it over the link's zone
            return parsed.astimezone(timezone.utc)
        return to_utc(parsed, self.tz, received_at)

    def _strptime(self, text: str, formats: tuple[str, ...], what: str, received_local: datetime) -> datetime:
        """Parse with the first format that fits, then settle the year (record, two-digit, or inferred)."""
        for fmt in formats:
            has_year = any(directive in fmt for directive in YEAR_DIRECTIVES)
            try:
                if has_year:
                    parsed = datetime.strptime(text, fmt)
                else:
                    parsed = datetime.strptime(f"{text} {PLACEHOLDER_LEAP_YEAR}", f"{fmt} %Y")
            except ValueError:
                continue
            year = parsed.year
            if not has_year or self._settings.year == YEAR_INFER:
                year = infer_year(parsed.month, parsed.day, received_local)
            elif TWO_DIGIT_YEAR_DIRECTIVE in fmt:
                year = two_digit_year(parsed.year % 100, received_local)
            try:
                return parsed.replace(year=year)
            except ValueError:
                raise SmdrParseError(f"{what} {text!r} does not exist in {year}") from None
        expected = formats[0] if len(formats) == 1 else "a known format"
        raise SmdrParseError(f"{what} {text!r} does not match {expected}")

    def _seconds(self, values: dict[str, str], clock_name: str, seconds_name: str) -> float | None:
        """A duration or ring time → seconds (whole seconds as int); None when not printed."""
        seconds = self._read_seconds(values, clock_name, seconds_name)
        if seconds is not None and seconds.is_integer():
            return int(seconds)
        return seconds

    def _read_seconds(self, values: dict[str, str], clock_name: str, seconds_name: str) -> float | None:
        if text := values.get(seconds_name):
            return _number(text, seconds_name)
        text = values.get(clock_name)
        if not text:
            return None
        settings = self._settings
        if settings.duration_pattern is not None:
            match = settings.duration_pattern.search(text)
            if match is not None:
                parts = match.groupdict()
                return float(int(parts.get("h") or 0) * 3600 + int(parts.get("m") or 0) * 60 + int(parts.get("s") or 0))
            if clock_name == T_DURATION:
                raise SmdrParseError(f"{clock_name} {text!r} does not match {settings.duration_pattern.pattern}")
        elif settings.duration_in_seconds and clock_name == T_DURATION:
            return _number(text, clock_name)
        try:  # the configured reading first; a ring time may be printed differently: plain seconds or clock form
            return float(parse_duration(text))
        except ValueError:
            return _number(text, clock_name)

    def _parties(self, values: dict[str, str]) -> tuple[Direction, str | None, str | None]:
        """(direction, extension, other_number): from the direction map, caller/called and `internal_if`."""
        settings = self._settings
        direction = Direction.UNKNOWN
        raw_direction = values.get(T_DIRECTION, "")
        if raw_direction:
            direction = _lookup_direction(raw_direction, settings.direction_map or DIRECTION_WORDS)
        caller, called = values.get(T_CALLER, ""), values.get(T_CALLED, "")
        internal = settings.internal_number
        if direction is Direction.UNKNOWN and internal is not None and (caller or called):
            caller_internal = bool(caller) and internal.fullmatch(caller) is not None
            called_internal = bool(called) and internal.fullmatch(called) is not None
            if caller_internal and called_internal:
                direction = Direction.INTERNAL
            elif caller_internal:
                direction = Direction.OUT
            elif called_internal:
                direction = Direction.IN
        extension: str | None
        other_number: str | None
        if direction is Direction.IN:
            extension, other_number = called, caller
        else:
            extension, other_number = caller, called
        extension = values.get(T_EXTENSION) or extension or None
        other_number = values.get(T_OTHER_NUMBER) or other_number or None
        if internal is not None and other_number and internal.fullmatch(other_number):
            direction = Direction.INTERNAL
        if settings.internal_fields and all(
            pattern.fullmatch(values.get(name, "")) for name, pattern in settings.internal_fields.items()
        ):
            direction = Direction.INTERNAL
        return direction, extension, other_number

    # ---- continuation lines

    def _attach(self, line: str, text: str) -> None:
        """Append a continuation to the held record; one with no record before it is dropped."""
        held = self._held
        if held is None or not text:
            return
        held.raw = f"{held.raw}{RAW_LINE_JOIN}{line}"
        target = self._settings.attach_to
        if target in TEXT_FIELDS:
            held.fields[target] = _joined(held.fields.get(target), text)
        else:
            extra = held.fields["extra"]
            extra[target] = _joined(extra.get(target), text)


PARSER = CustomParser


# ---- helpers


def _split(line: str, delimiter: str, quotechar: str | None) -> list[str]:
    if len(delimiter) > 1:
        return line.split(delimiter)
    if quotechar:
        reader = csv.reader([line], delimiter=delimiter, quotechar=quotechar, skipinitialspace=True)
    else:
        reader = csv.reader([line], delimiter=delimiter, quoting=csv.QUOTE_NONE)
    return next(reader, [])


def _attached_text(line: str, match: re.Match[str]) -> str:
    """What a continuation line adds: its `value` group, else its first group, else the text after the match."""
    groups = match.groupdict()
    if groups.get("value") is not None:
        return groups["value"].strip()
    if match.re.groups and match.group(1) is not None:
        return match.group(1).strip()
    return line[match.end() :].strip()


def _joined(old: Any, text: str) -> str:
    return f"{old}{ATTACH_JOIN}{text}" if old else text


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SmdrParseError(f"{what} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise SmdrParseError(f"{what} {text!r} is not a number of seconds")
    return value


def _truth(text: str) -> bool | None:
    word = text.strip().casefold()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def _lookup_direction(raw: str, direction_map: Mapping[str, Direction]) -> Direction:
    if raw in direction_map:
        return direction_map[raw]
    return direction_map.get(raw.strip().casefold(), Direction.UNKNOWN)


# ---- options


def compile_options(options: Mapping[str, Any]) -> CustomSettings:
    """Check and compile the options of a custom link; ValueError naming the key when one is wrong."""
    mode = _mode(options)
    mapping_key = MAPPING_KEY_BY_MODE[mode]
    fields: dict[str, int] = {}
    columns: dict[str, tuple[int, int]] = {}
    pattern: re.Pattern[str] | None = None
    if mode == MODE_DELIMITED:
        fields = _field_indexes(options.get(OPT_FIELDS))
        targets = frozenset(fields)
    elif mode == MODE_FIXED:
        columns = _column_spans(options.get(OPT_COLUMNS))
        targets = frozenset(columns)
    else:
        pattern = _regex(options, OPT_PATTERN, required=True)
        assert pattern is not None
        if not pattern.groupindex:
            raise ValueError(f"{OPT_PATTERN}: needs named groups, e.g. (?P<extension>\\d+)")
        targets = frozenset(pattern.groupindex)
    for name in targets:
        if name in RESERVED_TARGETS:
            raise ValueError(f"{mapping_key}.{name}: {name!r} is set by the gateway, not mapped from the line")
    if not targets & TIME_TARGETS and not targets & PARTY_TARGETS:
        raise ValueError(
            f"{mapping_key}: maps no time ({', '.join(sorted(TIME_TARGETS))}) and no party "
            f"({', '.join(sorted(PARTY_TARGETS))}); a record needs one or the other"
        )

    delimiter = options.get(OPT_DELIMITER, DEFAULT_DELIMITER)
    if not isinstance(delimiter, str) or not delimiter:
        raise ValueError(f"{OPT_DELIMITER}: must be a non-empty string, not {delimiter!r}")
    quotechar = options.get(OPT_QUOTECHAR, DEFAULT_QUOTECHAR)
    if quotechar is not None and (not isinstance(quotechar, str) or len(quotechar) > 1):
        raise ValueError(f"{OPT_QUOTECHAR}: must be one character (or empty for none), not {quotechar!r}")

    attach_pattern = _regex(options, OPT_ATTACH_REGEX)
    attach_to = options.get(OPT_ATTACH_TO)
    if attach_to is not None:
        if attach_pattern is None:
            raise ValueError(f"{OPT_ATTACH_TO}: needs {OPT_ATTACH_REGEX} (which lines are continuations)")
        if not isinstance(attach_to, str) or not attach_to.strip():
            raise ValueError(f"{OPT_ATTACH_TO}: must be a field name, not {attach_to!r}")
        if attach_to in NOT_ATTACHABLE:
            raise ValueError(
                f"{OPT_ATTACH_TO}: text cannot be appended to {attach_to!r}; use one of {', '.join(TEXT_FIELDS)} "
                "or any other name (kept in extra)"
            )

    settings = CustomSettings(
        mode=mode,
        targets=targets,
        fields=fields,
        columns=columns,
        pattern=pattern,
        delimiter=delimiter,
        quotechar=quotechar or None,
        min_fields=_count(options, OPT_MIN_FIELDS),
        skip_first=_count(options, OPT_SKIP_FIRST),
        skip_patterns=_regex_list(options, OPT_SKIP_REGEX),
        record_pattern=_regex(options, OPT_RECORD_REGEX),
        min_length=_count(options, OPT_MIN_LENGTH),
        attach_pattern=attach_pattern,
        attach_to=attach_to or DEFAULT_ATTACH_TO,
        date_format=_time_format(options, OPT_DATE_FORMAT),
        time_format=_time_format(options, OPT_TIME_FORMAT),
        datetime_format=_time_format(options, OPT_DATETIME_FORMAT),
        year=_choice(options, OPT_YEAR, YEAR_MODES),
        time_is=_choice(options, OPT_TIME_IS, TIME_IS_VALUES) or TIME_IS_START,
        timezone=_timezone(options),
        direction_map=_direction_map(options),
        platform_call_id_field=_mapped_name(options, OPT_PLATFORM_CALL_ID_FIELD, targets, mapping_key),
        more_follows_field=_mapped_name(options, OPT_MORE_FOLLOWS_FIELD, targets, mapping_key),
        more_follows_value=_more_follows_value(options),
        **_duration_format(options),
        **_internal_if(options, targets, mapping_key),
    )
    if settings.more_follows_value is not None and settings.more_follows_field is None:
        raise ValueError(f"{OPT_MORE_FOLLOWS_VALUE}: needs {OPT_MORE_FOLLOWS_FIELD} (the field it is compared with)")
    return settings


def _mode(options: Mapping[str, Any]) -> str:
    mode = options.get(OPT_MODE)
    if mode is None:  # one mapping given: its mode is obvious
        given = [name for name, key in MAPPING_KEY_BY_MODE.items() if options.get(key) is not None]
        if len(given) == 1:
            return given[0]
        raise ValueError(f"{OPT_MODE}: is required (one of {', '.join(MODES)})")
    if mode not in MODES:
        raise ValueError(f"{OPT_MODE}: unknown mode {mode!r} (one of {', '.join(MODES)})")
    return str(mode)


def _field_indexes(value: Any) -> dict[str, int]:
    if value is None:
        raise ValueError(f"{OPT_FIELDS}: is required in {MODE_DELIMITED} mode ({{name: index}}, 0-based)")
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{OPT_FIELDS}: must be a non-empty mapping of name → index (0-based)")
    indexes = {}
    for name, index in value.items():
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"{OPT_FIELDS}.{name}: must be a field index, 0 or more, not {index!r}")
        indexes[str(name)] = index
    return indexes


def _column_spans(value: Any) -> dict[str, tuple[int, int]]:
    if value is None:
        raise ValueError(f"{OPT_COLUMNS}: is required in {MODE_FIXED} mode ({{name: [first, last]}}, 1-based)")
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{OPT_COLUMNS}: must be a non-empty mapping of name → [first, last] (1-based, inclusive)")
    return {str(name): column_span(span, f"{OPT_COLUMNS}.{name}") for name, span in value.items()}


def _regex(options: Mapping[str, Any], key: str, *, required: bool = False) -> re.Pattern[str] | None:
    value = options.get(key)
    if value is None or value == "":
        if required:
            raise ValueError(f"{key}: is required in {MODE_REGEX} mode (a regular expression with named groups)")
        return None
    return _compile(value, key)


def _regex_list(options: Mapping[str, Any], key: str) -> tuple[re.Pattern[str], ...]:
    value = options.get(key)
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{key}: must be a regular expression or a list of them")
    return tuple(_compile(item, f"{key}[{index}]") for index, item in enumerate(items))


def _compile(value: Any, key: str) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise ValueError(f"{key}: must be a regular expression (text), not {value!r}")
    try:
        return re.compile(value)
    except re.error as error:
        raise ValueError(f"{key}: invalid regular expression {value!r}: {error}") from None


def _count(options: Mapping[str, Any], key: str) -> int:
    value = options.get(key, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key}: must be a whole number, 0 or more, not {value!r}")
    return value


def _time_format(options: Mapping[str, Any], key: str) -> str | None:
    value = options.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or "%" not in value:
        raise ValueError(f"{key}: must be a strptime format such as %m/%d/%y, not {value!r}")
    try:
        datetime.strptime(FORMAT_PROBE.strftime(value), value)
    except ValueError as error:
        raise ValueError(f"{key}: {value!r} is not a usable strptime format ({error})") from None
    return value


def _choice(options: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str | None:
    value = options.get(key)
    if value is None:
        return None
    if value not in allowed:
        raise ValueError(f"{key}: must be one of {', '.join(allowed)}, not {value!r}")
    return str(value)


def _timezone(options: Mapping[str, Any]) -> tzinfo | None:
    value = options.get(OPT_TIMEZONE)
    if value is None or value == "":
        return None
    try:
        return ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{OPT_TIMEZONE}: unknown time zone {value!r} (e.g. Europe/Budapest)") from None


def _duration_format(options: Mapping[str, Any]) -> dict[str, Any]:
    value = options.get(OPT_DURATION_FORMAT)
    if value is None or value == "":
        return {}
    if not isinstance(value, str):
        raise ValueError(f"{OPT_DURATION_FORMAT}: must be {DURATION_HMS}, {DURATION_SECONDS} or a regex, not {value!r}")
    if value.casefold() in DURATION_CLOCK_NAMES:
        return {}
    if value.casefold() == DURATION_SECONDS:
        return {"duration_in_seconds": True}
    pattern = _compile(value, OPT_DURATION_FORMAT)
    if not set(pattern.groupindex) & set(DURATION_GROUPS):
        raise ValueError(
            f"{OPT_DURATION_FORMAT}: {value!r} is neither {DURATION_HMS} nor {DURATION_SECONDS}, and as a regex it "
            "has no h, m or s group"
        )
    return {"duration_pattern": pattern}


def _direction_map(options: Mapping[str, Any]) -> dict[str, Direction]:
    value = options.get(OPT_DIRECTION_MAP)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{OPT_DIRECTION_MAP}: must be a mapping of printed value → in/out/internal")
    mapped: dict[str, Direction] = {}
    for raw, direction in value.items():
        try:
            resolved = Direction(str(direction).strip().lower())
        except ValueError:
            raise ValueError(
                f"{OPT_DIRECTION_MAP}.{raw}: must be in, out, internal or unknown, not {direction!r}"
            ) from None
        # YAML reads a bare `1` as a number and `Y`/`N` keys stay text; compare as printed and case-blind.
        mapped[str(raw)] = resolved
        mapped.setdefault(str(raw).strip().casefold(), resolved)
    return mapped


def _internal_if(options: Mapping[str, Any], targets: frozenset[str], mapping_key: str) -> dict[str, Any]:
    value = options.get(OPT_INTERNAL_IF)
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        return {"internal_number": _compile(value, OPT_INTERNAL_IF)}
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{OPT_INTERNAL_IF}: must be a regex (an internal number) or a mapping of field → regex")
    patterns = {}
    for name, pattern in value.items():
        key = f"{OPT_INTERNAL_IF}.{name}"
        if name not in targets:
            raise ValueError(f"{key}: {name!r} is not mapped in {mapping_key}")
        patterns[str(name)] = _compile(pattern, key)
    return {"internal_fields": patterns}


def _mapped_name(options: Mapping[str, Any], key: str, targets: frozenset[str], mapping_key: str) -> str | None:
    value = options.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in targets:
        raise ValueError(f"{key}: {value!r} is not a field mapped in {mapping_key}")
    return value


def _more_follows_value(options: Mapping[str, Any]) -> str | None:
    """The value meaning "more records follow"; None: any true-looking value (1, Y, yes, true)."""
    key = OPT_MORE_FOLLOWS_VALUE
    value = options.get(key)
    if value is None or value is True:  # YAML reads a bare `yes`/`true` as a boolean
        return None
    if value is False:
        raise ValueError(f"{key}: must be the value a record prints when more records of its call follow")
    if isinstance(value, (Mapping, list, tuple)):
        raise ValueError(f"{key}: must be a single value, not {value!r}")
    return str(value).strip()
