"""Line links (docs/smdr.md, "Transports"): listen://, tcp:// and serial ports (pySerial URLs) turned into
framed lines, with reconnection forever, backpressure, idle detection and keepalives. The PBX links use it.

Long for a reason: the connection protocol and the three line transports share one reconnect/backpressure core."""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import structlog

from drivers.backoff import BACKOFF_INITIAL_S, BACKOFF_MAX_S, Backoff
from drivers.connection.framing import IAC, FramedLine, LineFramer, TelnetFilter
from drivers.connection.reconnect import OutageEvents, Reconnector, SessionEnd
from drivers.connection.serial import open_serial_connection
from drivers.connection.tcp import enable_tcp_keepalive, format_peer, host_port, is_tcp_socket
from gateway.config import LinkConfig
from gateway.errors import LinkError
from gateway.events import LinkState
from gateway.model import utc_now

log = structlog.get_logger(__name__)

# ---- links

URL_LISTEN_SCHEME = "listen"
URL_TCP_SCHEME = "tcp"
LOGIN_LINE_END = b"\r\n"
OPTION_TELNET = "telnet"
OPTION_IDLE_TIMEOUT = "idle_timeout"
OPTION_KEEPALIVE = "keepalive"
LINK_OUTAGE_EVENTS = OutageEvents(
    unreachable="link unreachable",
    still_unreachable="link still unreachable",
    lost="link lost",
    lost_again="link lost again",
    failed_unexpectedly="link connect failed unexpectedly",
)

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

Deliver = Callable[[list[FramedLine]], Awaitable[None]]


# ---- connections


def _encode_text(text: str) -> bytes:
    """Login and keepalive text as the PBX expects it: latin-1 (what PBXs decode), UTF-8 for anything latin-1 lacks."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


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
            self.peer = format_peer(transport.get_extra_info("peername"))
            self._log = self._log.bind(peer=self.peer)
        sock = transport.get_extra_info("socket")
        if is_tcp_socket(sock):
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
            if (
                self._keepalive is not None
                and now - max(connection.last_activity, connection.keepalive_sent_at) >= self._keepalive_interval_s
            ):
                connection.keepalive_sent_at = now
                connection.write(self._keepalive)

    async def _connect(self) -> _Connection:
        """Opens one connection (with its login); raises OSError/TimeoutError/LinkError when it cannot."""
        raise NotImplementedError

    async def _reconnect_forever(self) -> None:
        """The manager of tcp:// and serial links: one connection at a time, reopened with backoff (refused
        connects and missing serial ports at most a second apart: see drivers/backoff.py)."""
        reconnector: Reconnector[_Connection] = Reconnector(
            self._log, LINK_OUTAGE_EVENTS, Backoff(self._backoff_initial_s, self._backoff_max_s), url=self.config.url
        )

        async def connect() -> _Connection:
            connection = await self._connect()
            self._log.info("link connected again" if reconnector.in_outage else "link connected", peer=connection.peer)
            return connection

        async def serve(connection: _Connection) -> SessionEnd:
            await self._watch(connection)
            return SessionEnd(self._was_good(connection), {"peer": connection.peer, "reason": connection.lost_reason})

        await reconnector.run(connect, serve)


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
                watcher = asyncio.get_running_loop().create_task(
                    self._watch(connection), name=f"watch {connection.peer}"
                )
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
        url = self.config.url
        factory = partial(self._new_connection, peer=url)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            transport, connection = await open_serial_connection(
                factory, url, self.config.serial, orphans=self._orphans
            )
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
