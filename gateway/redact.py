"""Secrets out of log lines: API keys, tokens and passwords are replaced before a line is written.

The gateway's own log calls carry key names, never secrets; this is the net under everything
else — a library quoting a request line or a header, an exception message holding a URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "<redacted>"
URL_PASSWORD_SHOWN_AS = "***"

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
# `scheme://user:password@host` in a log line (a database driver quoting its connection URL). The password runs to
# the last @ of the word: an unencoded @ in it must not leave its end showing.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/?#@\"'<>]*:)([^\s\"'<>]+)(@)")
# libpq takes a password in the query string too: postgresql://host/db?password=…
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")
_AUTHORITY_END = re.compile(r"[/?#]")


def redacted_url(url: str) -> str:
    """The URL with its password (user:PASSWORD@, ?password=) replaced by ***, for `gateway check` and messages.

    A password with an unencoded `/`, `?` or `#` ends the URL's authority early: when an `@` follows that point,
    everything from the user name's colon to the last `@` is hidden, as the password may run to there.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    end = _AUTHORITY_END.search(rest)
    authority, tail = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}:{URL_PASSWORD_SHOWN_AS}@{host}" if colon else f"{user}@{host}"
    elif ":" in authority and "@" in tail:
        user = authority.partition(":")[0]
        authority, tail = f"{user}:{URL_PASSWORD_SHOWN_AS}@", rest[rest.rfind("@") + 1 :]
    tail = _QUERY_PASSWORD.sub(lambda match: match.group(1) + URL_PASSWORD_SHOWN_AS, tail)
    return f"{scheme}://{authority}{tail}"


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
        text = _URL_PASSWORD.sub(lambda match: match.group(1) + REDACTED + match.group(3), text)
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        return text
