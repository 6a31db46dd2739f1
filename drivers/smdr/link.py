"""One SMDR/CDR link at work: transport → raw journal (durable first) → format parser → call records.

Every line read is committed to the journal before it is parsed; a line that does not parse (or
that the transport could not frame) is quarantined with its reason and counted, and the link
goes on with the next line. Lines are parsed in journal order, so "applied up to seq N" (committed
with the call saves, see `progress`) says exactly which lines a restart must read again (`recover`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import structlog

from drivers.backoff import Backoff
from drivers.smdr import create_parser
from drivers.smdr.base import RecordParser, SmdrParseError
from drivers.transport import FramedLine, LineTransport, create_transport
from gateway.config import LinkConfig
from gateway.events import CallRecord, LinkHealth, LinkProgress, LinkState
from gateway.journal import Journal, JournalEntry
from gateway.model import utc_now

log = structlog.get_logger(__name__)

DEFAULT_ENCODING = "latin-1"  # never fails to decode; what most PBXs send (ASCII, IBM-ASCII, ISO-8859-1)
# Held records (a NEC `NEXT` line may follow) are checked this often; their own wait is the parser's hold_timeout_s.
HOLD_CHECK_INTERVAL_S = 0.5
# Lines parsed per turn of the event loop before other work (API requests, other links) gets a turn: ~5 ms of
# parsing; each turn's call saves go to the store as one write (64 → 128 measured +4 % records/s).
LINES_PER_TURN = 128
# At close, everything still held is released: "the future" for the parser's flush.
RELEASE_ALL = timedelta(days=365)
# At close, lines already journalled are parsed for at most this long (the transport has had its own drain).
CLOSE_PARSE_TIMEOUT_S = 10.0
# The peer of a line read back from the journal (the connection it came on is not kept).
JOURNAL_PEER = "journal"
# While the store refuses writes (a full disk), a delivery's journal write is tried again after this long,
# doubling up to the cap; its connection reads nothing more meanwhile, so the PBX buffers as when the link is down.
STORE_RETRY_FIRST_S = 0.1
STORE_RETRY_MAX_S = 5.0
# Journal lines read per query when replaying after a restart: one read, then its records applied together.
REPLAY_PAGE_LINES = 2000


class LinkWatcher(Protocol):
    """Who watches a link besides the journal: the event feed (state changes, quarantined lines) and live taps
    (every line beside what the parser made of it). Called on the event loop; must not block."""

    def state_changed(self, link: str, state: LinkState) -> None: ...

    def line_quarantined(self, link: str, line: FramedLine, reason: str, seq: int) -> None: ...

    def line_read(self, link: str, line: FramedLine, records: Sequence[CallRecord], reason: str | None) -> None: ...


@dataclass(slots=True)
class _Delivery:
    """One connection's lines on their way: journal write queued, parsing not yet begun."""

    lines: list[FramedLine]
    journalled: asyncio.Future[list[int]]  # their journal seqs, once committed
    started: asyncio.Future[None]  # the parser has taken them (parsing, or given up on a failed journal write)


class LineReader:
    """A link's format parser fed framed lines: the records a line completes, or why it must be quarantined
    (the transport could not frame it, the format refuses it, or the parser failed). Shared by the link and
    `gateway tap`, so that the tap shows exactly what the gateway would make of each line."""

    def __init__(self, config: LinkConfig) -> None:
        self.parser: RecordParser = create_parser(config)
        self.encoding = str(config.options.get("encoding") or DEFAULT_ENCODING)
        self._format = config.format
        self._log = log.bind(link=config.name)

    def read(self, line: FramedLine, seq: int | None = None) -> tuple[list[CallRecord], str | None]:
        """`seq`: the line's journal seq, which the records it begins carry (None: not journalled)."""
        self.parser.begin_line(seq)
        if line.error:
            return [], line.error
        try:
            return self.parser.feed(line.raw.decode(self.encoding, errors="replace"), line.received_at), None
        except SmdrParseError as error:
            return [], error.reason
        except Exception as error:  # a parser bug must not take the link down; the line is kept
            self._log.exception("parser failed", format=self._format)
            return [], f"parser failure: {type(error).__name__}: {error}"


