"""The operator surface beside `/verba/api`: the status page, the event stream, live taps and the quarantine.

All of it shows phone numbers, so every path needs an API key (the `apiKey` parameter or an `X-Api-Key` header)
under the key's network rules, or a token. Errors are JSON (`{"error": …}`) with the HTTP status, except for the
page itself, which answers a browser in plain text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from importlib import resources
from typing import Any

from aiohttp import web

from drivers.smdr.show import printable
from gateway.api.auth import Authenticator
from gateway.api.connections import NO_STORE, NOSNIFF
from gateway.api.streams import stream_events, stream_tap
from gateway.errors import ApiError, StoreError
from gateway.feed import EventFeed
from gateway.store import QuarantineEntry
from gateway.watch import LinkWatch

STATUS_PATH = "/status"
STATE_PATH = "/status/state"
ASSETS_PATH = "/status/assets"
EVENTS_PATH = "/events"
API_KEY_HEADER = "X-Api-Key"
QUARANTINE_PAGE_DEFAULT = 100
QUARANTINE_PAGE_MAX = 1000
# The page's own files, served from the package (no internet on site, no build step).
ASSETS = {"status.js": "text/javascript", "status.css": "text/css"}
_STATIC = resources.files("gateway.api") / "static"


@dataclass(frozen=True, slots=True)
class OperatorServices:
    feed: EventFeed
    watch: LinkWatch
    link_names: frozenset[str]
    status: Callable[[], Awaitable[dict[str, Any]]]  # the page's first state; events keep it current
    # (link, before_seq, limit) → quarantined lines, newest first
    quarantine: Callable[[str, int | None, int], Awaitable[list[QuarantineEntry]]]


OPERATOR = web.AppKey("operator", OperatorServices)
AUTH = web.AppKey("operator_auth", Authenticator)


def add_routes(app: web.Application, services: OperatorServices, auth: Authenticator) -> None:
    app[OPERATOR] = services
    app[AUTH] = auth
    app.router.add_get("/", _redirect_to_status)
    app.router.add_get(STATUS_PATH, _status_page)
    app.router.add_get(STATE_PATH, _json_errors(_status_state))
    app.router.add_get(ASSETS_PATH + "/{name}", _asset)
    app.router.add_get(EVENTS_PATH, _json_errors(_events))
    app.router.add_get("/links/{link}/tap", _json_errors(_tap))
    app.router.add_get("/links/{link}/quarantine", _json_errors(_quarantine))


async def authenticate(request: web.Request) -> None:
    await request.app[AUTH].authenticate_operator(
        api_key=request.query.get("apiKey") or request.headers.get(API_KEY_HEADER),
        token=request.query.get("token"),
        authorization=request.headers.get("Authorization"),
        remote=request.remote,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_errors(handler: Handler) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            await authenticate(request)
            return await handler(request)
        except ApiError as error:
            return web.json_response({"error": error.message}, status=error.http_status, headers=_NO_STORE)
        except StoreError:
            return web.json_response({"error": STORE_REFUSES_READS}, status=503)

    return answer


_NO_STORE = NO_STORE
STORE_REFUSES_READS = "the store refuses reads; try again later"


async def _redirect_to_status(request: web.Request) -> web.StreamResponse:
    # The query string goes along: a bookmarked `/?apiKey=…` lands on the page with its key.
    location = STATUS_PATH + (f"?{request.query_string}" if request.query_string else "")
    raise web.HTTPFound(location, headers=NOSNIFF)


async def _status_page(request: web.Request) -> web.StreamResponse:
    try:
        await authenticate(request)
    except ApiError as error:
        return web.Response(text=error.message + "\n", status=error.http_status, headers=_NO_STORE)
    except StoreError:  # a token the store must be asked about, and it cannot answer
        return web.Response(text=STORE_REFUSES_READS + "\n", status=503, headers=_NO_STORE)
    html = (_STATIC / "status.html").read_bytes()
    return web.Response(body=html, content_type="text/html", charset="utf-8", headers=_page_headers())


def _page_headers() -> dict[str, str]:
    # Everything the page runs is ours: no inline script, nothing from elsewhere.
    return {
        **_NO_STORE,
        "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        "Referrer-Policy": "no-referrer",
    }


async def _asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    body = (_STATIC / name).read_bytes()
    return web.Response(
        body=body, content_type=content_type, charset="utf-8", headers={"Cache-Control": "no-cache", **NOSNIFF}
    )


async def _status_state(request: web.Request) -> web.StreamResponse:
    return web.json_response(await request.app[OPERATOR].status(), headers=_NO_STORE)


async def _events(request: web.Request) -> web.StreamResponse:
    return await stream_events(request, request.app[OPERATOR].feed)


def _link(request: web.Request) -> str:
    name = request.match_info["link"]
    if name not in request.app[OPERATOR].link_names:
        raise ApiError(404, "No such link")
    return name


async def _tap(request: web.Request) -> web.StreamResponse:
    return await stream_tap(request, request.app[OPERATOR].watch, _link(request))


async def _quarantine(request: web.Request) -> web.StreamResponse:
    """`?before=SEQ&limit=N`: the link's quarantined lines, newest first; `next` is the `before` of the next page."""
    link = _link(request)
    before = _int_param(request, "before", None, 1, None)
    limit = _int_param(request, "limit", QUARANTINE_PAGE_DEFAULT, 1, QUARANTINE_PAGE_MAX)
    assert limit is not None
    entries = await request.app[OPERATOR].quarantine(link, before, limit)
    return web.json_response(
        {
            "link": link,
            "lines": [
                {
                    "seq": entry.seq,
                    "journalSeq": entry.journal_seq,
                    "at": entry.received_at.astimezone(UTC).isoformat(),
                    "reason": entry.reason,
                    "raw": printable(entry.raw),
                }
                for entry in entries
            ],
            "next": entries[-1].seq if len(entries) == limit else None,
        },
        headers=_NO_STORE,
    )


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int | None) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"Invalid parameter '{name}' (a whole number is expected)") from None
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f"at least {low}"
        raise ApiError(400, f"Invalid parameter '{name}' ({bound})")
    return value
