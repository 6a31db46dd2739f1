"""The API against a hostile client (issue 11): envelopes for every refusal, bounded waits and
parameters, slow connections closed, a cap on connections. Real sockets on loopback."""

from __future__ import annotations

import asyncio
import gzip
import time
import xml.etree.ElementTree as ET

import pytest

from gateway.api import connections
from gateway.api.verba import MAX_CHARS_BY_PARAMETER
from gateway.service import Gateway
from tests.gateway.hostile_http import (
    HOSTILE_NEXT_WINDOW_S,
    HOSTILE_OPEN_KEY,
    RawResponse,
    hostile_config,
    raw_exchange,
    raw_request,
)

FORM = "application/x-www-form-urlencoded"
LOOKUP = f"action=GetCallID&apiKey={HOSTILE_OPEN_KEY}&extension=8856&status=last"
SCRIPT = "<script>alert(1)</script>"


def assert_refusal(response: RawResponse, status: int, response_type: str = "XML") -> None:
    assert response.status == status, response
    assert response.headers.get("x-content-type-options") == "nosniff"
    assert response.envelope_code(response_type) == 2
    assert b"<script" not in response.body.lower() and b"alert(" not in response.body


# ---- finding 1: bodies that cannot be decoded


@pytest.mark.parametrize(
    ("content_type", "extra_headers", "body"),
    [
        ("multipart/form-data", {}, LOOKUP.encode()),  # no boundary
        ("multipart/form-data; boundary=xx", {}, LOOKUP.encode()),  # boundary never found
        (f"{FORM}; charset=bogus", {}, LOOKUP.encode()),
        (FORM, {}, LOOKUP.encode() + b"&x=\xff"),  # invalid UTF-8 (a raw 0xFF byte)
        (
            "multipart/form-data; boundary=xx",
            {},
            b"--xx\r\nContent-Disposition: form-data\r\n\r\nv\r\n--xx--\r\n",
        ),  # no name
        (
            "multipart/form-data; boundary=xx",
            {},
            b"--xx\r\nContent-Disposition: form-data; name=a\r\nContent-Transfer-Encoding: bogus\r\n\r\nv\r\n--xx--\r\n",
        ),
        ("multipart/form-data; boundary=xx", {}, b"--xx\r\nContent-Disposition: form-data; name=a\r\n\r\nunterminated"),
        (FORM, {"Content-Encoding": "gzip"}, b"this is not gzip"),
        (FORM, {"Content-Encoding": "deflate"}, b"nor is this deflate"),
        (FORM, {"Content-Encoding": "br"}, b"brotli is not installed"),
    ],
)
@pytest.mark.parametrize("response_type", ["XML", "JSON"])
async def test_a_body_that_cannot_be_decoded_is_a_400_envelope(
    hostile_gateway, content_type, extra_headers, body, response_type
):
    request = raw_request(
        "POST",
        f"/verba/api?responseType={response_type}",
        headers={"Content-Type": content_type, **extra_headers},
        body=body,
    )
    response = await raw_exchange(hostile_gateway.port, request)
    # The body's encoding is refused before the query is read when the parser itself rejects it: XML then.
    assert_refusal(
        response, 400, response_type if response.headers["content-type"].startswith("application/json") else "XML"
    )


async def test_a_body_over_the_limit_is_a_413_envelope_even_when_it_only_grows_once_unzipped(hostile_gateway):
    for headers, body in (
        ({}, b"extension=" + b"1" * 70_000),
        ({"Content-Encoding": "gzip"}, gzip.compress(b"extension=" + b"1" * 2_000_000)),
    ):
        request = raw_request("POST", "/verba/api", headers={"Content-Type": FORM, **headers}, body=body)
        assert_refusal(await raw_exchange(hostile_gateway.port, request), 413)


async def test_a_good_multipart_form_still_works(hostile_gateway):
    body = (
        b"".join(
            b"--xx\r\nContent-Disposition: form-data; name=%s\r\n\r\n%s\r\n" % (name.encode(), value.encode())
            for name, value in (
                ("action", "GetCallID"),
                ("apiKey", HOSTILE_OPEN_KEY),
                ("extension", "8856"),
                ("status", "last"),
            )
        )
        + b"--xx--\r\n"
    )
    request = raw_request("POST", "/verba/api", headers={"Content-Type": "multipart/form-data; boundary=xx"}, body=body)
    response = await raw_exchange(hostile_gateway.port, request)
    assert response.status == 200 and "cannot be found" in response.text


