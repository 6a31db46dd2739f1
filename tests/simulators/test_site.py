"""The site player: one plan through the trunk recorder and the PBX on one clock — and through a real gateway."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from drivers.smdr import create_parser
from drivers.trunkrec import protocol as p
from gateway.calls import numbers_match
from gateway.config import (
    ApiConfig,
    ApiKeyConfig,
    ExtensionConfig,
    GatewayConfig,
    HttpConfig,
    LinkConfig,
    RecorderConfig,
    StoreConfig,
)
from gateway.events import CallRecord
from gateway.model import RecordingMode
from gateway.service import Gateway
from simulators.pbx import PbxSimulator
from simulators.site import RecorderLeg, Site
from simulators.traffic import (
    DIRECTION_INTERNAL,
    CompletedCall,
    PlannedCall,
    TrafficModel,
    load_scenario,
)
from simulators.trunkrec import TrunkRecorderSimulator
from tests.conftest import eventually

SCENARIOS = Path(__file__).parent / "scenarios"
READ_TIMEOUT_S = 2.0  # a line the recorder owes us arrives well within this
PLAY_TIMEOUT_S = 10.0  # a plan of a few site minutes at speed ≥ 60 plays in a few seconds
DEMO_CHANNELS = {"8856": "1/5", "8857": "1/6", "8858": "1/7", "8859": "1/8"}
START = datetime(2026, 11, 23, 9, 0, 0, tzinfo=timezone.utc)


class RecordingPbx:
    """Stands in for the PBX simulator where only what the site hands it matters: the completed calls."""

    def __init__(self) -> None:
        self.emitted: list[CompletedCall] = []

    def emit(self, call: CompletedCall) -> list[str]:
        self.emitted.append(call)
        return []


class EventReader:
    """A bare TRUNKREC/1 client that only listens: the device's lines, without their CR LF."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, recorder: TrunkRecorderSimulator) -> EventReader:
        client = cls(*await asyncio.open_connection("127.0.0.1", recorder.port))
        while not (await client.line()).startswith(p.EVT + " " + p.EVT_SYNC):
            pass
        return client

    async def line(self) -> str:
        raw = await asyncio.wait_for(self.reader.readline(), READ_TIMEOUT_S)
        assert raw.endswith(p.LINE_END), raw
        return raw[:-2].decode("ascii")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def recorder():
    simulator = TrunkRecorderSimulator(channels=30, name="site1", seed=5)
    await simulator.start_tcp("127.0.0.1", 0)
    yield simulator
    await simulator.stop()


def at(seconds: float) -> str:
    return p.format_timestamp(START + timedelta(seconds=seconds))


async def test_scenario_plays_exactly_through_recorder_and_pbx(recorder):
    plan = load_scenario(SCENARIOS / "basic.yaml")
    pbx = RecordingPbx()
    site = Site(plan, pbx=pbx, recorder=recorder, channels=DEMO_CHANNELS, speed=100, start=START, first_pbx_call_id=1)
    events = await EventReader.connect(recorder)
    await asyncio.wait_for(site.run(), PLAY_TIMEOUT_S)

    # The recorder saw the trunk calls of mapped extensions only, each step at its planned site time.
    ids = {plan.index(leg.plan): leg.native_id for leg in site.recorder_calls.values()}
    expected = [
        f"EVT CALL 1/6 SETUP id={ids[0]} calling=01707392200 called=8857 dir=in ts={at(0)}",
        f"EVT CALL 1/6 CONNECT id={ids[0]} ts={at(3)}",
        f"EVT CALL 1/5 SETUP id={ids[1]} calling=8856 called=0044207946000 dir=out ts={at(5)}",
        f"EVT CALL 1/5 RELEASE id={ids[1]} cause=19 ts={at(9)}",
        f"EVT CALL 1/7 SETUP id={ids[4]} calling=+36301112233 called=8858 dir=in ts={at(12)}",
        f"EVT CALL 1/8 SETUP id={ids[5]} calling=8859 called=0612345678 dir=out ts={at(15)}",
        f"EVT CALL 1/8 CONNECT id={ids[5]} ts={at(21)}",
        f"EVT CALL 1/7 RELEASE id={ids[4]} cause=19 ts={at(37)}",
        f"EVT CALL 1/6 RELEASE id={ids[0]} cause=16 ts={at(45)}",  # the channel frees before it is taken again
        f"EVT CALL 1/6 SETUP id={ids[6]} calling=8857 called=01632960001 dir=out ts={at(45)}",
        f"EVT CALL 1/6 CONNECT id={ids[6]} ts={at(47)}",
        f"EVT CALL 1/8 RELEASE id={ids[5]} cause=16 ts={at(54)}",
        f"EVT CALL 1/6 RELEASE id={ids[6]} cause=16 ts={at(57)}",
    ]
    assert [await events.line() for _ in expected] == expected
    await events.close()
    assert sorted(ids) == [0, 1, 4, 5, 6]  # the caller waiting on busy 8857 (call 7) stayed off the recorder
    assert site.busy_channel_skips == 1 and not recorder.calls

    # The PBX got every call once, when it ended, with call ids in start order and the site's start times.
    assert pbx.emitted == list(site.completed)
    assert [plan.index(call.plan) for call in pbx.emitted] == [1, 4, 2, 0, 3, 5, 7, 6]  # by end time
    by_start = sorted(site.completed, key=lambda call: call.pbx_call_id)
    assert [call.plan for call in by_start] == plan and [call.pbx_call_id for call in by_start] == list(range(1, 9))
    assert [call.start for call in by_start] == [START + timedelta(seconds=call.at_s) for call in plan]
    # Trunk lines: internal calls take none; a line frees when its call ends (9002 at 9 s, 9003 at 37 s …).
    assert [call.trunk for call in by_start] == ["9001", "9002", "", "9002", "9003", "9004", "9001", "9002"]


