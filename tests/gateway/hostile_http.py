"""Hostile-client test helpers: the gateway's configuration, and a raw HTTP/1.1 client on asyncio
streams (for bytes no well-behaved client library would send)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from gateway.config import (
    ApiConfig,
    ApiKeyConfig,
    ExtensionConfig,
    GatewayConfig,
    HttpConfig,
    StoreConfig,
    UserConfig,
)
from gateway.model import RecordingMode
from gateway.passwords import hash_password

HOSTILE_OPEN_KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
HOSTILE_SECURE_KEY = "0b6f5a52-8a0e-4a57-9d0e-6f2a3c1d9e41"
HOSTILE_USER = "apiuser"
HOSTILE_PASSWORD = "s3cret-Pa55-w0rd"
# status=next waits this long in these tests: short, so that a wait repeated per `next` shows.
HOSTILE_NEXT_WINDOW_S = 0.3
# Longest a raw request may take to be answered here (the suite's bound, far above real times).
ANSWER_TIMEOUT_S = 5.0


def hostile_config(tmp_path: Path, *, token_ttl_s: int = 3600, keys: tuple[ApiKeyConfig, ...] = ()) -> GatewayConfig:
    password_hash = hash_password(HOSTILE_PASSWORD, n=2**4)  # cheap parameters: tests check logic, not scrypt
    return GatewayConfig(
        source=tmp_path / "test.yaml",
        http=HttpConfig(host="127.0.0.1", port=0),
        store=StoreConfig(tmp_path / "gateway.db"),
        api=ApiConfig(
            token_ttl_s=token_ttl_s,
            next_window_s=HOSTILE_NEXT_WINDOW_S,
            keys=keys
            or (
                ApiKeyConfig(HOSTILE_OPEN_KEY, "crm"),
                ApiKeyConfig(HOSTILE_SECURE_KEY, "secure", require_token=True),
                ApiKeyConfig(
                    "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "fenced", networks=(ipaddress.ip_network("10.0.0.0/8"),)
                ),
            ),
            users=(UserConfig(HOSTILE_USER, password_hash, "Europe/Budapest"),),
        ),
        extensions=(ExtensionConfig("8856", RecordingMode.CONTROLLED),),
    )


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def envelope_code(self, response_type: str = "XML") -> int:
        """The Verba result code, after checking that the body is that format's well-formed envelope."""
        kind = response_type.upper()
        content_type = self.headers.get("content-type", "")
        if kind == "JSON":
            assert content_type.startswith("application/json"), content_type
            document = json.loads(self.text)
            assert isinstance(document["type"], str)
            return int(document["code"])
        if kind == "TEXT":
            assert content_type.startswith("text/plain"), content_type
            assert self.text.endswith("\n") and self.text.count("\n") >= 1
            return 2 if self.text.startswith("ERROR: ") else 0
        if kind == "HTML":
            assert content_type.startswith("text/html"), content_type
            assert self.text.startswith("<!DOCTYPE html>") and self.text.endswith("</html>\n")
            return 2 if '<p class="error">' in self.text else 0
        assert content_type.startswith("application/xml"), content_type
        root = ET.fromstring(self.body)
        assert root.tag == "VerbaApi"
        return int(root.find("Response").get("code"))


async def raw_exchange(port: int, request: bytes, timeout_s: float = ANSWER_TIMEOUT_S) -> RawResponse:
    """Send `request` as is on a new connection and read one response (to its Content-Length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(timeout_s):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length)
        return RawResponse(int(status_line.split()[1]), headers, body)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:  # the server closed first and the kernel answered with a reset
            pass


def raw_request(
    method: str, target: bytes | str, *, headers: dict[str, bytes | str] | None = None, body: bytes = b""
) -> bytes:
    """An HTTP/1.1 request with Host, Connection: close and (for a body) Content-Length."""
    lines = [f"{method} ".encode("latin-1") + (target if isinstance(target, bytes) else target.encode()) + b" HTTP/1.1"]
    fields: dict[str, bytes | str] = {"Host": "127.0.0.1", "Connection": "close", **(headers or {})}
    if body or method == "POST":
        fields.setdefault("Content-Length", str(len(body)))
    for name, value in fields.items():
        lines.append(name.encode("latin-1") + b": " + (value if isinstance(value, bytes) else value.encode("latin-1")))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
