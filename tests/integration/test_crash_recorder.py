"""`gateway run` killed with SIGKILL while recordings run, restarted on its store: the recorder's state replay
reconciles them (running → still running, gone → stopped), callIDs and KeepCall answers survive, and the
channels answer the next command."""

from __future__ import annotations

import asyncio
import signal
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import gateway_command

KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
READY_TIMEOUT_S = 30.0
RECORDER_SYNC_TIMEOUT_S = 10.0
POLL_S = 0.02


def write_config(folder: Path, http_port: int, recorder_port: int) -> Path:
    config = folder / "gateway.yaml"
    config.write_text(
        f"""
http: {{host: 127.0.0.1, port: {http_port}}}
store: {{path: "{folder / "gateway.db"}"}}
api:
  keys: [{{key: {KEY}, name: crm}}]
extensions:
  - {{number: "8856", mode: controlled, channel: "1/5"}}
  - {{number: "8857", mode: controlled, channel: "1/6"}}
  - {{number: "8858", mode: on_demand, channel: "1/7"}}
recorders:
  - {{name: trunk1, url: "tcp://127.0.0.1:{recorder_port}", timeout: 1}}
log: {{level: warning}}
"""
    )
    return config


class GatewayProcess:
    """`python -m gateway run` that the test can start, kill -9 and start again on the same files."""

    def __init__(self, config: Path, url: str) -> None:
        self.config = config
        self.url = url
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.process = await gateway_command(
            "run",
            "--config",
            str(self.config),
            stdout=None,
            stderr=None,  # its output goes where the test's goes
        )

        async def recorder_synced() -> None:
            while True:
                assert self.process is not None and self.process.returncode is None, "gateway exited"
                try:
                    async with http.get("/healthz") as response:
                        if (await response.json())["recorders"]["trunk1"]["state"] == "up":
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(POLL_S)

        await asyncio.wait_for(recorder_synced(), READY_TIMEOUT_S)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()


@pytest.fixture
async def gateway(tmp_path, sim, unused_tcp_port_factory) -> AsyncIterator[GatewayProcess]:
    port = unused_tcp_port_factory()
    process = GatewayProcess(write_config(tmp_path, port, sim.port), f"http://127.0.0.1:{port}")
    yield process
    if process.process is not None and process.process.returncode is None:
        process.process.terminate()
        await process.process.wait()


async def api(http: aiohttp.ClientSession, **params: str) -> tuple[int, ET.Element]:
    async with http.get("/verba/api", params={"apiKey": KEY, **params}) as response:
        root = ET.fromstring(await response.read())
        return int(root.find("Response").get("code")), root


async def call_id_of(http: aiohttp.ClientSession, extension: str) -> str:
    code, root = await api(http, action="GetCallID", extension=extension, status="ongoing,next")
    assert code == 0, ET.tostring(root)
    return root.findtext("CallID")


async def info(http: aiohttp.ClientSession, call_id: str) -> ET.Element:
    code, root = await api(http, action="GetCallInformation", callID=call_id)
    assert code == 0, ET.tostring(root)
    return root


async def test_recordings_after_a_kill_are_reconciled_with_the_recorder(gateway, sim):
    async with aiohttp.ClientSession(base_url=gateway.url) as http:
        await gateway.start(http)
        for channel, extension in (("1/5", "8856"), ("1/6", "8857"), ("1/7", "8858")):
            sim.place_call(channel, calling="01707392200", called=extension, direction="in")
            sim.answer(channel)
        ended, running, kept = [await call_id_of(http, extension) for extension in ("8856", "8857", "8858")]
        for call_id in (ended, running):
            assert (await api(http, action="KeepCall", callID=call_id, type="manualRecord"))[0] == 0
        assert (await api(http, action="KeepCall", callID=kept, type="do_not_delete"))[0] == 0
        assert sim.channel_state("1/5") == sim.channel_state("1/6") == "recording"

        await gateway.kill()
        sim.release("1/5")  # while the gateway is down: the call and its recording end

        await gateway.start(http)
        # gone → stopped, and the call ended
        after = await info(http, ended)
        assert after.find("Response").get("state") == "1" or after.findtext(".//end_time")
        recording = after.find(".//recording")
        assert recording is not None and recording.findtext("end_time"), ET.tostring(after)
        # running → still running: a stop is sent (the channel is not locked) and succeeds
        assert (await api(http, action="KeepCall", callID=running, type="manualRecord", unmark="1"))[0] == 0
        assert sim.channel_state("1/6") == "call"
        # and a KeepCall answered 0 before the kill is still in effect
        assert (await info(http, kept)).findtext(".//do_not_delete") == "1"
