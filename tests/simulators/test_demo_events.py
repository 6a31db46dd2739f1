"""The demo's event lines: one per call started or ended, recording started or stopped, and KeepCall."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.feed import CALL_ENDED, CALL_KEPT, CALL_STARTED, LINK_STATE, RECORDING_STARTED, FeedEvent
from simulators.demo_events import describe_event

AT = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
CALL = {
    "callID": "c-1",
    "extension": "8856",
    "direction": "in",
    "calling": "01707392200",
    "called": "8856",
    "recorder": "trunk1",
    "channel": "1/5",
    "start": "2026-11-23T10:00:00+00:00",
    "end": "2026-11-23T10:00:27+00:00",
}


def line(name: str, **extra: object) -> str | None:
    return describe_event(FeedEvent(1, name, AT, {**CALL, **extra}, "8856"))


def test_each_shown_event_is_one_line_naming_the_extension_and_the_call_id() -> None:
    stamp = AT.astimezone().strftime("%H:%M:%S")
    assert line(CALL_STARTED) == f"{stamp}  call started     ext 8856   in 01707392200 -> 8856  callID c-1"
    assert line(CALL_ENDED) == f"{stamp}  call ended       ext 8856   after 27 s  callID c-1"
    started = line(RECORDING_STARTED, manual=True)
    assert started is not None and "recording start  ext 8856   manual (KeepCall manualRecord) on trunk1 1/5" in started
    kept = line(CALL_KEPT, type="do_not_delete", unmark=False)
    assert kept is not None and "KeepCall         ext 8856   do_not_delete marked" in kept


def test_other_events_are_left_to_the_status_page() -> None:
    assert describe_event(FeedEvent(1, LINK_STATE, AT, {"link": "pbx", "state": "up"})) is None
