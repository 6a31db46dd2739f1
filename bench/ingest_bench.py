"""SMDR ingest: records/s from a `listen://` link into the durable store while the API answers, and the
delay from a line's arrival to the API seeing its call (p50/p99).

The gateway runs as its own process with one Avaya IP Office `listen://` link. This process
pushes N records over one connection, and meanwhile, over a second connection, sends a probe
record every few milliseconds and polls the API (GetCallID by platformCallID) until the probe's
call is found: that is the arrival-to-API delay. Two phases: first as fast as the gateway takes
them (throughput, and the delay at saturation), then at a steady offered load (`--rate`), the
delay a site running below capacity sees.

With --store-url the same two phases run twice: first on the gateway on SQLite as above, then on the gateway
as a cluster node on that PostgreSQL database (its local spool in the temporary folder), shipping every call
as it goes. For the node it also says how far the shipper trailed (`nodes.shipped_seq` behind the event feed,
from /healthz) when the last record was taken, and how long after that the database had every call.
`--store-url auto` starts a throwaway PostgreSQL server (fsync on) for the run.

    python bench/ingest_bench.py [--records 100000] [--rate 2000] [--sync full|normal] [--store-url URL|auto]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import (  # noqa: E402 — bench/ is the script folder
    ROOT,
    add_store_url_argument,
    free_port,
    fresh_cluster_tables,
    postgres_server,
    postgres_settings,
    summary_ms,
)

API_KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
CHUNK_RECORDS = 500  # records per write of the bulk sender, like a PBX flushing its buffer
PROBE_INTERVAL_S = 0.02
READY_TIMEOUT_S = 30.0
DONE_TIMEOUT_S = 600.0
PROBE_PCID_BASE = 9_000_000_000
STEADY_SECONDS = 10.0
NODE = "bench-ingest"  # the gateway's node name in a --store-url run
SHIPPED_POLL_S = 0.01  # how often the database's call count is read while waiting for the shipper
SHIPPED_TIMEOUT_S = 120.0


def ipo_record(index: int, pcid: int) -> bytes:
    extension = 2000 + index % 5000
    return (
        f"2026/11/23 10:{index // 60 % 60:02d}:{index % 60:02d},00:01:00,5,0170{index:07d},I,{extension},{extension},,0,"
        f"{pcid},0,E{extension},Agent {extension},T9001,LINE 1.1,0,0\r\n"
    ).encode()


def write_config(folder: Path, http_port: int, smdr_port: int, sync: str, cluster_url: str | None = None) -> Path:
    """The gateway on `ingest.db`; with `cluster_url`, node NODE of that cluster with its spool in `folder`."""
    config = folder / "ingest.yaml"
    store = f'{{path: "{folder / "ingest.db"}", sync: {sync}}}'
    if cluster_url is not None:  # a JSON string is a YAML string: the URL needs no escaping of its own
        store = f'{{url: {json.dumps(cluster_url)}, spool: "{folder / "spool.db"}", sync: {sync}}}\nnode: {NODE}'
    config.write_text(
        f"""
http: {{host: 127.0.0.1, port: {http_port}}}
store: {store}
api:
  keys: [{{key: {API_KEY}, name: bench}}]
links:
  - {{name: pbx, format: avaya-ipo, url: "listen://127.0.0.1:{smdr_port}", timezone: UTC}}
log: {{level: warning}}
"""
    )
    return config


async def wait_ready(session: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            async with session.get("/healthz") as response:
                if (await response.json())["links"]["pbx"]["state"] == "up":
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit("gateway not ready")


async def health(session: aiohttp.ClientSession) -> dict[str, Any]:
    async with session.get("/healthz") as response:
        return await response.json()


async def records_parsed(session: aiohttp.ClientSession) -> int:
    return (await health(session))["links"]["pbx"]["records"]


async def bulk_sender(port: int, count: int, first_pcid: int = 1_000_000_000, rate: float | None = None) -> float:
    """Send `count` records; as fast as the link takes them, or `rate` records/s in chunks of CHUNK_RECORDS."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    chunk = CHUNK_RECORDS if rate is None else max(1, int(rate / 50))  # paced: 50 writes a second
    for first in range(0, count, chunk):
        writer.write(b"".join(ipo_record(i, first_pcid + i) for i in range(first, min(count, first + chunk))))
        await writer.drain()
        if rate is not None:
            await asyncio.sleep(max(0.0, started + (first + chunk) / rate - time.perf_counter()))
    writer.close()
    await writer.wait_closed()
    return started


async def prober(
    port: int, session: aiohttp.ClientSession, stop: asyncio.Event, delays: list[float], pcid_base: int
) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    index = 0
    while not stop.is_set():
        pcid = pcid_base + index
        writer.write(ipo_record(index, pcid))
        await writer.drain()
        sent = time.perf_counter()
        params = {"action": "GetCallID", "apiKey": API_KEY, "platformCallID": str(pcid)}
        while True:
            async with session.get("/verba/api", params=params) as response:
                if b'code="0"' in await response.read():
                    break
        delays.append(time.perf_counter() - sent)
        index += 1
        await asyncio.sleep(PROBE_INTERVAL_S)
    writer.close()


@dataclass
class Phase:
    records_per_s: float
    delays: list[float]  # the probes' arrival → API delays
    done_at: float  # perf_counter when the gateway had taken the last record
    cluster: dict[str, Any] | None  # /healthz's cluster section at that moment (a --store-url run)


