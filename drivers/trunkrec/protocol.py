"""TRUNKREC/1 wire format (docs/trunkrec.md): line framing, messages, encoding — both sides use it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import quote, unquote

import structlog

from drivers.connection.framing import StrictLineFramer
from gateway.errors import GatewayError

log = structlog.get_logger(__name__)

PROTOCOL_VERSION = "TRUNKREC/1"
MAX_LINE_BYTES = 1024  # longer lines (terminator not counted) are framing errors (docs/trunkrec.md §2)
LINE_END = b"\r\n"

HELLO = "HELLO"
EVT = "EVT"
OK = "OK"
ERR = "ERR"

# Requests (gateway → device)
PING = "PING"
START = "START"
STOP = "STOP"
DISCARD = "DISCARD"
STATUS = "STATUS"
REQUEST_VERBS = frozenset({PING, START, STOP, DISCARD, STATUS})

# Events (device → gateway)
EVT_CALL = "CALL"
EVT_REC = "REC"
EVT_ALARM = "ALARM"
EVT_SYNC = "SYNC"
CALL_SETUP = "SETUP"
CALL_CONNECT = "CONNECT"
CALL_RELEASE = "RELEASE"
REC_STARTED = "STARTED"
REC_STOPPED = "STOPPED"
ALARM_STATES = frozenset({"LOS", "LOF", "AIS", "CLEAR"})
ALARM_CLEAR = "CLEAR"

# Error codes a device may answer
NOCALL = "NOCALL"
ALREADY = "ALREADY"
NOTREC = "NOTREC"
BUSY = "BUSY"
ALARM = "ALARM"
HWFAIL = "HWFAIL"
DISK = "DISK"
BADCH = "BADCH"
NOREC = "NOREC"
SYNTAX = "SYNTAX"
ERROR_CODES = frozenset({NOCALL, ALREADY, NOTREC, BUSY, ALARM, HWFAIL, DISK, BADCH, NOREC, SYNTAX})

# Field keys (`key=value`) and their fixed values
FIELD_CHANNELS = "channels"
FIELD_NAME = "name"
FIELD_ID = "id"  # the recorder's call id
FIELD_CALLING = "calling"
FIELD_CALLED = "called"
FIELD_DIR = "dir"
FIELD_CAUSE = "cause"  # Q.850 release cause
FIELD_REC = "rec"  # recording id
FIELD_DUR = "dur"  # whole seconds
FIELD_REF = "ref"  # the gateway's call id on START
FIELD_STATE = "state"
FIELD_TS = "ts"
DIR_IN = "in"
DIR_OUT = "out"
DIRECTIONS = frozenset({DIR_IN, DIR_OUT})
STATE_IDLE = "idle"
STATE_CALL = "call"
STATE_RECORDING = "recording"
CHANNEL_STATES = frozenset({STATE_IDLE, STATE_CALL, STATE_RECORDING})

TAG_PATTERN = re.compile(r"[A-Za-z0-9]{1,16}")
CHANNEL_PATTERN = re.compile(r"([1-9][0-9]*)/([1-9][0-9]*)")


class ProtocolError(GatewayError, ValueError):
    """A line that is not valid TRUNKREC/1 (the connection carries on with the next line)."""


def encode_value(value: object) -> str:
    """Percent-encode what a `key=value` field cannot carry (space, %, non-printables, and `=` stays literal)."""
    return quote(str(value), safe="!\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def decode_value(value: str) -> str:
    return unquote(value, errors="strict")


def format_channel(span: int, timeslot: int) -> str:
    return f"{span}/{timeslot}"


def parse_channel(text: str) -> tuple[int, int]:
    """`<span>/<timeslot>` → (span, timeslot); ProtocolError if it is not channel syntax."""
    match = CHANNEL_PATTERN.fullmatch(text)
    if match is None:
        raise ProtocolError(f"bad channel {text!r}")
    return int(match.group(1)), int(match.group(2))


def format_timestamp(at: datetime) -> str:
    """A `ts=` value: ISO 8601 UTC with milliseconds, e.g. `2026-11-23T10:00:01.123Z` (`at` must be aware)."""
    at = at.astimezone(timezone.utc)
    return f"{at:%Y-%m-%dT%H:%M:%S}.{at.microsecond // 1000:03d}Z"


def split_fields(tokens: list[str]) -> tuple[list[str], dict[str, str]]:
    """Positional tokens and `key=value` fields (values decoded)."""
    positional: list[str] = []
    fields: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if sep and key:
            try:
                fields[key] = decode_value(value)
            except UnicodeDecodeError:
                raise ProtocolError(f"undecodable value for {key}") from None
        else:
            positional.append(token)
    return positional, fields


def _join(parts: list[str], fields: dict[str, object]) -> bytes:
    tokens = parts + [f"{key}={encode_value(value)}" for key, value in fields.items() if value is not None]
    line = " ".join(tokens).encode("ascii")
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError("line too long")
    return line + LINE_END


# ---- messages


@dataclass(frozen=True, slots=True)
class Hello:
    version: str
    channels: int
    name: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Request:
    tag: str
    verb: str
    args: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    tag: str
    ok: bool
    fields: dict[str, str] = field(default_factory=dict)
    code: str | None = None  # ERR only
    text: str = ""  # ERR only


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # CALL | REC | ALARM | SYNC
    target: str | None = None  # channel for CALL/REC, span for ALARM
    action: str | None = None  # SETUP/CONNECT/RELEASE, STARTED/STOPPED, LOS/LOF/AIS/CLEAR
    fields: dict[str, str] = field(default_factory=dict)


DeviceMessage = Hello | Reply | Event


def encode_hello(channels: int, name: str | None = None) -> bytes:
    return _join([HELLO, PROTOCOL_VERSION], {"channels": channels, "name": name})


def encode_request(tag: str, verb: str, *args: str, **fields: object) -> bytes:
    if not TAG_PATTERN.fullmatch(tag):
        raise ProtocolError(f"invalid tag {tag!r}")
    return _join([tag, verb, *args], fields)


def encode_ok(tag: str, **fields: object) -> bytes:
    return _join([tag, OK], fields)


def encode_err(tag: str, code: str, text: str = "") -> bytes:
    # ERR text is free text to the end of the line: keep it printable and on one line.
    clean = "".join(ch if " " <= ch <= "~" else " " for ch in text).strip()
    return _join([tag, ERR, code] + ([clean] if clean else []), {})


def encode_event(kind: str, target: str | None = None, action: str | None = None, **fields: object) -> bytes:
    parts = [EVT, kind] + [part for part in (target, action) if part is not None]
    return _join(parts, fields)


def parse_device_line(line: str) -> DeviceMessage:
    """A line from the device: banner, reply to a tagged request, or event."""
    tokens = line.split(" ")
    if not tokens or not tokens[0]:
        raise ProtocolError("empty line")
    head = tokens[0]
    if head == HELLO:
        if len(tokens) < 2:
            raise ProtocolError("banner without version")
        _, fields = split_fields(tokens[2:])
        try:
            channels = int(fields.get("channels", "0"))
        except ValueError:
            raise ProtocolError("banner channels= is not a number") from None
        return Hello(tokens[1], channels, fields.get("name"), fields)
    if head == EVT:
        if len(tokens) < 2:
            raise ProtocolError("event without kind")
        kind = tokens[1]
        positional, fields = split_fields(tokens[2:])
        if kind == EVT_SYNC:
            return Event(kind, fields=fields)
        if kind in (EVT_CALL, EVT_REC, EVT_ALARM):
            if len(positional) < 2:
                raise ProtocolError(f"{kind} event needs a target and an action")
            return Event(kind, positional[0], positional[1], fields)
        raise ProtocolError(f"unknown event {kind}")
    if not TAG_PATTERN.fullmatch(head):
        raise ProtocolError("invalid tag")
    if len(tokens) < 2:
        raise ProtocolError("reply without status")
    status = tokens[1]
    if status == OK:
        _, fields = split_fields(tokens[2:])
        return Reply(head, True, fields)
    if status == ERR:
        if len(tokens) < 3:
            raise ProtocolError("ERR without code")
        return Reply(head, False, code=tokens[2], text=" ".join(tokens[3:]))
    raise ProtocolError(f"unknown reply status {status}")


def parse_request_line(line: str) -> Request:
    """A line from the gateway (device side)."""
    tokens = line.split(" ")
    if len(tokens) < 2 or not TAG_PATTERN.fullmatch(tokens[0]):
        raise ProtocolError("malformed request")
    positional, fields = split_fields(tokens[2:])
    return Request(tokens[0], tokens[1], tuple(positional), fields)


# ---- framing


class LineFramer(StrictLineFramer):
    """Bytes → lines (docs/trunkrec.md §2): CRLF or bare LF ends a line; lines over MAX_LINE_BYTES or with
    non-printable bytes are framing errors (a ProtocolError in the line's place, counted in `framing_errors`),
    then resync. The mechanics are the connection layer's (drivers/connection/framing.py), the limits TRUNKREC's."""

    __slots__ = ()

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        super().__init__(max_line_bytes, error=ProtocolError)


class LineProtocol(asyncio.Protocol):
    """An asyncio protocol that frames TRUNKREC/1 lines and hands each to `on_line`, guarded.

    A bad line is counted and skipped; an exception in the handler is logged and the link carries
    on — a parser bug must not take the link down.
    """

    def __init__(
        self,
        on_line: Callable[[str], None],
        on_connection_lost: Callable[[Exception | None], None] | None = None,
        *,
        name: str = "trunkrec",
    ) -> None:
        self._on_line = on_line
        self._on_connection_lost = on_connection_lost
        self.framer = LineFramer()
        self.transport: asyncio.Transport | None = None
        self._log = log.bind(link=name)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._log.debug("rx", data=data)
        for item in self.framer.feed(data):
            if not isinstance(item, str):  # a ProtocolError in the refused line's place
                self._log.warning("framing error", reason=str(item))
                continue
            try:
                self._on_line(item)
            except Exception:
                self._log.exception("line handler failed", line=item)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._on_connection_lost is not None:
            self._on_connection_lost(exc)

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("not connected")
        self._log.debug("tx", data=data)
        self.transport.write(data)
