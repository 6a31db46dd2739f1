"""SmdrLink on a real listen:// socket and a real store: journal first, connections taking turns, failures kept."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable

import pytest
from structlog.testing import capture_logs

from drivers.smdr.link import SmdrLink
from drivers.transport import MAX_LINES_PER_DELIVERY
from gateway.config import LinkConfig
from gateway.events import CallRecord, LinkHealth, LinkState
from gateway.store import Store
from tests.conftest import eventually

WAIT_S = 10.0
BURST_RECORDS = 4_000


def ipo_line(index: int, platform_call_id: int) -> bytes:
    extension = 2000 + index % 500
    return (
        f"2026/11/23 10:{index // 60 % 60:02d}:{index % 60:02d},00:01:00,5,0170{index:07d},I,{extension},{extension},,0,"
        f"{platform_call_id},0,E{extension},Agent {extension},T9001,LINE 1.1,0,0\r\n"
    ).encode()


@pytest.fixture
async def link_for(
    store: Store, unused_tcp_port: int
) -> AsyncIterator[Callable[[Callable[[CallRecord], object]], object]]:
    links: list[SmdrLink] = []

    async def start(submit: Callable[[CallRecord], object]) -> SmdrLink:
        config = LinkConfig("pbx", "avaya-ipo", f"listen://127.0.0.1:{unused_tcp_port}", timezone="UTC")
        link = SmdrLink(config, store, submit, LinkHealth("pbx"))
        await link.open()
        links.append(link)
        return link

    yield start
    for link in links:
        await link.close()


async def connect(port: int) -> asyncio.StreamWriter:
    """Connects once the link listens (opening a link returns before its socket is bound)."""

    async def attempt() -> asyncio.StreamWriter:
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                return writer
            except ConnectionRefusedError:
                await asyncio.sleep(0.01)

    return await asyncio.wait_for(attempt(), WAIT_S)


async def test_no_record_is_handed_on_before_its_line_is_in_the_journal(link_for, store, unused_tcp_port) -> None:
    # A second connection to the database file sees only what the writer has committed.
    committed = sqlite3.connect(store.path)
    journalled_when_submitted: list[tuple[int, int]] = []

    def submit(record: CallRecord) -> None:
        (rows,) = committed.execute("SELECT count(*) FROM journal").fetchone()
        journalled_when_submitted.append((len(journalled_when_submitted) + 1, rows))

    link = await link_for(submit)
    pbx = await connect(unused_tcp_port)
    pbx.write(b"".join(ipo_line(index, 1_000_000 + index) for index in range(BURST_RECORDS)))
    await pbx.drain()
    try:
        await eventually(lambda: link.health.records == BURST_RECORDS)
    finally:
        pbx.close()
        committed.close()
    # Lines and records are one to one here: the n-th record needs at least n committed lines.
    assert all(rows >= submitted for submitted, rows in journalled_when_submitted)
    # And the journal ran ahead of the parser (the next delivery was committed while one was parsed).
    assert any(rows > submitted for submitted, rows in journalled_when_submitted)


async def test_a_burst_on_one_connection_does_not_hold_back_another(link_for, unused_tcp_port) -> None:
    order: list[str | None] = []
    link = await link_for(lambda record: order.append(record.platform_call_id))
    flushing, live = await connect(unused_tcp_port), await connect(unused_tcp_port)
    await eventually(lambda: link._transport is not None and link._transport.connections == 2)
    flushing.write(b"".join(ipo_line(index, 1_000_000 + index) for index in range(BURST_RECORDS)))
    await flushing.drain()
    live.write(ipo_line(0, 9_999_999))
    await live.drain()
    try:
        await eventually(lambda: link.health.records == BURST_RECORDS + 1)
    finally:
        flushing.close()
        live.close()
    # Behind at most the delivery being parsed and the one that was already waiting, not the whole burst.
    assert order.index("9999999") < 2 * MAX_LINES_PER_DELIVERY + 1


async def test_lines_the_journal_refuses_are_held_and_written_once_it_takes_writes_again(
    link_for, store, unused_tcp_port
) -> None:
    records: list[str | None] = []
    link = await link_for(lambda record: records.append(record.platform_call_id))
    pbx = await connect(unused_tcp_port)
    try:
        pbx.write(ipo_line(0, 1_000_001))
        await pbx.drain()
        await eventually(lambda: records == ["1000001"])

        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("ALTER TABLE journal RENAME TO journal_away")
        with capture_logs() as logs:
            pbx.write(ipo_line(1, 1_000_002))
            await pbx.drain()
            await eventually(lambda: any(entry["event"] == "store refuses writes; holding lines" for entry in logs))
            pbx.write(ipo_line(2, 1_000_003))  # not read meanwhile: the connection waits, as the PBX buffers
            await pbx.drain()
            assert records == ["1000001"]
            other.execute("ALTER TABLE journal_away RENAME TO journal")
            other.close()
            await eventually(lambda: records == ["1000001", "1000002", "1000003"])  # nothing lost, in order
            assert any(entry["event"] == "store takes writes again" for entry in logs)
    finally:
        pbx.close()
    assert link.health.state.value == "up"


async def test_closing_mid_burst_parses_every_line_it_journalled(link_for, store, unused_tcp_port) -> None:
    submitted: list[str | None] = []
    link = await link_for(lambda record: submitted.append(record.platform_call_id))
    pbx = await connect(unused_tcp_port)
    pbx.write(b"".join(ipo_line(index, 1_000_000 + index) for index in range(BURST_RECORDS)))
    await pbx.drain()
    await eventually(lambda: len(submitted) > 0)
    await link.close()  # with deliveries journalled and waiting, and unread bytes still in the socket
    pbx.close()
    journalled = await store.journal_entries("pbx", limit=BURST_RECORDS)
    # Each journalled line became a record or was quarantined (the line cut off at the close, if any).
    quarantined = {entry.journal_seq for entry in await store.quarantined_page("pbx")}
    assert len(quarantined) == link.health.errors <= 1
    parsed = [entry.raw.split(b",")[9].decode() for entry in journalled if entry.seq not in quarantined]
    assert 0 < len(submitted) < BURST_RECORDS and submitted == parsed


async def test_a_quarantine_row_the_store_refuses_is_written_once_it_takes_writes_again(
    link_for, store, unused_tcp_port
) -> None:
    records: list[str | None] = []
    link = await link_for(lambda record: records.append(record.platform_call_id))
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("ALTER TABLE quarantine RENAME TO quarantine_away")
    pbx = await connect(unused_tcp_port)
    try:
        with capture_logs() as logs:
            pbx.write(b"not a record\r\n")
            await pbx.drain()
            await eventually(lambda: any(entry["event"] == "store refuses writes; holding lines" for entry in logs))
        other.execute("ALTER TABLE quarantine_away RENAME TO quarantine")
        pbx.write(ipo_line(0, 1_000_001))
        await pbx.drain()
        await eventually(lambda: records == ["1000001"])
    finally:
        pbx.close()
        other.close()
    assert link.health.errors == 1
    (entry,) = await store.quarantined_page("pbx")
    assert entry.raw == b"not a record"


class _StateOnlyTransport:
    """A transport whose state the test sets (no socket): for what the link makes of UP and DOWN alone."""

    def __init__(self, _config: LinkConfig, _deliver: object, *, on_state: Callable[[LinkState], None]) -> None:
        self.on_state = on_state

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_reconnects_count_each_time_the_link_comes_up_again_but_not_the_first(store: Store) -> None:
    transports: list[_StateOnlyTransport] = []

    def factory(*args: object, **kwargs: object) -> _StateOnlyTransport:
        transports.append(_StateOnlyTransport(*args, **kwargs))  # type: ignore[arg-type]
        return transports[-1]

    config = LinkConfig("pbx", "avaya-ipo", "tcp://127.0.0.1:9", timezone="UTC")
    link = SmdrLink(config, store, lambda _record: None, LinkHealth("pbx"), transport_factory=factory)
    await link.open()
    try:
        (transport,) = transports
        transport.on_state(LinkState.UP)
        assert link.health.reconnects == 0  # the first connection
        for _ in range(3):
            transport.on_state(LinkState.DOWN)
            transport.on_state(LinkState.UP)
        transport.on_state(LinkState.UP)  # no change of state: not a reconnect
        assert link.health.reconnects == 3 and link.health.as_dict()["reconnects"] == 3
    finally:
        await link.close()
