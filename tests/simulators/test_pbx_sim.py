"""The PBX simulator against the gateway's own link transports (listen://, tcp:// with login, serial on a pty)
and parsers, over real loopback sockets and ptys; every wait is for something that happens, under a timeout."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from drivers.smdr import create_parser
from drivers.transport import FramedLine, LineFramer, create_transport
from gateway.config import LinkConfig
from gateway.config import LoginStep as GatewayLoginStep
from gateway.events import LinkState
from simulators import pbx as pbx_module
from simulators.pbx import PbxSimulator, PbxSimulatorError, call_end, parse_extensions
from simulators.pbx_records import FORMATS, PROFILES, record_lines
from simulators.traffic import DIRECTION_IN, DIRECTION_INTERNAL, DIRECTION_OUT, CompletedCall, PlannedCall

WAIT_S = 5.0  # generous upper bound for anything that should happen at once on loopback
FAST_BACKOFF = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}
TZ_NAME = "Europe/Budapest"
TZ = ZoneInfo(TZ_NAME)
ROOT = Path(__file__).resolve().parents[2]
DAY = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)


# ---- helpers


def make_call(
    index: int, direction: str = DIRECTION_IN, *, answered: bool = True, transfer: bool = False
) -> CompletedCall:
    """A call of the site's day: one every 2 minutes, on extensions 2001…2009."""
    extension = f"200{index % 9 + 1}"
    other = {DIRECTION_IN: "06301234567", DIRECTION_OUT: "0036123456789", DIRECTION_INTERNAL: "2010"}[direction]
    plan = PlannedCall(
        at_s=index * 120.0,
        direction=direction,
        extension=extension,
        other=other,
        ring_s=6.0,
        talk_s=65.0 if answered else 0.0,
        transfer_to="2011" if transfer else None,
        transfer_talk_s=30.0 if transfer else 0.0,
        caller_name="Kovacs Anna" if direction == DIRECTION_IN else None,
    )
    return CompletedCall(
        plan=plan,
        pbx_call_id=1_000_020_000 + index,
        start=DAY + timedelta(seconds=plan.at_s),
        trunk="" if direction == DIRECTION_INTERNAL else str(9001 + index % 30),
    )


MIXED_CALLS = [
    make_call(0),
    make_call(1, DIRECTION_OUT),
    make_call(2, DIRECTION_INTERNAL),
    make_call(3, answered=False),
    make_call(4, transfer=True),
]


def wire(sim: PbxSimulator, lines: list[str]) -> bytes:
    ending = sim.profile.line_ending
    return b"".join(line.encode("latin-1", errors="replace") + ending for line in lines)


def raw_lines(lines: list[str]) -> list[bytes]:
    return [line.encode("latin-1") for line in lines]


def framed(data: bytes) -> list[bytes]:
    """What the gateway's framer makes of a byte stream read in one piece."""
    framer = LineFramer()
    return [line.raw for line in framer.feed(data, DAY)] + [line.raw for line in framer.end(DAY)]


def link(url: str, fmt: str = "avaya-ipo", **kwargs) -> LinkConfig:
    options = dict(PROFILES[fmt].gateway_options)  # what a link needs to read this PBX (custom's layout, Mitel's clock)
    return LinkConfig(name="pbx-test", format=fmt, url=url, timezone=TZ_NAME, options=options, **kwargs)


def gateway_login(fmt: str, *, password: str | None = None) -> tuple[GatewayLoginStep, ...]:
    """The gateway's login steps for the format's PBX: wait for each prompt, answer what the PBX expects."""
    steps = PROFILES[fmt].login
    answers = [step.expect for step in steps]
    if password is not None:
        answers[-1] = password
    return tuple(GatewayLoginStep(expect=step.prompt.strip(), send=answer) for step, answer in zip(steps, answers))


