"""SMDR ingest: records/s from a `listen://` link into the durable store while the API answers, and the
delay from a line's arrival to the API seeing its call (p50/p99).

The gateway runs as its own process with one Avaya IP Office `listen://` link. This process
pushes N records over one connection, and meanwhile, over a second connection, sends a probe
record every few milliseconds and polls the API (GetCallID by platformCallID) until the probe's
call is found: that is the arrival-to-API delay. Two phases: first as fast as the gateway takes
them (throughput, and the delay at saturation), then at a steady offered load (`--rate`), the
delay a site running below capacity sees.

    python bench/ingest_bench.py [--records 100000] [--rate 2000] [--sync full|normal]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from benchlib import ROOT, free_port, summary_ms  # noqa: E402 — bench/ is the script folder

API_KEY = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
CHUNK_RECORDS = 500  # records per write of the bulk sender, like a PBX flushing its buffer
PROBE_INTERVAL_S = 0.02
READY_TIMEOUT_S = 30.0
DONE_TIMEOUT_S = 600.0
PROBE_PCID_BASE = 9_000_000_000
STEADY_SECONDS = 10.0


def ipo_record(index: int, pcid: int) -> bytes:
    extension = 2000 + index % 5000
    return (
        f"2026/11/23 10:{index // 60 % 60:02d}:{index % 60:02d},00:01:00,5,0170{index:07d},I,{extension},{extension},,0,"
        f"{pcid},0,E{extension},Agent {extension},T9001,LINE 1.1,0,0\r\n"
    ).encode()


def write_config(folder: Path, http_port: int, smdr_port: int, sync: str) -> Path:
    config = folder / "ingest.yaml"
    config.write_text(
        f"""
http: {{host: 127.0.0.1, port: {http_port}}}
store: {{path: "{folder / "ingest.db"}", sync: {sync}}}
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


async def records_parsed(session: aiohttp.ClientSession) -> int:
    async with session.get("/healthz") as response:
        return (await response.json())["links"]["pbx"]["records"]


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


async def run_phase(
    session, smdr_port: int, count: int, first_pcid: int, rate: float | None
) -> tuple[float, list[float]]:
    """Records/s achieved and the probes' arrival → API delays while `count` records go in."""
    already = await records_parsed(session)
    stop = asyncio.Event()
    delays: list[float] = []
    probes = asyncio.create_task(prober(smdr_port, session, stop, delays, PROBE_PCID_BASE + first_pcid))
    started = await bulk_sender(smdr_port, count, first_pcid, rate)
    deadline = time.monotonic() + DONE_TIMEOUT_S
    while (parsed := await records_parsed(session) - already) < count + len(delays):
        if time.monotonic() > deadline:
            raise SystemExit(f"only {parsed} of {count} records parsed")
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    await probes
    return count / elapsed, delays


def delay_summary(delays: list[float]) -> str:
    return summary_ms(delays, "probes")


async def main(count: int, rate: float, sync: str) -> None:
    http_port, smdr_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        config = write_config(Path(tmp), http_port, smdr_port, sync)
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
                throughput, saturated = await run_phase(session, smdr_port, count, 1_000_000_000, None)
                steady_count = int(rate * STEADY_SECONDS)
                achieved, steady = await run_phase(session, smdr_port, steady_count, 2_000_000_000, rate)
        finally:
            gateway.send_signal(signal.SIGTERM)
            await gateway.wait()
    print(f"IP Office records over listen:// into the store (sync: {sync}), API answering meanwhile")
    print(
        f"as fast as taken: {count:,} records at {throughput:,.0f} records/s; "
        f"line arrival → API finds the call, {delay_summary(saturated)}"
    )
    print(
        f"steady {rate:,.0f} records/s offered ({achieved:,.0f} achieved, {steady_count:,} records): "
        f"line arrival → API finds the call, {delay_summary(steady)}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2_000.0, help="offered records/s of the steady phase")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.records, arguments.rate, arguments.sync))
