"""The store on a real, tiny filesystem that fills up while records stream in: nothing read is lost, the
process keeps running and says why, and everything resumes once there is room again."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import LinkConfig, StoreConfig
from gateway.service import Gateway
from tests.conftest import eventually
from tests.integration.test_recovery import call_id_of, ipo_line, send
from tests.integration.test_store_faults import healthz, keep

# A record costs ~1 KB of store (journal line, call, parties, indexes, WAL): 3,000 records need ~3 MB, which
# fit on the filesystem but not beside the filler, which is taken away to make room again.
FILESYSTEM_BYTES = 10 * 1024 * 1024
FILLER_BYTES = 8_500_000
RECORDS = 3_000
RESUME_TIMEOUT_S = 30.0


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of FILESYSTEM_BYTES (root can mount one; CI runs as root, so there it must work)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FILESYSTEM_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs in CI: {result.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (not root?): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_a_full_disk_holds_the_lines_and_resumes_when_there_is_room(
    tiny_filesystem, started, unused_tcp_port, gateway_config
):
    filler = tiny_filesystem / "filler"
    filler.write_bytes(b"\0" * FILLER_BYTES)
    link = LinkConfig("pbx", "avaya-ipo", f"listen://127.0.0.1:{unused_tcp_port}", timezone="UTC")
    config = gateway_config(links=(link,), store=StoreConfig(tiny_filesystem / "gateway.db"))
    gateway: Gateway = await started(config)

    total = RECORDS
    # One PBX connection streaming more than fits; it blocks when the gateway stops reading, as a PBX does.
    streaming = asyncio.create_task(send(unused_tcp_port, *(ipo_line(index) for index in range(total))))
    try:
        await eventually(lambda: gateway.store.write_error is not None, RESUME_TIMEOUT_S)
        assert "full" in gateway.store.write_error
        report = await healthz(gateway)
        assert report["status"] == "degraded" and report["store"]["state"] == "failing"
        assert gateway.links["pbx"].records < total
    except BaseException:
        streaming.cancel()
        raise

    filler.unlink()
    await asyncio.wait_for(streaming, RESUME_TIMEOUT_S)
    await eventually(
        lambda: gateway.store.write_error is None and gateway.links["pbx"].records == total, RESUME_TIMEOUT_S
    )
    sent = total
    await gateway.tracker.flush()
    for index in (0, sent // 2, sent - 1):
        assert await call_id_of(gateway, str(1_000_000 + index))
    assert len(await gateway.store.journal_entries("pbx", limit=sent + 1)) == sent
    # Answered 200 once its write commits; a 503 meanwhile is honest (the store may still be catching up).
    call_id = await call_id_of(gateway, "1000000")
    deadline = asyncio.get_running_loop().time() + RESUME_TIMEOUT_S
    while (status := await keep(gateway, call_id)) == 503 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    assert status == 200
