"""The options of a `format: custom` link (docs/smdr.md): their keys and values, the names a mapping can fill,
and compile_options, which checks them and compiles them into CustomSettings for the parser (custom.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drivers.smdr.base import (
    column_span,
)
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

RESERVED_TARGETS = frozenset({"raw", "format", "source", "received_at", "extra"})

# What a continuation line cannot be appended to.
NOT_ATTACHABLE = (KNOWN_TARGETS - set(TEXT_FIELDS)) | RESERVED_TARGETS

FORMAT_PROBE = datetime(2000, 12, 31, 13, 4, 5)  # every directive prints something strptime reads back


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
