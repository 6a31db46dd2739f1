"""Line transports: the framer on its own, then listen://, tcp:// and serial links over real loopback sockets
and ptys (no sleeping: every wait is for something the link reports, under a timeout)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import tty
from datetime import datetime, timezone
from pathlib import Path

import pytest

from drivers import transport as transport_module
from drivers.connection import lines as lines_module
from drivers.transport import (
    DO,
    DONT,
    IAC,
    SB,
    SE,
    WILL,
    WONT,
    FramedLine,
    LineFramer,
    ListenLineTransport,
    SerialLineTransport,
    TcpLineTransport,
    create_transport,
)
from gateway.config import LinkConfig, LoginStep
from gateway.events import LinkState

WAIT_S = 5.0  # generous upper bound for anything that should happen at once on loopback
QUIET_S = 0.3  # how long "nothing happens" is watched for
FAST_BACKOFF = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}
AT = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
TOO_LONG = "line longer than 4096 bytes"
PARTIAL = "partial line at disconnect"
# A peer that is down this long has pushed the doubling reconnect delay past a second.
OUTAGE_S = 3.0
# The promise (docs/reliability.md): a link is up this soon after its peer is back.
UP_AFTER_PEER_RETURNS_S = 1.0
# What a loaded CI machine may add to a timer before the loop runs it.
SCHEDULING_SLACK_S = 0.5


# ---- framer


def frame(*reads: bytes, **kwargs) -> list[bytes]:
    framer = LineFramer(**kwargs)
    lines: list[FramedLine] = []
    for data in reads:
        lines += framer.feed(data, AT)
    return [line.raw for line in lines]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"A1\r\nB2\r\n", [b"A1", b"B2"]),
        (b"A1\nB2\n", [b"A1", b"B2"]),
        (b"A1\rB2\r", [b"A1", b"B2"]),
        (b"A1\r\n\nB2\r\n\n", [b"A1", b"B2"]),
        (b"A1\n\r\r\n\r\nB2\n", [b"A1", b"B2"]),
        (b"REC1\x00REC2\x00", [b"REC1", b"REC2"]),
        (b"\x00\x00\x00REC1\r\n\x00\x00REC2\r\n", [b"REC1", b"REC2"]),
        (b"\x0cPAGE 1\r\n\x0c\r\nA\x0cB\r\n", [b"PAGE 1", b"AB"]),
        (b"  12 34  \r\n", [b"  12 34  "]),
        (b"\r\n\r\n\n\r", []),
    ],
)
def test_framer_boundaries(stream: bytes, expected: list[bytes]) -> None:
    assert frame(stream) == expected


STREAM = b"\x00\x0c  first 1\r\n\nsecond\rthird\x00\x00fourth\r\n\x0cfifth \n"
STREAM_LINES = [b"  first 1", b"second", b"third", b"fourth", b"fifth "]


@pytest.mark.parametrize("split", range(1, len(STREAM)))
def test_framer_split_anywhere(split: int) -> None:
    assert frame(STREAM[:split], STREAM[split:]) == STREAM_LINES


def test_framer_byte_by_byte() -> None:
    assert frame(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == STREAM_LINES


def test_framer_line_at_limit_is_fine() -> None:
    line = b"x" * 4096
    assert frame(line + b"\r\n") == [line]
    assert frame(line[:1000], line[1000:], b"\n") == [line]


def test_framer_overlong_line_is_one_error_line_then_framing_resumes() -> None:
    framer = LineFramer()
    long_line = bytes(range(32, 127)) * 64  # 6,080 bytes
    lines = []
    for start in range(0, len(long_line), 1000):  # arrives in pieces, the error comes before its end
        lines += framer.feed(long_line[start : start + 1000], AT, "p")
    assert [(line.raw, line.error) for line in lines] == [(long_line[:4096], TOO_LONG)]
    lines = framer.feed(b"\r\nNEXT OK\r\n", AT, "p")
    assert [(line.raw, line.error) for line in lines] == [(b"NEXT OK", None)]
    assert framer.end(AT) == []


def test_framer_overlong_by_one_byte() -> None:
    framer = LineFramer()
    lines = framer.feed(b"y" * 4097 + b"\nz\n", AT)
    assert [(line.raw, line.error) for line in lines] == [(b"y" * 4096, TOO_LONG), (b"z", None)]


def test_framer_partial_line_at_end() -> None:
    framer = LineFramer()
    assert framer.feed(b"DONE\r\nPART", AT, "peer1") == [FramedLine(b"DONE", AT, "peer1")]
    later = datetime(2024, 5, 1, 12, 1, tzinfo=timezone.utc)
    assert framer.end(later, "peer1") == [FramedLine(b"PART", later, "peer1", error=PARTIAL)]
    assert framer.end(later) == []
    assert framer.feed(b"AGAIN\n", AT) == [FramedLine(b"AGAIN", AT, "")]


def test_framer_line_carries_time_and_peer() -> None:
    (line,) = LineFramer().feed(b"A\r\n", AT, "10.0.0.1:2300")
    assert line == FramedLine(b"A", AT, "10.0.0.1:2300", None)
    assert line.received_at.tzinfo is not None


TELNET_STREAM = (
    bytes((IAC, WILL, 1, IAC, WILL, 3))
    + b"Log"
    + bytes((IAC, DO, 24, IAC, DONT, 5, IAC, WONT, 6))
    + b"in:"
    + bytes((IAC, SB, 24, 1, IAC, IAC, 7, IAC, SE))
    + b" A"
    + bytes((IAC, IAC))
    + b"B"
    + bytes((IAC, 0xF1))  # NOP
    + b"\r\n"
)
TELNET_REPLIES = bytes((IAC, DONT, 1, IAC, DONT, 3, IAC, WONT, 24))


def test_telnet_sequences_are_removed_and_options_refused() -> None:
    replies: list[bytes] = []
    assert frame(TELNET_STREAM, telnet=True, on_telnet_reply=replies.append) == [b"Login: A\xffB"]
    assert b"".join(replies) == TELNET_REPLIES


@pytest.mark.parametrize("split", range(1, len(TELNET_STREAM)))
def test_telnet_sequences_split_anywhere(split: int) -> None:
    replies: list[bytes] = []
    lines = frame(TELNET_STREAM[:split], TELNET_STREAM[split:], telnet=True, on_telnet_reply=replies.append)
    assert lines == [b"Login: A\xffB"]
    assert b"".join(replies) == TELNET_REPLIES


def test_telnet_byte_by_byte_and_off_by_default() -> None:
    replies: list[bytes] = []
    chunks = [TELNET_STREAM[i : i + 1] for i in range(len(TELNET_STREAM))]
    assert frame(*chunks, telnet=True, on_telnet_reply=replies.append) == [b"Login: A\xffB"]
    assert b"".join(replies) == TELNET_REPLIES
    assert frame(b"\xff\xfbA\r\n") == [b"\xff\xfbA"]  # not a telnet link: bytes are data


def test_telnet_runaway_subnegotiation_gives_its_bytes_back() -> None:
    data = bytes((IAC, SB)) + b"R" * 600 + b"\r\nNEXT\r\n"
    lines = frame(data, telnet=True)
    assert lines[-1] == b"NEXT"
    assert sum(len(line) for line in lines[:-1]) >= 600 - transport_module.MAX_SUBNEGOTIATION_BYTES


# ---- helpers for the links


class Sink:
    """The `deliver` callback: records batches; tests await lines from its queue. `gate` can hold deliveries."""

    def __init__(self) -> None:
        self.batches: list[list[FramedLine]] = []
        self.lines: asyncio.Queue[FramedLine] = asyncio.Queue()
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, lines: list[FramedLine]) -> None:
        self.entered.set()
        await self.gate.wait()
        self.batches.append(lines)
        for line in lines:
            self.lines.put_nowait(line)

    async def next(self) -> FramedLine:
        return await asyncio.wait_for(self.lines.get(), WAIT_S)

    async def take(self, count: int) -> list[FramedLine]:
        async def lines() -> list[FramedLine]:
            return [await self.lines.get() for _ in range(count)]

        return await asyncio.wait_for(lines(), WAIT_S)


class States:
    def __init__(self) -> None:
        self.seen: list[LinkState] = []
        self._queue: asyncio.Queue[LinkState] = asyncio.Queue()

    def __call__(self, state: LinkState) -> None:
        self.seen.append(state)
        self._queue.put_nowait(state)

    async def wait(self, state: LinkState) -> None:
        async def until() -> None:
            while await self._queue.get() is not state:
                pass

        await asyncio.wait_for(until(), WAIT_S)


def link(url: str, **kwargs) -> LinkConfig:
    return LinkConfig(name="pbx-test", format="avaya-ipo", url=url, **kwargs)


class FakePbx:
    """A TCP server the gateway connects to; each accepted connection is handed to the test through a queue."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> FakePbx:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            self.accepted.put_nowait((reader, writer))

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(self.accepted.get(), WAIT_S)

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def pbx():
    server = await FakePbx().start()
    yield server
    await server.stop()


