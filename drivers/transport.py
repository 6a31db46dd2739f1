"""Line transports for PBX links (docs/smdr.md, "Transports"): listen://, tcp:// and serial ports (pySerial
URLs) turned into framed lines, with reconnection forever, backpressure, idle detection and keepalives."""

from __future__ import annotations

import abc
import asyncio
import itertools
import re
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import structlog

from drivers.backoff import BACKOFF_INITIAL_S, BACKOFF_MAX_S, Backoff
from gateway.config import LinkConfig, SerialSettings
from gateway.errors import LinkError
from gateway.model import utc_now
from gateway.events import LinkState

log = structlog.get_logger(__name__)

# ---- framing (docs/smdr.md, format reference: "Lines")

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

# ---- links

URL_LISTEN_SCHEME = "listen"
URL_TCP_SCHEME = "tcp"
URL_RFC2217_SCHEME = "rfc2217"
LOGIN_LINE_END = b"\r\n"
OPTION_TELNET = "telnet"
OPTION_IDLE_TIMEOUT = "idle_timeout"
OPTION_KEEPALIVE = "keepalive"

# A connection counts as good (backoff reset, outage over) when it carried data or stayed up this long; a PBX
# that accepts and hangs up at once (port busy with another collector) is retried with growing delays instead.
STABLE_CONNECTION_S = 10.0
# Lines handed to the link per delivery: large enough to amortise the journal commit (256 → 512 measured
# +5 % records/s), small enough that another connection of the same link waits ~20 ms at most.
MAX_LINES_PER_DELIVERY = 512
# A TCP connect or serial open that takes longer than this has failed (then: backoff, retry). A PBX on the LAN
# answers in milliseconds; 10 s covers a serial device server that is slow to negotiate RFC 2217.
CONNECT_TIMEOUT_S = 10.0
# Each login step waits this long for its prompt; PBX telnet ports prompt at once, a busy one within seconds.
LOGIN_STEP_TIMEOUT_S = 10.0
# Prompt text kept while waiting for a login step's `expect`: prompts are short, and memory stays bounded.
LOGIN_BUFFER_MAX_BYTES = 4096
# close() waits this long for lines already framed to be delivered; past it they are logged as lost.
CLOSE_DRAIN_TIMEOUT_S = 10.0
# Without idle_timeout a keepalive string is sent after this much silence (NEC sends "\n" after 300 s).
KEEPALIVE_INTERVAL_S = 300.0
# TCP keepalive on every TCP socket, so that a half-open link (PBX rebooted, cable pulled) is noticed in
# about 60 + 3 × 10 s even though hours of silence are normal on an SMDR link.
TCP_KEEPIDLE_S = 60
TCP_KEEPINTVL_S = 10
TCP_KEEPCNT = 3
# rfc2217:// ports have no file descriptor to watch: they are read in an executor thread whose read returns at
# least this often, so that close() and pause_reading() are noticed.
RFC2217_READ_POLL_S = 0.2
RFC2217_READ_MAX_BYTES = 4096


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3× as much, paid per line of a burst
class FramedLine:
    raw: bytes  # the line without terminators, NUL, form feed or telnet bytes: what the journal stores
    received_at: datetime  # aware UTC: when the read that completed the line arrived
    peer: str  # "127.0.0.1:53422" for TCP, "/dev/ttyUSB0" (the configured url) for serial
    error: str | None = None  # framing error: LINE_TOO_LONG, PARTIAL_LINE_AT_DISCONNECT (or an over-long SB)


Deliver = Callable[[list[FramedLine]], Awaitable[None]]


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


# ---- connections


def _format_peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address) if address else ""


def _encode_text(text: str) -> bytes:
    """Login and keepalive text as the PBX expects it: latin-1 (what PBXs decode), UTF-8 for anything latin-1 lacks."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def enable_tcp_keepalive(sock: Any) -> None:
    """SO_KEEPALIVE with 60 s idle, 10 s interval, 3 probes where the platform has those options."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        return
    for name, value in (("TCP_KEEPIDLE", TCP_KEEPIDLE_S), ("TCP_KEEPINTVL", TCP_KEEPINTVL_S), ("TCP_KEEPCNT", TCP_KEEPCNT)):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass


