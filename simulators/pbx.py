"""A PBX simulator: SMDR/CDR records in every supported format over every way a PBX is reached.

Long for a reason: one device reached three ways (dialling out, serving a login, behind a pty), plus its command line.

Records follow the formats of docs/smdr.md. The simulator connects to a gateway listen:// link, serves a
tcp:// link behind the format's login, or sits behind a pty that a gateway serial link opens. Fault knobs:
split writes, leading NULs, garbage, bursts, dropped links.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from datetime import datetime, timedelta, tzinfo
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

from gateway.lifecycle import stop_on_signals
from simulators.cli import positive_float, run_cli
from simulators.pbx_records import FORMATS, PROFILES, FormatProfile, LoginStep, garbage_line, record_lines
from simulators.pty import PtyPort
from simulators.tasks import OwnedTasks
from simulators.traffic import CompletedCall, PlannedCall

log = structlog.get_logger(__name__)


def _same(protocol: asyncio.Protocol) -> asyncio.Protocol:
    """A protocol factory answering the protocol made beforehand (the connect loop keeps it to log its end)."""
    return protocol


DEFAULT_NAME = "pbx"
DEFAULT_TRAFFIC_PER_MINUTE = 20.0  # the CLI makes calls unless told otherwise (--traffic 0)
# wait_connected gives up after this long unless told otherwise.
WAIT_TIMEOUT_S = 5.0
# stop() and drop_connections() wait this long for aborted links to report closed.
CLOSE_TIMEOUT_S = 2.0
# connect(): a gateway on the LAN accepts in milliseconds; an attempt that takes this long has failed.
CONNECT_TIMEOUT_S = 5.0
# connect(): delays between attempts double from 0.1 s to 5 s (a PBX in send mode keeps trying, but not
# so slowly that a restarted gateway waits long for its records); a connection that was made resets them.
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
# Lines kept while no gateway is connected, sent on the next connection; a real PBX buffers SMDR (IP Office
# 10–3000 records, Panasonic its memory) and overwrites the oldest when full.
BUFFER_MAX_LINES = 10_000
# `lines_sent` keeps this many of the latest lines for tests and the demo.
LINES_SENT_KEPT = 10_000
# start_listen(): a login prompt waits this long for its reply before the PBX hangs up (a device's login timer).
LOGIN_REPLY_TIMEOUT_S = 60.0
# Wrong replies before the PBX hangs up; each one prints LOGIN_FAILED_TEXT and starts the login over.
LOGIN_ATTEMPTS = 3
LOGIN_FAILED_TEXT = "Login incorrect"
# Bytes typed at a login prompt kept while waiting for the line's end: replies are short, memory stays bounded.
LOGIN_INPUT_MAX_BYTES = 1024
_TYPED_LINE_END = re.compile(rb"[\r\n]+")
# leading_nuls: NULs before each record line, as IP Office sends them (docs/smdr.md, avaya-ipo).
LEADING_NUL_BYTES = 3
NUL = b"\x00"
# split_writes: write sizes in turn. Small ones split lines across reads; the large one carries the end of one
# line and the start of the next (or whole lines) in a single write.
SPLIT_WRITE_BYTES = (1, 7, 3, 2, 5, 4, 6, 200)
# Loop turns between pieces: after one turn the gateway's read of the previous piece is only scheduled, so
# the next write would join it in the same read; two turns make each piece a read of its own.
SPLIT_WRITE_TURNS = 2
# What PBXs send (docs/smdr.md, "Lines": latin-1); a character latin-1 lacks goes out as "?".
TEXT_ENCODING = "latin-1"
# Lines that continue the record before them instead of starting one (not counted in `records_sent`):
# NEC's caller-name line (docs/smdr.md, nec-sv).
CONTINUATION_LINE_WORDS: dict[str, str] = {"nec-sv": "NEXT"}
# --extensions: a range larger than this is a typo, not a site.
MAX_EXTENSION_RANGE = 10_000


class PbxSimulatorError(ValueError):
    """The simulator was asked for something it cannot be (an unknown format, a bad extension list …)."""


def _encode(text: str) -> bytes:
    return text.encode(TEXT_ENCODING, errors="replace")


def call_end(call: CompletedCall) -> datetime:
    """Release of the call (all segments): when a PBX prints its record."""
    return call.start + timedelta(seconds=call.plan.length_s)


class _Peer(asyncio.Protocol):
    """One gateway link (a TCP connection either way, or the pty while its slave is open): an optional login,
    then records; one ordered writer out."""

    def __init__(self, sim: PbxSimulator, name: str, login: tuple[LoginStep, ...] = ()) -> None:
        self.name = name
        self._sim = sim
        self._login_steps = login
        self._log = sim._log.bind(link=name)
        self.transport: asyncio.BaseTransport | None = None
        self.receiving = False  # logged in: records go to it
        self._outbox: deque[bytes] = deque()
        self._in_flight = b""  # taken from the outbox, not yet written (split writes go piece by piece)
        self._outbox_ready = asyncio.Event()
        self._drained = asyncio.Event()  # nothing queued and nothing being written
        self._drained.set()
        self._typed = bytearray()  # login input up to its line end
        self._replies: asyncio.Queue[str] = asyncio.Queue()
        self._owned: list[asyncio.Task[Any]] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._sim._peer_opened(self)
        self._owned.append(self._sim._spawn(self._write_loop(), f"{self.name}:writer"))
        if self._login_steps:
            self._owned.append(self._sim._spawn(self._log_in(), f"{self.name}:login"))
        else:
            self._start_records()

    def data_received(self, data: bytes) -> None:
        if self.receiving:  # keepalives, telnet refusals: a PBX's SMDR port ignores what it is sent
            self._log.debug("ignoring bytes from the gateway", data=data)
            return
        self._typed += data.replace(NUL, b"")  # telnet clients send CR NUL
        *lines, rest = _TYPED_LINE_END.split(bytes(self._typed))
        self._typed = bytearray(rest[-LOGIN_INPUT_MAX_BYTES:])
        for line in lines:
            if line:  # an empty line (the LF of a CR LF split across reads) is no reply
                self._replies.put_nowait(line.decode(TEXT_ENCODING))

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._owned:
            task.cancel()
        if not self.closed.done():
            self.closed.set_result(None)
        self._sim._peer_closed(self, exc)

    # -- used by the simulator

    def queue(self, data: bytes) -> None:
        self._outbox.append(data)
        self._drained.clear()
        self._outbox_ready.set()

    def abort(self) -> None:
        if self.transport is not None:
            abort = getattr(self.transport, "abort", None)
            (abort or self.transport.close)()

    @property
    def drained(self) -> asyncio.Event:
        """Set while nothing is queued for this link or being written to it."""
        return self._drained

    def unsent(self) -> bytes:
        """What was queued for this link but never handed to its transport."""
        return self._in_flight + b"".join(self._outbox)

    # -- internals

    def _start_records(self) -> None:
        self.receiving = True
        self._sim._peer_ready(self)

    async def _log_in(self) -> None:
        """Prompt, wait for the reply line, next step; a wrong reply starts over, LOGIN_ATTEMPTS of them hang up."""
        line_ending = self._sim.profile.line_ending
        for attempt in range(1, LOGIN_ATTEMPTS + 1):
            for step in self._login_steps:
                self.queue(_encode(step.prompt))
                try:
                    async with asyncio.timeout(self._sim.login_reply_timeout_s):
                        reply = await self._replies.get()
                except TimeoutError:
                    self._log.info("no login reply, hanging up", prompt=step.prompt.strip())
                    await self._hang_up()
                    return
                if reply != step.expect:
                    self._log.info("login refused", prompt=step.prompt.strip(), attempt=attempt)
                    self.queue(line_ending + _encode(LOGIN_FAILED_TEXT) + line_ending)
                    break
            else:
                self._log.info("gateway logged in")
                self._start_records()
                return
        self._log.info("too many failed logins, hanging up", attempts=LOGIN_ATTEMPTS)
        await self._hang_up()

    async def _hang_up(self) -> None:
        """Close after what was queued (the failure text) went out."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._drained.wait()
        except TimeoutError:
            pass
        if self.transport is not None:
            self.transport.close()

    async def _write_loop(self) -> None:
        write_sizes = itertools.cycle(SPLIT_WRITE_BYTES)
        transport = self.transport
        assert isinstance(transport, asyncio.WriteTransport)
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            # Whatever was queued meanwhile goes out together: lines coalesce, as in a real PBX's writes.
            self._in_flight = b"".join(self._outbox)
            self._outbox.clear()
            while self._in_flight and not transport.is_closing():
                size = next(write_sizes) if self._sim.split_writes else len(self._in_flight)
                transport.write(self._in_flight[:size])
                self._in_flight = self._in_flight[size:]
                if self._in_flight:
                    for _ in range(SPLIT_WRITE_TURNS):
                        await asyncio.sleep(0)  # let the gateway read each piece on its own
            if transport.is_closing():
                return  # what is left is unsent(): the simulator keeps it for the next link
            if not self._outbox:
                self._drained.set()


