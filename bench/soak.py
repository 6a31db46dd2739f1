"""Soak: kill -9 the gateway again and again while IP Office records stream in and the API hands out callIDs
and KeepCall answers, restart it on the same store, and check that nothing it acknowledged was lost.

Each cycle starts `python -m gateway run` on a generated configuration (one `listen://` IP Office link, the
store in the soak's folder, loopback only), waits for `/healthz` and for the link to accept the PBX, checks
what the previous cycle left behind, then connects as the PBX and streams records with unique platform call
ids — some calls in several parts (Continuation 1 … 0), so that groups are open at every crash. Meanwhile a
client asks GetCallID by platformCallID for counted records and KeepCall type=do_not_delete on some of the
callIDs. Then SIGKILL: half of the cycles at a random moment mid-stream, half the moment `/healthz` counts
every record sent so far. After the last cycle the gateway is started once more, checked, and stopped.

Acknowledged = counted by `/healthz` (or shown by the API) before the kill; it must be found after the
restart, once (lost and duplicates must be 0). Records sent but not counted may still have been in the
kernel's socket buffer: they are reported as unacknowledged, not as lost.

Then, with `--link-faults N`, N rounds of link faults against one more `gateway run` on the same store, whose
configuration also has a tcp:// IP Office link to a PBX stand-in server the soak runs (idle_timeout 1 s), a
serial link on a pty the soak creates (reached through a symlink) and a tcp:// trunk recorder (a
TrunkRecorderSimulator in this process) carrying a controlled extension. Each round, in turn: the PBX resets
its connection mid-line and is gone 2–5 s; the PBX goes silent without closing; the pty is closed and a new
one appears at the same path after 2–5 s; the recorder restarts (gone 2–5 s) while a KeepCall manualRecord
waits for its START; the recorder stops answering. Every recovery is timed from the peer's return, and must be
within PEER_RETURN_BOUND_S + SCHEDULING_MARGIN_S; the API must answer 503/504 within the recorder's timeout
(+ margin); the half record left at the reset must be quarantined alone, never glued to the next connection's
data.

    python bench/soak.py [--cycles 100] [--seed 1] [--records-per-cycle 3000] [--time-limit-s 900] [--store PATH]
                         [--kill-at mixed|counted|mid-stream] [--rate 5000] [--link-faults 0] [--outage-s 2 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import random
import signal
import socket
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
import tty
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, also when imported from the tests
from benchlib import ROOT, free_port  # noqa: E402

sys.path.insert(0, str(ROOT))  # the simulators and the recorder client's constants, also from a checkout
from drivers.trunkrec.client import MAX_MISSED_REPLIES  # noqa: E402
from simulators.trunkrec import TrunkRecorderSimulator  # noqa: E402

API_KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
LINK = "pbx"
LOOPBACK = "127.0.0.1"

# Named timeouts. A cold `python -m gateway run` is ready in about a second on the 2-vCPU VM; 30 s means
# something is wrong, not slow.
READY_TIMEOUT_S = 30.0
# The moment /healthz counts every record sent (a few thousand at ~20,000 records/s) or a group's carried
# parts: seconds at worst.
COUNT_TIMEOUT_S = 30.0
# One API request; the gateway answers in milliseconds even at saturation (docs/benchmarks.md).
REQUEST_TIMEOUT_S = 10.0
# SIGKILL'd process reaped; SIGTERM'd one stopped cleanly (links drain, store closes).
KILL_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0
# One cycle's stream, from the first line to the kill, bounded whatever the rate.
STREAM_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.005  # between two /healthz or connect probes while waiting for a condition

DEFAULT_CYCLES = 100
DEFAULT_RECORDS_PER_CYCLE = 3_000
DEFAULT_RATE = 5_000.0  # records/s offered by the PBX: a cycle's stream lasts ~0.6 s, the kill lands inside it
DEFAULT_TIME_LIMIT_S = 900.0
LINES_PER_WRITE = 25  # a PBX flushing its buffer: several records per write, like ingest_bench's CHUNK_RECORDS
MULTI_PART_SHARE = 0.15  # calls printed in 2–3 parts (transfers)
PART_GAP_LINES = (10, 400)  # lines between two parts of one call: several groups are open at any moment
LOOKUPS_PER_CYCLE = 24  # GetCallID by platformCallID while the records stream in
KEEP_SHARE = 0.5  # of the callIDs handed out, KeepCall type=do_not_delete
OPEN_GROUP_LOOKUP_SHARE = 0.5  # lookups aimed at calls whose last part has not come yet (the hard case)
VERIFY_CONCURRENCY = 8  # API requests in flight while checking
FINAL_SAMPLE = 2_000  # acknowledged platform call ids of all cycles re-checked after the last restart
MAX_EXAMPLES = 10  # platform call ids named per kind of failure
# When the kill comes: `mixed` alternates a random moment mid-stream with the moment /healthz counts a random
# number of records sent; `counted` sends every record of the cycle and kills the moment they are all counted
# (the external check); `mid-stream` always at a random moment of the stream.
KILL_MIXED, KILL_COUNTED, KILL_MID_STREAM = "mixed", "counted", "mid-stream"
KILL_MOMENTS = (KILL_MIXED, KILL_COUNTED, KILL_MID_STREAM)

CODE_SUCCESS = 0
MORE_THAN_ONE = "more than one call"

# The link faults (after the kill cycles, `--link-faults N` rounds; docs/reliability.md, "Link faults").
LINK_TCP = "pbx-tcp"  # the gateway connects to the soak's PBX stand-in
LINK_SERIAL = "pbx-serial"  # a pty the soak creates, behind a symlink
RECORDER = "trunk1"  # a TrunkRecorderSimulator in the soak's process
EXTENSION, CHANNEL = "8856", "1/5"  # controlled: KeepCall type=manualRecord sends START to the recorder
IDLE_TIMEOUT_S = 1.0  # the tcp:// link's idle_timeout: how a half-open PBX is noticed
HEARTBEAT_S = IDLE_TIMEOUT_S / 4  # while healthy the PBX stand-in sends CR LF this often (a blank line, no record)
RECORDER_TIMEOUT_S = 1.0  # the recorder's `timeout` in the configuration: KeepCall's bound on the recorder
# Its `ping_interval`: a stalled recorder is dropped after three missed replies, pings this far apart (the default
# 5 s would make each stall round last ~13 s).
PING_INTERVAL_S = 1.0
# The product promise (issue 10 item 6; drivers/backoff.py CHEAP_RETRY_MAX_S): up within a second of the peer's return.
PEER_RETURN_BOUND_S = 1.0
# Added to every bound the soak checks: on the 2-vCPU VM the gateway, the soak (stand-ins, simulator, /healthz
# polls every POLL_INTERVAL_S) and the kernel share two cores; an asyncio timer or a poll can be late by this
# much without anything being wrong. A recovery later than bound + margin fails the run.
SCHEDULING_MARGIN_S = 0.5
DEFAULT_OUTAGE_S = (2.0, 5.0)  # a peer is gone this long (uniform): long enough for the doubling delays to pass 1 s
FAULT_STEP_TIMEOUT_S = 30.0  # any condition one fault step waits for (a link down, up, a record counted)
API_HANG_S = 10.0  # an API answer later than this is a hang (the client gives up)
MAX_LINK_FAULT_FAILURES = 20  # failure lines kept in the report


# ---- the records ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Line:
    """One IP Office record line as the PBX prints it."""

    pcid: str
    part: int  # 1, 2, 3 …
    final: bool  # Continuation 0
    raw: bytes


@dataclass(slots=True)
class Group:
    """A call printed in several parts, some still to come."""

    pcid: str
    parts_left: int
    next_part: int
    due_at: int  # index in the endless line stream


class RecordPlan:
    """The endless seeded stream of record lines: unique platform call ids, some calls in several parts whose
    later parts come hundreds of lines after the first — or after the next restart, if the gateway was killed
    between them."""

    def __init__(self, rng: random.Random, pcid_prefix: str) -> None:
        self._rng = rng
        self._prefix = pcid_prefix
        self._serial = 0
        self._position = 0
        self._open: list[Group] = []  # ordered by due_at
        self._start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

    @property
    def open_pcids(self) -> list[str]:
        return [group.pcid for group in self._open]

    def lines(self) -> Iterator[Line]:
        while True:
            self._position += 1
            if self._open and self._open[0].due_at <= self._position:
                group = self._open.pop(0)
                yield self._next_part(group)
            else:
                yield self._new_call()

    def carried(self) -> list[Line]:
        """Every part still to come of the calls begun before a kill: the PBX prints them after the restart."""
        lines = []
        for group in self._open:
            while group.parts_left:
                lines.append(self._next_part(group, reschedule=False))
        self._open.clear()
        return lines

    def _new_call(self) -> Line:
        self._serial += 1
        pcid = f"{self._prefix}{self._serial:07d}"
        if self._rng.random() < MULTI_PART_SHARE:
            parts = self._rng.choice((2, 3))
            self._schedule(Group(pcid, parts - 1, 2, 0))
            return self._line(pcid, 1, final=False)
        return self._line(pcid, 1, final=True)

    def _next_part(self, group: Group, *, reschedule: bool = True) -> Line:
        part = group.next_part
        group.next_part += 1
        group.parts_left -= 1
        if group.parts_left and reschedule:
            self._schedule(group)
        return self._line(group.pcid, part, final=group.parts_left == 0)

    def _schedule(self, group: Group) -> None:
        group.due_at = self._position + self._rng.randint(*PART_GAP_LINES)
        self._open.append(group)
        self._open.sort(key=lambda g: g.due_at)

    def _line(self, pcid: str, part: int, *, final: bool) -> Line:
        return Line(pcid, part, final, ipo_line(pcid, part, final=final, start=self._start))


def ipo_line(pcid: str, part: int = 1, *, final: bool = True, start: datetime) -> bytes:
    """One IP Office record (CR LF included) for a platform call id ending in 7 digits."""
    serial = int(pcid[-7:])
    begun = (start + timedelta(seconds=serial % 3600)).strftime("%Y/%m/%d %H:%M:%S")
    extension = 2000 + (serial * 7 + part) % 5000
    return (
        f"{begun},00:01:{part:02d},5,0170{serial:07d},I,{extension},{extension},,0,{pcid},{0 if final else 1},"
        f"E{extension},Agent {extension},T9001,LINE 1.1,0,0\r\n"
    ).encode()


# ---- the report -----------------------------------------------------------------------------------------


@dataclass
class SoakReport:
    """What a soak run found. `ok` when nothing acknowledged was lost, duplicated or changed."""

    cycles: int = 0
    kills_mid_stream: int = 0
    kills_when_counted: int = 0
    records_sent: int = 0
    records_counted: int = 0  # counted by /healthz before the kill of their cycle
    records_recovered: int = 0  # of those, found exactly once after the restart
    records_lost: int = 0  # of those, not found after the restart
    records_in_duplicates: int = 0  # of those, found in more than one call (see duplicates)
    unacknowledged: int = 0  # sent, not counted before the kill
    unacknowledged_found: int = 0  # of those, found after the restart all the same (their calls' records)
    duplicates: int = 0  # platform call ids answered with "more than one call"
    callids_handed_out: int = 0
    callids_checked: int = 0  # checks: each callID after the next restart and after the last one
    callids_changed: int = 0
    keeps_answered: int = 0
    keeps_checked: int = 0
    keeps_lost: int = 0
    final_sample_checked: int = 0
    final_sample_failed: int = 0  # found at their cycle's restart, gone by the last one
    replayed: int = 0  # records /healthz reported replayed from the journal at the restarts
    count_mismatches: int = 0  # /healthz counted more records than were sent on the connection
    ready_s: list[float] = field(default_factory=list)  # restart → /healthz answering
    link_s: list[float] = field(default_factory=list)  # restart → link accepting the PBX
    examples: dict[str, list[str]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    time_limited: bool = False
    link_faults: LinkFaultReport | None = None  # the link-fault rounds after the kill cycles, when asked for

    @property
    def kills_ok(self) -> bool:
        return not (
            self.records_lost
            or self.duplicates
            or self.callids_changed
            or self.keeps_lost
            or self.final_sample_failed
            or self.count_mismatches
        )

    @property
    def ok(self) -> bool:
        return self.kills_ok and (self.link_faults is None or self.link_faults.ok)

    def note(self, kind: str, pcid: str) -> None:
        examples = self.examples.setdefault(kind, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(pcid)

    def render(self) -> str:
        def spread(values: list[float]) -> str:
            if not values:
                return "n/a"
            return f"p50 {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms ({len(values)} restarts)"

        lines = [
            f"soak: {self.cycles} kill -9 cycles ({self.kills_mid_stream} mid-stream, {self.kills_when_counted} when "
            f"/healthz counted every record sent) in {self.elapsed_s:.0f} s"
            + (" — stopped by the time limit" if self.time_limited else ""),
            f"records sent                {self.records_sent:>9,}",
            f"counted before the kills    {self.records_counted:>9,}",
            f"recovered                   {self.records_recovered:>9,}",
            f"lost                        {self.records_lost:>9,}",
            f"found in more than one call {self.records_in_duplicates:>9,}",
            f"unacknowledged              {self.unacknowledged:>9,}   (sent, not counted before the kill; "
            f"{self.unacknowledged_found:,} of them found after the restart)",
            f"duplicated calls            {self.duplicates:>9,}   (platformCallIDs answering more than one call)",
            f"callIDs checked / changed   {self.callids_checked:>9,} / {self.callids_changed:,}   "
            f"({self.callids_handed_out:,} handed out, each checked after the next restart and after the last)",
            f"keeps checked / lost        {self.keeps_checked:>9,} / {self.keeps_lost:,}   "
            f"({self.keeps_answered:,} KeepCall do_not_delete answered 0)",
            f"final re-check of a sample  {self.final_sample_checked:>9,} / {self.final_sample_failed:,} gone",
            f"replayed from the journal   {self.replayed:>9,}   (records applied at the restarts, /healthz `replayed`)",
            f"restart → /healthz answers  {spread(self.ready_s)}",
            f"restart → link accepts PBX  {spread(self.link_s)}",
        ]
        if self.count_mismatches:
            lines.append(f"/healthz counted more than was sent in {self.count_mismatches} cycles")
        for kind, pcids in sorted(self.examples.items()):
            lines.append(f"  {kind}: {', '.join(pcids)}")
        lines.append("result: " + ("OK — nothing acknowledged was lost" if self.kills_ok else "FAILED"))
        if self.link_faults is not None:
            lines.append(self.link_faults.render())
        return "\n".join(lines)


# ---- the gateway process --------------------------------------------------------------------------------


class SoakError(RuntimeError):
    """The soak itself could not go on (the gateway did not start, a condition never came)."""


@dataclass(frozen=True, slots=True)
class FaultPeers:
    """Where the link-fault phase's stand-ins are: the PBX server of the tcp:// link, the serial link's path (a
    symlink re-pointed at each new pty) and the trunk recorder simulator."""

    pbx_tcp_port: int
    serial_path: Path
    recorder_port: int


def write_config(folder: Path, store: Path, http_port: int, link_port: int, peers: FaultPeers) -> Path:
    config = folder / "soak.yaml"
    config.write_text(
        f"""# Written by bench/soak.py: an IP Office listen:// link on loopback (the kill -9 cycles), a tcp:// link,
