"""`gateway tap`: one link's raw lines beside what its parser makes of them, live — for installers at the PBX.

The tap opens the link itself (connects, listens or opens the serial port as configured), stores
nothing, and stops on Ctrl-C. When a running gateway already holds a listen:// link's port, the tap says
so, names the process, and points to the gateway's own live tap (`GET /links/NAME/tap`); it keeps
retrying until the port is free.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TextIO
from urllib.parse import urlsplit

from drivers.smdr.base import RecordParser
from drivers.smdr.link import HOLD_CHECK_INTERVAL_S, RELEASE_ALL, LineReader
from drivers.smdr.show import describe, printable
from drivers.transport import FramedLine, create_transport, host_port
from gateway.config import GatewayConfig, LinkConfig
from gateway.events import CallRecord, LinkState
from gateway.lifecycle import stop_on_signals
from gateway.model import utc_now
from gateway.port_owner import PortOwner, listening_owner, port_in_use

_ANY_ADDRESS = ("0.0.0.0", "::", "")


class Tap:
    def __init__(self, link: LinkConfig, out: TextIO) -> None:
        self.link = link
        self.out = out
        self.reader = LineReader(link)
        self.parser: RecordParser = self.reader.parser
        self.lines = 0
        self.records = 0
        self.errors = 0
        self.variant = self.parser.variant()  # how the lines are read; shown again whenever a line changes it

    def say(self, kind: str, text: str, at: datetime | None = None) -> None:
        stamp = (at or utc_now()).astimezone().strftime("%H:%M:%S.%f")[:-3]
        self.out.write(f"{stamp}  {kind:<6} {text}\n")
        self.out.flush()

    def show_records(self, records: list[CallRecord]) -> None:
        for record in records:
            self.records += 1
            self.say("call", describe(record), record.received_at)

    async def deliver(self, lines: list[FramedLine]) -> None:
        for line in lines:
            self.lines += 1
            self.say("raw", printable(line.raw), line.received_at)
            records, reason = self.reader.read(line)
            if reason is not None:
                self.errors += 1
                self.say("error", reason, line.received_at)
            elif records:
                self.show_records(records)
            elif self.parser.hold_timeout_s == 0:
                self.say("skip", "not a call record (header, separator, status line)", line.received_at)
            self.show_variant_change(line.received_at)

    def show_variant_change(self, at: datetime | None = None) -> None:
        """A header, a date or a clock mark can change how later lines are read: say so the moment it does."""
        variant = self.parser.variant()
        if variant != self.variant:
            self.variant = variant
            self.say("layout", variant, at)

    def on_state(self, state: LinkState) -> None:
        self.say("link", state.value)


def _gateway_url(config: GatewayConfig) -> str:
    """Where this configuration's gateway answers, as a client on this machine would write it."""
    host = "127.0.0.1" if config.http.host in _ANY_ADDRESS else config.http.host
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if config.http.tls else 'http'}://{host}:{config.http.port}"


def _port_taken(host: str, port: int) -> tuple[bool, PortOwner | None]:
    """Whether the port is held, and by which process when this user can see it (blocking: /proc)."""
    if not port_in_use(host, port):
        return False, None
    return True, listening_owner(port)


async def say_if_port_taken(tap: Tap, config: GatewayConfig) -> bool:
    """For a listen:// link whose port is held (most likely by the running gateway): say so in the tap's output,
    with what holds it and where the running gateway shows the same view. True when it was taken."""
    if urlsplit(tap.link.url).scheme != "listen":
        return False
    host, port = host_port(tap.link.url)
    taken, owner = await asyncio.to_thread(_port_taken, host, port)
    if not taken:
        return False
    if owner is not None and not owner.is_gateway:
        tap.say("busy", f"port {port} is taken by {owner}, not a gateway: stop it or change the link's port")
    else:
        holder = f"{owner}, the running gateway" if owner else "another program (not visible to this user)"
        keys = ", ".join(key.name for key in config.api.keys) or "none configured"
        tap.say("busy", f"port {port} is taken by {holder}: it holds this link")
        tap.say(
            "busy",
            f"it shows the link live: curl -N '{_gateway_url(config)}/links/{tap.link.name}/tap?apiKey=KEY'"
            f" (Server-Sent Events; KEY: one of the configuration's API keys: {keys})",
        )
    tap.say("busy", "this tap retries until the port is free, then shows 'link up'")
    return True


async def run_tap(config: GatewayConfig, link_name: str, out: TextIO) -> int:
    link = next((link for link in config.links if link.name == link_name), None)
    if link is None:
        names = ", ".join(link.name for link in config.links) or "none"
        raise KeyError(f"no link named {link_name!r} in {config.source} (links: {names})")
    tap = Tap(link, out)
    tap.say("tap", f"{link.name}: {link.format} on {link.url} — Ctrl-C to stop")
    tap.say("layout", tap.variant)
    await say_if_port_taken(tap, config)
    transport = create_transport(link, tap.deliver, on_state=tap.on_state)
    async with stop_on_signals() as stop:
        await transport.open()
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), HOLD_CHECK_INTERVAL_S)
                except TimeoutError:
                    tap.show_records(tap.parser.flush(utc_now()))
        finally:
            await transport.close()
            tap.show_records(tap.parser.flush(utc_now() + RELEASE_ALL))
            tap.say("tap", f"stopped: {tap.lines} lines, {tap.records} records, {tap.errors} errors")
    return 0
