"""Gateways clustered on a real PostgreSQL server: a call on one gateway's recorder is found, awaited and
recorded through another; tokens work on every node; a node that is gone answers 503 at once."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.config import (
    ApiConfig,
    ApiKeyConfig,
    ExtensionConfig,
    GatewayConfig,
    HttpConfig,
    RecorderConfig,
    StoreConfig,
    UserConfig,
)
from gateway.model import RecordingMode
from gateway.passwords import hash_password
from gateway.service import Gateway
from simulators.trunkrec import TrunkRecorderSimulator
from tests.conftest import eventually

KEY = "5d3f0a8e-6b1c-4c2e-9a47-1f0e2d3c4b5a"
SITE_B_ONLY_KEY = "9a8b7c6d-0000-4000-8000-00000000000b"
RECORDER_TIMEOUT_S = 0.5
WAIT_S = 10.0
USER, PASSWORD = "agent", "correct horse"
PASSWORD_HASH = hash_password(PASSWORD, n=2**4)


def node_config(tmp_path: Path, node: str, url: str, **fields: object) -> GatewayConfig:
    return GatewayConfig(
        source=tmp_path / f"{node}.yaml",
        node=node,
        http=HttpConfig("127.0.0.1", 0),
        store=StoreConfig(tmp_path / f"{node}.db", url=url),
        api=ApiConfig(
            next_window_s=5.0,
            keys=(ApiKeyConfig(KEY, "crm"), ApiKeyConfig(SITE_B_ONLY_KEY, "site b desk", sites=("site-b",))),
            users=(UserConfig(USER, PASSWORD_HASH),),
        ),
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
async def cluster(
    tmp_path: Path, pg_url: str, sim: TrunkRecorderSimulator
) -> AsyncIterator[tuple[Gateway, Gateway, Gateway]]:
    """Site A with the recorder (extension 8856, Controlled, channel 1/5); sites B and C with nothing of their own."""
    site_a = Gateway(
        node_config(
            tmp_path,
            "site-a",
            pg_url,
            extensions=(ExtensionConfig("8856", RecordingMode.CONTROLLED, "trunk1", "1/5"),),
            recorders=(RecorderConfig("trunk1", f"tcp://127.0.0.1:{sim.port}", RECORDER_TIMEOUT_S),),
        )
    )
    site_b = Gateway(node_config(tmp_path, "site-b", pg_url))
    site_c = Gateway(node_config(tmp_path, "site-c", pg_url))
    # All three migrate at once: one does, the others wait for its commit and find nothing left to do.
    await asyncio.gather(site_a.start(), site_b.start(), site_c.start())
    try:
        await site_a.recorder_clients[0].wait_ready(WAIT_S)
        yield site_a, site_b, site_c
    finally:
        await site_c.stop()
        await site_b.stop()
        await site_a.stop()


Api = Callable[..., Awaitable[tuple[int, int, ET.Element, str | None]]]


async def call_api(
    session: aiohttp.ClientSession, gateway: Gateway, **params: str
) -> tuple[int, int, ET.Element, str | None]:
    params = {"apiKey": KEY, **params}
    async with session.get(f"{gateway.url}/verba/api", params=params) as response:
        root = ET.fromstring(await response.read())
        result = root.find("Response")
        assert result is not None
        error = result.find("ErrorMessage")
        return response.status, int(result.get("code", "-1")), root, (error.text if error is not None else None)


def place(sim: TrunkRecorderSimulator) -> object:
    call = sim.place_call("1/5", calling="01707392200", called="8856", direction="in")
    sim.answer("1/5")
    return call


async def placed_call_id(sim: TrunkRecorderSimulator, http: aiohttp.ClientSession, site: Gateway) -> str:
    """Places a call on site A's recorder and returns its callID as `site` finds it (ongoing, or the next)."""
    place(sim)
    status, code, root, error = await call_api(http, site, action="GetCallID", extension="8856", status="ongoing,next")
    assert (status, code) == (200, 0), error
    call_id = root.findtext("CallID")
    assert call_id
    return call_id


async def test_a_call_on_one_site_is_found_awaited_and_recorded_through_another(cluster, sim, http) -> None:
    site_a, site_b, site_c = cluster
    waiting = asyncio.create_task(call_api(http, site_b, action="GetCallID", extension="8856", status="next"))
    await eventually(lambda: site_b.tracker.next_waiter_count == 1)
    loop = asyncio.get_running_loop()
    placed_at = loop.time()
    native = place(sim)
    status, code, root, error = await asyncio.wait_for(waiting, WAIT_S)
    woken_after_s = loop.time() - placed_at
    assert (status, code) == (200, 0), error
    call_id = root.findtext("CallID")
    assert woken_after_s < 1.0
    # The same call by every lookup, through the other site.
    for params in (
        {"extension": "8856", "status": "ongoing"},
        {"nativeID": native.call_id},  # type: ignore[attr-defined]
    ):
        status, code, root, error = await call_api(http, site_b, action="GetCallID", **params)
        assert (status, code, root.findtext("CallID")) == (200, 0, call_id), error
    status, code, root, error = await call_api(http, site_b, action="GetCallInformation", callID=call_id)
    assert (status, code) == (200, 0), error
    assert root.findtext("verbacdr/extension") == "8856"
    # manualRecord through site B: site A's recorder sees START before B answers.
    status, code, _, error = await call_api(http, site_b, action="KeepCall", callID=call_id, type="manualRecord")
    assert (status, code) == (200, 0), error
    assert sim.channel_state("1/5") == "recording"
    status, code, _, error = await call_api(
        http, site_b, action="KeepCall", callID=call_id, type="manualRecord", unmark="1"
    )
    assert (status, code) == (200, 0), error
    assert sim.channel_state("1/5") == "call"
    # A key that sees site B only does not see site A's call.
    status, code, _, error = await call_api(
        http, site_b, apiKey=SITE_B_ONLY_KEY, action="GetCallID", extension="8856", status="ongoing"
    )
    assert (status, code) == (200, 2) and "cannot be found" in (error or "")


