"""The trunk recorder simulator over real loopback TCP (and once over its pty), driven by a raw line client."""

from __future__ import annotations

import asyncio
import os
import re
import termios
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest

from drivers.trunkrec import protocol as p
from simulators.trunkrec import TrunkRecorderSimulator

READ_TIMEOUT_S = 2.0  # a line the simulator owes us arrives well within this
TS_PATTERN = re.compile(r" ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Client:
    """A bare TRUNKREC/1 client: write request lines, read device lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def raw_line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), READ_TIMEOUT_S)

    async def line(self) -> str:
        raw = await self.raw_line()
        assert raw.endswith(p.LINE_END), raw
        return raw[:-2].decode("ascii")

    async def lines(self, count: int) -> list[str]:
        return [await self.line() for _ in range(count)]

    async def until(self, prefix: str) -> list[str]:
        """Lines up to and including the first that starts with `prefix`."""
        seen = [await self.line()]
        while not seen[-1].startswith(prefix):
            seen.append(await self.line())
        return seen

    async def handshake(self) -> list[str]:
        return await self.until("EVT SYNC")

    def send(self, *lines: str) -> None:
        self.writer.write(b"".join(line.encode("ascii") + p.LINE_END for line in lines))

    async def ask(self, line: str) -> str:
        self.send(line)
        return await self.line()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


@pytest.fixture
async def sim() -> AsyncIterator[TrunkRecorderSimulator]:
    simulator = TrunkRecorderSimulator(channels=60, name="sim1", seed=7)
    simulator.send_timestamps = False  # exact line comparisons; test_events_carry_timestamps covers ts=
    await simulator.start_tcp("127.0.0.1", 0)
    yield simulator
    await simulator.stop()
    assert simulator.connection_count == 0
    assert not simulator._tasks, "the simulator left tasks running"
    await simulator.stop()  # idempotent


@pytest.fixture
async def connect(sim: TrunkRecorderSimulator) -> AsyncIterator:
    clients: list[Client] = []

    async def _connect(handshake: bool = True) -> Client:
        client = await Client.connect(sim.port)
        clients.append(client)
        if handshake:
            await client.handshake()
        return client

    yield _connect
    for client in clients:
        await client.close()


@pytest.fixture
async def client(connect) -> Client:
    return await connect()


def test_channel_layout() -> None:
    assert TrunkRecorderSimulator(channels=60).channel_names[28:32] == ("1/29", "1/30", "2/1", "2/2")
    assert TrunkRecorderSimulator(channels=48, spans=2).channel_names[23:25] == ("1/24", "2/1")
    assert TrunkRecorderSimulator(channels=5, spans=[2, 3]).channel_names == ("1/1", "1/2", "2/1", "2/2", "2/3")
    with pytest.raises(ValueError):
        TrunkRecorderSimulator(channels=5, spans=[2, 2])


async def test_banner_then_replay_of_calls_and_recordings_then_sync(sim, connect) -> None:
    ringing = sim.place_call("1/1", calling="01707392200", called="8856", direction="in")
    answered = sim.place_call("1/2", calling="8856", called="004930123", direction="out")
    sim.answer("1/2")
    recorded = sim.place_call("2/5", calling="111", called="222", native_id="TRS00000042")
    sim.answer("2/5")
    recording = sim.start_recording("2/5")
    assert re.fullmatch(r"TRS\d{8}", ringing.call_id) and ringing.call_id != answered.call_id
    assert re.fullmatch(r"R\d{6}", recording.rec_id) and recorded.call_id == "TRS00000042"

    client = await connect(handshake=False)
    assert await client.handshake() == [
        "HELLO TRUNKREC/1 channels=60 name=sim1",
        f"EVT CALL 1/1 SETUP id={ringing.call_id} calling=01707392200 called=8856 dir=in",
        f"EVT CALL 1/2 SETUP id={answered.call_id} calling=8856 called=004930123 dir=out",
        f"EVT CALL 1/2 CONNECT id={answered.call_id}",
        "EVT CALL 2/5 SETUP id=TRS00000042 calling=111 called=222 dir=in",
        "EVT CALL 2/5 CONNECT id=TRS00000042",
        f"EVT REC 2/5 STARTED rec={recording.rec_id} id=TRS00000042",
        "EVT SYNC",
    ]
    assert sim.connection_count == 1


async def test_events_carry_timestamps_unless_switched_off(sim, connect) -> None:
    sim.send_timestamps = True
    sim.clock = lambda: datetime(2026, 11, 23, 10, 0, 1, 123456, tzinfo=timezone.utc)
    client = await connect(handshake=False)
    assert await client.line() == "HELLO TRUNKREC/1 channels=60 name=sim1"
    assert await client.line() == "EVT SYNC ts=2026-11-23T10:00:01.123Z"
    call = sim.place_call("1/5", calling="1", called="2")
    assert (
        await client.line()
        == f"EVT CALL 1/5 SETUP id={call.call_id} calling=1 called=2 dir=in ts=2026-11-23T10:00:01.123Z"
    )
    sim.send_timestamps = False
    sim.answer("1/5")
    assert not TS_PATTERN.search(await client.line())


async def test_spans_still_in_alarm_are_announced_after_sync(sim, connect) -> None:
    sim.alarm(2, "LOF")
    client = await connect(handshake=False)
    assert (await client.handshake())[-1] == "EVT SYNC"
    assert await client.line() == "EVT ALARM 2 LOF"


async def test_ping_status_start_stop_discard(sim, client) -> None:
    assert await client.ask("a1 PING") == "a1 OK"
    assert await client.ask("a2 STATUS 1/5") == "a2 OK state=idle"
    call = sim.place_call("1/5", calling="01707392200", called="8856")
    assert await client.line() == f"EVT CALL 1/5 SETUP id={call.call_id} calling=01707392200 called=8856 dir=in"
    sim.answer("1/5")
    assert await client.line() == f"EVT CALL 1/5 CONNECT id={call.call_id}"
    assert await client.ask("a3 STATUS 1/5") == f"a3 OK state=call id={call.call_id}"

    assert await client.ask("a4 START 1/5 ref=a8343631-9f35-4a3a-83f0-9e81592339fb") == "a4 OK rec=R000001"
    assert await client.line() == f"EVT REC 1/5 STARTED rec=R000001 id={call.call_id}"
    assert sim.channel_state("1/5") == "recording"
    assert sim.recordings["R000001"].ref == "a8343631-9f35-4a3a-83f0-9e81592339fb"
    assert await client.ask("a5 STATUS 1/5") == f"a5 OK state=recording id={call.call_id} rec=R000001"

    sim.clock = lambda: sim.recordings["R000001"].started_at + timedelta(seconds=42.2)
    assert await client.ask("a6 STOP 1/5") == "EVT REC 1/5 STOPPED rec=R000001 dur=42"
    assert await client.line() == "a6 OK rec=R000001 dur=42"
    recording = sim.recordings["R000001"]
    assert (recording.channel, recording.call_id, recording.duration_s, recording.discarded) == (
        "1/5",
        call.call_id,
        42,
        False,
    )
    assert recording.stopped_at is not None and sim.channel_state("1/5") == "call"

    assert await client.ask("a7 DISCARD R000001") == "a7 OK"
    assert sim.recordings["R000001"].discarded
    assert [(r.tag, r.verb, r.args) for r in sim.requests][:2] == [("a1", "PING", ()), ("a2", "STATUS", ("1/5",))]
    assert len(sim.requests) == 7


@pytest.mark.parametrize("events_first", [True, False])
async def test_events_before_replies_flips_the_order(sim, client, events_first) -> None:
    sim.events_before_replies = events_first
    call = sim.place_call("1/1")
    sim.answer("1/1")
    await client.lines(2)
    client.send("s1 START 1/1")
    started = [await client.line(), await client.line()]
    client.send("s2 STOP 1/1")
    stopped = [await client.line(), await client.line()]
    start_lines = ["s1 OK rec=R000001", f"EVT REC 1/1 STARTED rec=R000001 id={call.call_id}"]
    stop_lines = ["EVT REC 1/1 STOPPED rec=R000001 dur=0", "s2 OK rec=R000001 dur=0"]
    assert started == (start_lines[::-1] if events_first else start_lines)
    assert stopped == (stop_lines if events_first else stop_lines[::-1])


async def test_error_codes(sim, client) -> None:
    sim.place_call("1/2")
    sim.place_call("2/3")
    await client.lines(2)
    assert await client.ask("e1 START 3/1") == "e1 ERR BADCH no channel 3/1"
    assert (await client.ask("e2 STOP 1/31")).startswith("e2 ERR BADCH")
    assert (await client.ask("e3 STATUS 9/9")).startswith("e3 ERR BADCH")
    assert (await client.ask("e4 START 1/1")).startswith("e4 ERR NOCALL")
    assert (await client.ask("e5 STOP 1/1")).startswith("e5 ERR NOTREC")
    assert (await client.ask("e6 STOP 1/2")).startswith("e6 ERR NOTREC")
    assert await client.ask("e7 START 1/2") == "e7 OK rec=R000001"
    await client.line()  # STARTED
    assert await client.ask("e8 START 1/2") == "e8 ERR ALREADY recording R000001"
    assert (await client.ask("e9 DISCARD R000001")).startswith("e9 ERR NOREC")  # still running
    assert (await client.ask("e10 DISCARD R999999")).startswith("e10 ERR NOREC")  # unknown
    sim.stop_recording("1/2")
    await client.line()  # STOPPED
    assert await client.ask("e11 DISCARD R000001") == "e11 OK"
    assert (await client.ask("e12 DISCARD R000001")).startswith("e12 ERR NOREC")  # already discarded

    sim.alarm(2, "LOS")
    assert await client.line() == "EVT ALARM 2 LOS"
    assert await client.ask("e13 START 2/3") == "e13 ERR ALARM span 2 LOS"
    sim.alarm(2, "CLEAR")
    assert await client.line() == "EVT ALARM 2 CLEAR"
    assert await client.ask("e14 START 2/3") == "e14 OK rec=R000002"


@pytest.mark.parametrize(
    "request_line",
    [
        "x1 FROB 1/1",
        "x1 START",
        "x1 STOP 1-5",
        "x1 STATUS 1/5 1/6",
        "x1 DISCARD",
        "x1 PING extra",
        "x1 start 1/1",
        "x1 START 1/5 ref=%ff",
    ],
)
async def test_malformed_requests_answer_syntax(client, request_line) -> None:
    assert (await client.ask(request_line)).startswith("x1 ERR SYNTAX ")


async def test_release_while_recording_stops_the_recording_first(sim, client) -> None:
    call = sim.place_call("1/7")
    sim.answer("1/7")
    await client.lines(2)
    assert await client.ask("r1 START 1/7") == "r1 OK rec=R000001"
    await client.line()
    sim.release("1/7", cause=16)
    assert await client.lines(2) == [
        "EVT REC 1/7 STOPPED rec=R000001 dur=0",
        f"EVT CALL 1/7 RELEASE id={call.call_id} cause=16",
    ]
    assert not sim.recordings["R000001"].running and sim.channel_state("1/7") == "idle"
    sim.place_call("1/8")
    await client.line()
    sim.release("1/8", cause=19)
    assert (await client.line()).endswith(" cause=19")


async def test_reply_delay_interleaves_tags_and_busy_guards_the_channel(sim, client) -> None:
    sim.place_call("1/1")
    await client.line()
    sim.reply_delay_by_verb = {"START": 0.3}
    client.send("d1 START 1/1", "d2 STATUS 1/1", "d3 STATUS 1/2", "d4 PING")
    assert await client.line() == "d2 ERR BUSY channel 1/1 is executing another command"
    assert await client.lines(2) == ["d3 OK state=idle", "d4 OK"]
    assert await client.line() == "d1 OK rec=R000001"
    assert (await client.line()).startswith("EVT REC 1/1 STARTED")
    assert await client.ask("d5 STATUS 1/1") == f"d5 OK state=recording id={sim.calls['1/1'].call_id} rec=R000001"


async def test_reply_delay_for_every_verb(sim, client) -> None:
    sim.reply_delay_s = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await client.ask("t1 PING") == "t1 OK"
    assert loop.time() - started >= 0.2
    sim.clear_faults()
    assert sim.reply_delay_s == 0


async def test_silent_device_traces_requests_but_never_answers(sim, client) -> None:
    sim.silent = True
    client.send("q1 PING", "q2 STATUS 1/1", "q3")
    await sim.wait_for_request("STATUS", channel="1/1")
    call = sim.place_call("1/3")  # events still flow
    assert (await client.line()).startswith(f"EVT CALL 1/3 SETUP id={call.call_id}")
    sim.silent = False
    assert await client.ask("q4 PING") == "q4 OK"  # nothing from q1..q3 came before it
    assert [request.tag for request in sim.requests] == ["q1", "q2", "q4"]


async def test_ignore_pings_answers_everything_else(sim, client) -> None:
    sim.ignore_pings = True
    client.send("w1 PING", "w2 STATUS 1/1")
    assert await client.line() == "w2 OK state=idle"
    await sim.wait_for_request("PING")
    sim.clear_faults()
    assert await client.ask("w3 PING") == "w3 OK"


async def test_forced_errors_answer_without_acting(sim, client) -> None:
    sim.place_call("1/1")
    await client.line()
    sim.force_error("HWFAIL", "dsp 3 down", verb="START", count=1)
    assert await client.ask("f1 PING") == "f1 OK"  # another verb: not matched
    assert await client.ask("f2 START 1/1") == "f2 ERR HWFAIL dsp 3 down"
    assert sim.channel_state("1/1") == "call"
    assert await client.ask("f3 START 1/1") == "f3 OK rec=R000001"  # count used up
    await client.line()
    sim.force_error("DISK")  # every request, until cleared
    assert await client.ask("f4 STOP 1/1") == "f4 ERR DISK"
    assert await client.ask("f5 PING") == "f5 ERR DISK"
    assert sim.channel_state("1/1") == "recording"
    sim.clear_faults()
    assert (await client.ask("f6 STOP 1/1")).startswith("EVT REC 1/1 STOPPED")


async def test_send_junk_then_carries_on(sim, client) -> None:
    await sim.send_junk()
    garbage, binary, long_line = await client.raw_line(), await client.raw_line(), await client.raw_line()
    assert re.fullmatch(rb"[\x20-\x7e]+\r\n", garbage)
    assert re.search(rb"[^\x20-\x7e\r\n]", binary)
    assert len(long_line) == 2002
    framer = p.LineFramer()
    assert all(isinstance(item, p.ProtocolError) for item in framer.feed(binary + long_line))
    with pytest.raises(p.ProtocolError):
        p.parse_device_line(garbage[:-2].decode())
    assert await client.ask("j1 PING") == "j1 OK"


async def test_split_writes_split_and_coalesce_lines(sim, connect) -> None:
    for timeslot in range(1, 11):
        sim.place_call(f"1/{timeslot}")
        sim.answer(f"1/{timeslot}")
    sim.split_writes = True
    client = await connect(handshake=False)
    reads: list[bytes] = []
    while not b"".join(reads).endswith(b"EVT SYNC\r\n"):
        reads.append(await asyncio.wait_for(client.reader.read(4096), READ_TIMEOUT_S))
    data = b"".join(reads)
    assert data.count(p.LINE_END) == 22
    assert sum(not chunk.endswith(p.LINE_END) for chunk in reads) >= 5  # reads ended mid-line: lines came in pieces
    assert any(
        p.LINE_END in chunk[:-2] for chunk in reads
    )  # and line ends mid-read: one line's end with the next's start
    framer = p.LineFramer()
    received = [line for chunk in reads for line in framer.feed(chunk)]
    assert received[0] == "HELLO TRUNKREC/1 channels=60 name=sim1" and received[-1] == "EVT SYNC"
    assert await client.ask("s1 PING") == "s1 OK"
    sim.clear_faults()
    assert not sim.split_writes


async def test_drop_connections_keeps_state_and_reconnect_replays(sim, connect) -> None:
    first = await connect()
    call = sim.place_call("1/4")
    sim.answer("1/4")
    await first.lines(2)
    assert await first.ask("k1 START 1/4") == "k1 OK rec=R000001"
    await first.line()

    await sim.drop_connections()
    assert sim.connection_count == 0
    assert await first.raw_line() == b""  # EOF: the link is gone
    later = sim.place_call("2/1")  # traffic goes on while nobody listens

    second = await connect(handshake=False)
    assert await second.handshake() == [
        "HELLO TRUNKREC/1 channels=60 name=sim1",
        f"EVT CALL 1/4 SETUP id={call.call_id} calling={call.calling} called={call.called} dir=in",
        f"EVT CALL 1/4 CONNECT id={call.call_id}",
        f"EVT REC 1/4 STARTED rec=R000001 id={call.call_id}",
        f"EVT CALL 2/1 SETUP id={later.call_id} calling={later.calling} called={later.called} dir=in",
        "EVT SYNC",
    ]
    await sim.wait_for_connections(1)


async def test_events_go_to_every_connection(sim, connect) -> None:
    first, second = await connect(), await connect()
    await sim.wait_for_connections(2)
    call = sim.place_call("1/9")
    expected = f"EVT CALL 1/9 SETUP id={call.call_id} calling={call.calling} called={call.called} dir=in"
    assert await first.line() == expected
    assert await second.line() == expected
    assert await second.ask("m1 PING") == "m1 OK"  # replies go to the asker only
    assert await first.ask("m2 PING") == "m2 OK"
    await second.close()
    await sim.wait_for_connections(1)


async def test_bad_framing_and_untagged_lines_are_counted_and_skipped(sim, client) -> None:
    client.writer.write(b"b1 STATUS 1/1 " + b"x" * 1500 + b"\r\n")
    client.writer.write(b"b2 PING \x01\x02\r\n")
    client.send("!!! nonsense", "abcdefghijklmnopq PING", "b3 PING")
    assert await client.line() == "b3 OK"
    assert sim.framing_errors == 2
    assert sim.bad_lines == 2
    assert [request.tag for request in sim.requests] == ["b3"]


async def test_wait_for_request_waits_for_the_next_one(sim, client) -> None:
    sim.place_call("1/1")
    await client.line()
    assert await client.ask("n1 STATUS 1/1") == f"n1 OK state=call id={sim.calls['1/1'].call_id}"
    assert (await sim.wait_for_request("STATUS")).tag == "n1"  # already in the trace
    since = len(sim.requests)
    waiter = asyncio.create_task(sim.wait_for_request("STATUS", channel="1/1", since=since))
    client.send("n2 STATUS 1/2", "n3 STATUS 1/1")
    assert (await waiter).tag == "n3"
    with pytest.raises(TimeoutError):
        await sim.wait_for_request("DISCARD", timeout=0.05)


class PtyClient:
    """The gateway's end of the pty: the slave opened non-blocking, read via the event loop."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.framer = p.LineFramer()
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        for item in self.framer.feed(data):
            if isinstance(item, str):
                self.lines.put_nowait(item)

    async def line(self) -> str:
        return await asyncio.wait_for(self.lines.get(), READ_TIMEOUT_S)

    async def until(self, prefix: str) -> list[str]:
        seen = [await self.line()]
        while not seen[-1].startswith(prefix):
            seen.append(await self.line())
        return seen

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode("ascii") + p.LINE_END)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)