class SmdrLink:
    """A configured link: owns its transport and parser, journals every line it reads (`journal`), reports
    health, hands records to `submit`."""

    def __init__(
        self,
        config: LinkConfig,
        journal: Journal,
        submit: Callable[[CallRecord], object],
        health: LinkHealth,
        *,
        transport_factory: Callable[..., LineTransport] = create_transport,
        submit_replayed: Callable[[Sequence[CallRecord]], Awaitable[object]] | None = None,
        note_progress: Callable[[], None] | None = None,
        watcher: LinkWatcher | None = None,
    ) -> None:
        self.config = config
        self._watcher = watcher
        self._journal = journal  # gateway.store.Store in the gateway; any Journal will do
        self._submit = submit
        self._submit_replayed = submit_replayed
        self._note_progress = note_progress
        # The newest journal line parsed: every line of this link up to it has been parsed (journal order).
        self._parsed_seq = 0
        self._reported_seq = 0  # the newest one `progress()` has reported
        # Pauses between write attempts while the store refuses writes; None while it takes them.
        self._store_retry: Backoff | None = None
        self.health = health
        self._transport_factory = transport_factory
        self._reader = LineReader(config)
        self._parser: RecordParser = self._reader.parser
        self._transport: LineTransport | None = None
        self._has_been_up = False  # a later UP is a reconnect
        self._hold_task: asyncio.Task[None] | None = None
        # Journalled or being journalled, not yet parsed, in arrival order = journal order. Connections still
        # take turns: each has at most one delivery waiting (it reads on when its parsing begins).
        self._backlog: collections.deque[_Delivery] = collections.deque()
        self._backlog_changed = asyncio.Event()
        self._parsed_all = asyncio.Event()
        self._parse_task: asyncio.Task[None] | None = None
        self._log = log.bind(link=config.name)

    async def open(self) -> None:
        self._transport = self._transport_factory(self.config, self._deliver, on_state=self._on_state)
        await self._transport.open()
        # After the transport opened (lines delivered meanwhile wait in the backlog): a failed open leaves no task.
        self._parse_task = asyncio.create_task(self._parse_forever(), name=f"smdr-parse-{self.config.name}")
        if self._parser.hold_timeout_s > 0:
            self._hold_task = asyncio.create_task(self._release_held_forever(), name=f"smdr-hold-{self.config.name}")

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()  # delivers what was still framed
            self._transport = None
        if self._parse_task is not None:
            try:
                await asyncio.wait_for(self._parsed_all.wait(), CLOSE_PARSE_TIMEOUT_S)
            except TimeoutError:
                self._log.error("journalled lines not parsed before close", deliveries=len(self._backlog))
            self._parse_task.cancel()
            await asyncio.gather(self._parse_task, return_exceptions=True)
            self._parse_task = None
        if self._hold_task is not None:
            self._hold_task.cancel()
            await asyncio.gather(self._hold_task, return_exceptions=True)
            self._hold_task = None
        self._emit(self._parser.flush(utc_now() + RELEASE_ALL))

    def _on_state(self, state: LinkState) -> None:
        if state is LinkState.UP and self.health.state is not LinkState.UP:
            self._parser.reset()
            if self._has_been_up:
                self.health.reconnects += 1
            self._has_been_up = True
        changed = state is not self.health.state
        self.health.state = state
        if changed and self._watcher is not None:
            self._watcher.state_changed(self.config.name, state)

    async def _deliver(self, lines: list[FramedLine]) -> None:
        """Queue a connection's lines for the journal now and for parsing once committed; returns when their
        parsing begins. The connection's next lines are then journalled by the writer thread while the event
        loop parses these, instead of the two taking turns. (Letting a second delivery wait as well measured
        ~4 % more records/s but twice the arrival → API delay at saturation: bigger commits.)"""
        delivery = _Delivery(lines, self._append_to_journal(lines), asyncio.get_running_loop().create_future())
        self._backlog.append(delivery)
        self._parsed_all.clear()
        self._backlog_changed.set()
        await asyncio.shield(delivery.started)  # a delivery cancelled at close is still parsed: it is journalled

    def _append_to_journal(self, lines: list[FramedLine]) -> asyncio.Future[list[int]]:
        return self._journal.append_journal_many_soon(
            self.config.name, [(line.received_at, line.raw, line.error) for line in lines]
        )

    def _next_delivery(self) -> _Delivery | None:
        """The oldest delivery: parsing in journal order is what makes "applied up to seq N" exact. A PBX
        flushing thousands of buffered records on one connection still does not hold back another's live
        records: it has one delivery queued at a time, so the connections' deliveries alternate."""
        return self._backlog.popleft() if self._backlog else None

    # ---- progress and recovery

    def progress(self) -> LinkProgress | None:
        """How far this link's journal is applied (None: no line parsed yet). Asked when the call tracker
        snapshots a batch: every record of the lines up to `applied_seq` has been handed in."""
        if self._parsed_seq == 0:
            return None
        held_since = self._parser.held_since_seq()
        replay_from = self._parsed_seq + 1 if held_since is None else min(held_since, self._parsed_seq + 1)
        self._reported_seq = self._parsed_seq
        return LinkProgress(self.config.name, self._parsed_seq, replay_from, tuple(self._parser.context_seqs))

    async def recover(self) -> int:
        """Before the link opens: read again what the journal holds past the last committed progress, so that
        nothing journalled before a crash is lost. The parser first re-reads the lines it still needs (page
        headers; records it held, waiting for a continuation) without handing anything on, then the lines
        never applied are parsed and handed to `submit_replayed`. Returns the number of lines replayed."""
        name = self.config.name
        progress = (await self._journal.link_progress()).get(name) or LinkProgress(name, 0, 1)
        self._parser.resume()
        for entry in await self._journal.journal_lines(progress.context_seqs):
            if entry.link == name and entry.seq < progress.replay_from_seq:
                self._reader.read(self._framed(entry), entry.seq)
        after_seq = min(progress.replay_from_seq - 1, progress.applied_seq)
        replayed = 0
        while True:
            entries = await self._journal.journal_entries(name, after_seq=after_seq, limit=REPLAY_PAGE_LINES)
            if not entries:
                break
            records: list[CallRecord] = []
            quarantined: list[tuple[FramedLine, str, int]] = []
            for entry in entries:
                line = self._framed(entry)
                found, reason = self._reader.read(line, entry.seq)
                if entry.seq <= progress.applied_seq:
                    continue  # applied before the crash: read only to rebuild what the parser held
                replayed += 1
                if reason is not None:
                    quarantined.append((line, reason, entry.seq))
                else:
                    records.extend(found)
            self.health.replayed += len(records)
            if self._submit_replayed is not None:
                await self._submit_replayed(records)
            self._parsed_seq = max(self._parsed_seq, entries[-1].seq, progress.applied_seq)
            if quarantined:
                await self._quarantine_all(quarantined)
            after_seq = entries[-1].seq
        self._parsed_seq = max(self._parsed_seq, progress.applied_seq)
        if replayed:
            self._log.info("journal replayed", lines=replayed, from_seq=progress.applied_seq + 1, to_seq=after_seq)
        self._report_progress()
        return replayed

    @staticmethod
    def _framed(entry: JournalEntry) -> FramedLine:
        return FramedLine(entry.raw, entry.received_at, JOURNAL_PEER, entry.framing_error)

    def _report_progress(self) -> None:
        if self._note_progress is not None and self._parsed_seq != self._reported_seq:
            self._note_progress()

    async def _parse_forever(self) -> None:
        while True:
            delivery = self._next_delivery()
            if delivery is None:
                self._backlog_changed.clear()
                self._parsed_all.set()
                await self._backlog_changed.wait()
                continue
            try:
                seqs = await delivery.journalled  # journal first: nothing is parsed before it is on disk
            except Exception as error:
                # Held, not lost: written again after a pause, behind the deliveries queued meanwhile (their
                # seqs are lower, and lines are parsed in journal order). Its connection stays paused.
                await asyncio.sleep(self._store_failing(error))
                delivery.journalled = self._append_to_journal(delivery.lines)
                self._backlog.append(delivery)
                continue
            self._store_ok()
            delivery.started.set_result(None)
            try:
                await self._parse_delivery(delivery.lines, seqs)
            except Exception:  # a bug must not stop the link: the lines stay journalled, parsing goes on
                self._log.exception("delivery not fully parsed", lines=len(delivery.lines), first_seq=seqs[0])

    async def _parse_delivery(self, lines: list[FramedLine], seqs: list[int]) -> None:
        quarantined = []
        for index, (line, seq) in enumerate(zip(lines, seqs)):
            if index and not index % LINES_PER_TURN:
                await asyncio.sleep(0)  # a burst must not hold the API's answers back
            reason = self._parse(line, seq)
            if reason is not None:
                quarantined.append((line, reason, seq))
        self._report_progress()
        if quarantined:
            self.health.errors += len(quarantined)
            await self._quarantine_all(quarantined)
            if self._watcher is not None:
                for line, reason, seq in quarantined:
                    self._watcher.line_quarantined(self.config.name, line, reason, seq)

    async def _quarantine_all(self, rows: list[tuple[FramedLine, str, int]]) -> None:
        """Write quarantine rows, again after a pause while the store refuses them (they are kept once)."""
        while rows:
            outcomes = await asyncio.gather(
                *(
                    self._journal.quarantine(self.config.name, line.received_at, line.raw, reason, seq)
                    for line, reason, seq in rows
                ),
                return_exceptions=True,
            )
            failed = [row for row, outcome in zip(rows, outcomes) if isinstance(outcome, BaseException)]
            if not failed:
                self._store_ok()
                return
            error = next(outcome for outcome in outcomes if isinstance(outcome, BaseException))
            await asyncio.sleep(self._store_failing(error))
            rows = failed

    def _store_failing(self, error: BaseException) -> float:
        """The pause before the next attempt (one WARNING per spell of failures)."""
        if self._store_retry is None:
            self._log.warning("store refuses writes; holding lines", error=str(error))
            self._store_retry = Backoff(STORE_RETRY_FIRST_S, STORE_RETRY_MAX_S)
        return self._store_retry.next_delay()

    def _store_ok(self) -> None:
        if self._store_retry is not None:
            self._log.info("store takes writes again")
            self._store_retry = None

    def _parse(self, line: FramedLine, seq: int) -> str | None:
        """Parse one journalled line and hand on its records; the reason when it must be quarantined."""
        records, reason = self._reader.read(line, seq)
        self._parsed_seq = seq  # before the records go: a batch they cause reports this line as applied
        if self._watcher is not None:  # keeps the last few for the status page: must stay cheap
            self._watcher.line_read(self.config.name, line, records, reason)
        if reason is not None:
            self._log.info("line quarantined", reason=reason)
            self._log.debug("quarantined line", raw=line.raw)
            return reason
        self._emit(records)
        return None

    def _emit(self, records: list[CallRecord]) -> None:
        for record in records:
            self.health.records += 1
            self.health.last_record_at = record.received_at
            try:
                self._submit(record)
            except Exception:  # the tracker must not take the link down either
                self._log.exception("record could not be applied", platform_call_id=record.platform_call_id)

    async def _release_held_forever(self) -> None:
        while True:
            await asyncio.sleep(HOLD_CHECK_INTERVAL_S)
            self._emit(self._parser.flush(utc_now()))
