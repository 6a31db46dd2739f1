"""Retention: how fast a backlog is pruned, how long one batch holds the store's writer, and what a concurrent
read and a concurrent call save (the API's KeepCall, ingest) wait meanwhile, against the same idle.

A store in a temporary folder gets N finished calls (two parties and a recording each), N journal lines and N
quarantined lines, all older than the retention; one pass of the pruner then runs while this process keeps
reading one call and saving another, and the figures are printed side by side with the idle ones.

    python bench/retention_bench.py [--rows 50000] [--sync full|normal]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchlib import ROOT, percentile  # noqa: E402 — bench/ is the script folder

sys.path.insert(0, str(ROOT))

from gateway.config import RetentionConfig  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402
from gateway.model import Call, CallState, Recording  # noqa: E402
from gateway.retention import RetentionPruner  # noqa: E402
from gateway.store import PRUNE_CALLS, PRUNE_JOURNAL, PRUNE_QUARANTINE, Store  # noqa: E402

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)
RETENTION = RetentionConfig(calls_s=30 * 86400, journal_s=30 * 86400, quarantine_s=30 * 86400)
PROBE_INTERVAL_S = 0.002
IDLE_PROBES = 500


def call(index: int, ended: datetime) -> Call:
    made = Call(
        call_id=f"call-{index}", start_time=ended - timedelta(minutes=3), state=CallState.FINISHED,
        extension=str(2000 + index % 500), calling=str(2000 + index % 500), called=f"0170{index:07d}", end_time=ended,
    )  # fmt: skip
    made.recordings = [Recording(f"rec-{index}", made.call_id, made.start_time, native_id=f"n{index}", end_time=ended)]
    return made


async def fill(store: Store, rows: int) -> None:
    for first in range(0, rows, 5000):
        await store.save_calls_soon(
            [call(i, OLD + timedelta(seconds=i)) for i in range(first, min(rows, first + 5000))]
        )
        await store.append_journal_many_soon("pbx", [(OLD, b"x" * 120)] * min(5000, rows - first))
    # No batch API for quarantine: one op each, all queued at once (the writer group-commits them).
    await asyncio.gather(*(store.quarantine("pbx", OLD, b"y" * 120, "bench") for _ in range(rows)))
    connection = sqlite3.connect(store.path)
    with connection:  # every line applied: what crash recovery would have committed
        connection.execute("INSERT INTO link_progress VALUES ('pbx', 1 << 62, 1 << 62)")
    connection.close()


async def probe(store: Store, until: asyncio.Future[object] | int) -> tuple[list[float], list[float]]:
    """Read one call and save another in a loop: their latencies in ms."""
    reads, saves = [], []
    probe_call = call(10**9, NOW)
    count = 0
    while (count < until) if isinstance(until, int) else not until.done():
        started = time.perf_counter()
        await store.get_call(probe_call.call_id)
        reads.append((time.perf_counter() - started) * 1000)
        probe_call.duration_s = float(count)
        started = time.perf_counter()
        await store.save_call(probe_call)
        saves.append((time.perf_counter() - started) * 1000)
        count += 1
        await asyncio.sleep(PROBE_INTERVAL_S)
    return reads, saves


def figures(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 50):6.2f} ms  p99 {percentile(values, 99):6.2f} ms  max {max(values):6.2f} ms"
        f" ({len(values)} samples)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="calls, journal lines and quarantined lines each")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    args = parser.parse_args()
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "bench.db", sync=args.sync)
        await store.open()
        try:
            await fill(store, args.rows)
            before = await store.space()
            idle_reads, idle_saves = await probe(store, IDLE_PROBES)
            batch_ms: dict[str, list[float]] = {PRUNE_CALLS: [], PRUNE_JOURNAL: [], PRUNE_QUARANTINE: []}
            vacuum_ms: list[float] = []
            prune, vacuum = store.prune, store.incremental_vacuum

            async def timed_prune(table: str, older_than: datetime, limit: int) -> int:
                started = time.perf_counter()
                deleted = await prune(table, older_than, limit)
                batch_ms[table].append((time.perf_counter() - started) * 1000)
                return deleted

            async def timed_vacuum(pages: int) -> int:
                started = time.perf_counter()
                left = await vacuum(pages)
                vacuum_ms.append((time.perf_counter() - started) * 1000)
                return left

            store.prune, store.incremental_vacuum = timed_prune, timed_vacuum  # type: ignore[method-assign]
            pruner = RetentionPruner(store, RETENTION)
            pass_task = asyncio.ensure_future(pruner.prune_once())
            busy_reads, busy_saves = await probe(store, pass_task)
            pruned = await pass_task
            after = await store.space()
        finally:
            await store.close()
    seconds = pruner.health.last_run_s or float("nan")
    print(
        f"retention pass over {args.rows:,} rows per table (sync={args.sync}): {seconds:.2f} s, "
        f"{sum(pruned.values()) / seconds:,.0f} rows/s; file {before.file_bytes / 2**20:.1f} MiB → "
        f"{after.file_bytes / 2**20:.1f} MiB"
    )
    for table, times in batch_ms.items():
        print(f"  {table:<10} {pruned[table]:>7,} rows in {len(times):>4} batches; batch {figures(times)}")
    print(
        f"  vacuum     {pruner.health.pages_released:>7,} pages in {len(vacuum_ms):>4} steps;   step  {figures(vacuum_ms)}"
    )
    print(f"  get_call   idle {figures(idle_reads)}   during the pass {figures(busy_reads)}")
    print(f"  save_call  idle {figures(idle_saves)}   during the pass {figures(busy_saves)}")


if __name__ == "__main__":
    asyncio.run(main())
