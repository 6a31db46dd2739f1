"""What the status page shows first (`GET /status/state`): links, recorders, calls, store. The event stream,
read from the `lastEventId` given here on, keeps the page current."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from gateway.calls import CallTracker
from gateway.config import GatewayConfig
from gateway.errors import StoreError
from gateway.events import LinkHealth
from gateway.feed import EventFeed, call_data
from gateway.ops import recorder_state
from gateway.recording import RecorderControl
from gateway.retention import RetentionPruner
from gateway.store import Store
from gateway.watch import LinkWatch


class Gateway(Protocol):
    """The parts of the running gateway (gateway.service.Gateway) the page shows."""

    config: GatewayConfig
    store: Store
    tracker: CallTracker
    feed: EventFeed
    watch: LinkWatch
    retention: RetentionPruner

    @property
    def links(self) -> Mapping[str, LinkHealth]: ...

    @property
    def recorders(self) -> Mapping[str, RecorderControl]: ...


# Calls listed on the page; a trunk site with more ongoing calls shows the count and these.
MAX_ONGOING_SHOWN = 500
RECENT_FINISHED_SHOWN = 50


async def status_snapshot(gateway: Gateway) -> dict[str, Any]:
    # First: an event after this id may already be in what follows, and the page applies it again (same result);
    # an event before it is in what follows.
    last_event_id = gateway.feed.delivered_seq
    config = gateway.config
    tracker = gateway.tracker
    ongoing = sorted(tracker.ongoing_calls(), key=lambda call: call.start_time, reverse=True)
    try:
        store_bytes: int | None = (await gateway.store.space()).file_bytes
    except StoreError:
        store_bytes = None
    retention = config.store.retention
    return {
        "lastEventId": last_event_id,
        "node": getattr(config, "node", None),
        "links": [
            {
                "name": link.name,
                "format": link.format,
                "url": _shown_url(link.url),
                **gateway.links[link.name].as_dict(),
                **gateway.watch.recent(link.name),
            }
            for link in config.links
        ],
        "recorders": [_recorder(gateway, recorder.name, _shown_url(recorder.url)) for recorder in config.recorders],
        "calls": {
            "ongoing": len(ongoing),
            "ongoingShown": [call_data(call) for call in ongoing[:MAX_ONGOING_SHOWN]],
            "finished": [call_data(call) for call in tracker.recent_finished(RECENT_FINISHED_SHOWN)],
        },
        "store": {
            "path": str(config.store.path),
            "bytes": store_bytes,
            "state": "ok" if gateway.store.write_error is None else "failing",
            "error": gateway.store.write_error,
            "retention": {
                "callsS": retention.calls_s,
                "journalS": retention.journal_s,
                "quarantineS": retention.quarantine_s,
            },
            "pruning": gateway.retention.health.as_dict(),
        },
    }


def _shown_url(url: str) -> str:
    """A URL without any user:password part (no link URL should carry one, but a page is no place for it)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.partition("/")[0]:
        return f"{scheme}://{rest.partition('@')[2]}"
    return url


def _recorder(gateway: Gateway, name: str, url: str) -> dict[str, Any]:
    control = gateway.recorders[name]
    calls = [call for call in gateway.tracker.ongoing_calls() if call.recorder == name]
    recording = sum(1 for call in calls if call.active_recording is not None)
    channels = getattr(control, "device_channels", None)
    return {
        "name": name,
        "url": url,
        "state": recorder_state(control),
        "device": getattr(control, "device_name", None),
        "channels": {
            "total": channels,
            "idle": None if channels is None else max(0, channels - len(calls)),
            "inCall": len(calls) - recording,
            "recording": recording,
        },
        "spanAlarms": dict(getattr(control, "span_alarms", {})),
    }