async def test_site_clock_runs_at_speed_and_is_the_recorders(recorder):
    site = Site(
        [PlannedCall(30.0, "in", "8857", "0123456", 2.0, 10.0)],
        recorder=recorder,
        channels=DEMO_CHANNELS,
        speed=120,
        start=START,
    )
    assert recorder.clock == site.clock and site.clock() == START  # not playing yet: the start
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(site.run(), PLAY_TIMEOUT_S)
    assert loop.time() - began >= 42 / 120 - 0.01  # 42 site seconds took at least 42/120 real ones
    assert site.clock() >= START + timedelta(seconds=42)
    (leg,) = site.recorder_calls.values()
    assert leg.start == START + timedelta(seconds=30) and leg.channel == "1/6"


async def test_no_recorder_no_pbx_still_plays():
    plan = [PlannedCall(0.0, "out", "8856", "0123", 1.0, 2.0), PlannedCall(1.0, "internal", "2001", "2002", 1.0, 0.0)]
    site = Site(plan, speed=200, start=START)
    await asyncio.wait_for(site.run(), PLAY_TIMEOUT_S)
    assert [call.plan for call in site.completed] == [plan[1], plan[0]] and not site.recorder_calls


async def test_cancelling_an_endless_plan_releases_recorder_calls(recorder):
    model = TrafficModel(
        seed=8, calls_per_minute=120, extensions=["8856", "8857", "8858", "2001", "2002"], pinned={"8856": 1800.0}
    )
    site = Site(model.calls(), pbx=RecordingPbx(), recorder=recorder, channels=DEMO_CHANNELS, speed=200, start=START)
    events = await EventReader.connect(recorder)
    playing = asyncio.create_task(site.run())
    try:
        await site.wait_completed(10, timeout_s=PLAY_TIMEOUT_S)
        assert "1/5" in recorder.calls  # the pinned extension's call is in progress ...
    finally:
        playing.cancel()
        await asyncio.gather(playing, return_exceptions=True)
    assert playing.cancelled()
    assert not recorder.calls and site.ongoing == 0  # ... and was released when the site stopped
    lines = []
    while not any(line.startswith("EVT CALL 1/5 RELEASE") for line in lines):
        lines.append(await events.line())
    await events.close()


async def test_history_bounds_what_an_endless_site_keeps(recorder):
    model = TrafficModel(seed=3, calls_per_minute=240, extensions=["8856", "8857", "8858", "2001", "2002"])
    site = Site(model.calls(), recorder=recorder, channels=DEMO_CHANNELS, speed=300, start=START, history=4)
    playing = asyncio.create_task(site.run())
    try:
        await site.wait_completed(30, timeout_s=PLAY_TIMEOUT_S)
    finally:
        playing.cancel()
        await asyncio.gather(playing, return_exceptions=True)
    assert site.completed_count >= 30
    assert len(site.completed) == 4 and len(site.recorder_calls) <= 4
    # the newest are kept
    assert max(call.pbx_call_id for call in site.completed) >= site.completed_count + 1_000_020_000 - 5


