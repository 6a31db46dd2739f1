"""The API's HTTP connections: a cap per server, a time limit on reading a request head, and
error pages in the caller's envelope for everything aiohttp answers by itself.

aiohttp answers some requests before any handler or middleware runs: requests its parser
refuses, unknown paths and methods, `Expect` values. Its pages for those are `text/plain` and
repeat the request line, and its `aiohttp.server` logger writes that line (keys, tokens,
passwords) at ERROR. Here they go through one `ErrorPage` callback instead, and the log carries
only the kind of error.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    ContentEncodingError,
    HttpProcessingError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

log = structlog.get_logger(__name__)

# A client sends its request head in one or two packets; 10 s is generous for a congested WAN
# link, and a slow ("slowloris") client holds its socket no longer than that.
HEADER_TIMEOUT_S = 10.0
# A keep-alive connection idle this long is closed; on a LAN a client reconnects in a millisecond.
IDLE_TIMEOUT_S = 30.0
# File descriptors kept free for the store, the links, the recorders and log files.
FD_RESERVE = 64

# On every answer: browsers must not guess a type other than the one sent (a text error page sniffed as HTML).
# Each response sets it itself: an on_response_prepare signal cost ~5 % of an API answer's time.
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
NO_STORE = {"Cache-Control": "no-store", **NOSNIFF}

MESSAGE_MALFORMED_REQUEST = "Malformed HTTP request"
MESSAGE_TOO_LONG = "Request line or header field too long"
MESSAGE_BAD_METHOD = "Malformed HTTP method"
MESSAGE_BAD_ENCODING = "Unsupported or malformed Content-Encoding or Transfer-Encoding"
MESSAGE_TIMEOUT = "The request took too long"
MESSAGE_INTERNAL = "Internal error; the gateway logged the details."
MESSAGE_BAD_EXPECT = "Unsupported Expect header; only 100-continue is understood"
MESSAGE_TOO_MANY_CONNECTIONS = "Too many connections; try again shortly"

# (request, HTTP status, message) → the response, in the envelope the request asked for if it can tell.
EXPECT_CONTINUE = "100-continue"

ErrorPage = Callable[[web.BaseRequest, int, str], web.Response]
_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _parser_error_message(error: BaseException | None) -> str:
    """A fixed message for what the parser refused; its own text quotes the request, so never used."""
    if isinstance(error, LineTooLong):
        return MESSAGE_TOO_LONG
    if isinstance(error, BadHttpMethod):
        return MESSAGE_BAD_METHOD
    if isinstance(error, PayloadEncodingError | ContentEncodingError):
        return MESSAGE_BAD_ENCODING
    return MESSAGE_MALFORMED_REQUEST


def _client_caused(error: BaseException | None) -> bool:
    return isinstance(error, HttpProcessingError | RequestPayloadError | ConnectionError)


def _guard(handler: _Handler, error_page: ErrorPage) -> _Handler:
    """Every answer of the application as an envelope: router 404/405, `Expect` 417, and bugs.

    The router's and the `Expect` handler's exceptions are raised outside the middleware chain,
    so this wraps the application's entry point itself.
    """

    async def guarded(request: web.BaseRequest) -> web.StreamResponse:
        expect = request.headers.get(hdrs.EXPECT)
        if expect is not None and expect.lower() != EXPECT_CONTINUE:
            # aiohttp's own 417 quotes the value, and fails (500) on one it cannot encode.
            return error_page(request, 417, MESSAGE_BAD_EXPECT)
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            response = error_page(request, error.status, HTTPStatus(error.status).phrase)
            if (allowed := error.headers.get("Allow")) is not None:
                response.headers["Allow"] = allowed
            return response
        except Exception:
            log.exception("api request failed", method=request.method, path=request.path)
            return error_page(request, 500, MESSAGE_INTERNAL)

    return guarded


def connection_cap(wanted: int) -> int:
    """`wanted`, or fewer when the open-file limit would run out first (then EMFILE stops every accept). A soft
    limit below what is wanted is raised first, as far as the hard limit allows (systemd's default soft limit is
    1,024, its hard limit 524,288)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft - FD_RESERVE >= wanted:
        return wanted
    needed = wanted + FD_RESERVE
    raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if raised > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
        if soft - FD_RESERVE >= wanted:
            return wanted
    cap = max(1, soft - FD_RESERVE)
    log.warning(
        "api connection cap lowered to fit the open-file limit; raise `ulimit -n` to allow more",
        wanted=wanted,
        cap=cap,
        open_file_limit=soft,
    )
    return cap


