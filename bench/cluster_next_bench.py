"""How soon a call that starts on one cluster node wakes `status=next` waiters on another, next to the same
node's own waiters, measured side by side in one run.

Two gateways (in this process) share a PostgreSQL database: site A with the recorder simulator, site B with
nothing of its own. Each round parks one GetCallID status=next waiter for extension 8856 on A and one on B, then
the simulator sends SETUP; each answer is timed from just before SETUP was sent to the answer's last byte. B's
path: A stores the call locally, ships it and NOTIFYs, B reads it and answers.

    python bench/cluster_next_bench.py [--rounds 200] [--store-url URL]

Without --store-url a throwaway PostgreSQL server is started for the run (tests/pg_cluster.py; Debian's
`postgresql` package) with the test suite's settings (fsync off).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from benchlib import ROOT, summary_ms  # noqa: E402 — bench/ is the script folder

sys.path.insert(0, str(ROOT))
import structlog  # noqa: E402

from gateway.config import (  # noqa: E402
    ApiConfig,
    ApiKeyConfig,
    ExtensionConfig,
    GatewayConfig,
    HttpConfig,
    RecorderConfig,
    StoreConfig,
)
from gateway.model import RecordingMode  # noqa: E402
from gateway.service import Gateway  # noqa: E402
from simulators.trunkrec import TrunkRecorderSimulator  # noqa: E402

KEY = "5d3f0a8e-6b1c-4c2e-9a47-1f0e2d3c4b5a"
ANSWER_TIMEOUT_S = 10.0


def node(folder: Path, name: str, url: str, **fields: object) -> Gateway:
    return Gateway(
        GatewayConfig(
            source=folder / f"{name}.yaml",
            node=name,
            http=HttpConfig("127.0.0.1", 0),
            store=StoreConfig(folder / f"{name}.db", url=url),
            api=ApiConfig(next_window_s=30.0, keys=(ApiKeyConfig(KEY, "bench"),)),
            **fields,  # type: ignore[arg-type]
        )
    )


async def waiter(session: aiohttp.ClientSession, gateway: Gateway) -> float:
    params = {"apiKey": KEY, "action": "GetCallID", "extension": "8856", "status": "next"}
    async with session.get(f"{gateway.url}/verba/api", params=params) as response:
        body = await response.read()
        answered = time.perf_counter()
    if b'code="0"' not in body:
        raise RuntimeError(f"waiter answered {body[:200]!r}")
    return answered


async def measure(url: str, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cluster-next-") as folder_name:
        folder = Path(folder_name)
        sim = TrunkRecorderSimulator(channels=60, name="sim1")
        await sim.start_tcp("127.0.0.1", 0)
        site_a = node(
            folder,
            "site-a",
            url,
            extensions=(ExtensionConfig("8856", RecordingMode.CONTROLLED, "trunk1", "1/5"),),
            recorders=(RecorderConfig("trunk1", f"tcp://127.0.0.1:{sim.port}", 2.0),),
        )
        site_b = node(folder, "site-b", url)
        await site_a.start()
        await site_b.start()
        await site_a.recorder_clients[0].wait_ready(ANSWER_TIMEOUT_S)
        same_node: list[float] = []
        other_node: list[float] = []
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(rounds):
                    waiting = [asyncio.create_task(waiter(session, site)) for site in (site_a, site_b)]
                    while site_a.tracker.next_waiter_count < 1 or site_b.tracker.next_waiter_count < 1:
                        await asyncio.sleep(0.001)
                    sent = time.perf_counter()
                    sim.place_call("1/5", calling="01707392200", called="8856", direction="in")
                    answered_a, answered_b = await asyncio.wait_for(asyncio.gather(*waiting), ANSWER_TIMEOUT_S)
                    same_node.append(answered_a - sent)
                    other_node.append(answered_b - sent)
                    sim.release("1/5")
                    await asyncio.sleep(0.01)
        finally:
            await site_b.stop()
            await site_a.stop()
            await sim.stop()
    print(f"next waiter on the call's own node (A):   {summary_ms(same_node, 'calls')}")
    print(f"next waiter on another node (B):          {summary_ms(other_node, 'calls')}")
    extra = sorted(b - a for a, b in zip(same_node, other_node))
    print(f"B after A, per call:                      {summary_ms(extra, 'calls')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--store-url", help="a PostgreSQL database for both nodes (default: a throwaway server)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.store_url:
        asyncio.run(measure(args.store_url, args.rounds))
        return
    from tests.pg_cluster import PostgresCluster

    server = PostgresCluster.create()
    try:
        asyncio.run(measure(server.url, args.rounds))
    finally:
        server.remove()


if __name__ == "__main__":
    main()
