"""The event stream under ingest: SMDR records/s with no /events consumer against the same with many consumers
and one that never reads, measured side by side on one gateway (rounds alternate); and the delay from a
record's arrival to its `call.updated` event at a consumer (p50/p99).

The gateway runs as its own process with one Avaya IP Office `listen://` link (as in ingest_bench.py). Each
round pushes N records as fast as the link takes them. In the "consumers" rounds, C clients follow
`/events` (reading every event) and one more opens `/events` and never reads a byte: the gateway must drop it
rather than slow down.

    python bench/events_bench.py [--records 20000] [--consumers 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from benchlib import ROOT, free_port, summary_ms  # noqa: E402 — bench/ is the script folder
from ingest_bench import API_KEY, bulk_sender, ipo_record, records_parsed, wait_ready, write_config

DONE_TIMEOUT_S = 600.0
PROBES = 200
PROBE_INTERVAL_S = 0.01
PROBE_TIMEOUT_S = 10.0
PROBE_PCID_BASE = 80_000_000_000  # probes' platformCallIDs start with 8, the bulk records' with 1
PROBE_MARK = b'"platformCallID":"8'


async def consumer(port: int, seen: list[int], ready: asyncio.Event, probes: dict[str, asyncio.Future[float]]) -> None:
    """Reads every event; resolves the probe whose platformCallID an event carries."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}/events", params={"apiKey": API_KEY}) as response,
    ):
        ready.set()
        async for line in response.content:
            if line.startswith(b"data: "):
                seen[0] += 1
                if PROBE_MARK not in line:  # parse only the probes' events: this process shares the 2 cores
                    continue
                pcid = json.loads(line[6:]).get("platformCallID")
                probe = probes.get(pcid) if pcid else None
                if probe is not None and not probe.done():
                    probe.set_result(time.perf_counter())


async def stalled_consumer(port: int) -> asyncio.StreamWriter:
    """Asks for the stream and never reads it."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /events?apiKey={API_KEY} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    return writer


async def ingest(session: aiohttp.ClientSession, smdr_port: int, count: int, first_pcid: int) -> float:
    already = await records_parsed(session)
    started = await bulk_sender(smdr_port, count, first_pcid)
    deadline = time.monotonic() + DONE_TIMEOUT_S
    while await records_parsed(session) - already < count:
        if time.monotonic() > deadline:
            raise SystemExit("records not parsed in time")
        await asyncio.sleep(0.01)
    return count / (time.perf_counter() - started)


async def probe_delays(smdr_port: int, probes: dict[str, asyncio.Future[float]], first_pcid: int) -> list[float]:
    """One record at a time; the delay until the first consumer sees its event."""
    _, writer = await asyncio.open_connection("127.0.0.1", smdr_port)
    delays = []
    loop = asyncio.get_running_loop()
    for index in range(PROBES):
        pcid = first_pcid + index
        seen = probes[str(pcid)] = loop.create_future()
        sent = time.perf_counter()
        writer.write(ipo_record(index, pcid))
        await writer.drain()
        delays.append(await asyncio.wait_for(seen, PROBE_TIMEOUT_S) - sent)
        await asyncio.sleep(PROBE_INTERVAL_S)
    writer.close()
    return delays


async def main(count: int, consumers: int, rounds: int) -> None:
    http_port, smdr_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="events-bench-") as tmp:
        config = write_config(Path(tmp), http_port, smdr_port, "full")
        gateway = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(config), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        alone: list[float] = []
        followed: list[float] = []
        received = [0]
        try:
            async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{http_port}") as session:
                await wait_ready(session)
                pcid = 1_000_000_000
                for _ in range(rounds):
                    alone.append(await ingest(session, smdr_port, count, pcid))
                    pcid += count
                    probes: dict[str, asyncio.Future[float]] = {}
                    ready = [asyncio.Event() for _ in range(consumers)]
                    tasks = [
                        asyncio.create_task(consumer(http_port, received, ready[i], probes)) for i in range(consumers)
                    ]
                    await asyncio.gather(*(event.wait() for event in ready))
                    stalled = await stalled_consumer(http_port)
                    followed.append(await ingest(session, smdr_port, count, pcid))
                    pcid += count
                    delays = await probe_delays(smdr_port, probes, PROBE_PCID_BASE + pcid)
                    for task in tasks:
                        task.cancel()
                    for task in tasks:
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                    stalled.close()
        finally:
            gateway.send_signal(signal.SIGTERM)
            await gateway.wait()
    best_alone, best_followed = max(alone), max(followed)
    print(f"IP Office records over listen:// (sync: full), {count:,} per round, rounds alternating")
    print("no /events consumer:        " + ", ".join(f"{rate:,.0f}" for rate in alone) + " records/s")
    print(
        f"{consumers} consumers + 1 stalled: "
        + ", ".join(f"{rate:,.0f}" for rate in followed)
        + f" records/s (best vs best: {best_followed / best_alone:.2f}); {received[0]:,} events read"
    )
    print(f"record arrival → its call.updated at a consumer (last round, {consumers} consumers): {summary_ms(delays)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--consumers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.records, arguments.consumers, arguments.rounds))
