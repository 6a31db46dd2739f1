"""`gateway demo`: the gateway on a configuration (the bundled default) with simulators in place of hardware.
It runs the whole application (gateway.service), so it lives here with the simulators, not in the core.

Every `tcp://` recorder of the file gets a trunk recorder simulator listening on its address; every
`listen://` link gets a PBX simulator that connects to it, every `tcp://` link one that listens on its
address (with the format's login prompt). One seeded traffic model drives the first link's PBX and the
recorders together, so that each live recorder call is later described by exactly one PBX record; the
other links' PBXs carry PBX-only traffic. The demo keeps one long call in progress on a Controlled
extension so that the printed examples (GetCallID, KeepCall manualRecord, GetCallInformation) always
find a call.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO
from urllib.parse import urlencode, urlsplit

import structlog

from drivers.smdr import link_timezone
from drivers.transport import host_port
from drivers.trunkrec.protocol import parse_channel
from gateway.config import ApiKeyConfig, GatewayConfig, RecorderConfig
from gateway.errors import GatewayError
from gateway.feed import Subscription
from gateway.lifecycle import stop_on_signals
from gateway.model import RecordingMode
from gateway.port_owner import port_in_use
from gateway.service import Gateway, freeze_startup_objects, tune_interpreter
from simulators.demo_events import print_events, subscribe
from simulators.pbx import PbxSimulator
from simulators.site import Site, first_call_id_from_clock
from simulators.traffic import TrafficModel
from simulators.trunkrec import TIMESLOTS_PER_SPAN, TrunkRecorderSimulator

log = structlog.get_logger(__name__)

DEMO_CALLS_PER_MINUTE = 12.0
# Extensions the PBX has beside the configured ones: unrecorded desks, the ones transfers go between.
DEMO_EXTRA_EXTENSIONS = tuple(str(number) for number in range(2001, 2011))
# The call kept in progress for the examples: long, so that a KeepCall start/stop can be tried at leisure.
PINNED_CALL_S = 900.0
# Until the gateway shows the pinned call as ongoing (the recorder simulator answers at once on loopback).
DEMO_READY_TIMEOUT_S = 30.0
DEMO_READY_POLL_S = 0.05
RECORDER_CHANNELS_MIN = 60
# Ended calls each site remembers (for a look in a debugger or a test); bounded, the demo runs for days.
SITE_HISTORY = 1_000
LOOPBACK = ipaddress.ip_address("127.0.0.1")
# Shorter talk than the model's default, so that records (written when a call ends) show in the first minute.
DEMO_TALK_MEDIAN_S = 15.0


# The demo's store beside the configured one, never the same file: a real gateway's calls stay apart from the
# demo's (a sped-up demo makes calls that end in the future).
DEMO_STORE_SUFFIX = "-demo"
SQLITE_COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")


def demo_store_path(configured: Path) -> Path:
    """`var/gateway.db` → `var/gateway-demo.db`."""
    return configured.with_name(f"{configured.stem}{DEMO_STORE_SUFFIX}{configured.suffix}")


def remove_store_files(path: Path) -> list[Path]:
    """Delete a SQLite store and its companion files (blocking: run off the loop); the files that were there."""
    removed = []
    for file in [path, *(path.with_name(path.name + suffix) for suffix in SQLITE_COMPANION_SUFFIXES)]:
        try:
            file.unlink()
            removed.append(file)
        except FileNotFoundError:
            pass
    return removed


class DemoError(GatewayError):
    """The configuration cannot be demonstrated (e.g. nothing the simulators can stand in for)."""


@dataclass(frozen=True)
class DemoExamples:
    """What the banner shows: where the API is, with which key, and which extension has a call."""

    url: str
    api_key: str
    extension: str
    manual_record: bool  # the extension is Controlled: KeepCall type=manualRecord works on it

    def requests(self) -> list[tuple[str, dict[str, str]]]:
        by_extension = {"extension": self.extension, "status": "ongoing"}
        keep = {"type": "manualRecord"} if self.manual_record else {"type": "do_not_delete"}
        return [
            ("GetCallID: the ID of the call in progress", {"action": "GetCallID", **by_extension}),
            (
                "KeepCall: start recording it" if self.manual_record else "KeepCall: protect it from deletion",
                {"action": "KeepCall", **by_extension, **keep},
            ),
            (
                "GetCallInformation: its record, as JSON",
                {"action": "GetCallInformation", **by_extension, "responseType": "JSON"},
            ),
        ]

    def curl_lines(self) -> list[str]:
        lines = []
        for title, params in self.requests():
            query = urlencode({"action": params.pop("action"), "apiKey": self.api_key, **params})
            lines += [f"  # {title}", f"  curl '{self.url}/verba/api?{query}'"]
        return lines


def _network_address(url: str) -> tuple[str, int] | None:
    """HOST and PORT of a tcp:// or listen:// URL (the configuration checked both are there); None for serial."""
    return host_port(url) if urlsplit(url).scheme in ("tcp", "listen") else None


