"""SmdrLink.recover on a real store: what a restart reads again from the journal, and what it leaves alone."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from drivers.smdr.link import SmdrLink
from drivers.transport import FramedLine
from gateway.config import LinkConfig
from gateway.events import CallRecord, LinkHealth, LinkProgress
from gateway.store import Store

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

IPO_1 = b"2026/11/23 10:00:01,00:01:00,5,01701234567,I,2001,2001,,0,1000000001,0,E2001,Agent,T9001,LINE 1.1,0,0"
IPO_2 = b"2026/11/23 10:00:02,00:01:00,5,01701234568,I,2002,2002,,0,1000000002,0,E2002,Agent,T9001,LINE 1.1,0,0"
IPO_3 = b"2026/11/23 10:00:03,00:01:00,5,01701234569,I,2003,2003,,0,1000000003,0,E2003,Agent,T9001,LINE 1.1,0,0"
NEC_POT = b"POT 10:52 12/09 002 00:00:10 2001 2142623801 08754"
NEC_NEXT = b"NEXT NECinfrontia Corp."
PANASONIC_TA_HEADER = b"Date Time Ext. CO Dial number Duration Code"
PANASONIC_TA_1 = b"12/31/98 12:52PM 103 05 12345678901234567890123456789012 00:00'16 ...."
PANASONIC_TA_2 = b"12/31/98 12:58PM 104 05 0612345678 00:01'16 ...."


class Collected:
    """The link's two ways of handing records on, remembered."""

    def __init__(self) -> None:
        self.live: list[CallRecord] = []
        self.replayed: list[CallRecord] = []

    def submit(self, record: CallRecord) -> None:
        self.live.append(record)

    async def submit_replayed(self, records: Sequence[CallRecord]) -> None:
        self.replayed.extend(records)


def make_link(store: Store, fmt: str, collected: Collected, name: str = "pbx") -> SmdrLink:
    config = LinkConfig(name, fmt, "listen://127.0.0.1:1", timezone="UTC")
    return SmdrLink(config, store, collected.submit, LinkHealth(name), submit_replayed=collected.submit_replayed)


async def journal(store: Store, link: str, *lines: bytes) -> list[int]:
    return await store.append_journal_many_soon(
        link, [(T0 + timedelta(seconds=n), line) for n, line in enumerate(lines)]
    )


async def commit_progress(store: Store, progress: LinkProgress) -> None:
    await store.save_calls_soon([], [progress])


async def test_every_line_of_a_link_without_progress_is_replayed(store: Store) -> None:
    seqs = await journal(store, "pbx", IPO_1, IPO_2)
    await journal(store, "other", IPO_3)  # another link's line is not this link's business
    collected = Collected()
    link = make_link(store, "avaya-ipo", collected)

    assert await link.recover() == 2

    assert [record.platform_call_id for record in collected.replayed] == ["1000000001", "1000000002"]
    assert [record.origin_seq for record in collected.replayed] == seqs
    assert link.health.replayed == 2 and link.health.records == 0  # records counts what the link itself reads
    assert collected.live == []


async def test_only_lines_after_the_committed_progress_are_replayed(store: Store) -> None:
    seqs = await journal(store, "pbx", IPO_1, IPO_2, IPO_3)
    await commit_progress(store, LinkProgress("pbx", seqs[1], seqs[1] + 1))
    collected = Collected()
    link = make_link(store, "avaya-ipo", collected)

    assert await link.recover() == 1

    assert [record.platform_call_id for record in collected.replayed] == ["1000000003"]
    # The progress the link now reports covers the replayed line.
    assert link.progress() == LinkProgress("pbx", seqs[2], seqs[2] + 1, ())


async def test_a_record_held_at_the_crash_is_rebuilt_and_completed_by_the_line_after_it(store: Store) -> None:
    pot, _ = await journal(store, "nec", NEC_POT, NEC_NEXT)
    # The POT line was parsed (and held, waiting for a NEXT line) before the crash; NEXT was journalled only.
    await commit_progress(store, LinkProgress("nec", pot, pot))
    collected = Collected()
    link = make_link(store, "nec-sv", collected, name="nec")

    assert await link.recover() == 1

    (record,) = collected.replayed
    assert record.extra["caller_name"] == "NECinfrontia Corp."
    assert record.origin_seq == pot  # the record began on the POT line: the callID it makes is that line's


async def test_a_page_header_read_before_the_crash_is_read_again_before_the_replay(store: Store) -> None:
    header, first, second = await journal(store, "pana", PANASONIC_TA_HEADER, PANASONIC_TA_1, PANASONIC_TA_2)
    await commit_progress(store, LinkProgress("pana", first, first + 1, (header,)))
    collected = Collected()
    link = make_link(store, "panasonic", collected, name="pana")

    await link.recover()

    # Read as a parser that never stopped reads it: with the header's meaning of the printed time.
    uninterrupted = Collected()
    reference = make_link(store, "panasonic", uninterrupted, name="pana")
    expected = []
    lines = ((header, PANASONIC_TA_HEADER), (first, PANASONIC_TA_1), (second, PANASONIC_TA_2))
    for n, (seq, line) in enumerate(lines):
        records, _ = reference._reader.read(FramedLine(line, T0 + timedelta(seconds=n), "test"), seq)
        expected.extend(records)
    (record,) = collected.replayed
    assert (record.start, record.end) == (expected[-1].start, expected[-1].end)
    assert record.origin_seq == second


async def test_a_line_quarantined_before_the_crash_is_quarantined_once(store: Store) -> None:
    (garbage,) = await journal(store, "pbx", b"this is not SMDR")
    await store.quarantine("pbx", T0, b"this is not SMDR", "not an IP Office record", garbage)
    collected = Collected()
    link = make_link(store, "avaya-ipo", collected)

    assert await link.recover() == 1

    assert len(await store.quarantined_page("pbx")) == 1
    assert collected.replayed == []


async def test_a_partial_line_is_replayed_as_the_partial_line_it_was(store: Store) -> None:
    (seq,) = await store.append_journal_many_soon("pbx", [(T0, IPO_1[:40], "partial line at disconnect")])
    collected = Collected()
    link = make_link(store, "avaya-ipo", collected)

    await link.recover()

    assert collected.replayed == []
    (entry,) = await store.quarantined_page("pbx")
    assert (entry.journal_seq, entry.reason) == (seq, "partial line at disconnect")
