"""Retention's deletions and vacuum steps in SQL (gateway/retention.py decides when; the writer runs them)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from gateway.store.statements import execute_rows, in_list
from gateway.store.writes import DELETE_PARTIES

PRUNE_CALLS, PRUNE_JOURNAL, PRUNE_QUARANTINE, PRUNE_EVENTS = "calls", "journal", "quarantine", "events"
PRUNABLE_TABLES = (PRUNE_CALLS, PRUNE_JOURNAL, PRUNE_QUARANTINE, PRUNE_EVENTS)

# Finished, unprotected calls that ended before the cutoff, oldest first, except those with an on-demand
# recording still to be discarded at the recorder (on-demand retention needs the row).
SELECT_PRUNABLE_CALLS = (
    "SELECT call_id FROM calls WHERE state = 1 AND do_not_delete = 0 AND end_time < ?"
    " AND NOT EXISTS (SELECT 1 FROM recordings AS r WHERE r.call_id = calls.call_id AND r.discardable = 1)"
    " ORDER BY end_time LIMIT ?"
)
DELETE_CALLS = in_list("DELETE FROM calls WHERE call_id IN (")
DELETE_CALL_RECORDINGS = in_list("DELETE FROM recordings WHERE call_id IN (")
SELECT_REPLAY_MARKS = "SELECT link, replay_from_seq, context_seqs FROM link_progress ORDER BY link"
SELECT_OLDEST_JOURNAL_OF_LINK = "SELECT seq, received_at FROM journal WHERE link = ? AND seq < ? ORDER BY seq LIMIT ?"
DELETE_JOURNAL_OF_LINK_UP_TO = "DELETE FROM journal WHERE link = ? AND seq <= ?"
# The same, sparing the lines the link's parser still reads before a replay (page headers): given as a list.
DELETE_JOURNAL_OF_LINK_UP_TO_BUT = "DELETE FROM journal WHERE link = ? AND seq <= ? AND seq NOT IN ({})"
SELECT_OLDEST_QUARANTINE = "SELECT seq, received_at FROM quarantine ORDER BY seq LIMIT ?"
DELETE_QUARANTINE_UP_TO = "DELETE FROM quarantine WHERE seq <= ?"
SELECT_OLDEST_EVENTS = "SELECT seq, at FROM events ORDER BY seq LIMIT ?"
DELETE_EVENTS_UP_TO = "DELETE FROM events WHERE seq <= ?"
# Expired API tokens (expired once now >= expires_at), soonest expiry first along tokens_expires_at.
DELETE_EXPIRED_TOKENS = (
    "DELETE FROM tokens WHERE digest IN (SELECT digest FROM tokens WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)"
)


def prune(cursor: sqlite3.Cursor, table: str, cutoff: float, limit: int, max_variables: int) -> int:
    """Delete up to `limit` rows of `table` older than `cutoff` (epoch s), oldest first; how many went."""
    if table == PRUNE_CALLS:
        call_ids = [(call_id,) for (call_id,) in cursor.execute(SELECT_PRUNABLE_CALLS, (cutoff, limit))]
        for statement in (DELETE_PARTIES, DELETE_CALL_RECORDINGS, DELETE_CALLS):
            execute_rows(cursor, statement, call_ids, max_variables)
        return len(call_ids)
    if table == PRUNE_JOURNAL:
        return _prune_journal(cursor, cutoff, limit)
    if table in (PRUNE_QUARANTINE, PRUNE_EVENTS):
        select, delete = (
            (SELECT_OLDEST_QUARANTINE, DELETE_QUARANTINE_UP_TO)
            if table == PRUNE_QUARANTINE
            else (SELECT_OLDEST_EVENTS, DELETE_EVENTS_UP_TO)
        )
        last = _last_of_old_prefix(cursor.execute(select, (limit,)), cutoff)
        if last is None:
            return 0
        cursor.execute(delete, (last[0],))
        return last[1]
    raise AssertionError(f"unknown table to prune: {table}")


def _prune_journal(cursor: sqlite3.Cursor, cutoff: float, limit: int) -> int:
    # Only links with a replay mark, and only below it: a crash replay reads from there on.
    deleted = 0
    # The lines its parser still reads first (page headers) are kept too, however old.
    for link, replay_from_seq, context_text in cursor.execute(SELECT_REPLAY_MARKS).fetchall():
        if deleted >= limit:
            break
        context = [int(seq) for seq in context_text.split(",") if seq]
        rows = cursor.execute(SELECT_OLDEST_JOURNAL_OF_LINK, (link, replay_from_seq, limit - deleted + len(context)))
        last = _last_of_old_prefix(rows, cutoff, spared=frozenset(context))
        if last is not None:
            if context:
                sql = DELETE_JOURNAL_OF_LINK_UP_TO_BUT.format(", ".join("?" * len(context)))
                cursor.execute(sql, (link, last[0], *context))
            else:
                cursor.execute(DELETE_JOURNAL_OF_LINK_UP_TO, (link, last[0]))
            deleted += last[1]
    return deleted


def _last_of_old_prefix(
    rows: Iterable[tuple[int, float]], cutoff: float, spared: frozenset[int] = frozenset()
) -> tuple[int, int] | None:
    """Of (seq, received_at) rows in seq order: the seq of the last row before the first one not older than
    the cutoff, and how many rows that is (not counting `spared` ones, which are not deleted); None when there
    are none. Rows are read only up to the first young one, so a prune reads no more than it deletes (plus one
    and the spared) even after the clock was set back."""
    count, last_seq = 0, 0
    for seq, received_at in rows:
        if received_at >= cutoff:
            break
        if seq in spared:
            continue
        count, last_seq = count + 1, seq
    return (last_seq, count) if count else None


def prune_tokens(cursor: sqlite3.Cursor, now_epoch: float, limit: int) -> int:
    """Delete up to `limit` tokens expired at `now_epoch`; how many went."""
    return cursor.execute(DELETE_EXPIRED_TOKENS, (now_epoch, limit)).rowcount


def vacuum_step(cursor: sqlite3.Cursor, pages: int) -> int:
    """Release up to `pages` free pages to the OS (incremental auto-vacuum); the free pages left."""
    # One execute() steps a statement once, and a step of incremental_vacuum releases one page: so one
    # statement per page (a few µs each), not incremental_vacuum(N), which would release a single page.
    for _ in range(pages):
        cursor.execute("PRAGMA incremental_vacuum(1)")
    return cursor.execute("PRAGMA freelist_count").fetchone()[0]
