"""The trunk recorder device side of TRUNKREC/1 (docs/trunkrec.md) over TCP or a pty.

Long for a reason: one device, and every verb, event and fault knob of its side of the protocol is a method of it.

It carries scripted or random call traffic and has fault knobs (delays, silence, forced errors,
junk, split writes, dropped links) so that tests and the demo can exercise the gateway's client.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any

import structlog

from drivers.trunkrec import protocol as p
from gateway.lifecycle import stop_on_signals
from simulators.cli import run_cli
from simulators.pty import PTY_SETTLE_S, PtyPort
from simulators.tasks import OwnedTasks

log = structlog.get_logger(__name__)

DEFAULT_CHANNELS = 60
DEFAULT_NAME = "sim1"
TIMESLOTS_PER_SPAN = 30  # E1: 30 bearer timeslots per span
CALL_ID_PREFIX = "TRS"
CALL_ID_DIGITS = 8
REC_ID_PREFIX = "R"
REC_ID_DIGITS = 6
CAUSE_NORMAL_CLEARING = 16  # Q.850
CAUSE_NO_ANSWER = 19  # Q.850
# wait_for_request / wait_for_connections give up after this long unless told otherwise.
WAIT_TIMEOUT_S = 5.0
# stop() and drop_connections() wait this long for aborted transports to report closed.
CLOSE_TIMEOUT_S = 2.0
# split_writes: write sizes in turn. Small ones split lines across reads; the large one carries
# the end of one line and the start of the next (or whole lines) in a single write.
SPLIT_WRITE_BYTES = (1, 7, 3, 2, 5, 4, 6, 200)
JUNK_LINES = (
    b"?? line noise ## TRUNKREC ?? 4711 %%\r\n",
    b"EVT CALL 1/1 \x00\x07\xff\x1b[2J SETUP\r\n",
    b"X" * 2000 + p.LINE_END,
)
# --traffic: how a random call behaves.
TRAFFIC_ANSWER_DELAY_S = (0.5, 8.0)
TRAFFIC_DURATION_S = (5.0, 180.0)
TRAFFIC_NO_ANSWER_SHARE = 0.1
TRAFFIC_OUTBOUND_SHARE = 0.3


class SimulatorError(ValueError):
    """The simulator was scripted with something a trunk cannot do (no such channel, no call …)."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(slots=True)
class SimCall:
    channel: str
    call_id: str
    calling: str
    called: str
    direction: str
    started_at: datetime
    connected_at: datetime | None = None
    rec_id: str | None = None  # the running recording


@dataclass(slots=True)
class SimRecording:
    rec_id: str
    channel: str
    call_id: str
    started_at: datetime
    stopped_at: datetime | None = None
    duration_s: int | None = None
    discarded: bool = False
    ref: str | None = None  # START's ref=

    @property
    def running(self) -> bool:
        return self.stopped_at is None


@dataclass(slots=True)
class _ForcedError:
    code: str
    text: str
    verb: str | None
    remaining: int | None


@dataclass(slots=True)
class _Outcome:
    """What executing a request produced: the reply's fields or error, and the events it caused."""

    ok_fields: dict[str, object] = field(default_factory=dict)
    error: tuple[str, str] | None = None
    events: list[bytes] = field(default_factory=list)
    events_first: bool = (
        False  # this verb's usual order (docs/trunkrec.md §5), unless events_before_replies says otherwise
    )


def _error(code: str, text: str = "") -> _Outcome:
    return _Outcome(error=(code, text))


