"""API → recording policy → TRUNKREC/1 driver → recorder simulator, all real, over loopback TCP."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from datetime import timedelta

import aiohttp
import pytest

from gateway.config import (
    ApiConfig,
    ApiKeyConfig,
    ExtensionConfig,
    GatewayConfig,
    HttpConfig,
    OnDemandConfig,
    RecorderConfig,
    StoreConfig,
)
from gateway.model import RecordingMode, utc_now
from gateway.service import Gateway

KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
RECORDER_TIMEOUT_S = 0.5
WAIT_S = 5.0
EXTENSIONS = {
    "8856": (RecordingMode.CONTROLLED, "1/5"),
    "8857": (RecordingMode.FULL, "1/6"),
    "8858": (RecordingMode.ON_DEMAND, "1/7"),
    "8859": (RecordingMode.CONTROLLED_AUTOSTART, "1/8"),
    "8860": (RecordingMode.DO_NOT_RECORD, "1/9"),
}


@pytest.fixture
async def gateway(sim, tmp_path):
    config = GatewayConfig(
        source=tmp_path / "test.yaml",
        http=HttpConfig("127.0.0.1", 0),
        store=StoreConfig(tmp_path / "gateway.db"),
        api=ApiConfig(next_window_s=5.0, keys=(ApiKeyConfig(KEY, "crm"),)),
        on_demand=OnDemandConfig(retention_s=3600),
        extensions=tuple(
            ExtensionConfig(number, mode, "trunk1", channel) for number, (mode, channel) in EXTENSIONS.items()
        ),
        recorders=(RecorderConfig("trunk1", f"tcp://127.0.0.1:{sim.port}", RECORDER_TIMEOUT_S),),
    )
    gateway = Gateway(config)
    await gateway.start()
    await gateway.recorder_clients[0].wait_ready(WAIT_S)
    yield gateway
    await gateway.stop()


@pytest.fixture
async def http(gateway):
    async with aiohttp.ClientSession(base_url=gateway.url) as session:
        yield session


async def api(http, **params):
    async with http.get("/verba/api", params={"apiKey": KEY, **params}) as response:
        root = ET.fromstring(await response.read())
        result = root.find("Response")
        error = result.find("ErrorMessage")
        return response.status, int(result.get("code")), root, (error.text if error is not None else None)


async def ongoing_call_id(http, extension: str) -> str:
    """The gateway's ID of the extension's call, waiting for its SETUP to arrive if need be."""
    status, code, root, error = await api(http, action="GetCallID", extension=extension, status="ongoing,next")
    assert (status, code) == (200, 0), error
    return root.find("CallID").text


def place(sim, extension: str, answer: bool = True):
    channel = EXTENSIONS[extension][1]
    call = sim.place_call(channel, calling="01707392200", called=extension, direction="in")
    if answer:
        sim.answer(channel)
    return call


def starts_on(sim, channel: str) -> int:
    return sum(1 for request in sim.requests if request.verb == "START" and request.args[:1] == (channel,))


async def test_next_answers_right_after_setup_while_other_requests_are_served(gateway, http, sim):
    waiting = asyncio.create_task(api(http, action="GetCallID", extension="8856", status="next"))
    while gateway.tracker.next_waiter_count == 0:
        await asyncio.sleep(0.005)
    assert (await api(http, action="GetCallID", extension="8857", status="last"))[1] == 2  # served meanwhile
    loop = asyncio.get_running_loop()
    placed_at = loop.time()
    call = place(sim, "8856", answer=False)
    status, code, root, _ = await asyncio.wait_for(waiting, 1.0)
    assert loop.time() - placed_at < 1.0 and code == 0
    status, code, root, _ = await api(http, action="GetCallID", nativeID=call.call_id)
    assert code == 0


async def test_manual_record_starts_on_the_mapped_channel_before_answering(gateway, http, sim):
    place(sim, "8856")
    call_id = await ongoing_call_id(http, "8856")
    status, code, _, error = await api(http, action="KeepCall", callID=call_id, type="manualRecord")
    assert (status, code) == (200, 0), error
    assert starts_on(sim, "1/5") == 1 and sim.channel_state("1/5") == "recording"
    start = next(r for r in sim.requests if r.verb == "START")
    assert start.fields.get("ref") == call_id
    # idempotent start: success, no second command
    assert (await api(http, action="KeepCall", callID=call_id, type="manualRecord"))[1] == 0
    assert starts_on(sim, "1/5") == 1
    _, _, root, _ = await api(http, action="GetCallID", extension="8856", status="ongoing", type="manualRecord")
    first_recording = root.find("CallID").text
    # stop, then restart: a new recording with its own ID
    assert (await api(http, action="KeepCall", callID=call_id, type="manualRecord", unmark="1"))[1] == 0
    assert sim.channel_state("1/5") == "call"
    assert (await api(http, action="KeepCall", callID=call_id, type="manualRecord", unmark="1"))[1] == 0  # idle stop
    assert sum(1 for r in sim.requests if r.verb == "STOP") == 1
    assert (await api(http, action="KeepCall", callID=call_id, type="manualRecord"))[1] == 0
    _, _, root, _ = await api(http, action="GetCallID", extension="8856", status="ongoing", type="manualRecord")
    assert root.find("CallID").text not in (first_recording, call_id)
    _, _, root, _ = await api(http, action="GetCallInformation", callID=call_id)
    recordings = root.findall("verbacdr/recordings/recording")
    assert len(recordings) == 2 and all(r.find("manual").text == "1" for r in recordings)
    assert root.find("verbacdr/manual").text == "1"


async def test_modes_start_on_connect_only_where_they_should(gateway, http, sim):
    for extension in ("8856", "8860"):  # controlled, do_not_record: connected first, must stay idle
        place(sim, extension)
    for extension in ("8857", "8858", "8859"):  # full, on_demand, controlled_autostart
        place(sim, extension)
    for channel in ("1/6", "1/7", "1/8"):
        await sim.wait_for_request("START", channel=channel)
    assert starts_on(sim, "1/5") == 0 and starts_on(sim, "1/9") == 0
    # the recordings are on the calls, with the recorder's ids
    for extension in ("8857", "8858", "8859"):
        call = await gateway.tracker.find_by_status(extension, ["ongoing"], 0)
        while not call.recordings:
            await asyncio.sleep(0.005)
        assert call.recordings[0].native_id and not call.recordings[0].manual


async def test_manual_record_refused_off_controlled_without_a_command(gateway, http, sim):
    place(sim, "8860")
    call_id = await ongoing_call_id(http, "8860")
    status, code, _, error = await api(http, action="KeepCall", callID=call_id, type="manualRecord")
    assert (status, code) == (200, 2) and "controlled" in error
    assert starts_on(sim, "1/9") == 0


async def test_recorder_refusal_is_code_2_with_its_reason(gateway, http, sim):
    place(sim, "8856")
    call_id = await ongoing_call_id(http, "8856")
    sim.force_error("ALARM", "span 1 in alarm", verb="START")
    status, code, _, error = await api(http, action="KeepCall", callID=call_id, type="manualRecord")
    assert code == 2 and "ALARM" in error and "span 1 in alarm" in error


async def test_silent_recorder_is_504_within_its_timeout(gateway, http, sim):
    place(sim, "8856")
    call_id = await ongoing_call_id(http, "8856")
    sim.silent = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, code, _, _ = await api(http, action="KeepCall", callID=call_id, type="manualRecord")
    assert (status, code) == (504, 2)
    assert loop.time() - started < RECORDER_TIMEOUT_S + 0.5
    # Still connected, but not answering: /healthz says so at once, not only when the link is dropped.
    async with http.get("/healthz") as response:
        report = await response.json()
    assert report["recorders"] == {"trunk1": {"state": "unresponsive"}} and report["status"] == "degraded"


async def test_recorder_gone_is_503(gateway, http, sim):
    place(sim, "8856")
    call_id = await ongoing_call_id(http, "8856")
    await sim.stop()
    client = gateway.recorder_clients[0]
    while client.connected:
        await asyncio.sleep(0.005)
    status, code, _, _ = await api(http, action="KeepCall", callID=call_id, type="manualRecord")
    assert (status, code) == (503, 2)
    async with http.get("/healthz") as response:
        assert (await response.json())["recorders"] == {"trunk1": {"state": "down"}}


async def test_release_finishes_the_call_and_last_finds_it(gateway, http, sim):
    call = place(sim, "8857")
    call_id = await ongoing_call_id(http, "8857")
    sim.release("1/6")
    while (await api(http, action="GetCallID", extension="8857", status="last"))[1] != 0:
        await asyncio.sleep(0.005)
    _, _, root, _ = await api(http, action="GetCallInformation", nativeID=call.call_id)
    cdr = root.find("verbacdr")
    assert cdr.get("state") == "1" and cdr.find("ccdr_id").text == call_id
    assert cdr.find("recording_mode").text == "full" and cdr.find("kept").text == "1"


async def test_keep_and_protect_are_visible_and_retention_spares_them(gateway, http, sim):
    """Three on-demand calls, all recorded: one kept, one protected, one neither — only the last is discarded."""
    native_ids, call_ids = [], []
    for _ in range(3):
        mark = len(sim.requests)
        native_ids.append(place(sim, "8858").call_id)
        call_ids.append(await ongoing_call_id(http, "8858"))
        await sim.wait_for_request("START", channel="1/7", since=mark)
        sim.release("1/7")
        while gateway.tracker.ongoing_count:
            await asyncio.sleep(0.005)
    kept_id, protected_id, unkept_id = call_ids
    assert (await api(http, action="KeepCall", callID=kept_id))[1] == 0
    assert (await api(http, action="KeepCall", callID=protected_id, type="do_not_delete"))[1] == 0
    _, _, root, _ = await api(http, action="GetCallInformation", callID=kept_id)
    assert root.find("verbacdr/kept").text == "1" and root.find("verbacdr/ondemand").text == "1"
    _, _, root, _ = await api(http, action="GetCallInformation", callID=protected_id)
    assert root.find("verbacdr/do_not_delete").text == "1" and root.find("verbacdr/kept").text == "0"

    discarded = await gateway.policy.sweep_retention(now=utc_now() + timedelta(hours=2))
    assert discarded == 1
    discards = [r for r in sim.requests if r.verb == "DISCARD"]
    unkept_call = await gateway.tracker.find_by_native_id(native_ids[2])
    assert [r.args[0] for r in discards] == [unkept_call.recordings[0].native_id]
    assert unkept_call.recordings[0].deleted and sim.recordings[discards[0].args[0]].discarded
    for native_id in native_ids[:2]:
        assert not (await gateway.tracker.find_by_native_id(native_id)).recordings[0].deleted
    _, _, root, _ = await api(http, action="GetCallInformation", callID=unkept_id)
    assert root.findall("verbacdr/recordings/recording") == [] and root.find("verbacdr/recorded").text == "1"
    # nothing left to discard: a second sweep sends nothing
    assert await gateway.policy.sweep_retention(now=utc_now() + timedelta(hours=2)) == 0
