"""A gateway restarted on its store: journalled lines it had not applied become calls, open multi-record
calls are completed, callIDs stay the same, and nothing is applied twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.config import LinkConfig
from gateway.model import record_call_id
from gateway.service import Gateway
from gateway.store import Store
from tests.conftest import eventually
from tests.integration.test_smdr_links import (
    IPO_LOST,
    IPO_TRANSFER_1,
    IPO_TRANSFER_2,
    api,
    call_info,
)

RECEIVED = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def ipo_line(index: int) -> bytes:
    extension = 2000 + index
    return (
        f"2026/11/23 10:00:{index % 60:02d},00:01:00,5,0170{index:07d},I,{extension},{extension},,0,"
        f"{1_000_000 + index},0,E{extension},Agent,T9001,LINE 1.1,0,0"
    ).encode()


@pytest.fixture
def link_config(unused_tcp_port: int) -> LinkConfig:
    return LinkConfig("pbx", "avaya-ipo", f"listen://127.0.0.1:{unused_tcp_port}", timezone="UTC")


async def send(port: int, *lines: bytes) -> None:
    async def connect() -> asyncio.StreamWriter:
        while True:
            try:
                return (await asyncio.open_connection("127.0.0.1", port))[1]
            except OSError:
                await asyncio.sleep(0.01)

    writer = await asyncio.wait_for(connect(), 10.0)
    writer.write(b"".join(line + b"\r\n" for line in lines))
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def call_id_of(gateway: Gateway, platform_call_id: str) -> str:
    root = await api(gateway, action="GetCallID", platformCallID=platform_call_id)
    assert root.find("Response").get("code") == "0", root
    return root.findtext("CallID") or ""


async def run_gateway(config, during) -> None:
    gateway = Gateway(config)
    await gateway.start()
    try:
        await during(gateway)
    finally:
        await gateway.stop()


async def journal_directly(path: Path, link: str, *lines: bytes) -> tuple[list[int], int]:
    """What a crash leaves: lines in the journal that no call was made from. Their seqs and the store's id."""
    store = Store(path)
    await store.open()
    try:
        seqs = await store.append_journal_many_soon(link, [(RECEIVED, line) for line in lines])
        return seqs, store.instance_id
    finally:
        await store.close()


async def test_lines_journalled_but_never_applied_become_calls_with_ids_of_their_lines(
    tmp_path, link_config, gateway_config
):
    config = gateway_config(links=(link_config,))
    seqs, instance = await journal_directly(config.store.path, "pbx", ipo_line(1), ipo_line(2))

    async def check(gateway: Gateway) -> None:
        assert gateway.links["pbx"].replayed == 2
        for index, seq in zip((1, 2), seqs):
            assert await call_id_of(gateway, str(1_000_000 + index)) == record_call_id(instance, seq)

    await run_gateway(config, check)


async def test_a_restart_applies_nothing_twice(tmp_path, link_config, unused_tcp_port, gateway_config):
    config = gateway_config(links=(link_config,))
    handed_out: dict[str, str] = {}

    async def first(gateway: Gateway) -> None:
        await send(unused_tcp_port, *(ipo_line(index) for index in range(20)))
        await eventually(lambda: gateway.links["pbx"].records >= 20)
        for index in (0, 7, 19):
            handed_out[str(1_000_000 + index)] = await call_id_of(gateway, str(1_000_000 + index))

    await run_gateway(config, first)

    async def second(gateway: Gateway) -> None:
        assert gateway.links["pbx"].replayed == 0
        assert (await gateway.health())["calls"]["stored"] == 20
        for platform_call_id, call_id in handed_out.items():
            assert await call_id_of(gateway, platform_call_id) == call_id

    await run_gateway(config, second)
    await run_gateway(config, second)


async def test_a_multi_record_call_open_at_the_crash_is_completed_by_its_last_part(
    tmp_path, link_config, unused_tcp_port, gateway_config
):
    config = gateway_config(links=(link_config,))
    ids: list[str] = []

    async def first(gateway: Gateway) -> None:
        await send(unused_tcp_port, IPO_LOST, IPO_TRANSFER_1)  # Continuation=1: more parts follow
        await eventually(lambda: gateway.links["pbx"].records >= 2)
        ids.append(await call_id_of(gateway, "1000014160"))

    await run_gateway(config, first)
    # The last part reached the journal, and the gateway died before parsing it.
    await journal_directly(config.store.path, "pbx", IPO_TRANSFER_2)

    async def second(gateway: Gateway) -> None:
        assert gateway.links["pbx"].replayed == 1
        assert await call_id_of(gateway, "1000014160") == ids[0]  # one call, the same one
        info = await call_info(gateway, callID=ids[0])
        assert info.findtext("duration") == "34"  # 13 s + 21 s: both parts

    await run_gateway(config, second)


async def test_progress_is_committed_with_the_calls(tmp_path, link_config, unused_tcp_port, gateway_config):
    config = gateway_config(links=(link_config,))

    async def first(gateway: Gateway) -> None:
        await send(unused_tcp_port, b"garbage", *(ipo_line(index) for index in range(5)), b"more garbage")
        await eventually(lambda: gateway.links["pbx"].records >= 5 and gateway.links["pbx"].errors >= 2)
        await gateway.tracker.flush()

    await run_gateway(config, first)
    store = Store(config.store.path)
    await store.open()
    try:
        (last,) = await store.journal_entries("pbx", after_seq=6)
        progress = (await store.link_progress())["pbx"]
        assert (progress.applied_seq, progress.replay_from_seq) == (last.seq, last.seq + 1)
    finally:
        await store.close()