class Sink:
    """The transport's `deliver` callback: tests await framed lines from its queue."""

    def __init__(self) -> None:
        self.lines: asyncio.Queue[FramedLine] = asyncio.Queue()
        self.seen: list[FramedLine] = []

    async def __call__(self, lines: list[FramedLine]) -> None:
        for line in lines:
            self.seen.append(line)
            self.lines.put_nowait(line)

    async def take(self, count: int) -> list[FramedLine]:
        async def lines() -> list[FramedLine]:
            return [await self.lines.get() for _ in range(count)]

        return await asyncio.wait_for(lines(), WAIT_S)

    async def raw(self, count: int) -> list[bytes]:
        """The next `count` lines, which must be whole lines (no framing error)."""
        lines = await self.take(count)
        assert [line.error for line in lines] == [None] * count
        return [line.raw for line in lines]

    async def until(self, raw: bytes) -> list[FramedLine]:
        """Lines up to and including the first equal to `raw`."""

        async def lines() -> list[FramedLine]:
            taken = [await self.lines.get()]
            while taken[-1].raw != raw:
                taken.append(await self.lines.get())
            return taken

        return await asyncio.wait_for(lines(), WAIT_S)


@pytest.fixture
async def sims():
    """Makes simulators (fast reconnects) and stops them all at the end; no task may outlive stop()."""
    made: list[PbxSimulator] = []

    def make(fmt: str = "avaya-ipo", **kwargs) -> PbxSimulator:
        sim = PbxSimulator(fmt, tz=kwargs.pop("tz", TZ), seed=kwargs.pop("seed", 7), **kwargs)
        sim.backoff_initial_s, sim.backoff_max_s = 0.01, 0.05
        made.append(sim)
        return sim

    yield make
    for sim in made:
        await sim.stop()
        assert not sim._tasks


@pytest.fixture
async def links():
    """Opens gateway link transports and closes them at the end."""
    opened = []

    async def open_link(config: LinkConfig, sink: Sink, *, up: asyncio.Event | None = None):
        def on_state(state: LinkState) -> None:
            if up is not None and state is LinkState.UP:
                up.set()

        transport = create_transport(config, sink, on_state=on_state, **FAST_BACKOFF)
        await transport.open()
        opened.append(transport)
        return transport

    yield open_link
    for transport in opened:
        await transport.close()


# ---- connect mode → listen://


async def test_connect_mode_pushes_records_to_a_listen_link(sims, links, unused_tcp_port: int) -> None:
    sink = Sink()
    await links(link(f"listen://127.0.0.1:{unused_tcp_port}"), sink)
    sim = sims()
    await sim.connect("127.0.0.1", unused_tcp_port)
    await sim.wait_connected(1, WAIT_S)
    printed = [line for call in MIXED_CALLS for line in sim.emit(call)]
    assert await sink.raw(len(printed)) == raw_lines(printed)
    assert sim.records_sent == len(printed) and sim.calls_sent == len(MIXED_CALLS)
    assert list(sim.lines_sent) == printed


async def test_connect_mode_reconnects_after_a_drop_and_sends_what_it_buffered(
    sims, links, unused_tcp_port: int
) -> None:
    sink = Sink()
    await links(link(f"listen://127.0.0.1:{unused_tcp_port}"), sink)
    sim = sims()
    await sim.connect("127.0.0.1", unused_tcp_port)
    await sim.wait_connected(1, WAIT_S)
    first = sim.emit(make_call(0))
    assert await sink.raw(len(first)) == raw_lines(first)

    await sim.drop_connections()  # the PBX reboots
    assert sim.connection_count == 0
    during = sim.emit(make_call(1)) + sim.emit(make_call(2))  # printed while no gateway is connected: buffered
    assert sim.buffered_lines == len(during)
    await sim.wait_connected(1, WAIT_S)  # reconnected by itself
    assert await sink.raw(len(during)) == raw_lines(during)
    assert sim.buffered_lines == 0
    after = sim.emit(make_call(3))
    assert await sink.raw(len(after)) == raw_lines(after)


