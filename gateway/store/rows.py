"""Row mapping: the model's dataclasses flattened into table rows, and rows read back into them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from gateway.events import LinkProgress
from gateway.feed import FeedEvent, encode_json
from gateway.journal import JournalEntry
from gateway.model import Call, CallState, Direction, Recording, RecordingMode

# The column order of every call and recording row, written and read.
CALL_COLUMNS = (
    "call_id, state, direction, extension, calling, called, platform_call_id, native_id, recorder, channel, link,"
    " account, trunk, start_time, connect_time, end_time, ring_s, duration_s, recording_mode, kept, do_not_delete,"
    " open_group, open_leg_key, open_leg_direction, awaiting_record"
)
RECORDING_COLUMNS = (
    "recording_id, call_id, recorder, channel, native_id, start_time, end_time, manual, deleted, seq, discardable"
)
AUTO_VACUUM_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A raw line no parser could make sense of, kept for a human to look at."""

    seq: int
    journal_seq: int | None
    link: str
    received_at: datetime
    raw: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class StoreSpace:
    """How big the database file is, and how much of it is free pages."""

    page_count: int
    freelist_count: int
    page_size: int
    incremental_vacuum: bool  # auto_vacuum = INCREMENTAL: free pages can be given back to the OS

    @property
    def file_bytes(self) -> int:
        return self.page_count * self.page_size


def epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        # A naive datetime is a bug upstream; UTC is the only reading that never shifts stored times.
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _datetime(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def raw_bytes(raw: bytes) -> bytes:
    # A bytearray or memoryview could change under us after the call returns; bytes cannot, so no copy.
    return raw if type(raw) is bytes else bytes(raw)


# ---- snapshots: a Call flattened into rows on the loop thread, so later mutations cannot leak in

CallRow = tuple[Any, ...]
PartyRow = tuple[str, str, float | None]
RecordingRow = tuple[Any, ...]


class CallSnapshot(NamedTuple):
    # Tuples all the way down: once the GC sees they hold only atoms it stops tracking them, which matters
    # when a burst queues a hundred thousand of these.
    call_id: str
    call_row: CallRow
    party_rows: tuple[PartyRow, ...]
    recording_rows: tuple[RecordingRow, ...]


def snapshot(call: Call) -> CallSnapshot:
    end_time = epoch(call.end_time)
    call_row = (
        call.call_id,
        int(call.state),
        call.direction.value,
        call.extension,
        call.calling,
        call.called,
        call.platform_call_id,
        call.native_id,
        call.recorder,
        call.channel,
        call.link,
        call.account,
        call.trunk,
        epoch(call.start_time),
        epoch(call.connect_time),
        end_time,
        call.ring_s,
        call.duration_s,
        None if call.recording_mode is None else call.recording_mode.value,
        int(call.kept),
        int(call.do_not_delete),
        call.open_group,
        call.open_leg_key,
        None if call.open_leg_direction is None else call.open_leg_direction.value,
        int(call.awaiting_record),
    )
    party_rows = tuple([(call.call_id, number, end_time) for number in call.parties])
    discardable_call = call.recording_mode is RecordingMode.ON_DEMAND and not call.kept and not call.do_not_delete
    # Stored under the owning call's id: the list a recording sits in is what get_call reads it back by.
    recording_rows = tuple(
        [
            (
                recording.recording_id,
                call.call_id,
                recording.recorder,
                recording.channel,
                recording.native_id,
                epoch(recording.start_time),
                epoch(recording.end_time),
                int(recording.manual),
                int(recording.deleted),
                position,
                int(discardable_call and not recording.deleted),
            )
            for position, recording in enumerate(call.recordings)
        ]
    )
    return CallSnapshot(call.call_id, call_row, party_rows, recording_rows)


def call_from_row(row: Sequence[Any], parties: Iterable[str], recordings: list[Recording]) -> Call:
    (
        call_id, state, direction, extension, calling, called, platform_call_id, native_id, recorder, channel,
        link, account, trunk, start_time, connect_time, end_time, ring_s, duration_s, recording_mode, kept,
        do_not_delete, open_group, open_leg_key, open_leg_direction, awaiting_record,
    ) = row  # fmt: skip
    own_numbers = {extension, calling, called}
    return Call(
        call_id=call_id,
        start_time=_datetime(start_time),  # type: ignore[arg-type]  # NOT NULL column
        state=CallState(state),
        direction=Direction(direction),
        extension=extension,
        calling=calling,
        called=called,
        # The table holds Call.parties; the "other" ones are whatever the call's own numbers do not explain.
        other_parties={number for number in parties if number not in own_numbers},
        platform_call_id=platform_call_id,
        native_id=native_id,
        recorder=recorder,
        channel=channel,
        link=link,
        account=account,
        trunk=trunk,
        connect_time=_datetime(connect_time),
        end_time=_datetime(end_time),
        ring_s=ring_s,
        duration_s=duration_s,
        recording_mode=None if recording_mode is None else RecordingMode(recording_mode),
        kept=bool(kept),
        do_not_delete=bool(do_not_delete),
        recordings=recordings,
        open_group=open_group,
        open_leg_key=open_leg_key,
        open_leg_direction=None if open_leg_direction is None else Direction(open_leg_direction),
        awaiting_record=bool(awaiting_record),
    )


def recording_from_row(row: Sequence[Any]) -> Recording:
    recording_id, call_id, recorder, channel, native_id, start_time, end_time, manual, deleted, _, _ = row
    return Recording(
        recording_id=recording_id,
        call_id=call_id,
        start_time=_datetime(start_time),  # type: ignore[arg-type]  # NOT NULL column
        recorder=recorder,
        channel=channel,
        native_id=native_id,
        end_time=_datetime(end_time),
        manual=bool(manual),
        deleted=bool(deleted),
    )


# ---- the journal, the quarantine, link progress and the event feed


def journal_entries(rows: Iterable[Sequence[Any]]) -> list[JournalEntry]:
    return [
        JournalEntry(seq, link, datetime.fromtimestamp(at, UTC), bytes(raw), framing_error)
        for seq, link, at, raw, framing_error in rows
    ]


def quarantine_entries(rows: Iterable[Sequence[Any]]) -> list[QuarantineEntry]:
    return [
        QuarantineEntry(seq, journal_seq, link, datetime.fromtimestamp(at, UTC), bytes(raw), reason)
        for seq, journal_seq, link, at, raw, reason in rows
    ]


def progress_row(item: LinkProgress) -> tuple[str, int, int, str]:
    return (item.link, item.applied_seq, item.replay_from_seq, ",".join(map(str, item.context_seqs)))


def link_progress_from_rows(rows: Iterable[Sequence[Any]]) -> dict[str, LinkProgress]:
    return {
        link: LinkProgress(link, applied, replay_from, tuple(int(seq) for seq in context.split(",") if seq))
        for link, applied, replay_from, context in rows
    }


def event_row(event: FeedEvent) -> tuple[Any, ...]:
    return (
        event.seq,
        epoch(event.at),
        event.name,
        event.extension,
        encode_json(sorted(event.parties)),
        event.data_json(),
    )


def feed_events(rows: Iterable[Sequence[Any]]) -> list[FeedEvent]:
    return [
        FeedEvent(
            seq,
            name,
            datetime.fromtimestamp(at, UTC),
            orjson.loads(data),
            extension,
            frozenset(orjson.loads(parties)),
            _json=[data],  # the stored text is the event's JSON: a resumed stream sends it as it is
        )
        for seq, at, name, extension, parties, data in rows
    ]


def store_space(row: Sequence[Any]) -> StoreSpace:
    """From a row of SELECT_SPACE: page_count, freelist_count, auto_vacuum, page_size."""
    page_count, freelist_count, auto_vacuum, page_size = row
    return StoreSpace(page_count, freelist_count, page_size, auto_vacuum == AUTO_VACUUM_INCREMENTAL)
