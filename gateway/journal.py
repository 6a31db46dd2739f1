"""The raw journal as its writers see it: the lines an SMDR link journals, quarantines and reads back after a
crash. `Journal` is the interface a link depends on; gateway.store.Store is the implementation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from gateway.events import LinkProgress


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One raw line exactly as a link delivered it."""

    seq: int
    link: str
    received_at: datetime
    raw: bytes
    framing_error: str | None = None  # the transport could not frame it (cut at the length limit, partial)


class Journal(Protocol):
    """What an SMDR link needs of the store: durable raw lines first, quarantine, and what to replay."""

    def append_journal_many_soon(
        self, link: str, lines: Iterable[tuple[datetime, bytes] | tuple[datetime, bytes, str | None]]
    ) -> asyncio.Future[list[int]]:
        """Queue raw lines of one link as one write; resolves to their seqs, in order, once committed."""
        ...

    async def quarantine(
        self, link: str, received_at: datetime, raw: bytes, reason: str, journal_seq: int | None = None
    ) -> None:
        """Keep a line no parser could read, with the reason, for a human to look at."""

    async def link_progress(self) -> dict[str, LinkProgress]:
        """How far each link's journal had been applied at the last commit."""
        ...

    async def journal_lines(self, seqs: Sequence[int]) -> list[JournalEntry]:
        """The journal lines with these seqs (those still there), in seq order."""
        ...

    async def journal_entries(
        self, link: str | None = None, after_seq: int = 0, limit: int = ...
    ) -> list[JournalEntry]:
        """Journal lines with seq > after_seq in seq order, optionally of one link."""
        ...