async def test_call_released_by_the_device_meanwhile(recorder):
    plan = [PlannedCall(0.0, "in", "8857", "0123", 1.0, 20.0)]
    site = Site(plan, recorder=recorder, channels=DEMO_CHANNELS, speed=100, start=START)
    playing = asyncio.create_task(site.run())
    events = await EventReader.connect(recorder)  # connects after the SETUP: it comes in the replay
    recorder.release("1/6")  # e.g. a test, or the device, ended it early
    await asyncio.wait_for(playing, PLAY_TIMEOUT_S)
    assert len(site.completed) == 1 and not recorder.calls
    await events.close()


async def test_plan_out_of_start_order_is_refused():
    plan = [PlannedCall(5.0, "in", "1", "0123", 1.0), PlannedCall(1.0, "in", "2", "0456", 1.0)]
    with pytest.raises(ValueError, match="not in start order"):
        await asyncio.wait_for(Site(plan, speed=1000).run(), PLAY_TIMEOUT_S)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"speed": 0}, "speed"),
        ({"start": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"channels": {"1": "1/5", "2": "1/5"}}, "one recorder channel"),
        ({"channels": {"1": "9/9"}, "with_recorder": True}, "no channel 9/9"),
    ],
)
async def test_bad_site_options_are_refused(recorder, options, message):
    if options.pop("with_recorder", False):
        options["recorder"] = recorder
    with pytest.raises(ValueError, match=message):
        Site([], **options)


# ---- through a real gateway: the two simulators agree, and the gateway makes one call per real call

KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
LINK = "pbx-main"
PBX_ZONE = "Europe/Budapest"  # not UTC: the PBX prints local wall-clock time, the recorder UTC
GATEWAY_WAIT_S = 10.0  # the gateway applies a few hundred records and events well within this
# Every recording mode on a channel of the recorder (do_not_record too: the call is tracked, never recorded).
MAPPED = {
    "8856": (RecordingMode.CONTROLLED, "1/5"),
    "8857": (RecordingMode.FULL, "1/6"),
    "8858": (RecordingMode.ON_DEMAND, "1/7"),
    "8859": (RecordingMode.CONTROLLED_AUTOSTART, "1/8"),
    "8860": (RecordingMode.DO_NOT_RECORD, "1/9"),
    "8861": (RecordingMode.FULL, "1/10"),
    "8862": (RecordingMode.ON_DEMAND, "1/11"),
}
UNMAPPED = tuple(str(number) for number in range(2001, 2009))
CHANNELS = {extension: channel for extension, (_, channel) in MAPPED.items()}


@dataclass
class Bench:
    """A gateway in-process with one trunk recorder and one IP Office link, and the two simulators feeding it."""

    gateway: Gateway
    recorder: TrunkRecorderSimulator
    pbx: PbxSimulator
    lines_by_call: dict[int, list[str]] = field(default_factory=dict)  # PBX call id → the record lines printed

    async def play(self, plan: list[PlannedCall], *, speed: float, start: datetime | None = None) -> Site:
        site = Site(plan, pbx=self.pbx, recorder=self.recorder, channels=CHANNELS, speed=speed, start=start)
        await asyncio.wait_for(site.run(), PLAY_TIMEOUT_S)
        health = self.gateway.links[LINK]
        tracker = self.gateway.tracker
        await eventually(lambda: health.records == self.pbx.records_sent and tracker.ongoing_count == 0)
        await self.gateway.tracker.flush()
        return site

    def records(self) -> list[CallRecord]:
        """The printed lines as the gateway's own parser reads them."""
        parser = create_parser(self.gateway.config.links[0])
        now = datetime.now(timezone.utc)
        return [record for lines in self.lines_by_call.values() for line in lines for record in parser.feed(line, now)]


@pytest.fixture
async def bench(tmp_path, unused_tcp_port) -> AsyncIterator[Bench]:
    recorder = TrunkRecorderSimulator(channels=30, name="trunk1", seed=3)
    await recorder.start_tcp("127.0.0.1", 0)
    config = GatewayConfig(
        source=tmp_path / "test.yaml",
        http=HttpConfig("127.0.0.1", 0),
        store=StoreConfig(tmp_path / "gateway.db"),
        api=ApiConfig(keys=(ApiKeyConfig(KEY, "crm"),)),
        extensions=tuple(
            ExtensionConfig(number, mode, "trunk1", channel) for number, (mode, channel) in MAPPED.items()
        ),
        recorders=(RecorderConfig("trunk1", f"tcp://127.0.0.1:{recorder.port}", 2.0),),
        links=(LinkConfig(LINK, "avaya-ipo", f"listen://127.0.0.1:{unused_tcp_port}", timezone=PBX_ZONE),),
    )
    gateway = Gateway(config)
    pbx = PbxSimulator("avaya-ipo", tz=ZoneInfo(PBX_ZONE), seed=3)
    bench = Bench(gateway, recorder, pbx)
    printed = pbx.emit

    def emit(call: CompletedCall) -> list[str]:
        bench.lines_by_call[call.pbx_call_id] = lines = printed(call)
        return lines

    pbx.emit = emit  # type: ignore[method-assign]  # keeps each call's lines, for matching them to recorder calls
    try:
        await gateway.start()
        await gateway.recorder_clients[0].wait_ready(GATEWAY_WAIT_S)
        await pbx.connect("127.0.0.1", unused_tcp_port)
        await pbx.wait_connected(timeout=GATEWAY_WAIT_S)
        yield bench
    finally:
        await pbx.stop()
        await gateway.stop()
        await recorder.stop()


