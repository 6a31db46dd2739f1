"""A cluster's hard cases with real processes and a real PostgreSQL server: a gateway killed with SIGKILL, and the
database stopped and started again while calls go on."""

from __future__ import annotations

import asyncio
import signal
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateway.config import ApiConfig, ApiKeyConfig, GatewayConfig, HttpConfig, StoreConfig
from gateway.service import Gateway
from simulators.trunkrec import TrunkRecorderSimulator
from tests.conftest import eventually, gateway_command
from tests.integration.test_gateway_process import STOP_TIMEOUT_S, wait_until_listening
from tests.pg_cluster import PostgresCluster

KEY = "5d3f0a8e-6b1c-4c2e-9a47-1f0e2d3c4b5a"
WAIT_S = 10.0
LOAD_STEP_S = 0.01  # a call started (and one ended) this often on site A's recorder


def site_a_yaml(tmp_path: Path, port: int, recorder_port: int, url: str) -> Path:
    config = tmp_path / "site-a.yaml"
    config.write_text(
        f"""
node: site-a
http:
  host: 127.0.0.1
  port: {port}
store:
  url: {url}
  spool: {tmp_path / "site-a.db"}
api:
  keys:
    - key: {KEY}
      name: crm
extensions:
  - number: "8856"
    mode: controlled
    channel: "1/5"
recorders:
  - name: trunk1
    url: tcp://127.0.0.1:{recorder_port}
    timeout: 0.5
log:
  level: info
"""
    )
    return config


def node_b(tmp_path: Path, url: str) -> Gateway:
    return Gateway(
        GatewayConfig(
            source=tmp_path / "site-b.yaml",
            node="site-b",
            http=HttpConfig("127.0.0.1", 0),
            store=StoreConfig(tmp_path / "site-b.db", url=url),
            api=ApiConfig(next_window_s=5.0, keys=(ApiKeyConfig(KEY, "crm"),)),
        )
    )


async def call_api(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, int, ET.Element, str | None]:
    async with session.get(f"{url}/verba/api", params={"apiKey": KEY, **params}) as response:
        root = ET.fromstring(await response.read())
        result = root.find("Response")
        assert result is not None
        error = result.find("ErrorMessage")
        return response.status, int(result.get("code", "-1")), root, (error.text if error is not None else None)


@pytest.fixture
async def site_a_process(
    tmp_path, unused_tcp_port_factory, pg_url, sim
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = unused_tcp_port_factory()
    process = await gateway_command("run", "--config", str(site_a_yaml(tmp_path, port, sim.port, pg_url)))
    try:
        await wait_until_listening(process, port)
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_after_sigkill_of_the_owner_its_calls_are_found_and_keepcall_is_503_at_once(
    tmp_path, pg_url, sim: TrunkRecorderSimulator, site_a_process, http
) -> None:
    process, _ = site_a_process
    site_b = node_b(tmp_path, pg_url)
    await site_b.start()
    try:
        waiting = asyncio.create_task(call_api(http, site_b.url, action="GetCallID", extension="8856", status="next"))
        await eventually(lambda: site_b.tracker.next_waiter_count == 1)
        sim.place_call("1/5", calling="01707392200", called="8856", direction="in")
        sim.answer("1/5")
        status, code, root, error = await asyncio.wait_for(waiting, WAIT_S)
        assert (status, code) == (200, 0), error
        call_id = root.findtext("CallID")
        status, code, _, error = await call_api(
            http, site_b.url, action="KeepCall", callID=call_id, type="manualRecord"
        )
        assert (status, code) == (200, 0) and sim.channel_state("1/5") == "recording", error

        process.send_signal(signal.SIGKILL)
        await process.wait()
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, code, _, error = await call_api(
            http, site_b.url, action="KeepCall", callID=call_id, type="manualRecord", unmark="1"
        )
        assert (status, code) == (503, 2) and "site-a" in (error or ""), error
        assert loop.time() - started < 1.0
        status, code, root, error = await call_api(
            http, site_b.url, action="GetCallID", extension="8856", status="ongoing"
        )
        assert (status, code, root.findtext("CallID")) == (200, 0, call_id), error
        health = await site_b.health()
        assert health["cluster"]["nodes"]["site-a"]["running"] is False
    finally:
        await site_b.stop()


@pytest.fixture
async def own_postgres() -> AsyncIterator[PostgresCluster]:
    """A server of this test's own: it is stopped and started again, which the shared one must not be."""
    server = await asyncio.to_thread(PostgresCluster.create)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.remove)


