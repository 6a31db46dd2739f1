"""`gateway check --probe` as a real process against real targets on this machine: a loopback listener, a closed
port, a free and a held listen port, ptys standing in for serial ports, and an RFC 2217 device server."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.device_server import Rfc2217DeviceServer
from tests.conftest import gateway_command

CHECK_TIMEOUT_S = 30.0
KEY = "api:\n  keys:\n    - key: 74c8eea0-50c6-40b2-9f3e-252ed501c3c8\n      name: crm\n"


NO_DESCRIPTOR = -1


@pytest.fixture
def ptys() -> Iterator[list[tuple[int, int, str]]]:
    """Pty pairs (master fd, slave fd or NO_DESCRIPTOR, slave path) made by new_pty; closed after the test."""
    opened: list[tuple[int, int, str]] = []
    yield opened
    for master, slave, _ in opened:
        for descriptor in (master, slave):
            if descriptor != NO_DESCRIPTOR:
                os.close(descriptor)


def new_pty(ptys: list[tuple[int, int, str]], *, keep_slave_open: bool) -> str:
    """A pty whose slave path stands in for a serial port; with keep_slave_open this process holds the port."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    if not keep_slave_open:
        os.close(slave)
        slave = NO_DESCRIPTOR
    ptys.append((master, slave, path))
    return path


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


async def check(config: Path) -> tuple[int, str, str]:
    process = await gateway_command(
        "check",
        "--probe",
        "--config",
        str(config),
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CHECK_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def probe_lines(stdout: str) -> dict[str, str]:
    """'link NAME' / 'recorder NAME' → 'TARGET: DETAIL' from the probe's lines."""
    lines = stdout.split("probing each link and recorder (nothing is sent):\n", 1)[1].splitlines()
    found = {}
    for line in lines:
        if line.startswith("  "):
            owner, _, rest = line.strip().partition(": ")
            found[owner] = rest
    return found


async def test_probe_says_what_each_target_answered_and_exits_1_when_one_did_not(tmp_path, ptys) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    pbx = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    pbx_port = pbx.sockets[0].getsockname()[1]
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    held_port = held.getsockname()[1]
    free_pty = new_pty(ptys, keep_slave_open=False)
    held_pty = new_pty(ptys, keep_slave_open=True)  # this test process holds it, as a running gateway would
    device_server = Rfc2217DeviceServer(new_pty(ptys, keep_slave_open=False))
    device_server_port = await device_server.start()
    closed_port, free_listen_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        KEY
        + f"""\
store:
  path: {tmp_path / "gateway.db"}
links:
  - {{name: pbx, format: avaya-ipo, url: "tcp://127.0.0.1:{pbx_port}"}}
  - {{name: pushed, format: avaya-ipo, url: "listen://127.0.0.1:{free_listen_port}"}}
  - {{name: taken, format: avaya-ipo, url: "listen://127.0.0.1:{held_port}"}}
  - {{name: cable, format: panasonic, url: {free_pty}, baudrate: 1200, parity: E, bytesize: 7}}
  - {{name: busy-cable, format: panasonic, url: {held_pty}}}
recorders:
  - {{name: trunk-off, url: "tcp://127.0.0.1:{closed_port}"}}
  - {{name: remote, url: "rfc2217://127.0.0.1:{device_server_port}"}}
"""
    )
    try:
        status, stdout, stderr = await check(config)
    finally:
        pbx.close()
        await pbx.wait_closed()
        held.close()
        await device_server.stop()
    assert status == 1, stderr
    found = probe_lines(stdout)
    assert list(found) == [
        "link pbx",
        "link pushed",
        "link taken",
        "link cable",
        "link busy-cable",
        "recorder trunk-off",
        "recorder remote",
    ]
    assert found["link pbx"].startswith(f"tcp 127.0.0.1:{pbx_port}: connected in ")
    assert found["link pushed"] == f"listen 127.0.0.1:{free_listen_port}: free: the gateway can listen here"
    assert found["link taken"].startswith(f"listen 127.0.0.1:{held_port}: in use by PID {os.getpid()} (")
    assert found["link cable"].startswith(f"serial {free_pty}: opened at 1200 7E1 in ")
    assert found["link cable"].endswith(" and closed (nothing sent)")
    assert found["link busy-cable"].startswith(f"serial {held_pty}: in use by PID {os.getpid()} (")
    assert found["recorder trunk-off"].startswith(f"tcp 127.0.0.1:{closed_port}: refused")
    assert found["recorder remote"].startswith(f"rfc2217 127.0.0.1:{device_server_port}: connected in ")
    assert "; opened at 9600 8N1 in " in found["recorder remote"]
    assert "configuration OK" in stdout
    assert "3 of 7 targets not reachable" in stderr


async def test_probe_exits_0_when_every_target_answers(tmp_path, ptys) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    recorder = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    recorder_port = recorder.sockets[0].getsockname()[1]
    config = tmp_path / "gateway.yaml"
    config.write_text(
        KEY
        + f"""\
store:
  path: {tmp_path / "gateway.db"}
links:
  - {{name: cable, format: panasonic, url: {new_pty(ptys, keep_slave_open=False)}}}
recorders:
  - {{name: trunk1, url: "tcp://127.0.0.1:{recorder_port}"}}
"""
    )
    try:
        status, stdout, stderr = await check(config)
    finally:
        recorder.close()
        await recorder.wait_closed()
    assert status == 0, stdout + stderr
    assert set(probe_lines(stdout)) == {"link cable", "recorder trunk1"}
    assert stderr == ""


async def test_probe_logs_in_to_the_cluster_database_or_says_why_not(pg_url, unused_tcp_port) -> None:
    from gateway.cluster.database import Database
    from gateway.cluster.schema import migrate
    from gateway.probe import probe_database

    reachable, detail = await probe_database(pg_url)
    assert reachable and "PostgreSQL 1" in detail and "no gateway tables yet" in detail, detail
    database = Database(pg_url)
    async with database.connection() as connection:
        await migrate(connection)
    await database.close()
    reachable, detail = await probe_database(pg_url)
    assert reachable and "schema version 1" in detail, detail
    password = pg_url.split(":")[2].split("@")[0]
    wrong = pg_url.replace(password, "not-the-password")
    reachable, detail = await probe_database(wrong)
    assert not reachable and "password authentication failed" in detail and "not-the-password" not in detail
    reachable, detail = await probe_database(f"postgresql://gateway:{password}@127.0.0.1:{unused_tcp_port}/x")
    assert not reachable and password not in detail, detail
