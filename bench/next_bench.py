"""`status=next` at scale: what N parked GetCallID waiters cost the gateway in memory, and how soon a call's start
wakes its waiters after the recorder's SETUP.

The recorder simulator (a child process) and the gateway (`gateway run`) run as processes of their own; this
process only holds the waiters: N raw HTTP/1.1 connections, each with one `GetCallID status=next` for one of E
extensions (N/E waiters each). The gateway's RSS is read from /proc before and after the waiters are parked.
Then a call is placed on each extension's channel in turn, and each of its waiters' answers is timed from just
before the simulator was told to send SETUP (a pipe round trip early, so slightly pessimistic) to the answer's
last byte here — which includes this process reading N/E sockets at once on the same 2 vCPUs.

    python bench/next_bench.py [--waiters 10000] [--extensions 50]

With more than 60 extensions (e.g. --extensions 10000: one waiter per agent, as desktops wait for their own
extension) the calls go round the simulator's 60 channels, each released before its next call.
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
from benchlib import ROOT, free_port, percentile  # noqa: E402 — bench/ is the script folder
from control_bench import API_KEY, SimulatorProcess, wait_for_health  # noqa: E402

NEXT_WINDOW_S = 300  # the waiters must outlive the parking and the calls
PARK_SETTLE_S = 2.0  # after the last request is written, for the gateway to read and park them all
CONNECT_BATCH = 500  # connections opened at a time (the listen backlog)
ANSWER_TIMEOUT_S = 30.0
CHANNELS = 60  # the simulated recorder's: two E1 spans of 30


def write_config(folder: Path, http_port: int, recorder_port: int, extensions: int) -> Path:
    # Up to 60 extensions each have a channel of their own; beyond that none is configured: a waiter for a number
    # is woken by a call that number is a party to (the call's `called` number here), configured or not.
    lines = (
        "\n".join(
            f'  - {{number: "{number}", mode: controlled, channel: "{channel(index)}"}}'
            for index, number in enumerate(extension_numbers(extensions))
            if extensions <= CHANNELS
        )
        or "  []"
    )
    config = folder / "next.yaml"
    config.write_text(
        f"""
http: {{host: 127.0.0.1, port: {http_port}}}
store: {{path: "{folder / "next.db"}"}}
api:
  next_window: {NEXT_WINDOW_S}
  keys: [{{key: {API_KEY}, name: bench}}]
extensions:
{lines}
recorders:
  - {{name: trunk1, url: "tcp://127.0.0.1:{recorder_port}", timeout: 2.0}}
log: {{level: warning}}
"""
    )
    return config


def channel(index: int) -> str:
    return f"{index // 30 + 1}/{index % 30 + 1}"  # the simulator's 60 channels: two E1 spans of 30


def extension_numbers(count: int) -> list[str]:
    return [str(3000 + index) for index in range(count)]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS")


class Waiter:
    def __init__(self, extension: str) -> None:
        self.extension = extension
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def park(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(
            f"GET /verba/api?action=GetCallID&apiKey={API_KEY}&extension={self.extension}&status=next HTTP/1.1\r\n"
            "Host: bench\r\nConnection: close\r\n\r\n".encode()
        )
        await self.writer.drain()

    async def answer(self) -> tuple[float, bytes]:
        assert self.reader is not None and self.writer is not None
        try:
            body = await self.reader.read()
        except ConnectionResetError:  # over the gateway's connection cap (gateway/api/connections.py)
            body = b""
        at = time.perf_counter()
        self.writer.close()
        return at, body


async def main(waiters_n: int, extensions_n: int) -> None:
    sim = SimulatorProcess()
    http_port = free_port()
    numbers = extension_numbers(extensions_n)
    try:
        with tempfile.TemporaryDirectory(prefix="next-bench-") as tmp:
            config = write_config(Path(tmp), http_port, sim.port, extensions_n)
            gateway = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "run", "--config", str(config), cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{http_port}") as session:
                    await wait_for_health(session)
                await asyncio.sleep(PARK_SETTLE_S)
                before = rss_mib(gateway.pid)
                waiters = [Waiter(numbers[index % extensions_n]) for index in range(waiters_n)]
                for first in range(0, waiters_n, CONNECT_BATCH):
                    await asyncio.gather(*(waiter.park(http_port) for waiter in waiters[first : first + CONNECT_BATCH]))
                await asyncio.sleep(PARK_SETTLE_S)
                parked = rss_mib(gateway.pid)
                delays: list[float] = []
                refused = 0
                by_number: dict[str, list[Waiter]] = {}
                for waiter in waiters:
                    by_number.setdefault(waiter.extension, []).append(waiter)
                for index, number in enumerate(numbers):
                    mine = by_number.get(number, [])
                    answers = [asyncio.create_task(waiter.answer()) for waiter in mine]
                    await asyncio.sleep(0)
                    if index >= CHANNELS:  # the channel's previous call ends first
                        sim.call("release", channel(index % CHANNELS))
                    setup = time.perf_counter()
                    sim.call("place_call", channel(index % CHANNELS), "01701234567", number)
                    for at, body in await asyncio.wait_for(asyncio.gather(*answers), ANSWER_TIMEOUT_S):
                        if b'code="0"' in body:
                            delays.append(at - setup)
                        else:
                            refused += 1
                after = rss_mib(gateway.pid)
            finally:
                gateway.send_signal(signal.SIGTERM)
                await gateway.wait()
    finally:
        sim.close()
    print(f"status=next: {waiters_n:,} waiters on {extensions_n} extensions ({waiters_n // extensions_n} each)")
    print(
        f"gateway RSS: {before:.1f} MiB idle, {parked:.1f} MiB with the waiters parked "
        f"(+{parked - before:.1f} MiB, {(parked - before) * 1024 * 1024 / waiters_n:,.0f} bytes a waiter), "
        f"{after:.1f} MiB after the calls"
    )
    print(
        f"SETUP → waiter answered: {len(delays):,} answers, p50 {percentile(delays, 50) * 1000:.1f} ms, "
        f"p99 {percentile(delays, 99) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms"
        + (f"; {refused} waiters refused or answered without a call (connection cap?)" if refused else "")
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waiters", type=int, default=10_000)
    parser.add_argument("--extensions", type=int, default=50)
    arguments = parser.parse_args()
    if arguments.extensions > arguments.waiters:
        parser.error("at most one extension per waiter")
    asyncio.run(main(arguments.waiters, arguments.extensions))
