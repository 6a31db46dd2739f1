"""Fixtures shared across the suite: an open store in a temporary folder, the recorder simulator on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store import Store
from simulators.trunkrec import TrunkRecorderSimulator


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real SQLite store (`tmp_path / "store.db"`), open for the test and closed after it."""
    opened = Store(tmp_path / "store.db")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def sim():
    """A 60-channel TRUNKREC/1 simulator listening on a free loopback port (`sim.port`)."""
    simulator = TrunkRecorderSimulator(channels=60, name="sim1")
    await simulator.start_tcp("127.0.0.1", 0)
    yield simulator
    await simulator.stop()
