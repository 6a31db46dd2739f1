"""Fixtures of the hostile-client tests: a gateway on loopback with short waits (hostile_http.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.service import Gateway
from tests.gateway.hostile_http import hostile_config


@pytest.fixture
async def hostile_gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gateway = Gateway(hostile_config(tmp_path))
    await gateway.start()
    yield gateway
    await gateway.stop()