async def run_phase(session, smdr_port: int, count: int, first_pcid: int, rate: float | None) -> Phase:
    """Records/s achieved and the probes' arrival → API delays while `count` records go in."""
    already = await records_parsed(session)
    stop = asyncio.Event()
    delays: list[float] = []
    probes = asyncio.create_task(prober(smdr_port, session, stop, delays, PROBE_PCID_BASE + first_pcid))
    started = await bulk_sender(smdr_port, count, first_pcid, rate)
    deadline = time.monotonic() + DONE_TIMEOUT_S
    while True:
        report = await health(session)
        if (parsed := report["links"]["pbx"]["records"] - already) >= count + len(delays):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {parsed} of {count} records parsed")
        await asyncio.sleep(0.01)
    done_at = time.perf_counter()
    stop.set()
    await probes
    return Phase(count / (done_at - started), delays, done_at, report.get("cluster"))


async def database_has(connection: Any, calls: int) -> float:
    """perf_counter when the cluster database first holds `calls` of NODE's calls."""
    deadline = time.monotonic() + SHIPPED_TIMEOUT_S
    while (stored := await connection.fetchval("SELECT count(*) FROM calls WHERE node = $1", NODE)) < calls:
        if time.monotonic() > deadline:
            raise SystemExit(f"the cluster database has {stored} of {calls} calls after {SHIPPED_TIMEOUT_S:g} s")
        await asyncio.sleep(SHIPPED_POLL_S)
    return time.perf_counter()


def shipping_summary(phase: Phase, caught_up_at: float, calls: int) -> str:
    cluster = phase.cluster or {}
    shipped = cluster.get("shippedSeq", 0)
    unshipped = cluster.get("unshippedEvents", 0)
    return (
        f"  shipping: at the last record shipped_seq {shipped:,} trailed the feed by {unshipped:,} events; "
        f"the database had all {calls:,} calls {caught_up_at - phase.done_at:.2f} s later"
    )


def delay_summary(delays: list[float]) -> str:
    return summary_ms(delays, "probes")


@dataclass
class Run:
    saturated: Phase
    steady: Phase
    steady_count: int
    shipping: list[str]  # one line per phase (a cluster node's run)


async def run_gateway(count: int, rate: float, sync: str, cluster_url: str | None = None) -> Run:
    http_port, smdr_port = free_port(), free_port()
    database = None if cluster_url is None else await fresh_cluster_tables(cluster_url, [NODE])
    shipping: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        config = write_config(Path(tmp), http_port, smdr_port, sync, cluster_url)
        gateway = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(config),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{http_port}") as session:
                await wait_ready(session)
                calls = 0  # every record, bulk or probe, is a call of its own (its own platformCallID)
                saturated = await run_phase(session, smdr_port, count, 1_000_000_000, None)
                if database is not None:
                    calls += count + len(saturated.delays)
                    shipping.append(shipping_summary(saturated, await database_has(database, calls), calls))
                steady_count = int(rate * STEADY_SECONDS)
                steady = await run_phase(session, smdr_port, steady_count, 2_000_000_000, rate)
                if database is not None:
                    calls += steady_count + len(steady.delays)
                    shipping.append(shipping_summary(steady, await database_has(database, calls), calls))
        finally:
            gateway.send_signal(signal.SIGTERM)
            await gateway.wait()
            if database is not None:
                await database.close()
    return Run(saturated, steady, steady_count, shipping)


def print_run(run: Run, count: int, rate: float) -> None:
    print(
        f"as fast as taken: {count:,} records at {run.saturated.records_per_s:,.0f} records/s; "
        f"line arrival → API finds the call, {delay_summary(run.saturated.delays)}"
    )
    if run.shipping:
        print(run.shipping[0])
    print(
        f"steady {rate:,.0f} records/s offered ({run.steady.records_per_s:,.0f} achieved, {run.steady_count:,} "
        f"records): line arrival → API finds the call, {delay_summary(run.steady.delays)}"
    )
    if run.shipping:
        print(run.shipping[1])


async def main(count: int, rate: float, sync: str) -> None:
    run = await run_gateway(count, rate, sync)
    print(f"IP Office records over listen:// into the store (sync: {sync}), API answering meanwhile")
    print_run(run, count, rate)


async def main_cluster(count: int, rate: float, sync: str, cluster_url: str) -> None:
    """The gateway on SQLite, then as a cluster node on `cluster_url`: the same phases, one after the other."""
    settings = await postgres_settings(cluster_url)
    sqlite = await run_gateway(count, rate, sync)
    node = await run_gateway(count, rate, sync, cluster_url)
    print(f"IP Office records over listen:// into the store (sync: {sync}), API answering meanwhile")
    print("gateway on SQLite:")
    print_run(sqlite, count, rate)
    print(f"gateway as cluster node {NODE} on {settings}, local spool (sync: {sync}):")
    print_run(node, count, rate)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2_000.0, help="offered records/s of the steady phase")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    add_store_url_argument(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.store_url is None:
        asyncio.run(main(arguments.records, arguments.rate, arguments.sync))
    else:
        sys.path.insert(0, str(ROOT))
        from gateway.logs import configure_logging

        configure_logging("warning")  # the bench prints its own lines; the schema migration stays quiet
        with postgres_server(arguments.store_url) as url:
            asyncio.run(main_cluster(arguments.records, arguments.rate, arguments.sync, url))
