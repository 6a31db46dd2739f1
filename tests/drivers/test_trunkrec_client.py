"""TRUNKREC/1 client driver against the bundled recorder simulator, over real TCP, over a pty, and over a pty
behind an RFC 2217 serial device server."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from drivers.trunkrec.client import MAX_MISSED_REPLIES, TrunkRecorderClient
from gateway.config import RecorderConfig
from gateway.errors import RecorderError, RecorderNotConnected, RecorderTimeout
from gateway.events import CallConnected, CallEnded, CallStarted, RecorderSynced, RecordingStarted, RecordingStopped
from gateway.model import Direction
from simulators.device_server import Rfc2217DeviceServer
from simulators.pty import PTY_SETTLE_BEHIND_DEVICE_SERVER_S
from simulators.trunkrec import TrunkRecorderSimulator

WAIT_S = 5.0
TIMEOUT_S = 0.3
# Through a device server the bytes cross a pty, a TCP socket and an executor thread each way: on a loaded 2-core
# machine (the suite in four processes) 0.3 s was sometimes too short for a reply; these tests are not about timing.
RFC2217_TIMEOUT_S = 2.0


class EventSink:
    """Collects what the driver submits; tests await the next event of a type (no sleeping)."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self._changed = asyncio.Condition()

    def __call__(self, event: object) -> None:
        self.events.append(event)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def next(self, kind: type, after: int = 0):
        async def find():
            async with self._changed:
                while True:
                    for event in self.events[after:]:
                        if isinstance(event, kind):
                            return event
                    await self._changed.wait()

        return await asyncio.wait_for(find(), WAIT_S)

    def count(self, kind: type) -> int:
        return sum(isinstance(event, kind) for event in self.events)


@pytest.fixture
def sink():
    return EventSink()


def make_client(url: str, sink: EventSink, timeout_s: float = TIMEOUT_S, **overrides) -> TrunkRecorderClient:
    options = dict(ping_interval_s=60.0, backoff_initial_s=0.01, backoff_max_s=0.05)
    options.update(overrides)
    return TrunkRecorderClient(RecorderConfig("trunk1", url, timeout_s), sink, **options)


@pytest.fixture
async def client(sim, sink):
    driver = make_client(f"tcp://127.0.0.1:{sim.port}", sink)
    await driver.open()
    await driver.wait_ready(WAIT_S)
    yield driver
    await driver.close()


async def test_banner_and_sync_make_the_link_ready(client, sink):
    assert client.connected and client.device_name == "sim1" and client.device_channels == 60
    synced = await sink.next(RecorderSynced)
    assert synced.recorder == "trunk1" and synced.live_native_ids == frozenset()


async def test_call_events_become_gateway_events(client, sim, sink):
    call = sim.place_call("1/5", calling="01707392200", called="8856", direction="in")
    started = await sink.next(CallStarted)
    assert (started.channel, started.native_id, started.calling, started.called, started.direction) == (
        "1/5",
        call.call_id,
        "01707392200",
        "8856",
        Direction.IN,
    )
    assert started.at.tzinfo is not None
    sim.answer("1/5")
    assert (await sink.next(CallConnected)).native_id == call.call_id
    sim.release("1/5", cause=16)
    ended = await sink.next(CallEnded)
    assert ended.native_id == call.call_id and ended.cause == "16"


async def test_start_and_stop_return_the_recording_id(client, sim, sink):
    sim.place_call("1/5", calling="0170", called="8856")
    sim.answer("1/5")
    rec = await client.start("1/5", ref="a8343631-9f35-4a3a-83f0-9e81592339fb")
    assert rec and sim.channel_state("1/5") == "recording"
    started = await sink.next(RecordingStarted)
    assert started.recording_native_id == rec
    assert await client.stop("1/5") == rec
    assert (await sink.next(RecordingStopped)).recording_native_id == rec
    assert sim.channel_state("1/5") == "call"


@pytest.mark.parametrize("events_first", [False, True])
async def test_replies_and_events_in_either_order(client, sim, sink, events_first):
    sim.events_before_replies = events_first
    sim.place_call("1/6", calling="0170", called="8857")
    assert await client.start("1/6")
    assert await client.stop("1/6")


async def test_err_reply_raises_recorder_error_with_the_code(client):
    with pytest.raises(RecorderError) as raised:
        await client.start("1/5")
    assert raised.value.code == "NOCALL"


