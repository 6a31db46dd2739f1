"""Fixtures shared across the suite: the recorder simulator on loopback."""

from __future__ import annotations

import pytest

from simulators.trunkrec import TrunkRecorderSimulator


@pytest.fixture
async def sim():
    """A 60-channel TRUNKREC/1 simulator listening on a free loopback port (`sim.port`)."""
    simulator = TrunkRecorderSimulator(channels=60, name="sim1")
    await simulator.start_tcp("127.0.0.1", 0)
    yield simulator
    await simulator.stop()
