"""GetCallID throughput of the gateway with N calls stored, against a bare aiohttp handler, same run.

Both servers run as separate processes pinned to CPU 0 and are loaded by the same wrk client
pinned to CPU 1, alternating round by round so that machine noise hits both alike. Prints the
median requests/s of each, the median of the per-round ratios gateway / bare, and the gateway's
latency.

With --store-url the same calls are also in a cluster database (PostgreSQL) as one node's, and four servers
take turns: the bare handler, the gateway on SQLite as above, that node (the gateway as a cluster node on the
database, its local spool holding the calls) and a second node without links, which finds them in the database:
the cross-node lookup. `--store-url auto` starts a throwaway PostgreSQL server (fsync on) pinned with the servers.

    python bench/api_bench.py [--calls 100000] [--seconds 3] [--rounds 7] [--connections 32] [--store-url URL|auto]

Needs `wrk` (Debian/Ubuntu: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from benchlib import (  # noqa: E402 — bench/ is the script folder
    ROOT,
    add_store_url_argument,
    free_port,
    fresh_cluster_tables,
    postgres_server,
    postgres_settings,
    require_tool,
)

sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from gateway.cluster import calls as cluster_calls  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402
from gateway.model import Call, CallState, Direction, RecordingMode, new_id  # noqa: E402
from gateway.redact import redacted_url  # noqa: E402
from gateway.store import Store  # noqa: E402
from gateway.store.rows import snapshot  # noqa: E402

API_KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
EXTENSIONS = 5_000  # calls spread over this many extensions: 'last' hits a different one each request
ONGOING_CALLS = 200
SERVER_CPU = "0"
CLIENT_CPU = "1"
READY_TIMEOUT_S = 60.0
POPULATE_BATCH = 10_000
OWNER_NODE = "bench-owner"  # the node whose spool holds the calls (cluster runs)
PEER_NODE = "bench-peer"  # the second node: no links, no calls of its own
WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
local next_index = 0
request = function()
  next_index = next_index % #paths + 1
  return wrk.format("GET", paths[next_index])
end
"""


@dataclass
class Measurement:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def pinned(cpu: str, command: list[str]) -> list[str]:
    return (["taskset", "-c", cpu] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []) + command


async def populate(db_path: Path, calls: int, cluster_url: str | None = None) -> None:
    """N finished calls (spread over EXTENSIONS extensions) and a few ongoing ones, written through the real store;
    with `cluster_url` also into the cluster database as OWNER_NODE's, as its shipper would have."""
    store = Store(db_path)
    await store.open()
    database = await fresh_cluster_tables(cluster_url, [OWNER_NODE, PEER_NODE]) if cluster_url is not None else None
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    pending = []
    batch: list[Call] = []
    for index in range(calls + ONGOING_CALLS):
        ongoing = index >= calls
        extension = str(9000 + index - calls) if ongoing else str(2000 + index % EXTENSIONS)
        start = base + timedelta(seconds=7 * index)
        call = Call(
            call_id=new_id(),
            start_time=start,
            state=CallState.ONGOING if ongoing else CallState.FINISHED,
            direction=Direction.IN,
            extension=extension,
            calling=f"0170{index:07d}",
            called=extension,
            platform_call_id=str(1_000_000_000 + index),
            native_id=f"TRS{index:08d}",
            link="pbx-main",
            connect_time=start + timedelta(seconds=5),
            end_time=None if ongoing else start + timedelta(seconds=65),
            duration_s=None if ongoing else 60.0,
            recording_mode=RecordingMode.FULL,
        )
        pending.append(store.save_call_soon(call))
        batch.append(call)
        if len(pending) >= POPULATE_BATCH:
            await asyncio.gather(*pending)
            pending.clear()
            if database is not None:
                await _ship(database, batch)
            batch.clear()
    await asyncio.gather(*pending)
    await store.close()
    if database is not None:
        await _ship(database, batch)
        await database.execute("ANALYZE calls, call_parties, recordings")  # as autovacuum would, in a while
        await database.close()


async def _ship(connection: asyncpg.Connection, batch: Sequence[Call]) -> None:
    async with connection.transaction():
        await cluster_calls.save_snapshots(connection, OWNER_NODE, [snapshot(call) for call in batch])


