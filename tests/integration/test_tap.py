"""`gateway tap`: raw lines beside parsed records and errors, live, from a real link."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tests.conftest import gateway_command

ROOT = Path(__file__).resolve().parents[2]
RECORD = b"2008/06/28 09:28:41,00:00:00,9,8004206,I,4324,4324,,0,1000014155,0,E4324,Joe Bloggs,T9161,LINE 5.1,0,0"
WAIT_S = 20.0


async def read_until(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> None:
    while not any(needle in line for line in seen):
        line = await asyncio.wait_for(stream.readline(), WAIT_S)
        if not line:
            raise AssertionError(f"tap ended before {needle!r}: {seen}")
        seen.append(line.decode())


async def test_tap_shows_raw_lines_records_and_errors(tmp_path, unused_tcp_port):
    config = tmp_path / "tap.yaml"
    config.write_text(
        f"links:\n  - name: pbx\n    format: avaya-ipo\n    url: listen://127.0.0.1:{unused_tcp_port}\n    timezone: UTC\n"
    )
    tap = await gateway_command(
        "tap",
        "--config",
        str(config),
        "--link",
        "pbx",
    )
    seen: list[str] = []
    try:
        await read_until(tap.stdout, "link   up", seen)
        _, pbx = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        pbx.write(b"garbage here\r\n" + RECORD + b"\r\n")
        await pbx.drain()
        await read_until(tap.stdout, "pcid=1000014155", seen)
        pbx.close()
    finally:
        tap.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(tap.communicate(), WAIT_S)
    output = "".join(seen) + rest.decode()
    assert tap.returncode == 0
    assert "raw    garbage here" in output and "error" in output
    assert "ext=4324 other=8004206 dir=in" in output
    assert "1 records, 1 errors" in output


def test_tap_names_the_links_when_the_link_is_unknown(tmp_path):
    import subprocess

    config = tmp_path / "tap.yaml"
    config.write_text("links:\n  - name: pbx\n    format: avaya-ipo\n    url: listen://127.0.0.1:5999\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "tap", "--config", str(config), "--link", "nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 1 and "links: pbx" in result.stderr


async def test_tap_on_a_port_the_running_gateway_holds_says_so_and_points_to_its_live_tap(
    tmp_path, unused_tcp_port_factory
):
    http_port, link_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"http: {{host: 127.0.0.1, port: {http_port}}}\n"
        f"store: {{path: {tmp_path / 'gateway.db'}}}\n"
        "api:\n  keys: [{key: 6f1c2a7e-3b8d-4e59-9a41-0c2d7e5b8f13, name: crm}]\n"
        f"links:\n  - {{name: pbx, format: avaya-ipo, url: 'listen://127.0.0.1:{link_port}'}}\n"
    )
    gateway = await gateway_command("run", "--config", str(config), stdout=None)
    tap = None
    try:
        await read_until(gateway.stderr, "gateway ready", [])
        tap = await gateway_command(
            "tap",
            "--config",
            str(config),
            "--link",
            "pbx",
        )
        seen: list[str] = []
        await read_until(tap.stdout, "retries until the port is free", seen)
    finally:
        for process in (tap, gateway):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGINT)
                await asyncio.wait_for(process.communicate(), WAIT_S)
    output = "".join(seen)
    assert f"port {link_port} is taken by process {gateway.pid} (gateway run), the running gateway" in output
    assert f"curl -N 'http://127.0.0.1:{http_port}/links/pbx/tap?apiKey=KEY'" in output
    assert "API keys: crm" in output and "6f1c2a7e" not in output  # key names, never key values
