"""`gateway run` under a stand-in for systemd: a real AF_UNIX datagram socket as $NOTIFY_SOCKET receives READY=1
once the API listens, WATCHDOG=1 at half of WATCHDOG_USEC, and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.systemd import SystemdNotifier
from tests.conftest import gateway_command
from tests.integration.test_gateway_process import STOP_TIMEOUT_S, write_config

MESSAGE_TIMEOUT_S = 30.0  # the first message waits for a whole gateway start-up in a fresh interpreter
WATCHDOG_USEC = 200_000  # 0.2 s: pings every 0.1 s, several within a short test


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in Linux's abstract namespace (no path length limit), as '@name' for $NOTIFY_SOCKET."""
    name = f"recorder-gateway-test-{os.getpid()}-{id(object())}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.setblocking(False)
    try:
        yield receiver, "@" + name
    finally:
        receiver.close()


async def next_message(receiver: socket.socket) -> str:
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(receiver, 4096), MESSAGE_TIMEOUT_S)
    return data.decode()


async def port_accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def test_gateway_run_notifies_ready_watchdog_and_stopping(tmp_path, unused_tcp_port_factory, notify_socket):
    receiver, address = notify_socket
    port = unused_tcp_port_factory()
    config = write_config(tmp_path, port, unused_tcp_port_factory())
    environment = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    process = await gateway_command(
        "run",
        "--config",
        str(config),
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        first = await next_message(receiver)
        assert first.splitlines()[0] == "READY=1"
        assert f"STATUS=serving http://127.0.0.1:{port}" in first.splitlines()
        assert await port_accepts(port), "READY=1 came before the API listened"
        watchdog_pings = 0
        while watchdog_pings < 3:
            message = await next_message(receiver)
            assert message == "WATCHDOG=1"
            watchdog_pings += 1
        process.send_signal(signal.SIGTERM)
        while (message := await next_message(receiver)) == "WATCHDOG=1":
            pass
        assert message.splitlines()[0] == "STOPPING=1"
        _, stderr = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT_S)
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_no_notify_socket_means_no_messages_and_no_watchdog_task() -> None:
    notifier = SystemdNotifier({"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    notifier.start_watchdog()
    assert notifier._watchdog is None
    await notifier.close()


async def test_a_socket_path_works_and_a_watchdog_meant_for_another_process_is_ignored() -> None:
    # A short folder of its own: an AF_UNIX path is limited to 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as folder:
        path = str(Path(folder) / "notify")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(path)
        try:
            other_process = SystemdNotifier(
                {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
            )
            assert other_process.watchdog_interval_s is None
            this_process = SystemdNotifier(
                {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
            )
            assert this_process.watchdog_interval_s == 0.5
            this_process.ready("serving")
            assert receiver.recv(4096) == b"READY=1\nSTATUS=serving"
            await this_process.stopping()
            assert receiver.recv(4096).startswith(b"STOPPING=1")
            await this_process.close()
        finally:
            receiver.close()


async def test_a_vanished_socket_is_logged_once_and_never_raises(tmp_path) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "@recorder-gateway-test-nobody-listens-here"})
    assert notifier.enabled
    assert notifier.notify("WATCHDOG=1") is False
    assert notifier.notify("WATCHDOG=1") is False
    await notifier.close()
