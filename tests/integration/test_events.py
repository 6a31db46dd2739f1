"""GET /events, /links/NAME/tap, /links/NAME/quarantine and /status access: a real gateway, a real recorder
simulator and PBX lines over loopback TCP; the stream read as a client reads it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from gateway.config import ExtensionConfig, LinkConfig, RecorderConfig
from gateway.feed import FeedEvent, parse_filter
from gateway.model import RecordingMode, utc_now
from tests.conftest import API_KEY, eventually

WAIT_S = 5.0
EXTENSION = "201"
CHANNEL = "1/1"


@dataclass
class Sse:
    id: int | None
    event: str
    data: Any


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[Sse]:
    """Messages of an SSE stream as a browser parses them (comments and `retry:` skipped)."""
    fields: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if "event" in fields:
                yield Sse(int(fields["id"]) if "id" in fields else None, fields["event"], json.loads(fields["data"]))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


async def next_event(stream: AsyncIterator[Sse], name: str) -> Sse:
    async with asyncio.timeout(WAIT_S):
        async for message in stream:
            if message.event == name:
                return message
    raise AssertionError(f"stream ended before {name}")


@pytest.fixture
async def gateway(sim, gateway_config, started, unused_tcp_port):
    config = gateway_config(
        extensions=(ExtensionConfig(EXTENSION, RecordingMode.FULL, "trunk1", CHANNEL),),
        recorders=(RecorderConfig("trunk1", f"tcp://127.0.0.1:{sim.port}", 1.0),),
        links=(LinkConfig("pbx", "avaya-ipo", f"listen://127.0.0.1:{unused_tcp_port}"),),
    )
    running = await started(config)
    await running.recorder_clients[0].wait_ready(WAIT_S)
    return running


def url(gateway, path: str) -> str:
    return f"{gateway.url}{path}"


async def test_a_recorder_call_is_on_the_stream_within_a_second_with_its_call_id(gateway, http, sim):
    async with http.get(url(gateway, "/events"), params={"apiKey": API_KEY}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = read_events(response)
        started_at = asyncio.get_running_loop().time()
        sim.place_call(CHANNEL, calling="0612345678", called=EXTENSION, direction="in")
        message = await next_event(stream, "call.started")
        assert asyncio.get_running_loop().time() - started_at < 1.0
        assert message.id is not None and message.id > 0
        assert message.data["extension"] == EXTENSION
        call_id = message.data["callID"]
        assert gateway.tracker.ongoing_calls()[0].call_id == call_id


async def test_resuming_with_last_event_id_gives_the_missed_events_once(gateway, http, sim):
    async with http.get(url(gateway, "/events"), params={"apiKey": API_KEY}) as response:
        stream = read_events(response)
        sim.place_call(CHANNEL, calling="0612345678", called=EXTENSION, direction="in")
        first = await next_event(stream, "call.started")
    # Disconnected: what happens now is missed.
    sim.answer(CHANNEL)
    sim.release(CHANNEL)
    await eventually(lambda: not gateway.tracker.ongoing_calls())
    await eventually(lambda: gateway.feed.delivered_seq > first.id + 1)
    seen: list[Sse] = []
    headers = {"Last-Event-ID": str(first.id), "X-Api-Key": API_KEY}
    async with http.get(url(gateway, "/events"), headers=headers) as response:
        stream = read_events(response)
        async with asyncio.timeout(WAIT_S):
            async for message in stream:
                seen.append(message)
                if message.event == "call.ended":
                    break
    ids = [message.id for message in seen]
    assert ids == sorted(set(ids)) and ids[0] == first.id + 1, ids
    names = [message.event for message in seen]
    assert "call.started" not in names and "call.connected" in names and "call.ended" in names


async def test_filters_by_extension_and_type(gateway, http, sim):
    params = {"apiKey": API_KEY, "extension": EXTENSION, "types": "call.ended"}
    async with http.get(url(gateway, "/events"), params=params) as response:
        stream = read_events(response)
        sim.place_call(CHANNEL, calling="0612345678", called=EXTENSION, direction="in")
        sim.release(CHANNEL)
        message = await anext(stream)
        assert message.event == "call.ended" and message.data["extension"] == EXTENSION


async def test_unknown_type_and_bad_last_event_id_are_named(gateway, http):
    async with http.get(url(gateway, "/events"), params={"apiKey": API_KEY, "types": "call.nope"}) as response:
        assert response.status == 400
        assert "call.nope" in (await response.json())["error"]
    headers = {"Last-Event-ID": "x1"}
    async with http.get(url(gateway, "/events"), params={"apiKey": API_KEY}, headers=headers) as response:
        assert response.status == 400
        assert "Last-Event-ID" in (await response.json())["error"]


@pytest.mark.parametrize("path", ["/status", "/status/state", "/events", "/links/pbx/tap", "/links/pbx/quarantine"])
async def test_operator_paths_need_a_key(gateway, http, path):
    async with http.get(url(gateway, path)) as response:
        assert response.status == 401
    async with http.get(url(gateway, path), params={"apiKey": "00000000-0000-4000-8000-000000000000"}) as response:
        assert response.status == 401


async def test_root_redirects_to_the_status_page_with_its_key(gateway, http):
    async with http.get(url(gateway, "/"), params={"apiKey": API_KEY}, allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == f"/status?apiKey={API_KEY}"
    async with http.get(url(gateway, "/status"), params={"apiKey": API_KEY}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")


async def test_a_garbage_line_is_quarantined_listed_and_announced(gateway, http, unused_tcp_port):
    port = unused_tcp_port
    async with http.get(url(gateway, "/events"), params={"apiKey": API_KEY, "types": "line.quarantined"}) as events:
        stream = read_events(events)
        async with http.get(url(gateway, "/links/pbx/tap"), params={"apiKey": API_KEY}) as tap:
            tap_stream = read_events(tap)
            assert (await anext(tap_stream)).event == "tap"
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"<script>garbage</script>\r\n")
            await writer.drain()
            message = await next_event(stream, "line.quarantined")
            assert message.data["link"] == "pbx" and message.data["raw"] == "<script>garbage</script>"
            raw = await next_event(tap_stream, "raw")
            assert raw.data["text"] == "<script>garbage</script>"
            error = await next_event(tap_stream, "error")
            assert error.data["text"] == message.data["reason"]
            writer.close()
    async with http.get(url(gateway, "/links/pbx/quarantine"), params={"apiKey": API_KEY}) as response:
        body = await response.json()
    assert response.status == 200
    assert [line["raw"] for line in body["lines"]] == ["<script>garbage</script>"]
    assert body["lines"][0]["reason"] == message.data["reason"]
    async with http.get(url(gateway, "/links/nope/quarantine"), params={"apiKey": API_KEY}) as response:
        assert response.status == 404


async def test_link_counts_come_only_to_who_asks_without_an_id(gateway, http, unused_tcp_port):
    async with http.get(url(gateway, "/events"), params={"apiKey": API_KEY, "types": "link.*"}) as events:
        stream = read_events(events)
        _, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(b"garbage\r\n")
        await writer.drain()
        counts = await next_event(stream, "link.counts")
        writer.close()
    assert counts.id is None
    assert counts.data["link"] == "pbx" and counts.data["errors"] == 1 and counts.data["state"] == "up"
    transient = FeedEvent(0, "link.counts", utc_now(), counts.data)
    assert not parse_filter(None, None).matches(transient)  # a consumer asking for everything gets durable events
    assert not parse_filter(None, "line.quarantined,call.*").matches(transient)


async def test_status_state_shows_links_recorders_and_calls(gateway, http, sim):
    sim.place_call(CHANNEL, calling="0612345678", called=EXTENSION, direction="in")
    await eventually(lambda: bool(gateway.tracker.ongoing_calls()))
    async with http.get(url(gateway, "/status/state"), headers={"X-Api-Key": API_KEY}) as response:
        state = await response.json()
    assert [link["name"] for link in state["links"]] == ["pbx"]
    assert state["recorders"][0]["state"] == "up"
    assert state["calls"]["ongoing"] == 1
    assert state["calls"]["ongoingShown"][0]["extension"] == EXTENSION
    assert state["lastEventId"] >= 1


async def test_event_ids_continue_after_a_restart(sim, gateway_config, started, http, tmp_path):
    config = gateway_config(
        extensions=(ExtensionConfig(EXTENSION, RecordingMode.FULL, "trunk1", CHANNEL),),
        recorders=(RecorderConfig("trunk1", f"tcp://127.0.0.1:{sim.port}", 1.0),),
    )
    first = await started(config)
    await first.recorder_clients[0].wait_ready(WAIT_S)
    sim.place_call(CHANNEL, calling="0612345678", called=EXTENSION, direction="in")
    await eventually(lambda: first.feed.delivered_seq >= 2)
    before = first.feed.delivered_seq
    await first.stop()  # its last events (the recorder going down) are written before the store closes
    stored_before_restart = await_seq = first.feed.delivered_seq
    assert stored_before_restart >= before
    second = await started(config)
    await second.recorder_clients[0].wait_ready(WAIT_S)
    await eventually(lambda: second.feed.delivered_seq > await_seq)  # recorder.state up, at least
    async with http.get(url(second, "/events"), params={"apiKey": API_KEY, "lastEventId": "0"}) as response:
        stream = read_events(response)
        ids: list[int] = []
        async with asyncio.timeout(WAIT_S):
            async for message in stream:
                assert message.id is not None
                ids.append(message.id)
                if message.id == second.feed.delivered_seq:
                    break
    assert ids == list(range(1, second.feed.delivered_seq + 1))  # every event of both runs, once, in order
