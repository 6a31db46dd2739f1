"""Start-up time and memory of `gateway run` on a big store: N finished calls, O ongoing ones and J journal lines
of an SMDR link that were journalled but not applied before the gateway stopped (so start-up replays them).

The store is built once through the real store API and cached (--cache-dir, keyed by its sizes); each run starts
the gateway as its own process on a fresh copy (the replay changes the store) and measures the time from the
process start to the first `/healthz` answer, the RSS then, and the RSS after --idle seconds. Several sizes
(--sizes) give the growth per 100,000 stored calls. --baseline DIR runs another checkout of the gateway
(e.g. `git worktree add /tmp/base main`) in the same rounds, alternating which goes first: an A/B on one machine.

    python bench/startup_bench.py [--sizes 100000,1000000] [--ongoing 10000] [--journal 100000] [--rounds 3]
                                  [--idle 10] [--baseline DIR] [--profile FILE.prof]

Building 1,000,000 calls takes a few minutes the first time; the copies are made in --work-dir (default: the
system's temporary folder).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchlib import ROOT, free_port  # noqa: E402 — bench/ is the script folder

sys.path.insert(0, str(ROOT))

from gateway.events import LinkProgress  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402
from gateway.model import Call, CallState, Direction, Recording, RecordingMode, new_id  # noqa: E402
from gateway.store import Store  # noqa: E402
from simulators.pbx_records import AVAYA_IPO, record_lines  # noqa: E402
from simulators.traffic import DIRECTION_IN, DIRECTION_OUT, CompletedCall, PlannedCall  # noqa: E402

configure_logging("warning")

BUILD_VERSION = 1  # bump when the built store's content changes: cached files of other versions are not used
EXTENSIONS = 4_000
LINK = "pbx"
RECORDER = "rec-1"
APPLIED_LINES = 1_000  # journal lines already applied before the stop (the progress row points past them)
CALLS_PER_WRITE = 500
WRITES_IN_FLIGHT = 8
TRANSFER_EVERY = 20  # one call in 20 was transferred: a third party, and two IP Office records
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.02
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# ---- building the store


def _finished_call(index: int, base: datetime) -> Call:
    extension = str(2000 + index % EXTENSIONS)
    start = base + timedelta(seconds=3 * index)
    connect = start + timedelta(seconds=6)
    end = connect + timedelta(seconds=60 + index % 300)
    call = Call(
        call_id=new_id(),
        start_time=start,
        state=CallState.FINISHED,
        direction=Direction.IN if index % 3 else Direction.OUT,
        extension=extension,
        calling=f"0170{index % 10_000_000:07d}" if index % 3 else extension,
        called=extension if index % 3 else f"0170{index % 10_000_000:07d}",
        platform_call_id=str(1_000_000_000 + index),
        native_id=f"C{index:09d}",
        recorder=RECORDER,
        channel=str(index % 60),
        link=LINK,
        trunk="T9001",
        connect_time=connect,
        end_time=end,
        ring_s=6.0,
        duration_s=(end - connect).total_seconds(),
        recording_mode=RecordingMode.FULL,
    )
    if index % TRANSFER_EVERY == 0:
        call.other_parties.add(str(2000 + (index + 7) % EXTENSIONS))
    call.recordings.append(
        Recording(new_id(), call.call_id, connect, RECORDER, call.channel, f"R{index:09d}", end_time=end)
    )
    return call


def _ongoing_call(index: int, now: datetime, ongoing: int) -> Call:
    """A recorder's live call with its recording running, still waiting for the PBX record that will describe it."""
    extension = str(2000 + index % EXTENSIONS)
    start = now - timedelta(seconds=600 * (ongoing - index) / ongoing)
    call = Call(
        call_id=new_id(),
        start_time=start,
        direction=Direction.IN,
        extension=extension,
        calling=f"0171{index:07d}",
        called=extension,
        native_id=f"L{index:09d}",
        recorder=RECORDER,
        channel=str(index % 60),
        connect_time=start + timedelta(seconds=5),
        recording_mode=RecordingMode.FULL,
        awaiting_record=True,
    )
    call.recordings.append(
        Recording(new_id(), call.call_id, start + timedelta(seconds=5), RECORDER, call.channel, f"LR{index:09d}")
    )
    return call


def _journal_lines(count: int, first_pcid: int, first_at: datetime) -> list[tuple[datetime, bytes]]:
    """`count` lines exactly as an Avaya IP Office prints them (simulators/pbx_records.py), a transferred call
    printing two records (Continuation 1, then 0), arriving 10 ms apart."""
    lines: list[tuple[datetime, bytes]] = []
    index = 0
    while len(lines) < count:
        inbound = index % 3 != 0
        plan = PlannedCall(
            at_s=0.0,
            direction=DIRECTION_IN if inbound else DIRECTION_OUT,
            extension=str(2000 + index % EXTENSIONS),
            other=f"0172{index:07d}",
            ring_s=6.0,
            talk_s=60.0 + index % 300,
            transfer_to=str(2000 + (index + 7) % EXTENSIONS) if index % TRANSFER_EVERY == 0 else None,
            transfer_talk_s=30.0,
        )
        start = first_at + timedelta(seconds=index * 0.01 - plan.length_s)
        for text in record_lines(AVAYA_IPO, CompletedCall(plan, first_pcid + index, start, "T9001"), UTC):
            received = first_at + timedelta(seconds=len(lines) * 0.01)
            lines.append((received, text.encode() + b"\r\n"))
        index += 1
    return lines[:count]


