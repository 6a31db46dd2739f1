"""Call tracker: events → calls, status lookups, next-waiters, PBX records and correlation."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from gateway.calls import CallTracker, numbers_match, parse_statuses
from gateway.config import ExtensionConfig
from gateway.errors import AmbiguousCall, CallNotFound
from gateway.events import (
    CallConnected,
    CallEnded,
    CallRecord,
    CallStarted,
    RecorderSynced,
    RecordingStarted,
    RecordingStopped,
)
from gateway.model import CallState, Direction, RecordingMode

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)
EXTENSIONS = (
    ExtensionConfig("8856", RecordingMode.CONTROLLED, "trunk1", "1/5"),
    ExtensionConfig("8857", RecordingMode.FULL, "trunk1", "1/6"),
)


@pytest.fixture
async def tracker(store):
    tracker = CallTracker(store, EXTENSIONS, finished_cache_size=50)
    await tracker.start()
    yield tracker
    await tracker.flush()


def setup_event(native_id="TRS1", channel="1/5", calling="01707392200", called="8856", at=T0, direction=Direction.IN):
    return CallStarted("trunk1", channel, native_id, calling, called, direction, at)


def release_event(native_id="TRS1", channel="1/5", at=T0 + timedelta(seconds=30)):
    return CallEnded("trunk1", channel, native_id, at, "16")


def avaya_record(**overrides):
    fields = dict(
        format="avaya-ipo",
        source="pbx-main",
        raw="…",
        received_at=T0 + timedelta(seconds=40),
        start=T0,
        duration_s=25.0,
        ring_s=5.0,
        extension="8856",
        other_number="01707392200",
        direction=Direction.IN,
        platform_call_id="1000014160",
        account="42",
        answered=True,
    )
    fields.update(overrides)
    return CallRecord(**fields)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("ongoing", ["ongoing"]), ("ONGOING, next", ["ongoing", "next"]), ("last,ongoing", ["last", "ongoing"])],
)
def test_parse_statuses(text, expected):
    assert parse_statuses(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "ongoing,,next", "ongoing;next"])
def test_parse_statuses_refuses(text):
    with pytest.raises(ValueError):
        parse_statuses(text)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        ("01707392200", "+441707392200", True),
        ("8856", "8856", True),
        ("", "123", True),
        ("01707392200", "01707392299", False),
    ],
)
def test_numbers_match(a, b, match):
    assert numbers_match(a, b) is match


async def test_setup_makes_an_ongoing_call_of_the_mapped_extension(tracker):
    call = tracker.apply(setup_event())
    assert call.extension == "8856" and call.ongoing and call.recording_mode is RecordingMode.CONTROLLED
    assert await tracker.find_by_status("8856", ["ongoing"], 1) is call
    # the external party finds it too
    assert await tracker.find_by_status("01707392200", ["ongoing"], 1) is call
    assert (await tracker.find_by_native_id("TRS1")) is call


async def test_replayed_setup_is_the_same_call(tracker):
    first = tracker.apply(setup_event())
    assert tracker.apply(setup_event()) is first
    assert tracker.ongoing_count == 1


async def test_two_ongoing_calls_are_ambiguous_never_a_guess(tracker):
    tracker.apply(setup_event("TRS1", channel="1/5"))
    tracker.apply(setup_event("TRS2", channel="1/9", calling="555", called="8856"))
    with pytest.raises(AmbiguousCall):
        await tracker.find_by_status("8856", ["ongoing"], 1)


async def test_release_moves_the_call_to_last(tracker, store):
    call = tracker.apply(setup_event())
    tracker.apply(CallConnected("trunk1", "1/5", "TRS1", T0 + timedelta(seconds=3)))
    tracker.apply(release_event())
    assert call.state is CallState.FINISHED and call.duration_s == 27
    with pytest.raises(CallNotFound):
        await tracker.find_by_status("8856", ["ongoing"], 1)
    assert await tracker.find_by_status("8856", ["last"], 1) is call
    assert await tracker.find_by_status("8856", ["ongoing", "last"], 1) is call
    await tracker.flush()
    stored = await store.get_call(call.call_id)
    assert stored.state is CallState.FINISHED and stored.end_time == call.end_time


async def test_last_prefers_the_latest_end_and_survives_a_restart(tracker, store):
    first = tracker.apply(setup_event("TRS1"))
    tracker.apply(release_event("TRS1", at=T0 + timedelta(seconds=10)))
    second = tracker.apply(setup_event("TRS2", at=T0 + timedelta(seconds=20)))
    tracker.apply(release_event("TRS2", at=T0 + timedelta(seconds=50)))
    assert (await tracker.last_calls_of("8856")) == [second]
    await tracker.flush()

    restarted = CallTracker(store, EXTENSIONS)
    await restarted.start()
    found = await restarted.find_by_status("8856", ["last"], 1)
    assert found.call_id == second.call_id != first.call_id


async def test_a_call_ending_in_the_future_is_never_the_last_one(tracker, store):
    # A sped-up demo's PBX clock runs ahead: its record says the call ends in five minutes.
    now = datetime.now(timezone.utc)
    ended = tracker.apply(setup_event("TRS1", at=now - timedelta(minutes=2)))
    tracker.apply(release_event("TRS1", at=now - timedelta(minutes=1)))
    tracker.apply(setup_event("TRS2", at=now - timedelta(seconds=30)))
    tracker.apply(release_event("TRS2", at=now + timedelta(minutes=5)))
    assert await tracker.find_by_status("8856", ["last"], 1) is ended
    # Also after a restart, when the answer comes from the store alone.
    await tracker.flush()
    restarted = CallTracker(store, EXTENSIONS)
    await restarted.start()
    found = await restarted.find_by_status("8856", ["last"], 1)
    assert found.call_id == ended.call_id


async def test_last_tie_is_ambiguous(tracker):
    tracker.apply(setup_event("TRS1"))
    tracker.apply(setup_event("TRS2", channel="1/9", calling="555"))
    tracker.apply(release_event("TRS1"))
    tracker.apply(release_event("TRS2", channel="1/9"))
    with pytest.raises(AmbiguousCall):
        await tracker.find_by_status("8856", ["last"], 1)


async def test_status_list_order_is_respected(tracker):
    finished = tracker.apply(setup_event("TRS1"))
    tracker.apply(release_event("TRS1"))
    ongoing = tracker.apply(setup_event("TRS2", at=T0 + timedelta(minutes=1)))
    assert await tracker.find_by_status("8856", ["last", "ongoing"], 1) is finished
    assert await tracker.find_by_status("8856", ["ongoing", "last"], 1) is ongoing


async def test_next_is_woken_by_the_call_start_itself(tracker):
    waiting = asyncio.create_task(tracker.find_by_status("8856", ["next"], 30))
    while tracker.next_waiter_count == 0:
        await asyncio.sleep(0)
    call = tracker.apply(setup_event())
    assert await asyncio.wait_for(waiting, 1) is call
    assert tracker.next_waiter_count == 0


async def test_next_times_out_as_not_found(tracker):
    with pytest.raises(CallNotFound):
        await tracker.find_by_status("8856", ["next"], 0.01)
    assert tracker.next_waiter_count == 0


async def test_cancelled_next_wait_leaves_no_waiter(tracker):
    waiting = asyncio.create_task(tracker.find_by_status("8856", ["ongoing", "next"], 30))
    while tracker.next_waiter_count == 0:
        await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert tracker.next_waiter_count == 0


async def test_recording_events_make_recordings(tracker):
    call = tracker.apply(setup_event())
    tracker.apply(RecordingStarted("trunk1", "1/5", "R1", "TRS1", T0 + timedelta(seconds=4)))
    assert call.active_recording.native_id == "R1"
    tracker.apply(RecordingStopped("trunk1", "1/5", "R1", T0 + timedelta(seconds=9), 5))
    assert call.active_recording is None and call.recordings[0].end_time == T0 + timedelta(seconds=9)
    # a restart makes a new recording with its own id
    tracker.apply(RecordingStarted("trunk1", "1/5", "R2", "TRS1", T0 + timedelta(seconds=12)))
    assert [r.native_id for r in call.recordings] == ["R1", "R2"]
    assert call.recordings[0].recording_id != call.recordings[1].recording_id
    tracker.apply(release_event())
    assert call.recordings[1].end_time == T0 + timedelta(seconds=30)


async def test_sync_ends_calls_the_recorder_no_longer_has(tracker):
    kept = tracker.apply(setup_event("TRS1"))
    gone = tracker.apply(setup_event("TRS2", channel="1/6", called="8857"))
    tracker.apply(RecorderSynced("trunk1", frozenset({"TRS1"}), T0 + timedelta(minutes=5)))
    assert kept.ongoing and not gone.ongoing
    assert gone.end_time == T0 + timedelta(minutes=5)


async def test_record_without_live_call_creates_a_finished_call(tracker):
    call = tracker.apply(avaya_record())
    assert call.state is CallState.FINISHED
    assert (call.platform_call_id, call.extension, call.calling, call.called) == (
        "1000014160",
        "8856",
        "01707392200",
        "8856",
    )
    assert call.end_time == T0 + timedelta(seconds=30)
    assert call.connect_time == T0 + timedelta(seconds=5)
    assert call.link == "pbx-main" and call.recording_mode is RecordingMode.CONTROLLED
    assert await tracker.find_by_platform_call_id("1000014160") is call
    assert await tracker.find_by_status("8856", ["last"], 1) is call


async def test_record_completes_the_live_call_instead_of_a_second_one(tracker):
    live = tracker.apply(setup_event(at=T0 + timedelta(seconds=1)))
    tracker.apply(release_event())
    completed = tracker.apply(avaya_record())
    assert completed is live
    assert live.platform_call_id == "1000014160" and live.account == "42" and live.link == "pbx-main"
    assert tracker.new_call_count == 1


async def test_record_with_other_number_does_not_steal_a_live_call(tracker):
    live = tracker.apply(setup_event(calling="0123456789"))
    call = tracker.apply(avaya_record(other_number="0987654321"))
    assert call is not live and live.platform_call_id is None


async def test_multi_record_call_is_one_call_with_all_parties(tracker):
    first = tracker.apply(avaya_record(more_follows=True, extension="4750"))
    second = tracker.apply(avaya_record(more_follows=False, extension="4751", duration_s=21.0))
    assert second is first
    assert {"4750", "4751"} <= first.parties
    assert first.duration_s == 46
    assert await tracker.find_by_status("4751", ["last"], 1) is first
    assert await tracker.find_by_status("4750", ["last"], 1) is first


def leg_record(
    extension, start_minute, talk_s, *, joins, direction=Direction.UNKNOWN, key="line 005", other="0612345678"
):
    return avaya_record(
        format="nec-sv",
        platform_call_id=None,
        extension=extension,
        other_number=other,
        direction=direction,
        start=T0 + timedelta(minutes=start_minute),
        duration_s=float(talk_s),
        ring_s=None,
        received_at=T0 + timedelta(minutes=start_minute, seconds=talk_s + 5),
        leg_key=key,
        joins_leg=joins,
    )


async def test_transfer_legs_on_one_line_are_one_call(tracker):
    # NEC: A answers on line 005 at 10:00 and talks 2 min; B picks up the transfer at 10:02, talks 3 min;
    # C at 10:05 for 1 min. Every station gets its own PTRS record, each printed when its leg ends.
    first = tracker.apply(leg_record("2001", 0, 120, joins=True, direction=Direction.IN))
    second = tracker.apply(leg_record("2002", 2, 180, joins=True))
    third = tracker.apply(leg_record("2003", 5, 60, joins=True))
    assert first is second is third
    assert {"2001", "2002", "2003"} <= first.parties
    assert first.duration_s == 360 and first.end_time == T0 + timedelta(minutes=6)
    assert await tracker.find_by_status("2003", ["last"], 1) is first
    assert await tracker.find_by_status("2001", ["last"], 1) is first


async def test_a_leg_never_joins_a_call_on_another_line_or_one_long_gone(tracker):
    first = tracker.apply(leg_record("2001", 0, 60, joins=True))
    other_line = tracker.apply(leg_record("2002", 1, 60, joins=True, key="line 006"))
    much_later = tracker.apply(leg_record("2003", 30, 60, joins=True))
    assert len({first.call_id, other_line.call_id, much_later.call_id}) == 3


async def test_a_record_that_does_not_join_starts_its_own_call_on_the_line(tracker):
    # A new call on the same line right after the last one ended (PIN, not PTRS) is a new call.
    first = tracker.apply(leg_record("2001", 0, 60, joins=True))
    new_call = tracker.apply(leg_record("2002", 1, 60, joins=False, direction=Direction.IN))
    assert new_call is not first


async def test_a_leg_matching_two_calls_is_kept_apart(tracker):
    one = tracker.apply(leg_record("2001", 0, 60, joins=False))
    two = tracker.apply(leg_record("2002", 0, 60, joins=False))
    third = tracker.apply(leg_record("2003", 1, 60, joins=True))
    assert len({one.call_id, two.call_id, third.call_id}) == 3


async def test_an_incoming_and_an_outgoing_leg_side_by_side_are_one_call_once(tracker):
    # Panasonic CO-to-CO transfer: the incoming leg (TR) and the outgoing leg (FW) run side by side.
    incoming = tracker.apply(leg_record("15", 0, 601, joins=False, direction=Direction.IN, key="co-transfer"))
    outgoing = tracker.apply(
        leg_record("18", 1, 558, joins=True, direction=Direction.OUT, key="co-transfer", other="12023467890")
    )
    assert outgoing is incoming
    assert {"15", "18"} <= incoming.parties
    assert incoming.duration_s == 601  # side by side: the longer leg, not the sum
    # The pair is complete: another forward at the same time is another call.
    again = tracker.apply(leg_record("19", 1, 300, joins=True, direction=Direction.OUT, key="co-transfer"))
    assert again is not incoming


async def test_two_incoming_legs_are_two_calls(tracker):
    one = tracker.apply(leg_record("15", 0, 300, joins=True, direction=Direction.IN, key="co-transfer"))
    two = tracker.apply(leg_record("16", 1, 300, joins=True, direction=Direction.IN, key="co-transfer"))
    assert one is not two


async def test_spec_transfer_legs_through_the_real_parsers_are_one_call(tracker):
    from drivers.smdr.nec_sv import NecSvParser
    from drivers.smdr.panasonic import PanasonicParser

    received = datetime(1997, 6, 24, 10, 15, tzinfo=timezone.utc)
    panasonic = PanasonicParser("pbx-pana", tz=timezone.utc)
    legs = [
        record
        # Both legs of a trunk-to-trunk call are printed under the extension that sent it out, on two CO lines.
        for line in (
            "06/24/97 10:08AM 15 1 <I> 00:10'01 431211 TR",
            "06/24/97 10:09AM 15 2 10222P1-202-346-7890 00:09'18 001 FW",
        )
        for record in panasonic.feed(line, received)
    ]
    assert [leg.joins_leg for leg in legs] == [True, True]
    calls = {tracker.apply(leg).call_id for leg in legs}
    assert len(calls) == 1

    nec = NecSvParser("pbx-nec", tz=timezone.utc)
    received = datetime(2024, 12, 9, 11, 10, tzinfo=timezone.utc)
    records = []
    for line in (
        "PIN 11:00 12/09 002 00:02:00 2001 2142623801",
        "PTRS 11:02 12/09 002 00:00:30 2004 2142623801",
        "PIN 11:03 12/09 002 00:01:00 2005 2142623802",
    ):
        records += nec.feed(line, received)
    records += nec.flush(received + timedelta(days=1))
    assert [record.leg_key for record in records] == ["line 002"] * 3
    first, transferred, next_call = (tracker.apply(record) for record in records)
    assert transferred is first and {"2001", "2004"} <= first.parties
    assert next_call is not first  # a new PIN on the line is a new call


async def test_get_call_reads_evicted_calls_back_once(tracker, store):
    calls = [tracker.apply(avaya_record(platform_call_id=str(n), extension=str(2000 + n))) for n in range(120)]
    await tracker.flush()
    first = calls[0]
    loaded = await asyncio.gather(*(tracker.get_call(first.call_id) for _ in range(5)))
    assert all(call is loaded[0] for call in loaded)
    assert loaded[0].platform_call_id == "0"
    assert (await tracker.find_by_platform_call_id("0")).call_id == first.call_id


async def test_platform_id_shared_by_two_calls_is_ambiguous(tracker):
    tracker.apply(avaya_record(source="pbx-a"))
    tracker.apply(avaya_record(source="pbx-b", extension="9999", other_number="555"))
    with pytest.raises(AmbiguousCall):
        await tracker.find_by_platform_call_id("1000014160")


async def test_unknown_ids_are_not_found(tracker):
    with pytest.raises(CallNotFound):
        await tracker.find_by_native_id("nope")
    with pytest.raises(CallNotFound):
        await tracker.find_by_platform_call_id("nope")
    assert await tracker.get_call("00000000-0000-0000-0000-000000000000") is None


async def test_ongoing_calls_survive_a_restart(tracker, store):
    call = tracker.apply(setup_event())
    await tracker.flush()
    restarted = CallTracker(store, EXTENSIONS)
    await restarted.start()
    assert (await restarted.find_by_status("8856", ["ongoing"], 1)).call_id == call.call_id
    restarted.apply(release_event())
    assert restarted.ongoing_count == 0


async def test_open_business_of_ongoing_and_finished_calls_survives_a_restart(tracker, store):
    """A live call and a finished one still waiting for their PBX records, and a multi-record call waiting for its
    last part, are each completed by the record that comes after a restart."""
    now = datetime.now(timezone.utc)
    live = tracker.apply(setup_event("TRS1", at=now))
    ended = tracker.apply(setup_event("TRS2", channel="1/6", calling="01709990000", called="8857", at=now))
    tracker.apply(release_event("TRS2", channel="1/6", at=now + timedelta(seconds=30)))
    first_part = tracker.apply(
        avaya_record(
            start=now - timedelta(hours=1),
            received_at=now,
            extension="8860",
            other_number="01708880000",
            platform_call_id="77",
            more_follows=True,
        )
    )
    await tracker.flush()

    restarted = CallTracker(store, EXTENSIONS)
    await restarted.start()
    later = now + timedelta(seconds=40)
    assert restarted.apply(avaya_record(start=now, received_at=later, platform_call_id="1")).call_id == live.call_id
    record_of_ended = avaya_record(
        start=now, received_at=later, extension="8857", other_number="01709990000", platform_call_id="2"
    )
    assert restarted.apply(record_of_ended).call_id == ended.call_id
    last_part = avaya_record(
        start=now - timedelta(hours=1), received_at=later, extension="8861", other_number="", platform_call_id="77"
    )
    joined = restarted.apply(last_part)
    assert joined.call_id == first_part.call_id
    assert {"8860", "8861"} <= joined.parties
    await restarted.flush()


async def test_correlation_window_is_per_link(store):
    tracker = CallTracker(store, EXTENSIONS, correlation_window_by_link={"slow-pbx": 600})
    await tracker.start()
    live = tracker.apply(setup_event(at=T0))
    tracker.apply(release_event())
    late_clock = avaya_record(source="pbx-main", start=T0 + timedelta(minutes=5), platform_call_id="1")
    assert tracker.apply(late_clock) is not live  # 5 minutes off: beyond the default 120 s window
    skewed = avaya_record(source="slow-pbx", start=T0 + timedelta(minutes=5), platform_call_id="2")
    assert tracker.apply(skewed) is live  # this link's clock is allowed 10 minutes
    await tracker.flush()


async def test_live_calls_waiting_for_a_record_are_bounded(tracker):
    """Recorder calls that no PBX record ever describes must not pile up in memory."""
    for index in range(30):
        tracker.apply(setup_event(f"TRS{index}", at=T0 + timedelta(hours=index)))
        tracker.apply(release_event(f"TRS{index}", at=T0 + timedelta(hours=index, seconds=30)))
    waiting = tracker._records.uncorrelated_live["8856"]
    assert len(waiting) <= 25  # only the last 24 hours are kept
    assert all(call.start_time >= T0 + timedelta(hours=29) - timedelta(hours=24) for call in waiting.values())