async def read_until(reader: asyncio.StreamReader, text: bytes) -> bytes:
    return await asyncio.wait_for(reader.readuntil(text), WAIT_S)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


def assert_tcp_keepalive(link_transport) -> None:
    """Every open connection of the link has TCP keepalive on (60 s idle, 10 s interval, 3 probes)."""
    sockets = [connection.transport.get_extra_info("socket") for connection in link_transport._live]
    assert sockets
    for sock in sockets:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


# ---- listen://


async def test_listen_two_pbx_connections_keep_their_bytes_apart(unused_tcp_port: int) -> None:
    sink, states = Sink(), States()
    link_transport = create_transport(
        link(f"listen://127.0.0.1:{unused_tcp_port}"), sink, on_state=states, **FAST_BACKOFF
    )
    assert isinstance(link_transport, ListenLineTransport)
    await link_transport.open()
    try:
        await states.wait(LinkState.UP)
        assert link_transport.connections == 0  # listening is UP: between bursts no PBX is connected
        _, writer_a = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        _, writer_b = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        for writer, data in ((writer_a, b"AAA"), (writer_b, b"BBB"), (writer_a, b"111\r"), (writer_b, b"222\r\n")):
            writer.write(data)
            await writer.drain()
        writer_a.write(b"\nA2\r\n")
        lines = await sink.take(3)
        by_raw = {line.raw: line for line in lines}
        assert set(by_raw) == {b"AAA111", b"BBB222", b"A2"}
        assert by_raw[b"AAA111"].peer == by_raw[b"A2"].peer == "127.0.0.1:%d" % writer_a.get_extra_info("sockname")[1]
        assert by_raw[b"BBB222"].peer == "127.0.0.1:%d" % writer_b.get_extra_info("sockname")[1]
        assert all(line.error is None for line in lines)
        assert link_transport.connections == 2
        assert_tcp_keepalive(link_transport)

        # The PBX hangs up in mid-record and reconnects for its next burst (IP Office send mode).
        writer_a.write(b"HALF")
        await writer_a.drain()
        await close_writer(writer_a)
        partial_line = await sink.next()
        assert (partial_line.raw, partial_line.error) == (b"HALF", PARTIAL)
        _, writer_c = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer_c.write(b"CCC\r\n")
        assert (await sink.next()).raw == b"CCC"
        assert link_transport.connections == 2
        assert link_transport.state is LinkState.UP
        await close_writer(writer_b)
        await close_writer(writer_c)
    finally:
        await link_transport.close()
    assert link_transport.state is LinkState.DOWN
    assert states.seen == [LinkState.UP, LinkState.DOWN]


