"""What the SQLite store and the cluster's PostgreSQL database both hold — calls and API tokens — behaves the same
on both: every test runs once per backend, against a real file and a real server, through one small adapter each.

The PostgreSQL side is read as another node would read it: calls saved as node "site-a", looked up as "site-b".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import pytest

from gateway.cluster import calls as cluster_calls
from gateway.cluster.database import Database
from gateway.cluster.schema import migrate
from gateway.cluster.tokens import ClusterTokens
from gateway.model import Call, CallState, Recording, RecordingMode
from gateway.store import Store
from gateway.store.rows import snapshot
from gateway.tokens import StoredToken, TokenStore, secret_digest
from tests.gateway.test_store import T0, full_call, make_call

OWNER, ASKER = "site-a", "site-b"


class Backend(Protocol):
    tokens: TokenStore

    async def save(self, calls: Sequence[Call]) -> None: ...
    async def get(self, call_id: str) -> Call | None: ...
    async def by_platform_call_id(self, platform_call_id: str) -> list[str]: ...
    async def by_native_id(self, native_id: str) -> list[str]: ...
    async def last_ended(self, number: str, ended_by: datetime) -> list[tuple[datetime, str]]: ...


class SqliteBackend:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.tokens: TokenStore = store.tokens

    async def save(self, calls: Sequence[Call]) -> None:
        await self.store.save_calls_soon(calls)

    async def get(self, call_id: str) -> Call | None:
        return await self.store.get_call(call_id)

    async def by_platform_call_id(self, platform_call_id: str) -> list[str]:
        return await self.store.call_ids_by_platform_call_id(platform_call_id)

    async def by_native_id(self, native_id: str) -> list[str]:
        return await self.store.call_ids_by_native_id(native_id)

    async def last_ended(self, number: str, ended_by: datetime) -> list[tuple[datetime, str]]:
        return await self.store.last_ended_call_ids(number, ended_by=ended_by)


class PostgresBackend:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.tokens: TokenStore = ClusterTokens(database)

    async def save(self, calls: Sequence[Call]) -> None:
        async with self.database.connection() as connection, connection.transaction():
            await cluster_calls.save_snapshots(connection, OWNER, [snapshot(call) for call in calls])

    async def get(self, call_id: str) -> Call | None:
        async with self.database.connection() as connection:
            found = await cluster_calls.read_calls(connection, [call_id])
        if not found:
            return None
        assert found[0].node == OWNER
        found[0].node = None  # the owner is what the cluster adds; the rest must be the store's call
        return found[0]

    async def _ids(self, sql: str, value: str) -> list[str]:
        return [row[0] for row in await self.database.fetch(sql, value, ASKER, None)]

    async def by_platform_call_id(self, platform_call_id: str) -> list[str]:
        return await self._ids(cluster_calls.SELECT_BY_PLATFORM_CALL_ID, platform_call_id)

    async def by_native_id(self, native_id: str) -> list[str]:
        return await self._ids(cluster_calls.SELECT_BY_NATIVE_ID, native_id)

    async def last_ended(self, number: str, ended_by: datetime) -> list[tuple[datetime, str]]:
        rows = await self.database.fetch(cluster_calls.SELECT_LAST_ENDED_OF, number, ASKER, None, ended_by.timestamp())
        return [(datetime.fromtimestamp(end_time, UTC), call_id) for end_time, call_id in rows]


@pytest.fixture(params=["sqlite", "postgresql"])
def pg_url_or_none(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite (no PostgreSQL server needed), a fresh database's URL for PostgreSQL. A plain fixture: an
    async one cannot ask for pg_url on demand from inside the running loop."""
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


@pytest.fixture
async def backend(pg_url_or_none: str | None, tmp_path: Path) -> AsyncIterator[Backend]:
    if pg_url_or_none is None:
        store = Store(tmp_path / "store.db")
        await store.open()
        try:
            yield SqliteBackend(store)
        finally:
            await store.close()
        return
    database = Database(pg_url_or_none)
    try:
        async with database.connection() as connection:
            await migrate(connection)
        yield PostgresBackend(database)
    finally:
        await database.close()


