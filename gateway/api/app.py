"""The aiohttp application: `/verba/api` dispatch, error → envelope mapping, the ops paths (`/healthz`, `/livez`,
`/metrics`, for the networks in http.ops_networks), and the server runner."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from multidict import MultiDict

from gateway.api import connections
from gateway.api.auth import Authenticator, address_in_networks
from gateway.api.connections import NO_STORE, NOSNIFF, ApiRunner
from gateway.api.outcomes import error_outcome
from gateway.api.render import (
    NoPayload,
    RenderedResponse,
    ResponseType,
    TokenPayload,
    render_error,
    render_success,
)
from gateway.api.verba import (
    ACTION_REQUEST_TOKEN,
    ACTIONS,
    KNOWN_ACTIONS,
    ActionContext,
    ActionRequest,
    check_parameter_lengths,
    missing,
)
from gateway.errors import ApiError

log = structlog.get_logger(__name__)

API_PATH = "/verba/api"
HEALTH_PATH = "/healthz"
LIVE_PATH = "/livez"
METRICS_PATH = "/metrics"
HEALTH_OK = "ok"  # health_report's status when nothing is degraded
MESSAGE_OPS_NOT_ALLOWED = "Access from this address is not allowed (http.ops_networks)"
# The `action` label of an API request whose action is missing or unknown: label values must be a bounded set.
OTHER_ACTION = "other"
# The `code` of an API request whose client went away before the answer (as nginx logs it): no status was sent.
CLIENT_CLOSED_REQUEST = 499
# Verba clients send URLs up to 4000 characters; GETs up to 8 KiB must work, so the request line
# (method + URL + version) and header fields get twice that.
MAX_REQUEST_LINE_BYTES = 16 * 1024
MAX_HEADER_FIELD_BYTES = 16 * 1024
# A request's form fields are a few hundred bytes; aiohttp's 1 MiB default, held by a thousand
# connections at once, would be a gigabyte.
MAX_BODY_BYTES = 64 * 1024
# On SIGTERM, requests in flight (a `status=next` wait can last a minute) get this long to finish.
SHUTDOWN_TIMEOUT_S = 5.0
# An unknown action is echoed as the envelope's type only when it looks like an action name.
_ACTION_NAME = re.compile(r"[A-Za-z]{1,64}")
UNKNOWN_ACTION_TYPE = "Unknown"

MESSAGE_INTERNAL = "Internal error; the gateway logged the details."
MESSAGE_MALFORMED_BODY = "Malformed request body"
MESSAGE_BODY_TOO_LARGE = f"Request body too large (at most {MAX_BODY_BYTES} bytes)"


@dataclass(frozen=True, slots=True)
class ApiServices:
    """Everything the HTTP layer needs; it never touches a driver or the store directly."""

    auth: Authenticator
    actions: ActionContext
    health: Callable[[], Awaitable[dict[str, Any]]]
    ops_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    metrics: Callable[[web.Request], Awaitable[web.StreamResponse]]  # GET /metrics
    # (action: a known one or OTHER_ACTION, HTTP status, seconds) for each Verba API request answered
    observe_request: Callable[[str, int, float], None]


SERVICES = web.AppKey("services", ApiServices)
# Per-request timing lines cost a few microseconds each; only measured when they will be logged.
TIMING_LOG = web.AppKey("timing_log", bool)


async def _read_params(request: web.Request) -> MultiDict[str]:
    """Query-string parameters, overridden by form fields on POST (docs/api.md §1); 400/413 for a bad body."""
    if request.method != "POST":
        return request.query  # type: ignore[return-value]
    params: MultiDict[str] = MultiDict(request.query)
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, MESSAGE_BODY_TOO_LARGE) from None
    except Exception:
        # The body is the client's: whatever decoding it raises (multipart without a boundary or a
        # name, an unknown charset, invalid UTF-8, gzip that is not gzip) is a malformed request.
        raise ApiError(400, MESSAGE_MALFORMED_BODY) from None
    for name, value in form.items():
        if isinstance(value, str):
            params[name] = value
    return params


def _action_type(action: str) -> str:
    """The envelope's `type`: the action when it is a plain name, so that nothing else is echoed."""
    if action in KNOWN_ACTIONS or _ACTION_NAME.fullmatch(action):
        return action
    return UNKNOWN_ACTION_TYPE


def _query_response_type(request: web.BaseRequest) -> ResponseType:
    """The format asked for in the query string, for errors found before the parameters are read; else XML."""
    try:
        return ResponseType.parse(request.query.get("responseType"))
    except Exception:  # an invalid value, or a URL that cannot even be split into parameters
        return ResponseType.XML


def error_page(request: web.BaseRequest, status: int, message: str) -> web.Response:
    """An error envelope for an answer that no action gave (parser errors, 404, 405, 417, overload)."""
    try:
        action_type = _action_type((request.query.get("action") or "").strip())
    except Exception:
        action_type = UNKNOWN_ACTION_TYPE
    return _error(_query_response_type(request), action_type, status, message)


def _respond(rendered: RenderedResponse, status: int = 200) -> web.Response:
    return web.Response(
        body=rendered.body,
        status=status,
        headers={"Content-Type": rendered.content_type, **NOSNIFF, "Cache-Control": "no-store"},
    )


