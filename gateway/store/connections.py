"""Opening and closing the SQLite connections every store thread uses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

# The writer is the only writer, so a lock is only ever held by another process poking at the file
# (sqlite3 CLI, backup); wait that long rather than fail a whole batch.
BUSY_TIMEOUT_MS = 5000


def connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so sqlite3 never opens or commits behind our back.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return connection


def rollback(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back (e.g. after an I/O error)


def close_quietly(connection: sqlite3.Connection) -> None:
    try:
        connection.close()
    except sqlite3.Error as exc:
        log.warning("store connection close failed", error=str(exc))
