"""Fixtures shared across the suite: a store, the recorder simulator, a gateway configuration builder, running
gateways and an HTTP client; and the guard that fails a test leaving an asyncio task or a thread behind."""

from __future__ import annotations

import asyncio
import asyncio.runners
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.config import (
    ApiConfig,
    ApiKeyConfig,
    GatewayConfig,
    HttpConfig,
    StoreConfig,
)
from gateway.service import Gateway
from gateway.store import Store
from simulators.trunkrec import TrunkRecorderSimulator
from tests.pg_cluster import PostgresCluster

API_KEY = "b3c4d5e6-0000-4000-8000-000000000001"  # the open key of `gateway_config`
# Tasks the guard lets pass, by coroutine: pyserial-asyncio-fast closes a port in a task of its own that nothing
# can await (SerialTransport.close() returns at once); drivers/trunkrec/client.py closing over a pty ends before it.
TOLERATED_LEFTOVER_TASKS = ("SerialTransport._call_connection_lost",)
THREAD_GRACE_S = 1.0  # a thread told to stop (a store's writer, an executor worker) may take this long to end

# --- leftovers: a test fails when it leaves a task running or a thread alive -------------------------------------

_tasks_left_running: list[str] = []
_cancel_all_tasks = asyncio.runners._cancel_all_tasks  # type: ignore[attr-defined]  # the private hook is the only one


def _note_tasks_left_running(loop: asyncio.AbstractEventLoop) -> None:
    """pytest-asyncio closes each test's loop through asyncio.Runner, which cancels what is still running: note
    those tasks first (the test and its fixtures have finished by then, so each one is a leak)."""
    _tasks_left_running.extend(
        repr(task)
        for task in asyncio.all_tasks(loop)
        if not task.done() and task.get_coro().__qualname__ not in TOLERATED_LEFTOVER_TASKS
    )
    _cancel_all_tasks(loop)


asyncio.runners._cancel_all_tasks = _note_tasks_left_running  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def no_tasks_or_threads_left_behind() -> Iterator[None]:
    threads_before = set(threading.enumerate())
    _tasks_left_running.clear()
    yield
    deadline = time.monotonic() + THREAD_GRACE_S
    while True:
        threads_left = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        if not threads_left or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    tasks_left = list(_tasks_left_running)
    _tasks_left_running.clear()
    assert not tasks_left, f"the test left tasks running: {tasks_left}"
    assert not threads_left, f"the test left threads alive: {threads_left}"


# --- waiting ------------------------------------------------------------------------------------------------------


async def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.01) -> None:
    """Returns once `predicate()` is true; TimeoutError after `timeout_s` (generous: loopback answers at once)."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(interval_s)

    await asyncio.wait_for(poll(), timeout_s)


ROOT = Path(__file__).resolve().parent.parent  # the repository: what `python -m gateway` runs from


async def gateway_command(
    *arguments: str, cwd: Path = ROOT, stdout: int | None = asyncio.subprocess.PIPE, **options: Any
) -> asyncio.subprocess.Process:
    """`python -m gateway ARGUMENTS…` as a process of its own (the console script's code path); stderr and any
    other `create_subprocess_exec` option in `options`."""
    options.setdefault("stderr", asyncio.subprocess.PIPE)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *arguments, cwd=cwd, stdout=stdout, **options
    )


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real SQLite store (`tmp_path / "store.db"`), open for the test and closed after it."""
    opened = Store(tmp_path / "store.db")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def sim() -> AsyncIterator[TrunkRecorderSimulator]:
    """A 60-channel TRUNKREC/1 simulator listening on a free loopback port (`sim.port`)."""
    simulator = TrunkRecorderSimulator(channels=60, name="sim1")
    await simulator.start_tcp("127.0.0.1", 0)
    yield simulator
    await simulator.stop()


@pytest.fixture
def gateway_config(tmp_path: Path) -> Callable[..., GatewayConfig]:
    """Builds a GatewayConfig in `tmp_path`: HTTP on a free loopback port, one open key (API_KEY); keyword
    arguments replace any field (`links=…`, `recorders=…`, `api=…`)."""

    def build(**overrides: Any) -> GatewayConfig:
        fields: dict[str, Any] = {
            "source": tmp_path / "test.yaml",
            "http": HttpConfig("127.0.0.1", 0),
            "store": StoreConfig(tmp_path / "gateway.db"),
            "api": ApiConfig(keys=(ApiKeyConfig(API_KEY, "crm"),)),
        }
        fields.update(overrides)
        return GatewayConfig(**fields)

    return build


@pytest.fixture
async def started() -> AsyncIterator[Callable[[GatewayConfig], Awaitable[Gateway]]]:
    """Starts gateways in-process (`await started(config)`) and stops each after the test."""
    gateways: list[Gateway] = []

    async def start(config: GatewayConfig) -> Gateway:
        gateway = Gateway(config)
        await gateway.start()
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in gateways:
        await gateway.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One aiohttp client session for the test, closed after it."""
    async with aiohttp.ClientSession() as session:
        yield session


# --- PostgreSQL: one throwaway server per test process, a fresh database per test --------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A real PostgreSQL server (Debian's package), started for the first test that needs it and removed at the
    end of the session; fails in CI and skips elsewhere when PostgreSQL is not installed."""
    cluster = PostgresCluster.create()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
async def pg_url(postgres: PostgresCluster) -> AsyncIterator[str]:
    """The URL of a new, empty database on the test server, dropped after the test."""
    name = f"test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield postgres.url_for(name)
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()
