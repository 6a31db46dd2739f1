"""The reader pool: a few threads with their own read-only connections, answering queued reads in batches."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from gateway.errors import StoreError
from gateway.store.connections import close_quietly, connect
from gateway.store.handoff import Result, call_soon, settle_all

T = TypeVar("T")

READER_THREADS = 2  # the machine has two cores; more readers would only contend for the GIL
READ_BATCH_MAX = 64  # reads one reader thread answers per wake-up of the event loop

_Read = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


class ReaderPool:
    """Runs `function(connection, *args)` in a reader thread and resolves a future on the loop with the result."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._queue: SimpleQueue[_Read | None] = SimpleQueue()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self.pending: set[asyncio.Future[Any]] = set()  # reads submitted and not yet settled

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._threads = [
            threading.Thread(target=self._run, name=f"store-reader-{index}", daemon=True)
            for index in range(READER_THREADS)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, function: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
        assert self._loop is not None
        future: asyncio.Future[T] = self._loop.create_future()
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)
        self._queue.put((function, args, future))
        return future

    def stop(self) -> None:
        """Stop the threads and close their connections (blocking: the writer thread calls it, once no read is
        pending)."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            close_quietly(connection)

    def _run(self) -> None:
        """A reader thread: takes every read queued (up to READ_BATCH_MAX), runs them, settles them in one hop.

        Under load many lookups wait at once; answering them with one wake-up of the loop instead of
        one each is what keeps store lookups near the cost of the queries themselves.
        """
        loop = self._loop
        assert loop is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < READ_BATCH_MAX:
                try:
                    item = self._queue.get_nowait()
                except Empty:
                    break
                if item is None:
                    self._queue.put(None)  # keep the stop marker for this thread's next turn
                    break
                batch.append(item)
            results: list[Result] = []
            for function, args, future in batch:
                try:
                    results.append((future, self._run_read(function, args), None))
                except Exception as error:  # noqa: BLE001 — handed to the awaiting coroutine
                    results.append((future, None, error))
            call_soon(loop, settle_all, results)

    def _run_read(self, function: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return function(self._connection(), *args)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: read failed: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = connect(self._path)
            connection.execute("PRAGMA query_only = ON")
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection
