"""The cluster's schema on a real PostgreSQL server: migrations run once however many gateways start together,
and a node's watermark belongs to the local store it counted."""

from __future__ import annotations

import asyncio

import asyncpg

from gateway.cluster import members, schema
from gateway.cluster.members import PublishedExtension


async def test_gateways_migrating_at_once_apply_each_migration_once(pg_url: str) -> None:
    connections = [await asyncpg.connect(pg_url) for _ in range(5)]
    try:
        applied = await asyncio.gather(*(schema.migrate(connection) for connection in connections))
        assert sorted(applied) == [0, 0, 0, 0, schema.SCHEMA_VERSION]
        versions = await connections[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [row["version"] for row in versions] == list(range(1, schema.SCHEMA_VERSION + 1))
        assert await schema.migrate(connections[0]) == 0
    finally:
        for connection in connections:
            await connection.close()


async def test_a_newer_schema_is_refused_with_what_to_do(pg_url: str) -> None:
    connection = await asyncpg.connect(pg_url)
    try:
        await schema.migrate(connection)
        await connection.execute("INSERT INTO schema_migrations (version) VALUES ($1)", schema.SCHEMA_VERSION + 1)
        try:
            await schema.migrate(connection)
        except Exception as error:
            assert "newer than this gateway" in str(error) and "upgrade this gateway" in str(error)
        else:
            raise AssertionError("a newer schema was accepted")
    finally:
        await connection.close()


async def test_the_watermark_restarts_at_zero_for_another_local_store(pg_url: str) -> None:
    connection = await asyncpg.connect(pg_url)
    try:
        await schema.migrate(connection)
        extensions = [PublishedExtension("8856", "controlled", "trunk1")]
        assert await members.join(connection, "site-a", "run-1", "store-1", extensions, {}) == 0
        await connection.execute("UPDATE nodes SET shipped_seq = 42 WHERE node = 'site-a'")
        assert await members.join(connection, "site-a", "run-2", "store-1", extensions, {}) == 42  # a restart
        assert await members.join(connection, "site-a", "run-3", "store-2", [], {}) == 0  # a new local file
        assert await connection.fetchval("SELECT count(*) FROM node_extensions WHERE node = 'site-a'") == 0
    finally:
        await connection.close()
