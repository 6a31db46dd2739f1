"""3CX CDR over a socket: one comma-separated line per call, fields in an admin-chosen order (docs/smdr.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from drivers.smdr.base import RecordParser, SmdrParseError, parse_duration, to_utc
from gateway.events import CallRecord
from gateway.model import Direction

# Every field 3CX can output, in the order of its CDR settings page; the names are the option values.
FIELD_NAMES = (
    "historyid",
    "callid",
    "duration",
    "time-start",
    "time-answered",
    "time-end",
    "reason-terminated",
    "from-no",
    "to-no",
    "from-dn",
    "to-dn",
    "dial-no",
    "reason-changed",
    "final-number",
    "final-dn",
    "bill-code",
    "bill-rate",
    "bill-cost",
    "bill-name",
    "chain",
    "from-type",
    "to-type",
    "final-type",
    "from-dispname",
    "to-dispname",
    "final-dispname",
    "missed-queue-calls",
)
# The common order, used when a link configures none: historyid … chain.
DEFAULT_FIELDS = FIELD_NAMES[:20]

# Link options (under `options:`).
OPTION_FIELDS = "fields"  # list of field names, in output order
OPTION_DIRECTION_FIELDS = "direction_fields"  # bool: direction from from-type/to-type when those are in `fields`
OPTION_EXTERNAL_TYPES = "external_types"  # list: *-type values meaning an external party (trunk/line)
DEFAULT_DIRECTION_FIELDS = True
# Compared after lower-casing and dropping everything but letters and digits (`ExternalLine`, `external_line`).
# "Line" is observed (V20); the rest are spellings of the same idea in other versions — configurable.
DEFAULT_EXTERNAL_TYPES = ("line", "externalline", "external", "trunk", "siptrunk", "gateway", "provider", "bridge")
EXTENSION_TYPE = "extension"

# *-type values of the PBX's own endpoints: a call ending there never reached a person.
SYSTEM_TYPES = frozenset({"endcall", "ivr", "queue", "ringgroup", "voicemail", "vmail", "fax", "parking", "conference"})
_OUTSIDE_NUMBER = re.compile(r"^\+?[\d*#]+$")
EXTENSION_PREFIX = "ext."  # `Ext.101` in the *-no fields, compared case-insensitively
CHAIN_SEPARATOR = ";"
FIELD_STRIP = " \t\x00"
QUOTE = '"'

_HISTORYID_PREFIX = re.compile(r"^call\s+", re.IGNORECASE)  # observed: `Call 265500`
_CHAIN_PREFIX = re.compile(r"^chain:\s*", re.IGNORECASE)  # observed: `Chain: 070…;Ext.80002;`
_TIME = re.compile(r"^(\d{4})[/-](\d{1,2})[/-](\d{1,2})[ T](\d{1,2}):(\d{2}):(\d{2})(?:\.\d+)?$")

# The three parties of a record: (number field, DN field, type field).
FROM = ("from-no", "from-dn", "from-type")
TO = ("to-no", "to-dn", "to-type")
FINAL = ("final-number", "final-dn", "final-type")


@dataclass(frozen=True)
class ThreeCxSettings:
    """A 3CX link's options, checked and compiled."""

    fields: tuple[str, ...]  # the configured field names, normalised, in output order
    types_give_direction: bool  # from-type and to-type/final-type are configured and to be used
    external_types: frozenset[str]  # type_key() of the *-type values meaning an external party