async def test_forced_error_code_and_text_reach_the_caller(client, sim):
    sim.place_call("1/5", calling="0170", called="8856")
    sim.force_error("HWFAIL", "dsp 3 failed", verb="START", count=1)
    with pytest.raises(RecorderError) as raised:
        await client.start("1/5")
    assert (raised.value.code, raised.value.text) == ("HWFAIL", "dsp 3 failed")
    assert await client.start("1/5")  # count=1: the next one works


async def test_silence_times_out_and_three_misses_reconnect(client, sim, sink):
    sim.silent = True
    loop = asyncio.get_running_loop()
    for _ in range(MAX_MISSED_REPLIES):
        started = loop.time()
        with pytest.raises(RecorderTimeout):
            await client.request("PING")
        assert loop.time() - started < TIMEOUT_S + 0.5
    sim.silent = False
    synced_before = sink.count(RecorderSynced)
    await sink.next(RecorderSynced, after=len(sink.events))  # the new session's replay
    await client.wait_ready(WAIT_S)
    assert client.connects == 2 and sink.count(RecorderSynced) > synced_before


async def test_a_device_that_always_answers_too_late_is_declared_lost(client, sim, sink):
    sim.reply_delay_s = TIMEOUT_S * 2  # every reply comes, after its request timed out
    for _ in range(MAX_MISSED_REPLIES):
        with pytest.raises(RecorderTimeout):
            await client.request("PING")
    sim.reply_delay_s = 0.0
    await sink.next(RecorderSynced, after=len(sink.events))  # reconnected: a new session's replay
    await client.wait_ready(WAIT_S)
    assert client.connects == 2


async def test_ping_watchdog_declares_a_silent_device_lost(sim, sink):
    sim.ignore_pings = True
    driver = make_client(f"tcp://127.0.0.1:{sim.port}", sink, ping_interval_s=0.05)
    await driver.open()
    try:
        await driver.wait_ready(WAIT_S)
        await sim.wait_for_connections(1)
        while driver.connects < 2:  # three unanswered pings close the link; it comes back
            await asyncio.wait_for(sink.next(RecorderSynced, after=len(sink.events)), WAIT_S)
        assert driver.connects >= 2
    finally:
        await driver.close()


async def test_junk_and_split_lines_do_not_disturb_the_link(client, sim, sink):
    await sim.send_junk()
    sim.split_writes = True
    call = sim.place_call("1/7", calling="0170", called="8858")
    assert (await sink.next(CallStarted)).native_id == call.call_id
    assert await client.start("1/7")
    assert client.connects == 1 and client.connected


async def test_requests_on_one_channel_never_overlap(client, sim):
    sim.place_call("1/5", calling="0170", called="8856")
    sim.reply_delay_s = 0.05
    results = await asyncio.gather(client.status("1/5"), client.start("1/5"), client.status("1/5"))
    assert results[1] and results[2]["state"] == "recording"  # no ERR BUSY: the driver waited its turn


async def test_dropped_connection_replays_state_and_reconciles(client, sim, sink):
    kept = sim.place_call("1/5", calling="0170", called="8856")
    sim.answer("1/5")
    gone = sim.place_call("1/6", calling="0171", called="8857")
    await client.start("1/5")
    await sink.next(RecordingStarted)
    await sim.drop_connections()
    sim.release("1/6")  # ends while the gateway cannot see it
    mark = len(sink.events)
    synced = await sink.next(RecorderSynced, after=mark)
    assert synced.live_native_ids == frozenset({kept.call_id})
    assert gone.call_id not in synced.live_native_ids
    assert len(synced.live_recording_native_ids) == 1
    await client.wait_ready(WAIT_S)


async def test_span_alarms_are_tracked_per_channel(client, sim, sink):
    sim.alarm(1, "LOS")
    sim.place_call("2/1", calling="0170", called="9000")  # an event after the alarm: it has been processed
    await sink.next(CallStarted)
    assert client.span_alarms == {"1": "LOS"} and client.channel_in_alarm("1/5") and not client.channel_in_alarm("2/1")
    sim.alarm(1, "CLEAR")
    sim.release("2/1")
    await sink.next(CallEnded)
    assert client.span_alarms == {}


async def test_not_connected_is_refused_at_once(sink, unused_tcp_port):
    driver = make_client(f"tcp://127.0.0.1:{unused_tcp_port}", sink)
    with structlog.testing.capture_logs() as logs:
        await driver.open()
        try:
            with pytest.raises(RecorderNotConnected):
                await driver.start("1/5")
            while sum(1 for entry in logs if entry["event"] == "recorder still unreachable") < 3:
                await asyncio.sleep(0.01)  # retries run on the driver's own backoff timer
        finally:
            await driver.close()
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == ["recorder unreachable"]  # once per outage, then debug


