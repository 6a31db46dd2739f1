"""TCP for every link: HOST:PORT of a URL, outgoing connections, and keepalive on every socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.errors import LinkError

# TCP keepalive on every TCP socket, so that a half-open link (PBX or recorder rebooted, cable pulled) is noticed
# in about 60 + 3 × 10 s even though hours of silence are normal on an SMDR link.
TCP_KEEPIDLE_S = 60
TCP_KEEPINTVL_S = 10
TCP_KEEPCNT = 3

_Protocol = TypeVar("_Protocol", bound=asyncio.BaseProtocol)


def host_port(url: str) -> tuple[str, int]:
    """HOST and PORT of a `listen://`, `tcp://` (or any HOST:PORT) URL; LinkError when it has none."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise LinkError(f"{url!r} has no HOST:PORT")
    return parts.hostname, parts.port


def format_peer(address: Any) -> str:
    """A socket address as log lines and FramedLine.peer show it: `HOST:PORT`, `[v6]:PORT`."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address) if address else ""


def enable_tcp_keepalive(sock: Any) -> None:
    """SO_KEEPALIVE with 60 s idle, 10 s interval, 3 probes where the platform has those options."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        return
    for name, value in (
        ("TCP_KEEPIDLE", TCP_KEEPIDLE_S),
        ("TCP_KEEPINTVL", TCP_KEEPINTVL_S),
        ("TCP_KEEPCNT", TCP_KEEPCNT),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass


def is_tcp_socket(sock: Any) -> bool:
    return sock is not None and sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6)


async def open_tcp_connection(
    protocol_factory: Callable[[], _Protocol], host: str, port: int
) -> tuple[asyncio.Transport, _Protocol]:
    """An outgoing TCP connection with keepalive on. No timeout of its own: the caller bounds the wait."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(protocol_factory, host, port)
    sock = transport.get_extra_info("socket")
    if is_tcp_socket(sock):
        enable_tcp_keepalive(sock)
    return transport, protocol
