"""Statements over many rows at once, and the SQLite variable limit that sizes them."""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Sequence
from typing import Any, NamedTuple

# Rows per statement, largest first: a batch of n rows takes a handful of statements, and only these few
# shapes are ever prepared (each is cached by the connection). Capped by SQLite's variable limit per statement.
ROWS_PER_STATEMENT = (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)
SQLITE_MIN_VARIABLE_LIMIT = 999  # SQLite before 3.32 (newer ones allow 32,766)


class RowsStatement(NamedTuple):
    """A statement over many rows at once: `head`, then `rows` groups of `width` placeholders, then `tail`.

    The writer sends a batch's rows in a few such statements instead of executemany: SQLite then runs
    without the GIL once per statement, where executemany gives the GIL up and takes it back for every
    row — and under load each take waits for the event loop thread to yield it (up to the interpreter's
    switch interval), which made the writer, and the journal commits the links wait for, the bottleneck.
    """

    head: str
    width: int  # placeholders per row (1 for an IN list)
    tail: str = ""
    row_open: str = "("
    row_close: str = ")"

    def sql(self, rows: int) -> str:
        return _rows_sql(self, rows)


@functools.lru_cache(maxsize=128)
def _rows_sql(statement: RowsStatement, rows: int) -> str:
    row = statement.row_open + ", ".join("?" * statement.width) + statement.row_close
    return f"{statement.head}{', '.join([row] * rows)}{statement.tail}"


def upsert(table: str, columns: str, key: str) -> RowsStatement:
    """INSERT … ON CONFLICT(key) DO UPDATE of every other column."""
    names = [name.strip() for name in columns.split(",")]
    updates = ", ".join(f"{name} = excluded.{name}" for name in names if name != key)
    tail = f" ON CONFLICT({key}) DO UPDATE SET {updates}"
    return RowsStatement(f"INSERT INTO {table} ({columns}) VALUES ", len(names), tail)


def in_list(head: str) -> RowsStatement:
    """`head` followed by an IN list of one value per row, e.g. DELETE … WHERE call_id IN (?, ?, …)."""
    return RowsStatement(head, 1, ")", row_open="", row_close="")


def execute_rows(
    cursor: sqlite3.Cursor, statement: RowsStatement, rows: Sequence[Sequence[Any]], max_variables: int
) -> None:
    """Run `statement` over all `rows`, in as few statements as the variable limit allows."""
    done, total = 0, len(rows)
    while done < total:
        left = total - done
        size = next(size for size in ROWS_PER_STATEMENT if size <= left and size * statement.width <= max_variables)
        cursor.execute(statement.sql(size), list(itertools.chain.from_iterable(rows[done : done + size])))
        done += size