async def test_serial_mode_over_a_pty() -> None:
    sim = TrunkRecorderSimulator(channels=30, name="serial1")
    sim.send_timestamps = False
    try:
        call = sim.place_call("1/2", calling="5551234", called="8856")
        path = await sim.open_pty()
        gateway = PtyClient(path)
        termios.tcflush(gateway.fd, termios.TCIFLUSH)  # as pySerial does on open: must not cost the banner
        assert await gateway.until("EVT SYNC") == [
            "HELLO TRUNKREC/1 channels=30 name=serial1",
            f"EVT CALL 1/2 SETUP id={call.call_id} calling=5551234 called=8856 dir=in",
            "EVT SYNC",
        ]
        gateway.send("p1 PING")
        assert await gateway.line() == "p1 OK"  # no second banner came before it
        assert sim.connection_count == 1
        sim.answer("1/2")
        assert await gateway.line() == f"EVT CALL 1/2 CONNECT id={call.call_id}"
        gateway.send("p2 START 1/2")
        assert await gateway.line() == "p2 OK rec=R000001"
        assert await gateway.line() == f"EVT REC 1/2 STARTED rec=R000001 id={call.call_id}"

        termios.tcflush(gateway.fd, termios.TCIFLUSH)  # input thrown away mid-session: the device announces again
        assert (await gateway.until("EVT SYNC"))[0] == "HELLO TRUNKREC/1 channels=30 name=serial1"

        gateway.close()  # the gateway closes the port …
        await sim.wait_for_connections(0)
        gateway = PtyClient(path)  # … and opens it again: a new session with the replay
        assert (await gateway.until("EVT SYNC"))[-2] == f"EVT REC 1/2 STARTED rec=R000001 id={call.call_id}"

        await sim.drop_connections()  # on a serial line: the session restarts
        assert (await gateway.until("EVT SYNC"))[0] == "HELLO TRUNKREC/1 channels=30 name=serial1"
        gateway.close()
    finally:
        await sim.stop()
    assert not sim._tasks
