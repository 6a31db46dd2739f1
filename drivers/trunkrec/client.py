"""TRUNKREC/1 client driver: keeps one recorder link up forever, turns its events into gateway events,
and executes START/STOP/DISCARD for the recording policy (gateway.recording.RecorderControl)."""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import structlog

from drivers.backoff import BACKOFF_INITIAL_S, BACKOFF_MAX_S, Backoff
from drivers.connection.reconnect import OutageEvents, Reconnector, SessionEnd
from drivers.connection.serial import open_serial_connection
from drivers.connection.tcp import host_port, open_tcp_connection
from drivers.trunkrec import protocol as p
from gateway.config import RecorderConfig
from gateway.errors import RecorderError, RecorderNotConnected, RecorderTimeout
from gateway.events import (
    CallConnected,
    CallEnded,
    CallStarted,
    DriverEvent,
    RecorderSynced,
    RecordingStarted,
    RecordingStopped,
)
from gateway.model import Direction, utc_now

log = structlog.get_logger(__name__)

# A TCP connect or serial open that takes longer than this has failed (then: backoff, retry). An rfc2217:// device
# server negotiates in well under a second on a LAN.
CONNECT_TIMEOUT_S = 5.0
# close() waits this long for the connection to report itself closed: an rfc2217:// port's reader thread notices
# within its read poll (0.2 s); sockets and fd-based ports close at once.
CLOSE_TIMEOUT_S = 2.0
# The banner comes right after connecting; the state replay of a 60-channel device is a few
# hundred lines. Both are generous so that a slow serial line at 9600 baud still makes it.
HELLO_TIMEOUT_S = 5.0
SYNC_TIMEOUT_S = 30.0
# Liveness: a PING every `ping_interval` (RecorderConfig); this many consecutive unanswered requests mean the
# device is gone.
MAX_MISSED_REPLIES = 3
# Tags are "g" + a counter; 15 digits keep them within the 16-character limit for ~30 million years at 1,000/s.
TAG_PREFIX = "g"
TAG_MODULUS = 10**15

TCP_SCHEME = "tcp"
RECORDER_OUTAGE_EVENTS = OutageEvents(
    unreachable="recorder unreachable",
    still_unreachable="recorder still unreachable",
    lost="recorder link lost",
    lost_again="recorder link lost again",
    failed_unexpectedly="recorder connect failed unexpectedly",
)


class RecorderState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    SYNCING = "syncing"  # banner received, state replay in progress
    READY = "ready"


def _parse_direction(value: str | None) -> Direction:
    return {"in": Direction.IN, "out": Direction.OUT}.get((value or "").lower(), Direction.UNKNOWN)


def _parse_ts(value: str | None) -> datetime:
    """An event's `ts=` (ISO 8601 UTC), else the receive time."""
    if value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        except ValueError:
            log.debug("unparsable ts, using receive time", ts=value)
    return utc_now()


