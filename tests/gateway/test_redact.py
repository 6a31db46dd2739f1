"""The log redactor: named secrets, Authorization credentials and the configured keys go; the rest stays."""

from __future__ import annotations

import pytest

from gateway.redact import REDACTED, SecretRedactor, redacted_url

KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("GET /verba/api?apiKey=abc123&x=1 HTTP/1.1", "abc123"),
        ("b'GET /verba/api?password=hun\\xffter2 HTTP/1.1'", "hun"),
        ('{"token": "tok-value", "level": "error"}', "tok-value"),
        ("Authorization: Bearer tok.en_value", "tok.en_value"),
        ("Authorization: basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("X-Api-Key: k3y", "k3y"),
        (f"key={KEY.upper()} in a traceback", KEY.upper()),
        ("connection to postgresql://gateway:pg-pass@db:5432/gw failed", "pg-pass"),
        ("url='postgres://gateway:pg@pass@db/gw'", "pass"),
    ],
)
def test_secrets_are_replaced(line, secret):
    redacted = SecretRedactor([KEY])(line)
    assert secret not in redacted and REDACTED in redacted


def test_ordinary_lines_are_left_alone():
    line = "api request action=GetCallID status=200 key=crm token_ttl=3600 call_id=0b6f5a52-8a0e-4a57-9d0e-6f2a3c1d9e41"
    assert SecretRedactor([KEY])(line) == line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://gw:secret@db:5432/gw?sslmode=require", "postgresql://gw:***@db:5432/gw?sslmode=require"),
        ("postgresql://gw:p%40ss@[::1]/gw", "postgresql://gw:***@[::1]/gw"),
        ("postgresql://gw:p@ss@db/gw", "postgresql://gw:***@db/gw"),
        ("postgresql://db/gw?sslmode=require&password=secret", "postgresql://db/gw?sslmode=require&password=***"),
        # an unencoded / # or ? in the password ends the authority early: hidden up to the last @ all the same
        ("postgresql://gw:sec/ret@db/gw", "postgresql://gw:***@db/gw"),
        ("postgresql://gw:sec#ret@db/gw", "postgresql://gw:***@db/gw"),
        ("postgresql://gw:sec?ret@db/gw", "postgresql://gw:***@db/gw"),
        # nothing to hide
        ("postgresql://gw@db/gw", "postgresql://gw@db/gw"),
        ("postgres://db:5432/gw", "postgres://db:5432/gw"),
        ("var/gateway.db", "var/gateway.db"),
    ],
)
def test_redacted_url_hides_the_password_only(url, shown):
    assert redacted_url(url) == shown
