"""How fast `gateway migrate-store` copies a SQLite store into PostgreSQL: a store file of --calls calls (a mix of
ongoing, ended, transferred and recorded ones, as the store writes them) migrated twice into an empty database —
the first run inserts every call, the second replaces every one. Prints calls/s of both runs.

    python bench/migrate_bench.py --url postgresql://USER:PASSWORD@127.0.0.1:5432/DB [--calls 100000]

The database must be one the benchmark may fill (it is not emptied before or after).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.logs import configure_logging  # noqa: E402
from gateway.model import Call, CallState, Direction, Recording, RecordingMode  # noqa: E402
from gateway.store import Store  # noqa: E402

SAVE_BATCH = 2000  # calls per save_calls_soon while building the file
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def bench_call(index: int) -> Call:
    """About a day's traffic of a large site: 3 in 4 ended, 1 in 3 recorded, 1 in 5 with a transfer."""
    call_id = f"{index:08x}-5f1c-4c0e-9a2b-{index * 7919 % 10**12:012d}"  # GUID-like, not in insertion order
    start = T0 + timedelta(seconds=index * 0.8)
    call = Call(
        call_id=call_id,
        start_time=start,
        direction=(Direction.IN, Direction.OUT)[index % 2],
        extension=str(2000 + index % 500),
        calling=f"0301234{index % 10000:04d}",
        called=str(2000 + index % 500),
        platform_call_id=f"pbx-{index}",
        native_id=f"rec-{index}" if index % 3 == 0 else None,
        recording_mode=RecordingMode.CONTROLLED_AUTOSTART if index % 3 == 0 else None,
        link="ipo",
        trunk=f"T{index % 8}",
    )
    if index % 4:
        call.state = CallState.FINISHED
        call.end_time = start + timedelta(seconds=20 + index % 300)
        call.duration_s = 20.0 + index % 300
    if index % 5 == 0:
        call.other_parties = {str(2000 + (index + 7) % 500)}
    if index % 3 == 0:
        call.recorder, call.channel = "rec1", str(index % 60)
        call.recordings = [Recording(f"{call_id}/r0", call_id, start, recorder="rec1", channel=call.channel)]
    return call


async def build_store(path: Path, calls: int) -> None:
    store = Store(path, sync="normal")
    await store.open()
    try:
        for start in range(0, calls, SAVE_BATCH):
            await store.save_calls_soon([bench_call(index) for index in range(start, min(calls, start + SAVE_BATCH))])
    finally:
        await store.close()


async def run_migration(path: Path, url: str) -> tuple[float, str]:
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "migrate-store", "--from", str(path), "--to", url, "--node", "bench",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"migrate-store failed ({process.returncode}): {stderr.decode().strip()}")
    summary = next(line for line in stdout.decode().splitlines() if line.startswith("copied "))
    return elapsed, summary


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="an empty PostgreSQL database")
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    configure_logging("warning", "console")  # the store's own lines are not the benchmark's
    with tempfile.TemporaryDirectory(prefix="migrate-bench-") as folder:
        path = Path(folder) / "store.db"
        started = time.perf_counter()
        await build_store(path, args.calls)
        print(f"store of {args.calls:,} calls built in {time.perf_counter() - started:.1f} s "
              f"({path.stat().st_size / 2**20:.0f} MiB)")  # fmt: skip
        for label in ("first run (all new)", "second run (all replaced)"):
            elapsed, summary = await run_migration(path, args.url)
            in_command = re.search(r"\(([\d,]+) calls/s\)", summary)
            rate = in_command.group(1) if in_command else "?"
            print(f"{label}: {summary}; whole command {elapsed:.1f} s; copying {rate} calls/s")


if __name__ == "__main__":
    asyncio.run(main())
