"""Which PostgreSQL driver for the store: asyncpg against psycopg 3 (async, with psycopg_pool), side by side on one
server, rounds alternating. What the gateway would do most: a lookup by key, a small committed write, and a
NOTIFY reaching another session's LISTEN (cross-node wake-ups).

    pip install asyncpg 'psycopg[binary]' psycopg-pool     # both, to compare; the project depends on one
    python bench/pg_driver_bench.py --url postgresql://USER:PASSWORD@127.0.0.1:5432/DB [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from benchlib import percentile  # noqa: E402 — bench/ is the script folder

LOOKUPS = 5_000
WRITES = 2_000
NOTIFIES = 500
SETUP = """
DROP TABLE IF EXISTS bench_calls;
CREATE TABLE bench_calls (call_id TEXT PRIMARY KEY, extension TEXT, data TEXT);
INSERT INTO bench_calls SELECT 'c' || i, (2000 + i % 500)::text, repeat('x', 300) FROM generate_series(1, 10000) i;
"""


async def asyncpg_round(url: str) -> dict[str, list[float]]:
    import asyncpg

    pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
    listener = await asyncpg.connect(url)
    got: asyncio.Queue[float] = asyncio.Queue()
    await listener.add_listener("bench", lambda *_: got.put_nowait(time.perf_counter()))
    samples: dict[str, list[float]] = {"lookup": [], "write": [], "notify": []}
    try:
        async with pool.acquire() as connection:
            for i in range(LOOKUPS):
                started = time.perf_counter()
                await connection.fetchrow("SELECT extension, data FROM bench_calls WHERE call_id = $1", f"c{i % 10000}")
                samples["lookup"].append(time.perf_counter() - started)
            for i in range(WRITES):
                started = time.perf_counter()
                await connection.execute(
                    "INSERT INTO bench_calls VALUES ($1, $2, $3) ON CONFLICT (call_id) DO UPDATE SET data = $3",
                    f"w{i}",
                    "2001",
                    "y" * 300,
                )
                samples["write"].append(time.perf_counter() - started)
            for i in range(NOTIFIES):
                started = time.perf_counter()
                await connection.execute(f"NOTIFY bench, '{i}'")
                samples["notify"].append(await got.get() - started)
    finally:
        await listener.close()
        await pool.close()
    return samples


async def psycopg_round(url: str) -> dict[str, list[float]]:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(url, min_size=2, max_size=4, open=False, kwargs={"autocommit": True})
    await pool.open()
    listener = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await listener.execute("LISTEN bench")
    got: asyncio.Queue[float] = asyncio.Queue()

    async def listen() -> None:
        async for _ in listener.notifies():
            got.put_nowait(time.perf_counter())

    listening = asyncio.create_task(listen())
    samples: dict[str, list[float]] = {"lookup": [], "write": [], "notify": []}
    try:
        async with pool.connection() as connection:
            for i in range(LOOKUPS):
                started = time.perf_counter()
                cursor = await connection.execute(
                    "SELECT extension, data FROM bench_calls WHERE call_id = %s", (f"c{i % 10000}",), prepare=True
                )
                await cursor.fetchone()
                samples["lookup"].append(time.perf_counter() - started)
            for i in range(WRITES):
                started = time.perf_counter()
                await connection.execute(
                    "INSERT INTO bench_calls VALUES (%s, %s, %s) ON CONFLICT (call_id) DO UPDATE SET data = %s",
                    (f"w{i}", "2001", "y" * 300, "y" * 300),
                    prepare=True,
                )
                samples["write"].append(time.perf_counter() - started)
            for i in range(NOTIFIES):
                started = time.perf_counter()
                await connection.execute(f"NOTIFY bench, '{i}'")
                samples["notify"].append(await got.get() - started)
    finally:
        listening.cancel()
        await listener.close()
        await pool.close()
    return samples


async def setup(url: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(SETUP)
    finally:
        await connection.close()


async def main(url: str, rounds: int) -> None:
    await setup(url)
    results: dict[str, dict[str, list[float]]] = {"asyncpg": {}, "psycopg": {}}
    for _ in range(rounds):
        for name, run in (("asyncpg", asyncpg_round), ("psycopg", psycopg_round)):
            for kind, values in (await run(url)).items():
                results[name].setdefault(kind, []).extend(values)
    for kind in ("lookup", "write", "notify"):
        a, p = results["asyncpg"][kind], results["psycopg"][kind]
        ratio = statistics.median(p) / statistics.median(a)
        for name, samples in (("asyncpg", a), ("psycopg", p)):
            print(
                f"{kind:7s} {name}: {len(samples)} samples, p50 {percentile(samples, 50) * 1e6:.0f} µs, "
                f"p99 {percentile(samples, 99) * 1e6:.0f} µs"
            )
        print(f"{kind:7s} median psycopg / asyncpg: {ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.url, arguments.rounds))
