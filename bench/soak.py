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

    python bench/soak.py [--cycles 100] [--seed 1] [--records-per-cycle 3000] [--time-limit-s 900] [--store PATH]
                         [--kill-at mixed|counted|mid-stream] [--rate 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, also when imported from the tests
from benchlib import ROOT, free_port

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
        serial = int(pcid[-7:])
        start = (self._start + timedelta(seconds=serial % 3600)).strftime("%Y/%m/%d %H:%M:%S")
        extension = 2000 + (serial * 7 + part) % 5000
        raw = (
            f"{start},00:01:{part:02d},5,0170{serial:07d},I,{extension},{extension},,0,{pcid},{0 if final else 1},"
            f"E{extension},Agent {extension},T9001,LINE 1.1,0,0\r\n"
        ).encode()
        return Line(pcid, part, final, raw)


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

    @property
    def ok(self) -> bool:
        return not (
            self.records_lost
            or self.duplicates
            or self.callids_changed
            or self.keeps_lost
            or self.final_sample_failed
            or self.count_mismatches
        )

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
        lines.append("result: " + ("OK — nothing acknowledged was lost" if self.ok else "FAILED"))
        return "\n".join(lines)


# ---- the gateway process --------------------------------------------------------------------------------


class SoakError(RuntimeError):
    """The soak itself could not go on (the gateway did not start, a condition never came)."""


def write_config(folder: Path, store: Path, http_port: int, link_port: int) -> Path:
    config = folder / "soak.yaml"
    config.write_text(
        f"""# Written by bench/soak.py: one IP Office listen:// link on loopback, the soak's store.
http: {{host: {LOOPBACK}, port: {http_port}}}
store: {{path: "{store}"}}
api:
  keys: [{{key: {API_KEY}, name: soak}}]
links:
  - {{name: {LINK}, format: avaya-ipo, url: "listen://{LOOPBACK}:{link_port}", timezone: UTC}}
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
                    if response.status == 200 and (await response.json())["links"][LINK]["state"] == "up":
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
        config = write_config(folder, store, http_port, link_port)
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
) -> SoakReport:
    """Run `cycles` kill -9 cycles (fewer if `time_limit_s` runs out) and report. `store`: the SQLite file to
    use (its folder gets the configuration and the gateway's log); a temporary folder when None. `progress` gets
    a line after every cycle."""
    deadline = time.monotonic() + time_limit_s
    options = dict(seed=seed, records_per_cycle=records_per_cycle, rate=rate, kill_at=kill_at, progress=progress)
    if store is not None:
        store = store.resolve()
        store.parent.mkdir(parents=True, exist_ok=True)
        return await _run(Soak(store.parent, store, **options), cycles, deadline)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(tmp)
        return await _run(Soak(folder, folder / "soak.db", **options), cycles, deadline)


async def _run(soak: Soak, cycles: int, deadline: float) -> SoakReport:
    try:
        return await soak.run(cycles, deadline)
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
    arguments = parser.parse_args(argv)
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
        )
    )
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
