"""The cluster database: a small asyncpg pool, and one meaning for every way it can fail.

Whatever goes wrong talking to PostgreSQL (refused, reset, timed out, failing over, a server error) reaches
callers as ClusterUnavailable, which the API answers with 503; `error` keeps why, for /healthz, without the
password the URL may carry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import structlog

from gateway.errors import ClusterUnavailable
from gateway.redact import redacted_url

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 3.0  # a server that does not answer a connect in this long is down for us
QUERY_TIMEOUT_S = 5.0  # any one statement; the API must answer long before its clients give up
ACQUIRE_TIMEOUT_S = 3.0  # waiting for a free pooled connection
# The API's remote lookups, the shipper, heartbeats and commands share these; 32 clients at once waited for 8.
POOL_MAX = 16

# What a dead, restarting or failing-over server raises through asyncpg.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class Database:
    """The pool of one gateway; opened lazily by `open()`, which never fails: an unreachable server is retried
    by whoever needs it, and `reachable` / `error` say how it went last."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None
        self.reachable = False
        self.error: str | None = "not connected yet"
        self._warned = False

    @property
    def display_url(self) -> str:
        return redacted_url(self.url)

    async def _pool_now(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                # min_size=0: the pool makes connections when they are needed, so creating it needs no server.
                self._pool = await asyncpg.create_pool(
                    self.url,
                    min_size=0,
                    max_size=POOL_MAX,
                    timeout=CONNECT_TIMEOUT_S,
                    command_timeout=QUERY_TIMEOUT_S,
                )
            return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; ClusterUnavailable (with why) when the server cannot be used."""
        try:
            pool = await self._pool_now()
            async with asyncio.timeout(ACQUIRE_TIMEOUT_S + CONNECT_TIMEOUT_S):
                connection = await pool.acquire()
        except DATABASE_ERRORS as error:
            raise self.failed(error) from error
        try:
            yield connection
        except DATABASE_ERRORS as error:
            raise self.failed(error) from error
        finally:
            try:
                await pool.release(connection)
            except DATABASE_ERRORS:  # a connection that broke is dropped by the pool
                pass
        self.succeeded()

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as connection:
            return list(await connection.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self.connection() as connection:
            return await connection.fetchrow(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        async with self.connection() as connection:
            return str(await connection.execute(sql, *args))

    def failed(self, error: BaseException) -> ClusterUnavailable:
        """Note a failure (logged once per outage) and make the error callers get."""
        reason = describe(error, self.url)
        self.error = reason
        if self.reachable or not self._warned:
            log.warning("cluster database unreachable; retrying", url=self.display_url, error=reason)
            self._warned = True
        self.reachable = False
        return ClusterUnavailable(f"the cluster database is unreachable: {reason}")

    def succeeded(self) -> None:
        if not self.reachable:
            if self._warned:
                log.info("cluster database reachable again", url=self.display_url)
            self.reachable = True
            self.error = None
            self._warned = False

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await pool.close()
            except DATABASE_ERRORS:
                pool.terminate()


def describe(error: BaseException, url: str) -> str:
    """One line saying what went wrong, never with the URL's password in it."""
    if isinstance(error, TimeoutError):
        return "timed out"
    text = f"{type(error).__name__}: {str(error).strip()}".rstrip(": ")
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text