async def test_listen_retries_a_port_it_cannot_bind(unused_tcp_port: int) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", unused_tcp_port))
    blocker.listen()
    sink, states = Sink(), States()
    link_transport = create_transport(
        link(f"listen://127.0.0.1:{unused_tcp_port}"), sink, on_state=states, **FAST_BACKOFF
    )
    await link_transport.open()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(states.wait(LinkState.UP), QUIET_S)
        assert link_transport.state is LinkState.DOWN
        blocker.close()
        await states.wait(LinkState.UP)
        _, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(b"AFTER BIND\r\n")
        assert (await sink.next()).raw == b"AFTER BIND"
        await close_writer(writer)
    finally:
        blocker.close()
        await link_transport.close()


async def test_close_delivers_the_partial_line_as_an_error_line(unused_tcp_port: int) -> None:
    sink, states = Sink(), States()
    link_transport = create_transport(
        link(f"listen://127.0.0.1:{unused_tcp_port}"), sink, on_state=states, **FAST_BACKOFF
    )
    await link_transport.open()
    writer = None
    try:
        await states.wait(LinkState.UP)
        _, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(b"WHOLE\r\nPART")
        await writer.drain()
        assert (await sink.next()).raw == b"WHOLE"
    finally:
        await link_transport.close()
    last = sink.batches[-1][-1]
    assert (last.raw, last.error) == (b"PART", PARTIAL)
    await link_transport.close()  # idempotent
    if writer is not None:
        await close_writer(writer)