def _span_layout(channels: int, spans: int | Sequence[int] | None) -> tuple[int, ...]:
    """Timeslots per span: 30 per span (E1) by default; `spans` is a span count or timeslots per span."""
    if channels < 1:
        raise SimulatorError("a recorder has at least one channel")
    if spans is None:
        full, rest = divmod(channels, TIMESLOTS_PER_SPAN)
        return (TIMESLOTS_PER_SPAN,) * full + ((rest,) if rest else ())
    if isinstance(spans, int):
        if spans < 1 or channels % spans:
            raise SimulatorError(f"{channels} channels do not divide into {spans} spans")
        return (channels // spans,) * spans
    layout = tuple(spans)
    if not layout or min(layout) < 1 or sum(layout) != channels:
        raise SimulatorError(f"spans {layout} do not add up to {channels} channels")
    return layout


class _Session(p.LineProtocol):
    """One gateway link (a TCP connection, or the pty while its slave is open): lines in, one ordered writer out."""

    def __init__(self, sim: TrunkRecorderSimulator, name: str) -> None:
        super().__init__(partial(sim._on_line, self), self._lost, name=name)
        self.name = name
        self._sim = sim
        self._outbox: deque[bytes] = deque()
        self._outbox_ready = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._writer = self._sim._spawn(self._write_loop(), f"{self.name}:writer")
        self._sim._session_opened(self)

    def queue(self, line: bytes) -> None:
        self._outbox.append(line)
        self._outbox_ready.set()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _lost(self, exc: Exception | None) -> None:
        if self._writer is not None:
            self._writer.cancel()
        if not self.closed.done():
            self.closed.set_result(None)
        self._sim._session_closed(self, exc)

    async def _write_loop(self) -> None:
        write_sizes = itertools.cycle(SPLIT_WRITE_BYTES)
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            data = b"".join(self._outbox)  # whatever was queued meanwhile goes out together: lines coalesce
            self._outbox.clear()
            try:
                if not self._sim.split_writes:
                    self.send(data)
                    continue
                while data:
                    size = next(write_sizes)
                    self.send(data[:size])
                    data = data[size:]
                    await asyncio.sleep(0)  # let the peer read each piece on its own
            except ConnectionError:
                return


class TrunkRecorderSimulator:
    """A trunk recorder: channels, calls, recordings and span alarms, served to any number of gateway links."""

    def __init__(
        self,
        channels: int = DEFAULT_CHANNELS,
        name: str = DEFAULT_NAME,
        spans: int | Sequence[int] | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        self.name = name
        self.span_timeslots = _span_layout(channels, spans)
        self.channel_names: tuple[str, ...] = tuple(
            p.format_channel(span, slot)
            for span, count in enumerate(self.span_timeslots, start=1)
            for slot in range(1, count + 1)
        )
        self._span_by_channel = {channel: p.parse_channel(channel)[0] for channel in self.channel_names}
        self._log = log.bind(sim=name)
        self._rng = random.Random(seed)
        self._call_numbers = itertools.count(
            self._rng.randrange(10 ** (CALL_ID_DIGITS - 1), 5 * 10 ** (CALL_ID_DIGITS - 1))
        )
        self._rec_numbers = itertools.count(1)
        self.clock: Callable[[], datetime] = utc_now  # tests may replace it to move time
        # Behaviour and fault knobs
        self.send_timestamps = True
        self.events_before_replies: bool | None = None  # None: START replies first, STOP sends its event first
        self.reply_delay_s = 0.0
        self.reply_delay_by_verb: dict[str, float] = {}
        self.silent = False
        self.ignore_pings = False
        self.split_writes = False
        self._forced_errors: list[_ForcedError] = []
        # Device state and trace
        self.calls: dict[str, SimCall] = {}
        self.recordings: dict[str, SimRecording] = {}
        self.alarms: dict[int, str] = {}
        self.requests: list[p.Request] = []
        self.bad_lines = 0
        self.port: int | None = None
        self.pty_path: str | None = None
        self._sessions: list[_Session] = []
        self._all_sessions: set[_Session] = set()  # also the ones still closing
        self._closed_framing_errors = 0
        self._busy_channels: set[str] = set()
        self._tasks = OwnedTasks(self.name, self._log)
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._pty: PtyPort | None = None
        self._session_numbers = itertools.count(1)

    # ---- lifecycle

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen for gateway connections; returns (and sets `self.port` to) the bound port."""
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Session(self, f"{self.name}:tcp{next(self._session_numbers)}"), host, port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._log.info("listening", host=host, port=self.port)
        return self.port

    async def open_pty(self, settle_s: float = PTY_SETTLE_S) -> str:
        """Serve the protocol on a new pty; returns the slave path for the gateway to open as a serial port.
        `settle_s`: how long after the slave is opened the session starts (the opener configures and flushes the
        port meanwhile); PTY_SETTLE_BEHIND_DEVICE_SERVER_S when an RFC 2217 device server opens it."""
        if self._pty is not None:
            raise SimulatorError("this simulator already has a pty")
        # The banner goes out when a session starts: after the gateway opened the slave and settled.
        self._pty = PtyPort(partial(_Session, self, f"{self.name}:pty"), self._spawn, self._log, settle_s)
        self.pty_path = self._pty.slave_path
        self._log.info("serving on pty", path=self.pty_path)
        return self.pty_path

    async def stop(self) -> None:
        """Close the listener, every link and the pty, and cancel every task; calling it again does nothing."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        pty, self._pty = self._pty, None
        if pty is not None:
            pty.close()
        await self._abort_sessions()
        await self._tasks.cancel_all()
        if server is not None:
            await server.wait_closed()
        if server is not None or pty is not None:
            self._log.info("stopped", calls=len(self.calls), recordings=len(self.recordings))
        self._busy_channels.clear()

    # ---- traffic

    def place_call(
        self,
        channel: str,
        calling: str | None = None,
        called: str | None = None,
        direction: str = p.DIR_IN,
        native_id: str | None = None,
    ) -> SimCall:
        """A call appears on an idle channel (EVT CALL SETUP); numbers are made up when not given."""
        self._check_channel(channel)
        if channel in self.calls:
            raise SimulatorError(f"channel {channel} already carries call {self.calls[channel].call_id}")
        if direction not in p.DIRECTIONS:
            raise SimulatorError(f"direction must be one of {sorted(p.DIRECTIONS)}")
        call_id = native_id or f"{CALL_ID_PREFIX}{next(self._call_numbers) % 10**CALL_ID_DIGITS:0{CALL_ID_DIGITS}d}"
        if any(call.call_id == call_id for call in self.calls.values()):
            raise SimulatorError(f"call id {call_id} is in use")
        call = SimCall(
            channel,
            call_id,
            calling if calling is not None else f"0{self._rng.randrange(10**9, 10**10)}",
            called if called is not None else str(self._rng.randrange(1000, 10000)),
            direction,
            self.clock(),
        )
        self.calls[channel] = call
        self._log.info(
            "call setup", channel=channel, call_id=call_id, calling=call.calling, called=call.called, dir=direction
        )
        self._broadcast(self._setup_event(call))
        return call

    def answer(self, channel: str) -> SimCall:
        call = self._call_on(channel)
        if call.connected_at is not None:
            raise SimulatorError(f"call on {channel} is already answered")
        call.connected_at = self.clock()
        self._log.info("call connected", channel=channel, call_id=call.call_id)
        self._broadcast(self._connect_event(call))
        return call

    def release(self, channel: str, cause: int = CAUSE_NORMAL_CLEARING) -> SimCall:
        """The call ends; a running recording stops first (EVT REC STOPPED before EVT CALL RELEASE)."""
        call = self._call_on(channel)
        if call.rec_id is not None:
            self._broadcast(self._stop_recording(call))
        del self.calls[channel]
        self._log.info("call released", channel=channel, call_id=call.call_id, cause=cause)
        self._broadcast(
            self._event(
                p.EVT_CALL, channel, p.CALL_RELEASE, self.clock(), **{p.FIELD_ID: call.call_id, p.FIELD_CAUSE: cause}
            )
        )
        return call

    def start_recording(self, channel: str, ref: str | None = None) -> SimRecording:
        """The device starts recording on its own (e.g. a permanent recording rule)."""
        call = self._call_on(channel)
        if call.rec_id is not None:
            raise SimulatorError(f"channel {channel} is already recording")
        recording, event = self._start_recording(call, ref)
        self._broadcast(event)
        return recording

    def stop_recording(self, channel: str) -> SimRecording:
        call = self._call_on(channel)
        if call.rec_id is None:
            raise SimulatorError(f"channel {channel} is not recording")
        recording = self.recordings[call.rec_id]
        self._broadcast(self._stop_recording(call))
        return recording

    def alarm(self, span: int, state: str) -> None:
        """Raise (LOS/LOF/AIS) or clear (CLEAR) a span alarm; START on an alarmed span answers ERR ALARM."""
        if not 1 <= span <= len(self.span_timeslots):
            raise SimulatorError(f"no span {span}")
        if state not in p.ALARM_STATES:
            raise SimulatorError(f"alarm state must be one of {sorted(p.ALARM_STATES)}")
        if state == p.ALARM_CLEAR:
            self.alarms.pop(span, None)
        else:
            self.alarms[span] = state
        self._log.info("span alarm", span=span, state=state)
        self._broadcast(self._event(p.EVT_ALARM, str(span), state, self.clock()))

    def channel_state(self, channel: str) -> str:
        self._check_channel(channel)
        call = self.calls.get(channel)
        if call is None:
            return p.STATE_IDLE
        return p.STATE_CALL if call.rec_id is None else p.STATE_RECORDING

    def start_traffic(self, calls_per_minute: float, *, seed: int | None = None) -> None:
        """Random calls on random idle channels (Poisson arrivals), answered or not, until stop()."""
        if calls_per_minute > 0:
            self._spawn(self._traffic(calls_per_minute, random.Random(seed)), "traffic")

    # ---- trace and links

    @property
    def connection_count(self) -> int:
        return len(self._sessions)

    @property
    def framing_errors(self) -> int:
        return self._closed_framing_errors + sum(session.framer.framing_errors for session in self._all_sessions)

    async def wait_for_request(
        self, verb: str, timeout: float = WAIT_TIMEOUT_S, channel: str | None = None, *, since: int = 0
    ) -> p.Request:
        """The first request with `verb` (and channel) at index `since` or later in `requests`, waiting for it.

        `since=len(sim.requests)` taken before acting waits for the next one.
        """
        async with asyncio.timeout(timeout):
            while True:
                for request in self.requests[since:]:
                    if request.verb == verb and (channel is None or request.args[:1] == (channel,)):
                        return request
                since = len(self.requests)
                await self._changed.wait()

    async def wait_for_connections(self, count: int, timeout: float = WAIT_TIMEOUT_S) -> None:
        """Until exactly `count` gateway links are open."""
        async with asyncio.timeout(timeout):
            while self.connection_count != count:
                await self._changed.wait()

    # ---- fault knobs

    def force_error(self, code: str, text: str = "", verb: str | None = None, count: int | None = None) -> None:
        """The next `count` requests (with `verb`; all while `count` is None) answer `ERR code text` without acting."""
        if not code or any(ch.isspace() for ch in code):
            raise SimulatorError("an error code is one word")
        if count is not None and count < 1:
            raise SimulatorError("count is at least 1 (or None for until cleared)")
        self._forced_errors.append(_ForcedError(code, text, verb, count))

    def clear_faults(self) -> None:
        """Every fault knob back to normal behaviour (span alarms are traffic, not faults: they stay)."""
        self._forced_errors.clear()
        self.reply_delay_s = 0.0
        self.reply_delay_by_verb = {}
        self.silent = False
        self.ignore_pings = False
        self.split_writes = False
        self.events_before_replies = None

    async def send_junk(self) -> None:
        """A printable nonsense line, a line with non-printable bytes and a 2,000-byte line to every link."""
        for session in self._sessions:
            for line in JUNK_LINES:
                session.queue(line)
        await asyncio.sleep(0)

    async def drop_connections(self) -> None:
        """Abort every link (the pty's session restarts with a new banner); calls and recordings go on."""
        self._log.info("dropping links", count=len(self._sessions))
        await self._abort_sessions()

    # ---- sessions (called by _Session)

    def _session_opened(self, session: _Session) -> None:
        self._sessions.append(session)
        self._all_sessions.add(session)
        self._log.info("gateway connected", link=session.name, links=len(self._sessions))
        for line in self._replay():
            session.queue(line)
        self._notify()

    def _session_closed(self, session: _Session, exc: Exception | None) -> None:
        if session in self._sessions:
            self._sessions.remove(session)
            self._log.info("gateway disconnected", link=session.name, reason=str(exc) if exc else None)
        if session in self._all_sessions:
            self._all_sessions.discard(session)
            self._closed_framing_errors += session.framer.framing_errors
        self._notify()

    async def _abort_sessions(self) -> None:
        sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.abort()
        self._notify()
        closing = [session.closed for session in self._all_sessions if not session.closed.done()]
        if closing:
            await asyncio.wait(closing, timeout=CLOSE_TIMEOUT_S)

    def _replay(self) -> list[bytes]:
        lines = [p.encode_hello(len(self.channel_names), self.name)]
        for call in self.calls.values():
            lines.append(self._setup_event(call))
            if call.connected_at is not None:
                lines.append(self._connect_event(call))
            if call.rec_id is not None:
                lines.append(self._started_event(self.recordings[call.rec_id]))
        lines.append(self._event(p.EVT_SYNC, None, None, self.clock()))
        # Not part of the replay, but news for a gateway that just came: spans still in alarm.
        lines += [
            self._event(p.EVT_ALARM, str(span), state, self.clock()) for span, state in sorted(self.alarms.items())
        ]
        return lines

    # ---- requests

    def _on_line(self, session: _Session, line: str) -> None:
        try:
            request = p.parse_request_line(line)
        except p.ProtocolError as exc:
            tag = line.split(" ", 1)[0]
            if p.TAG_PATTERN.fullmatch(tag):  # tagged, so it gets an answer
                if not self.silent:
                    session.queue(p.encode_err(tag, p.SYNTAX, str(exc)))
            else:
                self.bad_lines += 1
                self._log.debug("ignoring line that is no request", link=session.name, line=line)
            return
        self.requests.append(request)
        self._notify()
        self._log.debug("request", link=session.name, tag=request.tag, verb=request.verb, args=request.args)
        if self.silent or (self.ignore_pings and request.verb == p.PING):
            return
        delay_s = self.reply_delay_by_verb.get(request.verb, self.reply_delay_s)
        forced = self._take_forced_error(request.verb)
        busy_channel: str | None = None
        if forced is not None:
            execute: Callable[[], _Outcome] = partial(_error, forced.code, forced.text)
        else:
            execute, busy_channel = self._plan(request)
            if busy_channel is not None and busy_channel in self._busy_channels:
                execute, busy_channel = (
                    partial(_error, p.BUSY, f"channel {busy_channel} is executing another command"),
                    None,
                )
        if delay_s <= 0:
            self._deliver(session, request, execute())
            return
        if busy_channel is not None:
            self._busy_channels.add(busy_channel)
        self._spawn(self._execute_later(session, request, execute, busy_channel, delay_s), f"request:{request.tag}")

    async def _execute_later(
        self,
        session: _Session,
        request: p.Request,
        execute: Callable[[], _Outcome],
        busy_channel: str | None,
        delay_s: float,
    ) -> None:
        try:
            await asyncio.sleep(delay_s)
            outcome = execute()
        finally:
            if busy_channel is not None:
                self._busy_channels.discard(busy_channel)
        self._deliver(session, request, outcome)

    def _plan(self, request: p.Request) -> tuple[Callable[[], _Outcome], str | None]:
        """Check a request's syntax and channel now; what it does runs when it is answered."""
        verb, args = request.verb, request.args
        if verb == p.PING:
            return (partial(_Outcome) if not args else partial(_error, p.SYNTAX, "PING takes no arguments")), None
        handlers = {p.START: self._do_start, p.STOP: self._do_stop, p.STATUS: self._do_status}
        if verb not in handlers and verb != p.DISCARD:
            return partial(_error, p.SYNTAX, f"unknown verb {verb}"), None
        if len(args) != 1:
            return partial(_error, p.SYNTAX, f"{verb} takes exactly one argument"), None
        if verb == p.DISCARD:
            return partial(self._do_discard, args[0]), None
        channel = args[0]
        if not p.CHANNEL_PATTERN.fullmatch(channel):
            return partial(_error, p.SYNTAX, f"bad channel {channel}"), None
        if channel not in self._span_by_channel:
            return partial(_error, p.BADCH, f"no channel {channel}"), None
        return partial(handlers[verb], channel, request), channel

    def _take_forced_error(self, verb: str) -> _ForcedError | None:
        for forced in self._forced_errors:
            if forced.verb is None or forced.verb == verb:
                if forced.remaining is not None:
                    forced.remaining -= 1
                    if forced.remaining == 0:
                        self._forced_errors.remove(forced)
                return forced
        return None

    def _deliver(self, session: _Session, request: p.Request, outcome: _Outcome) -> None:
        if outcome.error is None:
            reply = p.encode_ok(request.tag, **outcome.ok_fields)
        else:
            reply = p.encode_err(request.tag, *outcome.error)
        events_first = outcome.events_first if self.events_before_replies is None else self.events_before_replies
        if events_first:
            self._broadcast(*outcome.events)
        if session.transport is not None:
            session.queue(reply)
        if not events_first:
            self._broadcast(*outcome.events)

    def _do_start(self, channel: str, request: p.Request) -> _Outcome:
        span = self._span_by_channel[channel]
        if span in self.alarms:
            return _error(p.ALARM, f"span {span} {self.alarms[span]}")
        call = self.calls.get(channel)
        if call is None:
            return _error(p.NOCALL, f"no call on {channel}")
        if call.rec_id is not None:
            return _error(p.ALREADY, f"recording {call.rec_id}")
        recording, event = self._start_recording(call, request.fields.get(p.FIELD_REF))
        return _Outcome({p.FIELD_REC: recording.rec_id}, events=[event])

    def _do_stop(self, channel: str, request: p.Request) -> _Outcome:
        call = self.calls.get(channel)
        if call is None or call.rec_id is None:
            return _error(p.NOTREC, f"not recording on {channel}")
        recording = self.recordings[call.rec_id]
        event = self._stop_recording(call)
        return _Outcome(
            {p.FIELD_REC: recording.rec_id, p.FIELD_DUR: recording.duration_s}, events=[event], events_first=True
        )

    def _do_status(self, channel: str, request: p.Request) -> _Outcome:
        call = self.calls.get(channel)
        fields: dict[str, object] = {p.FIELD_STATE: self.channel_state(channel)}
        if call is not None:
            fields[p.FIELD_ID] = call.call_id
            fields[p.FIELD_REC] = call.rec_id
        return _Outcome(fields)

    def _do_discard(self, rec_id: str) -> _Outcome:
        recording = self.recordings.get(rec_id)
        if recording is None or recording.discarded or recording.running:
            reason = "unknown" if recording is None else "already discarded" if recording.discarded else "still running"
            return _error(p.NOREC, f"recording {rec_id} {reason}")
        recording.discarded = True
        self._log.info("recording discarded", rec_id=rec_id, channel=recording.channel)
        return _Outcome()

    # ---- state changes and their events

    def _start_recording(self, call: SimCall, ref: str | None) -> tuple[SimRecording, bytes]:
        rec_id = f"{REC_ID_PREFIX}{next(self._rec_numbers) % 10**REC_ID_DIGITS:0{REC_ID_DIGITS}d}"
        recording = SimRecording(rec_id, call.channel, call.call_id, self.clock(), ref=ref)
        self.recordings[rec_id] = recording
        call.rec_id = rec_id
        self._log.info("recording started", channel=call.channel, call_id=call.call_id, rec_id=rec_id, ref=ref)
        return recording, self._started_event(recording)

    def _stop_recording(self, call: SimCall) -> bytes:
        assert call.rec_id is not None
        recording = self.recordings[call.rec_id]
        recording.stopped_at = self.clock()
        recording.duration_s = max(0, round((recording.stopped_at - recording.started_at).total_seconds()))
        call.rec_id = None
        self._log.info(
            "recording stopped",
            channel=call.channel,
            call_id=call.call_id,
            rec_id=recording.rec_id,
            dur=recording.duration_s,
        )
        return self._event(
            p.EVT_REC,
            call.channel,
            p.REC_STOPPED,
            recording.stopped_at,
            **{p.FIELD_REC: recording.rec_id, p.FIELD_DUR: recording.duration_s},
        )

    def _event(self, kind: str, target: str | None, action: str | None, at: datetime, **fields: object) -> bytes:
        if self.send_timestamps:
            fields[p.FIELD_TS] = p.format_timestamp(at)
        return p.encode_event(kind, target, action, **fields)

    def _setup_event(self, call: SimCall) -> bytes:
        fields = {
            p.FIELD_ID: call.call_id,
            p.FIELD_CALLING: call.calling,
            p.FIELD_CALLED: call.called,
            p.FIELD_DIR: call.direction,
        }
        return self._event(p.EVT_CALL, call.channel, p.CALL_SETUP, call.started_at, **fields)

    def _connect_event(self, call: SimCall) -> bytes:
        assert call.connected_at is not None
        return self._event(p.EVT_CALL, call.channel, p.CALL_CONNECT, call.connected_at, **{p.FIELD_ID: call.call_id})

    def _started_event(self, recording: SimRecording) -> bytes:
        fields = {p.FIELD_REC: recording.rec_id, p.FIELD_ID: recording.call_id}
        return self._event(p.EVT_REC, recording.channel, p.REC_STARTED, recording.started_at, **fields)

    def _broadcast(self, *lines: bytes) -> None:
        for session in self._sessions:
            for line in lines:
                session.queue(line)

    # ---- helpers

    def _check_channel(self, channel: str) -> None:
        if channel not in self._span_by_channel:
            raise SimulatorError(f"no channel {channel}")

    def _call_on(self, channel: str) -> SimCall:
        self._check_channel(channel)
        call = self.calls.get(channel)
        if call is None:
            raise SimulatorError(f"no call on {channel}")
        return call

    def _notify(self) -> None:
        """Wake everyone waiting for a request or a link change."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, name)

    async def _traffic(self, calls_per_minute: float, rng: random.Random) -> None:
        while True:
            await asyncio.sleep(rng.expovariate(calls_per_minute / 60.0))
            idle = [
                ch for ch in self.channel_names if ch not in self.calls and self._span_by_channel[ch] not in self.alarms
            ]
            if not idle:
                continue
            call = self.place_call(
                rng.choice(idle),
                calling=f"0{rng.randrange(10**9, 10**10)}",
                called=str(rng.randrange(1000, 10000)),
                direction=p.DIR_OUT if rng.random() < TRAFFIC_OUTBOUND_SHARE else p.DIR_IN,
            )
            answered = rng.random() >= TRAFFIC_NO_ANSWER_SHARE
            answer_delay_s, duration_s = rng.uniform(*TRAFFIC_ANSWER_DELAY_S), rng.uniform(*TRAFFIC_DURATION_S)
            self._spawn(self._random_call(call, answered, answer_delay_s, duration_s), f"call:{call.call_id}")

    async def _random_call(self, call: SimCall, answered: bool, answer_delay_s: float, duration_s: float) -> None:
        await asyncio.sleep(answer_delay_s)
        if self.calls.get(call.channel) is not call:  # released by someone else meanwhile
            return
        if not answered:
            self.release(call.channel, CAUSE_NO_ANSWER)
            return
        self.answer(call.channel)
        await asyncio.sleep(duration_s)
        if self.calls.get(call.channel) is call:
            self.release(call.channel, CAUSE_NORMAL_CLEARING)


# ---- command line


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulators.trunkrec", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", type=_parse_listen, metavar="HOST:PORT", help="serve TRUNKREC/1 over TCP")
    where.add_argument("--pty", action="store_true", help="serve on a new pty and print its slave path")
    parser.add_argument("--channels", type=int, default=DEFAULT_CHANNELS)
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument(
        "--traffic", type=float, default=0.0, metavar="RATE", help="random calls per minute (default 0)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the random traffic")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


async def _run(args: argparse.Namespace) -> None:
    sim = TrunkRecorderSimulator(channels=args.channels, name=args.name, seed=args.seed)
    try:
        async with stop_on_signals() as stopping:
            if args.pty:
                print(await sim.open_pty(), flush=True)
            else:
                await sim.start_tcp(*args.listen)
            sim.start_traffic(args.traffic, seed=args.seed)
            await stopping.wait()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
