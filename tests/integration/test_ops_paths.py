"""The ops paths of a real gateway over loopback: /metrics (Prometheus text, parsed with prometheus-client's own
parser) after a call, recorder commands, API requests and a PBX link reconnect; /healthz 200/503; /livez; and
http.ops_networks refusing every other address, whatever X-Forwarded-For says."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import ExtensionConfig, HttpConfig, LinkConfig, RecorderConfig, StoreConfig
from gateway.model import RecordingMode
from gateway.service import Gateway
from tests.conftest import API_KEY, eventually

WAIT_S = 10.0
RECORDER_TIMEOUT_S = 1.0
IPO_RECORD_1 = b"2008/06/28 09:28:41,00:00:00,9,8004206,I,4324,4324,,0,1000014155,0,E4324,Joe Bloggs,T9161,LINE 5.1,0,0"
IPO_RECORD_2 = (
    b"2008/06/28 09:30:57,00:00:21,0,01707392200,I,4751,4751,,0,1000014160,0,E4751,Jane Doe,T9002,LINE 1.2,0,0"
)
GARBAGE = b"this is not SMDR"
EVERY_NAME = (
    "gateway_link_up",
    "gateway_link_records_total",
    "gateway_link_errors_total",
    "gateway_link_reconnects_total",
    "gateway_recorder_up",
    "gateway_recorder_commands_total",
    "gateway_recorder_command_seconds_bucket",
    "gateway_recorder_command_seconds_count",
    "gateway_recorder_command_seconds_sum",
    "gateway_api_requests_total",
    "gateway_api_request_seconds_bucket",
    "gateway_api_request_seconds_count",
    "gateway_api_request_seconds_sum",
    "gateway_calls_ongoing",
    "gateway_store_bytes",
)
OPS_PATHS = ("/healthz", "/livez", "/metrics")


class PbxStandIn:
    """A PBX the gateway connects to (tcp://): the first connection sends a record and a garbage line and hangs
    up; every later one sends another record and stays until `close()`."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._release = asyncio.Event()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _session(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._sessions.add(asyncio.current_task())  # type: ignore[arg-type]
        self.connections += 1
        try:
            if self.connections == 1:
                writer.write(IPO_RECORD_1 + b"\r\n" + GARBAGE + b"\r\n")
            else:
                writer.write(IPO_RECORD_2 + b"\r\n")
                await writer.drain()
                await self._release.wait()
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    async def close(self) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def pbx() -> AsyncIterator[PbxStandIn]:
    stand_in = PbxStandIn()
    await stand_in.start()
    yield stand_in
    await stand_in.close()


@pytest.fixture
async def gateway(started, gateway_config, sim, pbx) -> Gateway:
    config = gateway_config(
        extensions=(ExtensionConfig("8856", RecordingMode.CONTROLLED, "trunk1", "1/5"),),
        recorders=(RecorderConfig("trunk1", f"tcp://127.0.0.1:{sim.port}", RECORDER_TIMEOUT_S),),
        links=(LinkConfig("pbx", "avaya-ipo", f"tcp://127.0.0.1:{pbx.port}", timezone="UTC"),),
    )
    gateway = await started(config)
    await gateway.recorder_clients[0].wait_ready(WAIT_S)
    return gateway


async def api(http: aiohttp.ClientSession, gateway: Gateway, **params: str) -> dict:
    params = {"apiKey": API_KEY, "responseType": "JSON", **params}
    async with http.get(f"{gateway.url}/verba/api", params=params) as response:
        return await response.json(content_type=None)


async def scrape(http: aiohttp.ClientSession, gateway: Gateway) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, by (name, labels)."""
    async with http.get(f"{gateway.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_metrics_count_links_recorder_commands_api_requests_calls_and_the_store(gateway, sim, pbx, http):
    health = gateway.links["pbx"]
    await eventually(lambda: health.records == 2 and health.reconnects == 1, WAIT_S)  # the PBX hung up once

    sim.place_call("1/5", calling="01707392200", called="8856", direction="in")
    sim.answer("1/5")
    found = await api(http, gateway, action="GetCallID", extension="8856", status="ongoing,next")
    call_id = found["callID"]
    assert (await api(http, gateway, action="KeepCall", callID=call_id, type="manualRecord"))["code"] == 0
    sim.force_error("ALARM", "span 1 in alarm", verb="STOP", count=1)
    refused = await api(http, gateway, action="KeepCall", callID=call_id, type="manualRecord", unmark="1")
    assert refused["code"] == 2
    await api(http, gateway, action="No<Such>Action")  # an unknown action: counted as "other", never echoed

    samples = await scrape(http, gateway)
    names = {name for name, _ in samples}
    assert set(EVERY_NAME) <= names, set(EVERY_NAME) - names

    assert value(samples, "gateway_link_up", link="pbx") == 1
    assert value(samples, "gateway_link_records_total", link="pbx") == 2
    assert value(samples, "gateway_link_errors_total", link="pbx") == 1  # the garbage line, quarantined
    assert value(samples, "gateway_link_reconnects_total", link="pbx") == 1

    assert value(samples, "gateway_recorder_up", recorder="trunk1") == 1
    assert value(samples, "gateway_recorder_connects_total", recorder="trunk1") == 1
    assert value(samples, "gateway_recorder_protocol_errors_total", recorder="trunk1") == 0
    assert value(samples, "gateway_recorder_commands_total", recorder="trunk1", verb="START", result="ok") == 1
    assert value(samples, "gateway_recorder_commands_total", recorder="trunk1", verb="STOP", result="err") == 1
    assert value(samples, "gateway_recorder_command_seconds_count", recorder="trunk1", verb="START") == 1
    assert 0 < value(samples, "gateway_recorder_command_seconds_sum", recorder="trunk1", verb="START") < 1
    assert value(samples, "gateway_recorder_command_seconds_bucket", recorder="trunk1", verb="START", le="+Inf") == 1

    assert value(samples, "gateway_api_requests_total", action="GetCallID", code="200") == 1
    assert value(samples, "gateway_api_requests_total", action="KeepCall", code="200") == 2
    assert value(samples, "gateway_api_requests_total", action="other", code="400") == 1
    assert value(samples, "gateway_api_request_seconds_count", action="KeepCall") == 2
    assert not any("Such" in label for _, labels in samples for _, label in labels)

    assert value(samples, "gateway_calls_ongoing") == 1
    assert value(samples, "gateway_store_bytes") >= 4096  # at least a page of SQLite


async def test_a_request_whose_client_went_away_is_counted_as_499(gateway, http):
    params = {"apiKey": API_KEY, "action": "GetCallID", "extension": "8856", "status": "next"}
    with pytest.raises(TimeoutError):  # the client gives up on the `status=next` wait and closes the connection
        await http.get(f"{gateway.url}/verba/api", params=params, timeout=aiohttp.ClientTimeout(total=0.2))
    series = ("gateway_api_requests_total", frozenset({("action", "GetCallID"), ("code", "499")}))
    while series not in (samples := await scrape(http, gateway)):
        await asyncio.sleep(0.01)
    assert samples[series] == 1


async def test_each_gateway_has_a_registry_of_its_own(gateway, started, gateway_config, tmp_path, http):
    other = await started(gateway_config(store=StoreConfig(tmp_path / "other.db")))
    await api(http, gateway, action="GetCallID", extension="8856", status="last")
    mine, theirs = await scrape(http, gateway), await scrape(http, other)
    assert value(mine, "gateway_api_requests_total", action="GetCallID", code="200") == 1
    assert ("gateway_api_requests_total", frozenset({("action", "GetCallID"), ("code", "200")})) not in theirs
    assert value(theirs, "gateway_calls_ongoing") == 0 and not any(name == "gateway_link_up" for name, _ in theirs)


async def test_healthz_is_200_while_all_is_up_and_503_with_the_recorder_down(gateway, sim, http):
    link = gateway.links["pbx"]
    # Up on the PBX's second connection, which stays (its first one hangs up at once).
    await eventually(lambda: link.reconnects == 1 and link.state.value == "up", WAIT_S)
    async with http.get(f"{gateway.url}/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"
    await sim.stop()
    await eventually(lambda: not gateway.recorder_clients[0].connected, WAIT_S)
    async with http.get(f"{gateway.url}/healthz") as response:
        assert response.status == 503
        report = await response.json()  # the same report, still JSON
    assert report["status"] == "degraded" and report["recorders"] == {"trunk1": {"state": "down"}}
    async with http.get(f"{gateway.url}/livez") as response:  # degraded, but serving
        assert (response.status, await response.json()) == (200, {"status": "live"})
    samples = await scrape(http, gateway)
    assert value(samples, "gateway_recorder_up", recorder="trunk1") == 0


async def test_ops_paths_refuse_clients_outside_ops_networks(started, gateway_config, http):
    only_elsewhere = HttpConfig("127.0.0.1", 0, ops_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    gateway = await started(gateway_config(http=only_elsewhere))
    for path in OPS_PATHS:
        # A forwarded-for header is the client's own word: the TCP peer (127.0.0.1) is what counts.
        async with http.get(f"{gateway.url}{path}", headers={"X-Forwarded-For": "10.1.2.3"}) as response:
            assert response.status == 403, path
            assert "ops_networks" in (await response.json())["error"]
            assert "gateway_" not in await response.text()
    # The Verba API is not an ops path: its keys decide.
    assert (await api(http, gateway, action="GetCallID", extension="8856", status="last"))["code"] == 2


async def test_ops_paths_answer_a_listed_address(started, gateway_config, http):
    this_host = HttpConfig("127.0.0.1", 0, ops_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    gateway = await started(gateway_config(http=this_host))
    for path in OPS_PATHS:
        async with http.get(f"{gateway.url}{path}") as response:
            assert response.status == 200, path  # no link or recorder configured: nothing is degraded