async def _append_journal(store: Store, lines: list[tuple[datetime, bytes]]) -> int:
    last = 0
    for first in range(0, len(lines), 512):
        last = (await store.append_journal_many_soon(LINK, lines[first : first + 512]))[-1]
    return last


async def build_store(path: Path, calls: int, ongoing: int, journal: int) -> datetime:
    """Returns when it was built: the ongoing calls started within the ten minutes before."""
    store = Store(path, sync="normal")  # a bench fixture: a crash while building only means building again
    await store.open()
    try:
        now = datetime.now(UTC)
        base = now - timedelta(seconds=3 * calls + 7200)
        in_flight: list[asyncio.Future[None]] = []
        started = time.monotonic()
        for first in range(0, calls + ongoing, CALLS_PER_WRITE):
            batch = [
                _finished_call(i, base) if i < calls else _ongoing_call(i - calls, now, ongoing)
                for i in range(first, min(calls + ongoing, first + CALLS_PER_WRITE))
            ]
            in_flight.append(store.save_calls_soon(batch))
            if len(in_flight) >= WRITES_IN_FLIGHT:
                await in_flight.pop(0)
            if first and first % 100_000 == 0:
                print(f"  {first:,} calls written ({time.monotonic() - started:.0f} s)", flush=True)
        await asyncio.gather(*in_flight)
        # Lines applied before the stop (their calls are among the stored ones), the progress committed after
        # them, then the lines journalled but never applied: what start-up replays.
        journal_at = now - timedelta(minutes=30)
        applied = _journal_lines(APPLIED_LINES, 3_000_000_000, journal_at - timedelta(seconds=60))
        applied_seq = await _append_journal(store, applied)
        await store.save_calls_soon([], [LinkProgress(LINK, applied_seq, applied_seq + 1)])
        await _append_journal(store, _journal_lines(journal, 4_000_000_000, journal_at))
    finally:
        await store.close()
    return now


def cached_store(cache_dir: Path, calls: int, ongoing: int, journal: int) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"store-v{BUILD_VERSION}-c{calls}-o{ongoing}-j{journal}-e{EXTENSIONS}.db"
    if not path.exists() or not path.with_suffix(".json").exists():
        print(f"building {path} ({calls:,} calls, {ongoing:,} ongoing, {journal:,} journal lines) ...", flush=True)
        partial = path.with_name(path.name + ".building")
        for leftover in partial.parent.glob(partial.name + "*"):
            leftover.unlink()
        started = time.monotonic()
        built_at = asyncio.run(build_store(partial, calls, ongoing, journal))
        path.with_suffix(".json").write_text(json.dumps({"built_at": built_at.timestamp()}))
        partial.rename(path)
        print(f"built in {time.monotonic() - started:.0f} s, {path.stat().st_size / 2**20:,.0f} MiB", flush=True)
    return path


def fresh_copy(cached: Path, folder: Path) -> Path:
    """A copy to run on, its live calls moved to now: they started within the last ten minutes before the stop
    (else the recorder calls awaiting their PBX record would be past the horizon start-up loads them for)."""
    copy = folder / "gateway.db"
    for leftover in folder.glob("gateway.db*"):
        leftover.unlink()
    shutil.copyfile(cached, copy)
    shift = time.time() - json.loads(cached.with_suffix(".json").read_text())["built_at"]
    with sqlite3.connect(copy) as connection:
        connection.execute(
            "UPDATE recordings SET start_time = start_time + ?"
            " WHERE call_id IN (SELECT call_id FROM calls WHERE state = 0)",
            (shift,),
        )
        connection.execute(
            "UPDATE calls SET start_time = start_time + ?, connect_time = connect_time + ? WHERE state = 0",
            (shift, shift),
        )
    connection.close()
    return copy


# ---- running the gateway


@dataclass
class Run:
    ready_s: float
    rss_ready_mib: float
    rss_idle_mib: float
    peak_mib: float
    replayed: int
    stored: int
    ongoing: int