class _Connection(asyncio.Protocol):
    """One open byte stream (accepted socket, outgoing socket or serial port): frames it and delivers its lines,
    pausing reading while a delivery is awaited. During a login, received text is kept as prompts instead."""

    def __init__(self, owner: LineTransport, *, peer: str = "", telnet: bool = False, login: bool = False) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self.peer = peer
        self._log = owner._log.bind(peer=peer) if peer else owner._log
        self._telnet = TelnetFilter(self._write_raw) if telnet else None
        self._framer = LineFramer()
        self._login_text: bytearray | None = bytearray() if login else None
        self._login_changed = asyncio.Event()
        self._pending: deque[list[FramedLine]] = deque()
        self._delivery: asyncio.Task[None] | None = None
        self._reading_paused = False
        self.transport: asyncio.BaseTransport | None = None
        self.established = False  # counted in `connections` (after a login)
        self.established_at = 0.0
        self.data_bytes = 0  # bytes received since established
        self.last_activity = self._loop.time()  # last data received or delivery finished (loop time)
        self.keepalive_sent_at = 0.0
        self.lost = False
        self.lost_reason: str | None = None
        self.made: asyncio.Future[None] = self._loop.create_future()  # connection_made has run
        self.done: asyncio.Future[None] = self._loop.create_future()  # lost and every line delivered

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if not self.peer:
            self.peer = _format_peer(transport.get_extra_info("peername"))
            self._log = self._log.bind(peer=self.peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6):
            enable_tcp_keepalive(sock)
        self._owner._connection_made(self)
        if not self.made.done():
            self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self._loop.time()
        self._log.debug("bytes received", data=data)
        try:
            if self._telnet is not None:
                data = self._telnet.filter(data)
            if self._login_text is not None:
                self._login_text += data
                if len(self._login_text) > LOGIN_BUFFER_MAX_BYTES:
                    del self._login_text[: len(self._login_text) - LOGIN_BUFFER_MAX_BYTES]
                self._login_changed.set()
                return
            self.data_bytes += len(data)
            lines = self._framer.feed(data, utc_now(), self.peer)
        except Exception:  # a framing bug must not take the link down
            self._log.exception("framing failed; bytes lost", size=len(data))
            self._log.debug("bytes lost", data=data)
            return
        if lines:
            self._enqueue(lines)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.lost_reason is None:
            self.lost_reason = str(exc) if exc else "closed"
        self._login_changed.set()
        if self._login_text:
            self._log.debug("prompt text at disconnect", data=bytes(self._login_text))
        if self._login_text is None:
            lines = self._framer.end(utc_now(), self.peer)
            if lines:
                self._enqueue(lines)
        self._owner._connection_lost(self)
        self._maybe_done()

    # -- used by the transports

    def write(self, data: bytes) -> None:
        """Sends data, doubling 0xFF on a telnet link."""
        if self._telnet is not None:
            data = data.replace(bytes((IAC,)), bytes((IAC, IAC)))
        self._write_raw(data)

    def close(self, reason: str | None = None) -> None:
        if reason is not None and self.lost_reason is None:
            self.lost_reason = reason
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            abort = getattr(self.transport, "abort", None)
            (abort or self.transport.close)()

    @property
    def delivering(self) -> bool:
        return self._delivery is not None

    @property
    def undelivered_lines(self) -> int:
        return sum(len(batch) for batch in self._pending)

    async def expect(self, text: str) -> None:
        """Waits until the received prompt text contains `text`; consumes the prompt up to its end."""
        assert self._login_text is not None
        needle = _encode_text(text)
        while True:
            found = self._login_text.find(needle)
            if found >= 0:
                del self._login_text[: found + len(needle)]
                return
            if self.lost:
                raise LinkError(f"connection closed while waiting for {text!r}")
            self._login_changed.clear()
            await self._login_changed.wait()

    def start_lines(self) -> None:
        """Login over: what arrives from now on is data. Prompt text still held was sent before the last answer."""
        if self._login_text:
            self._log.debug("prompt text after the last login step", data=bytes(self._login_text))
        self._login_text = None

    def cancel_delivery(self) -> None:
        if self._delivery is not None:
            self._delivery.cancel()

    # -- delivery with backpressure

    def _write_raw(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._log.debug("bytes sent", data=data)
            self.transport.write(data)  # type: ignore[attr-defined]

    def _enqueue(self, lines: list[FramedLine]) -> None:
        # One read can hold thousands of lines (a PBX flushing its buffer); delivered in slices, other
        # connections of the link get their turn in between instead of waiting for the whole burst.
        for first in range(0, len(lines), MAX_LINES_PER_DELIVERY):
            self._pending.append(lines[first : first + MAX_LINES_PER_DELIVERY])
        if not self.lost and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]
        if self._delivery is None:
            self._delivery = self._loop.create_task(self._deliver_pending(), name=f"deliver {self.peer}")

    async def _deliver_pending(self) -> None:
        try:
            while self._pending:
                lines = self._pending[0]
                try:
                    # No timeout: waiting for the consumer is the backpressure (reading stays paused meanwhile).
                    await self._owner._deliver(lines)
                except Exception:
                    self._log.exception("delivering lines failed; lines lost", lines=len(lines))
                    for line in lines:
                        self._log.debug("lost line", raw=line.raw, error=line.error)
                self._pending.popleft()
        except asyncio.CancelledError:
            if self._pending:
                self._log.error("lines not delivered before close", lines=self.undelivered_lines)
                for batch in self._pending:
                    for line in batch:
                        self._log.debug("lost line", raw=line.raw, error=line.error)
                self._pending.clear()
            raise
        finally:
            self._delivery = None
            self.last_activity = self._loop.time()
            if self._reading_paused and not self.lost and self.transport is not None:
                self._reading_paused = False
                if not self.transport.is_closing():
                    self.transport.resume_reading()  # type: ignore[attr-defined]
            self._maybe_done()

    def _maybe_done(self) -> None:
        if self.lost and self._delivery is None and not self.done.done():
            self.done.set_result(None)


