"""The read queries, and the functions a reader thread runs them with (rows → model objects).

The SQL is module constants so the tests can EXPLAIN exactly what runs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from gateway.model import Call, Recording
from gateway.store.rows import CALL_COLUMNS, RECORDING_COLUMNS, call_from_row, recording_from_row

SELECT_CALL = f"SELECT {CALL_COLUMNS} FROM calls WHERE call_id = ?"
SELECT_CALL_PARTIES = "SELECT call_id, number FROM call_parties WHERE call_id = ?"
SELECT_CALL_RECORDINGS = f"SELECT {RECORDING_COLUMNS} FROM recordings WHERE call_id = ? ORDER BY start_time, seq, rowid"
SELECT_ONGOING_CALLS = f"SELECT {CALL_COLUMNS} FROM calls WHERE state = 0"
SELECT_ONGOING_PARTIES = (
    "SELECT p.call_id, p.number FROM calls AS c CROSS JOIN call_parties AS p ON p.call_id = c.call_id WHERE c.state = 0"
)
SELECT_ONGOING_RECORDINGS = (
    f"SELECT {', '.join('r.' + name.strip() for name in RECORDING_COLUMNS.split(','))}"
    " FROM calls AS c CROSS JOIN recordings AS r ON r.call_id = c.call_id WHERE c.state = 0"
    " ORDER BY r.call_id, r.start_time, r.seq, r.rowid"
)
SELECT_DISCARDABLE = "SELECT call_id FROM recordings WHERE discardable = 1 AND end_time < ? ORDER BY end_time LIMIT ?"
SELECT_BY_PLATFORM_CALL_ID = "SELECT call_id FROM calls WHERE platform_call_id = ? LIMIT ?"
SELECT_BY_NATIVE_ID = "SELECT call_id FROM calls WHERE native_id = ? LIMIT ?"
# CROSS JOIN pins the plan: walk the party index newest end first, check each call's state by primary key.
# `end_time <= ?` (now): a call ending in the future (a PBX clock ahead of ours, a sped-up demo) is nobody's last.
SELECT_LAST_ENDED = (
    "SELECT p.end_time, p.call_id FROM call_parties AS p CROSS JOIN calls AS c ON c.call_id = p.call_id"
    " WHERE p.number = ? AND p.end_time <= ? AND c.state = 1 ORDER BY p.end_time DESC LIMIT ?"
)
SELECT_OPEN_CALL_IDS = (
    "SELECT call_id FROM calls WHERE open_group IS NOT NULL OR open_leg_key IS NOT NULL"
    " UNION SELECT call_id FROM calls WHERE awaiting_record = 1 AND start_time >= ?"
)
SELECT_LINK_PROGRESS = "SELECT link, applied_seq, replay_from_seq, context_seqs FROM link_progress"
SELECT_EXISTING_CALL_IDS = "SELECT call_id FROM calls WHERE call_id IN ({})"
SELECT_JOURNAL_SEQS = "SELECT seq, link, received_at, raw, framing_error FROM journal WHERE seq IN ({})"
COUNT_CALLS = "SELECT count(*) FROM calls"
QUARANTINE_COUNTS = "SELECT link, count(*) FROM quarantine GROUP BY link"
SELECT_JOURNAL = "SELECT seq, link, received_at, raw, framing_error FROM journal WHERE seq > ? ORDER BY seq LIMIT ?"
SELECT_JOURNAL_BY_LINK = (
    "SELECT seq, link, received_at, raw, framing_error FROM journal WHERE link = ? AND seq > ? ORDER BY seq LIMIT ?"
)
SELECT_EVENTS_AFTER = "SELECT seq, at, name, extension, parties, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
SELECT_LAST_EVENT_SEQ = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
SELECT_QUARANTINE_PAGE = (
    "SELECT seq, journal_seq, link, received_at, raw, reason FROM quarantine WHERE link = ? AND seq < ?"
    " ORDER BY seq DESC LIMIT ?"
)
SELECT_TOKEN = "SELECT digest, key_digest, user, expires_at FROM tokens WHERE digest = ?"
SELECT_SPACE = "SELECT * FROM pragma_page_count(), pragma_freelist_count(), pragma_auto_vacuum(), pragma_page_size()"

# Each function below runs in a reader thread. Autocommit mode: a lone SELECT sees every commit made before it
# started; several SELECTs that must agree share one read transaction.


def read_rows(connection: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return connection.execute(sql, params).fetchall()


def read_ids(connection: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[str]:
    return [call_id for (call_id,) in connection.execute(sql, params).fetchall()]


def read_call(connection: sqlite3.Connection, call_id: str) -> Call | None:
    connection.execute("BEGIN")
    try:
        return _read_call_in_transaction(connection, call_id)
    finally:
        connection.execute("COMMIT")


def _read_call_in_transaction(connection: sqlite3.Connection, call_id: str) -> Call | None:
    row = connection.execute(SELECT_CALL, (call_id,)).fetchone()
    if row is None:
        return None
    parties = [number for _, number in connection.execute(SELECT_CALL_PARTIES, (call_id,)).fetchall()]
    recordings = [recording_from_row(r) for r in connection.execute(SELECT_CALL_RECORDINGS, (call_id,)).fetchall()]
    return call_from_row(row, parties, recordings)


def read_calls_by(connection: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Call]:
    """The calls an id query finds, read in full in the same read transaction (one trip to the thread)."""
    connection.execute("BEGIN")
    try:
        call_ids = [row[0] for row in connection.execute(sql, params).fetchall()]
        calls = [_read_call_in_transaction(connection, call_id) for call_id in call_ids]
    finally:
        connection.execute("COMMIT")
    return [call for call in calls if call is not None]


def read_ongoing_calls(connection: sqlite3.Connection) -> list[Call]:
    connection.execute("BEGIN")
    try:
        rows = connection.execute(SELECT_ONGOING_CALLS).fetchall()
        party_rows = connection.execute(SELECT_ONGOING_PARTIES).fetchall()
        recording_rows = connection.execute(SELECT_ONGOING_RECORDINGS).fetchall()
    finally:
        connection.execute("COMMIT")
    parties_by_call: dict[str, list[str]] = {}
    for call_id, number in party_rows:
        parties_by_call.setdefault(call_id, []).append(number)
    recordings_by_call: dict[str, list[Recording]] = {}
    for recording_row in recording_rows:
        recordings_by_call.setdefault(recording_row[1], []).append(recording_from_row(recording_row))
    return [call_from_row(row, parties_by_call.get(row[0], ()), recordings_by_call.get(row[0], [])) for row in rows]