async def test_recorder_refusal_and_silence_come_back_through_the_other_site(cluster, sim, http) -> None:
    site_a, site_b, site_c = cluster
    call_id = await placed_call_id(sim, http, site_b)
    sim.force_error("ALARM", "span 1 in alarm", verb="START")
    status, code, _, error = await call_api(http, site_b, action="KeepCall", callID=call_id, type="manualRecord")
    assert (status, code) == (200, 2) and "ALARM" in (error or "") and "span 1 in alarm" in (error or "")
    sim.silent = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, code, _, error = await call_api(http, site_b, action="KeepCall", callID=call_id, type="manualRecord")
    assert (status, code) == (504, 2), error
    assert loop.time() - started < RECORDER_TIMEOUT_S + 0.5 + 0.5


async def test_a_node_that_stopped_answers_503_at_once_and_its_calls_stay_findable(cluster, sim, http) -> None:
    site_a, site_b, site_c = cluster
    call_id = await placed_call_id(sim, http, site_b)
    await site_a.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, code, _, error = await call_api(http, site_b, action="KeepCall", callID=call_id, type="manualRecord")
    assert (status, code) == (503, 2) and "site-a" in (error or ""), error
    assert loop.time() - started < 0.5
    status, code, root, error = await call_api(http, site_b, action="GetCallID", extension="8856", status="ongoing")
    assert (status, code, root.findtext("CallID")) == (200, 0, call_id), error


async def test_health_shows_the_backend_and_every_node(cluster, http) -> None:
    site_a, site_b, site_c = cluster
    async with http.get(f"{site_b.url}/healthz") as response:
        report = await response.json()
    assert report["store"]["backend"] == "postgresql"
    cluster_report = report["cluster"]
    assert cluster_report["reachable"] and cluster_report["node"] == "site-b"
    assert set(cluster_report["nodes"]) == {"site-a", "site-b", "site-c"}
    assert all(node["running"] for node in cluster_report["nodes"].values())
    assert "secret" not in str(report) and site_b.cluster is not None
    assert site_b.cluster.database.url.split(":")[2].split("@")[0] not in str(report)  # the password
    async with http.get(f"{site_a.url}/metrics") as response:
        metrics = await response.text()
    assert "gateway_cluster_database_up 1.0" in metrics and "gateway_cluster_unshipped_events" in metrics


async def test_a_token_from_one_node_works_on_the_other(cluster, http) -> None:
    site_a, site_b, site_c = cluster
    status, code, root, error = await call_api(http, site_a, action="RequestToken", userName=USER, password=PASSWORD)
    assert (status, code) == (200, 0), error
    response = root.find("Response")
    token = response.get("token") if response is not None else None
    assert token
    status, code, _, error = await call_api(
        http, site_b, action="GetCallID", extension="8856", status="ongoing", token=token
    )
    assert (status, code) == (200, 2) and "cannot be found" in (error or ""), error  # authenticated: a lookup
    status, code, _, error = await call_api(
        http, site_b, action="GetCallID", extension="8856", status="ongoing", token=token + "x"
    )
    assert status == 401, error


async def test_one_call_start_wakes_next_waiters_on_every_other_node(cluster, sim, http) -> None:
    site_a, site_b, site_c = cluster
    waiting = [
        asyncio.create_task(call_api(http, site, action="GetCallID", extension="8856", status="next"))
        for site in (site_a, site_b, site_c)
    ]
    await eventually(lambda: all(site.tracker.next_waiter_count == 1 for site in (site_a, site_b, site_c)))
    place(sim)
    answers = await asyncio.wait_for(asyncio.gather(*waiting), WAIT_S)
    assert [(status, code) for status, code, _, _ in answers] == [(200, 0)] * 3
    assert len({root.findtext("CallID") for _, _, root, _ in answers}) == 1
    assert (await site_c.health())["cluster"]["nodes"].keys() == {"site-a", "site-b", "site-c"}


async def test_an_extension_two_sites_publish_is_flagged_when_a_key_sees_both(tmp_path, pg_url, started) -> None:
    shared = (ExtensionConfig("7001", RecordingMode.FULL),)
    site_x = await started(node_config(tmp_path, "site-x", pg_url, extensions=shared))
    site_y = await started(node_config(tmp_path, "site-b", pg_url, extensions=shared))
    assert site_x.cluster is not None and site_y.cluster is not None
    # `crm` sees every node; `site b desk` sees site-b only, so it is not named.
    assert site_y.cluster.shared_extensions == [{"extension": "7001", "nodes": ["site-b", "site-x"], "keys": ["crm"]}]
    assert (await site_y.health())["cluster"]["sharedExtensions"][0]["extension"] == "7001"