class PbxSimulator:
    """A PBX printing SMDR/CDR records in one format to every connected gateway link, buffering while none is.

    Ways out, in any combination: `connect` (send mode: the PBX connects to a gateway listen:// link and
    reconnects forever), `start_listen` (the gateway's tcp:// link connects here and logs in with the format's
    login steps), `open_pty` (a gateway serial link opens the pty's slave path).
    """

    def __init__(
        self, fmt: str, *, tz: tzinfo | None = None, name: str = DEFAULT_NAME, seed: int | None = None
    ) -> None:
        if fmt not in PROFILES:
            raise PbxSimulatorError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
        if tz is None:
            from drivers.smdr import machine_timezone  # the zone a gateway link assumes when none is configured

            tz = machine_timezone()
        self.fmt = fmt
        self.profile: FormatProfile = PROFILES[fmt]
        self.tz = tz
        self.name = name
        self._log = log.bind(sim=name, format=fmt)
        self._rng = random.Random(seed)
        # Fault knobs
        self.split_writes = False
        self.leading_nuls = False
        # Timing knobs (tests shorten them)
        self.backoff_initial_s = BACKOFF_INITIAL_S
        self.backoff_max_s = BACKOFF_MAX_S
        self.login_reply_timeout_s = LOGIN_REPLY_TIMEOUT_S
        # Trace
        self.calls_sent = 0  # emit() calls and calls in bursts
        self.records_sent = 0  # records printed, buffered or not (not page headers, garbage or continuation lines)
        self.lines_sent: deque[str] = deque(maxlen=LINES_SENT_KEPT)  # every line printed, latest last
        self.lines_dropped = 0  # buffered lines lost to a full buffer
        self.port: int | None = None  # the last start_listen port
        self.pty_path: str | None = None  # the last open_pty path
        # Links
        self._peers: list[_Peer] = []  # receiving records
        self._all_peers: set[_Peer] = set()  # also logging in or closing
        self._backlog: deque[bytes] = deque()  # one encoded line each, sent on the next connection
        self._backlog_overflowed = False
        self._page = 0
        self._lines_on_page = 0
        self._servers: list[asyncio.Server] = []
        self._ptys: list[PtyPort] = []
        self._tasks = OwnedTasks(self.name, self._log)
        self._changed = asyncio.Event()
        self._peer_numbers = itertools.count(1)

    # ---- ways out

    async def connect(self, host: str, port: int) -> None:
        """Send mode: connect to a gateway listen:// link and push records, reconnecting with backoff forever
        when refused or dropped. Returns once the first attempt has started."""
        started = asyncio.Event()
        self._spawn(self._connect_forever(host, port, started), f"connect:{host}:{port}")
        await started.wait()

    async def start_listen(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve the gateway's tcp:// link: each connection logs in (the format's login steps), then gets records.
        Returns the bound port (also in `self.port`)."""
        server = await asyncio.get_running_loop().create_server(
            lambda: _Peer(self, f"{self.name}:in{next(self._peer_numbers)}", self.profile.login), host, port
        )
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        self._log.info("listening", host=host, port=self.port, login_steps=len(self.profile.login))
        return self.port

    async def open_pty(self) -> str:
        """A pty standing in for the PBX's serial SMDR port (no login on serial); returns the slave path."""
        pty = PtyPort(lambda: _Peer(self, f"{self.name}:pty{next(self._peer_numbers)}"), self._spawn, self._log)
        self._ptys.append(pty)
        self.pty_path = pty.slave_path
        self._log.info("serving on pty", path=self.pty_path)
        return self.pty_path

    async def wait_sent(self, timeout: float = WAIT_TIMEOUT_S) -> None:
        """Until every line printed so far has been written to each link receiving now (lines printed while
        none was stay buffered for the next one)."""
        async with asyncio.timeout(timeout):
            for peer in list(self._peers):
                await peer.drained.wait()

    async def stop(self) -> None:
        """Close listeners, ptys and every link (after what was printed has gone out to them, for at most
        CLOSE_TIMEOUT_S), and cancel every task; calling it again does nothing."""
        try:
            await self.wait_sent(CLOSE_TIMEOUT_S)
        except TimeoutError:
            pass  # a link that does not read: what it did not take is logged as kept for the next link
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        ptys, self._ptys = self._ptys, []
        await self._tasks.cancel_all()  # connect loops first, so that nothing reconnects while links close
        for pty in ptys:
            pty.close()
        await self._abort_peers()
        for server in servers:
            await server.wait_closed()
        if servers or ptys:
            self._log.info("stopped", records=self.records_sent, buffered=len(self._backlog))

    # ---- links

    @property
    def connection_count(self) -> int:
        """Links logged in and receiving records now."""
        return len(self._peers)

    @property
    def buffered_lines(self) -> int:
        """Lines printed while no link was receiving, waiting for the next one."""
        return len(self._backlog)

    async def wait_connected(self, count: int = 1, timeout: float = WAIT_TIMEOUT_S) -> None:
        """Until at least `count` links are logged in and receiving (count 0: until none is)."""
        async with asyncio.timeout(timeout):
            while not (self.connection_count >= count if count else self.connection_count == 0):
                await self._changed.wait()

    async def drop_connections(self) -> None:
        """Disconnect every link, as a PBX rebooting does; connect() links reconnect by themselves, the pty's
        session starts again while its slave stays open."""
        self._log.info("dropping links", count=len(self._all_peers))
        await self._abort_peers()

    # ---- records

    def emit(self, call: CompletedCall) -> list[str]:
        """Print the call's record line(s) to every link (a page header first when a page begins); returns the
        lines printed, without terminators."""
        lines, chunks = self._render(call)
        self._send(chunks)
        return lines

    def send_burst(self, calls: Sequence[CompletedCall]) -> None:
        """Many records in one write to each link (a PBX flushing its buffer)."""
        chunks: list[bytes] = []
        for call in calls:
            chunks += self._render(call)[1]
        if self._peers:
            self._send([b"".join(chunks)])
        else:
            self._send(chunks)

    def send_garbage(self, count: int = 1) -> None:
        """Lines that are no records (line noise, modem chatter): the gateway must quarantine them and go on."""
        for _ in range(count):
            line = garbage_line(self._rng)
            self.lines_sent.append(line)
            self._send([_encode(line) + self.profile.line_ending])

    # ---- internals

    def _render(self, call: CompletedCall) -> tuple[list[str], list[bytes]]:
        """The call's lines (page header first if due) and their bytes, one chunk per line; counts them."""
        record = record_lines(self.fmt, call, self.tz)
        header = self._page_header(call_end(call), len(record))
        ending = self.profile.line_ending
        nuls = NUL * LEADING_NUL_BYTES if self.leading_nuls else b""
        chunks = [_encode(line) + ending for line in header] + [nuls + _encode(line) + ending for line in record]
        self.calls_sent += 1
        continuation = CONTINUATION_LINE_WORDS.get(self.fmt)
        self.records_sent += sum(1 for line in record if continuation is None or line.split(" ", 1)[0] != continuation)
        self.lines_sent.extend(header)
        self.lines_sent.extend(record)
        return header + record, chunks

    def _page_header(self, at: datetime, record_line_count: int) -> list[str]:
        """A new page's header when the next record does not fit on this page (lines_per_page counts record
        lines, headers not included; a record longer than a page still goes on one page)."""
        per_page = self.profile.lines_per_page
        if per_page <= 0:
            return []
        if self._page and self._lines_on_page + record_line_count <= per_page:
            self._lines_on_page += record_line_count
            return []
        self._page += 1
        self._lines_on_page = record_line_count
        return list(self.profile.page_header(at, self._page, self.tz))

    def _send(self, chunks: Iterable[bytes]) -> None:
        if self._peers:
            data = b"".join(chunks)
            for peer in self._peers:
                peer.queue(data)
            return
        for chunk in chunks:
            if len(self._backlog) >= BUFFER_MAX_LINES:
                self._backlog.popleft()
                self.lines_dropped += 1
                if not self._backlog_overflowed:
                    self._log.warning(
                        "no gateway connected and the buffer is full: dropping the oldest lines",
                        max_lines=BUFFER_MAX_LINES,
                    )
                    self._backlog_overflowed = True
            self._backlog.append(chunk)

    async def _connect_forever(self, host: str, port: int, started: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        backoff_s = self.backoff_initial_s
        in_outage = False  # after the WARNING that opened an outage, failures are logged at DEBUG
        while True:
            peer = _Peer(self, f"{self.name}:out{next(self._peer_numbers)}")
            started.set()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await loop.create_connection(partial(_same, peer), host, port)
            except (OSError, TimeoutError) as error:
                reason = str(error) or type(error).__name__
                if in_outage:
                    self._log.debug("gateway still unreachable", host=host, port=port, error=reason, retry_s=backoff_s)
                else:
                    self._log.warning("gateway unreachable", host=host, port=port, error=reason, retry_s=backoff_s)
                    in_outage = True
            else:
                self._log.info("connected to gateway", host=host, port=port, link=peer.name)
                in_outage = False
                backoff_s = self.backoff_initial_s
                await peer.closed
                self._log.info("gateway link lost", host=host, port=port, link=peer.name, retry_s=backoff_s)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self.backoff_max_s)

    def _peer_opened(self, peer: _Peer) -> None:
        self._all_peers.add(peer)
        self._notify()

    def _peer_ready(self, peer: _Peer) -> None:
        self._peers.append(peer)
        self._log.info("gateway receiving", link=peer.name, links=len(self._peers))
        if self._backlog:
            self._log.info(
                "sending buffered lines", link=peer.name, lines=len(self._backlog), dropped=self.lines_dropped
            )
            peer.queue(b"".join(self._backlog))
            self._backlog.clear()
            self._backlog_overflowed = False
        self._notify()

    def _peer_closed(self, peer: _Peer, exc: Exception | None) -> None:
        if peer in self._peers:
            self._peers.remove(peer)
            self._log.info("gateway disconnected", link=peer.name, reason=str(exc) if exc else None)
            unsent = peer.unsent()
            if unsent and not self._peers:
                self._keep_unsent(unsent)
        self._all_peers.discard(peer)
        self._notify()

    def _keep_unsent(self, unsent: bytes) -> None:
        """Lines queued for the last link but never written go back in front of the buffer (a PBX sends a
        record again until it got out), so a dropped link loses only what was already on the wire."""
        ending = self.profile.line_ending
        pieces = unsent.split(ending)
        lines = [piece + ending for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
        self._backlog.extendleft(reversed(lines))
        while len(self._backlog) > BUFFER_MAX_LINES:
            self._backlog.popleft()
            self.lines_dropped += 1
        self._log.info("kept unsent lines for the next link", lines=len(lines))

    async def _abort_peers(self) -> None:
        peers = list(self._all_peers)
        for peer in peers:
            peer.abort()
        closing = [peer.closed for peer in peers if not peer.closed.done()]
        if closing:
            await asyncio.wait(closing, timeout=CLOSE_TIMEOUT_S)

    def _notify(self) -> None:
        """Wake everyone waiting for a link change."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, name)


# ---- command line


def _parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_extensions(value: str) -> tuple[str, ...]:
    """`2001-2010,3001` → ("2001", …, "2010", "3001"); a range keeps its first number's width (`0201-0203`)."""
    extensions: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        first, dash, last = item.partition("-")
        if not dash:
            if not first.isdigit():
                raise PbxSimulatorError(f"extension {first!r} is not a number")
            extensions.append(first)
            continue
        if not (first.isdigit() and last.isdigit()) or int(last) < int(first):
            raise PbxSimulatorError(f"bad extension range {item!r}")
        if int(last) - int(first) >= MAX_EXTENSION_RANGE:
            raise PbxSimulatorError(f"extension range {item!r} is longer than {MAX_EXTENSION_RANGE}")
        extensions += [str(number).zfill(len(first)) for number in range(int(first), int(last) + 1)]
    if not extensions:
        raise PbxSimulatorError("no extensions given")
    return tuple(dict.fromkeys(extensions))  # duplicates once, order kept


def _extensions_argument(value: str) -> tuple[str, ...]:
    try:
        return parse_extensions(value)
    except PbxSimulatorError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _timezone_argument(value: str) -> tzinfo:
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown timezone {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulators.pbx", description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=FORMATS, help="the SMDR/CDR format to print")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--connect", type=_parse_address, metavar="HOST:PORT", help="send mode: connect to a gateway listen:// link"
    )
    where.add_argument(
        "--listen",
        type=_parse_address,
        metavar="HOST:PORT",
        help="serve a gateway tcp:// link (with the format's login)",
    )
    where.add_argument("--pty", action="store_true", help="serve on a new pty and print its slave path")
    traffic = parser.add_mutually_exclusive_group()
    traffic.add_argument(
        "--traffic",
        type=float,
        default=DEFAULT_TRAFFIC_PER_MINUTE,
        metavar="RATE",
        help="random calls per minute (default %(default)s; 0: none)",
    )
    traffic.add_argument("--scenario", metavar="FILE.yaml", help="play the calls of a scenario file")
    parser.add_argument("--seed", type=int, default=None, help="seed for the traffic and the garbage")
    parser.add_argument("--speed", type=positive_float, default=1.0, help="site clock speed (2: calls twice as fast)")
    parser.add_argument(
        "--timezone", type=_timezone_argument, default=None, help="the PBX clock's zone (default: the machine's)"
    )
    parser.add_argument(
        "--extensions",
        type=_extensions_argument,
        default=None,
        metavar="LIST",
        help="for --traffic, e.g. 2001-2010,3001",
    )
    faults = parser.add_argument_group("faults", "what a gateway link must survive, on demand")
    faults.add_argument("--split-writes", action="store_true", help="send records in pieces of 1, 7, 3 … bytes")
    faults.add_argument("--leading-nuls", action="store_true", help="NUL bytes before each record")
    faults.add_argument(
        "--garbage-every", type=positive_float, default=None, metavar="SECONDS", help="a line of garbage this often"
    )
    faults.add_argument(
        "--drop-every",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="disconnect every link this often (a rebooting PBX; --connect reconnects, records are buffered)",
    )
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


async def _every(interval_s: float, act: Callable[[], Awaitable[None] | None]) -> None:
    """Run `act` every `interval_s` until cancelled (a fault knob of the command line)."""
    while True:
        await asyncio.sleep(interval_s)  # the schedule itself, not a wait for anyone: no timeout
        outcome = act()
        if outcome is not None:
            await outcome


def _plan(args: argparse.Namespace) -> Iterable[PlannedCall] | None:
    """The calls to play: the scenario's, an endless random plan, or none."""
    if args.scenario:
        from simulators.traffic import load_scenario

        return load_scenario(args.scenario)
    if args.traffic > 0:
        from simulators.traffic import TrafficModel

        options: dict[str, Any] = {"seed": args.seed, "calls_per_minute": args.traffic}
        if args.extensions:
            options["extensions"] = args.extensions
        return TrafficModel(**options).calls()
    return None


async def _run(args: argparse.Namespace) -> None:
    sim = PbxSimulator(args.format, tz=args.timezone, name=args.name, seed=args.seed)
    sim.split_writes = args.split_writes
    sim.leading_nuls = args.leading_nuls
    if args.garbage_every:
        sim._spawn(_every(args.garbage_every, sim.send_garbage), "garbage")
    if args.drop_every:
        sim._spawn(_every(args.drop_every, sim.drop_connections), "drops")
    loop = asyncio.get_running_loop()
    playing: asyncio.Task[None] | None = None
    stop_wait: asyncio.Task[bool] | None = None
    try:
        async with stop_on_signals() as stopping:
            if args.pty:
                print(await sim.open_pty(), flush=True)
            elif args.listen:
                await sim.start_listen(*args.listen)
            else:
                await sim.connect(*args.connect)
            if sim.profile.gateway_options:
                log.info(
                    "the gateway link needs these options",
                    format=args.format,
                    options=dict(sim.profile.gateway_options),
                )
            plan = _plan(args)
            if plan is not None:
                from simulators.site import Site, first_call_id_from_clock  # only traffic needs the site player

                site = Site(plan, pbx=sim, speed=args.speed, first_pbx_call_id=first_call_id_from_clock(), history=0)
                playing = loop.create_task(site.run(), name="site")
            stop_wait = loop.create_task(stopping.wait(), name="stop-wait")
            waiting = {stop_wait} if playing is None else {stop_wait, playing}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if playing is not None and playing in done:
                playing.result()  # a failed player ends the run with its error
                log.info("plan played; running until stopped", records=sim.records_sent)
                await stop_wait
    finally:
        for task in (playing, stop_wait):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(task for task in (playing, stop_wait) if task is not None), return_exceptions=True)
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
