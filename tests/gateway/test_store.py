"""The SQLite store against real files: round trips, upserts, lookups and query plans, group commit, durability."""

from __future__ import annotations

import asyncio
import copy
import sqlite3
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway import store as store_module
from gateway.errors import StoreError
from gateway.journal import JournalEntry
from gateway.model import Call, CallState, Direction, Recording, RecordingMode
from gateway.store import QuarantineEntry, Store

T0 = datetime(2024, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
KILLED_PROCESS_TIMEOUT_S = 20


def make_call(call_id: str, **fields: object) -> Call:
    fields.setdefault("start_time", T0)
    return Call(call_id=call_id, **fields)  # type: ignore[arg-type]


def full_call(call_id: str = "call-full") -> Call:
    """Every field set, in mixed time zones, with live, ended, manual and deleted recordings."""
    plus_two = timezone(timedelta(hours=2))
    call = Call(
        call_id=call_id,
        start_time=T0.astimezone(plus_two),
        state=CallState.FINISHED,
        direction=Direction.OUT,
        extension="201",
        calling="201",
        called="0049301234567",
        other_parties={"202", "305"},
        platform_call_id="pbx-77",
        native_id="rec-call-9",
        recorder="rec1",
        channel="7",
        link="ipo",
        account="4711",
        trunk="T3",
        connect_time=T0 + timedelta(seconds=4, microseconds=1),
        end_time=T0 + timedelta(seconds=95, microseconds=999999),
        ring_s=4.0,
        duration_s=91.5,
        recording_mode=RecordingMode.CONTROLLED_AUTOSTART,
        kept=True,
        do_not_delete=True,
    )
    call.recordings = [
        Recording(f"{call_id}/rec-a", call_id, T0 + timedelta(seconds=4), recorder="rec1", channel="7", native_id="n-a",
                  end_time=T0 + timedelta(seconds=30), deleted=True),
        Recording(f"{call_id}/rec-b", call_id, T0 + timedelta(seconds=30), recorder="rec1", channel="7",
                  native_id="n-b", end_time=T0 + timedelta(seconds=95), manual=True),
        Recording(f"{call_id}/rec-c", call_id, T0 + timedelta(seconds=30)),  # same start: insertion order decides
    ]  # fmt: skip
    return call


def query_plan(path: Path, sql: str) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        params = (None,) * sql.count("?")
        return [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    finally:
        connection.close()


# ---- round trips and upserts


async def test_full_call_round_trip(store: Store) -> None:
    call = full_call()
    await store.save_call(call)

    loaded = await store.get_call(call.call_id)

    assert loaded == call
    assert loaded is not None
    assert loaded.start_time.tzinfo is UTC and loaded.end_time is not None and loaded.end_time.tzinfo is UTC
    assert loaded.parties == {"201", "0049301234567", "202", "305"}
    assert [r.recording_id for r in loaded.recordings] == [f"{call.call_id}/rec-{x}" for x in "abc"]
    assert (loaded.recordings[0].deleted, loaded.recordings[1].manual) == (True, True)


async def test_minimal_call_keeps_its_none_fields(store: Store) -> None:
    call = make_call("call-min")
    await store.save_call(call)
    assert await store.get_call("call-min") == call
    assert await store.get_call("no-such-call") is None


async def test_recordings_come_back_by_start_time_then_insertion(store: Store) -> None:
    call = make_call("call-order")
    call.recordings = [
        Recording("late", call.call_id, T0 + timedelta(seconds=50)),
        Recording("early-1", call.call_id, T0 + timedelta(seconds=10)),
        Recording("early-2", call.call_id, T0 + timedelta(seconds=10)),
    ]
    await store.save_call(call)
    loaded = await store.get_call(call.call_id)
    assert loaded is not None
    assert [r.recording_id for r in loaded.recordings] == ["early-1", "early-2", "late"]


async def test_naive_datetime_is_read_as_utc(store: Store) -> None:
    await store.save_call(make_call("call-naive", start_time=T0.replace(tzinfo=None)))
    loaded = await store.get_call("call-naive")
    assert loaded is not None and loaded.start_time == T0


async def test_upsert_ends_the_call_and_adds_recordings_and_flags(store: Store) -> None:
    call = make_call("call-up", extension="100", called="100", calling="0555", recording_mode=RecordingMode.FULL)
    call.recordings.append(Recording("r1", call.call_id, T0 + timedelta(seconds=2)))
    await store.save_call(call)

    call.recordings[0].end_time = T0 + timedelta(seconds=20)
    call.recordings.append(Recording("r2", call.call_id, T0 + timedelta(seconds=20), manual=True))
    call.other_parties.add("101")  # transferred
    call.state = CallState.FINISHED
    call.end_time = T0 + timedelta(seconds=60)
    call.duration_s = 58.0
    call.kept = True
    call.do_not_delete = True
    await store.save_call(call)

    assert await store.get_call(call.call_id) == call
    assert await store.count_calls() == 1
    assert await store.last_ended_call_ids("101") == [(call.end_time, call.call_id)]


async def test_upsert_replaces_parties_that_went_away(store: Store) -> None:
    call = make_call("call-refile", extension="100", state=CallState.FINISHED, end_time=T0)
    await store.save_call(call)
    call.extension = "200"
    await store.save_call(call)
    assert await store.last_ended_call_ids("100") == []
    assert await store.last_ended_call_ids("200") == [(T0, "call-refile")]


async def test_mutating_the_call_after_save_call_soon_does_not_change_what_is_stored(store: Store) -> None:
    call = full_call("call-snap")
    call.state = CallState.ONGOING
    expected = copy.deepcopy(call)

    future = store.save_call_soon(call)
    call.state = CallState.FINISHED
    call.extension = "999"
    call.other_parties.add("998")
    call.recordings[1].end_time = T0 + timedelta(hours=1)
    call.recordings.append(Recording("rec-later", call.call_id, T0 + timedelta(minutes=5)))
    call.kept = False
    await future

    assert await store.get_call("call-snap") == expected


# ---- lookups


async def test_last_ended_call_ids_orders_newest_first_and_matches_every_party(store: Store) -> None:
    def ended(call_id: str, end_s: int, **fields: object) -> Call:
        return make_call(call_id, state=CallState.FINISHED, end_time=T0 + timedelta(seconds=end_s), **fields)

    await store.save_call(ended("as-extension", 10, extension="100"))
    await store.save_call(ended("as-caller", 30, extension="300", calling="100"))
    await store.save_call(ended("as-called", 20, extension="300", called="100"))
    await store.save_call(ended("as-other", 40, extension="300", other_parties={"100"}))
    await store.save_call(ended("elsewhere", 50, extension="300"))
    await store.save_call(make_call("still-ongoing", extension="100"))

    got = await store.last_ended_call_ids("100", limit=10)

    assert [call_id for _, call_id in got] == ["as-other", "as-caller", "as-called", "as-extension"]
    assert got[0][0] == T0 + timedelta(seconds=40) and got[0][0].tzinfo is UTC
    assert await store.last_ended_call_ids("100") == got[:2]  # default limit
    assert await store.last_ended_call_ids("nobody") == []


async def test_last_ended_call_ids_leaves_out_calls_ending_in_the_future(store: Store) -> None:
    # A sped-up demo or a PBX clock ahead of ours: such a call has not ended yet, so it is nobody's last call.
    now = datetime.now(UTC)
    await store.save_call(
        make_call("ended", extension="8856", state=CallState.FINISHED, end_time=now - timedelta(minutes=1))
    )
    await store.save_call(
        make_call("future", extension="8856", state=CallState.FINISHED, end_time=now + timedelta(minutes=5))
    )
    assert [call_id for _, call_id in await store.last_ended_call_ids("8856")] == ["ended"]
    later = now + timedelta(minutes=6)
    assert [call_id for _, call_id in await store.last_ended_call_ids("8856", ended_by=later)] == ["future", "ended"]


async def test_platform_and_native_lookups_report_every_hit_up_to_the_limit(store: Store) -> None:
    await store.save_call(make_call("first", platform_call_id="p-1", native_id="n-1"))
    await store.save_call(make_call("second", platform_call_id="p-1", native_id="n-2"))
    await store.save_call(make_call("third", platform_call_id="p-3", native_id="n-2"))

    assert await store.call_ids_by_platform_call_id("p-1") == ["first", "second"]
    assert await store.call_ids_by_platform_call_id("p-1", limit=1) == ["first"]
    assert await store.call_ids_by_platform_call_id("p-3") == ["third"]
    assert await store.call_ids_by_platform_call_id("p-none") == []
    assert await store.call_ids_by_native_id("n-2") == ["second", "third"]
    assert await store.call_ids_by_native_id("n-1") == ["first"]


async def test_load_ongoing_calls_returns_full_objects(store: Store) -> None:
    ongoing_a = full_call("ongoing-a")
    ongoing_a.state = CallState.ONGOING
    ongoing_b = make_call("ongoing-b", extension="300")
    ongoing_b.recordings.append(Recording("b-1", "ongoing-b", T0))
    finished = full_call("finished")
    for call in (ongoing_a, ongoing_b, finished):
        await store.save_call(call)

    loaded = await store.load_ongoing_calls()

    assert sorted(loaded, key=lambda call: call.call_id) == [ongoing_a, ongoing_b]
    assert await store.count_ongoing_calls() == 2
    assert await store.count_calls() == 3

    ongoing_a.state = CallState.FINISHED
    await store.save_call(ongoing_a)
    assert [call.call_id for call in await store.load_ongoing_calls()] == ["ongoing-b"]
    assert await store.count_ongoing_calls() == 1


async def test_expired_on_demand_call_ids_finds_only_unkept_ended_undeleted_recordings(store: Store) -> None:
    def on_demand(call_id: str, end_s: int, **fields: object) -> Call:
        call = make_call(call_id, recording_mode=RecordingMode.ON_DEMAND, **fields)
        call.recordings.append(Recording(f"{call_id}/r", call_id, T0, end_time=T0 + timedelta(seconds=end_s)))
        return call

    older, newer = on_demand("older", 10), on_demand("newer", 20)
    two = on_demand("two-recordings", 15)
    two.recordings.append(Recording("two/r2", "two-recordings", T0, end_time=T0 + timedelta(seconds=16)))
    still_recording = on_demand("still-recording", 0)
    still_recording.recordings[0].end_time = None
    calls = [older, newer, two, still_recording, on_demand("kept", 1, kept=True),
             on_demand("protected", 1, do_not_delete=True), on_demand("too-recent", 500)]  # fmt: skip
    full = on_demand("full-mode", 1)
    full.recording_mode = RecordingMode.FULL
    for call in [*calls, full]:
        await store.save_call(call)
    cutoff = T0 + timedelta(seconds=100)

    assert await store.expired_on_demand_call_ids(cutoff, 10) == ["older", "two-recordings", "newer"]
    assert await store.expired_on_demand_call_ids(cutoff, 1) == ["older"]

    older.recordings[0].deleted = True  # discarded by the sweep
    newer.kept = True  # kept after the fact
    two.recordings[0].deleted = True  # one of two discarded: the other is still due
    for call in (older, newer, two):
        await store.save_call(call)
    assert await store.expired_on_demand_call_ids(cutoff, 10) == ["two-recordings"]


# ---- journal and quarantine


async def test_journal_appends_in_order_and_pages_by_link(store: Store) -> None:
    seqs = [
        await store.append_journal("ipo", T0, b"line 1\r\n"),
        await store.append_journal("panasonic", T0 + timedelta(seconds=1), bytearray(b"line 2")),
        await store.append_journal("ipo", T0 + timedelta(seconds=2), b"\xff\x00 binary"),
    ]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3

    everything = await store.journal_entries()
    assert everything == [
        JournalEntry(seqs[0], "ipo", T0, b"line 1\r\n"),
        JournalEntry(seqs[1], "panasonic", T0 + timedelta(seconds=1), b"line 2"),
        JournalEntry(seqs[2], "ipo", T0 + timedelta(seconds=2), b"\xff\x00 binary"),
    ]
    assert [e.seq for e in await store.journal_entries("ipo")] == [seqs[0], seqs[2]]
    assert [e.seq for e in await store.journal_entries("ipo", after_seq=seqs[0])] == [seqs[2]]
    assert [e.seq for e in await store.journal_entries(limit=2)] == seqs[:2]


async def test_gathered_journal_appends_get_increasing_seqs(store: Store) -> None:
    seqs = await asyncio.gather(*(store.append_journal_soon("ipo", T0, b"%d" % n) for n in range(500)))
    assert seqs == sorted(seqs) and len(set(seqs)) == 500
    entries = await store.journal_entries(limit=1000)
    assert [entry.raw for entry in entries] == [b"%d" % n for n in range(500)]


async def test_quarantine_counts_and_entries(store: Store) -> None:
    seq = await store.append_journal("ipo", T0, b"garbage")
    await store.quarantine("ipo", T0, b"garbage", "no parser matched", journal_seq=seq)
    await store.quarantine("ipo", T0, b"more garbage", "bad time")
    await store.quarantine("panasonic", T0, b"???", "short line")

    assert await store.quarantine_counts() == {"ipo": 2, "panasonic": 1}
    ipo = await store.quarantined("ipo")
    assert [(q.journal_seq, q.raw, q.reason) for q in ipo] == [(seq, b"garbage", "no parser matched"),
                                                              (None, b"more garbage", "bad time")]  # fmt: skip
    assert isinstance(ipo[0], QuarantineEntry) and ipo[0].link == "ipo" and ipo[0].received_at == T0
    assert len(await store.quarantined()) == 3
    assert len(await store.quarantined(limit=1)) == 1


# ---- the writer: batches, failures, close


async def test_a_failing_op_fails_only_its_own_future(store: Store) -> None:
    # Hold the write lock from outside so the writer stalls on a plug op while the real ops queue up
    # behind it; they then go in together as one batch.
    blocker = sqlite3.connect(store.path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        plug = store.append_journal_soon("plug", T0, b"plug")
        while not store._queue.empty():  # the writer has taken the plug and is waiting for the lock
            await asyncio.sleep(0.001)
        good_before = store.save_call_soon(make_call("good-before"))
        bad = store.save_call_soon(make_call("bad", start_time=None))  # violates NOT NULL start_time
        bad_journal = store.append_journal_soon(None, T0, b"x")  # type: ignore[arg-type]
        good_after = store.append_journal_soon("ipo", T0, b"after")
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()

    results = await asyncio.gather(plug, good_before, bad, bad_journal, good_after, return_exceptions=True)

    assert isinstance(results[2], StoreError) and "bad" in str(results[2])
    assert isinstance(results[3], StoreError)
    assert results[1] is None and isinstance(results[4], int)
    assert await store.get_call("good-before") is not None
    assert await store.get_call("bad") is None
    assert [entry.raw for entry in await store.journal_entries("ipo")] == [b"after"]


async def test_cancelled_awaiter_does_not_stop_the_write(store: Store) -> None:
    future = store.save_call_soon(make_call("cancelled"))
    future.cancel()
    await store.save_call(make_call("after"))  # the writer is still healthy
    assert await store.count_calls() == 2


async def test_close_commits_queued_writes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = Store(path, batch_max=100)
    await store.open()
    futures = [store.save_call_soon(make_call(f"call-{n}", extension=str(n % 7))) for n in range(1000)]
    await store.close()
    assert all(future.done() and future.exception() is None for future in futures)

    reopened = Store(path)
    await reopened.open()
    try:
        assert await reopened.count_calls() == 1000
    finally:
        await reopened.close()


async def test_close_is_idempotent_and_everything_after_it_raises(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.db")
    with pytest.raises(StoreError):
        store.save_call_soon(make_call("too-early"))
    with pytest.raises(StoreError):
        await store.count_calls()
    await store.open()
    await asyncio.gather(store.close(), store.close())
    await store.close()

    with pytest.raises(StoreError):
        store.save_call_soon(make_call("too-late"))
    with pytest.raises(StoreError):
        await store.save_call(make_call("too-late"))
    with pytest.raises(StoreError):
        store.append_journal_soon("ipo", T0, b"x")
    with pytest.raises(StoreError):
        await store.quarantine("ipo", T0, b"x", "reason")
    for read in (
        store.get_call("x"),
        store.call_ids_by_platform_call_id("x"),
        store.call_ids_by_native_id("x"),
        store.last_ended_call_ids("x"),
        store.expired_on_demand_call_ids(T0, 10),
        store.load_ongoing_calls(),
        store.count_calls(),
        store.count_ongoing_calls(),
        store.quarantine_counts(),
        store.journal_entries(),
        store.quarantined(),
    ):
        with pytest.raises(StoreError):
            await read
    with pytest.raises(StoreError):
        await store.open()
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("store-")]


# ---- files, migrations, durability


async def test_open_creates_the_folder_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "gateway.db"
    store = Store(str(path))
    await store.open()
    try:
        assert store.path == path and path.exists()
        connection = sqlite3.connect(path)
        try:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            connection.close()
    finally:
        await store.close()


async def test_migrations_run_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "store.db"
    # A second migration that would fail (table exists) or double the row if it ever ran twice.
    migrations = [*store_module.MIGRATIONS, "CREATE TABLE marker (n INTEGER); INSERT INTO marker VALUES (1);"]
    monkeypatch.setattr(store_module, "MIGRATIONS", migrations)
    for _ in range(2):
        store = Store(path)
        await store.open()
        await store.save_call(make_call("survives"))
        await store.close()

    connection = sqlite3.connect(path)
    try:
        assert connection.execute("SELECT version FROM schema_version").fetchall() == [(len(migrations),)]
        assert connection.execute("SELECT count(*) FROM marker").fetchone() == (1,)
    finally:
        connection.close()


async def test_refuses_a_database_from_a_newer_gateway(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = Store(path)
    await store.open()
    await store.close()
    connection = sqlite3.connect(path)
    connection.execute("UPDATE schema_version SET version = 99")
    connection.commit()
    connection.close()

    newer = Store(path)
    with pytest.raises(StoreError, match="schema version 99"):
        await newer.open()
    await newer.close()


async def test_acknowledged_writes_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        from datetime import datetime, timezone
        from gateway.model import Call
        from gateway.store import Store

        async def main():
            store = Store({str(path)!r})
            await store.open()
            await store.save_call(Call(call_id="durable", start_time=datetime.now(timezone.utc), extension="100"))
            seq = await store.append_journal("ipo", datetime.now(timezone.utc), b"raw line")
            print("saved", seq, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit, no flush of anything

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), KILLED_PROCESS_TIMEOUT_S)
    assert b"saved" in stdout.splitlines()[-1], (stdout + stderr).decode()
    assert process.returncode == -9

    store = Store(path)
    await store.open()
    try:
        call = await store.get_call("durable")
        assert call is not None and call.extension == "100"
        assert [entry.raw for entry in await store.journal_entries()] == [b"raw line"]
    finally:
        await store.close()


# ---- query plans: every lookup stays an index search at millions of rows

LOOKUPS = {
    "get_call": store_module.SELECT_CALL,
    "get_call parties": store_module.SELECT_CALL_PARTIES,
    "get_call recordings": store_module.SELECT_CALL_RECORDINGS,
    "load_ongoing_calls": store_module.SELECT_ONGOING_CALLS,
    "load_ongoing_calls parties": store_module.SELECT_ONGOING_PARTIES,
    "load_ongoing_calls recordings": store_module.SELECT_ONGOING_RECORDINGS,
    "by platform call id": store_module.SELECT_BY_PLATFORM_CALL_ID,
    "by native id": store_module.SELECT_BY_NATIVE_ID,
    "last ended": store_module.SELECT_LAST_ENDED,
    "expired on-demand": store_module.SELECT_DISCARDABLE,
    "count ongoing": store_module.COUNT_ONGOING_CALLS,
    "journal": store_module.SELECT_JOURNAL,
    "journal by link": store_module.SELECT_JOURNAL_BY_LINK,
    "quarantined by link": store_module.SELECT_QUARANTINE_BY_LINK,
    "upsert: replace parties": store_module._DELETE_PARTIES.sql(1),
    "upsert: replace parties of 64 calls": store_module._DELETE_PARTIES.sql(64),
}


@pytest.mark.parametrize("sql", LOOKUPS.values(), ids=LOOKUPS.keys())
async def test_lookup_uses_an_index(store: Store, sql: str) -> None:
    await store.save_call(full_call())  # a non-empty database, as the planner will see it
    plan = query_plan(store.path, sql)
    assert plan and all(step.startswith(("SEARCH", "USE TEMP B-TREE")) for step in plan), plan
    assert not any(step.startswith("SCAN") for step in plan), plan


def test_last_ended_walks_the_party_index_newest_first(tmp_path: Path) -> None:
    # No sort step: LIMIT 2 reads two index entries, however many calls the extension ever had.
    path = tmp_path / "plan.db"
    connection = sqlite3.connect(path)
    try:
        connection.executescript(store_module.MIGRATIONS[0])
    finally:
        connection.close()
    plan = query_plan(path, store_module.SELECT_LAST_ENDED)
    assert "call_parties_number_end" in plan[0] and not any("TEMP B-TREE" in step for step in plan), plan


async def test_a_large_batch_goes_in_multi_row_statements_and_reads_back(store: Store) -> None:
    # 300 = 256 + 16 + 16 + 4 + 4 + 4: every statement size; the same call twice keeps its last snapshot.
    calls = [full_call(f"call-{index:03d}") for index in range(300)]
    for index, call in enumerate(calls):
        call.platform_call_id = str(10_000 + index)
    changed = full_call("call-007")
    changed.platform_call_id = "10007"
    changed.other_parties = {"4444"}
    await store.save_calls_soon([*calls, changed])
    assert await store.count_calls() == 300
    loaded = await store.get_call("call-007")
    assert loaded is not None and "4444" in loaded.parties
    assert (await store.get_call("call-299")).platform_call_id == "10299"
    lines = [(datetime.now(UTC), f"line {index}".encode()) for index in range(333)]
    seqs = await store.append_journal_many_soon("pbx", lines)
    assert seqs == list(range(seqs[0], seqs[0] + 333))
    entries = await store.journal_entries("pbx", after_seq=seqs[0] - 1, limit=400)
    assert [entry.raw for entry in entries] == [raw for _, raw in lines]


async def test_batched_journal_appends_return_their_seqs_in_order(store: Store) -> None:
    now = datetime.now(UTC)
    first = await store.append_journal("pbx", now, b"one")
    seqs = await store.append_journal_many_soon("pbx", [(now, b"two"), (now, b"three"), (now, b"four")])
    assert seqs == [first + 1, first + 2, first + 3]
    entries = await store.journal_entries("pbx")
    assert [(entry.seq, entry.raw) for entry in entries][-3:] == list(zip(seqs, [b"two", b"three", b"four"]))
    assert await store.append_journal_many_soon("pbx", []) == []


async def test_writes_queued_together_get_their_own_results(store: Store) -> None:
    """Journal lines and call saves queued at once are written as one row set each (one batch); every op
    still gets its own seqs, in the order it was queued, and a call saved twice keeps its last state."""
    now = datetime.now(UTC)
    first_version = full_call("merged")
    last_version = copy.deepcopy(first_version)
    last_version.other_parties = {"999"}
    queued = [
        store.append_journal_many_soon("pbx", [(now, b"a1"), (now, b"a2"), (now, b"a3")]),
        store.save_calls_soon([first_version]),
        store.append_journal_soon("pbx-2", now, b"b1"),
        store.append_journal_many_soon("pbx", []),
        store.save_calls_soon([make_call("other"), last_version]),
        store.append_journal_many_soon("pbx", [(now, b"a4"), (now, b"a5")]),
    ]
    many_a, _, single, empty, _, many_b = await asyncio.gather(*queued)
    first = many_a[0]
    assert (many_a, single, empty, many_b) == ([first, first + 1, first + 2], first + 3, [], [first + 4, first + 5])
    entries = {entry.seq: (entry.link, entry.raw) for entry in await store.journal_entries()}
    assert [entries[seq] for seq in range(first, first + 6)] == [
        ("pbx", b"a1"), ("pbx", b"a2"), ("pbx", b"a3"), ("pbx-2", b"b1"), ("pbx", b"a4"), ("pbx", b"a5"),
    ]  # fmt: skip
    stored = await store.get_call("merged")
    assert stored is not None and stored.parties == last_version.parties
    assert await store.get_call("other") is not None


async def test_a_thread_checkpoints_the_wal_while_the_store_is_open(tmp_path: Path) -> None:
    """Committed pages reach the database file while the store runs, long before the writer's own
    autocheckpoint (WAL_AUTOCHECKPOINT_PAGES) would: the checkpoint thread copies them."""
    path = tmp_path / "store.db"
    opened = Store(path)
    await opened.open()
    try:
        size_before = path.stat().st_size
        await opened.save_calls_soon([full_call(f"call-{index}") for index in range(500)])
        wal_bytes = (tmp_path / "store.db-wal").stat().st_size
        assert wal_bytes < store_module.WAL_AUTOCHECKPOINT_PAGES * 4096  # the writer has no reason to checkpoint

        async def copied() -> None:
            while path.stat().st_size < size_before + 100_000:
                await asyncio.sleep(store_module.CHECKPOINT_INTERVAL_S / 5)

        await asyncio.wait_for(copied(), store_module.CHECKPOINT_INTERVAL_S * 40)
    finally:
        await opened.close()
    assert not (tmp_path / "store.db-wal").exists() or (tmp_path / "store.db-wal").stat().st_size == 0


async def test_batched_call_saves_round_trip(store: Store) -> None:
    calls = [full_call(f"call-{index}") for index in range(3)]
    await store.save_calls_soon(calls)
    for call in calls:
        stored = await store.get_call(call.call_id)
        assert stored is not None and stored.parties == call.parties
        assert [r.native_id for r in stored.recordings] == [r.native_id for r in call.recordings]