# a serial link and a recorder (the link faults; unreachable, and retried, during the kill cycles), the soak's store.
http: {{host: {LOOPBACK}, port: {http_port}}}
store: {{path: "{store}"}}
api:
  keys: [{{key: {API_KEY}, name: soak}}]
links:
  - {{name: {LINK}, format: avaya-ipo, url: "listen://{LOOPBACK}:{link_port}", timezone: UTC}}
  - {{name: {LINK_TCP}, format: avaya-ipo, url: "tcp://{LOOPBACK}:{peers.pbx_tcp_port}", timezone: UTC, idle_timeout: {IDLE_TIMEOUT_S}}}
  - {{name: {LINK_SERIAL}, format: avaya-ipo, url: "{peers.serial_path}", timezone: UTC}}
recorders:
  - {{name: {RECORDER}, url: "tcp://{LOOPBACK}:{peers.recorder_port}", timeout: {RECORDER_TIMEOUT_S}, ping_interval: {PING_INTERVAL_S}}}
extensions:
  - {{number: "{EXTENSION}", mode: controlled, channel: "{CHANNEL}"}}
log: {{level: warning}}
"""
    )
    return config


async def poll_until(condition, timeout_s: float, what: str):
    """`await condition()` until it returns something truthy; SoakError naming `what` after `timeout_s`."""

    async def poll():
        while not (result := await condition()):
            await asyncio.sleep(POLL_INTERVAL_S)
        return result

    try:
        return await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise SoakError(f"{what}: not within {timeout_s:.0f} s") from None


class GatewayProcess:
    """`python -m gateway run` on the soak's configuration; its log goes to the soak's folder."""

    def __init__(self, config: Path, log_path: Path, http_port: int, link_port: int) -> None:
        self._config = config
        self._log_path = log_path
        self.http_port = http_port
        self.link_port = link_port
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0

    async def start(self) -> None:
        with self._log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(self._config),
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def _check_alive(self) -> None:
        if self.process is None or self.process.returncode is not None:
            code = None if self.process is None else self.process.returncode
            raise SoakError(f"gateway exited with {code} (log: {self._log_path})")

    async def wait_ready(self, session: aiohttp.ClientSession) -> tuple[float, float]:
        """Seconds from start to /healthz answering with the link up, and to the link accepting a connection."""

        async def healthz() -> float | None:
            self._check_alive()
            try:
                async with session.get("/healthz") as response:
                    # 503 is an answer too: the report says degraded while another link or the recorder is not up yet.
                    if response.status in (200, 503) and (await response.json())["links"][LINK]["state"] == "up":
                        return time.monotonic() - self.started_at
            except (aiohttp.ClientError, OSError):
                pass
            return None

        async def link() -> float | None:
            self._check_alive()
            try:
                _, writer = await asyncio.open_connection(LOOPBACK, self.link_port)
            except OSError:
                return None
            accepted = time.monotonic() - self.started_at
            writer.close()
            await writer.wait_closed()
            return accepted

        ready_s, link_s = await asyncio.gather(
            poll_until(healthz, READY_TIMEOUT_S, "/healthz answering after a start"),
            poll_until(link, READY_TIMEOUT_S, "the link accepting the PBX after a start"),
        )
        return ready_s, link_s

    async def kill(self) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.process.wait(), KILL_TIMEOUT_S)

    async def stop(self) -> int:
        """SIGTERM and wait for a clean stop; its exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                await self.kill()
        return self.process.returncode