def _parse_seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class TrunkRecorderClient:
    """One TRUNKREC/1 device. `open()` starts the link manager; `close()` stops it and the link."""

    def __init__(
        self,
        config: RecorderConfig,
        submit: Callable[[DriverEvent], object],
        *,
        ping_interval_s: float | None = None,  # default: the recorder's `ping_interval`
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.name = config.name
        # Told when the link state, a span alarm or the missed-reply count changes (the event feed, the status page).
        self._on_change = on_change
        self.timeout_s = config.timeout_s
        self._config = config
        self._submit = submit
        self._ping_interval_s = config.ping_interval_s if ping_interval_s is None else ping_interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._log = log.bind(recorder=config.name)

        self.state = RecorderState.DISCONNECTED
        self.device_name: str | None = None
        self.device_channels: int | None = None
        self.span_alarms: dict[str, str] = {}  # span → LOS/LOF/AIS while in alarm
        self.connects = 0  # successful sessions (banner + sync) since open()
        self.protocol_errors = 0

        self._protocol: p.LineProtocol | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._manager: asyncio.Task[None] | None = None
        self._orphans: set[asyncio.Task[Any]] = set()  # serial opens still running after their wait was cancelled
        self._closing_link: asyncio.Future[None] | None = None  # `lost` of the last transport closed
        self._hello: asyncio.Future[p.Hello] | None = None
        self._synced: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        # Bumped at every connect and drop: lines from a connection that is no longer the current one (an rfc2217://
        # port hands over what its reader thread read while closing) are not the current session's.
        self._link_generation = 0
        self._pending: dict[str, asyncio.Future[p.Reply]] = {}
        self._channel_locks: dict[str, asyncio.Lock] = {}
        self._tags = itertools.count(1)
        self._missed_replies = 0
        self._replayed_calls: set[str] = set()
        self._replayed_recordings: set[str] = set()
        self._state_changed = asyncio.Event()

    # ---- RecorderControl

    @property
    def missed_replies(self) -> int:
        """Requests in a row the device let time out; 0 again at the next reply in time or a new session."""
        return self._missed_replies

    @property
    def connected(self) -> bool:
        return self.state is RecorderState.READY

    async def start(self, channel: str, ref: str | None = None) -> str:
        reply = await self.request(p.START, channel, channel=channel, ref=ref)
        return reply.fields.get("rec", "")

    async def stop(self, channel: str) -> str:
        reply = await self.request(p.STOP, channel, channel=channel)
        return reply.fields.get("rec", "")

    async def discard(self, recording_native_id: str) -> None:
        await self.request(p.DISCARD, recording_native_id)

    async def status(self, channel: str) -> dict[str, str]:
        return (await self.request(p.STATUS, channel, channel=channel)).fields

    def channel_in_alarm(self, channel: str) -> bool:
        return channel.partition("/")[0] in self.span_alarms

    # ---- requests

    def _next_tag(self) -> str:
        while True:
            tag = f"{TAG_PREFIX}{next(self._tags) % TAG_MODULUS}"
            if tag not in self._pending:
                return tag

    async def request(self, verb: str, *args: str, channel: str | None = None, **fields: object) -> p.Reply:
        """Send one request and wait for its reply; ERR → RecorderError(code), no reply in time → RecorderTimeout.

        The whole exchange, including waiting for the channel (one request per channel in flight),
        is bounded by the recorder's timeout.
        """
        if not self.connected:
            raise RecorderNotConnected(self.name)
        try:
            async with asyncio.timeout(self.timeout_s):
                lock = self._channel_locks.setdefault(channel, asyncio.Lock()) if channel else None
                if lock is not None:
                    await lock.acquire()
                try:
                    reply = await self._exchange(verb, args, fields)
                finally:
                    if lock is not None:
                        lock.release()
        except TimeoutError:
            self._reply_missed(verb)
            raise RecorderTimeout(self.name, self.timeout_s) from None
        if not reply.ok:
            raise RecorderError(reply.code or p.SYNTAX, reply.text)
        return reply

    async def _exchange(self, verb: str, args: tuple[str, ...], fields: dict[str, object]) -> p.Reply:
        protocol = self._protocol
        if protocol is None or not self.connected:
            raise RecorderNotConnected(self.name)
        tag = self._next_tag()
        future: asyncio.Future[p.Reply] = asyncio.get_running_loop().create_future()
        self._pending[tag] = future  # registered before the write: the reply may come at once
        try:
            try:
                protocol.send(p.encode_request(tag, verb, *args, **fields))
            except ConnectionError:
                raise RecorderNotConnected(self.name) from None
            return await future
        finally:
            self._pending.pop(tag, None)

    def _reply_missed(self, verb: str) -> None:
        self._missed_replies += 1
        self._log.warning("recorder did not answer", verb=verb, missed=self._missed_replies)
        self._changed()
        if self._missed_replies >= MAX_MISSED_REPLIES and self._transport is not None:
            self._log.warning("recorder unresponsive, reconnecting", missed=self._missed_replies)
            self._transport.close()

    # ---- life cycle

    async def open(self) -> None:
        if self._manager is None:
            self._manager = asyncio.create_task(self._run(), name=f"trunkrec-{self.name}")

    async def close(self) -> None:
        if self._manager is not None:
            self._manager.cancel()
            try:
                await self._manager
            except asyncio.CancelledError:
                pass
            self._manager = None
        self._drop_link()
        closing = self._closing_link
        if closing is not None and not closing.done():  # its reader task and port are gone before close() returns
            await asyncio.wait([closing], timeout=CLOSE_TIMEOUT_S)

    async def wait_ready(self, timeout_s: float) -> None:
        """For tests and start-up diagnostics: wait until the link is READY."""
        async with asyncio.timeout(timeout_s):
            while not self.connected:
                self._state_changed.clear()
                await self._state_changed.wait()

    def _set_state(self, state: RecorderState) -> None:
        self.state = state
        self._state_changed.set()
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:  # a watcher's bug must not take the recorder link down
                self._log.exception("recorder change listener failed")

    async def _run(self) -> None:
        """The link manager: connect (banner, replay) and watch the link, again and again, with backoff."""
        reconnector: Reconnector[asyncio.Future[None]] = Reconnector(
            self._log,
            RECORDER_OUTAGE_EVENTS,
            Backoff(self._backoff_initial_s, self._backoff_max_s),
            url=self._config.url,
        )
        await reconnector.run(self._connect_until_ready, self._serve)

    async def _connect_until_ready(self) -> asyncio.Future[None]:
        """Connects and waits for the banner and the state replay; returns the link's `lost` future."""
        try:
            await self._connect()
            return await self._session()
        except BaseException:
            self._drop_link()
            raise

    async def _serve(self, lost: asyncio.Future[None]) -> SessionEnd:
        """Pings until the link is lost. A session that reached ready proved the device good: the next attempt
        comes after the first backoff delay."""
        try:
            await self._watchdog(lost)
        finally:
            self._drop_link()
        return SessionEnd(proved_good=True)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._set_state(RecorderState.CONNECTING)
        self._hello = loop.create_future()
        self._synced = loop.create_future()
        self._lost = lost = loop.create_future()
        self._link_generation += 1
        generation = self._link_generation
        self._replayed_calls.clear()
        self._replayed_recordings.clear()
        self._missed_replies = 0

        def factory() -> p.LineProtocol:
            def on_line(line: str) -> None:
                if generation == self._link_generation:
                    self._on_line(line)

            def on_connection_lost(exc: Exception | None) -> None:
                if not lost.done():  # this connection's own future: a late close never ends a newer session
                    lost.set_result(None)

            return p.LineProtocol(on_line, on_connection_lost, name=self.name)

        url = self._config.url
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            if urlsplit(url).scheme == TCP_SCHEME:
                transport, protocol = await open_tcp_connection(factory, *host_port(url))
            else:  # a serial port: a path, rfc2217:// or socket:// (drivers/connection/serial.py)
                transport, protocol = await open_serial_connection(
                    factory, url, getattr(self._config, "serial", None), orphans=self._orphans
                )
        self._transport, self._protocol = transport, protocol

    async def _session(self) -> asyncio.Future[None]:
        """Banner, then replay until EVT SYNC, each under its timeout; READY then. Returns the `lost` future."""
        assert self._hello is not None and self._synced is not None and self._lost is not None
        lost = self._lost
        async with asyncio.timeout(HELLO_TIMEOUT_S):
            hello = await self._until_lost(self._hello, lost)
        self.device_name, self.device_channels = hello.name, hello.channels
        self._set_state(RecorderState.SYNCING)
        async with asyncio.timeout(SYNC_TIMEOUT_S):
            await self._until_lost(self._synced, lost)
        self.connects += 1
        self._set_state(RecorderState.READY)
        self._log.info("recorder connected", device=hello.name, channels=hello.channels, url=self._config.url)
        return lost

    @staticmethod
    async def _until_lost(awaited: asyncio.Future, lost: asyncio.Future[None]):
        done, _ = await asyncio.wait({awaited, lost}, return_when=asyncio.FIRST_COMPLETED)
        if awaited in done:
            return awaited.result()
        raise ConnectionError("connection lost")

    async def _watchdog(self, lost: asyncio.Future[None]) -> None:
        """PING every interval until the link is lost (three missed replies close it, see _reply_missed)."""
        while not lost.done():
            try:
                await asyncio.wait_for(asyncio.shield(lost), self._ping_interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self.request(p.PING)
            except RecorderTimeout:
                continue
            except RecorderError as error:
                self._log.debug("ping refused", code=error.code)

    def _drop_link(self) -> None:
        was_ready = self.state is RecorderState.READY
        self._link_generation += 1
        self._set_state(RecorderState.DISCONNECTED)
        if self._transport is not None:
            self._closing_link = self._lost
            self._transport.close()
        self._transport = self._protocol = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RecorderNotConnected(self.name))
                future.exception()  # the requester re-raises it; do not warn "never retrieved"
        self._pending.clear()
        if was_ready:
            self._log.debug("recorder link closed")

    # ---- incoming lines

    def _on_line(self, line: str) -> None:
        try:
            self._dispatch(p.parse_device_line(line))
        except p.ProtocolError as error:
            self.protocol_errors += 1
            self._log.warning("unparsable line from recorder", reason=str(error))

    def _dispatch(self, message: p.DeviceMessage) -> None:
        if isinstance(message, p.Reply):
            future = self._pending.get(message.tag)
            if future is not None and not future.done():
                # Only a reply in time proves the device alive: one that always answers after the timeout
                # would otherwise keep a link up on which every request fails.
                if self._missed_replies:
                    self._missed_replies = 0
                    self._changed()
                future.set_result(message)
            else:
                self._log.debug("reply to no pending request", tag=message.tag)
        elif isinstance(message, p.Event):
            self._on_event(message)
        elif isinstance(message, p.Hello):
            if message.version != p.PROTOCOL_VERSION:
                self._log.warning("unexpected protocol version", version=message.version)
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(message)

    def _on_event(self, event: p.Event) -> None:
        fields = event.fields
        at = _parse_ts(fields.get("ts"))
        channel = event.target or ""
        if event.kind == p.EVT_CALL:
            call_id = fields.get("id", "")
            if not call_id:
                raise p.ProtocolError("CALL event without id")
            if event.action == p.CALL_SETUP:
                self._replayed_calls.add(call_id)
                self._submit(
                    CallStarted(
                        self.name,
                        channel,
                        call_id,
                        fields.get("calling"),
                        fields.get("called"),
                        _parse_direction(fields.get("dir")),
                        at,
                    )
                )
            elif event.action == p.CALL_CONNECT:
                self._submit(CallConnected(self.name, channel, call_id, at))
            elif event.action == p.CALL_RELEASE:
                self._replayed_calls.discard(call_id)
                self._submit(CallEnded(self.name, channel, call_id, at, fields.get("cause")))
        elif event.kind == p.EVT_REC:
            recording_id = fields.get("rec", "")
            if event.action == p.REC_STARTED:
                self._replayed_recordings.add(recording_id)
                self._submit(RecordingStarted(self.name, channel, recording_id, fields.get("id"), at))
            elif event.action == p.REC_STOPPED:
                self._replayed_recordings.discard(recording_id)
                self._submit(RecordingStopped(self.name, channel, recording_id, at, _parse_seconds(fields.get("dur"))))
        elif event.kind == p.EVT_ALARM:
            self._on_alarm(event.target or "", event.action or "")
        elif event.kind == p.EVT_SYNC:
            self._submit(
                RecorderSynced(self.name, frozenset(self._replayed_calls), at, frozenset(self._replayed_recordings))
            )
            if self._synced is not None and not self._synced.done():
                self._synced.set_result(None)

    def _on_alarm(self, span: str, state: str) -> None:
        if state == p.ALARM_CLEAR:
            if self.span_alarms.pop(span, None) is not None:
                self._log.info("span alarm cleared", span=span)
        elif state in p.ALARM_STATES:
            if self.span_alarms.get(span) != state:
                self._log.warning("span alarm", span=span, alarm=state)
            self.span_alarms[span] = state
        self._changed()