async def test_serial_link_over_a_pty(sink):
    simulator = TrunkRecorderSimulator(channels=30, name="serial-sim")
    slave_path = await simulator.open_pty()
    driver = make_client(slave_path, sink)
    try:
        await driver.open()
        await driver.wait_ready(WAIT_S)
        simulator.place_call("1/3", calling="0170", called="8856")
        await sink.next(CallStarted)
        assert await driver.start("1/3")
    finally:
        await driver.close()
        await simulator.stop()


# A recorder that is away this long has pushed the doubling reconnect delay past a second; the client must
# still be ready within UP_AFTER_PEER_RETURNS_S (plus what a loaded machine adds) of its return.
OUTAGE_S = 3.0
UP_AFTER_PEER_RETURNS_S = 1.0
SCHEDULING_SLACK_S = 0.5


async def test_a_recorder_restarting_mid_command_fails_the_command_and_is_ready_within_a_second_of_its_return(sink):
    sim = TrunkRecorderSimulator(channels=60, name="sim1")
    port = await sim.start_tcp("127.0.0.1", 0)
    driver = make_client(f"tcp://127.0.0.1:{port}", sink, backoff_initial_s=0.4, backoff_max_s=30.0)
    await driver.open()
    loop = asyncio.get_running_loop()
    try:
        await driver.wait_ready(WAIT_S)
        sim.place_call("1/5", calling="0170", called="8856")
        sim.answer("1/5")
        sim.silent = True  # the START is taken and never answered: the device is about to restart
        command = asyncio.create_task(driver.start("1/5"))
        await sim.wait_for_request("START")
        await sim.stop()
        began = loop.time()
        with pytest.raises((RecorderNotConnected, RecorderTimeout)):
            await command
        assert loop.time() - began <= TIMEOUT_S + SCHEDULING_SLACK_S  # promptly, never a hang

        await asyncio.sleep(OUTAGE_S)
        sim.silent = False
        await sim.start_tcp("127.0.0.1", port)
        returned_at = loop.time()
        await driver.wait_ready(WAIT_S)
        assert loop.time() - returned_at <= UP_AFTER_PEER_RETURNS_S + SCHEDULING_SLACK_S
        assert await driver.start("1/5")  # nothing left locked: the same channel takes the command again
    finally:
        await driver.close()
        await sim.stop()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pySerial's rfc2217 module uses Thread.setDaemon
async def test_a_recorder_behind_an_rfc2217_device_server_connects_and_answers_a_manual_record_start(sink):
    simulator = TrunkRecorderSimulator(channels=30, name="rfc2217-sim")
    server = Rfc2217DeviceServer(await simulator.open_pty(PTY_SETTLE_BEHIND_DEVICE_SERVER_S))
    port = await server.start()
    driver = make_client(f"rfc2217://127.0.0.1:{port}", sink, timeout_s=RFC2217_TIMEOUT_S)
    try:
        await driver.open()
        await driver.wait_ready(WAIT_S)
        assert driver.device_name == "rfc2217-sim" and server.clients == 1
        call = simulator.place_call("1/5", calling="01707392200", called="8856")
        simulator.answer("1/5")
        assert (await sink.next(CallConnected)).native_id == call.call_id
        recording_id = await driver.start("1/5")
        assert recording_id and simulator.channel_state("1/5") == "recording"
        assert (await sink.next(RecordingStarted)).recording_native_id == recording_id
    finally:
        await driver.close()
        await server.stop()
        await simulator.stop()
    # The port's reader ran in an executor thread under a task of the driver's: close() has ended it.
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("read rfc2217://")]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_a_recorder_behind_an_rfc2217_device_server_comes_back_after_the_server_drops_it(sink):
    simulator = TrunkRecorderSimulator(channels=30, name="rfc2217-sim")
    server = Rfc2217DeviceServer(await simulator.open_pty(PTY_SETTLE_BEHIND_DEVICE_SERVER_S))
    port = await server.start()
    driver = make_client(f"rfc2217://127.0.0.1:{port}", sink, timeout_s=RFC2217_TIMEOUT_S)
    try:
        await driver.open()
        await driver.wait_ready(WAIT_S)
        server.drop_clients()
        mark = len(sink.events)
        await sink.next(RecorderSynced, after=mark)  # a new session's replay
        await driver.wait_ready(WAIT_S)
        assert driver.connects == 2 and server.clients == 2
        simulator.place_call("1/3", calling="0170", called="8856")
        assert await driver.start("1/3")
    finally:
        await driver.close()
        await server.stop()
        await simulator.stop()