async def call_information(session: aiohttp.ClientSession, url: str, **lookup: str) -> ET.Element:
    params = {"apiKey": KEY, "action": "GetCallInformation", **lookup}
    async with session.get(f"{url}/verba/api", params=params) as response:
        root = ET.fromstring(await response.read())
    assert root.find("Response").get("code") == "0", ET.tostring(root)
    return root.find("verbacdr")


def matching_records(leg: RecorderLeg, records: list[CallRecord]) -> list[CallRecord]:
    """The PBX records that describe a recorder call: same extension, same start (±2 s), same other party."""
    return [
        record
        for record in records
        if record.extension == leg.plan.extension
        and record.start is not None
        and abs((record.start - leg.start).total_seconds()) <= 2
        and numbers_match(record.other_number, leg.plan.other)
    ]


async def assert_one_call_per_planned_call(bench: Bench, site: Site, plan: list[PlannedCall]) -> dict[str, int]:
    gateway, tracker = bench.gateway, bench.gateway.tracker
    records = bench.records()
    # (a) The simulators agree: each recorder call has exactly one PBX record describing it, of its own call.
    for leg in site.recorder_calls.values():
        (record,) = matching_records(leg, records)
        assert record.platform_call_id == str(leg.pbx_call_id)
    # (b) The gateway holds one call per planned call (a transfer's two records are one call) …
    assert await gateway.store.count_calls() == len(plan) == len(site.completed)
    call_ids = set()
    for completed in site.completed:
        call = await tracker.find_by_platform_call_id(str(completed.pbx_call_id))  # raises if there are two
        assert call.extension == completed.plan.extension and call.direction.value == completed.plan.direction
        assert abs((call.start_time - completed.start).total_seconds()) <= 1  # PBX local time read back right
        call_ids.add(call.call_id)
    assert len(call_ids) == len(plan)
    # … and every recorder call is one call with both ids: the same callID by nativeID and by platformCallID.
    async with aiohttp.ClientSession() as session:
        for leg in site.recorder_calls.values():
            by_native = await call_information(session, gateway.url, nativeID=leg.native_id)
            by_platform = await call_information(session, gateway.url, platformCallID=str(leg.pbx_call_id))
            assert by_native.find("ccdr_id").text == by_platform.find("ccdr_id").text
            assert by_native.find("native_id").text == leg.native_id
            assert by_native.find("platform_call_id").text == str(leg.pbx_call_id)
            assert by_native.find("link").text == LINK and by_native.get("state") == "1"
            assert await gateway.store.call_ids_by_native_id(leg.native_id, limit=2) == [by_native.find("ccdr_id").text]
    return {
        "planned": len(plan),
        "recorder_calls": len(site.recorder_calls),
        "records": len(records),
        "stored": await gateway.store.count_calls(),
        "busy_channel_skips": site.busy_channel_skips,
    }


async def test_seeded_site_through_the_gateway_one_call_per_call(bench):
    model = TrafficModel(
        seed=2026,
        calls_per_minute=40,
        extensions=(*MAPPED, *UNMAPPED),
        transfer_extensions=UNMAPPED,
        inbound_share=0.45,
        outbound_share=0.35,
        no_answer_share=0.2,
        transfer_share=0.3,
    )
    plan = model.plan(150)  # 2.5 site minutes of a busy office
    assert 80 <= len(plan) <= 120
    assert {call.direction for call in plan} == {"in", "out", "internal"}
    assert any(call.transfer_to for call in plan) and any(not call.answered for call in plan)
    site = await bench.play(plan, speed=150)
    numbers = await assert_one_call_per_planned_call(bench, site, plan)
    transfers = sum(1 for call in plan if call.transfer_to)
    assert numbers["records"] == len(plan) + transfers  # IP Office: one line per segment
    assert numbers["recorder_calls"] >= 30 and {leg.plan.extension for leg in site.recorder_calls.values()} == set(
        MAPPED
    )
    print("seeded site through the gateway:", numbers, "transfers:", transfers)


