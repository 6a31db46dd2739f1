"""`gateway run` at debug level, sent every request shape of issue 11 with a known key, token and
password: none of the three may appear in any log line, whichever path wrote it."""

from __future__ import annotations

import asyncio
import base64
import gzip
import signal
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import gateway_command
from tests.integration.test_gateway_process import (
    OPEN_KEY,
    PASSWORD,
    SECURE_KEY,
    STOP_TIMEOUT_S,
    wait_until_listening,
    write_config,
)


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            return await reader.read()  # every request here says Connection: close, or is refused
    finally:
        writer.close()


def http(method: str, target: bytes, headers: bytes = b"", body: bytes = b"") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body or method == "POST" else b""
    return (
        method.encode()
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + headers
        + length
        + b"\r\n"
        + body
    )


def request_shapes(key: str, token: str, password: str) -> list[bytes]:
    secrets = f"apiKey={key}&token={token}&userName=apiuser&password={password}".encode()
    form = b"Content-Type: application/x-www-form-urlencoded\r\n"
    basic = base64.b64encode(f"apiuser:{password}".encode())
    return [
        http("GET", b"/verba/api?action=GetCallID&" + secrets + b"&extension=8856&status=last"),
        http("GET", b"/verba/api?action=RequestToken&" + secrets),
        http(
            "GET", b"/verba/api?action=RequestToken&apiKey=" + key.encode(), b"Authorization: Basic " + basic + b"\r\n"
        ),
        http(
            "GET",
            b"/verba/api?action=GetCallID&apiKey=" + key.encode() + b"&extension=8856&status=last",
            b"Authorization: Bearer " + token.encode() + b"\r\n",
        ),
        # finding 1: bodies that cannot be decoded
        http("POST", b"/verba/api", b"Content-Type: multipart/form-data\r\n", b"action=GetCallID&" + secrets),
        http("POST", b"/verba/api", b"Content-Type: application/x-www-form-urlencoded; charset=bogus\r\n", secrets),
        http("POST", b"/verba/api", form, secrets + b"&extension=\xff"),
        http(
            "POST",
            b"/verba/api",
            b"Content-Type: multipart/form-data; boundary=b\r\n",
            b"--b\r\nContent-Disposition: form-data\r\n\r\n" + secrets + b"\r\n--b--\r\n",
        ),
        http("POST", b"/verba/api", form + b"Content-Encoding: gzip\r\n", secrets),
        http(
            "POST",
            b"/verba/api",
            form + b"Content-Encoding: gzip\r\n",
            gzip.compress(secrets + b"&x=" + b"1" * 100_000),
        ),
        # finding 2: what the HTTP parser refuses
        http("GET", b"/verba/api?action=GetCallID&status=ongoing, last&" + secrets),
        http("GET", b"/verba/api?action=GetCallID&" + secrets + b"\xe9&x=1"),
        http("GET", b"/verba/api?password=\xff" + password.encode() + b"&apiKey=" + key.encode()),
        http("GET", b"/verba/api?" + secrets + b"&pad=" + b"x" * 17_000),
        http(
            "GET",
            b"/verba/api?action=GetCallID&apiKey=" + key.encode(),
            b"Authorization: Bearer " + token.encode() + b"\x01\r\n",
        ),
        http(
            "GET", b"/verba/api?action=GetCallID&apiKey=" + key.encode(), b"Authorization: Basic " + basic + b"\x7f\r\n"
        ),
        http("GET", b"/verba/api?" + secrets, b"X-" + b"h" * 17_000 + b": " + token.encode() + b"\r\n"),
        b"G\xffT /verba/api?" + secrets + b" HTTP/1.1\r\n\r\n",
        # finding 3: Expect, 404, 405
        http("GET", b"/verba/api?" + secrets, b"Expect: <script>" + password.encode() + b"</script>\r\n"),
        http("GET", b"/verba/api/" + key.encode() + b"?" + secrets),
        http("PUT", b"/verba/api?" + secrets),
        # the operator paths: the page, its state, the stream (refused before it opens), taps and quarantine
        http("GET", b"/?" + secrets),
        http("GET", b"/status?" + secrets),
        http("GET", b"/status/state?" + secrets),
        http("GET", b"/status/state", b"X-Api-Key: " + key.encode() + b"\r\n"),
        http("GET", b"/events?types=nope&" + secrets),
        http("GET", b"/events?lastEventId=x&" + secrets),
        http("GET", b"/links/nope/tap?" + secrets),
        http("GET", b"/links/nope/quarantine?before=x&" + secrets),
    ]


