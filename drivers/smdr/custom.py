"""Generic configurable SMDR/CDR format: delimited, fixed-width or regex lines mapped by link options (docs/smdr.md).

The parser; what the options mean and how they are checked is custom_options.py."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any

from drivers.smdr.base import (
    RecordParser,
    SmdrParseError,
    infer_year,
    local_now,
    parse_clock,
    parse_duration,
    to_utc,
    two_digit_year,
)
from drivers.smdr.custom_options import (
    KNOWN_TARGETS,
    MODE_DELIMITED,
    MODE_FIXED,
    T_ACCOUNT,
    T_ANSWERED,
    T_CALLED,
    T_CALLER,
    T_DATE,
    T_DATETIME,
    T_DIRECTION,
    T_DURATION,
    T_DURATION_S,
    T_END,
    T_EXTENSION,
    T_MORE_FOLLOWS,
    T_OTHER_NUMBER,
    T_PLATFORM_CALL_ID,
    T_RING,
    T_RING_S,
    T_START,
    T_TIME,
    T_TRUNK,
    TEXT_FIELDS,
    TIME_IS_ANSWER,
    TIME_IS_END,
    TIME_TARGETS,
    YEAR_INFER,
    CustomSettings,
    compile_options,
)
from gateway.events import CallRecord
from gateway.model import Direction

ATTACH_JOIN = " "

RAW_LINE_JOIN = "\n"  # a held record's raw text gains its continuation lines

# A record waits this long for a continuation line (e.g. a `NEXT` name line) before it is released.
HOLD_TIMEOUT_S = 2.0

# A record with a time but no date is dated on the receive day, or the day before when that would put it more
# than this far in the future (records arrive late, never early; allows for a PBX clock running a little fast).
TIME_ONLY_FUTURE_TOLERANCE = timedelta(hours=1)

# Kept in extra as printed, besides their normalised use.
RAW_IN_EXTRA = (T_CALLER, T_CALLED, T_DIRECTION)

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

# Page rules and other decoration lines: skipped silently.
_DECORATION = re.compile(r"^[\s\-=_*+|#~.]*$")


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


PARSER = CustomParser