# ---- finding 3: what aiohttp answered by itself


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /verba/api?action=<script>alert(1)</script>&x=a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /verba/api?action=GetCallID&status=ongoing, last HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /verba/api?action=GetCallID&password=p\xffw HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /verba/api?x=" + b"a" * 17_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /verba/api HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer <script>\x01</script>\r\n\r\n", 400),
        (b"GET /verba/api HTTP/1.1\r\nHost: x\r\nX-" + b"h" * 17_000 + b": 1\r\n\r\n", 400),
        (b"<script>alert(1)</script> / HTTP/1.1\r\n\r\n", 400),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400),  # TLS to the plain port
        (b"GET /verba/api HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET /verba/api HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: <script>alert(1)</script>\r\n\r\n", 417),
        (b"PUT /verba/api?action=<script>alert(1)</script> HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
        (b"DELETE /verba/api HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
        (b"GET /verba/api/<script>alert(1)</script> HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        (b"GET /verba/API HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
    ],
)
async def test_what_the_http_layer_refuses_is_an_envelope_that_echoes_nothing(hostile_gateway, request_bytes, status):
    response = await raw_exchange(hostile_gateway.port, request_bytes)
    assert_refusal(response, status)
    assert b"verba/api" not in response.body and b"a b" not in response.body


async def test_errors_found_by_the_http_layer_answer_in_the_requested_format_when_it_can_be_read(hostile_gateway):
    request = raw_request("PUT", "/verba/api?responseType=json&action=GetCallID")
    response = await raw_exchange(hostile_gateway.port, request)
    assert_refusal(response, 405, "JSON")
    assert response.headers["allow"] == "GET,POST"


async def test_every_answer_carries_nosniff(hostile_gateway):
    key = f"apiKey={HOSTILE_OPEN_KEY}"
    targets = [
        ("GET", "/healthz"),
        ("GET", "/livez"),
        ("GET", "/metrics"),
        ("GET", f"/verba/api?{LOOKUP}"),
        ("POST", f"/verba/api?{LOOKUP}"),
        ("GET", "/verba/api?action=Nope"),
        ("PUT", "/verba/api"),  # 405, answered by the router
        ("GET", "/nowhere"),  # 404
        ("GET", "/"),  # a redirect to the status page
        ("GET", f"/status?{key}"),
        ("GET", "/status"),  # refused: no key
        ("GET", f"/status/state?{key}"),
        ("GET", "/status/assets/status.css"),
        ("GET", "/status/assets/nothing.js"),
        ("GET", f"/links/nope/quarantine?{key}"),
        ("GET", f"/events?types=nope&{key}"),
    ]
    for method, target in targets:
        response = await raw_exchange(hostile_gateway.port, raw_request(method, target))
        assert response.headers.get("x-content-type-options") == "nosniff", (method, target, response.status)
    # A stream: its head is enough.
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile_gateway.port)
    try:
        writer.write(f"GET /events?{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    finally:
        writer.close()
    assert b"200 OK" in head and b"x-content-type-options: nosniff" in head.lower()


# ---- finding 4: status=next repeated


async def test_a_repeated_next_waits_one_window(hostile_gateway):
    started = time.monotonic()
    target = (
        f"/verba/api?action=GetCallID&apiKey={HOSTILE_OPEN_KEY}&extension=8856&status=next,next,NEXT,next,%20next,next"
    )
    response = await raw_exchange(hostile_gateway.port, raw_request("GET", target))
    elapsed = time.monotonic() - started
    assert response.status == 200 and "cannot be found" in response.text
    assert HOSTILE_NEXT_WINDOW_S <= elapsed < 2 * HOSTILE_NEXT_WINDOW_S


# ---- finding 5: parameters longer than any real value


@pytest.mark.parametrize(
    "name", ["extension", "platformCallID", "nativeID", "callID", "status", "apiKey", "token", "password"]
)
async def test_a_parameter_longer_than_any_real_value_is_refused_before_any_lookup(hostile_gateway, name):
    params = {"action": "GetCallID", "apiKey": HOSTILE_OPEN_KEY, name: "9" * (MAX_CHARS_BY_PARAMETER[name] + 1)}
    body = "&".join(f"{key}={value}" for key, value in params.items()).encode()
    tracker = hostile_gateway.tracker
    memo_before = len(tracker._last_ended.by_number)
    response = await raw_exchange(
        hostile_gateway.port, raw_request("POST", "/verba/api", headers={"Content-Type": FORM}, body=body)
    )
    assert_refusal(response, 400)
    assert f"'{name}' is too long" in ET.fromstring(response.body).find("Response/ErrorMessage").text
    assert len(tracker._last_ended.by_number) == memo_before  # nothing was looked up, so nothing memoised


async def test_values_at_the_limit_are_served(hostile_gateway):
    extension = "1" * MAX_CHARS_BY_PARAMETER["extension"]
    target = f"/verba/api?action=GetCallID&apiKey={HOSTILE_OPEN_KEY}&extension={extension}&status=last"
    response = await raw_exchange(hostile_gateway.port, raw_request("GET", target))
    assert response.status == 200 and "cannot be found" in response.text


# ---- finding 6: slow clients and the connection cap


async def _open_slow_clients(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    clients = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /verba/api?action=GetCallID HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
        clients.append((reader, writer))
    return clients


async def _close_all(clients) -> None:
    for _, writer in clients:
        writer.close()


async def test_slow_clients_are_closed_while_the_api_answers_meanwhile(hostile_gateway, monkeypatch):
    # 500 slow connections, the API answering within 1 s while they are open, then all closed by the head timeout.
    header_timeout_s = 1.0
    api_server = hostile_gateway._runner.server  # the running ApiServer: its limits are read per connection
    monkeypatch.setattr(api_server, "header_timeout_s", header_timeout_s)
    clients = await _open_slow_clients(hostile_gateway.port, 500)
    try:
        started = time.monotonic()
        response = await raw_exchange(hostile_gateway.port, raw_request("GET", f"/verba/api?{LOOKUP}"), timeout_s=1.0)
        assert response.status == 200 and time.monotonic() - started < 1.0
        async with asyncio.timeout(header_timeout_s + 5.0):
            answers = await asyncio.gather(*(reader.read() for reader, _ in clients))
        assert all(answer == b"" for answer in answers)  # closed, with nothing said
        assert time.monotonic() - started >= header_timeout_s * 0.9
    finally:
        await _close_all(clients)


async def test_an_idle_connection_is_closed_but_a_request_in_progress_is_not(tmp_path, monkeypatch):
    monkeypatch.setattr(connections, "HEADER_TIMEOUT_S", 0.2)
    monkeypatch.setattr(connections, "IDLE_TIMEOUT_S", 0.5)
    gateway = Gateway(hostile_config(tmp_path))
    await gateway.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        # a status=next wait (0.3 s) outlasts the head timeout: the answer must still come
        target = f"/verba/api?action=GetCallID&apiKey={HOSTILE_OPEN_KEY}&extension=8856&status=next"
        writer.write(raw_request("GET", target, headers={"Connection": "keep-alive"}))
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            answered = time.monotonic()
            rest = await reader.read()  # the body, then the close of the idle keep-alive connection
        assert b"cannot be found" in rest
        assert time.monotonic() - answered >= 0.5 * 0.9
    finally:
        writer.close()
        await gateway.stop()


async def test_connections_over_the_cap_are_refused_with_a_503_envelope_and_one_warning(hostile_gateway, monkeypatch):
    import structlog.testing

    api_server = hostile_gateway._runner.server
    monkeypatch.setattr(api_server, "max_connections", 5)
    clients = await _open_slow_clients(hostile_gateway.port, 5)
    try:
        while api_server.open_connections < 5:
            await asyncio.sleep(0.005)
        with structlog.testing.capture_logs() as logs:
            first = await raw_exchange(hostile_gateway.port, raw_request("GET", f"/verba/api?{LOOKUP}"))
            second = await raw_exchange(hostile_gateway.port, raw_request("GET", f"/verba/api?{LOOKUP}"))
        for response in (first, second):
            assert_refusal(response, 503)
            assert "Too many connections" in response.text
        warnings = [entry for entry in logs if entry["log_level"] == "warning"]
        assert [entry["event"] for entry in warnings] == [
            "api connection cap reached; new connections are refused until some close"
        ]
    finally:
        await _close_all(clients)
    while api_server.open_connections:
        await asyncio.sleep(0.005)
    with structlog.testing.capture_logs() as logs:
        response = await raw_exchange(hostile_gateway.port, raw_request("GET", f"/verba/api?{LOOKUP}"))
    assert response.status == 200
    assert any(entry["event"] == "api connections below the cap again" and entry["refused"] == 2 for entry in logs)


def test_the_cap_fits_the_open_file_limit_raised_as_far_as_allowed(monkeypatch):
    raised = []
    monkeypatch.setattr(connections.resource, "setrlimit", lambda _which, limits: raised.append(limits))
    monkeypatch.setattr(connections.resource, "getrlimit", lambda _which: (1024, 4096))
    assert connections.connection_cap(10_000) == 4096 - connections.FD_RESERVE  # the hard limit bounds it
    assert raised == [(4096, 4096)]
    assert connections.connection_cap(1000) == 1000  # the soft limit raised to 1,064 is enough
    assert raised[-1] == (1000 + connections.FD_RESERVE, 4096)
    monkeypatch.setattr(connections.resource, "getrlimit", lambda _which: (65536, 65536))
    raised.clear()
    assert connections.connection_cap(10_000) == 10_000 and not raised

    def refuse(_which, _limits):
        raise ValueError("not allowed")

    monkeypatch.setattr(connections.resource, "setrlimit", refuse)
    monkeypatch.setattr(connections.resource, "getrlimit", lambda _which: (1024, 4096))
    assert connections.connection_cap(1000) == 1024 - connections.FD_RESERVE