def _open_key(keys: Sequence[ApiKeyConfig]) -> ApiKeyConfig | None:
    """A key that works without a token from this machine: the examples must run as printed."""
    for key in keys:
        if key.require_token:
            continue
        if key.networks is None or any(
            isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)) and LOOPBACK in network
            for network in key.networks
        ):
            return key
    return None


class Demo:
    """The gateway, the simulators standing in for its recorders and PBXs, and the traffic between them."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        seed: int | None = None,
        calls_per_minute: float = DEMO_CALLS_PER_MINUTE,
        speed: float = 1.0,
        keep_store: bool = False,
    ) -> None:
        self.store_path = demo_store_path(config.store.path)
        self.keep_store = keep_store  # False: the demo's store starts empty each run
        self.config = replace(config, store=replace(config.store, path=self.store_path))
        self.seed = seed
        self.calls_per_minute = calls_per_minute
        self.speed = speed  # site time runs this much faster than real time (calls shorter, records sooner)
        self.gateway = Gateway(self.config)
        self.recorders: dict[str, TrunkRecorderSimulator] = {}
        self.pbxs: dict[str, PbxSimulator] = {}
        self.sites: list[Site] = []
        self.skipped: list[str] = []  # what the simulators cannot stand in for, said in the banner
        self.notes: list[str] = []  # configuration the simulators' output needs and the file lacks
        self._site_tasks: list[asyncio.Task[None]] = []
        self.pinned_extension: str | None = None
        self.examples: DemoExamples | None = None
        self._event_printer: asyncio.Task[None] | None = None
        self._events: Subscription | None = None

    # ---- life cycle

    async def start(self) -> None:
        key = _open_key(self.config.api.keys)
        if key is None:
            raise DemoError(
                "no API key works without a token from 127.0.0.1: the examples need one in the configuration"
            )
        if not self.config.extensions:
            raise DemoError("the configuration has no extensions: the examples need one")
        if not self.keep_store:
            http = self.config.http
            # A demo already running holds the API port and this store: leave its store alone and say why.
            if await asyncio.to_thread(port_in_use, http.host, http.port):
                raise DemoError(
                    f"{http.host}:{http.port}: address already in use — is another gateway or demo running? "
                    f"The demo store {self.store_path} is left as it is"
                )
            await asyncio.to_thread(remove_store_files, self.store_path)
        try:
            # What the gateway connects to listens before it starts, so that its links come up at once.
            await self._start_recorders()
            await self._start_pbxs(for_links_that_connect=True)
            await self.gateway.start()
            self._events = subscribe(self.gateway.feed)  # before the traffic: the first calls are shown too
            await self._start_pbxs(for_links_that_connect=False)
            self._start_traffic()
            await self._wait_for_pinned_call()
        except BaseException:
            await self.stop()
            raise
        extension = self.pinned_extension or self.config.extensions[0].number
        mapped = self.config.extension(extension)
        manual = mapped is not None and mapped.mode in (RecordingMode.CONTROLLED, RecordingMode.CONTROLLED_AUTOSTART)
        self.examples = DemoExamples(self.gateway.url, key.key, extension, manual)

    def print_events(self, out: TextIO) -> None:
        """From now on, a line on `out` per call started or ended, recording started or stopped, KeepCall."""
        assert self._events is not None, "start() first"
        self._event_printer = asyncio.create_task(
            print_events(self.gateway.feed, self._events, out), name="demo-event-lines"
        )

    async def stop(self) -> None:
        if self._event_printer is not None:
            self._event_printer.cancel()
            await asyncio.gather(self._event_printer, return_exceptions=True)
            self._event_printer = None
        for task in self._site_tasks:
            task.cancel()
        await asyncio.gather(*self._site_tasks, return_exceptions=True)  # sites release their recorder calls
        self._site_tasks.clear()
        for pbx in self.pbxs.values():
            await pbx.stop()
        await self.gateway.stop()
        for recorder in self.recorders.values():
            await recorder.stop()

    # ---- the pieces

    async def _start_recorders(self) -> None:
        for recorder in self.config.recorders:
            address = _network_address(recorder.url)
            if address is None:
                self.skipped.append(f"recorder {recorder.name}: {recorder.url} is not tcp://, no simulator for it")
                continue
            simulator = TrunkRecorderSimulator(channels=self._channels_needed(recorder), name=recorder.name)
            await simulator.start_tcp(*address)
            self.recorders[recorder.name] = simulator

    def _channels_needed(self, recorder: RecorderConfig) -> int:
        slots = [  # whole E1 spans up to the highest one an extension is on
            parse_channel(extension.channel)[0] * TIMESLOTS_PER_SPAN
            for extension in self.config.extensions
            if extension.channel and extension.recorder == recorder.name
        ]
        return max([RECORDER_CHANNELS_MIN, *slots])

    async def _start_pbxs(self, *, for_links_that_connect: bool) -> None:
        """PBXs for tcp:// links (they listen, the gateway connects), or for listen:// links (they connect)."""
        for link in self.config.links:
            if link.url.startswith("tcp://") != for_links_that_connect:
                continue
            address = _network_address(link.url)
            if address is None:
                if not for_links_that_connect:
                    self.skipped.append(f"link {link.name}: {link.url} is a serial port, no simulator for it")
                continue
            pbx = PbxSimulator(link.format, tz=link_timezone(link), name=f"pbx-{link.name}")
            needed = {
                key: value for key, value in pbx.profile.gateway_options.items() if link.options.get(key) != value
            }
            if needed:
                self.notes.append(
                    f"link {link.name}: the {link.format} simulator's records need these link options: {needed}"
                )
            if link.url.startswith("listen://"):
                await pbx.connect(*address)
            else:
                await pbx.start_listen(*address)
            self.pbxs[link.name] = pbx

    def _start_traffic(self) -> None:
        """The first link's PBX and the first recorder play one model (so each recorder call gets its record);
        further links' PBXs play PBX-only models, further recorders make random calls of their own."""
        recorders = list(self.recorders)
        first_recorder = recorders[0] if recorders else None
        recorded = {
            extension.number: extension
            for extension in self.config.extensions
            if extension.channel and first_recorder is not None and extension.recorder == first_recorder
        }
        controlled = [
            number
            for number, extension in recorded.items()
            if extension.mode in (RecordingMode.CONTROLLED, RecordingMode.CONTROLLED_AUTOSTART)
        ]
        self.pinned_extension = controlled[0] if controlled else next(iter(recorded), None)
        configured = [extension.number for extension in self.config.extensions]
        extensions = configured + [number for number in DEMO_EXTRA_EXTENSIONS if number not in configured]
        pbx_links = [link.name for link in self.config.links if link.name in self.pbxs]  # in the file's order
        pinned_extension = self.pinned_extension
        for index, link_name in enumerate(pbx_links or [None]):
            first = index == 0
            model = TrafficModel(
                seed=None if self.seed is None else self.seed + index,
                calls_per_minute=self.calls_per_minute,
                talk_median_s=DEMO_TALK_MEDIAN_S,
                extensions=extensions,
                transfer_extensions=[number for number in extensions if number not in recorded],
                pinned={pinned_extension: PINNED_CALL_S} if first and pinned_extension else None,
            )
            site = Site(
                model.calls(),
                pbx=self.pbxs[link_name] if link_name else None,
                recorder=self.recorders[first_recorder] if first and first_recorder else None,
                channels={number: extension.channel for number, extension in recorded.items() if extension.channel}
                if first
                else None,
                speed=self.speed,
                first_pbx_call_id=first_call_id_from_clock(),
                history=SITE_HISTORY,
            )
            self.sites.append(site)
            self._site_tasks.append(asyncio.create_task(site.run(), name=f"demo-site-{link_name or 'recorder'}"))
        for name in recorders[1:]:
            self.recorders[name].start_traffic(self.calls_per_minute)

    async def _wait_for_pinned_call(self) -> None:
        if self.pinned_extension is None or not self.sites:
            return
        async with asyncio.timeout(DEMO_READY_TIMEOUT_S):
            while not self.gateway.tracker.ongoing_calls_of(self.pinned_extension):
                await asyncio.sleep(DEMO_READY_POLL_S)

    # ---- output

    def banner(self) -> str:
        assert self.examples is not None
        lines = [
            "",
            f"Gateway demo running: API {self.examples.url}/verba/api   health {self.examples.url}/healthz",
            f"Demo API key: {self.examples.api_key}   configuration: {self.config.source}",
            "Simulated: "
            + ", ".join(
                [f"recorder {name} ({len(sim.channel_names)} channels)" for name, sim in self.recorders.items()]
                + [f"PBX {pbx.fmt} on link {name}" for name, pbx in self.pbxs.items()]
            ),
            (
                f"A call is kept in progress on extension {self.examples.extension}; try:"
                if self.pinned_extension
                else f"No simulated recorder carries an extension, so no call is kept in progress; with extension "
                f"{self.examples.extension}, once it has calls:"
            ),
            *self.examples.curl_lines(),
        ]
        lines += [f"Not simulated: {what}" for what in self.skipped]
        lines += [f"Note: {note}" for note in self.notes]
        key = urlencode({"apiKey": self.examples.api_key})
        kept = (
            "kept between runs (--keep-store)" if self.keep_store else "emptied at each start (--keep-store keeps it)"
        )
        lines += [
            f"Status page, live in a browser: {self.examples.url}/status?{key}",
            f"Demo store: {self.store_path}, apart from a real gateway's, {kept}",
            "Below: a line per call started and ended, recording started and stopped, KeepCall. More: the status",
            f"  page, every event with  curl -N '{self.examples.url}/events?{key}', the log with --log-level info.",
            "Press Ctrl-C to stop.",
            "",
        ]
        return "\n".join(lines)


async def run_demo(
    config: GatewayConfig,
    out: TextIO,
    *,
    seed: int | None = None,
    calls_per_minute: float,
    speed: float = 1.0,
    keep_store: bool = False,
) -> None:
    """Run until SIGINT/SIGTERM; the banner goes to `out` once everything is up, then a line per event."""
    demo = Demo(config, seed=seed, calls_per_minute=calls_per_minute, speed=speed, keep_store=keep_store)
    tune_interpreter()
    async with stop_on_signals() as stopping:
        try:
            await demo.start()
            freeze_startup_objects()
            print(demo.banner(), file=out, flush=True)
            demo.print_events(out)
            await stopping.wait()
            log.info("demo stopping")
        finally:
            await demo.stop()