class _ExecutorSerialTransport(asyncio.Transport):
    """A serial port without a file descriptor to watch (pySerial's rfc2217:// handler): read and written in
    executor threads, never on the loop. Reading pauses while the protocol is delivering."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, serial_instance: Any) -> None:
        super().__init__(extra={"serial": serial_instance})
        self._loop = loop
        self._protocol = protocol
        self._serial = serial_instance
        self._closing = False
        self._reading_allowed = asyncio.Event()
        self._reading_allowed.set()
        self._writes: deque[bytes] = deque()
        self._writer: asyncio.Task[None] | None = None
        loop.call_soon(protocol.connection_made, self)
        self._reader = loop.create_task(self._read_loop(), name=f"read {serial_instance.portstr}")

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self._reading_allowed.set()

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self._reading_allowed.clear()

    def resume_reading(self) -> None:
        self._reading_allowed.set()

    def is_reading(self) -> bool:
        return self._reading_allowed.is_set()

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self._writes.append(bytes(data))
        if self._writer is None:
            self._writer = self._loop.create_task(self._write_pending())

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def _read_some(self) -> bytes:  # runs in an executor thread
        data = self._serial.read(1)  # returns after RFC2217_READ_POLL_S at the latest
        if data:
            waiting = self._serial.in_waiting
            if waiting:
                data += self._serial.read(min(waiting, RFC2217_READ_MAX_BYTES))
        return data

    async def _read_loop(self) -> None:
        error: Exception | None = None
        try:
            while not self._closing:
                await self._reading_allowed.wait()
                if self._closing:
                    break
                data = await self._loop.run_in_executor(None, self._read_some)
                if data:  # even when closing: bytes already read are framed, not dropped
                    self._protocol.data_received(data)
        except (OSError, ValueError) as exc:  # SerialException is an OSError; a closed port raises ValueError
            error = exc
        finally:
            self._closing = True
            if self._writer is not None:
                self._writer.cancel()
            try:
                await self._loop.run_in_executor(None, self._serial.close)
            except Exception:  # closing a broken port: nothing more to do
                pass
            self._protocol.connection_lost(error)

    async def _write_pending(self) -> None:
        try:
            while self._writes and not self._closing:
                await self._loop.run_in_executor(None, self._serial.write, self._writes.popleft())
        except (OSError, ValueError):
            self.close()
        finally:
            self._writer = None


async def _open_without_orphans(opening: Coroutine[Any, Any, tuple[Any, Any]], orphans: set[asyncio.Task[Any]]) -> tuple[Any, Any]:
    """Awaits an open that runs in an executor; if the wait is cancelled (timeout, close), the open still
    finishes in its thread, and what it opened is closed then instead of leaking."""
    task = asyncio.ensure_future(opening)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        orphans.add(task)

        def close_late(finished: asyncio.Task[Any]) -> None:
            orphans.discard(finished)
            if not finished.cancelled() and finished.exception() is None:
                finished.result()[0].close()

        task.add_done_callback(close_late)
        raise


# ---- transports


class LineTransport(abc.ABC):
    """One link's byte source: connects (or listens), reconnects forever, frames lines, delivers them.

    `deliver` is awaited with the lines framed from one read, in order; a connection's next delivery waits
    until its last one returned, and meanwhile reading from that connection is paused, so a slow consumer
    cannot make memory grow. Deliveries of different connections (a listen:// link) may overlap: a consumer
    that keeps state across connections orders them itself. `on_state` is called with every change of `state`.
    """

    def __init__(
        self,
        config: LinkConfig,
        deliver: Deliver,
        *,
        on_state: Callable[[LinkState], None] | None = None,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.config = config
        self.name = config.name
        self._deliver = deliver
        self._on_state = on_state
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._log = log.bind(link=config.name)
        options = config.options or {}
        idle_timeout = options.get(OPTION_IDLE_TIMEOUT)
        self._idle_timeout_s: float | None = float(idle_timeout) if idle_timeout else None
        keepalive = options.get(OPTION_KEEPALIVE)
        self._keepalive: bytes | None = _encode_text(str(keepalive)) if keepalive else None
        # With idle_timeout the keepalive goes out halfway, so that an answer can arrive before the reconnect.
        self._keepalive_interval_s = self._idle_timeout_s / 2 if self._idle_timeout_s else KEEPALIVE_INTERVAL_S
        self._telnet = bool(options.get(OPTION_TELNET)) or bool(config.login)

        self.state = LinkState.DOWN
        self._live: set[_Connection] = set()  # connections whose transport exists, until their lines are delivered
        self._manager: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self._orphans: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._closed = asyncio.Event()

    @property
    def connections(self) -> int:
        """Open connections (a listen:// link may have several; a tcp:// one counts after its login)."""
        return sum(1 for connection in self._live if connection.established and not connection.lost)

    async def open(self) -> None:
        """Starts the background task; returns at once."""
        if self._closing:
            raise LinkError(f"link {self.name} is closed")
        if self._manager is None:
            self._manager = asyncio.get_running_loop().create_task(self._run(), name=f"link {self.name}")

    async def close(self) -> None:
        """Stops everything and closes sockets/ports; lines already framed (a partial line as an error line)
        are delivered before it returns. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            tasks = [task for task in (self._manager, *self._watchers) if task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._manager = None
            await self._stop_listening()
            for connection in list(self._live):
                connection.close("link closed")
            connections = [connection.done for connection in self._live]
            if connections:
                _, late = await asyncio.wait(connections, timeout=CLOSE_DRAIN_TIMEOUT_S)
                for connection in [c for c in self._live if c.done in late]:
                    self._log.error("connection did not finish delivering at close", peer=connection.peer)
                    connection.cancel_delivery()
                    connection.abort()
                if late:
                    await asyncio.wait(late, timeout=CLOSE_DRAIN_TIMEOUT_S)
            self._live.clear()
            self._refresh_state()
        finally:
            self._closed.set()

    # -- for subclasses

    @abc.abstractmethod
    async def _run(self) -> None:
        """The background task: keeps the link up until cancelled."""

    def _is_up(self) -> bool:
        return self.connections > 0

    async def _stop_listening(self) -> None:
        """Closes a listening socket (listen:// only)."""

    def _new_connection(self, *, peer: str = "", login: bool = False) -> _Connection:
        return _Connection(self, peer=peer, telnet=self._telnet, login=login)

    def _connection_made(self, connection: _Connection) -> None:
        self._live.add(connection)
        if self._closing:
            connection.close("link closed")

    def _established(self, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        connection.established = True
        connection.established_at = connection.last_activity = loop.time()
        self._refresh_state()

    def _connection_lost(self, connection: _Connection) -> None:
        connection.done.add_done_callback(lambda _: self._live.discard(connection))
        self._refresh_state()

    def _refresh_state(self) -> None:
        state = LinkState.UP if self._is_up() else LinkState.DOWN
        if state is self.state:
            return
        self.state = state
        self._log.debug("link state", state=state.value)
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                self._log.exception("on_state callback failed")

    def _was_good(self, connection: _Connection) -> bool:
        if not connection.established:
            return False
        lasted_s = asyncio.get_running_loop().time() - connection.established_at
        return connection.data_bytes > 0 or lasted_s >= STABLE_CONNECTION_S

    async def _watch(self, connection: _Connection) -> None:
        """Waits until the connection is over; closes it after idle_timeout of silence and sends the keepalive
        string when it has been quiet. Time spent delivering is not silence."""
        loop = asyncio.get_running_loop()
        intervals_s = []
        if self._idle_timeout_s is not None:
            intervals_s.append(self._idle_timeout_s)
        if self._keepalive is not None:
            intervals_s.append(self._keepalive_interval_s)
        while not connection.done.done():
            timeout: float | None = None
            if intervals_s and connection.delivering:
                timeout = min(intervals_s)  # look again later: a delivery's end counts as activity
            elif intervals_s:
                deadlines = []
                if self._idle_timeout_s is not None:
                    deadlines.append(connection.last_activity + self._idle_timeout_s)
                if self._keepalive is not None:
                    quiet_since = max(connection.last_activity, connection.keepalive_sent_at)
                    deadlines.append(quiet_since + self._keepalive_interval_s)
                timeout = max(0.0, min(deadlines) - loop.time())
            await asyncio.wait([connection.done], timeout=timeout)
            if connection.done.done() or connection.delivering:
                continue
            now = loop.time()
            if self._idle_timeout_s is not None and now - connection.last_activity >= self._idle_timeout_s:
                connection.close(f"nothing received for {self._idle_timeout_s:g} s")
                # Its last lines are still delivered; a store stuck longer than this no longer holds up the reconnect.
                await asyncio.wait([connection.done], timeout=CLOSE_DRAIN_TIMEOUT_S)
                return
            if self._keepalive is not None and now - max(connection.last_activity, connection.keepalive_sent_at) >= self._keepalive_interval_s:
                connection.keepalive_sent_at = now
                connection.write(self._keepalive)

    async def _connect(self) -> _Connection:
        """Opens one connection (with its login); raises OSError/TimeoutError/LinkError when it cannot."""
        raise NotImplementedError

    async def _reconnect_forever(self) -> None:
        """The manager of tcp:// and serial links: one connection at a time, reopened with backoff (refused
        connects and missing serial ports at most a second apart: see drivers/backoff.py)."""
        backoff = Backoff(self._backoff_initial_s, self._backoff_max_s)
        in_outage = False  # after the WARNING that opened an outage, failures are logged at DEBUG
        while True:
            connection: _Connection | None = None
            failure: BaseException | None = None
            backoff_s = backoff.upcoming_s
            try:
                connection = await self._connect()
            except Exception as error:  # OSError, TimeoutError, LinkError; anything else is a bug, still retried
                failure = error
                reason = str(error) or type(error).__name__
                expected = isinstance(error, (OSError, TimeoutError, LinkError, ValueError))
                if not expected:
                    self._log.exception("link connect failed unexpectedly", retry_s=backoff_s)
                elif in_outage:
                    self._log.debug("link still unreachable", error=reason, retry_s=backoff_s)
                else:
                    self._log.warning("link unreachable", url=self.config.url, error=reason, retry_s=backoff_s)
                in_outage = True
            else:
                if not in_outage:
                    self._log.info("link connected", peer=connection.peer)
                else:
                    self._log.info("link connected again", peer=connection.peer)
                await self._watch(connection)
                if self._was_good(connection):
                    backoff.reset()
                    backoff_s = backoff.upcoming_s
                    in_outage = False
                if in_outage:
                    self._log.debug("link lost again", peer=connection.peer, reason=connection.lost_reason, retry_s=backoff_s)
                else:
                    self._log.warning("link lost", peer=connection.peer, reason=connection.lost_reason, retry_s=backoff_s)
                    in_outage = True
            await asyncio.sleep(backoff.next_delay(failure))


def host_port(url: str) -> tuple[str, int]:
    """HOST and PORT of a `listen://`, `tcp://` (or any HOST:PORT) URL; LinkError when it has none."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise LinkError(f"{url!r} has no HOST:PORT")
    return parts.hostname, parts.port


class ListenLineTransport(LineTransport):
    """listen://HOST:PORT — the PBX connects and pushes records; several connections at once (IP Office send
    mode connects for every burst), each with its own framer.

    `state` is UP while the listening socket is open, whether or not a PBX is connected at the moment: between
    bursts no connection is normal, and what the gateway controls (and what can fail: the port cannot be bound)
    is the listener. `connections` counts the PBX connections open now. A port that cannot be bound is retried
    with backoff."""

    def __init__(self, config: LinkConfig, deliver: Deliver, **kwargs: Any) -> None:
        super().__init__(config, deliver, **kwargs)
        self._host, self._port = host_port(config.url)
        self._server: asyncio.Server | None = None

    def _is_up(self) -> bool:
        return self._server is not None and not self._closing

    def _connection_made(self, connection: _Connection) -> None:
        super()._connection_made(connection)
        if not self._closing:
            self._established(connection)
            # DEBUG: IP Office send mode connects for every burst of records; that is not news.
            self._log.debug("PBX connected", peer=connection.peer, connections=self.connections)
            if self._idle_timeout_s is not None or self._keepalive is not None:
                watcher = asyncio.get_running_loop().create_task(self._watch(connection), name=f"watch {connection.peer}")
                self._watchers.add(watcher)
                watcher.add_done_callback(self._watchers.discard)

    def _connection_lost(self, connection: _Connection) -> None:
        super()._connection_lost(connection)
        if connection.established:
            self._log.debug("PBX disconnected", peer=connection.peer, reason=connection.lost_reason)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff_s = self._backoff_initial_s
        in_outage = False
        while self._server is None:
            try:
                self._server = await loop.create_server(
                    self._new_connection, self._host, self._port, reuse_address=True
                )
            except OSError as error:
                if in_outage:
                    self._log.debug("still cannot listen", error=str(error), retry_s=backoff_s)
                else:
                    self._log.warning("cannot listen", url=self.config.url, error=str(error), retry_s=backoff_s)
                    in_outage = True
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._backoff_max_s)
        self._log.info("listening", url=self.config.url)
        self._refresh_state()
        await asyncio.Event().wait()  # the server runs until close()

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


class TcpLineTransport(LineTransport):
    """tcp://HOST:PORT — the gateway connects to the PBX (or a device server), runs the login steps, reads lines.

    Login: for each step, wait up to LOGIN_STEP_TIMEOUT_S until the text received since the previous step
    contains `expect` (exact, case-sensitive), then send `send` + CR LF. Prompt text is never delivered; lines
    are what arrives after the last step's answer was sent. The connection counts (UP) after its login."""

    def __init__(self, config: LinkConfig, deliver: Deliver, **kwargs: Any) -> None:
        super().__init__(config, deliver, **kwargs)
        self._host, self._port = host_port(config.url)

    async def _run(self) -> None:
        await self._reconnect_forever()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        login = bool(self.config.login)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, connection = await loop.create_connection(
                partial(self._new_connection, login=login), self._host, self._port
            )
        try:
            for step in self.config.login:
                try:
                    async with asyncio.timeout(LOGIN_STEP_TIMEOUT_S):
                        await connection.expect(step.expect)
                except TimeoutError:
                    raise LinkError(f"login: no {step.expect!r} within {LOGIN_STEP_TIMEOUT_S:g} s") from None
                self._log.debug("login step", expect=step.expect)
                connection.write(_encode_text(step.send) + LOGIN_LINE_END)
            if login:
                connection.start_lines()
        except BaseException:
            connection.abort()
            raise
        if connection.lost:
            raise LinkError(f"connection closed: {connection.lost_reason}")
        self._established(connection)
        return connection


class SerialLineTransport(LineTransport):
    """A serial port: a local path (/dev/ttyUSB0, /dev/serial/by-id/…) or a pySerial URL (rfc2217://, socket://).

    Opened in an executor; read through an asyncio transport. A port that fails (read error, unplugged,
    ENOENT on open) is reopened with backoff."""

    async def _run(self) -> None:
        await self._reconnect_forever()

    async def _connect(self) -> _Connection:
        import serial_asyncio_fast  # only links that use a serial port need it loaded

        loop = asyncio.get_running_loop()
        url = self.config.url
        settings = self.config.serial or SerialSettings()
        port_settings: dict[str, Any] = dict(
            baudrate=settings.baudrate,
            bytesize=settings.bytesize,
            parity=settings.parity,
            stopbits=settings.stopbits,
            xonxoff=settings.xonxoff,
            rtscts=settings.rtscts,
        )
        factory = partial(self._new_connection, peer=url)
        if urlsplit(url).scheme == URL_RFC2217_SCHEME:
            opening = self._open_rfc2217(loop, factory, url, port_settings)
        else:
            opening = serial_asyncio_fast.create_serial_connection(loop, factory, url, **port_settings)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            transport, connection = await _open_without_orphans(opening, self._orphans)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await asyncio.shield(connection.made)  # scheduled with call_soon by the serial transport
        except BaseException:
            transport.close()
            raise
        if connection.lost:
            raise LinkError(f"port closed: {connection.lost_reason}")
        self._established(connection)
        return connection

    @staticmethod
    async def _open_rfc2217(
        loop: asyncio.AbstractEventLoop, factory: Callable[[], _Connection], url: str, port_settings: dict[str, Any]
    ) -> tuple[_ExecutorSerialTransport, _Connection]:
        import serial

        opener = partial(serial.serial_for_url, url, timeout=RFC2217_READ_POLL_S, **port_settings)
        serial_instance = await loop.run_in_executor(None, opener)
        connection = factory()
        return _ExecutorSerialTransport(loop, connection, serial_instance), connection


def create_transport(
    config: LinkConfig,
    deliver: Deliver,
    *,
    on_state: Callable[[LinkState], None] | None = None,
    **backoff: float,
) -> LineTransport:
    """The transport for the link's url: listen://, tcp://, else a serial port (path, rfc2217://, socket://)."""
    scheme = urlsplit(config.url).scheme if "://" in config.url else ""
    if scheme == URL_LISTEN_SCHEME:
        return ListenLineTransport(config, deliver, on_state=on_state, **backoff)
    if scheme == URL_TCP_SCHEME:
        return TcpLineTransport(config, deliver, on_state=on_state, **backoff)
    return SerialLineTransport(config, deliver, on_state=on_state, **backoff)