# ---- tcp://


async def test_tcp_login_steps_with_telnet(pbx: FakePbx) -> None:
    config = link(
        f"tcp://127.0.0.1:{pbx.port}",
        login=(LoginStep(expect="Login:", send="SMDR"), LoginStep(expect="Enter password:", send="PCCSMDR")),
    )
    sink, states = Sink(), States()
    link_transport = create_transport(config, sink, on_state=states, **FAST_BACKOFF)
    assert isinstance(link_transport, TcpLineTransport)
    await link_transport.open()
    try:
        reader, writer = await pbx.connection()
        writer.write(bytes((IAC, WILL, 1, IAC, DO, 31)) + b"\r\n-------- SMDR --------\r\nLog")
        writer.write(b"in: ")
        assert await read_until(reader, b"SMDR\r\n") == bytes((IAC, DONT, 1, IAC, WONT, 31)) + b"SMDR\r\n"
        assert link_transport.state is LinkState.DOWN  # not UP before the login is done
        writer.write(b"\r\nEnter pass" + bytes((IAC, IAC)) + b"word: ")  # 0xFF in a prompt: not this prompt
        writer.write(b"\r\nEnter password: ")
        assert await read_until(reader, b"\r\n") == b"PCCSMDR\r\n"
        await states.wait(LinkState.UP)
        writer.write(b"\r\n 01/05/24 10:02AM  101 01 0123456789  00:00'12\r\n")
        line = await sink.next()
        assert line.raw == b" 01/05/24 10:02AM  101 01 0123456789  00:00'12"  # leading space kept
        assert len(sink.batches) == 1  # no prompt text was delivered
        assert link_transport.connections == 1
    finally:
        await link_transport.close()
    assert states.seen == [LinkState.UP, LinkState.DOWN]


async def test_tcp_login_timeout_reconnects(pbx: FakePbx, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lines_module, "LOGIN_STEP_TIMEOUT_S", 0.1)
    config = link(f"tcp://127.0.0.1:{pbx.port}", login=(LoginStep(expect="Login:", send="SMDR"),))
    sink = Sink()
    link_transport = create_transport(config, sink, **FAST_BACKOFF)
    await link_transport.open()
    try:
        reader1, writer1 = await pbx.connection()
        writer1.write(b"Password:")  # not the prompt the link waits for
        assert await asyncio.wait_for(reader1.read(), WAIT_S) == b""  # the link gave up and hung up
        reader2, writer2 = await pbx.connection()
        writer2.write(b"Login:")
        assert await read_until(reader2, b"\r\n") == b"SMDR\r\n"
        writer2.write(b"REC\r\n")
        assert (await sink.next()).raw == b"REC"
    finally:
        await link_transport.close()


