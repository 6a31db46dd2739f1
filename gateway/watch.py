"""What the operator surface sees of the links: state changes and quarantined lines go to the event feed, every
line goes to the live taps that are open (`GET /links/NAME/tap`), and the last few lines of each link stay in
memory for the status page. Implements the drivers' `LinkWatcher`."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from drivers.smdr.link import LinkWatcher
from drivers.smdr.show import describe, printable
from drivers.transport import FramedLine
from gateway.events import CallRecord, LinkHealth, LinkState
from gateway.feed import LINE_QUARANTINED, LINK_COUNTS, LINK_STATE, EventFeed, EventFilter, FeedEvent, Subscription
from gateway.model import utc_now

log = structlog.get_logger(__name__)

# Lines of each link kept for the status page (raw, at most 4 KiB each: the transport's line cap).
RECENT_LINES = 12
RECENT_QUARANTINED = 12
TAP_RAW = "raw"
TAP_CALL = "call"
TAP_ERROR = "error"
TAP_LINK = "link"
# A link's counters go to the status page at most this often (`link.counts`, not stored).
LINK_COUNTS_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class _Seen:
    at: datetime
    raw: bytes
    reason: str | None = None


class LinkWatch(LinkWatcher):
    def __init__(self, feed: EventFeed, health: Mapping[str, LinkHealth]) -> None:
        self._feed = feed
        self._health = health
        self._counts_due: dict[str, asyncio.TimerHandle] = {}
        self._recent: dict[str, deque[_Seen]] = defaultdict(lambda: deque(maxlen=RECENT_LINES))
        self._quarantined: dict[str, deque[_Seen]] = defaultdict(lambda: deque(maxlen=RECENT_QUARANTINED))
        self._taps: dict[str, set[Subscription]] = defaultdict(set)

    # ---- LinkWatcher

    def state_changed(self, link: str, state: LinkState) -> None:
        self._feed.publish(LINK_STATE, {"link": link, "state": state.value})
        self._tap(link, TAP_LINK, state.value, utc_now())
        self._counts_soon(link)

    def line_quarantined(self, link: str, line: FramedLine, reason: str, seq: int) -> None:
        self._quarantined[link].append(_Seen(line.received_at, line.raw, reason))
        self._feed.publish(
            LINE_QUARANTINED,
            {
                "link": link,
                "seq": seq,
                "reason": reason,
                "raw": printable(line.raw),
                "at": line.received_at.isoformat(),
            },
        )

    def line_read(self, link: str, line: FramedLine, records: Sequence[CallRecord], reason: str | None) -> None:
        self._recent[link].append(_Seen(line.received_at, line.raw, reason))
        self._counts_soon(link)
        if not self._taps.get(link):
            return
        self._tap(link, TAP_RAW, printable(line.raw), line.received_at)
        if reason is not None:
            self._tap(link, TAP_ERROR, reason, line.received_at)
        for record in records:
            self._tap(link, TAP_CALL, describe(record), record.received_at)

    # ---- counters

    def _counts_soon(self, link: str) -> None:
        if link not in self._counts_due and self._feed.subscriber_count:
            loop = asyncio.get_running_loop()
            self._counts_due[link] = loop.call_later(LINK_COUNTS_INTERVAL_S, self._publish_counts, link)

    def _publish_counts(self, link: str) -> None:
        self._counts_due.pop(link, None)
        health = self._health.get(link)
        if health is not None:
            lines = self.recent(link)["lines"]  # the page's "last lines", current without a tap of its own
            self._feed.publish_transient(LINK_COUNTS, {"link": link, **health.as_dict(), "lines": lines})

    # ---- live taps

    def open_tap(self, link: str) -> Subscription:
        subscription = Subscription(EventFilter(), 0)
        self._taps[link].add(subscription)
        return subscription

    def close_tap(self, link: str, subscription: Subscription) -> None:
        self._taps[link].discard(subscription)

    def close(self) -> None:
        """Every live tap ends and no more counters are sent (the gateway is stopping)."""
        for timer in self._counts_due.values():
            timer.cancel()
        self._counts_due.clear()
        for taps in self._taps.values():
            for subscription in taps:
                subscription.drop()
            taps.clear()

    def _tap(self, link: str, kind: str, text: str, at: datetime) -> None:
        taps = self._taps.get(link)
        if not taps:
            return
        event = FeedEvent(0, kind, at, {"link": link, "kind": kind, "at": at.isoformat(), "text": text})
        for subscription in list(taps):
            if not subscription.offer(event):
                log.info("live tap too slow; dropped", link=link)
                taps.discard(subscription)
                subscription.drop()

    # ---- status page

    def recent(self, link: str) -> dict[str, Any]:
        return {
            "lines": [{"at": seen.at.isoformat(), "raw": printable(seen.raw)} for seen in self._recent.get(link, ())],
            "quarantined": [
                {"at": seen.at.isoformat(), "reason": seen.reason, "raw": printable(seen.raw)}
                for seen in self._quarantined.get(link, ())
            ],
        }