# ---- the API --------------------------------------------------------------------------------------------


class Api:
    """The few requests the soak makes, as JSON. An answer is (code, callID or fields, error text)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def _get(self, **params: str) -> dict:
        query = {"apiKey": API_KEY, "responseType": "JSON", **params}
        async with self.session.get("/verba/api", params=query) as response:
            return await response.json(content_type=None)

    async def call_id(self, pcid: str) -> tuple[str | None, bool]:
        """(callID or None, more than one call)."""
        answer = await self._get(action="GetCallID", platformCallID=pcid)
        if answer["code"] == CODE_SUCCESS:
            return answer["callID"], False
        return None, MORE_THAN_ONE in answer.get("error", "")

    async def protect(self, call_id: str) -> bool:
        answer = await self._get(action="KeepCall", callID=call_id, type="do_not_delete")
        return answer["code"] == CODE_SUCCESS

    async def call_information(self, call_id: str) -> dict | None:
        answer = await self._get(action="GetCallInformation", callID=call_id)
        return answer["verbacdr"] if answer["code"] == CODE_SUCCESS else None

    async def records_counted(self) -> int:
        async with self.session.get("/healthz") as response:
            return (await response.json())["links"][LINK]["records"]

    async def records_replayed(self) -> int:
        """Journal lines applied at start-up (`replayed`; 0 from a gateway that does not report it)."""
        async with self.session.get("/healthz") as response:
            return (await response.json())["links"][LINK].get("replayed", 0)


async def bounded_gather(coroutines) -> list:
    limit = asyncio.Semaphore(VERIFY_CONCURRENCY)

    async def one(coroutine):
        async with limit:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


# ---- the soak -------------------------------------------------------------------------------------------


@dataclass
class CycleOutcome:
    """What one cycle sent and what the gateway acknowledged before its kill."""

    sent: list[Line] = field(default_factory=list)
    counted: int = 0  # the first `counted` lines of `sent` were counted by /healthz


class Soak:
    def __init__(
        self,
        folder: Path,
        store: Path,
        *,
        seed: int,
        records_per_cycle: int,
        rate: float,
        kill_at: str = KILL_MIXED,
        progress: Callable[[str], object] | None = None,
    ) -> None:
        self.kill_at = kill_at
        self.progress = progress
        self.rng = random.Random(seed)
        self.records_per_cycle = records_per_cycle
        self.rate = rate
        self.report = SoakReport()
        self.plan = RecordPlan(random.Random(seed + 1), pcid_prefix=str(int(time.time()))[-9:])
        self.plan_lines = self.plan.lines()
        self.carry: deque[Line] = deque()  # parts of calls begun before a kill, not sent yet
        http_port, link_port = free_port(), free_port()
        self.peers = FaultPeers(free_port(), folder / "pbx-serial", free_port())
        self.store = store
        config = write_config(folder, store, http_port, link_port, self.peers)
        self.gateway = GatewayProcess(config, folder / "soak-gateway.log", http_port, link_port)
        self.handed_out: dict[str, str] = {}  # callID → platform call id, every one the API gave
        self.unchecked_call_ids: list[str] = []  # handed out since the last restart
        self.kept: set[str] = set()  # callIDs whose KeepCall do_not_delete answered 0
        self.acknowledged_pcids: list[str] = []  # of every cycle, for the final sample
        self.known_lost: set[str] = set()  # platform call ids already reported lost at their restart
        self.known_duplicates: set[str] = set()  # platform call ids already reported as more than one call

    async def run(self, cycles: int, deadline: float) -> SoakReport:
        started = time.monotonic()
        outcome: CycleOutcome | None = None
        for cycle in range(cycles):
            if time.monotonic() > deadline:
                self.report.time_limited = True
                break
            async with self._session() as session:
                api = Api(session)
                await self._start(session, measure=outcome is not None)
                if outcome is not None:
                    await self._verify(api, outcome)
                mid_stream = self.kill_at == KILL_MID_STREAM or (self.kill_at == KILL_MIXED and cycle % 2 == 0)
                outcome = await self._stream_and_kill(api, mid_stream=mid_stream)
            self.report.cycles += 1
            if self.progress is not None:
                self.progress(self._progress_line(started))
        async with self._session() as session:
            api = Api(session)
            await self._start(session, measure=outcome is not None)
            if outcome is not None:
                await self._verify(api, outcome)
            await self._final_check(api)
        await self.gateway.stop()
        self.report.elapsed_s = time.monotonic() - started
        return self.report

    def _progress_line(self, started: float) -> str:
        report = self.report
        return (
            f"cycle {report.cycles}: {time.monotonic() - started:.0f} s, {report.records_sent:,} sent, "
            f"{report.records_counted:,} counted, {report.records_lost:,} lost, {report.duplicates:,} duplicated"
        )

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            base_url=f"http://{LOOPBACK}:{self.gateway.http_port}",
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        )

    async def _start(self, session: aiohttp.ClientSession, *, measure: bool) -> None:
        await self.gateway.start()
        ready_s, link_s = await self.gateway.wait_ready(session)
        if measure:
            self.report.ready_s.append(ready_s)
            self.report.link_s.append(link_s)
            self.report.replayed += await Api(session).records_replayed()

    # -- one cycle

    async def _stream_and_kill(self, api: Api, *, mid_stream: bool) -> CycleOutcome:
        """Carried parts first, then new records; SIGKILL mid-stream at a random moment, or the moment /healthz
        counts every record sent so far. Meanwhile GetCallID and KeepCall on counted records."""
        outcome = CycleOutcome()
        baseline = await api.records_counted()
        self.carry.extend(self.plan.carried())
        new_records = self.records_per_cycle
        if self.kill_at == KILL_MIXED and not mid_stream:
            new_records = self.rng.randint(1, self.records_per_cycle)
        to_send = len(self.carry) + new_records
        stream_s = to_send / self.rate
        kill_after_s = self.rng.uniform(0.05, 0.95) * stream_s
        stop = asyncio.Event()

        def next_lines(count: int) -> list[Line]:
            """The PBX's next lines: parts of calls begun before the last kill first, then new records."""
            count = min(count, to_send - len(outcome.sent))
            taken = [self.carry.popleft() for _ in range(min(count, len(self.carry)))]
            return taken + [next(self.plan_lines) for _ in range(count - len(taken))]

        async def send() -> None:
            _, writer = await asyncio.open_connection(LOOPBACK, self.gateway.link_port)
            began = time.perf_counter()
            try:
                while not stop.is_set() and (chunk := next_lines(LINES_PER_WRITE)):
                    writer.write(b"".join(line.raw for line in chunk))
                    outcome.sent.extend(chunk)
                    await writer.drain()
                    await asyncio.sleep(max(0.0, began + len(outcome.sent) / self.rate - time.perf_counter()))
            except OSError:
                return  # killed under us
            finally:
                writer.close()

        async def watch_count() -> None:
            while not stop.is_set():
                try:
                    counted = await api.records_counted() - baseline
                except (aiohttp.ClientError, OSError, TimeoutError):
                    return
                outcome.counted = max(outcome.counted, counted)  # whenever it came, the gateway counted them
                await asyncio.sleep(POLL_INTERVAL_S)

        async def look_up() -> None:
            for _ in range(LOOKUPS_PER_CYCLE):
                await asyncio.sleep(stream_s / LOOKUPS_PER_CYCLE)
                if stop.is_set():
                    return
                pcid = self._pick_counted(outcome)
                if pcid is None:
                    continue
                try:
                    call_id, _ = await api.call_id(pcid)
                    if call_id is None:
                        continue
                    self._handed_out(call_id, pcid)
                    if self.rng.random() < KEEP_SHARE and await api.protect(call_id):
                        self.kept.add(call_id)
                        self.report.keeps_answered = len(self.kept)
                except (aiohttp.ClientError, OSError, TimeoutError):
                    return

        tasks = [asyncio.create_task(task()) for task in (send, watch_count, look_up)]
        try:
            if mid_stream:
                await asyncio.sleep(kill_after_s)
                self.report.kills_mid_stream += 1
            else:
                await asyncio.wait_for(tasks[0], STREAM_TIMEOUT_S)
                await poll_until(
                    lambda: self._all_counted(api, outcome, baseline),
                    COUNT_TIMEOUT_S,
                    "/healthz counting every record sent",
                )
                self.report.kills_when_counted += 1
            stop.set()
            await self.gateway.kill()
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), STREAM_TIMEOUT_S)
        if outcome.counted > len(outcome.sent):
            self.report.count_mismatches += 1
            outcome.counted = len(outcome.sent)
        self.report.records_sent += len(outcome.sent)
        self.report.records_counted += outcome.counted
        self.report.unacknowledged += len(outcome.sent) - outcome.counted
        return outcome

    async def _all_counted(self, api: Api, outcome: CycleOutcome, baseline: int) -> bool:
        counted = await api.records_counted() - baseline
        outcome.counted = max(outcome.counted, counted)
        return counted >= len(outcome.sent)

    def _pick_counted(self, outcome: CycleOutcome) -> str | None:
        """A counted record's platform call id: half the time one whose call is still open (more parts to come)."""
        counted = outcome.sent[: outcome.counted]
        if not counted:
            return None
        open_pcids = set(self.plan.open_pcids) | {line.pcid for line in self.carry}
        if self.rng.random() < OPEN_GROUP_LOOKUP_SHARE:
            candidates = [line.pcid for line in counted[-500:] if line.pcid in open_pcids]
            if candidates:
                return self.rng.choice(candidates)
        return self.rng.choice(counted).pcid

    def _handed_out(self, call_id: str, pcid: str) -> None:
        if call_id not in self.handed_out:
            self.handed_out[call_id] = pcid
            self.report.callids_handed_out = len(self.handed_out)
            self.unchecked_call_ids.append(call_id)

    # -- after a restart

    async def _verify(self, api: Api, outcome: CycleOutcome) -> None:
        """Every counted record of the killed cycle is found, once; every callID handed out since the last
        restart names the same call; every KeepCall answered 0 is still in effect."""
        acknowledged = {line.pcid for line in outcome.sent[: outcome.counted]}
        acknowledged.update(self.handed_out[call_id] for call_id in self.unchecked_call_ids)
        unacknowledged = {line.pcid for line in outcome.sent[outcome.counted :]} - acknowledged
        pcids = sorted(acknowledged | unacknowledged)
        answers = dict(zip(pcids, await bounded_gather(api.call_id(pcid) for pcid in pcids)))
        for index, line in enumerate(outcome.sent):
            call_id, ambiguous = answers[line.pcid]
            if index < outcome.counted:
                if call_id is not None:
                    self.report.records_recovered += 1
                elif ambiguous:
                    self.report.records_in_duplicates += 1
                else:
                    self.report.records_lost += 1
                    self.report.note("lost", line.pcid)
                    self.known_lost.add(line.pcid)
            elif call_id is not None:
                self.report.unacknowledged_found += 1
        for pcid, (_, ambiguous) in answers.items():
            if ambiguous:
                self._duplicate(pcid)
        self.acknowledged_pcids.extend(sorted(acknowledged))
        await self._check_call_ids(api, self.unchecked_call_ids, answers)
        self.unchecked_call_ids = []

    def _duplicate(self, pcid: str) -> None:
        if pcid not in self.known_duplicates:
            self.known_duplicates.add(pcid)
            self.report.duplicates += 1
            self.report.note("more than one call", pcid)

    async def _check_call_ids(self, api: Api, call_ids: list[str], answers: dict[str, tuple[str | None, bool]]) -> None:
        infos = await bounded_gather(api.call_information(call_id) for call_id in call_ids)
        for call_id, info in zip(call_ids, infos):
            pcid = self.handed_out[call_id]
            self.report.callids_checked += 1
            by_pcid = answers.get(pcid, (call_id, False))[0]
            if info is None or info.get("platformCallId") != pcid or by_pcid != call_id:
                self.report.callids_changed += 1
                self.report.note("callID changed or gone", f"{call_id} ({pcid})")
            if call_id in self.kept:
                self.report.keeps_checked += 1
                if info is None or info.get("doNotDelete") != "1":
                    self.report.keeps_lost += 1
                    self.report.note("KeepCall lost", f"{call_id} ({pcid})")

    async def _final_check(self, api: Api) -> None:
        """After the last restart: every callID ever handed out and every keep, and a sample of every cycle's
        acknowledged records, once more."""
        sample = random.Random(0).sample(self.acknowledged_pcids, min(FINAL_SAMPLE, len(self.acknowledged_pcids)))
        pcids = sorted(set(sample) | set(self.handed_out.values()))
        answers = dict(zip(pcids, await bounded_gather(api.call_id(pcid) for pcid in pcids)))
        for pcid in sample:
            self.report.final_sample_checked += 1
            call_id, ambiguous = answers[pcid]
            if ambiguous:
                self._duplicate(pcid)
            elif call_id is None and pcid not in self.known_lost:
                self.report.final_sample_failed += 1
                self.report.note("gone by the last restart", pcid)
        await self._check_call_ids(api, sorted(self.handed_out), answers)


