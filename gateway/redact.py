"""Secrets out of log lines: API keys, tokens and passwords are replaced before a line is written.

The gateway's own log calls carry key names, never secrets; this is the net under everything
else — a library quoting a request line or a header, an exception message holding a URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"

# `apiKey=…`, `token: …`, `"password": "…"`, `X-Api-Key: …`, in any case, also inside quoted
# bytes (b'GET /verba/api?apiKey=…'). The value runs to the next separator of a query string,
# a header list, a structlog key/value pair or a JSON string.
_NAMED_SECRET = re.compile(
    r"""(?ix)
    ( (?:api[-_]?key|token|password|passwd|pwd)   # the parameter or header name
      ["']?\s*[=:]\s*["']? )                       # = or :, with JSON/repr quotes around
    ( [^&\s"',;<>]+ )                               # the value
    """
)
# `Authorization: Bearer …` / `Basic …` (the base64 of user:password).
_AUTH_CREDENTIALS = re.compile(r"(?i)\b(bearer|basic)(\s+)([^\s\"',;<>]+)")


class SecretRedactor:
    """Replaces named secrets and, literally in any case, the configured API keys."""

    def __init__(self, known_secrets: Iterable[str] = ()) -> None:
        literals = sorted({secret for secret in known_secrets if secret}, key=len, reverse=True)
        self._known = (
            re.compile("|".join(re.escape(secret) for secret in literals), re.IGNORECASE) if literals else None
        )

    def __call__(self, text: str) -> str:
        text = _NAMED_SECRET.sub(lambda match: match.group(1) + REDACTED, text)
        text = _AUTH_CREDENTIALS.sub(lambda match: match.group(1) + match.group(2) + REDACTED, text)
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        return text


def redacted_url(url: str) -> str:
    """The URL with its password (if any) shown as `***`: for messages, /healthz and `gateway check`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if not password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
