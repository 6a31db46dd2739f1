"""`gateway demo` as a real process on the bundled default configuration (its ports moved to free ones):
the banner comes, /healthz shows every link and recorder up with calls, every printed example works, and
Ctrl-C stops it cleanly."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import gateway_command

ROOT = Path(__file__).resolve().parents[2]
BUNDLED_CONFIG = ROOT / "config" / "gateway.yaml"
BANNER_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
BANNER_END = "Press Ctrl-C to stop."


def demo_config(tmp_path: Path, http_port: int, recorder_port: int, link_port: int) -> Path:
    """The bundled file, byte for byte, but for its three ports and the store path."""
    text = BUNDLED_CONFIG.read_text()
    for old, new in (
        ("port: 8010", f"port: {http_port}"),
        ("127.0.0.1:7010", f"127.0.0.1:{recorder_port}"),
        ("127.0.0.1:5100", f"127.0.0.1:{link_port}"),
        ("path: var/gateway.db", f"path: {tmp_path / 'demo.db'}"),
    ):
        assert old in text, f"the bundled configuration no longer has {old!r}"
        text = text.replace(old, new)
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    return config


async def read_banner(process: asyncio.subprocess.Process) -> list[str]:
    lines: list[str] = []

    async def until_end() -> None:
        while True:
            raw = await process.stdout.readline()
            if not raw:
                raise AssertionError(f"demo ended before its banner; printed {lines}")
            lines.append(raw.decode().rstrip("\n"))
            if lines[-1] == BANNER_END:
                return

    await asyncio.wait_for(until_end(), BANNER_TIMEOUT_S)
    return lines


@pytest.fixture
async def demo(tmp_path, unused_tcp_port_factory):
    http_port = unused_tcp_port_factory()
    config = demo_config(tmp_path, http_port, unused_tcp_port_factory(), unused_tcp_port_factory())
    process = await gateway_command(
        "demo",
        "--config",
        str(config),
        "--seed",
        "7",
        cwd=tmp_path,
    )
    try:
        banner = await read_banner(process)
        yield process, banner, f"http://127.0.0.1:{http_port}"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_banner_names_the_url_the_key_and_three_working_examples(demo):
    process, banner, url = demo
    text = "\n".join(banner)
    assert f"API {url}/verba/api" in text
    assert "Demo API key: 6f1c2a7e-3b8d-4e59-9a41-0c2d7e5b8f13" in text
    commands = [shlex.split(line.strip()) for line in banner if line.strip().startswith("curl ")]
    assert len(commands) == 3
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/healthz") as response:
            health = await response.json()
        assert health["status"] == "ok"
        assert health["links"]["pbx-main"]["state"] == "up"
        assert health["recorders"]["trunk1"]["state"] == "up"
        assert health["calls"]["ongoing"] >= 1 and health["calls"]["stored"] >= 1

        answers = []
        for command in commands:
            assert command[0] == "curl" and len(command) == 2
            async with session.get(command[1]) as response:
                assert response.status == 200, await response.text()
                answers.append(await response.text())
    call_id = ET.fromstring(answers[0]).findtext("CallID")
    assert ET.fromstring(answers[0]).find("Response").get("code") == "0"
    assert ET.fromstring(answers[1]).find("Response").get("code") == "0"  # manualRecord start
    information = json.loads(answers[2])
    assert information["code"] == 0
    assert information["verbacdr"]["ccdrId"] == call_id
    assert information["verbacdr"]["manual"] == "1"  # the KeepCall above started a manual recording
    assert information["verbacdr"]["recordings"][-1]["endTime"] is None


async def test_banner_shows_the_status_page_and_event_lines_follow_it(demo, tmp_path):
    process, banner, url = demo
    text = "\n".join(banner)
    key = "6f1c2a7e-3b8d-4e59-9a41-0c2d7e5b8f13"
    assert f"Status page, live in a browser: {url}/status?apiKey={key}" in text
    assert f"curl -N '{url}/events?apiKey={key}'" in text and "--log-level info" in text
    # Without --log-level: a line per call started (the pinned call's start is queued from before the banner).
    line = (await asyncio.wait_for(process.stdout.readline(), BANNER_TIMEOUT_S)).decode()
    while not line.strip():
        line = (await asyncio.wait_for(process.stdout.readline(), BANNER_TIMEOUT_S)).decode()
    assert re.fullmatch(r"\d\d:\d\d:\d\d  call started     ext \S+ .* callID \S+\n", line), line
    async with aiohttp.ClientSession() as session, session.get(f"{url}/status", params={"apiKey": key}) as response:
        assert response.status == 200 and "text/html" in response.headers["Content-Type"]
    # Its own store: the configured file stays untouched.
    assert (tmp_path / "demo-demo.db").exists() and not (tmp_path / "demo.db").exists()
    assert f"Demo store: {tmp_path / 'demo-demo.db'}" in text


async def test_ctrl_c_stops_the_demo_cleanly(demo):
    process, _, url = demo
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S) == 0
    stderr = (await process.stderr.read()).decode()
    assert "Traceback" not in stderr and "error" not in stderr.lower(), stderr
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"{url}/healthz")


async def test_a_configuration_without_an_open_key_is_refused_with_a_reason(tmp_path, unused_tcp_port_factory):
    config = demo_config(tmp_path, *(unused_tcp_port_factory() for _ in range(3)))
    config.write_text(re.sub(r"require_token: false", "require_token: true", config.read_text()))
    process = await gateway_command(
        "demo",
        "--config",
        str(config),
        cwd=tmp_path,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT_S)
    assert process.returncode == 1
    assert "no API key works without a token" in stderr.decode()


# ---- in-process: every kind of link the demo can stand in for, at speed

MULTI_LINK_CONFIG = """
http: {{host: 127.0.0.1, port: {http}}}
store: {{path: "{db}"}}
api:
  keys: [{{key: 6f1c2a7e-3b8d-4e59-9a41-0c2d7e5b8f13, name: demo}}]
