"""Who holds a local TCP port: whether it can be bound now, and which process listens on it (Linux /proc), so that
`gateway tap` can say what is in its way instead of retrying silently."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"  # the TCP state column of /proc/net/tcp for a listening socket
_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class PortOwner:
    pid: int
    name: str  # the program (and the gateway's subcommand); never the rest of its command line, which may hold secrets

    @property
    def is_gateway(self) -> bool:
        return self.name.startswith("gateway ")

    def __str__(self) -> str:
        return f"process {self.pid} ({self.name})"


def port_in_use(host: str, port: int) -> bool:
    """True when binding HOST:PORT fails because something holds it (the same options as the link's listener)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def listening_owner(port: int) -> PortOwner | None:
    """The process listening on `port` (any address), when this user may see it; None otherwise. Reads /proc:
    blocking, run it off the loop."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for process in _PROC.iterdir():
        if not process.name.isdigit():
            continue
        try:
            for fd in (process / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return PortOwner(int(process.name), _program(process))
        except OSError:  # another user's process, or it ended meanwhile
            continue
    return None


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _program(process: Path) -> str:
    """`gateway run` / `gateway demo` for a gateway (console script or `python -m gateway`), else the program name."""
    try:
        argv = (process / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    for index, arg in enumerate(argv[:-1]):
        is_gateway = Path(arg).name == "gateway" or (arg == "gateway" and index > 0 and argv[index - 1] == "-m")
        if is_gateway and argv[index + 1] in ("run", "demo", "tap"):
            return f"gateway {argv[index + 1]}"
    return Path(argv[0]).name if argv and argv[0] else "?"
