"""Server-Sent Events for the operator surface: `GET /events` (the event feed) and `GET /links/NAME/tap` (a
link's lines as the gateway reads them). Both end a stream whose client falls behind instead of buffering for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, NoReturn

from aiohttp import web

from gateway.api.connections import NOSNIFF
from gateway.errors import ApiError
from gateway.feed import EventFeed, FeedEvent, Subscription, SubscriptionDropped, encode_json, parse_filter
from gateway.watch import LinkWatch

# A comment line this often keeps proxies from closing a quiet stream and finds clients that went away.
KEEPALIVE_S = 15.0
# A client whose socket takes no bytes for this long is gone or stuck: its stream ends.
WRITE_TIMEOUT_S = 10.0
# How long a browser waits before reconnecting (the SSE `retry:` field), in milliseconds.
RECONNECT_MS = 2000
# Missed events read from the store per round trip while a resumed stream catches up.
BACKLOG_PAGE_EVENTS = 500
LAST_EVENT_ID = "Last-Event-ID"

SSE_HEADERS = {
    **NOSNIFF,
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",  # a reverse proxy in front must not hold events back
}


def sse_frame(seq: int | None, name: str, data_json: str) -> bytes:
    """One SSE message. `data_json` is one line of JSON (json.dumps escapes newlines), so it cannot end the
    message early or forge a field."""
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {name}\ndata: {data_json}\n\n".encode()


def event_frame(event: FeedEvent) -> bytes:
    return sse_frame(event.seq or None, event.name, event.data_json())


def json_line(data: Mapping[str, Any]) -> str:
    return encode_json(data)


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    await write(response, f"retry: {RECONNECT_MS}\n\n".encode())
    return response


async def write(response: web.StreamResponse, chunk: bytes) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT_S):
        await response.write(chunk)


def last_event_id(request: web.Request) -> int | None:
    """Where a resumed stream continues: the `Last-Event-ID` header (browsers send it on reconnect), or the
    `lastEventId` parameter for clients that cannot set headers."""
    text = request.headers.get(LAST_EVENT_ID) or request.query.get("lastEventId")
    if text is None or not text.strip():
        return None
    try:
        seq = int(text.strip())
    except ValueError:
        raise ApiError(400, "Invalid Last-Event-ID (an event id, a whole number, is expected)") from None
    if seq < 0:
        raise ApiError(400, "Invalid Last-Event-ID (an event id, a whole number, is expected)")
    return seq


async def send_live(response: web.StreamResponse, subscription: Subscription, cursor: int) -> NoReturn:
    """A subscription's events as they come, each batch in one write, a keep-alive comment when none came in
    KEEPALIVE_S; ends only by raising (SubscriptionDropped, a write timing out, the client gone). Events up to
    `cursor` (sent from the backlog already) are skipped; transient ones (seq 0: link counters, tap lines) have
    no id and always go."""
    while True:
        batch = await subscription.next_batch(KEEPALIVE_S)
        if not batch:
            await write(response, b": keepalive\n\n")
            continue
        frames = []
        for event in batch:
            if event.seq == 0 or event.seq > cursor:
                cursor = max(cursor, event.seq)
                frames.append(event_frame(event))
        if frames:
            await write(response, b"".join(frames))


async def stream_events(request: web.Request, feed: EventFeed) -> web.StreamResponse:
    """The feed from now on, or from after `Last-Event-ID`: first the missed events (from memory or the store),
    then the live ones — every event once, in order, none left out in between."""
    try:
        event_filter = parse_filter(request.query.get("extension"), request.query.get("types"))
    except ValueError as error:
        raise ApiError(400, str(error)) from None
    resume_after = last_event_id(request)
    response = await open_stream(request)
    subscription = feed.subscribe(event_filter)  # before the backlog is read: nothing falls in between
    try:
        cursor = subscription.after_seq if resume_after is None else resume_after
        while cursor < subscription.after_seq:
            page = await feed.missed(cursor, subscription.after_seq, BACKLOG_PAGE_EVENTS)
            if not page:
                break
            for event in page:
                cursor = event.seq
                if event_filter.matches(event):
                    await write(response, event_frame(event))
        await send_live(response, subscription, cursor)
    except (SubscriptionDropped, TimeoutError, ConnectionResetError):
        return response
    finally:
        feed.unsubscribe(subscription)


async def stream_tap(request: web.Request, watch: LinkWatch, link: str) -> web.StreamResponse:
    """A link's lines as the gateway reads them, from now on: `raw` (the line, control bytes as \\xNN), then
    `call` (each record it completed) or `error` (why it was quarantined); `link` when the link goes up or down.
    Nothing is stored for it: a reconnecting tap starts again from the next line."""
    response = await open_stream(request)
    subscription = watch.open_tap(link)
    try:
        await write(response, sse_frame(None, "tap", json_line({"link": link, "text": "tapping; lines follow"})))
        await send_live(response, subscription, 0)
    except (SubscriptionDropped, TimeoutError, ConnectionResetError):
        return response
    finally:
        watch.close_tap(link, subscription)