async def test_lines_queued_but_not_written_at_a_drop_go_to_the_next_link(sims, links, unused_tcp_port: int) -> None:
    sink = Sink()
    await links(link(f"listen://127.0.0.1:{unused_tcp_port}"), sink)
    sim = sims()
    await sim.connect("127.0.0.1", unused_tcp_port)
    await sim.wait_connected(1, WAIT_S)
    printed = sim.emit(make_call(0)) + sim.emit(make_call(4, transfer=True))
    await sim.drop_connections()  # in the same turn: nothing was written yet
    assert sim.buffered_lines == len(printed)
    await sim.wait_connected(1, WAIT_S)
    after = sim.emit(make_call(1))
    assert await sink.raw(len(printed + after)) == raw_lines(printed + after)  # once each, in order


async def test_connect_mode_waits_for_a_restarted_listener(sims, links, unused_tcp_port: int) -> None:
    config = link(f"listen://127.0.0.1:{unused_tcp_port}")
    sink = Sink()
    sim = sims()
    await sim.connect("127.0.0.1", unused_tcp_port)  # nobody listens yet: refused, retried
    listener = await links(config, sink)
    await sim.wait_connected(1, WAIT_S)
    first = sim.emit(make_call(0))
    assert await sink.raw(len(first)) == raw_lines(first)

    await listener.close()  # the gateway restarts
    await sim.wait_connected(0, WAIT_S)
    during = sim.emit(make_call(1))
    assert sim.buffered_lines == len(during)
    await links(config, sink)
    await sim.wait_connected(1, WAIT_S)
    assert await sink.raw(len(during)) == raw_lines(during)


async def test_buffer_keeps_the_newest_lines(
    sims, links, unused_tcp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pbx_module, "BUFFER_MAX_LINES", 4)
    sim = sims()
    printed = [line for index in range(6) for line in sim.emit(make_call(index))]
    assert sim.buffered_lines == 4 and sim.lines_dropped == len(printed) - 4
    sink = Sink()
    await links(link(f"listen://127.0.0.1:{unused_tcp_port}"), sink)
    await sim.connect("127.0.0.1", unused_tcp_port)
    assert await sink.raw(4) == raw_lines(printed[-4:])


# ---- start_listen ← tcp:// with the format's login


async def test_panasonic_login_then_records(sims, links) -> None:
    sim = sims("panasonic")
    assert PROFILES["panasonic"].login, "Panasonic's LAN port wants SMDR and a password"
    port = await sim.start_listen()
    backlog = sim.emit(make_call(0))  # printed before the gateway came: buffered, sent after the login
    sink = Sink()
    await links(link(f"tcp://127.0.0.1:{port}", "panasonic", login=gateway_login("panasonic")), sink)
    await sim.wait_connected(1, WAIT_S)
    printed = backlog + sim.emit(make_call(1))
    assert await sink.raw(len(printed)) == raw_lines(printed)  # no prompt text among them


async def test_panasonic_wrong_password_gets_no_records(sims, links) -> None:
    sim = sims("panasonic")
    sim.login_reply_timeout_s = 0.05  # the re-prompt goes unanswered: hang up soon, the gateway tries again
    port = await sim.start_listen()
    printed = sim.emit(make_call(0))
    sink = Sink()
    await links(link(f"tcp://127.0.0.1:{port}", "panasonic", login=gateway_login("panasonic", password="WRONG")), sink)
    failed = pbx_module.LOGIN_FAILED_TEXT.encode()
    await sink.until(failed)
    await sink.until(failed)  # refused twice: the gateway came back after the PBX hung up
    assert sim.connection_count == 0
    assert sim.buffered_lines == len(printed)
    records = set(raw_lines(printed))
    assert not [line for line in sink.seen if line.raw in records]


