"""The whole gateway with its recorder behind an RFC 2217 serial device server: API → recording policy → TRUNKREC/1
driver → rfc2217:// on loopback → pty → recorder simulator, all real."""

from __future__ import annotations

import xml.etree.ElementTree as ET

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
)
from gateway.model import RecordingMode
from gateway.service import Gateway
from simulators.pty import PTY_SETTLE_BEHIND_DEVICE_SERVER_S
from simulators.device_server import Rfc2217DeviceServer
from simulators.trunkrec import TrunkRecorderSimulator

KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
RECORDER_TIMEOUT_S = 1.0
WAIT_S = 5.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pySerial's rfc2217 module uses Thread.setDaemon
async def test_keepcall_manual_record_starts_a_recorder_reached_through_rfc2217(tmp_path):
    sim = TrunkRecorderSimulator(channels=30, name="rfc2217-sim")
    server = Rfc2217DeviceServer(await sim.open_pty(PTY_SETTLE_BEHIND_DEVICE_SERVER_S))
    port = await server.start()
    config = GatewayConfig(
        source=tmp_path / "test.yaml",
        http=HttpConfig("127.0.0.1", 0),
        store=StoreConfig(tmp_path / "gateway.db"),
        api=ApiConfig(next_window_s=5.0, keys=(ApiKeyConfig(KEY, "crm"),)),
        extensions=(ExtensionConfig("8856", RecordingMode.CONTROLLED, "trunk1", "1/5"),),
        recorders=(RecorderConfig("trunk1", f"rfc2217://127.0.0.1:{port}", RECORDER_TIMEOUT_S),),
    )
    gateway = Gateway(config)
    await gateway.start()
    try:
        await gateway.recorder_clients[0].wait_ready(WAIT_S)
        sim.place_call("1/5", calling="01707392200", called="8856", direction="in")
        sim.answer("1/5")
        async with aiohttp.ClientSession(base_url=gateway.url) as http:

            async def api(**params: str) -> tuple[int, ET.Element]:
                async with http.get("/verba/api", params={"apiKey": KEY, **params}) as response:
                    root = ET.fromstring(await response.read())
                    result = root.find("Response")
                    assert result is not None
                    return int(result.get("code", "-1")), root

            code, root = await api(action="GetCallID", extension="8856", status="ongoing,next")
            assert code == 0
            call_id = root.findtext("CallID")
            assert call_id
            code, root = await api(action="KeepCall", callID=call_id, type="manualRecord")
            assert code == 0, root.findtext("Response/ErrorMessage")
        assert sim.channel_state("1/5") == "recording"
        start = next(request for request in sim.requests if request.verb == "START")
        assert start.fields.get("ref") == call_id
    finally:
        await gateway.stop()
        await server.stop()
        await sim.stop()