def _error(response_type: ResponseType, action: str, status: int, message: str) -> web.Response:
    return _respond(render_error(response_type, action, message), status)


def verba_api_handler(services: ApiServices, timing_log: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The `/verba/api` handler, with what every request uses bound once (not looked up on the app per request)."""

    async def verba_api(request: web.Request) -> web.Response:
        started = time.perf_counter()
        action = ""
        action_type = UNKNOWN_ACTION_TYPE
        response_type: ResponseType | None = None  # known once the parameters are read
        status = 200
        try:
            params = request.query if request.method != "POST" else await _read_params(request)
            action = (params.get("action") or "").strip()
            action_type = _action_type(action)
            response_type = ResponseType.XML  # an invalid responseType is answered in XML (docs/api.md)
            response_type = ResponseType.parse(params.get("responseType"))
            if not action:
                raise missing("action")
            if action not in KNOWN_ACTIONS:
                raise ApiError(400, "Unknown action")
            check_parameter_lengths(params)
            authorization = request.headers.get("Authorization")
            if action == ACTION_REQUEST_TOKEN:
                token = await services.auth.request_token(
                    api_key=params.get("apiKey"),
                    user_name=params.get("userName"),
                    password=params.get("password"),
                    authorization=authorization,
                    remote=request.remote,
                )
                return _respond(render_success(response_type, action, TokenPayload(token)))
            principal = await services.auth.authenticate(
                api_key=params.get("apiKey"),
                token=params.get("token"),
                authorization=authorization,
                remote=request.remote,
            )
            payload = await ACTIONS[action](services.actions, ActionRequest(action, params, principal))
            return _respond(render_success(response_type, action, payload or NoPayload()))
        except asyncio.CancelledError:  # the client went away (a `status=next` wait it gave up on)
            status = CLIENT_CLOSED_REQUEST
            raise
        except Exception as error:
            if response_type is None:  # the body could not be read: the query string may still say the format
                response_type = _query_response_type(request)
            outcome = error_outcome(action, error)
            if outcome is None:
                status = 500
                log.exception("api request failed", action=action_type)
                return _error(response_type, action_type, status, MESSAGE_INTERNAL)
            status, message = outcome
            if status in (401, 403):
                log.info(
                    "api request refused", action=action_type, status=status, reason=message, remote=request.remote
                )
            return _error(response_type, action_type, status, message)
        finally:
            elapsed_s = time.perf_counter() - started
            services.observe_request(action if action in KNOWN_ACTIONS else OTHER_ACTION, status, elapsed_s)
            if timing_log:
                log.debug(
                    "api request",
                    action=action_type,
                    method=request.method,
                    status=status,
                    ms=round(elapsed_s * 1000, 2),
                )

    return verba_api


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def ops_only(handler: Handler) -> Handler:
    """The ops paths need no key, so they answer only clients in http.ops_networks (by TCP peer address; a
    `X-Forwarded-For` header proves nothing) and refuse the others with 403."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if not address_in_networks(request.remote, request.app[SERVICES].ops_networks):
            log.info("ops request refused", path=request.path, remote=request.remote)
            return web.json_response({"error": MESSAGE_OPS_NOT_ALLOWED}, status=403, headers=NO_STORE)
        return await handler(request)

    return guarded


async def healthz(request: web.Request) -> web.Response:
    """The health report; 503 while degraded, so that a monitor reading only the status code notices."""
    report = await request.app[SERVICES].health()
    status = 200 if report.get("status") == HEALTH_OK else 503
    return web.json_response(report, status=status, headers=NO_STORE)


async def livez(_request: web.Request) -> web.Response:
    """200 while the process serves requests, whatever the state of its links, recorders and store."""
    return web.json_response({"status": "live"}, headers=NO_STORE)


async def metrics(request: web.Request) -> web.StreamResponse:
    response = await request.app[SERVICES].metrics(request)
    response.headers.update(NOSNIFF)
    return response


def create_app(services: ApiServices) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SERVICES] = services
    app[TIMING_LOG] = log.is_enabled_for(logging.DEBUG)
    verba_api = verba_api_handler(services, app[TIMING_LOG])
    app.router.add_route("GET", API_PATH, verba_api)
    app.router.add_route("POST", API_PATH, verba_api)
    app.router.add_get(HEALTH_PATH, ops_only(healthz))
    app.router.add_get(LIVE_PATH, ops_only(livez))
    app.router.add_get(METRICS_PATH, ops_only(metrics))
    return app


def create_runner(app: web.Application, max_connections: int) -> web.AppRunner:
    """A runner whose handlers are cancelled when the client goes away (ends `status=next` waits),
    whose every error page is an envelope, and whose connections are capped and timed (connections.py)."""
    return ApiRunner(
        app,
        error_page=error_page,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,  # aiohttp's access log would write query strings, i.e. API keys and passwords
        handler_cancellation=True,
        keepalive_timeout=connections.IDLE_TIMEOUT_S,
        max_line_size=MAX_REQUEST_LINE_BYTES,
        max_field_size=MAX_HEADER_FIELD_BYTES,
        max_connections=max_connections,
        header_timeout_s=connections.HEADER_TIMEOUT_S,
    )


def ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context