async def test_tcp_reconnects_after_the_server_closes(pbx: FakePbx) -> None:
    sink, states = Sink(), States()
    link_transport = create_transport(link(f"tcp://127.0.0.1:{pbx.port}"), sink, on_state=states, **FAST_BACKOFF)
    await link_transport.open()
    try:
        _, writer1 = await pbx.connection()
        await states.wait(LinkState.UP)
        writer1.write(b"FIRST\r\nLAST WORD")
        await writer1.drain()
        await close_writer(writer1)
        assert (await sink.next()).raw == b"FIRST"
        partial_line = await sink.next()
        assert (partial_line.raw, partial_line.error) == (b"LAST WORD", PARTIAL)
        await states.wait(LinkState.DOWN)
        _, writer2 = await pbx.connection()
        await states.wait(LinkState.UP)
        assert_tcp_keepalive(link_transport)
        writer2.write(b"SECOND\r\n")
        line = await sink.next()
        assert line.raw == b"SECOND"
        assert line.peer == f"127.0.0.1:{pbx.port}"
    finally:
        await link_transport.close()
    assert states.seen == [LinkState.UP, LinkState.DOWN, LinkState.UP, LinkState.DOWN]


async def test_a_connection_reset_mid_line_never_glues_the_fragment_to_the_next_connection(pbx: FakePbx) -> None:
    sink, states = Sink(), States()
    link_transport = create_transport(link(f"tcp://127.0.0.1:{pbx.port}"), sink, on_state=states, **FAST_BACKOFF)
    await link_transport.open()
    try:
        _, writer1 = await pbx.connection()
        writer1.write(b"WHOLE\r\nHALF OF A REC")
        await writer1.drain()
        assert (await sink.next()).raw == b"WHOLE"
        sock = writer1.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        writer1.transport.abort()
        fragment = await sink.next()
        assert (fragment.raw, fragment.error) == (b"HALF OF A REC", PARTIAL)
        _, writer2 = await pbx.connection()
        writer2.write(b"ORD AFTER RESET\r\n")
        assert (await sink.next()).raw == b"ORD AFTER RESET"  # a line of its own, never "HALF OF A RECORD…"
    finally:
        await link_transport.close()


async def test_a_link_is_up_within_a_second_of_its_peer_returning_after_a_long_outage(unused_tcp_port: int) -> None:
    sink, states = Sink(), States()
    # Default delays (doubling from 0.1 s to 30 s), started a little further along so the test stays short.
    link_transport = create_transport(
        link(f"tcp://127.0.0.1:{unused_tcp_port}"), sink, on_state=states, backoff_initial_s=0.4
    )
    loop = asyncio.get_running_loop()
    await link_transport.open()
    try:
        await asyncio.sleep(OUTAGE_S)  # refused again and again: the doubling delay alone would be 3.2 s by now
        accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
        server = await asyncio.start_server(lambda _r, w: accepted.put_nowait(w), "127.0.0.1", unused_tcp_port)
        returned_at = loop.time()
        async with server:
            writer = await asyncio.wait_for(accepted.get(), WAIT_S)
            await states.wait(LinkState.UP)
            up_after_s = loop.time() - returned_at
            writer.close()
            await link_transport.close()
    finally:
        await link_transport.close()
    assert up_after_s <= UP_AFTER_PEER_RETURNS_S + SCHEDULING_SLACK_S


async def test_tcp_keeps_retrying_while_nothing_listens(unused_tcp_port: int) -> None:
    sink, states = Sink(), States()
    link_transport = create_transport(link(f"tcp://127.0.0.1:{unused_tcp_port}"), sink, on_state=states, **FAST_BACKOFF)
    await link_transport.open()
    try:
        accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
        server = await asyncio.start_server(lambda _r, w: accepted.put_nowait(w), "127.0.0.1", unused_tcp_port)
        async with server:
            writer = await asyncio.wait_for(accepted.get(), WAIT_S)
            await states.wait(LinkState.UP)
            writer.write(b"LATE START\r\n")
            assert (await sink.next()).raw == b"LATE START"
            writer.close()
            await link_transport.close()
    finally:
        await link_transport.close()