async def test_scenario_through_the_gateway(bench):
    plan = load_scenario(SCENARIOS / "basic.yaml")
    site = await bench.play(plan, speed=100)
    numbers = await assert_one_call_per_planned_call(bench, site, plan)
    assert numbers == {"planned": 8, "recorder_calls": 5, "records": 9, "stored": 8, "busy_channel_skips": 1}
    tracker = bench.gateway.tracker
    by_index = {
        plan.index(call.plan): await tracker.find_by_platform_call_id(str(call.pbx_call_id)) for call in site.completed
    }
    legs = {plan.index(leg.plan): leg for leg in site.recorder_calls.values()}
    for index, call in by_index.items():
        assert (call.native_id is not None) == (index in legs)
        if index in legs:
            assert call.native_id == legs[index].native_id and call.channel == CHANNELS[plan[index].extension]
            assert call.start_time == site.start + timedelta(seconds=plan[index].at_s)  # the recorder's exact ts=
    # The caller who waited on busy 8857 is a call of its own (PBX only), not merged into 8857's recorder call.
    waiting = by_index[7]
    assert waiting.native_id is None and waiting.calling == "02079460000" and waiting.connect_time is None
    # The transferred call is one call of both parties, with the account code; internal calls are internal.
    transferred = by_index[3]
    assert {"2003", "2004"} <= transferred.parties and transferred.account == "123"
    assert by_index[2].direction.value == DIRECTION_INTERNAL and {"2001", "2002"} <= by_index[2].parties
    # 8857 (full) recorded its answered calls (0 and 6); 8856 (controlled) and unanswered calls recorded nothing.
    assert by_index[0].recordings and by_index[6].recordings
    assert by_index[1].recordings == [] and by_index[4].recordings == []


# ---- the PBX's local wall-clock times, read back by the gateway's parser, are the site's times (DST too)


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(datetime(2026, 3, 29, 0, 59, 50, tzinfo=timezone.utc), id="spring-forward"),  # 01:59:50 CET
        pytest.param(datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc), id="autumn-first-pass"),  # 02:30 CEST
        pytest.param(
            datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc),  # 02:30 CET, the second 02:30 of the night
            id="autumn-second-pass",
        ),
    ],
)
async def test_pbx_local_times_read_back_as_site_times_across_dst(start):
    pbx = PbxSimulator("avaya-ipo", tz=ZoneInfo(PBX_ZONE), seed=1)  # no link: it buffers, emit still prints
    parser = create_parser(LinkConfig(LINK, "avaya-ipo", "listen://127.0.0.1:1", timezone=PBX_ZONE))
    plan = [PlannedCall(0.0, "in", "8857", "01707392200", 3.0, 40.0)]
    site = Site(plan, pbx=pbx, speed=1000, start=start)
    await asyncio.wait_for(site.run(), PLAY_TIMEOUT_S)
    (line,) = pbx.lines_sent
    (record,) = parser.feed(line, start + timedelta(seconds=44))  # read a second after the call ended
    assert record.start == start, line


async def test_nec_transfers_are_one_stored_call_each(tmp_path):
    """NEC prints one record per station of a transferred call (PIN/POT, then PTRS, no call id): with the
    site's trunk lines (one call each at a time) every transfer comes back as one call."""
    from gateway.calls import CallTracker
    from gateway.store import Store
    from simulators.pbx_records import record_lines

    plan = TrafficModel(
        seed=7, calls_per_minute=30, extensions=[str(2000 + n) for n in range(12)], transfer_share=0.3
    ).plan(1200)
    site = Site(plan, speed=20_000, start=START)
    await asyncio.wait_for(site.run(), PLAY_TIMEOUT_S)
    assert sum(1 for call in plan if call.transfer_to) >= 5
    store = Store(tmp_path / "nec.db")
    await store.open()
    try:
        tracker = CallTracker(store, [])
        parser = create_parser(LinkConfig("nec", "nec-sv", "listen://127.0.0.1:1", timezone="UTC"))
        call_ids = set()
        for call in sorted(site.completed, key=lambda done: done.start + timedelta(seconds=done.plan.length_s)):
            received = call.start + timedelta(seconds=call.plan.length_s + 1)
            for line in record_lines("nec-sv", call, timezone.utc):
                call_ids.update(tracker.apply(record).call_id for record in parser.feed(line, received))
        call_ids.update(tracker.apply(record).call_id for record in parser.flush(START + timedelta(days=2)))
        assert len(call_ids) == len(plan)
        await tracker.flush()
    finally:
        await store.close()