def ended(call_id: str, end: datetime, **fields: object) -> Call:
    return make_call(call_id, state=CallState.FINISHED, end_time=end, **fields)


def with_recordings() -> Call:
    call = make_call("recorded", extension="201", recording_mode=RecordingMode.ON_DEMAND, native_id="n-9")
    call.recordings = [
        Recording("recorded/a", "recorded", T0, recorder="rec1", channel="3", end_time=T0 + timedelta(seconds=5)),
        Recording("recorded/b", "recorded", T0 + timedelta(seconds=5), recorder="rec1", channel="3", manual=True),
    ]
    return call


CALLS = {
    "ongoing": lambda: make_call("ongoing", extension="201", calling="201", called="0301234567"),
    "ended": lambda: ended("ended", T0 + timedelta(seconds=61), extension="201", duration_s=61.0, kept=True),
    "recordings": with_recordings,
    "other parties": lambda: make_call("transferred", extension="201", other_parties={"202", "305"}),
    "every field": full_call,
}


@pytest.mark.parametrize("shape", CALLS)
async def test_a_saved_call_reads_back_equal(backend: Backend, shape: str) -> None:
    call = CALLS[shape]()
    await backend.save([call])
    assert await backend.get(call.call_id) == call


async def test_a_call_saved_again_replaces_its_parties_and_adds_recordings(backend: Backend) -> None:
    call = make_call("upserted", extension="201", other_parties={"202"})
    await backend.save([call])
    call.other_parties, call.state, call.end_time = {"305"}, CallState.FINISHED, T0 + timedelta(seconds=9)
    call.recordings.append(Recording("upserted/a", "upserted", T0, recorder="rec1"))
    await backend.save([call])

    assert await backend.get("upserted") == call
    assert await backend.get("no-such-call") is None


async def test_lookups_give_the_same_answers(backend: Backend) -> None:
    now = datetime.now(UTC)
    await backend.save(
        [
            make_call("first", platform_call_id="p-1", native_id="n-1"),
            make_call("second", platform_call_id="p-1", native_id="n-2"),
            make_call("third", platform_call_id="p-3", native_id="n-2"),
            ended("as-extension", now - timedelta(seconds=40), extension="100"),
            ended("as-caller", now - timedelta(seconds=20), extension="300", calling="100"),
            ended("as-other", now - timedelta(seconds=10), extension="300", other_parties={"100"}),
            ended("in-the-future", now + timedelta(minutes=5), extension="100"),
            make_call("still-ongoing", extension="100"),
        ]
    )

    assert sorted(await backend.by_platform_call_id("p-1")) == ["first", "second"]
    assert await backend.by_platform_call_id("p-3") == ["third"]
    assert await backend.by_platform_call_id("p-none") == []
    assert sorted(await backend.by_native_id("n-2")) == ["second", "third"]
    assert await backend.by_native_id("n-1") == ["first"]
    assert await backend.last_ended("100", now) == [
        (now - timedelta(seconds=10), "as-other"),
        (now - timedelta(seconds=20), "as-caller"),
    ]
    assert [call_id for _, call_id in await backend.last_ended("100", now + timedelta(minutes=6))] == [
        "in-the-future",
        "as-other",
    ]
    assert await backend.last_ended("nobody", now) == []


async def test_tokens_put_get_and_prune(backend: Backend) -> None:
    now = datetime.now(UTC).timestamp()
    live, *expired = (
        StoredToken(secret_digest(name), secret_digest("key"), "agent", now + offset)
        for name, offset in (("live", 3600), ("old", -60), ("older", -120))
    )
    for grant in (live, *expired):
        await backend.tokens.put(grant)

    assert [await backend.tokens.get(grant.digest) for grant in (live, *expired)] == [live, *expired]
    assert await backend.tokens.get(secret_digest("never issued")) is None
    assert await backend.tokens.prune(now, limit=1) == 1
    assert await backend.tokens.prune(now, limit=10) == 1
    assert await backend.tokens.prune(now, limit=10) == 0
    assert [await backend.tokens.get(grant.digest) for grant in (live, *expired)] == [live, None, None]
