"""Store retention: prunes old calls, journal lines, quarantined lines and events in the background, and expired API
tokens whatever the retention settings (they are of no use to anyone), then gives the space back.

Each batch is one short op on the store's writer thread, so API answers and ingest commits never wait for more than
one batch. What is never pruned is decided by the store's queries and documented in docs/configuration.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from gateway.config import RetentionConfig
from gateway.errors import StoreError
from gateway.model import utc_now
from gateway.store import PRUNE_CALLS, PRUNE_EVENTS, PRUNE_JOURNAL, PRUNE_QUARANTINE, Store
from gateway.tokens import TokenStore

log = structlog.get_logger(__name__)

# Retention is counted in days: a pass every 15 minutes deletes a quarter of an hour's worth of rows, a few
# batches on a busy site, and keeps the health figures fresh.
PRUNE_INTERVAL_S = 900.0
# The first pass waits until start-up (reloading ongoing calls, link replay) has had the writer to itself.
FIRST_PRUNE_DELAY_S = 60.0
# Rows per batch: each batch is one write op that the links' journal commits and the API's KeepCall saves queue
# behind, so it must stay at a few milliseconds, like an ordinary group commit. Measured with
# bench/retention_bench.py on the 2-core reference machine (docs/benchmarks.md, "Retention"), median per batch:
# 200 calls (each with its parties and a recording: ten index entries) 4-4.6 ms; 1,000 journal lines 2-3 ms;
# 1,000 quarantined lines 3 ms. 100 calls a batch took 3.6 ms: the fixed cost per op dominates below 200.
CALLS_PER_BATCH = 200
JOURNAL_LINES_PER_BATCH = 1000
QUARANTINE_LINES_PER_BATCH = 1000
# Expired API tokens per batch: a token is one small row and one index entry. 500 of 50,000 expired tokens took
# 0.8 ms per batch (median, 1.7 ms the slowest) on a 2-core machine: well inside an ordinary group commit.
TOKENS_PER_BATCH = 500
# Pages given back to the OS per vacuum step: 256 pages (1 MiB at SQLite's 4 KiB), 3-6 ms on the writer (each
# page released may first move a live page from the end of the file into a free slot).
VACUUM_PAGES_PER_STEP = 256
# Pause between two batches. The writer is shared: without a pause the next batch would be queued the moment the
# last one committed, and a large backlog would keep the writer (and a CPU core, and the GIL) busy without
# a break. 5 ms after batches of about 4 ms caps pruning at about half of the writer while ingest and the API
# get the rest; a backlog of 50,000 calls, 50,000 journal and 50,000 quarantined lines clears in about 4 s.
BATCH_PAUSE_S = 0.005

TOKENS = "tokens"
TABLES = (PRUNE_CALLS, PRUNE_JOURNAL, PRUNE_QUARANTINE, PRUNE_EVENTS, TOKENS)


@dataclass(slots=True)
class RetentionHealth:
    """The last prune pass in figures, for `/healthz`; the pruner updates it, the health report reads it."""

    runs: int = 0  # passes completed since start
    last_run_at: datetime | None = None  # when the last completed pass ended
    last_run_s: float | None = None  # how long it took
    last_pruned: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))  # rows, last pass
    pruned_total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))  # rows since start
    pages_released: int = 0  # free pages given back to the OS by the last pass
    incremental_vacuum: bool | None = None  # None until the first pass has looked at the store
    errors: int = 0  # passes that failed since start
    last_error: str | None = None
    last_error_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
            "last_run_s": None if self.last_run_s is None else round(self.last_run_s, 3),
            "last_pruned": dict(self.last_pruned),
            "pruned_total": dict(self.pruned_total),
            "pages_released": self.pages_released,
            "auto_vacuum": {None: None, True: "incremental", False: "none"}[self.incremental_vacuum],
            "errors": self.errors,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
        }


class RetentionPruner:
    """Runs prune passes every `interval_s` in a task of its own (`start()`, `close()`); `prune_once()` runs one now.
    Expired tokens are pruned from `tokens` (default: the store's own token table)."""

    def __init__(
        self,
        store: Store,
        retention: RetentionConfig,
        *,
        tokens: TokenStore | None = None,
        interval_s: float = PRUNE_INTERVAL_S,
        first_delay_s: float = FIRST_PRUNE_DELAY_S,
        pause_s: float = BATCH_PAUSE_S,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._tokens: TokenStore = tokens if tokens is not None else store.tokens
        self._retention_s = {
            PRUNE_CALLS: retention.calls_s,
            PRUNE_JOURNAL: retention.journal_s,
            PRUNE_QUARANTINE: retention.quarantine_s,
            PRUNE_EVENTS: retention.events_s,
        }
        self._batch = {
            PRUNE_CALLS: CALLS_PER_BATCH,
            PRUNE_JOURNAL: JOURNAL_LINES_PER_BATCH,
            PRUNE_QUARANTINE: QUARANTINE_LINES_PER_BATCH,
            PRUNE_EVENTS: QUARANTINE_LINES_PER_BATCH,
        }
        self._interval_s = interval_s
        self._first_delay_s = first_delay_s
        self._pause_s = pause_s
        self._clock = clock
        self.health = RetentionHealth()
        self._task: asyncio.Task[None] | None = None
        self._passes_done = asyncio.Condition()
        self._failing = False  # one WARNING per run of failures, then DEBUG until a pass succeeds again

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run_forever(), name="store-retention")

    async def close(self) -> None:
        """Cancel the background task; a batch already handed to the writer still commits (it is short)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_for_passes(self, count: int) -> None:
        """Until `count` passes have completed or failed since start (for tests and tools: no sleeping)."""
        async with self._passes_done:
            await self._passes_done.wait_for(lambda: self.health.runs + self.health.errors >= count)

    async def _run_forever(self) -> None:
        await asyncio.sleep(self._first_delay_s)
        while True:
            try:
                await self.prune_once()
            except Exception as error:  # noqa: BLE001 — a failed pass is retried next interval, never fatal
                self._record_failure(error)
            async with self._passes_done:
                self._passes_done.notify_all()
            await asyncio.sleep(self._interval_s)

    async def prune_once(self) -> dict[str, int]:
        """One pass: every table with a retention and expired tokens, batch by batch, then free pages back to the
        OS; rows deleted."""
        started = time.monotonic()
        now = self._clock()
        pruned = dict.fromkeys(TABLES, 0)
        for table, retention_s in self._retention_s.items():
            if retention_s is not None:
                pruned[table] = await self._prune_table(table, now - timedelta(seconds=retention_s))
        pruned[TOKENS] = await self._prune_tokens(now.timestamp())
        pages_released = await self._release_space()
        health = self.health
        health.runs += 1
        health.last_run_at = self._clock()
        health.last_run_s = time.monotonic() - started
        health.last_pruned = pruned
        for table, count in pruned.items():
            health.pruned_total[table] += count
        health.pages_released = pages_released
        if self._failing:
            self._failing = False
            log.info("retention pruning works again")
        if any(pruned.values()):
            log.info("retention pruned", **pruned, pages_released=pages_released, seconds=round(health.last_run_s, 2))
        return pruned

    async def _prune_table(self, table: str, cutoff: datetime) -> int:
        batch = self._batch[table]
        total = 0
        while True:
            deleted = await self._store.prune(table, cutoff, batch)
            total += deleted
            if deleted < batch:  # a short batch means nothing older is left (store.prune deletes oldest first)
                return total
            await asyncio.sleep(self._pause_s)

    async def _prune_tokens(self, now_epoch: float) -> int:
        total = 0
        while True:
            deleted = await self._tokens.prune(now_epoch, TOKENS_PER_BATCH)
            total += deleted
            if deleted < TOKENS_PER_BATCH:
                return total
            await asyncio.sleep(self._pause_s)

    async def _release_space(self) -> int:
        space = await self._store.space()
        if self.health.incremental_vacuum is None and not space.incremental_vacuum:
            log.info(
                "store file does not shrink: it was created without incremental auto-vacuum; freed pages are"
                " reused, see docs/configuration.md (store.retention) to switch it on",
                path=str(self._store.path),
            )
        self.health.incremental_vacuum = space.incremental_vacuum
        if not space.incremental_vacuum:
            return 0
        free, released = space.freelist_count, 0
        while free > 0:
            left = await self._store.incremental_vacuum(min(free, VACUUM_PAGES_PER_STEP))
            if left >= free:  # nothing released (new writes took the pages): done for this pass
                break
            released += free - left
            free = left
            if free:
                await asyncio.sleep(self._pause_s)
        return released

    def _record_failure(self, error: Exception) -> None:
        health = self.health
        health.errors += 1
        health.last_error = str(error)
        health.last_error_at = self._clock()
        if not isinstance(error, StoreError):
            log.exception("retention pass failed with an internal error")
        elif not self._failing:
            log.warning("retention pass failed; retried every interval", error=str(error), interval_s=self._interval_s)
        else:
            log.debug("retention pass failed again", error=str(error))
        self._failing = True