async def test_tcp_idle_timeout_reconnects_and_keepalive_is_sent(pbx: FakePbx) -> None:
    config = link(f"tcp://127.0.0.1:{pbx.port}", options={"idle_timeout": 0.4, "keepalive": "\n"})
    sink = Sink()
    link_transport = create_transport(config, sink, **FAST_BACKOFF)
    await link_transport.open()
    try:
        reader1, writer1 = await pbx.connection()
        writer1.write(b"ONE\r\n")
        assert (await sink.next()).raw == b"ONE"
        # Quiet: the keepalive goes out halfway, then the link gives up on this connection and reconnects.
        assert await asyncio.wait_for(reader1.readexactly(1), WAIT_S) == b"\n"
        assert await asyncio.wait_for(reader1.read(), WAIT_S) == b""
        _, writer2 = await pbx.connection()
        writer2.write(b"TWO\r\n")
        assert (await sink.next()).raw == b"TWO"
    finally:
        await link_transport.close()


async def test_slow_delivery_pauses_reading(pbx: FakePbx) -> None:
    sink = Sink()
    sink.gate.clear()  # the store is stuck
    link_transport = create_transport(link(f"tcp://127.0.0.1:{pbx.port}"), sink, **FAST_BACKOFF)
    await link_transport.open()
    try:
        _, writer = await pbx.connection()
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 131072)
        record = b"R" * 98 + b"\r\n"
        count = 40_000  # 4 MB: far more than the socket buffers hold while the link does not read
        writer.write(record * count)
        await asyncio.wait_for(sink.entered.wait(), WAIT_S)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(writer.drain()), QUIET_S)
        assert sink.batches == []  # one delivery under way, nothing else read meanwhile
        sink.gate.set()
        lines = await sink.take(count)
        assert {line.raw for line in lines} == {record[:-2]}
        await asyncio.wait_for(writer.drain(), WAIT_S)
    finally:
        await link_transport.close()


async def test_a_failing_deliver_does_not_stop_the_link(pbx: FakePbx) -> None:
    delivered: asyncio.Queue[bytes] = asyncio.Queue()
    failed = asyncio.Event()

    async def deliver(lines: list[FramedLine]) -> None:
        for line in lines:
            if line.raw == b"BOOM":
                failed.set()
                raise RuntimeError("store failed")
            delivered.put_nowait(line.raw)

    link_transport = create_transport(link(f"tcp://127.0.0.1:{pbx.port}"), deliver, **FAST_BACKOFF)
    await link_transport.open()
    try:
        _, writer = await pbx.connection()
        writer.write(b"BOOM\r\n")
        await asyncio.wait_for(failed.wait(), WAIT_S)
        writer.write(b"FINE\r\n")
        assert await asyncio.wait_for(delivered.get(), WAIT_S) == b"FINE"
        assert link_transport.connections == 1
    finally:
        await link_transport.close()


# ---- serial