class ThreeCxParser(RecordParser):
    """3CX CDR: one record per call (routing history in `chain`), no continuation lines."""

    format = "3cx"

    vendor = "3CX"
    settings: ThreeCxSettings

    @classmethod
    def compile_options(cls, options: Mapping[str, Any]) -> ThreeCxSettings:
        if OPTION_FIELDS in options:
            names = options[OPTION_FIELDS]
            if isinstance(names, str) or not isinstance(names, Sequence) or not names:
                raise ValueError(f"{OPTION_FIELDS}: must be a non-empty list of 3CX field names")
            seen: set[str] = set()
            for name in names:
                if not isinstance(name, str) or field_key(name) not in FIELD_NAMES:
                    raise ValueError(f"{OPTION_FIELDS}: unknown field {name!r} (known: {', '.join(FIELD_NAMES)})")
                if field_key(name) in seen:
                    raise ValueError(f"{OPTION_FIELDS}: {name!r} is listed twice")
                seen.add(field_key(name))
        if OPTION_DIRECTION_FIELDS in options and not isinstance(options[OPTION_DIRECTION_FIELDS], bool):
            raise ValueError(f"{OPTION_DIRECTION_FIELDS}: must be true or false")
        if OPTION_EXTERNAL_TYPES in options:
            types = options[OPTION_EXTERNAL_TYPES]
            if (
                isinstance(types, str)
                or not isinstance(types, Sequence)
                or not all(isinstance(name, str) and type_key(name) for name in types)
            ):
                raise ValueError(f"{OPTION_EXTERNAL_TYPES}: must be a list of 3CX party type names (e.g. Line)")
        fields = tuple(field_key(name) for name in options.get(OPTION_FIELDS) or DEFAULT_FIELDS)
        use_types = options.get(OPTION_DIRECTION_FIELDS, DEFAULT_DIRECTION_FIELDS)
        return ThreeCxSettings(
            fields=fields,
            types_give_direction=bool(use_types)
            and "from-type" in fields
            and ("to-type" in fields or "final-type" in fields),
            external_types=frozenset(
                type_key(name) for name in options.get(OPTION_EXTERNAL_TYPES, DEFAULT_EXTERNAL_TYPES)
            ),
        )

    @property
    def fields(self) -> tuple[str, ...]:
        return self.settings.fields

    def variant(self) -> str:
        settings = self.settings
        layout = "default 20 fields" if settings.fields == DEFAULT_FIELDS else f"{len(settings.fields)} fields"
        direction = "direction from the type fields" if settings.types_give_direction else "direction from the parties"
        return f"3CX: {layout}, {direction}"

    def parse(self, line: str, received_at: datetime) -> list[CallRecord]:
        if not line.strip(FIELD_STRIP):
            return []
        values = self._split(line)
        if values is None:
            return []
        return [self._record(line, dict(zip(self.fields, values)), received_at)]

    def _split(self, line: str) -> list[str] | None:
        """The line's values, one per configured field; None for a header line (the field names)."""
        items = line.split(",")
        values = [_unquote(item.strip(FIELD_STRIP)) for item in items]
        expected = len(self.fields)
        while len(values) > expected and not values[-1]:  # trailing commas
            values.pop()
        if [field_key(value) for value in values] == list(self.fields):
            return None
        if len(values) > expected and self.fields[-1] == "chain":  # `,` inside the chain: it gets the surplus
            values = values[: expected - 1] + [",".join(items[expected - 1 : len(values)]).strip(FIELD_STRIP)]
        if len(values) != expected:
            configured = ", ".join(self.fields)
            raise SmdrParseError(f"{len(values)} items, but {expected} fields are configured ({configured})")
        return values

    def _record(self, raw: str, values: dict[str, str], received_at: datetime) -> CallRecord:
        values["historyid"] = _HISTORYID_PREFIX.sub("", values.get("historyid", ""))
        values["chain"] = _CHAIN_PREFIX.sub("", values.get("chain", ""))

        start = self._time(values, "time-start", received_at)
        answered_at = self._time(values, "time-answered", received_at)
        end = self._time(values, "time-end", received_at)
        if "time-start" in self.fields and start is None:
            raise SmdrParseError("time-start is empty")
        answered = answered_at is not None if "time-answered" in self.fields else None

        duration_s = _duration(values.get("duration", ""))
        if duration_s is None:  # not configured, or left empty (seen on failed calls)
            if answered_at is not None and end is not None:
                duration_s = max(0, int((end - answered_at).total_seconds()))
            elif answered is False:
                duration_s = 0
        if end is None and answered_at is not None and duration_s is not None:
            end = answered_at + timedelta(seconds=duration_s)
        ring_until = answered_at if answered else end if answered is False else None
        ring_s = max(0, int((ring_until - start).total_seconds())) if start and ring_until else None

        parties = {party: _Party(values, party) for party in (FROM, TO, FINAL)}
        direction = self._direction(parties)
        extension = _extension(parties, direction)
        other_number = _other_number(parties, direction, extension, values.get("dial-no", ""))
        trunk = None
        if direction is Direction.IN:
            trunk = parties[FROM].dn or None
        elif direction is Direction.OUT:
            trunk = parties[TO].dn or None

        extra: dict[str, Any] = {name.replace("-", "_"): value for name, value in values.items() if value}
        if values["chain"]:
            extra["chain_parties"] = [part.strip() for part in values["chain"].split(CHAIN_SEPARATOR) if part.strip()]

        return self.record(
            raw,
            received_at,
            start=start,
            end=end,
            duration_s=duration_s,
            ring_s=ring_s,
            extension=extension,
            other_number=other_number,
            direction=direction,
            trunk=trunk,
            account=values.get("bill-code") or None,
            platform_call_id=values["historyid"] or None,
            answered=answered,
            extra=extra,
        )

    def _time(self, values: dict[str, str], name: str, received_at: datetime) -> datetime | None:
        text = values.get(name, "")
        if not text:
            return None
        match = _TIME.match(text)
        if not match:
            raise SmdrParseError(f"{name} {text!r} is not a YYYY/MM/DD HH:MM:SS time")
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        try:
            local = datetime(year, month, day, hour, minute, second)
        except ValueError:
            raise SmdrParseError(f"{name} {text!r} is not a valid date and time") from None
        return to_utc(local, self.tz, received_at)

    def _direction(self, parties: dict[tuple[str, str, str], _Party]) -> Direction:
        source, destination, final = parties[FROM], parties[TO], parties[FINAL]
        destination_type = destination.type or final.type
        if self.settings.types_give_direction and source.type and destination_type:
            if type_key(source.type) in self.settings.external_types:
                return Direction.IN
            if type_key(destination_type) in self.settings.external_types:
                return Direction.OUT
            return Direction.INTERNAL
        destination_is_extension = destination.is_extension if destination.number else final.is_extension
        if source.is_extension:
            return Direction.INTERNAL if destination_is_extension else Direction.OUT
        if destination_is_extension or final.is_extension:
            return Direction.IN
        # No extension on either side: an outside number that reached one of the PBX's own named endpoints
        # (`EndCall`, an IVR, a queue — 3CX names those with words, outside parties with digits) called in.
        if _OUTSIDE_NUMBER.match(source.number) and (destination.is_system or final.is_system):
            return Direction.IN
        return Direction.UNKNOWN