def write_config(folder: Path, http_port: int, smdr_port: int, db_path: Path) -> Path:
    config = folder / "startup.yaml"
    config.write_text(
        f"""
http: {{host: 127.0.0.1, port: {http_port}}}
store: {{path: "{db_path}"}}
api:
  keys: [{{key: 74c8eea0-50c6-40b2-9f3e-252ed501c3c8, name: bench}}]
links:
  - {{name: {LINK}, format: avaya-ipo, url: "listen://127.0.0.1:{smdr_port}", timezone: UTC}}
log: {{level: info}}
"""
    )
    return config


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def _healthz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def run_gateway(root: Path, cached: Path, folder: Path, idle_s: float, profile: Path | None) -> Run:
    db_path = fresh_copy(cached, folder)
    http_port = free_port()
    config = write_config(folder, http_port, free_port(), db_path)
    command = [sys.executable]
    if profile is not None:
        command += ["-m", "cProfile", "-o", str(profile)]
    command += ["-m", "gateway", "run", "--config", str(config)]
    log_path = folder / "gateway.log"
    with log_path.open("w") as log_file:
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=root, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            health = None
            while health is None:
                if process.poll() is not None:
                    raise SystemExit(f"gateway exited: {log_path.read_text()[-3000:]}")
                if time.monotonic() - started > READY_TIMEOUT_S:
                    raise SystemExit(f"gateway not ready within {READY_TIMEOUT_S} s")
                health = _healthz(http_port)
                if health is None:
                    time.sleep(POLL_INTERVAL_S)
            ready_s = time.monotonic() - started
            rss_ready = _proc_kib(process.pid, "VmRSS")
            time.sleep(idle_s)
            rss_idle = _proc_kib(process.pid, "VmRSS")
            peak = _proc_kib(process.pid, "VmHWM")
            health = _healthz(http_port) or health
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if "gateway ready" not in log_path.read_text():
        raise SystemExit(f"no 'gateway ready' in the log: {log_path.read_text()[-3000:]}")
    return Run(
        ready_s,
        rss_ready / 1024,
        rss_idle / 1024,
        peak / 1024,
        int(health["links"][LINK]["replayed"]),
        int(health["calls"]["stored"]),
        int(health["calls"]["ongoing"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="stored finished calls, comma-separated")
    parser.add_argument("--ongoing", type=int, default=10_000)
    parser.add_argument("--journal", type=int, default=100_000, help="journal lines to replay at start-up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds after ready before the second RSS reading")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to run in the same rounds")
    parser.add_argument("--profile", type=Path, default=None, help="run once under cProfile, writing this file")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "gateway-startup-bench")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    versions = [("this", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    with tempfile.TemporaryDirectory(prefix="startup-bench-", dir=args.work_dir) as tmp:
        folder = Path(tmp)
        results: dict[tuple[str, int], list[Run]] = {}
        for size in sizes:
            cached = cached_store(args.cache_dir, size, args.ongoing, args.journal)
            if args.profile is not None:
                run = run_gateway(ROOT, cached, folder, args.idle, args.profile)
                print(f"profiled: ready in {run.ready_s:.2f} s; cProfile output in {args.profile}")
                return
            for round_index in range(args.rounds):
                order = versions if round_index % 2 == 0 else versions[::-1]
                for name, root in order:
                    run = run_gateway(root, cached, folder, args.idle, None)
                    results.setdefault((name, size), []).append(run)
                    print(
                        f"  {name:8} {size:>9,} calls  round {round_index + 1}: ready {run.ready_s:6.2f} s, "
                        f"RSS {run.rss_ready_mib:6.1f} → {run.rss_idle_mib:6.1f} MiB (peak {run.peak_mib:.1f}), "
                        f"replayed {run.replayed:,}, stored {run.stored:,}, ongoing {run.ongoing:,}",
                        flush=True,
                    )

    print()
    print(f"{args.ongoing:,} ongoing calls, {args.journal:,} journal lines replayed; medians of {args.rounds} rounds")
    print(f"| version | stored calls | ready (s) | RSS at ready (MiB) | RSS after {args.idle:g} s idle | peak RSS |")
    print("|---|---|---|---|---|---|")
    for name, _ in versions:
        for size in sizes:
            runs = results[(name, size)]
            print(
                f"| {name} | {size:,} | {statistics.median([r.ready_s for r in runs]):.2f} "
                f"(min {min(r.ready_s for r in runs):.2f}, max {max(r.ready_s for r in runs):.2f}) | "
                f"{statistics.median([r.rss_ready_mib for r in runs]):.1f} | {statistics.median([r.rss_idle_mib for r in runs]):.1f} | "
                f"{statistics.median([r.peak_mib for r in runs]):.1f} |"
            )
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        per = 100_000 / (large - small)
        for name, _ in versions:
            low, high = results[(name, small)], results[(name, large)]
            rss = (
                statistics.median([r.rss_idle_mib for r in high]) - statistics.median([r.rss_idle_mib for r in low])
            ) * per
            ready = (statistics.median([r.ready_s for r in high]) - statistics.median([r.ready_s for r in low])) * per
            print(
                f"{name}: growth per 100,000 stored calls ({small:,} → {large:,}): RSS {rss:+.2f} MiB, ready {ready:+.3f} s"
            )


if __name__ == "__main__":
    main()