# ---- link faults ----------------------------------------------------------------------------------------


def spread_ms(values: list[float], unit: str = "rounds") -> str:
    if not values:
        return "n/a"
    return f"p50 {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms ({len(values)} {unit})"


@dataclass
class LinkFaultReport:
    """What the link-fault rounds measured; `ok` when every recovery and every API answer kept its bound and no
    partial line was glued to the next connection's data."""

    rounds: int = 0
    outage_s: tuple[float, float] = DEFAULT_OUTAGE_S
    tcp_accepted_s: list[float] = field(default_factory=list)  # PBX listening again → it accepted the gateway
    tcp_up_s: list[float] = field(default_factory=list)  # PBX listening again → /healthz link up
    partial_sent: int = 0  # half records left in the gateway when the PBX reset the connection
    partial_quarantined: int = 0  # found alone in the quarantine as a partial line (after the run, sqlite3)
    glued: int = 0  # a half record found glued to other data (quarantine), or its call found (GetCallID)
    next_record_found: int = 0  # the first record on the next connection found by GetCallID, alone
    idle_closed_s: list[float] = field(default_factory=list)  # PBX silent → the gateway closes the connection
    idle_reconnected_s: list[float] = field(default_factory=list)  # PBX silent → the gateway's new connection
    idle_close_to_connect_s: list[float] = field(default_factory=list)  # the close → the new connection
    serial_up_s: list[float] = field(default_factory=list)  # pty re-created → /healthz link up
    restart_answers: list[tuple[int | None, float]] = field(default_factory=list)  # KeepCall (HTTP status, s)
    recorder_up_s: list[float] = field(default_factory=list)  # recorder listening again → /healthz up
    keeps_after_restart: int = 0  # KeepCall manualRecord answered 0 after the recorder came back
    stall_answers: list[tuple[int | None, float]] = field(default_factory=list)
    stall_detected_s: list[float] = field(default_factory=list)  # recorder silent → the gateway drops the link
    stall_up_s: list[float] = field(default_factory=list)  # the drop → /healthz up again (recorder answering)
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, text: str) -> None:
        if len(self.failures) < MAX_LINK_FAULT_FAILURES:
            self.failures.append(text)
        elif len(self.failures) == MAX_LINK_FAULT_FAILURES:
            self.failures.append("… more failures not listed")

    def check(self, what: str, took_s: float, bound_s: float) -> None:
        if took_s > bound_s:
            self.fail(f"round {self.rounds + 1}: {what} took {took_s * 1000:.0f} ms (bound {bound_s * 1000:.0f} ms)")

    def render(self) -> str:
        n = self.rounds

        def answers(values: list[tuple[int | None, float]]) -> str:
            counts: dict[str, int] = {}
            for status, _ in values:
                key = "hang" if status is None else str(status)
                counts[key] = counts.get(key, 0) + 1
            statuses = ", ".join(f"{key} ×{count}" for key, count in sorted(counts.items())) or "none"
            return f"{statuses}; latency {spread_ms([latency for _, latency in values], 'answers')}"

        recovery = PEER_RETURN_BOUND_S + SCHEDULING_MARGIN_S
        lines = [
            f"link faults: {n} rounds in {self.elapsed_s:.0f} s, peers gone {self.outage_s[0]:g}–{self.outage_s[1]:g} s "
            f"each; bound on every recovery {recovery * 1000:.0f} ms ({PEER_RETURN_BOUND_S:g} s promised + "
            f"{SCHEDULING_MARGIN_S:g} s scheduling margin)",
            f"link faults: PBX tcp peer back → gateway connected      {spread_ms(self.tcp_accepted_s)}",
            f"link faults: PBX tcp peer back → /healthz link up       {spread_ms(self.tcp_up_s)}",
            f"link faults: partial lines at the reset: {self.partial_sent} sent, {self.partial_quarantined} quarantined "
            f"alone, {self.glued} glued; the next connection's first record found by GetCallID {self.next_record_found}"
            f"/{self.partial_sent}",
            f"link faults: half-open PBX (idle_timeout {IDLE_TIMEOUT_S:g} s): silence → gateway closes "
            f"{spread_ms(self.idle_closed_s)}; silence → reconnected {spread_ms(self.idle_reconnected_s)}; "
            f"close → reconnected {spread_ms(self.idle_close_to_connect_s)}",
            f"link faults: serial pty re-created → /healthz link up   {spread_ms(self.serial_up_s)}",
            f"link faults: recorder restart mid-KeepCall manualRecord: {answers(self.restart_answers)} "
            f"(bound {(RECORDER_TIMEOUT_S + SCHEDULING_MARGIN_S) * 1000:.0f} ms)",
            f"link faults: recorder back → /healthz recorder up       {spread_ms(self.recorder_up_s)}; "
            f"KeepCall manualRecord answered 0 after it {self.keeps_after_restart}/{len(self.recorder_up_s)}",
            f"link faults: recorder stall: KeepCall {answers(self.stall_answers)}",
            f"link faults: recorder stall → link dropped (3 missed replies, pings every {PING_INTERVAL_S:g} s) "
            f"{spread_ms(self.stall_detected_s)} (bound {stall_detect_bound_s() * 1000:.0f} ms); "
            f"dropped → /healthz recorder up {spread_ms(self.stall_up_s)}",
        ]
        lines += [f"  {failure}" for failure in self.failures]
        lines.append(
            "link faults result: "
            + (
                "OK — every link up within its bound, no API answer hung, no partial line glued"
                if self.ok
                else "FAILED"
            )
        )
        return "\n".join(lines)


