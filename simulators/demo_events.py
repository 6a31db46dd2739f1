"""What `gateway demo` prints after its banner: one line per call started or ended, per recording started or
stopped (a recorder command) and per KeepCall, read from the gateway's event feed in-process (no log scraping)."""

from __future__ import annotations

from datetime import datetime
from typing import TextIO

from gateway.feed import (
    CALL_ENDED,
    CALL_KEPT,
    CALL_STARTED,
    RECORDING_STARTED,
    RECORDING_STOPPED,
    EventFeed,
    EventFilter,
    FeedEvent,
    Subscription,
    SubscriptionDropped,
)

SHOWN_EVENTS = frozenset({CALL_STARTED, CALL_ENDED, RECORDING_STARTED, RECORDING_STOPPED, CALL_KEPT})
# How long the printer waits for the next event before looking again (nothing is printed for a quiet spell).
EVENT_WAIT_S = 5.0


def _seconds_between(start: object, end: object) -> str:
    if not isinstance(start, str) or not isinstance(end, str):
        return "?"
    return f"{(datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds():.0f} s"


def describe_event(event: FeedEvent) -> str | None:
    """The event as one line (`HH:MM:SS  what  ext N  …  callID …`), or None for events the demo does not show."""
    data = event.data
    extension = data.get("extension") or "-"
    if event.name == CALL_STARTED:
        what = (
            f"call started     ext {extension:<6} {data.get('direction')} {data.get('calling')} -> {data.get('called')}"
        )
    elif event.name == CALL_ENDED:
        what = f"call ended       ext {extension:<6} after {_seconds_between(data.get('start'), data.get('end'))}"
    elif event.name == RECORDING_STARTED:
        how = "manual (KeepCall manualRecord)" if data.get("manual") else "automatic (recording mode)"
        what = f"recording start  ext {extension:<6} {how} on {data.get('recorder')} {data.get('channel')}"
    elif event.name == RECORDING_STOPPED:
        what = f"recording stop   ext {extension:<6} on {data.get('recorder')} {data.get('channel')}"
    elif event.name == CALL_KEPT:
        change = "unmarked" if data.get("unmark") else "marked"
        what = f"KeepCall         ext {extension:<6} {data.get('type')} {change}"
    else:
        return None
    return f"{event.at.astimezone().strftime('%H:%M:%S')}  {what}  callID {data.get('callID')}"


def subscribe(feed: EventFeed) -> Subscription:
    """Subscribe before the traffic starts, so that the first calls are shown too (they queue until printed)."""
    return feed.subscribe(EventFilter(names=SHOWN_EVENTS))


async def print_events(feed: EventFeed, subscription: Subscription, out: TextIO) -> None:
    """Print each event as it is delivered until the feed ends the subscription (the gateway is stopping).

    Writes to the terminal like the banner and `gateway tap` do: a line at a time, flushed.
    """
    try:
        while True:
            event = await subscription.next(EVENT_WAIT_S)
            line = describe_event(event) if event is not None else None
            if line is not None:
                out.write(line + "\n")
                out.flush()
    except SubscriptionDropped:  # the demo stops this task before the gateway: this is the feed dropping a laggard
        out.write("(no more event lines: the output fell too far behind; /status and /events still show them)\n")
        out.flush()
    finally:
        feed.unsubscribe(subscription)