async def test_login_reprompts_after_a_wrong_reply_and_hangs_up_after_three(sims) -> None:
    sim = sims("panasonic")
    steps = PROFILES["panasonic"].login
    port = await sim.start_listen()
    first_prompt = steps[0].prompt.encode()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(pbx_module.LOGIN_ATTEMPTS):
            await asyncio.wait_for(reader.readuntil(first_prompt), WAIT_S)
            writer.write(b"nobody\r\n")
        assert pbx_module.LOGIN_FAILED_TEXT.encode() in await asyncio.wait_for(reader.read(), WAIT_S)  # then EOF
    finally:
        writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await asyncio.wait_for(reader.readuntil(first_prompt), WAIT_S)
        writer.write(b"nobody\r\n")  # wrong once: re-prompted from the start
        for step in steps:
            await asyncio.wait_for(reader.readuntil(step.prompt.encode()), WAIT_S)
            writer.write(step.expect.encode() + b"\r")  # CR alone ends a reply too
            writer.write(b"\n")
        await sim.wait_connected(1, WAIT_S)
        printed = sim.emit(make_call(0))
        expected = wire(sim, printed)
        assert await asyncio.wait_for(reader.readexactly(len(expected)), WAIT_S) == expected
    finally:
        writer.close()


# ---- open_pty ← serial


async def test_pty_serial_link_receives_records(sims, links) -> None:
    sim = sims("panasonic")
    path = await sim.open_pty()
    sink, up = Sink(), asyncio.Event()
    await links(link(path, "panasonic"), sink, up=up)  # a serial link: no login on the PBX's serial port
    await asyncio.wait_for(up.wait(), WAIT_S)  # the port is open and configured (pySerial's flush is behind us)
    await sim.wait_connected(1, WAIT_S)
    printed = sim.emit(make_call(0)) + sim.emit(make_call(1, DIRECTION_OUT))
    assert await sink.raw(len(printed)) == raw_lines(printed)
    assert {line.peer for line in sink.seen} == {path}