def write_config(folder: Path, port: int, db_path: Path, cluster_url: str | None = None, node: str = "") -> Path:
    """The gateway on `db_path`; with `cluster_url`, node `node` of that cluster with `db_path` as its spool."""
    config = folder / (f"{node}.yaml" if cluster_url is not None else "bench.yaml")
    store = f'{{path: "{db_path}"}}'
    extensions = ""
    if cluster_url is not None:  # a JSON string is a YAML string: the URL needs no escaping of its own
        store = f'{{url: {json.dumps(cluster_url)}, spool: "{db_path}"}}\nnode: {node}'
    if node == OWNER_NODE:
        # A site publishes the extensions it serves: its own lookups of them then need no other node's calls.
        numbers = [2000 + index for index in range(EXTENSIONS)] + [9000 + index for index in range(ONGOING_CALLS)]
        extensions = "extensions:\n" + "".join(f'  - {{number: "{number}", mode: full}}\n' for number in numbers)
    config.write_text(
        f"""
http: {{host: 127.0.0.1, port: {port}}}
store: {store}
api:
  keys:
    - {{key: {API_KEY}, name: bench}}
log: {{level: warning}}
{extensions}"""
    )
    return config


def start_server(command: list[str], port: int, log_path: Path) -> subprocess.Popen:
    log_file = log_path.open("w")
    process = subprocess.Popen(pinned(SERVER_CPU, command), cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"server not ready within {READY_TIMEOUT_S} s")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, paths_file: Path, script: Path, seconds: float, connections: int) -> Measurement:
    command = pinned(
        CLIENT_CPU,
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), url],
    )
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, "BENCH_PATHS": str(paths_file)}
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))
    errors_match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    errors = int(errors_match.group(1)) if errors_match else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return Measurement(rate, p50, p99, errors)


def make_paths(kind: str, calls: int, count: int = 20_000) -> list[str]:
    rng = random.Random(42)
    prefix = f"/verba/api?action=GetCallID&apiKey={API_KEY}"
    if kind == "last":
        return [f"{prefix}&extension={2000 + rng.randrange(EXTENSIONS)}&status=last" for _ in range(count)]
    if kind == "ongoing":
        return [f"{prefix}&extension={9000 + rng.randrange(ONGOING_CALLS)}&status=ongoing" for _ in range(count)]
    if kind == "platformCallID":
        return [f"{prefix}&platformCallID={1_000_000_000 + rng.randrange(calls)}" for _ in range(count)]
    if kind == "nativeID":
        return [f"{prefix}&nativeID=TRS{rng.randrange(calls):08d}" for _ in range(count)]
    raise ValueError(kind)


def check_answers(base_url: str, paths: list[str]) -> list[str]:
    """The load must be real lookups that succeed, not errors answered fast; the CallIDs found."""
    found = []
    for path in paths[:20]:
        with urllib.request.urlopen(base_url + path, timeout=10) as response:
            body = response.read().decode()
        if 'code="0"' not in body:
            raise SystemExit(f"gateway did not find the call for {path}: {body}")
        found.append(re.search(r"<CallID>([^<]*)</CallID>", body).group(1))
    return found


