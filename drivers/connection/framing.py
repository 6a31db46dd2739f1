"""Framing for every line link: a byte stream → lines. `LineFramer` frames what PBXs print (lenient: any CR/LF
run or NUL ends a line, telnet commands filtered out); `StrictLineFramer` frames line protocols that define
their lines exactly (TRUNKREC/1: LF or CR LF, printable ASCII, bounded length)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

# ---- PBX lines (docs/smdr.md, format reference: "Lines")

MAX_LINE_BYTES = 4096  # an SMDR record is < 300 bytes; 4 KiB leaves room for any CDR and bounds memory
LINE_TOO_LONG = "line longer than {max_line_bytes} bytes"
PARTIAL_LINE_AT_DISCONNECT = "partial line at disconnect"
_LINE_BOUNDARY = re.compile(rb"[\r\n\x00]+")  # any run of CR/LF (and NUL: NUL-terminated records) ends a line
FORM_FEED = b"\x0c"

# Telnet (RFC 854/855): the commands a PBX's telnet-style SMDR port may send.
IAC = 0xFF
DONT = 0xFE
DO = 0xFD
WONT = 0xFC
WILL = 0xFB
SB = 0xFA
SE = 0xF0
# A real subnegotiation (terminal type, window size) is a few bytes; an "IAC SB" without an SE this far on was
# not a subnegotiation, so its bytes go back into the data instead of swallowing the stream.
MAX_SUBNEGOTIATION_BYTES = 512


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3× as much, paid per line of a burst
class FramedLine:
    raw: bytes  # the line without terminators, NUL, form feed or telnet bytes: what the journal stores
    received_at: datetime  # aware UTC: when the read that completed the line arrived
    peer: str  # "127.0.0.1:53422" for TCP, "/dev/ttyUSB0" (the configured url) for serial
    error: str | None = None  # framing error: LINE_TOO_LONG, PARTIAL_LINE_AT_DISCONNECT (or an over-long SB)


class TelnetFilter:
    """Removes telnet commands from a byte stream and refuses every option (DO → WONT, WILL → DONT).

    IAC IAC becomes one 0xFF data byte; IAC SB … IAC SE is removed; a sequence split across reads works.
    """

    _DATA, _COMMAND, _OPTION, _SUB, _SUB_IAC = range(5)

    def __init__(self, on_reply: Callable[[bytes], None] | None = None) -> None:
        self._on_reply = on_reply
        self._state = self._DATA
        self._verb = 0
        self._subnegotiation = bytearray()

    def filter(self, data: bytes) -> bytes:
        if self._state == self._DATA and IAC not in data:
            return data
        out = bytearray()
        replies = bytearray()
        index, end = 0, len(data)
        while index < end:
            state = self._state
            if state == self._DATA:
                found = data.find(IAC, index)
                if found < 0:
                    out += data[index:]
                    break
                out += data[index:found]
                index = found + 1
                self._state = self._COMMAND
                continue
            byte = data[index]
            index += 1
            if state == self._COMMAND:
                if byte == IAC:
                    out.append(IAC)  # IAC IAC: a data byte 0xFF
                    self._state = self._DATA
                elif byte in (DO, DONT, WILL, WONT):
                    self._verb = byte
                    self._state = self._OPTION
                elif byte == SB:
                    self._subnegotiation.clear()
                    self._state = self._SUB
                else:
                    self._state = self._DATA  # NOP, GA, AYT, …: two-byte commands without data
            elif state == self._OPTION:
                if self._verb == DO:
                    replies += bytes((IAC, WONT, byte))
                elif self._verb == WILL:
                    replies += bytes((IAC, DONT, byte))
                # DONT/WONT: that is already the state we keep; answering would start a loop.
                self._state = self._DATA
            elif state == self._SUB:
                if byte == IAC:
                    self._state = self._SUB_IAC
                else:
                    self._subnegotiation.append(byte)
                    if len(self._subnegotiation) > MAX_SUBNEGOTIATION_BYTES:
                        out += self._subnegotiation  # not a subnegotiation: give the bytes back as data
                        self._subnegotiation.clear()
                        self._state = self._DATA
            else:  # _SUB_IAC
                self._state = self._DATA if byte == SE else self._SUB
        if replies and self._on_reply is not None:
            self._on_reply(bytes(replies))
        return bytes(out)

    def reset(self) -> None:
        self._state = self._DATA
        self._subnegotiation.clear()


class LineFramer:
    """Bytes → lines (docs/smdr.md): CR/LF runs and NUL end lines, form feeds go, long lines are errors."""

    def __init__(
        self,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        telnet: bool = False,
        on_telnet_reply: Callable[[bytes], None] | None = None,
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self.max_line_bytes = max_line_bytes
        self._too_long = LINE_TOO_LONG.format(max_line_bytes=max_line_bytes)
        self._telnet = TelnetFilter(on_telnet_reply) if telnet else None
        self._line = bytearray()
        self._discarding = False  # the rest of an over-long line, up to the next boundary

    def feed(self, data: bytes, received_at: datetime, peer: str = "") -> list[FramedLine]:
        """The lines completed by `data` (a read: half a record or several), in order."""
        if self._telnet is not None:
            data = self._telnet.filter(data)
        if FORM_FEED in data:
            data = data.replace(FORM_FEED, b"")
        # parts[0] continues the pending line, parts[-1] starts the next one (b"" when the read ended on a
        # boundary); whole lines in between — nearly all of a burst — are framed without touching the buffer.
        *parts, rest = _LINE_BOUNDARY.split(data)
        lines: list[FramedLine] = []
        if parts:
            self._take(parts[0], received_at, peer, lines)
            self._end_line(received_at, peer, lines)
            limit = self.max_line_bytes
            for part in itertools.islice(parts, 1, None):
                if len(part) <= limit:
                    if part:
                        lines.append(FramedLine(part, received_at, peer))
                else:
                    lines.append(FramedLine(part[:limit], received_at, peer, error=self._too_long))
        self._take(rest, received_at, peer, lines)
        return lines

    def _end_line(self, received_at: datetime, peer: str, lines: list[FramedLine]) -> None:
        """A boundary: the buffered line is complete (or the over-long one being discarded ends)."""
        if self._discarding:
            self._discarding = False  # its error line went out when it grew too long
        elif self._line:
            lines.append(FramedLine(bytes(self._line), received_at, peer))
            self._line.clear()

    def end(self, received_at: datetime, peer: str = "") -> list[FramedLine]:
        """At disconnect: a non-empty partial line becomes an error line; the framer is then fresh again."""
        lines = []
        if self._line and not self._discarding:
            lines.append(FramedLine(bytes(self._line), received_at, peer, error=PARTIAL_LINE_AT_DISCONNECT))
        self._line.clear()
        self._discarding = False
        if self._telnet is not None:
            self._telnet.reset()
        return lines

    def _take(self, chunk: bytes, received_at: datetime, peer: str, lines: list[FramedLine]) -> None:
        if not chunk or self._discarding:
            return
        room = self.max_line_bytes - len(self._line)
        if len(chunk) <= room:
            self._line += chunk
            return
        self._line += chunk[:room]
        lines.append(FramedLine(bytes(self._line), received_at, peer, error=self._too_long))
        self._line.clear()
        self._discarding = True


# ---- strict lines (docs/trunkrec.md §2)

STRICT_LINE_TOO_LONG = "line too long"
STRICT_NOT_PRINTABLE = "non-printable bytes in line"
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")


class FramingError(ValueError):
    """A line the framer refused (too long, not printable); the stream carries on with the next line."""


class StrictLineFramer:
    """Bytes → text lines: LF or CR LF ends a line, empty lines are skipped; a line longer than
    `max_line_bytes` (terminator not counted) or with a byte outside printable ASCII is a framing error —
    counted, handed out in its place as `error(reason)`, and framing resumes at the next LF."""

    __slots__ = ("max_line_bytes", "framing_errors", "_error", "_buffer", "_discarding")

    def __init__(self, max_line_bytes: int, *, error: Callable[[str], Exception] = FramingError) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self.max_line_bytes = max_line_bytes
        self.framing_errors = 0
        self._error = error
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long line: drop bytes up to the next line end

    def feed(self, data: bytes) -> list[str | Exception]:
        out: list[str | Exception] = []
        self._buffer.extend(data)
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.max_line_bytes + 1:  # +1: a CR waiting for its LF
                    if not self._discarding:
                        self.framing_errors += 1
                        out.append(self._error(STRICT_LINE_TOO_LONG))
                        self._discarding = True
                    del self._buffer[:]
                return out
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:
                self._discarding = False
                continue
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self.max_line_bytes:
                self.framing_errors += 1
                out.append(self._error(STRICT_LINE_TOO_LONG))
                continue
            if not raw:
                continue
            if not _PRINTABLE.fullmatch(raw):
                self.framing_errors += 1
                out.append(self._error(STRICT_NOT_PRINTABLE))
                continue
            out.append(raw.decode("ascii"))

    def reset(self) -> None:
        self._buffer.clear()
        self._discarding = False
