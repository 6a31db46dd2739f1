"""Saving calls: what changed in one turn of the event loop goes to the store as one batch, with the links'
journal progress; a batch the store refused is tried again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from gateway.events import LinkProgress
from gateway.model import Call
from gateway.store import Store

log = structlog.get_logger(__name__)

# A batch of saves the store refused (disk full, I/O error) is tried again this long after, for as long as it
# fails: the calls stay in memory meanwhile, and the journal still holds the lines they came from.
SAVE_RETRY_S = 1.0

ProgressSource = Callable[[], LinkProgress | None]


def _settle(future: asyncio.Future[None], done: asyncio.Future[None]) -> None:
    """Pass a store future's outcome on to the tracker's future for the same save."""
    if future.done():
        return
    if done.cancelled():
        future.cancel()
    elif done.exception() is not None:
        future.set_exception(done.exception())  # type: ignore[arg-type]
    else:
        future.set_result(None)


class CallSaver:
    """Queues call saves in batches of one loop turn and knows which calls are not committed yet."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.unsaved: dict[str, asyncio.Future[None]] = {}  # call id → latest save not yet committed
        self._dirty: dict[str, Call] = {}  # changed this loop turn, not yet snapshotted
        self._dirty_batch: asyncio.Future[None] | None = None  # the future of this turn's batch
        # Asked at each batch: how far each SMDR link has applied its journal, committed with the batch.
        self._progress_sources: list[ProgressSource] = []
        self._retry_handle: asyncio.TimerHandle | None = None

    def add_progress_source(self, source: ProgressSource) -> None:
        self._progress_sources.append(source)

    def save_soon(self, call: Call) -> asyncio.Future[None]:
        """Queue the call's state for the store; the future resolves when it is committed.

        Everything changed within one turn of the event loop is written as one batch, snapshotted at
        the end of that turn: a call changed twice (an OK reply and the event in the same read) is
        written once, and a burst of PBX records costs one queue entry and one future, not one each.
        """
        batch = self.pending_batch()
        self._dirty[call.call_id] = call
        self.unsaved[call.call_id] = batch
        return batch

    def pending_batch(self) -> asyncio.Future[None]:
        """This loop turn's batch, scheduled to be written at the end of the turn."""
        batch = self._dirty_batch
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._dirty_batch = loop.create_future()
            loop.call_soon(self._write_dirty)
        return batch

    async def flush(self) -> None:
        """Wait until every queued save has committed."""
        pending = list(self.unsaved.values())
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def stored(self, call_id: str) -> None:
        """Return once the call's latest change is committed (at once when nothing is queued)."""
        pending = self.unsaved.get(call_id)
        if pending is not None:
            await asyncio.shield(pending)

    def close(self) -> None:
        """Stop retrying failed saves (the gateway is stopping)."""
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None

    def _write_dirty(self) -> None:
        batch, self._dirty_batch = self._dirty_batch, None
        dirty, self._dirty = self._dirty, {}
        assert batch is not None
        # Taken now, with the snapshots: every record of every line up to here is in this batch or an earlier one.
        progress = [item for source in self._progress_sources if (item := source()) is not None]
        try:
            stored = self._store.save_calls_soon(dirty.values(), progress)
        except Exception as error:  # the store is closed: the callers learn it from the future
            stored = asyncio.get_running_loop().create_future()
            stored.set_exception(error)

        def saved(done: asyncio.Future[None]) -> None:
            _settle(batch, done)
            for call_id in dirty:
                if self.unsaved.get(call_id) is batch:
                    del self.unsaved[call_id]
            if not done.cancelled() and done.exception() is not None:
                # The store logs the spell of failures once; this is every batch of it.
                log.debug("calls could not be stored; retrying", calls=len(dirty), error=str(done.exception()))
                self._retry_later(dirty)

        stored.add_done_callback(saved)

    def _retry_later(self, calls: dict[str, Call]) -> None:
        """Queue the calls of a failed batch again (unless changed since: then they are queued already), with
        the progress of that moment, SAVE_RETRY_S from now — or sooner, with the next batch. (A batch already
        queued when this one failed still carries its own progress: a narrow window under store faults.)"""
        for call_id, call in calls.items():
            self._dirty.setdefault(call_id, call)
        if self._retry_handle is None and calls:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._retry_handle = loop.call_later(SAVE_RETRY_S, self._retry_now)

    def _retry_now(self) -> None:
        self._retry_handle = None
        if self._dirty:
            batch = self.pending_batch()
            for call_id in self._dirty:
                self.unsaved.setdefault(call_id, batch)