def stall_detect_bound_s() -> float:
    """A silent recorder is dropped at its third missed reply: the KeepCall that times out, then two PINGs, each
    sent at most PING_INTERVAL_S after the previous exchange ended and missed after the recorder's timeout."""
    return RECORDER_TIMEOUT_S + (MAX_MISSED_REPLIES - 1) * (PING_INTERVAL_S + RECORDER_TIMEOUT_S) + SCHEDULING_MARGIN_S


@dataclass(eq=False)
class PbxConnection:
    accepted_at: float
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    closed_at: float | None = None  # when the gateway closed it (EOF read)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class PbxStandIn:
    """The PBX end of the gateway's tcp:// link: a loopback server the soak opens, resets and silences. While
    healthy it sends a blank line (CR LF) every HEARTBEAT_S, as some PBXs do, so that idle_timeout only fires when
    it goes silent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.silent = False
        self.last_write_at = 0.0
        self._server: asyncio.Server | None = None
        self._accepted: asyncio.Queue[PbxConnection] = asyncio.Queue()
        self._connections: list[PbxConnection] = []
        self._tasks: set[asyncio.Task] = set()
        self._heartbeat: asyncio.Task | None = None

    @property
    def current(self) -> PbxConnection | None:
        live = [c for c in self._connections if c.closed_at is None and not c.writer.is_closing()]
        return live[-1] if live else None

    async def listen(self) -> float:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, self.port, reuse_address=True)
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat())
        return time.monotonic()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = PbxConnection(time.monotonic(), reader, writer)
        self._connections.append(connection)
        self._accepted.put_nowait(connection)
        task = asyncio.create_task(self._watch(connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, connection: PbxConnection) -> None:
        """Notes when the gateway closes the connection. The gateway sends nothing on an SMDR link: reading
        only sees its FIN (or RST)."""
        try:
            while await connection.reader.read(4096):
                pass
        except OSError:
            pass
        connection.closed_at = time.monotonic()
        connection.closed.set()
        connection.writer.close()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if not self.silent and (connection := self.current) is not None:
                self.write(connection, b"\r\n")

    def write(self, connection: PbxConnection, data: bytes) -> None:
        connection.writer.write(data)
        self.last_write_at = time.monotonic()

    async def next_connection(self) -> PbxConnection:
        try:
            return await asyncio.wait_for(self._accepted.get(), FAULT_STEP_TIMEOUT_S)
        except TimeoutError:
            raise SoakError(f"the gateway's tcp:// link did not connect within {FAULT_STEP_TIMEOUT_S:.0f} s") from None

    def drain_accepted(self) -> None:
        while not self._accepted.empty():
            self._accepted.get_nowait()

    async def reset(self) -> None:
        """The PBX goes away: the server closes and every connection is reset (SO_LINGER 0: RST, no FIN)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in self._connections:
            if connection.closed_at is None:
                sock = connection.writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                connection.writer.transport.abort()
        self._connections.clear()
        self.drain_accepted()
        if server is not None:
            await asyncio.wait_for(server.wait_closed(), FAULT_STEP_TIMEOUT_S)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        await self.reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class SerialStandIn:
    """The PBX end of the gateway's serial link: a pty whose slave the configuration reaches through a symlink
    (a re-created pty gets whatever /dev/pts number is free), re-pointed atomically at each new pty."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._master: int | None = None

    def create(self) -> float:
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo, no line discipline: bytes pass unchanged
            slave_path = os.ttyname(slave)
        finally:
            os.close(slave)  # the gateway opens it by path; the pty lives while the master is open
        self._master = master
        staging = self.path.with_name(self.path.name + ".new")
        staging.unlink(missing_ok=True)
        os.symlink(slave_path, staging)
        os.replace(staging, self.path)
        return time.monotonic()

    def write(self, data: bytes) -> None:
        assert self._master is not None
        view = memoryview(data)
        while view:  # a few hundred bytes: the pty takes them at once
            view = view[os.write(self._master, view) :]

    def destroy(self) -> None:
        """The port disappears: its path goes and the pty closes (the gateway's reads fail)."""
        self.path.unlink(missing_ok=True)
        if self._master is not None:
            os.close(self._master)
            self._master = None


class WatchedRecorder(TrunkRecorderSimulator):
    """The simulator, noting when a gateway link closes (the moment the gateway drops a silent recorder)."""

    def __init__(self) -> None:
        super().__init__(channels=30, name="soak-rec", seed=1)
        self.session_closed_at: list[float] = []
        self.session_opened_at: list[float] = []

    def _session_opened(self, session) -> None:  # noqa: ANN001 — the simulator's hook
        self.session_opened_at.append(time.monotonic())
        super()._session_opened(session)

    def _session_closed(self, session, exc) -> None:  # noqa: ANN001 — the simulator's hook
        self.session_closed_at.append(time.monotonic())
        super()._session_closed(session, exc)


class LinkFaults:
    """The link-fault rounds against one `gateway run` process (the soak's configuration and store)."""

    def __init__(self, soak: Soak, *, seed: int, outage_s: tuple[float, float]) -> None:
        self.soak = soak
        self.gateway = soak.gateway
        self.peers = soak.peers
        self.rng = random.Random(seed + 2)
        self.outage_s = outage_s
        self.report = LinkFaultReport(outage_s=outage_s)
        self.pbx = PbxStandIn(self.peers.pbx_tcp_port)
        self.serial = SerialStandIn(self.peers.serial_path)
        self.recorder = WatchedRecorder()
        self._serials = itertools.count(1)
        self._pcid_prefix = "9" + str(int(time.time()))[-8:]
        self._start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        self._partials: list[bytes] = []  # half records sent before a reset, checked in the quarantine at the end
        self._lost_pcids: list[str] = []  # the halves' platform call ids: must find no call

    def _record(self) -> tuple[str, bytes]:
        pcid = f"{self._pcid_prefix}{next(self._serials):07d}"
        return pcid, ipo_line(pcid, start=self._start)

    async def run(self, rounds: int) -> LinkFaultReport:
        started = time.monotonic()
        await self.pbx.listen()
        self.serial.create()
        await self.recorder.start_tcp(LOOPBACK, self.peers.recorder_port)
        try:
            async with self._session(REQUEST_TIMEOUT_S) as session, self._session(API_HANG_S) as api_session:
                self.http, self.api = session, api_session
                await self.gateway.start()
                await self._until_state(("links", LINK_TCP), "up", READY_TIMEOUT_S)
                await self._until_state(("links", LINK_SERIAL), "up", READY_TIMEOUT_S)
                await self._until_state(("recorders", RECORDER), "up", READY_TIMEOUT_S)
                for _ in range(rounds):
                    await self._pbx_tcp_reset()
                    await self._pbx_half_open()
                    await self._serial_recreated()
                    await self._recorder_restart()
                    await self._recorder_stall()
                    self.report.rounds += 1
                    if self.soak.progress is not None:
                        self.soak.progress(
                            f"link-fault round {self.report.rounds}: {time.monotonic() - started:.0f} s, "
                            f"{len(self.report.failures)} failures"
                        )
                await self._check_halves_not_found()
            await self.gateway.stop()
            self._check_quarantine()
        finally:
            await self.pbx.close()
            self.serial.destroy()
            await self.recorder.stop()
        self.report.elapsed_s = time.monotonic() - started
        return self.report

    def _session(self, timeout_s: float) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            base_url=f"http://{LOOPBACK}:{self.gateway.http_port}", timeout=aiohttp.ClientTimeout(total=timeout_s)
        )

    # -- observing the gateway

    async def _healthz(self) -> dict:
        self.gateway._check_alive()
        async with self.http.get("/healthz") as response:
            return await response.json()

    async def _until_state(self, where: tuple[str, str], state: str, timeout_s: float = FAULT_STEP_TIMEOUT_S) -> float:
        """Polls /healthz until `where` (("links", NAME) or ("recorders", NAME)) is `state`; the monotonic time."""

        async def reached() -> float | None:
            try:
                health = await self._healthz()
            except (aiohttp.ClientError, OSError, TimeoutError):
                return None
            return time.monotonic() if health[where[0]][where[1]]["state"] == state else None

        return await poll_until(reached, timeout_s, f"/healthz {where[0]}.{where[1]} {state}")

    async def _records(self, link: str) -> int:
        return (await self._healthz())["links"][link]["records"]

    async def _until_counted(self, link: str, count: int) -> None:
        async def counted() -> bool:
            return await self._records(link) >= count

        await poll_until(counted, FAULT_STEP_TIMEOUT_S, f"/healthz counting record {count} of {link}")

    async def _verba(self, **params: str) -> tuple[int | None, dict | None, float]:
        """(HTTP status or None for a hang, the JSON answer, seconds) of one API request."""
        query = {"apiKey": API_KEY, "responseType": "JSON", **params}
        began = time.monotonic()
        try:
            async with self.api.get("/verba/api", params=query) as response:
                return response.status, await response.json(content_type=None), time.monotonic() - began
        except TimeoutError:
            return None, None, time.monotonic() - began

    async def _outage(self) -> None:
        await asyncio.sleep(self.rng.uniform(*self.outage_s))  # the fault itself: the peer is gone this long

    # -- 1. the PBX's tcp:// peer goes away mid-line and comes back

    async def _pbx_tcp_reset(self) -> None:
        report = self.report
        connection = self.pbx.current or await self.pbx.next_connection()
        before = await self._records(LINK_TCP)
        pcid, whole = self._record()
        half_pcid, half_record = self._record()
        half = half_record[: len(half_record) // 2]
        self.pbx.silent = True  # no heartbeat CR LF may end the half record before the reset
        try:
            self.pbx.write(connection, whole + half)  # one write: counted `whole` means the half is in the gateway
            await self._until_counted(LINK_TCP, before + 1)
            await self.pbx.reset()
        finally:
            self.pbx.silent = False
        self._partials.append(half)
        self._lost_pcids.append(half_pcid)
        report.partial_sent += 1
        await self._until_state(("links", LINK_TCP), "down")
        await self._outage()
        back_at = await self.pbx.listen()
        connection = await self.pbx.next_connection()
        up_at = await self._until_state(("links", LINK_TCP), "up")
        bound = PEER_RETURN_BOUND_S + SCHEDULING_MARGIN_S
        report.tcp_accepted_s.append(connection.accepted_at - back_at)
        report.tcp_up_s.append(up_at - back_at)
        report.check("PBX tcp peer back → gateway connected", connection.accepted_at - back_at, bound)
        report.check("PBX tcp peer back → /healthz link up", up_at - back_at, bound)
        # The next connection's first record stands alone: were the half glued to it, its call would not be found.
        before = await self._records(LINK_TCP)
        next_pcid, next_record = self._record()
        self.pbx.write(connection, next_record)
        await self._until_counted(LINK_TCP, before + 1)
        status, answer, _ = await self._verba(action="GetCallID", platformCallID=next_pcid)
        if status == 200 and answer is not None and answer.get("code") == CODE_SUCCESS:
            report.next_record_found += 1
        else:
            report.fail(f"round {report.rounds + 1}: the record after the reset ({next_pcid}) was not found: {answer}")

    async def _check_halves_not_found(self) -> None:
        for pcid in self._lost_pcids:
            status, answer, _ = await self._verba(action="GetCallID", platformCallID=pcid)
            if status == 200 and answer is not None and answer.get("code") == CODE_SUCCESS:
                self.report.glued += 1
                self.report.fail(f"a half record's call ({pcid}) was found: the partial line was completed")

    def _check_quarantine(self) -> None:
        """After the gateway stopped: each half record is in the quarantine alone, as a partial line."""
        with sqlite3.connect(f"file:{self.soak.store}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT raw, reason FROM quarantine WHERE link = ?", (LINK_TCP,)).fetchall()
        for half in self._partials:
            stripped = half.rstrip(b"\r\n")
            alone = [reason for raw, reason in rows if bytes(raw) == stripped]
            glued = [raw for raw, _ in rows if bytes(raw) != stripped and stripped in bytes(raw)]
            if alone and all("partial" in reason for reason in alone):
                self.report.partial_quarantined += 1
            else:
                self.report.fail(f"half record not quarantined alone as a partial line: {stripped[:40]!r}… {alone}")
            if glued:
                self.report.glued += 1
                self.report.fail(f"half record glued to other data in the quarantine: {bytes(glued[0])[:80]!r}")

    # -- 2. the PBX goes silent without closing (half-open)

    async def _pbx_half_open(self) -> None:
        report = self.report
        connection = self.pbx.current or await self.pbx.next_connection()
        before = await self._records(LINK_TCP)
        _, record = self._record()
        self.pbx.write(connection, record)
        await self._until_counted(LINK_TCP, before + 1)
        self.pbx.drain_accepted()
        self.pbx.silent = True
        silent_from = self.pbx.last_write_at
        try:
            try:
                await asyncio.wait_for(connection.closed.wait(), IDLE_TIMEOUT_S + FAULT_STEP_TIMEOUT_S)
            except TimeoutError:
                raise SoakError("the gateway never closed a silent tcp:// connection") from None
            reconnection = await self.pbx.next_connection()
        finally:
            self.pbx.silent = False
        assert connection.closed_at is not None
        report.idle_closed_s.append(connection.closed_at - silent_from)
        report.idle_reconnected_s.append(reconnection.accepted_at - silent_from)
        report.idle_close_to_connect_s.append(reconnection.accepted_at - connection.closed_at)
        report.check(
            "half-open PBX: silence → gateway closes",
            connection.closed_at - silent_from,
            IDLE_TIMEOUT_S + SCHEDULING_MARGIN_S,
        )
        report.check(
            "half-open PBX: close → reconnected",
            reconnection.accepted_at - connection.closed_at,
            PEER_RETURN_BOUND_S + SCHEDULING_MARGIN_S,
        )

    # -- 3. the serial port disappears and a new pty appears at the same path

    async def _serial_recreated(self) -> None:
        report = self.report
        await self._serial_record()  # the connection carried data: a good one, as on a site
        self.serial.destroy()
        await self._until_state(("links", LINK_SERIAL), "down")
        await self._outage()
        back_at = self.serial.create()
        up_at = await self._until_state(("links", LINK_SERIAL), "up")
        report.serial_up_s.append(up_at - back_at)
        report.check(
            "serial pty re-created → /healthz link up", up_at - back_at, PEER_RETURN_BOUND_S + SCHEDULING_MARGIN_S
        )
        await self._serial_record()  # and records flow on the new port

    async def _serial_record(self) -> None:
        before = await self._records(LINK_SERIAL)
        _, record = self._record()
        self.serial.write(record)
        await self._until_counted(LINK_SERIAL, before + 1)

    # -- 4. the recorder restarts while a KeepCall manualRecord waits for its START

    async def _ongoing_call_id(self) -> str:
        """A new call on the controlled extension's channel, answered; its callID from the API."""
        self.recorder.place_call(CHANNEL, calling="01707392200", called=EXTENSION, direction="in")
        self.recorder.answer(CHANNEL)
        native_id = self.recorder.calls[CHANNEL].call_id

        async def call_id() -> str | None:
            status, answer, _ = await self._verba(action="GetCallID", nativeID=native_id)
            if status == 200 and answer is not None and answer.get("code") == CODE_SUCCESS:
                return answer["callID"]
            return None

        return await poll_until(call_id, FAULT_STEP_TIMEOUT_S, "the recorder's call in the API")

    async def _recorder_restart(self) -> None:
        report, recorder = self.report, self.recorder
        call_id = await self._ongoing_call_id()
        since = len(recorder.requests)
        recorder.silent = True  # the START is taken and never answered: the recorder is about to restart
        keep = asyncio.create_task(self._verba(action="KeepCall", callID=call_id, type="manualRecord"))
        try:
            await recorder.wait_for_request("START", FAULT_STEP_TIMEOUT_S, CHANNEL, since=since)
        except TimeoutError:
            keep.cancel()
            raise SoakError("KeepCall manualRecord sent no START to the recorder") from None
        await recorder.stop()
        status, answer, latency = await keep
        report.restart_answers.append((status, latency))
        self._check_answer("recorder restart mid-KeepCall", status, answer, latency, (503, 504))
        await self._outage()
        recorder.silent = False
        await recorder.start_tcp(LOOPBACK, self.peers.recorder_port)
        back_at = time.monotonic()
        up_at = await self._until_state(("recorders", RECORDER), "up")
        report.recorder_up_s.append(up_at - back_at)
        report.check("recorder back → /healthz recorder up", up_at - back_at, PEER_RETURN_BOUND_S + SCHEDULING_MARGIN_S)
        # Nothing left locked: the same channel takes the command again, and stops.
        status, answer, _ = await self._verba(action="KeepCall", callID=call_id, type="manualRecord")
        if status == 200 and answer is not None and answer.get("code") == CODE_SUCCESS:
            report.keeps_after_restart += 1
            await self._verba(action="KeepCall", callID=call_id, type="manualRecord", unmark="1")
        else:
            report.fail(
                f"round {report.rounds + 1}: KeepCall manualRecord after the recorder's return: {status} {answer}"
            )
        recorder.release(CHANNEL)

    def _check_answer(
        self, what: str, status: int | None, answer: dict | None, latency: float, expected: tuple[int, ...]
    ) -> None:
        round_ = self.report.rounds + 1
        if status is None:
            self.report.fail(f"round {round_}: {what}: no answer within {API_HANG_S:g} s (a hang)")
        elif status not in expected:
            self.report.fail(f"round {round_}: {what}: HTTP {status} {answer}, expected {expected}")
        self.report.check(f"{what}: the API's answer", latency, RECORDER_TIMEOUT_S + SCHEDULING_MARGIN_S)

    # -- 5. the recorder stops answering without closing

    async def _recorder_stall(self) -> None:
        report, recorder = self.report, self.recorder
        call_id = await self._ongoing_call_id()
        closed_before = len(recorder.session_closed_at)
        recorder.silent = True
        silent_from = time.monotonic()
        try:
            status, answer, latency = await self._verba(action="KeepCall", callID=call_id, type="manualRecord")
            report.stall_answers.append((status, latency))
            self._check_answer("recorder stall", status, answer, latency, (504,))

            async def dropped() -> float | None:
                closed = recorder.session_closed_at[closed_before:]
                return closed[0] if closed else None

            dropped_at = await poll_until(
                dropped, stall_detect_bound_s() + FAULT_STEP_TIMEOUT_S, "the gateway dropping a silent recorder"
            )
        finally:
            recorder.silent = False
        report.stall_detected_s.append(dropped_at - silent_from)
        report.check("recorder stall → link dropped", dropped_at - silent_from, stall_detect_bound_s())
        # It reconnects at once (the recorder is listening) and is up when its state replay is read: /healthz is
        # asked once the new link is open, so that an "up" from before the drop is not taken for it.

        async def reconnected() -> bool:
            return any(opened >= dropped_at for opened in recorder.session_opened_at)

        await poll_until(reconnected, FAULT_STEP_TIMEOUT_S, "the gateway reconnecting to the recorder")
        up_at = await self._until_state(("recorders", RECORDER), "up")
        report.stall_up_s.append(max(0.0, up_at - dropped_at))
        report.check(
            "recorder stall: dropped → /healthz recorder up",
            up_at - dropped_at,
            PEER_RETURN_BOUND_S + SCHEDULING_MARGIN_S,
        )
        recorder.release(CHANNEL)


async def run_soak(
    cycles: int = DEFAULT_CYCLES,
    *,
    seed: int = 1,
    records_per_cycle: int = DEFAULT_RECORDS_PER_CYCLE,
    rate: float = DEFAULT_RATE,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    store: Path | None = None,
    kill_at: str = KILL_MIXED,
    progress: Callable[[str], object] | None = None,
    link_faults: int = 0,
    outage_s: tuple[float, float] = DEFAULT_OUTAGE_S,
) -> SoakReport:
    """Run `cycles` kill -9 cycles (fewer if `time_limit_s` runs out), then `link_faults` rounds of link faults
    (peers gone for `outage_s` seconds, uniform), and report. `store`: the SQLite file to use (its folder gets the
    configuration and the gateway's log); a temporary folder when None. `progress` gets a line after every cycle
    and round."""
    deadline = time.monotonic() + time_limit_s
    options = dict(seed=seed, records_per_cycle=records_per_cycle, rate=rate, kill_at=kill_at, progress=progress)
    faults = dict(rounds=link_faults, seed=seed, outage_s=outage_s)
    if store is not None:
        store = store.resolve()
        store.parent.mkdir(parents=True, exist_ok=True)
        return await _run(Soak(store.parent, store, **options), cycles, deadline, **faults)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(tmp)
        return await _run(Soak(folder, folder / "soak.db", **options), cycles, deadline, **faults)


async def _run(
    soak: Soak, cycles: int, deadline: float, *, rounds: int, seed: int, outage_s: tuple[float, float]
) -> SoakReport:
    try:
        report = await soak.run(cycles, deadline)
        if rounds > 0:
            report.link_faults = await LinkFaults(soak, seed=seed, outage_s=outage_s).run(rounds)
        return report
    finally:  # a soak that failed half-way leaves no gateway running
        if soak.gateway.process is not None and soak.gateway.process.returncode is None:
            await soak.gateway.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=DEFAULT_CYCLES, help="kill -9 cycles (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the kill moments and the records")
    parser.add_argument("--records-per-cycle", type=int, default=DEFAULT_RECORDS_PER_CYCLE)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="records/s the PBX offers")
    parser.add_argument(
        "--time-limit-s",
        type=float,
        default=DEFAULT_TIME_LIMIT_S,
        help="no new cycle after this many seconds (default %(default)s)",
    )
    parser.add_argument("--store", type=Path, help="the SQLite file (default: a temporary folder)")
    parser.add_argument(
        "--kill-at",
        choices=KILL_MOMENTS,
        default=KILL_MIXED,
        help="mixed (default): half mid-stream, half when /healthz counted a random number of records "
        "sent; counted: every record of the cycle sent and counted; mid-stream: always mid-stream",
    )
    parser.add_argument(
        "--link-faults",
        type=int,
        default=0,
        metavar="N",
        help="after the kill cycles, N rounds of link faults (default %(default)s)",
    )
    parser.add_argument(
        "--outage-s",
        type=float,
        nargs=2,
        default=DEFAULT_OUTAGE_S,
        metavar=("MIN", "MAX"),
        help="how long a peer is gone in a link fault, uniform (default %(default)s)",
    )
    arguments = parser.parse_args(argv)
    # The in-process recorder simulator logs every line at DEBUG; the report is what this script prints.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if arguments.outage_s[0] > arguments.outage_s[1] or arguments.outage_s[0] < 0:
        parser.error("--outage-s MIN MAX: 0 <= MIN <= MAX")
    report = asyncio.run(
        run_soak(
            arguments.cycles,
            seed=arguments.seed,
            records_per_cycle=arguments.records_per_cycle,
            rate=arguments.rate,
            time_limit_s=arguments.time_limit_s,
            store=arguments.store,
            kill_at=arguments.kill_at,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            link_faults=arguments.link_faults,
            outage_s=tuple(arguments.outage_s),
        )
    )
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