class Pty:
    """A pseudo-terminal standing in for a PBX's serial port: the test writes to the master side."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(self.master)
        self.slave_path = os.ttyname(slave)
        os.close(slave)
        self.open = True

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.open:
            os.close(self.master)
            self.open = False


def point(link_path: Path, target: str) -> None:
    temporary = link_path.with_name(link_path.name + ".new")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, link_path)


async def test_serial_pty_cr_only_lines(tmp_path: Path) -> None:
    pty_port = Pty()
    link_path = tmp_path / "ttyPBX"
    point(link_path, pty_port.slave_path)
    sink, states = Sink(), States()
    link_transport = create_transport(link(str(link_path)), sink, on_state=states, **FAST_BACKOFF)
    assert isinstance(link_transport, SerialLineTransport)
    await link_transport.open()
    try:
        await states.wait(LinkState.UP)
        pty_port.write(b"\x00\x00STN 101 \rSTN 102\r\x0cSTN")
        pty_port.write(b" 103\r")
        lines = await sink.take(3)
        assert [line.raw for line in lines] == [b"STN 101 ", b"STN 102", b"STN 103"]
        assert {line.peer for line in lines} == {str(link_path)}
    finally:
        await link_transport.close()
        pty_port.close()


async def test_serial_device_vanishes_and_reappears(tmp_path: Path) -> None:
    first = Pty()
    link_path = tmp_path / "ttyPBX"
    point(link_path, first.slave_path)
    sink, states = Sink(), States()
    link_transport = create_transport(link(str(link_path)), sink, on_state=states, **FAST_BACKOFF)
    await link_transport.open()
    second = None
    try:
        await states.wait(LinkState.UP)
        first.write(b"ONE\r\nPAR")
        assert (await sink.next()).raw == b"ONE"
        first.close()  # unplugged
        await states.wait(LinkState.DOWN)
        partial_line = await sink.next()
        assert (partial_line.raw, partial_line.error) == (b"PAR", PARTIAL)
        second = Pty()  # plugged in again, as another device node behind the same by-id path
        point(link_path, second.slave_path)
        await states.wait(LinkState.UP)
        second.write(b"TWO\r")
        assert (await sink.next()).raw == b"TWO"
    finally:
        await link_transport.close()
        first.close()
        if second is not None:
            second.close()
    assert states.seen == [LinkState.UP, LinkState.DOWN, LinkState.UP, LinkState.DOWN]


async def test_serial_missing_device_is_retried(tmp_path: Path) -> None:
    link_path = tmp_path / "ttyUSB-missing"
    sink, states = Sink(), States()
    link_transport = create_transport(link(str(link_path)), sink, on_state=states, **FAST_BACKOFF)
    await link_transport.open()
    pty_port = Pty()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(states.wait(LinkState.UP), QUIET_S)
        point(link_path, pty_port.slave_path)
        await states.wait(LinkState.UP)
        pty_port.write(b"HELLO\n")
        assert (await sink.next()).raw == b"HELLO"
    finally:
        await link_transport.close()
        pty_port.close()


async def test_socket_url_serial_device_server(pbx: FakePbx) -> None:
    sink = Sink()
    link_transport = create_transport(link(f"socket://127.0.0.1:{pbx.port}"), sink, **FAST_BACKOFF)
    assert isinstance(link_transport, SerialLineTransport)
    await link_transport.open()
    try:
        _, writer = await pbx.connection()
        writer.write(b"VIA DEVICE SERVER\r")
        line = await sink.next()
        assert (line.raw, line.peer) == (b"VIA DEVICE SERVER", f"socket://127.0.0.1:{pbx.port}")
        await close_writer(writer)  # the device server drops the link: reconnect
        _, writer2 = await pbx.connection()
        writer2.write(b"AGAIN\r")
        assert (await sink.next()).raw == b"AGAIN"
    finally:
        await link_transport.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pySerial's rfc2217 module uses Thread.setDaemon
async def test_rfc2217_device_server() -> None:
    import serial
    from serial import rfc2217

    managers: list[rfc2217.PortManager] = []
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
    ports: list[serial.Serial] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = serial.serial_for_url("loop://")
        ports.append(port)
        manager = rfc2217.PortManager(port, writer)  # answers the client's telnet/RFC 2217 negotiation
        managers.append(manager)
        accepted.put_nowait(writer)
        while data := await reader.read(1024):
            for _ in manager.filter(data):
                pass

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port_number = server.sockets[0].getsockname()[1]
    sink, states = Sink(), States()
    link_transport = create_transport(link(f"rfc2217://127.0.0.1:{port_number}"), sink, on_state=states, **FAST_BACKOFF)
    await link_transport.open()
    try:
        writer = await asyncio.wait_for(accepted.get(), WAIT_S)
        await states.wait(LinkState.UP)
        writer.write(b"".join(managers[0].escape(b"RFC2217 \xff LINE\r\n")))
        line = await sink.next()
        assert line.raw == b"RFC2217 \xff LINE"
    finally:
        await link_transport.close()
        server.close()
        while not accepted.empty():
            accepted.get_nowait()
        for manager in managers:
            await close_writer(manager.connection)
        await server.wait_closed()
        for port in ports:
            port.close()
