"""Property-based fuzz of `/verba/api` through real sockets: parameters, methods, content types
and raw request bytes. Whatever is sent: never a 5xx, always a well-formed envelope (in the
format asked for when it could be read), nothing injected unescaped, an answer within a bound."""

from __future__ import annotations

import time
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.hostile_http import (
    HOSTILE_NEXT_WINDOW_S,
    HOSTILE_OPEN_KEY,
    HOSTILE_SECURE_KEY,
    RawResponse,
    raw_exchange,
    raw_request,
)

# Marks what the fuzz injects: it must never come back as markup.
MARKER = "<inj x='1'>"
# A lookup may wait one `next` window; everything else is answered in milliseconds.
ANSWER_BOUND_S = HOSTILE_NEXT_WINDOW_S + 1.5
EXAMPLES = 120

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # One gateway serves every example of a test: state carried between examples is part of the fuzz.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

PARAMETER_NAMES = (
    "action",
    "apiKey",
    "token",
    "responseType",
    "extension",
    "status",
    "type",
    "unmark",
    "callID",
    "cid",
    "platformCallID",
    "nativeID",
    "userName",
    "password",
    "x",
)
RESPONSE_TYPES = ("XML", "json", "Html", "TEXT", "", "yaml", MARKER)

hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    st.sampled_from(
        [
            MARKER,
            "GetCallID",
            "KeepCall",
            "GetCallInformation",
            "RequestToken",
            "8856",
            "next",
            "last,next",
            "ongoing, last",
            "next,next,next",
            "manualRecord",
            "do_not_delete",
            "1",
            HOSTILE_OPEN_KEY,
            HOSTILE_SECURE_KEY,
            "0b6f5a52-8a0e-4a57-9d0e-6f2a3c1d9e41" * 3,
            "9" * 200,
            "\x00\ud800\ufffe",
            "%FF",
        ]
    ),
).map(lambda value: value.replace("\ud800", "?"))  # lone surrogates cannot be encoded into a URL at all

parameters = st.dictionaries(st.sampled_from(PARAMETER_NAMES), hostile_text, max_size=8)
content_types = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=bogus",
        "application/x-www-form-urlencoded; charset=latin-1",
        "multipart/form-data",
        "multipart/form-data; boundary=b",
        "application/json",
        "text/plain",
        "",
        MARKER,
    ]
)


def expected_format(response_type: str | None) -> str:
    """The format the answer must be in: the one asked for, XML when none or an unknown one is."""
    if (
        response_type is not None
        and response_type.isascii()
        and response_type.upper() in ("XML", "JSON", "HTML", "TEXT")
    ):
        return response_type.upper()
    return "XML"


def format_of(response: RawResponse) -> str:
    content_type = response.headers.get("content-type", "")
    for prefix, kind in (
        ("application/xml", "XML"),
        ("application/json", "JSON"),
        ("text/html", "HTML"),
        ("text/plain", "TEXT"),
    ):
        if content_type.startswith(prefix):
            return kind
    raise AssertionError(f"not an envelope content type: {content_type!r}")


def check_answer(response: RawResponse, elapsed_s: float, response_type_asked: str | None) -> None:
    assert response.status < 500, response
    assert response.headers.get("x-content-type-options") == "nosniff"
    kind = format_of(response)
    if response.status >= 400 or response_type_asked is not None:
        response.envelope_code(kind)  # well formed in its own format
    if response_type_asked is not None and response.status != 400:
        assert kind == expected_format(response_type_asked), (kind, response_type_asked)
    assert b"<inj" not in response.body and b"<script" not in response.body.lower()
    assert elapsed_s < ANSWER_BOUND_S


def encode_form(params: dict[str, str]) -> str:
    return "&".join(f"{quote(name)}={quote(value, safe='')}" for name, value in params.items())


@FUZZ_SETTINGS
@given(params=parameters, method=st.sampled_from(["GET", "POST", "POST-query"]), content_type=content_types)
async def test_fuzzed_parameters_methods_and_content_types(hostile_gateway, params, method, content_type):
    query = encode_form(params)
    if method == "GET":
        request = raw_request("GET", f"/verba/api?{query}")
    elif method == "POST":
        request = raw_request("POST", "/verba/api", headers={"Content-Type": content_type}, body=query.encode())
    else:  # parameters in the query, a body of the same in a content type that may not fit it
        request = raw_request(
            "POST", f"/verba/api?{query}", headers={"Content-Type": content_type}, body=query.encode()
        )
    started = time.monotonic()
    response = await raw_exchange(hostile_gateway.port, request)
    check_answer(response, time.monotonic() - started, params.get("responseType", ""))


request_line_bytes = st.binary(max_size=300).map(lambda data: data.replace(b"\r", b"").replace(b"\n", b""))
header_value_bytes = st.binary(max_size=120).map(lambda data: data.replace(b"\r", b"").replace(b"\n", b""))


@FUZZ_SETTINGS
@given(
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"OPTIONS", b"G\xffT", b"<x>", b""]),
    target=request_line_bytes,
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x", b""]),
    header_name=st.sampled_from(
        [b"Authorization", b"Expect", b"Content-Type", b"Content-Encoding", b"X-Any", b"Bad Name", b""]
    ),
    header_value=header_value_bytes,
    body=st.binary(max_size=200),
)
async def test_fuzzed_raw_request_bytes(hostile_gateway, method, target, version, header_name, header_value, body):
    head = [method + b" /verba/api?" + target + b" " + version, b"Host: x", b"Connection: close"]
    if header_name:
        head.append(header_name + b": " + header_value)
    head.append(b"Content-Length: %d" % len(body))
    request = b"\r\n".join(head) + b"\r\n\r\n" + body
    started = time.monotonic()
    response = await raw_exchange(hostile_gateway.port, request)
    check_answer(response, time.monotonic() - started, None)