@dataclass
class Server:
    label: str
    process: subprocess.Popen
    url: str
    warm_up_s: float


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--kinds", default="ongoing,last,platformCallID,nativeID")
    add_store_url_argument(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    require_tool("wrk", "apt-get install wrk")
    configure_logging("warning")  # the bench prints its own table; the components stay quiet
    if args.store_url is None:
        measure(args, None)
        return
    with postgres_server(args.store_url, SERVER_CPU) as url:
        measure(args, url)


def measure(args: argparse.Namespace, cluster_url: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        folder = Path(tmp)
        db_path = folder / "bench.db"
        started = time.perf_counter()
        asyncio.run(populate(db_path, args.calls, cluster_url))
        print(
            f"stored {args.calls:,} finished + {ONGOING_CALLS} ongoing calls in {time.perf_counter() - started:.1f} s"
            + ("" if cluster_url is None else f" (SQLite, and in the cluster database as node {OWNER_NODE}'s)")
        )
        script = folder / "paths.lua"
        script.write_text(WRK_SCRIPT)

        servers: list[Server] = []
        try:
            if cluster_url is None:
                gateway_port, bare_port = free_port(), free_port()
                config = write_config(folder, gateway_port, db_path)
                servers.append(start_gateway("gateway", config, gateway_port, folder / "gateway.log"))
                servers.insert(0, start_bare(bare_port, folder))
            else:
                print(f"cluster database: {redacted_url(cluster_url)}, {asyncio.run(postgres_settings(cluster_url))}")
                sqlite_path = folder / "sqlite.db"
                for part in folder.glob("bench.db*"):  # the SQLite gateway gets a copy: one process per file
                    shutil.copyfile(part, folder / part.name.replace("bench.db", "sqlite.db"))
                servers.append(start_bare(free_port(), folder))
                port = free_port()
                config = write_config(folder, port, sqlite_path)
                servers.append(start_gateway("gateway, SQLite", config, port, folder / "sqlite.log"))
                for label, node, spool in (
                    ("owner node, PostgreSQL", OWNER_NODE, db_path),
                    ("other node, PostgreSQL", PEER_NODE, folder / f"{PEER_NODE}.db"),
                ):
                    port = free_port()
                    config = write_config(folder, port, spool, cluster_url, node)
                    servers.append(start_gateway(label, config, port, folder / f"{node}.log"))
            print(
                f"load: wrk 1 thread, {args.connections} connections, {args.seconds:g} s x {args.rounds} rounds; "
                f"servers on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}"
            )
            if cluster_url is None:
                print(
                    f"{'lookup':<16}{'bare req/s':>12}{'gateway req/s':>15}{'ratio':>8}{'gw p50 ms':>11}{'gw p99 ms':>11}{'errors':>8}"
                )
            else:
                print(
                    f"{'lookup':<16}{'server':<24}{'req/s':>10}{'/ bare':>8}{'/ SQLite':>10}"
                    f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
                )
            for kind in args.kinds.split(","):
                runs = measure_kind(kind, servers, folder, script, args)
                if cluster_url is None:
                    print_row(kind, runs[0], runs[1])
                else:
                    print_cluster_rows(kind, servers, runs)
        finally:
            for server in servers:
                stop_server(server.process)


def start_bare(port: int, folder: Path) -> Server:
    command = [sys.executable, "bench/bare_server.py", "--port", str(port)]
    return Server("bare aiohttp", start_server(command, port, folder / "bare.log"), f"http://127.0.0.1:{port}", 1)


def start_gateway(label: str, config: Path, port: int, log_path: Path) -> Server:
    command = [sys.executable, "-m", "gateway", "run", "--config", str(config)]
    process = start_server(command, port, log_path)
    return Server(label, process, f"http://127.0.0.1:{port}", 2)


def measure_kind(
    kind: str, servers: list[Server], folder: Path, script: Path, args: argparse.Namespace
) -> list[list[Measurement]]:
    """Each server's runs, in the order of `servers` (the bare handler first)."""
    paths = make_paths(kind, args.calls)
    paths_file = folder / f"{kind}.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    found = {server.label: check_answers(server.url, paths) for server in servers[1:]}
    if len({tuple(call_ids) for call_ids in found.values()}) > 1:
        raise SystemExit(f"the gateways found different calls for the same {kind} lookups: {found}")
    # warm-up: every server, one pass each (the gateway memoises 'last' per extension)
    for server in servers:
        run_wrk(server.url, paths_file, script, server.warm_up_s, args.connections)
    runs: list[list[Measurement]] = [[] for _ in servers]
    for _ in range(args.rounds):
        for server, server_runs in zip(servers, runs):
            server_runs.append(run_wrk(server.url, paths_file, script, args.seconds, args.connections))
    return runs


def paired_ratio(runs: list[Measurement], bare_runs: list[Measurement]) -> float:
    # Each round pairs back-to-back runs; the median of those ratios resists the machine's drift.
    return statistics.median(m.requests_per_s / b.requests_per_s for m, b in zip(runs, bare_runs))


def print_row(kind: str, bare_runs: list[Measurement], gateway_runs: list[Measurement]) -> None:
    bare_rate = statistics.median(m.requests_per_s for m in bare_runs)
    gateway_rate = statistics.median(m.requests_per_s for m in gateway_runs)
    print(
        f"{kind:<16}{bare_rate:>12,.0f}{gateway_rate:>15,.0f}{paired_ratio(gateway_runs, bare_runs):>8.2f}"
        f"{statistics.median(m.p50_ms for m in gateway_runs):>11.2f}"
        f"{statistics.median(m.p99_ms for m in gateway_runs):>11.2f}"
        f"{sum(m.errors for m in gateway_runs + bare_runs):>8}"
    )


def print_cluster_rows(kind: str, servers: list[Server], runs: list[list[Measurement]]) -> None:
    """bare, the gateway on SQLite, the owner node, the other node: each against the bare handler and the nodes
    against the gateway on SQLite too (paired per round)."""
    for index, (server, server_runs) in enumerate(zip(servers, runs)):
        against_sqlite = f"{paired_ratio(server_runs, runs[1]):>10.2f}" if index >= 2 else f"{'':>10}"
        print(
            f"{kind:<16}{server.label:<24}{statistics.median(m.requests_per_s for m in server_runs):>10,.0f}"
            f"{paired_ratio(server_runs, runs[0]):>8.2f}{against_sqlite}"
            f"{statistics.median(m.p50_ms for m in server_runs):>9.2f}"
            f"{statistics.median(m.p99_ms for m in server_runs):>9.2f}"
            f"{sum(m.errors for m in server_runs):>8}"
        )


if __name__ == "__main__":
    main()
