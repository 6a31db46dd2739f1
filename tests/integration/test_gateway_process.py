"""`gateway run --config FILE` as a real process: start-up, auth over HTTP, logs, and clean shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import aiohttp
import pytest

from gateway.passwords import hash_password
from tests.conftest import gateway_command

ROOT = Path(__file__).resolve().parents[2]
OPEN_KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
SECURE_KEY = "0b6f5a52-8a0e-4a57-9d0e-6f2a3c1d9e41"
PASSWORD = "correct horse battery staple"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def write_config(tmp_path: Path, port: int, recorder_port: int) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
http:
  host: 127.0.0.1
  port: {port}
store:
  path: {tmp_path / "var" / "gateway.db"}
api:
  keys:
    - key: {OPEN_KEY}
      name: crm
    - key: {SECURE_KEY.upper()}
      name: secure-crm
      require_token: true
      networks: [127.0.0.0/8, "::1", localhost]
  users:
    - name: apiuser
      password_hash: "{hash_password(PASSWORD, n=2**4)}"
      timezone: Europe/Budapest
extensions:
  - number: "8856"
    mode: controlled
    channel: "1/5"
recorders:
  - name: trunk1
    url: tcp://127.0.0.1:{recorder_port}
log:
  level: debug
  format: json
"""
    )
    return config


async def wait_until_listening(process: asyncio.subprocess.Process, port: int) -> None:
    async def probe() -> None:
        while True:
            if process.returncode is not None:
                raise AssertionError(f"gateway exited with {process.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.05)

    await asyncio.wait_for(probe(), READY_TIMEOUT_S)


@pytest.fixture
async def gateway_process(tmp_path, unused_tcp_port_factory):
    port = unused_tcp_port_factory()
    config = write_config(tmp_path, port, unused_tcp_port_factory())
    process = await gateway_command(
        "run",
        "--config",
        str(config),
    )
    try:
        await wait_until_listening(process, port)
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_run_serves_the_api_and_stops_cleanly_without_logging_secrets(gateway_process):
    process, url = gateway_process
    async with aiohttp.ClientSession(base_url=url) as http:
        async with http.get(
            "/verba/api", params=dict(action="RequestToken", apiKey=SECURE_KEY, userName="apiuser", password=PASSWORD)
        ) as response:
            assert response.status == 200
            token = ET.fromstring(await response.read()).find("Response").get("token")
        async with http.get(
            "/verba/api",
            params=dict(action="RequestToken", apiKey=SECURE_KEY, userName="apiuser", password="not-" + PASSWORD),
        ) as response:
            assert response.status == 401
        async with http.get(
            "/verba/api",
            params=dict(action="GetCallID", apiKey=SECURE_KEY, token=token, extension="8856", status="last"),
        ) as response:
            assert response.status == 200
            assert ET.fromstring(await response.read()).find("Response").get("code") == "2"  # no call yet: not found
        async with http.get(
            "/verba/api", params=dict(action="GetCallID", apiKey=OPEN_KEY, extension="8856")
        ) as response:
            assert response.status == 400
        async with http.get("/healthz") as response:
            health = await response.json()
            assert health["recorders"] == {"trunk1": {"state": "down"}}
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT_S)
    assert process.returncode == 0
    log = stderr.decode()
    assert "gateway ready" in log and "gateway stopped" in log
    for secret in (PASSWORD, token, OPEN_KEY, SECURE_KEY, SECURE_KEY.upper()):
        assert secret not in log


def run_cli(*args: str, input_text: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], input=input_text, capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_bad_config_refuses_to_start_naming_file_line_and_key(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("http:\n  host: 127.0.0.1\n  port: 99999\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:3" in result.stderr and "port" in result.stderr


def test_check_accepts_the_bundled_default_and_prints_what_it_would_run():
    result = run_cli("check", "--config", "config/gateway.yaml")
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:8010" in result.stdout


def test_hash_password_reads_stdin_and_the_hash_verifies():
    from gateway.passwords import verify_password

    result = run_cli("hash-password", input_text="hunter2\n")
    assert result.returncode == 0
    encoded = result.stdout.strip()
    assert "hunter2" not in encoded and verify_password("hunter2", encoded)


def test_python_dash_m_and_console_script_agree():
    script = Path(sys.executable).parent / "gateway"
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30, env=os.environ)
    assert result.returncode == 0 and "hash-password" in result.stdout