class SlaveReader:
    """The pty's slave opened directly: raw bytes, as the gateway's serial port would read them."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.data = bytearray()
        self._more = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            self.data += os.read(self.fd, 65536)
        except BlockingIOError:
            return
        self._more.set()

    async def read(self, size: int) -> bytes:
        async def enough() -> None:
            while len(self.data) < size:
                self._more.clear()
                await self._more.wait()

        await asyncio.wait_for(enough(), WAIT_S)
        taken = bytes(self.data[:size])
        del self.data[:size]
        return taken

    def close(self) -> None:
        self._loop.remove_reader(self.fd)
        os.close(self.fd)


@pytest.mark.parametrize("fmt", FORMATS)
async def test_pty_bytes_end_lines_as_the_profile_says(sims, fmt: str) -> None:
    sim = sims(fmt)
    reader = SlaveReader(await sim.open_pty())
    try:
        await sim.wait_connected(1, WAIT_S)
        printed = sim.emit(make_call(0)) + sim.emit(make_call(1, DIRECTION_OUT))
        expected = wire(sim, printed)
        data = await reader.read(len(expected))
        assert data == expected
        ending = PROFILES[fmt].line_ending
        assert data.count(ending) >= len(printed)
        if ending == b"\r":
            assert b"\n" not in data  # CR-only, as that PBX's serial port prints
    finally:
        reader.close()


# ---- faults


async def test_split_writes_leading_nuls_bursts_and_garbage_still_frame_right(
    sims, links, unused_tcp_port: int
) -> None:
    sink = Sink()
    await links(link(f"listen://127.0.0.1:{unused_tcp_port}"), sink)
    sim = sims()
    sim.split_writes = True
    sim.leading_nuls = True
    await sim.connect("127.0.0.1", unused_tcp_port)
    await sim.wait_connected(1, WAIT_S)
    sim.send_garbage(2)
    sim.emit(make_call(0))
    sim.send_garbage()
    sim.send_burst(MIXED_CALLS[1:])
    sim.emit(make_call(9))
    printed = list(sim.lines_sent)
    expected = framed(wire(sim, printed))  # the same lines read in one piece, without NULs
    assert len(expected) >= len(printed) - 3  # garbage may hold line ends of its own, records do not
    assert await sink.raw(len(expected)) == expected


async def test_split_writes_and_leading_nuls_on_the_wire(sims) -> None:
    """Each write of a split record is a read of its own; NULs lead every record line (IP Office)."""
    chunks: list[bytes] = []
    received = asyncio.Event()

    class Recorder(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            chunks.append(data)
            received.set()

    server = await asyncio.get_running_loop().create_server(Recorder, "127.0.0.1", 0)
    try:
        sim = sims()
        sim.split_writes = True
        sim.leading_nuls = True
        await sim.connect("127.0.0.1", server.sockets[0].getsockname()[1])
        await sim.wait_connected(1, WAIT_S)
        printed = sim.emit(make_call(0))
        nuls = b"\x00" * pbx_module.LEADING_NUL_BYTES
        expected = b"".join(nuls + line.encode() + sim.profile.line_ending for line in printed)

        async def all_received() -> None:
            while sum(map(len, chunks)) < len(expected):
                received.clear()
                await received.wait()

        await asyncio.wait_for(all_received(), WAIT_S)
        assert b"".join(chunks) == expected
        assert len(chunks) > 1
        assert max(map(len, chunks)) <= max(pbx_module.SPLIT_WRITE_BYTES)
    finally:
        server.close()
        await sim.stop()
        await server.wait_closed()


# ---- pages


PAGED_FORMATS = [fmt for fmt in FORMATS if PROFILES[fmt].lines_per_page > 0]


@pytest.mark.skipif(not PAGED_FORMATS, reason="no format prints pages")
@pytest.mark.parametrize("fmt", PAGED_FORMATS)
def test_page_header_every_lines_per_page_record_lines(fmt: str) -> None:
    profile = PROFILES[fmt]
    sim = PbxSimulator(fmt, tz=TZ)
    calls = [make_call(index) for index in range(3 * profile.lines_per_page + 1)]
    record_lines_by_page: list[list[int]] = []  # per page: each call's record line count
    for call in calls:
        printed = sim.emit(call)
        record_count = len(record_lines(fmt, call, TZ))  # NEC: a NEXT caller-name line is a record line too
        header = printed[: len(printed) - record_count]
        if header:
            record_lines_by_page.append([])
            assert header == profile.page_header(call_end(call), len(record_lines_by_page), TZ)  # numbered from 1
        record_lines_by_page[-1].append(record_count)
    assert len(record_lines_by_page) >= 3  # the first call opened page 1
    for page, next_page in zip(record_lines_by_page, record_lines_by_page[1:]):
        assert sum(page) <= profile.lines_per_page < sum(page) + next_page[0]  # full: the next record did not fit
    if all(count == 1 for page in record_lines_by_page for count in page):
        assert [len(page) for page in record_lines_by_page] == [profile.lines_per_page] * 3 + [1]


def test_unpaged_formats_print_no_headers() -> None:
    for fmt in FORMATS:
        if PROFILES[fmt].lines_per_page == 0:
            sim = PbxSimulator(fmt, tz=TZ)
            printed = [line for call in MIXED_CALLS for line in sim.emit(call)]
            assert len(printed) == sim.records_sent


# ---- the gateway's parsers


@pytest.mark.parametrize("fmt", FORMATS)
async def test_records_parse_with_the_gateway_parser(sims, links, unused_tcp_port: int, fmt: str) -> None:
    config = link(f"listen://127.0.0.1:{unused_tcp_port}", fmt)
    sink = Sink()
    await links(config, sink)
    sim = sims(fmt)
    sim.leading_nuls = fmt == "avaya-ipo"
    await sim.connect("127.0.0.1", unused_tcp_port)
    await sim.wait_connected(1, WAIT_S)
    calls = MIXED_CALLS + [make_call(index) for index in range(5, 5 + 2 * max(PROFILES[fmt].lines_per_page, 1))]
    sim.send_burst(calls)
    expected_lines = framed(wire(sim, list(sim.lines_sent)))
    lines = await sink.take(len(expected_lines))
    parser = create_parser(config)
    records = []
    for line in lines:
        records += parser.feed(line.raw.decode("latin-1"), line.received_at)
    records += parser.flush(datetime.now(timezone.utc) + timedelta(days=365))
    assert len(records) == sim.records_sent
    parties = {call.plan.extension for call in calls} | {
        call.plan.transfer_to for call in calls if call.plan.transfer_to
    }
    parties |= {call.plan.other for call in calls if call.plan.direction == DIRECTION_INTERNAL}  # the called extension
    assert {record.extension for record in records} - {None} <= parties  # None: NEC's unanswered trunk call


# ---- construction and command line


def test_unknown_format_is_refused() -> None:
    with pytest.raises(PbxSimulatorError):
        PbxSimulator("nortel")


def test_extension_lists() -> None:
    assert parse_extensions("2001-2003,3001") == ("2001", "2002", "2003", "3001")
    assert parse_extensions("0098-0101, 0099") == ("0098", "0099", "0100", "0101")
    for bad in ("", "20-10", "abc", "1-x"):
        with pytest.raises(PbxSimulatorError):
            parse_extensions(bad)


async def test_stop_is_idempotent_and_closes_everything(unused_tcp_port: int) -> None:
    sim = PbxSimulator("panasonic", tz=TZ)
    await sim.connect("127.0.0.1", unused_tcp_port)  # refused, retrying
    port = await sim.start_listen()
    await sim.open_pty()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # logging in
    await sim.stop()
    assert not sim._tasks
    await asyncio.wait_for(reader.read(), WAIT_S)  # the PBX hung up: EOF after the prompt
    writer.close()
    await sim.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_cli_pty_prints_the_path_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.pbx",
        "--format",
        "mitel-mivb",
        "--pty",
        "--log-level",
        "warning",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        first_line = await asyncio.wait_for(process.stdout.readline(), WAIT_S * 2)
        path = first_line.decode().strip()
        assert path.startswith("/dev/") and os.path.exists(path)
    finally:
        if process.returncode is None:
            process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), WAIT_S * 2)
    assert process.returncode == 0, stderr.decode()


async def test_cli_faults_garbage_nuls_and_drops_over_connect() -> None:
    connections: list[bytearray] = []
    seen = asyncio.Event()

    async def collect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = bytearray()
        connections.append(received)  # this connection's own bytes, however the drops interleave
        try:
            while chunk := await reader.read(4096):
                received += chunk
                if len(connections) >= 2 and any(b"PARITY" in data and b"\x00\x00\x00" in data for data in connections):
                    seen.set()
        except ConnectionResetError:
            pass  # the simulated reboot aborts the connection
        finally:
            writer.close()
        if len(connections) >= 2 and any(b"PARITY" in data and b"\x00\x00\x00" in data for data in connections):
            seen.set()

    server = await asyncio.start_server(collect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.pbx",
        "--format",
        "avaya-ipo",
        "--connect",
        f"127.0.0.1:{port}",
        "--traffic",
        "600",
        "--speed",
        "50",
        "--leading-nuls",
        "--split-writes",
        "--garbage-every",
        "0.05",
        "--drop-every",
        "0.5",
        "--log-level",
        "warning",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(seen.wait(), WAIT_S * 2)  # garbage arrived, and the PBX came back after a drop
    finally:
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), WAIT_S * 2)
        server.close()
        await server.wait_closed()
    assert process.returncode == 0, stderr.decode()
    assert len(connections) >= 2  # it came back after a drop
    assert any(
        b"PARITY" in data and b"\x00\x00\x00" in data for data in connections
    )  # garbage, and NULs before records


def test_cli_refuses_a_fault_interval_that_is_not_positive() -> None:
    from simulators.pbx import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--format", "avaya-ipo", "--pty", "--garbage-every", "0"])
