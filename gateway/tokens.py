"""Where API tokens from RequestToken are kept, so that they survive a restart and every gateway sharing the
store accepts them: the TokenStore interface, the row it keeps, and an in-memory implementation for tests and
tools. The SQLite store (gateway.store.Store) implements it for the running gateway.

Only digests are kept: a copy of the store gives no token and no API key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredToken:
    """One issued token as the store keeps it."""

    digest: bytes  # sha256 of the token (never the token)
    key_digest: bytes  # sha256 of the API key GUID, lower-cased (never the key)
    user: str  # the user name it was issued to
    expires_at: float  # UTC epoch seconds: a wall clock, which, unlike a monotonic one, means the same after a restart


def secret_digest(value: str) -> bytes:
    """sha256 of a token or a (lower-cased) API key, as stored; bytes of any input ("replace" for lone surrogates)."""
    return hashlib.sha256(value.encode("utf-8", "replace")).digest()


class TokenStore(Protocol):
    async def put(self, grant: StoredToken) -> None:
        """Keep the token; durable once this returns (the API answers the token only after)."""
        ...

    async def get(self, digest: bytes) -> StoredToken | None:
        """The token with this digest, expired or not; None when unknown (or pruned)."""
        ...

    async def prune(self, now_epoch: float, limit: int) -> int:
        """Delete up to `limit` tokens expired at `now_epoch`; how many went."""
        ...


class MemoryTokenStore:
    """A TokenStore in a dict: lost with the process. For tests and tools, never the running gateway."""

    def __init__(self) -> None:
        self.tokens: dict[bytes, StoredToken] = {}

    async def put(self, grant: StoredToken) -> None:
        self.tokens[grant.digest] = grant

    async def get(self, digest: bytes) -> StoredToken | None:
        return self.tokens.get(digest)

    async def prune(self, now_epoch: float, limit: int) -> int:
        expired = [digest for digest, grant in self.tokens.items() if grant.expires_at <= now_epoch][:limit]
        for digest in expired:
            del self.tokens[digest]
        return len(expired)
