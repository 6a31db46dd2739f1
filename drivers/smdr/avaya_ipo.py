"""Avaya IP Office SMDR: one CSV record per call segment, mapped by field index (docs/smdr.md)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from drivers.smdr.base import RecordParser, SmdrParseError, parse_duration, to_utc
from gateway.events import CallRecord
from gateway.model import Direction

# Field indexes (0-based) of the fields the mapping uses.
F_CALL_START = 0
F_CONNECTED_TIME = 1
F_RING_TIME = 2
F_CALLER = 3
F_DIRECTION = 4
F_CALLED_NUMBER = 5
F_DIALLED_NUMBER = 6
F_ACCOUNT = 7
F_IS_INTERNAL = 8
F_CALL_ID = 9
F_CONTINUATION = 10
F_PARTY1_DEVICE, F_PARTY1_NAME = 11, 12
F_PARTY2_DEVICE, F_PARTY2_NAME = 13, 14
F_HOLD_TIME, F_PARK_TIME = 15, 16
# Releases print 17, 30 or 35 fields (plus trailing empties); everything up to Continuation is required.
MIN_FIELDS = F_CONTINUATION + 1

# Every vendor field by index → its key in CallRecord.extra (snake_case of the vendor name). Hold and park
# time are stored as whole seconds under `hold_time_s` / `park_time_s` instead.
FIELD_NAMES = (
    "call_start",
    "connected_time",
    "ring_time",
    "caller",
    "direction",
    "called_number",
    "dialled_number",
    "account",
    "is_internal",
    "call_id",
    "continuation",
    "party1_device",
    "party1_name",
    "party2_device",
    "party2_name",
    "hold_time",
    "park_time",
    "auth_valid",
    "auth_code",
    "user_charged",
    "call_charge",
    "currency",
    "amount_at_last_user_change",
    "call_units",
    "units_at_last_user_change",
    "cost_per_unit",
    "mark_up",
    "external_targeting_cause",
    "external_targeter_id",
    "external_targeted_number",
    # R11+ (names unverified)
    "caller_server_ip",
    "caller_unique_call_id",
    "called_server_ip",
    "called_unique_call_id",
    "record_time",
)
EXTRA_HOLD_S = "hold_time_s"
EXTRA_PARK_S = "park_time_s"
EXTRA_TRUNK_NAME = "trunk_name"

DIRECTION_IN = "I"
DIRECTION_OUT = "O"
IS_INTERNAL_YES = "1"
IS_INTERNAL_NO = "0"
CONTINUATION_MORE = "1"
DEVICE_EXTENSION = "E"  # E<ext>
DEVICE_TRUNK = "T"  # T9xxx, a trunk channel; V… (voicemail, conference, tones) is neither
DEVICE_EXTENSION_LETTERS = DEVICE_EXTENSION + DEVICE_EXTENSION.lower()
DEVICE_TRUNK_LETTERS = DEVICE_TRUNK + DEVICE_TRUNK.lower()
SIP_HOST_SEPARATOR = "@"  # SIP callers arrive as 12345@192.0.2.123
FIELD_STRIP = " \t\x00"

CALL_START_LENGTH = len("2026/11/23 10:05:07")
_CALL_START = re.compile(r"^(\d{4})[/-](\d{1,2})[/-](\d{1,2})[ T](\d{1,2}):(\d{2}):(\d{2})$")
# The first name of a field-name line ("Call Start,Connected Time,…" of old Delta Server files), compared
# lower-case with only letters kept.
HEADER_FIRST_NAMES = frozenset({"callstart", "callstarttime", "starttime", "start"})


class AvayaIpoParser(RecordParser):
    """IP Office SMDR. Every segment is emitted at once; segments of one call share `platform_call_id`
    (the Call ID) and all but the last have `more_follows` — the call tracker groups them."""

    format = "avaya-ipo"
    vendor = "IP Office"

    def parse(self, line: str, received_at: datetime) -> list[CallRecord]:
        fields = [field.strip(FIELD_STRIP) for field in line.split(",")]
        try:
            start_local = _call_start(fields[F_CALL_START])
        except ValueError:
            if _is_header(fields):
                return []
            if len(fields) < MIN_FIELDS:
                raise SmdrParseError(
                    f"not an IP Office record: {len(fields)} fields, at least {MIN_FIELDS} needed"
                ) from None
            raise SmdrParseError(f"call start {fields[F_CALL_START]!r} is not a YYYY/MM/DD HH:MM:SS date") from None
        if len(fields) < MIN_FIELDS:
            raise SmdrParseError(f"{len(fields)} fields, at least {MIN_FIELDS} needed")
        return [self._record(line, fields, start_local, received_at)]

    def variant(self) -> str:
        return "IP Office: CSV by field index, start times, segments grouped by Call ID"

    def _record(self, raw: str, fields: list[str], start_local: datetime, received_at: datetime) -> CallRecord:
        # Written for speed (this runs for every record of a busy site, on the event loop): plain locals, no
        # per-field helper calls; the 17-field release lacks nothing up to Park Time, shorter ones are padded.
        if len(fields) < F_PARK_TIME + 1:
            fields = fields + [""] * (F_PARK_TIME + 1 - len(fields))
        connected_s = _seconds(fields[F_CONNECTED_TIME], "connected time", parse_duration)
        ring_s = _seconds(fields[F_RING_TIME], "ring time", int)
        hold_s = _seconds(fields[F_HOLD_TIME], "hold time", int)
        park_s = _seconds(fields[F_PARK_TIME], "park time", int)
        segment_s = (connected_s or 0) + (ring_s or 0) + (hold_s or 0) + (park_s or 0)
        start = to_utc(start_local, self.tz, received_at)
        end = start + timedelta(seconds=segment_s)  # elapsed time, added in UTC: right across a DST change

        party1, party2 = fields[F_PARTY1_DEVICE], fields[F_PARTY2_DEVICE]
        extension_devices = [device for device in (party1, party2) if _is_extension(device)]
        trunk: str | None
        trunk_name: str | None
        if _is_trunk(party1):
            trunk, trunk_name = party1, fields[F_PARTY1_NAME]
        elif _is_trunk(party2):
            trunk, trunk_name = party2, fields[F_PARTY2_NAME]
        else:
            trunk = trunk_name = None
        direction = _direction(fields[F_IS_INTERNAL], fields[F_DIRECTION], has_trunk=trunk is not None)

        caller = _drop_host(fields[F_CALLER])
        called = _drop_host(fields[F_CALLED_NUMBER]) or _drop_host(fields[F_DIALLED_NUMBER])
        extension = extension_devices[0][1:] if extension_devices else None
        if extension is None and direction is Direction.OUT and not (trunk is party1 and _is_trunk(party2)):
            # An outbound segment with no E party: the caller is the extension (a SIP or remote user) — unless
            # both parties are trunks (the segment after an off-switch transfer joins two outside parties; the
            # call keeps its extension from its other segments).
            extension = caller or None
        other_number = _other_number(direction, extension, extension_devices, caller, called)

        # Every vendor field, empty ones too (a comprehension dropping them cost twice as much per record).
        extra: dict[str, Any] = dict(zip(FIELD_NAMES, fields))
        del extra["hold_time"], extra["park_time"]  # as whole seconds below
        if hold_s is not None:
            extra[EXTRA_HOLD_S] = hold_s
        if park_s is not None:
            extra[EXTRA_PARK_S] = park_s
        if trunk_name:
            extra[EXTRA_TRUNK_NAME] = trunk_name

        return CallRecord(
            format=self.format,
            source=self.link,
            raw=raw,
            received_at=received_at,
            start=start,
            end=end,
            duration_s=connected_s,
            ring_s=ring_s,
            extension=extension,
            other_number=other_number,
            direction=direction,
            trunk=trunk,
            account=fields[F_ACCOUNT] or None,
            platform_call_id=fields[F_CALL_ID] or None,
            more_follows=fields[F_CONTINUATION] == CONTINUATION_MORE,
            answered=None if connected_s is None else connected_s > 0,
            extra=extra,
            origin_seq=self.line_seq,  # one record per line: its index is 0
        )


PARSER = AvayaIpoParser


def _call_start(text: str) -> datetime:
    """`YYYY/MM/DD HH:MM:SS` → naive wall-clock datetime; ValueError otherwise."""
    if len(text) == CALL_START_LENGTH and text[4] in "/-" and text[13] == ":":
        # The usual zero-padded form: the C ISO parser is 4× faster than the pattern below.
        try:
            parsed = datetime.fromisoformat(text.replace("/", "-"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                return parsed
    match = _CALL_START.match(text)
    if not match:
        raise ValueError(f"bad call start {text!r}")
    year, month, day, hour, minute, second = map(int, match.groups())
    return datetime(year, month, day, hour, minute, second)


def _is_header(fields: list[str]) -> bool:
    """A field-name line: a known first name, or a full-length line whose first field has no digit at all."""
    first = fields[F_CALL_START]
    if "".join(char for char in first.lower() if char.isalpha()) in HEADER_FIRST_NAMES:
        return True
    return bool(first) and len(fields) >= MIN_FIELDS and not any(char.isdigit() for char in first)


def _seconds(text: str, what: str, parse: Callable[[str], int]) -> int | None:
    """A duration field → seconds; None when empty (not applicable); SmdrParseError when unreadable."""
    if not text:
        return None
    try:
        value = parse(text)
    except ValueError:
        raise SmdrParseError(f"{what} {text!r} is not a number of seconds") from None
    if value < 0:
        raise SmdrParseError(f"{what} {text!r} is negative")
    return value


def _is_extension(device: str) -> bool:
    return len(device) > 1 and device[0] in DEVICE_EXTENSION_LETTERS


def _is_trunk(device: str) -> bool:
    return len(device) > 1 and device[0] in DEVICE_TRUNK_LETTERS


def _drop_host(number: str) -> str:
    """`12345@192.0.2.123` → `12345`."""
    if SIP_HOST_SEPARATOR not in number:
        return number  # already stripped with its field
    return number.split(SIP_HOST_SEPARATOR, 1)[0].strip()


def _direction(is_internal: str, direction: str, *, has_trunk: bool) -> Direction:
    """Is Internal `1` → internal; `0` → the Direction field; anything else (a vendor example prints `I`) →
    internal when no party is a trunk, else the Direction field."""
    if is_internal == IS_INTERNAL_YES:
        return Direction.INTERNAL
    if is_internal != IS_INTERNAL_NO and not has_trunk:
        return Direction.INTERNAL
    code = direction.upper()
    if code == DIRECTION_IN:
        return Direction.IN
    if code == DIRECTION_OUT:
        return Direction.OUT
    return Direction.UNKNOWN


def _other_number(
    direction: Direction, extension: str | None, extension_devices: list[str], caller: str, called: str
) -> str | None:
    if direction is Direction.IN:
        return caller or None
    if direction is Direction.OUT:
        return called or None
    if direction is Direction.INTERNAL:
        for device in extension_devices:
            if device[1:] != extension:
                return device[1:]
    # Internal with no second extension (voicemail, a wake-up call), or unknown: the number on the other side.
    for number in (caller, called):
        if number and number != extension:
            return number
    return None
