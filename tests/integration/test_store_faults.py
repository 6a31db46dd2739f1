"""A store that refuses writes (here: its tables taken away by another process, which fails every write the
way a full disk does): nothing acknowledged is dropped, /healthz says so, writes answer 503, and everything
resumes when the store takes writes again."""

from __future__ import annotations

import sqlite3

import aiohttp

from gateway.config import LinkConfig
from gateway.service import Gateway
from tests.conftest import API_KEY, eventually
from tests.integration.test_recovery import call_id_of, ipo_line, send

STORE_RESUME_TIMEOUT_S = 10.0  # the tracker retries a refused batch every second


async def healthz(gateway: Gateway) -> dict:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/healthz") as response:
        return await response.json()


async def keep(gateway: Gateway, call_id: str) -> int:
    async with aiohttp.ClientSession() as session:
        params = {"apiKey": API_KEY, "action": "KeepCall", "callID": call_id, "type": "do_not_delete"}
        async with session.get(f"{gateway.url}/verba/api", params=params) as response:
            return response.status


async def test_a_store_refusing_writes_holds_everything_until_it_takes_writes_again(
    tmp_path, started, unused_tcp_port, gateway_config
):
    link = LinkConfig("pbx", "avaya-ipo", f"listen://127.0.0.1:{unused_tcp_port}", timezone="UTC")
    gateway = await started(gateway_config(links=(link,)))
    await send(unused_tcp_port, ipo_line(1))
    await eventually(lambda: gateway.links["pbx"].records == 1)
    first = await call_id_of(gateway, "1000001")

    other = sqlite3.connect(gateway.store.path, isolation_level=None)
    try:
        other.execute("ALTER TABLE calls RENAME TO calls_away")
        await send(unused_tcp_port, ipo_line(2))  # journalled; its call cannot be saved
        await eventually(lambda: gateway.store.write_error is not None)
        report = await healthz(gateway)
        assert report["status"] == "degraded" and report["store"]["state"] == "failing"
        assert "calls" in report["store"]["error"]
        assert await keep(gateway, first) == 503  # nothing was promised

        other.execute("ALTER TABLE calls_away RENAME TO calls")
    finally:
        other.close()
    await eventually(lambda: gateway.store.write_error is None, STORE_RESUME_TIMEOUT_S)
    await gateway.tracker.flush()
    assert (await healthz(gateway))["store"] == {"backend": "sqlite", "state": "ok", "error": None}
    assert await call_id_of(gateway, "1000002")  # the call held in memory meanwhile is stored now
    assert await keep(gateway, first) == 200
    stored = await gateway.store.calls_by_platform_call_id("1000002")
    assert len(stored) == 1