async def test_the_database_stopped_and_started_under_load_loses_no_call(
    tmp_path, own_postgres: PostgresCluster, sim: TrunkRecorderSimulator, unused_tcp_port_factory, http
) -> None:
    """Calls start and end on site A's recorder every few milliseconds while the database is stopped for a while
    and started again; every one of them reaches the database afterwards, and site B finds each."""
    url = own_postgres.url
    port = unused_tcp_port_factory()
    site_a_url = f"http://127.0.0.1:{port}"
    process = await gateway_command("run", "--config", str(site_a_yaml(tmp_path, port, sim.port, url)))
    site_b = node_b(tmp_path, url)
    placed: list[str] = []
    stop_load = asyncio.Event()

    async def load() -> None:  # one call started and one released every LOAD_STEP_S, on 60 channels in turn
        channels = [f"{span}/{slot}" for span in (1, 2) for slot in range(1, 31)]
        index = 0
        while not stop_load.is_set():
            channel = channels[index % len(channels)]
            if channel in sim.calls:
                sim.release(channel)
            placed.append(sim.place_call(channel, calling="0170", called="9000", direction="in").call_id)
            index += 1
            await asyncio.sleep(LOAD_STEP_S)

    try:
        await wait_until_listening(process, port)
        await site_b.start()
        loader = asyncio.create_task(load())
        await eventually(lambda: len(placed) >= 20)
        await asyncio.to_thread(own_postgres.stop, "fast")

        async def site_a_reports_the_outage() -> bool:
            async with http.get(f"{site_a_url}/healthz") as response:
                report = await response.json()
            return response.status == 503 and report["cluster"]["reachable"] is False

        deadline = asyncio.get_running_loop().time() + WAIT_S
        while not await site_a_reports_the_outage():
            assert asyncio.get_running_loop().time() < deadline, "/healthz did not show the database as unreachable"
            await asyncio.sleep(0.1)
        status, _, _, _ = await call_api(http, site_b.url, action="GetCallID", nativeID=placed[0])
        assert status == 503  # site B needs the database for another node's call
        # Site A answers for its own extension (channel 1/5 is 8856's, published by site A alone) from its store.
        status, code, _, error = await call_api(
            http, site_a_url, action="GetCallID", extension="8856", status="last,ongoing"
        )
        assert (status, code) == (200, 0), error
        during_outage = len(placed)
        await eventually(lambda: len(placed) >= during_outage + 20)
        await asyncio.to_thread(own_postgres.start)
        await eventually(lambda: len(placed) >= during_outage + 60)
        stop_load.set()
        await loader
        native_ids = list(placed)

        async def shipped() -> int:
            connection = await asyncpg.connect(url)
            try:
                return int(
                    await connection.fetchval(
                        "SELECT count(*) FROM calls WHERE node = 'site-a' AND native_id = ANY($1::text[])", native_ids
                    )
                )
            finally:
                await connection.close()

        deadline = asyncio.get_running_loop().time() + 30
        while (found := await shipped()) < len(native_ids):
            assert asyncio.get_running_loop().time() < deadline, f"{found} of {len(native_ids)} calls shipped"
            await asyncio.sleep(0.1)
        for native_id in native_ids[::7]:  # and site B finds them
            status, code, _, error = await call_api(http, site_b.url, action="GetCallID", nativeID=native_id)
            assert (status, code) == (200, 0), error

        async def caught_up() -> bool:  # the last events (calls still ongoing, a recorder state) follow shortly
            async with http.get(f"{site_a_url}/healthz") as response:
                report = await response.json()
            return bool(report["cluster"]["reachable"] and report["cluster"]["unshippedEvents"] == 0)

        deadline = asyncio.get_running_loop().time() + WAIT_S
        while not await caught_up():
            assert asyncio.get_running_loop().time() < deadline, "site A's /healthz did not show it caught up"
            await asyncio.sleep(0.1)
    finally:
        stop_load.set()
        await site_b.stop()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_a_gateway_starts_without_its_database_and_joins_when_it_answers(
    tmp_path, own_postgres: PostgresCluster, monkeypatch, http
) -> None:
    """The database is down when the gateway starts: it starts anyway (after a short wait), says so in /healthz,
    answers what it can, and joins the cluster once the database is up."""
    import gateway.cluster.node as cluster_node

    monkeypatch.setattr(cluster_node, "JOIN_WAIT_S", 0.5)
    await asyncio.to_thread(own_postgres.stop, "fast")
    site_b = node_b(tmp_path, own_postgres.url)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await site_b.start()
    try:
        assert loop.time() - started < 5.0
        async with http.get(f"{site_b.url}/healthz") as response:
            report = await response.json()
        assert response.status == 503 and report["cluster"]["reachable"] is False and report["cluster"]["error"]
        assert own_postgres.password not in str(report)
        status, code, _, error = await call_api(http, site_b.url, action="GetCallID", nativeID="TRS00000001")
        assert (status, code) == (503, 2), error  # another node's call may be it: the database must say
        await asyncio.to_thread(own_postgres.start)

        async def joined() -> bool:
            async with http.get(f"{site_b.url}/healthz") as response:
                report = await response.json()
            return bool(report["cluster"]["reachable"] and report["cluster"]["session"])

        deadline = loop.time() + WAIT_S
        while not await joined():
            assert loop.time() < deadline, "the gateway did not join the cluster after the database came up"
            await asyncio.sleep(0.1)
        status, code, _, error = await call_api(http, site_b.url, action="GetCallID", nativeID="TRS00000001")
        assert (status, code) == (200, 2) and "cannot be found" in (error or ""), error
    finally:
        await site_b.stop()
