"""The checkpoint thread: copies committed WAL pages into the database file, off the writer's path."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import structlog

from gateway.store.connections import close_quietly, connect

log = structlog.get_logger(__name__)

# Committed WAL pages are copied into the database file by a thread of its own, this often: the copy and its
# fsync run in SQLite without the GIL, off the writer's path (on the writer, every few hundred milliseconds of
# a burst one commit took the whole copy).
CHECKPOINT_INTERVAL_S = 0.25


class Checkpointer:
    """A thread that copies committed WAL pages into the database file every CHECKPOINT_INTERVAL_S (PASSIVE:
    it never waits for, or blocks, the writer or a reader). Owned by the writer thread, stopped before it
    closes the last connection, which checkpoints whatever is left."""

    def __init__(self, path: Path, sync: str) -> None:
        self._path = path
        self._sync = sync
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-checkpointer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            connection = connect(self._path)
            # The database file is fsynced before the WAL may be reused, as on the writer.
            connection.execute(f"PRAGMA synchronous = {self._sync.upper()}")
        except sqlite3.Error as exc:
            log.warning("store checkpoints left to the writer", path=str(self._path), error=str(exc))
            return
        failing = False  # one WARNING per spell of failures (a full disk fails every 0.25 s), then DEBUG
        try:
            while not self._stopping.wait(CHECKPOINT_INTERVAL_S):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    if failing:
                        log.debug("store checkpoint failed", path=str(self._path), error=str(exc))
                    else:
                        log.warning("store checkpoint failed", path=str(self._path), error=str(exc))
                        failing = True
                else:
                    failing = False
        finally:
            close_quietly(connection)
