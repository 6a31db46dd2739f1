"""`gateway check --probe`: tries each link's and recorder's target once — connects to a TCP address, binds a
listen port, opens a serial port — and says in one line each what it found. Nothing is sent to any device."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from drivers.connection.serial import port_settings
from gateway.cluster.database import DATABASE_ERRORS, describe
from gateway.config import GatewayConfig, SerialSettings
from gateway.config.check import Endpoint, endpoints
from gateway.redact import redacted_url

# A PBX or recorder on the LAN answers a connect within milliseconds; 3 s also covers a slow VPN or WAN link
# without making an installer wait long for a device that is off.
PROBE_CONNECT_TIMEOUT_S = 3.0
# pySerial's own bounds on an rfc2217:// open: 5 s to connect, then 3 s per negotiation step. The wait for the
# open's thread is a little longer, so that pySerial's message (which step failed) is the one reported.
PROBE_SERIAL_OPEN_TIMEOUT_S = 10.0
# Closing a connection just made: a peer that does not acknowledge is not waited for longer than this.
PROBE_CLOSE_TIMEOUT_S = 1.0
_NO_ROUTE_ERRNOS = (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)
_PROC = "/proc"
_TCP_LISTEN_STATE = "0A"  # /proc/net/tcp's code for LISTEN
HOLDER_TEXT_MAX = 60  # characters of a holding process's command line shown


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What probing one target found: `link pbx-main: tcp 10.0.0.5:2300: connected in 12 ms`."""

    owner: str  # "link pbx-main", "recorder trunk1"
    target: str  # "tcp 10.0.0.5:2300", "listen 0.0.0.0:5100", "serial /dev/ttyUSB0", "rfc2217 10.0.0.9:4001"
    reachable: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.owner}: {self.target}: {self.detail}"


async def probe_config(config: GatewayConfig) -> list[ProbeResult]:
    """Every link and recorder probed at once (the slowest bounds the wait), reported in the file's order."""
    settings: list[SerialSettings | None] = [link.serial for link in config.links]
    settings += [recorder.serial for recorder in config.recorders]
    owners = [f"link {link.name}" for link in config.links] + [f"recorder {r.name}" for r in config.recorders]
    probes = [_probe(owner, endpoint, serial) for owner, endpoint, serial in zip(owners, endpoints(config), settings)]
    if config.store.url is not None:
        probes.append(_probe_store(config.store.url))
    return list(await asyncio.gather(*probes))


async def _probe_store(url: str) -> ProbeResult:
    return ProbeResult("store", f"postgresql {redacted_url(url)}", *await probe_database(url))


async def probe_database(url: str) -> tuple[bool, str]:
    """Connects and logs in to the cluster database once; says how long it took, the server's version and whether
    the gateway's tables are there yet (the first gateway to start creates them)."""
    started = time.perf_counter()
    try:
        connection = await asyncpg.connect(
            url, timeout=PROBE_CONNECT_TIMEOUT_S, command_timeout=PROBE_CONNECT_TIMEOUT_S
        )
    except DATABASE_ERRORS as error:
        return False, describe(error, url)
    try:
        elapsed = _elapsed_ms(started)
        version = await connection.fetchval("SHOW server_version")
        tables = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        schema = (
            f"schema version {await connection.fetchval('SELECT max(version) FROM schema_migrations')}"
            if tables
            else "no gateway tables yet (the first gateway to start creates them)"
        )
    except DATABASE_ERRORS as error:
        return False, f"connected, then {describe(error, url)}"
    finally:
        await connection.close(timeout=PROBE_CLOSE_TIMEOUT_S)
    return True, f"connected in {elapsed} (PostgreSQL {version}; {schema})"


async def _probe(owner: str, endpoint: Endpoint, serial: SerialSettings | None) -> ProbeResult:
    if endpoint.listen is not None:
        host, port = endpoint.listen
        return ProbeResult(owner, f"listen {_host_port(host, port)}", *await probe_listen(host, port))
    if endpoint.connect is not None:
        host, port = endpoint.connect
        scheme = endpoint.url.partition("://")[0]
        target = f"{scheme} {_host_port(host, port)}"
        reachable, detail = await probe_connect(host, port)
        if reachable and scheme != "tcp":  # a serial device server: let pySerial open it as the gateway will
            opened, serial_detail = await probe_serial(endpoint.url, serial)
            return ProbeResult(owner, target, opened, f"{detail}; {serial_detail}")
        return ProbeResult(owner, target, reachable, detail)
    return ProbeResult(owner, f"serial {endpoint.url}", *await probe_serial(endpoint.url, serial))


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _elapsed_ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