class ApiServer(web.Server):
    """aiohttp's low-level server with the guard, the cap and the head timeout of this module."""

    def __init__(
        self,
        handler: _Handler,
        *,
        error_page: ErrorPage,
        max_connections: int,
        header_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(_guard(handler, error_page), **kwargs)
        self.error_page = error_page
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.refused_count = 0
        self._refusing = False

    def __call__(self) -> RequestHandler:
        return ApiRequestHandler(self, loop=self._loop, **self._kwargs)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def admit(self) -> bool:
        """Whether a new connection may be served; logs once when the cap is hit and once when it is not any more."""
        if self.open_connections < self.max_connections:
            if self._refusing:
                self._refusing = False
                log.info("api connections below the cap again", cap=self.max_connections, refused=self.refused_count)
            return True
        self.refused_count += 1
        if not self._refusing:
            self._refusing = True
            log.warning(
                "api connection cap reached; new connections are refused until some close",
                cap=self.max_connections,
            )
        else:
            log.debug("api connection refused: cap reached", cap=self.max_connections)
        return False


class ApiRequestHandler(RequestHandler):
    """One connection: refused when the server is full, closed when a request head comes too slowly."""

    __slots__ = ("_head_timer", "_refused")

    def __init__(self, manager: ApiServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        assert isinstance(server, ApiServer)
        if not server.admit():
            self._refused = True
            self._manager = None  # never registered with the server: nothing to unregister
            response = server.error_page(_REFUSED_REQUEST, 503, MESSAGE_TOO_MANY_CONNECTIONS)
            transport.write(_raw_response(response))  # type: ignore[attr-defined]
            transport.close()
            return
        super().connection_made(transport)
        self._arm_head_timer(server.header_timeout_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        server = self._manager
        assert server is None or isinstance(server, ApiServer)
        if data and server is not None and self._waiter is not None and not self._waiter.done():
            self._arm_head_timer(server.header_timeout_s)  # the first bytes of the next request's head
        heads_before = self._request_count
        super().data_received(data)
        if self._request_count != heads_before:
            self._cancel_head_timer()

    def _arm_head_timer(self, timeout_s: float) -> None:
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        waiting_for_head = self._waiter is not None and not self._waiter.done() and not self._messages
        if waiting_for_head and self.transport is not None:
            log.debug("api connection closed: no complete request head in time", remote=self._peer())
            self.force_close()

    def _peer(self) -> str | None:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The error page of a request the parser refused or a handler failed; never quotes the request."""
        if status >= 500 and not _client_caused(exc):
            log.error("api request failed", status=status, error=type(exc).__name__ if exc else None, exc_info=exc)
        else:
            # The exception's own text holds the raw request line: only its kind is logged.
            log.debug(
                "api request refused by the HTTP parser", status=status, error=type(exc).__name__, remote=self._peer()
            )
        if request.writer.output_size > 0:
            raise ConnectionError("the response was already started; the connection is dropped")
        if status == 504:
            text = MESSAGE_TIMEOUT
        elif status >= 500:
            text = MESSAGE_INTERNAL
        else:
            text = _parser_error_message(exc)
        server = self._manager
        error_page = server.error_page if isinstance(server, ApiServer) else _plain_error_page
        response = error_page(request, status, text)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error lines: a body the client broke is the client's business, at debug."""
        error = kw.get("exc_info")
        if _client_caused(error if isinstance(error, BaseException) else None):
            log.debug("api request body unreadable", error=type(error).__name__, remote=self._peer())
        else:
            super().log_exception(*args, **kw)


def _plain_error_page(_request: web.BaseRequest, status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, headers=NOSNIFF)


class _RefusedRequest:
    """What the error page reads of a request that never came: no query, so the default format."""

    query: dict[str, str] = {}
    method = ""
    path = ""


_REFUSED_REQUEST: Any = _RefusedRequest()


def _raw_response(response: web.Response) -> bytes:
    """A complete HTTP/1.1 response with `Connection: close`, written without a request to answer."""
    body = response.body if isinstance(response.body, bytes) else b""
    status = HTTPStatus(response.status)
    head = [f"HTTP/1.1 {status.value} {status.phrase}"]
    head.extend(f"{name}: {value}" for name, value in response.headers.items() if name.lower() != "content-length")
    head.append(f"Content-Length: {len(body)}")
    head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class ApiRunner(web.AppRunner):
    """An AppRunner whose server is an ApiServer."""

    def __init__(
        self,
        app: web.Application,
        *,
        error_page: ErrorPage,
        max_connections: int,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._error_page = error_page
        self._max_connections = max_connections
        self._header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        # The application builds its Server (loop, freeze, debug, handler arguments); this one
        # takes over its handler and settings so that nothing of that wiring is copied here.
        plain = await super()._make_server()
        return ApiServer(
            plain.request_handler,
            error_page=self._error_page,
            max_connections=connection_cap(self._max_connections),
            header_timeout_s=self._header_timeout_s,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
