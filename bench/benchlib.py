"""What the benchmark scripts share: the repository root, free loopback ports, percentiles, tool checks, and the
PostgreSQL server a `--store-url` run uses."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback TCP port free right now (the server started next binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank percentile: the smallest sample with at least q % of the samples at or below it. Always
    one of the samples, so never above the maximum (statistics.quantiles' default interpolates beyond it when
    there are fewer than 100 samples)."""
    if not samples:
        raise ValueError("no samples")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def summary_ms(samples_s: Sequence[float], unit: str = "samples") -> str:
    """`n samples: p50 …, p99 …, max …` in milliseconds, saying how many samples the percentiles rest on."""
    return (
        f"{len(samples_s)} {unit}: p50 {percentile(samples_s, 50) * 1000:.1f} ms, "
        f"p99 {percentile(samples_s, 99) * 1000:.1f} ms, max {max(samples_s) * 1000:.1f} ms"
    )


def require_tool(name: str, install_hint: str) -> None:
    """Skip this benchmark (exit 0, one clear line) when a program it drives is not installed, so that
    `make bench` goes on with the others."""
    if shutil.which(name) is None:
        print(f"{Path(sys.argv[0]).name}: skipped: {name} is not installed ({install_hint})")
        raise SystemExit(0)


STORE_URL_AUTO = "auto"  # --store-url auto: a throwaway PostgreSQL server for the run, removed after


def store_url(text: str) -> str:
    """argparse type of --store-url: `auto`, or a PostgreSQL URL as store.url takes it (the error never quotes the
    URL: it may hold a password)."""
    if text == STORE_URL_AUTO:
        return text
    from gateway.config.load import POSTGRESQL_URL_FORM, check_postgresql_url

    try:
        check_postgresql_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error}; expected {POSTGRESQL_URL_FORM} or {STORE_URL_AUTO}") from None
    return text


def add_store_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store-url",
        type=store_url,
        metavar="URL",
        help="run the gateway under test as a cluster node on this PostgreSQL database (store.url; a database of "
        f"its own: the benchmark replaces what its nodes own there), or `{STORE_URL_AUTO}` for a throwaway "
        "server with fsync on, removed after the run",
    )


@contextmanager
def postgres_server(url: str, cpu: str | None = None) -> Iterator[str]:
    """The URL to run on: `url` itself, or for `auto` a throwaway PostgreSQL server (tests/pg_cluster.py, durable:
    fsync and synchronous commits on) removed on the way out; its processes pinned to `cpu` when given."""
    if url != STORE_URL_AUTO:
        yield url
        return
    sys.path.insert(0, str(ROOT))
    from tests.pg_cluster import PostgresCluster

    cluster = PostgresCluster.create(durable=True)
    try:
        if cpu is not None:
            pin_process_tree(int((cluster.directory / "data" / "postmaster.pid").read_text().split()[0]), int(cpu))
        yield cluster.url
    finally:
        cluster.remove()


def pin_process_tree(pid: int, cpu: int) -> None:
    """Pin a running process and its children (PostgreSQL's postmaster and its workers) to one CPU; the processes
    it forks later inherit it. Nothing to do on a one-CPU machine."""
    if (os.cpu_count() or 1) < 2:
        return
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            os.sched_setaffinity(current, {cpu})
        except ProcessLookupError:
            continue
        pending.extend(children.get(current, []))


async def postgres_settings(url: str) -> str:
    """What the figures rest on: the server's version and whether it makes commits durable."""
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        version = await connection.fetchval("SHOW server_version")
        fsync = await connection.fetchval("SHOW fsync")
        synchronous_commit = await connection.fetchval("SHOW synchronous_commit")
    finally:
        await connection.close()
    return f"PostgreSQL {version.split()[0]}, fsync {fsync}, synchronous_commit {synchronous_commit}"


async def fresh_cluster_tables(url: str, nodes: Sequence[str]) -> Any:
    """An asyncpg connection to the cluster database, its schema in place and nothing left there of these nodes'
    calls from an earlier run."""
    import asyncpg

    from gateway.cluster import schema

    connection = await asyncpg.connect(url)
    await schema.migrate(connection)
    async with connection.transaction():
        for table in ("call_parties", "recordings"):
            await connection.execute(
                f"DELETE FROM {table} WHERE call_id IN (SELECT call_id FROM calls WHERE node = ANY($1::text[]))",
                list(nodes),
            )
        await connection.execute("DELETE FROM calls WHERE node = ANY($1::text[])", list(nodes))
    return connection