async def probe_connect(host: str, port: int) -> tuple[bool, str]:
    """Connects and closes at once: (reachable, 'connected in 12 ms' / 'refused' / 'timed out after 3 s' / …)."""
    started = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_CONNECT_TIMEOUT_S)
    except TimeoutError:
        return False, f"timed out after {PROBE_CONNECT_TIMEOUT_S:g} s (a firewall dropping packets, or no such host)"
    except ConnectionRefusedError:
        return False, "refused (the host answers, but nothing listens on that port)"
    except socket.gaierror as error:
        return False, f"cannot resolve {host}: {error.strerror}"
    except OSError as error:
        if error.errno in _NO_ROUTE_ERRNOS:
            return False, "no route to the host (wrong address, or a network this machine cannot reach)"
        return False, f"failed: {error.strerror or error}"
    elapsed = _elapsed_ms(started)
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), PROBE_CLOSE_TIMEOUT_S)
    except (OSError, TimeoutError):
        pass  # the connection was made; how it ends says nothing more
    return True, f"connected in {elapsed}"


async def probe_listen(host: str, port: int) -> tuple[bool, str]:
    """Binds the port as the gateway would (SO_REUSEADDR, as asyncio's servers do) and lets it go at once."""
    try:
        addresses = await _passive_addresses(host, port)
    except socket.gaierror as error:
        return False, f"cannot resolve {host}: {error.strerror}"
    family, kind, protocol, _, address = addresses[0]
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            holders = await asyncio.to_thread(_port_holders, port)
            who = f"by {holders}" if holders else "by another process (one this user may not look at: try as root)"
            return False, f"in use {who}"
        if error.errno == errno.EACCES:
            return False, "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE"
        if error.errno == errno.EADDRNOTAVAIL:
            return False, f"{host} is not an address of this machine"
        return False, f"cannot bind: {error.strerror or error}"
    finally:
        listener.close()
    return True, "free: the gateway can listen here"


async def _passive_addresses(host: str, port: int) -> list[Any]:
    """Where a server on HOST:PORT binds; an IP address is taken as it is, a host name is resolved off the loop."""
    try:
        return socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST
        )
    except socket.gaierror:
        loop = asyncio.get_running_loop()
        return await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)


async def probe_serial(url: str, settings: SerialSettings | None) -> tuple[bool, str]:
    """Opens the port with pySerial and the configured settings, as the gateway will, and closes it; nothing is
    written. A local port another process holds is not opened: pySerial's open flushes its input."""
    if url.startswith("/"):
        holders = await asyncio.to_thread(_file_holders, os.path.realpath(url))
        if holders:
            return False, f"in use by {holders}: not opened (opening would discard what it has not read yet)"
    keywords = port_settings(settings)
    started = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.to_thread(_open_and_close, url, keywords), PROBE_SERIAL_OPEN_TIMEOUT_S)
    except TimeoutError:
        return False, f"did not open within {PROBE_SERIAL_OPEN_TIMEOUT_S:g} s"
    except OSError as error:  # pySerial's SerialException is an OSError; its errno is that of the failed call
        return False, _serial_error_text(error)
    except ValueError as error:  # a setting the port refuses (pySerial checks them before opening)
        return False, f"refused the settings: {error}"
    line = f"{keywords['baudrate']} {keywords['bytesize']}{keywords['parity']}{keywords['stopbits']:g}"
    return True, f"opened at {line} in {_elapsed_ms(started)} and closed (nothing sent)"


def _open_and_close(url: str, keywords: dict[str, Any]) -> None:  # runs in a thread
    import serial  # loaded only when a serial port is probed

    port = serial.serial_for_url(url, do_not_open=True, **keywords)
    port.open()
    port.close()


def _serial_error_text(error: OSError) -> str:
    if error.errno == errno.ENOENT:
        return "does not exist"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (is this user in the dialout group?)"
    if error.errno == errno.EBUSY:
        return "busy: another process holds it"
    return f"cannot open: {error.strerror or error}"


# --- who holds a port: /proc, readable for this user's processes (all of them as root) -------------------------


def _holders(matches: Callable[[str], bool]) -> str:
    """'PID 1234 (python -m gateway run …)' for each process with an open file descriptor whose link matches."""
    found = []
    try:
        pids = [name for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return ""
    for pid in pids:
        try:
            descriptors = os.listdir(f"{_PROC}/{pid}/fd")
        except OSError:
            continue  # another user's process, or gone
        for descriptor in descriptors:
            try:
                target = os.readlink(f"{_PROC}/{pid}/fd/{descriptor}")
            except OSError:
                continue
            if matches(target):
                found.append(f"PID {pid} ({_command_line(pid)})")
                break
    return ", ".join(found)


def _command_line(pid: str) -> str:
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as file:
            text = file.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    return text if len(text) <= HOLDER_TEXT_MAX else text[: HOLDER_TEXT_MAX - 1] + "…"


def _file_holders(path: str) -> str:
    return _holders(lambda target: target == path)


def _port_holders(port: int) -> str:
    inodes = _listening_inodes(port)
    return _holders(lambda target: target in inodes) if inodes else ""


def _listening_inodes(port: int) -> set[str]:
    """`socket:[INODE]` of every socket listening on the port, from /proc/net/tcp and tcp6."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{_PROC}/net/{table}") as file:
                rows = file.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == _TCP_LISTEN_STATE:
                inodes.add(f"socket:[{fields[9]}]")
    return inodes
