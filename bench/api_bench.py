"""GetCallID throughput of the gateway with N calls stored, against a bare aiohttp handler, same run.

Both servers run as separate processes pinned to CPU 0 and are loaded by the same wrk client
pinned to CPU 1, alternating round by round so that machine noise hits both alike. Prints the
median requests/s of each, the median of the per-round ratios gateway / bare, and the gateway's
latency.

    python bench/api_bench.py [--calls 100000] [--seconds 3] [--rounds 7] [--connections 32]

Needs `wrk` (Debian/Ubuntu: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
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
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from benchlib import ROOT, free_port, require_tool  # noqa: E402 — bench/ is the script folder

sys.path.insert(0, str(ROOT))

from gateway.logs import configure_logging  # noqa: E402
from gateway.model import Call, CallState, Direction, RecordingMode, new_id  # noqa: E402
from gateway.store import Store  # noqa: E402

configure_logging("warning")  # the bench prints its own table; the components stay quiet

API_KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
EXTENSIONS = 5_000  # calls spread over this many extensions: 'last' hits a different one each request
ONGOING_CALLS = 200
SERVER_CPU = "0"
CLIENT_CPU = "1"
READY_TIMEOUT_S = 60.0
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


async def populate(db_path: Path, calls: int) -> None:
    """N finished calls (spread over EXTENSIONS extensions) and a few ongoing ones, written through the real store."""
    store = Store(db_path)
    await store.open()
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    pending = []
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
        if len(pending) >= 10_000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await store.close()


def write_config(folder: Path, port: int, db_path: Path) -> Path:
    config = folder / "bench.yaml"
    config.write_text(
        f"""
http: {{host: 127.0.0.1, port: {port}}}
store: {{path: "{db_path}"}}
api:
  keys:
    - {{key: {API_KEY}, name: bench}}
log: {{level: warning}}
"""
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
    raise ValueError(kind)


def check_answers(base_url: str, paths: list[str]) -> None:
    """The load must be real lookups that succeed, not errors answered fast."""
    for path in paths[:20]:
        with urllib.request.urlopen(base_url + path, timeout=10) as response:
            body = response.read().decode()
        if 'code="0"' not in body:
            raise SystemExit(f"gateway did not find the call for {path}: {body}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--kinds", default="ongoing,last,platformCallID")
    args = parser.parse_args()
    require_tool("wrk", "apt-get install wrk")

    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        folder = Path(tmp)
        db_path = folder / "bench.db"
        started = time.perf_counter()
        asyncio.run(populate(db_path, args.calls))
        print(
            f"stored {args.calls:,} finished + {ONGOING_CALLS} ongoing calls in {time.perf_counter() - started:.1f} s"
        )
        script = folder / "paths.lua"
        script.write_text(WRK_SCRIPT)

        gateway_port, bare_port = free_port(), free_port()
        config = write_config(folder, gateway_port, db_path)
        gateway = start_server(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)], gateway_port, folder / "gateway.log"
        )
        bare = start_server(
            [sys.executable, "bench/bare_server.py", "--port", str(bare_port)], bare_port, folder / "bare.log"
        )
        try:
            print(
                f"load: wrk 1 thread, {args.connections} connections, {args.seconds:g} s x {args.rounds} rounds; "
                f"servers on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}"
            )
            print(
                f"{'lookup':<16}{'bare req/s':>12}{'gateway req/s':>15}{'ratio':>8}{'gw p50 ms':>11}{'gw p99 ms':>11}{'errors':>8}"
            )
            for kind in args.kinds.split(","):
                paths = make_paths(kind, args.calls)
                paths_file = folder / f"{kind}.txt"
                paths_file.write_text("\n".join(paths) + "\n")
                check_answers(f"http://127.0.0.1:{gateway_port}", paths)
                # warm-up: both servers, one pass each (the gateway memoises 'last' per extension)
                run_wrk(f"http://127.0.0.1:{bare_port}", paths_file, script, 1, args.connections)
                run_wrk(f"http://127.0.0.1:{gateway_port}", paths_file, script, 2, args.connections)
                bare_runs, gateway_runs = [], []
                for _ in range(args.rounds):
                    bare_runs.append(
                        run_wrk(f"http://127.0.0.1:{bare_port}", paths_file, script, args.seconds, args.connections)
                    )
                    gateway_runs.append(
                        run_wrk(f"http://127.0.0.1:{gateway_port}", paths_file, script, args.seconds, args.connections)
                    )
                bare_rate = statistics.median(m.requests_per_s for m in bare_runs)
                gateway_rate = statistics.median(m.requests_per_s for m in gateway_runs)
                # Each round pairs two back-to-back runs; the median of those ratios resists the machine's drift.
                ratio = statistics.median(g.requests_per_s / b.requests_per_s for g, b in zip(gateway_runs, bare_runs))
                print(
                    f"{kind:<16}{bare_rate:>12,.0f}{gateway_rate:>15,.0f}{ratio:>8.2f}"
                    f"{statistics.median(m.p50_ms for m in gateway_runs):>11.2f}"
                    f"{statistics.median(m.p99_ms for m in gateway_runs):>11.2f}"
                    f"{sum(m.errors for m in gateway_runs + bare_runs):>8}"
                )
        finally:
            stop_server(gateway)
            stop_server(bare)


if __name__ == "__main__":
    main()