extensions:
  - {{number: "8856", mode: controlled, recorder: trunk1, channel: "1/5"}}
  - {{number: "8857", mode: full, recorder: trunk1, channel: "1/6"}}
  - {{number: "8858", mode: full, recorder: trunk2, channel: "1/1"}}
recorders:
  - {{name: trunk1, url: "tcp://127.0.0.1:{recorder1}"}}
  - {{name: trunk2, url: "tcp://127.0.0.1:{recorder2}"}}
links:
  - {{name: ipo, format: avaya-ipo, url: "listen://127.0.0.1:{ipo}", timezone: Europe/Budapest}}
  - name: pana
    format: panasonic
    url: "tcp://127.0.0.1:{pana}"
    login: [{{expect: "login:", send: SMDR}}, {{expect: "Enter password:", send: PCCSMDR}}]
  - {{name: mitel, format: mitel-mivb, url: "listen://127.0.0.1:{mitel}"}}
  - {{name: serial, format: nec-sv, url: /dev/serial/by-id/usb-Prolific-missing-port0}}
log: {{level: warning}}
"""
SPEED = 60.0
RECORDS_TIMEOUT_S = 20.0
POLL_S = 0.05  # how often the in-process test looks at the link counters while it waits


async def test_demo_stands_in_for_every_network_link_and_recorder(tmp_path, unused_tcp_port_factory):
    from drivers.smdr import SMDR_FORMATS
    from gateway.config.load import load_config
    from simulators.demo import Demo

    ports = {name: unused_tcp_port_factory() for name in ("http", "recorder1", "recorder2", "ipo", "pana", "mitel")}
    path = tmp_path / "multi.yaml"
    path.write_text(MULTI_LINK_CONFIG.format(db=tmp_path / "demo.db", **ports))
    demo = Demo(load_config(path, SMDR_FORMATS), seed=11, calls_per_minute=240, speed=SPEED)
    await demo.start()
    try:
        assert set(demo.recorders) == {"trunk1", "trunk2"} and set(demo.pbxs) == {"ipo", "pana", "mitel"}
        banner = demo.banner()
        assert "Not simulated: link serial: /dev/serial/by-id/usb-Prolific-missing-port0 is a serial port" in banner
        assert "Note: link mitel: the mitel-mivb simulator's records need these link options: {'clock': 12}" in banner
        assert demo.examples.extension == "8856" and demo.examples.manual_record
        links = demo.gateway.links

        async def records_on_every_network_link() -> None:
            while not all(links[name].records >= 5 for name in ("ipo", "pana", "mitel")):
                await asyncio.sleep(POLL_S)

        await asyncio.wait_for(records_on_every_network_link(), RECORDS_TIMEOUT_S)
        health = await demo.gateway.health()
        assert {name: link["state"] for name, link in health["links"].items()} == {
            "ipo": "up",
            "pana": "up",
            "mitel": "up",
            "serial": "down",
        }
        assert health["recorders"] == {"trunk1": {"state": "up"}, "trunk2": {"state": "up"}}
        assert links["ipo"].errors == 0 and links["pana"].errors == 0
        # Every call the first recorder showed and that has ended was completed by its IP Office record.
        site = demo.sites[0]

        def ended_recorder_calls():
            done = {call.pbx_call_id for call in site.completed}
            return [leg for leg in site.recorder_calls.values() if leg.pbx_call_id in done]

        async def some_recorder_calls_ended() -> None:
            while len(ended_recorder_calls()) < 3 or links["ipo"].records < len(site.completed):
                await asyncio.sleep(POLL_S)

        await asyncio.wait_for(some_recorder_calls_ended(), RECORDS_TIMEOUT_S)
        tracker = demo.gateway.tracker
        await tracker.flush()
        ended = ended_recorder_calls()
        for leg in ended:
            call = await tracker.find_by_native_id(leg.native_id)
            assert call.platform_call_id == str(leg.pbx_call_id)
    finally:
        await demo.stop()


async def test_a_port_in_use_is_refused_with_what_to_do(tmp_path, unused_tcp_port_factory):
    http_port = unused_tcp_port_factory()
    config = demo_config(tmp_path, http_port, unused_tcp_port_factory(), unused_tcp_port_factory())
    running_demos_store = tmp_path / "demo-demo.db"  # what the demo holding the port is using
    running_demos_store.write_bytes(b"in use")
    occupant = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", http_port)
    try:
        process = await gateway_command(
            "demo",
            "--config",
            str(config),
            cwd=tmp_path,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT_S)
    finally:
        occupant.close()
        await occupant.wait_closed()
    assert process.returncode == 1
    assert "address already in use" in stderr.decode() and "is another gateway" in stderr.decode()
    assert running_demos_store.read_bytes() == b"in use"  # not emptied for a demo that could not start


async def test_the_demo_store_is_its_own_and_fresh_each_run_unless_kept(tmp_path, unused_tcp_port_factory):
    from drivers.smdr import SMDR_FORMATS
    from gateway.config.load import load_config
    from gateway.model import Call, CallState
    from gateway.store import Store
    from simulators.demo import Demo, demo_store_path

    config = load_config(demo_config(tmp_path, *(unused_tcp_port_factory() for _ in range(3))), SMDR_FORMATS)
    # What a sped-up run left: a call on the pinned extension that ends an hour from now.
    earlier = Store(demo_store_path(config.store.path))
    await earlier.open()
    now = datetime.now(UTC)
    await earlier.save_call(
        Call(
            call_id="from-the-last-run",
            extension="8856",
            start_time=now,
            state=CallState.FINISHED,
            end_time=now + timedelta(hours=1),
        )
    )
    await earlier.close()

    for keep_store, survives in ((True, True), (False, False)):
        demo = Demo(config, seed=5, keep_store=keep_store)
        await demo.start()
        try:
            assert demo.gateway.config.store.path == tmp_path / "demo-demo.db"
            assert (await demo.gateway.store.get_call("from-the-last-run") is not None) is survives
        finally:
            await demo.stop()
    assert not config.store.path.exists()  # the configured store (a real gateway's) is never opened


def test_the_demo_outside_the_project_folder_uses_the_bundled_file(tmp_path):
    from gateway.cli import BUNDLED_CONFIG_PATH, build_parser

    assert BUNDLED_CONFIG_PATH == BUNDLED_CONFIG
    assert build_parser().parse_args(["demo"]).config is None  # resolved when the demo starts