@pytest.mark.parametrize("log_format", ["console", "json"])
async def test_no_key_token_or_password_in_any_log_line(tmp_path: Path, unused_tcp_port_factory, log_format):
    port = unused_tcp_port_factory()
    config = write_config(tmp_path, port, unused_tcp_port_factory())
    config.write_text(config.read_text().replace("format: json", f"format: {log_format}"))  # level: debug already
    process = await gateway_command(
        "run",
        "--config",
        str(config),
    )
    try:
        await wait_until_listening(process, port)
        answer = await exchange(
            port,
            http(
                "GET",
                f"/verba/api?action=RequestToken&apiKey={SECURE_KEY}&userName=apiuser&password={PASSWORD.replace(' ', '+')}".encode(),
            ),
        )
        token = ET.fromstring(answer.split(b"\r\n\r\n", 1)[1]).find("Response").get("token")
        for key in (OPEN_KEY, SECURE_KEY):
            for request in request_shapes(key, token, PASSWORD.replace(" ", "-")) + request_shapes(
                key, token, "hunter2hunter2"
            ):
                answer = await exchange(port, request)
                assert answer.startswith(b"HTTP/1.") and b" 500 " not in answer.split(b"\r\n", 1)[0], request[:80]
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = stderr.decode("utf-8", "replace")
    # the debug lines of both paths were written: the handlers' and the HTTP parser's
    assert "gateway stopped" in log and "api request" in log and "refused by the HTTP parser" in log
    lowered = log.lower()
    basic = base64.b64encode(b"apiuser:hunter2hunter2").decode()
    for secret in (OPEN_KEY, SECURE_KEY, token, PASSWORD, PASSWORD.replace(" ", "-"), "hunter2hunter2", basic):
        assert secret.lower() not in lowered, secret


async def test_no_store_url_password_in_what_check_and_run_print(tmp_path: Path, unused_tcp_port_factory, postgres):
    """The PostgreSQL password of store.url: never in `gateway check`'s description or findings, nor in anything
    `gateway run` logs at debug level while it joins a real cluster database, answers and stops."""
    port = unused_tcp_port_factory()
    config = write_config(tmp_path, port, unused_tcp_port_factory())
    config.write_text(
        config.read_text().replace(
            f"  path: {tmp_path / 'var' / 'gateway.db'}",
            f"  url: {postgres.url}?sslmode=disable\n  spool: {tmp_path / 'var' / 'spool.db'}",
        )
    )
    process = await gateway_command("check", "--config", str(config))
    check_out, check_err = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT_S)
    assert process.returncode == 0 and "store: PostgreSQL postgresql://gateway:***@127.0.0.1:" in check_out.decode()
    process = await gateway_command("run", "--config", str(config))
    try:
        await wait_until_listening(process, port)
        for request in request_shapes(OPEN_KEY, "no-token", "hunter2hunter2")[:4]:
            await exchange(port, request)
        await exchange(port, http("GET", b"/healthz"))
        process.send_signal(signal.SIGTERM)
        run_out, run_err = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = run_err.decode("utf-8", "replace")
    assert "joined the cluster" in log and "gateway stopped" in log
    for output in (check_out, check_err, run_out, run_err):
        assert postgres.password not in output.decode("utf-8", "replace")
