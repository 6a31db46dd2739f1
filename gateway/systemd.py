"""sd_notify for `gateway run` under systemd (`Type=notify`, deploy/recorder-gateway.service): READY=1, WATCHDOG=1
and STOPPING=1 sent to $NOTIFY_SOCKET with the standard library only; does nothing when that variable is unset."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"
# systemd's own advice (sd_watchdog_enabled(3)): ping at half the configured interval, so that one late ping
# (a busy moment of the event loop) does not get the service killed.
WATCHDOG_PINGS_PER_INTERVAL = 2


class SystemdNotifier:
    """One process's channel to systemd. Messages are datagrams on a non-blocking socket: a send never waits on the
    event loop; a message systemd cannot take right now is dropped and logged (systemd does the same to clients)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.socket_text = environ.get(NOTIFY_SOCKET_ENV, "")
        self.address = _socket_address(self.socket_text)
        self.watchdog_interval_s = _watchdog_interval_s(environ)
        self._socket: socket.socket | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._send_failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Sends `fields` as one message (newline-separated, as sd_notify does); True when it was sent."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as error:
            if not self._send_failed:  # once per process: a missing socket would otherwise log at every ping
                log.warning("cannot notify systemd", socket=self.socket_text, error=str(error))
                self._send_failed = True
            return False
        return True

    def ready(self, status: str) -> None:
        """The API listens and the links and recorders are started: systemd may start what waits for us."""
        self.notify(READY, f"STATUS={status}")
        if self.enabled:
            log.debug("systemd notified: ready")

    def start_watchdog(self) -> None:
        """Pings WATCHDOG=1 from a task on the event loop: when the loop stops turning, the pings stop and systemd
        restarts the service after WatchdogSec. No task when systemd asked for no watchdog."""
        if self.enabled and self.watchdog_interval_s is not None and self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._ping_watchdog(self.watchdog_interval_s), name="systemd watchdog"
            )

    async def _ping_watchdog(self, interval_s: float) -> None:
        while True:
            self.notify(WATCHDOG)
            await asyncio.sleep(interval_s)

    async def stopping(self) -> None:
        """Shutdown begins: the watchdog ends (TimeoutStopSec bounds the rest) and systemd is told."""
        await self.stop_watchdog()
        self.notify(STOPPING, "STATUS=shutting down")

    async def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    async def close(self) -> None:
        await self.stop_watchdog()
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(text: str) -> str | None:
    """$NOTIFY_SOCKET as an AF_UNIX address: a path, or '@name' for Linux's abstract namespace (a leading NUL)."""
    if text.startswith("/"):
        return text
    if text.startswith("@") and len(text) > 1:
        return "\0" + text[1:]
    return None  # unset, empty, or a form this module does not speak (vsock:…): no notifications


def _watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings, or None when systemd set no watchdog for this process."""
    try:
        usec = int(environ.get(WATCHDOG_USEC_ENV, ""))
    except ValueError:
        return None
    pid = environ.get(WATCHDOG_PID_ENV)
    if usec <= 0 or (pid is not None and pid != str(os.getpid())):
        return None  # the watchdog is meant for another process (a parent that exec'd without clearing it)
    return usec / 1_000_000 / WATCHDOG_PINGS_PER_INTERVAL
