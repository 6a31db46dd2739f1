"""What each write does in SQL: call saves, link progress, journal lines, quarantine, feed events and API tokens.

These run on the writer thread, inside the transaction of its current batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from gateway.store.rows import CALL_COLUMNS, RECORDING_COLUMNS, CallSnapshot
from gateway.store.statements import RowsStatement, execute_rows, in_list, upsert

UPSERT_CALL = upsert("calls", CALL_COLUMNS, "call_id")
UPSERT_RECORDING = upsert("recordings", RECORDING_COLUMNS, "recording_id")
DELETE_PARTIES = in_list("DELETE FROM call_parties WHERE call_id IN (")
INSERT_PARTY = RowsStatement("INSERT INTO call_parties (call_id, number, end_time) VALUES ", 3)
INSERT_EVENTS = RowsStatement("INSERT OR REPLACE INTO events (seq, at, name, extension, parties, data) VALUES ", 6)
INSERT_JOURNAL = RowsStatement("INSERT INTO journal (link, received_at, raw, framing_error) VALUES ", 4)
UPSERT_PROGRESS = upsert("link_progress", "link, applied_seq, replay_from_seq, context_seqs", "link")
# OR IGNORE: a line quarantined before a crash and replayed after it is kept once (unique journal_seq).
INSERT_QUARANTINE = (
    "INSERT OR IGNORE INTO quarantine (journal_seq, link, received_at, raw, reason) VALUES (?, ?, ?, ?, ?)"
)
# A plain INSERT: two tokens with one digest (256 random bits each) would be a bug worth failing on.
INSERT_TOKEN = "INSERT INTO tokens (digest, key_digest, user, expires_at) VALUES (?, ?, ?, ?)"


def save_snapshots(cursor: sqlite3.Cursor, snapshots: list[CallSnapshot], max_variables: int) -> None:
    # A call's parties are replaced: deleted before the upserts, so that a call saved twice in one
    # batch keeps the rows of its last snapshot only.
    execute_rows(cursor, DELETE_PARTIES, [(snapshot.call_id,) for snapshot in snapshots], max_variables)
    execute_rows(cursor, UPSERT_CALL, [snapshot.call_row for snapshot in snapshots], max_variables)
    latest = {snapshot.call_id: snapshot for snapshot in snapshots}
    party_rows = [row for snapshot in latest.values() for row in snapshot.party_rows]
    execute_rows(cursor, INSERT_PARTY, party_rows, max_variables)
    recording_rows = [row for snapshot in snapshots for row in snapshot.recording_rows]
    if recording_rows:
        execute_rows(cursor, UPSERT_RECORDING, recording_rows, max_variables)


def save_progress(cursor: sqlite3.Cursor, rows: Sequence[tuple[Any, ...]], max_variables: int) -> None:
    latest = {row[0]: row for row in rows}  # queued in order: a link's last row is its newest progress
    if latest:
        execute_rows(cursor, UPSERT_PROGRESS, list(latest.values()), max_variables)


def append_journal_rows(cursor: sqlite3.Cursor, rows: list[tuple[Any, ...]], max_variables: int) -> int:
    """Inserts the rows; the seq of the first. The writer thread is the only writer, inside one transaction:
    the seqs given are consecutive."""
    execute_rows(cursor, INSERT_JOURNAL, rows, max_variables)
    last_seq = cursor.lastrowid
    assert last_seq is not None  # rows were inserted just now
    return last_seq - len(rows) + 1


def insert_quarantine(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> None:
    cursor.execute(INSERT_QUARANTINE, row)


def insert_events(cursor: sqlite3.Cursor, rows: list[tuple[Any, ...]], max_variables: int) -> None:
    execute_rows(cursor, INSERT_EVENTS, rows, max_variables)


def insert_token(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> None:
    cursor.execute(INSERT_TOKEN, row)