PARSER = ThreeCxParser


class _Party:
    """One side of a 3CX record: its number (`Ext.101`, `+3612345678`), DN and type, as configured."""

    __slots__ = ("number", "dn", "type")

    def __init__(self, values: dict[str, str], names: tuple[str, str, str]) -> None:
        self.number, self.dn, self.type = (values.get(name, "") for name in names)

    @property
    def is_extension(self) -> bool:
        return self.number.lower().startswith(EXTENSION_PREFIX) or type_key(self.type) == EXTENSION_TYPE

    @property
    def is_system(self) -> bool:
        """One of the PBX's own named endpoints (`EndCall`, `Ivr…`, `Queue…`), not a person and not outside."""
        if type_key(self.type) in SYSTEM_TYPES:
            return True
        name = self.number or self.dn
        return bool(name) and name[0].isalpha() and not name.lower().startswith(EXTENSION_PREFIX)

    @property
    def extension(self) -> str | None:
        """The extension's DN: the *-dn field, else the number without `Ext.`."""
        if self.dn:
            return self.dn
        if self.number.lower().startswith(EXTENSION_PREFIX):
            return self.number[len(EXTENSION_PREFIX) :].strip() or None
        return self.number or None


def field_key(name: str) -> str:
    """A field name as configured or printed in a header (`time_start`, `Time-Start`) → `time-start`."""
    return name.strip(FIELD_STRIP).lower().replace("_", "-").replace(" ", "-")


def type_key(name: str) -> str:
    """A *-type value, for case- and spelling-insensitive comparison (`External_Line` → `externalline`)."""
    return "".join(char for char in name.lower() if char.isalnum())


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == QUOTE:
        return value[1:-1].strip(FIELD_STRIP)
    return value


def _duration(text: str) -> int | None:
    if not text:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        raise SmdrParseError(f"duration {text!r} is not HH:MM:SS") from None


def _extension(parties: dict[tuple[str, str, str], _Party], direction: Direction) -> str | None:
    """final-dn if the final party is an extension, else the DN of the extension party (the called one inbound)."""
    order = (FINAL, TO, FROM) if direction is Direction.IN else (FINAL, FROM, TO)
    for key in order:
        if parties[key].is_extension:
            return parties[key].extension
    return None


def _other_number(
    parties: dict[tuple[str, str, str], _Party], direction: Direction, extension: str | None, dialled: str
) -> str | None:
    source, destination, final = parties[FROM], parties[TO], parties[FINAL]
    if direction is Direction.IN:
        return source.number or None
    if direction is Direction.OUT:
        candidates = (
            (dialled, False),
            (destination.number, destination.is_extension),
            (final.number, final.is_extension),
        )
        return next((number for number, is_extension in candidates if number and not is_extension), None)
    if direction is Direction.INTERNAL:
        for party in (source, destination, final):
            if party.is_extension and party.extension != extension:
                return party.extension
        return None
    return source.number or destination.number or None
