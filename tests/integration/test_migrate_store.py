"""`gateway migrate-store`: a real SQLite store's calls and tokens copied into a real PostgreSQL database, read back
field by field; twice gives the same database; failures name what failed and never the password."""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from gateway.cluster.calls import read_calls
from gateway.cluster.database import Database
from gateway.cluster.tokens import ClusterTokens
from gateway.model import Call, CallState, Direction, Recording, RecordingMode
from gateway.store import Store
from gateway.tokens import StoredToken, secret_digest
from tests.conftest import gateway_command
from tests.gateway.test_store import T0, full_call

CALLS = 300
COMMAND_TIMEOUT_S = 60
LIVE_TOKEN = StoredToken(secret_digest("live"), secret_digest("key"), "agent", time.time() + 3600)
EXPIRED_TOKEN = StoredToken(secret_digest("old"), secret_digest("key"), "agent", time.time() - 1)
# Every table the migration writes, in a fixed order: the database's whole content as far as it is concerned.
DUMPS = (
    "SELECT * FROM calls ORDER BY call_id",
    "SELECT * FROM call_parties ORDER BY call_id, number",
    "SELECT * FROM recordings ORDER BY recording_id",
    "SELECT * FROM tokens ORDER BY digest",
)


def varied_call(index: int) -> Call:
    """Ongoing, ended, recorded, transferred, on-demand…: a different mix of fields for each index."""
    call_id = f"call-{index:05d}"
    start = T0 + timedelta(seconds=index)
    call = Call(
        call_id=call_id,
        start_time=start,
        direction=(Direction.IN, Direction.OUT, Direction.UNKNOWN)[index % 3],
        extension=str(200 + index % 20),
        calling=None if index % 7 == 0 else f"0301234{index:04d}",
        platform_call_id=f"pbx-{index}" if index % 2 else None,
        native_id=f"rec-{index}" if index % 3 else None,
        recording_mode=(None, RecordingMode.ON_DEMAND, RecordingMode.CONTROLLED)[index % 3],
    )
    if index % 4:
        call.state = CallState.FINISHED
        call.end_time = start + timedelta(seconds=30 + index % 11, microseconds=index)
        call.duration_s = 30.0 + index % 11
    if index % 5 == 0:
        call.other_parties = {f"3{index % 10}0", "399"}
    if index % 6 == 0:
        call.kept, call.do_not_delete = True, index % 12 == 0
    for number in range(index % 3):
        call.recordings.append(
            Recording(f"{call_id}/r{number}", call_id, start + timedelta(seconds=number), recorder="rec1", channel="4")
        )
    return call


@pytest.fixture
async def store_file(tmp_path: Path) -> Path:
    """A closed store file with CALLS varied calls, the full call of the store tests, and two tokens."""
    path = tmp_path / "site-a.db"
    store = Store(path)
    await store.open()
    try:
        await store.save_calls_soon([varied_call(index) for index in range(CALLS - 1)] + [full_call()])
        await store.put_token(LIVE_TOKEN)
        await store.put_token(EXPIRED_TOKEN)
    finally:
        await store.close()
    return path


async def migrate(*arguments: str) -> tuple[int, str, str]:
    process = await gateway_command("migrate-store", *arguments)
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def dump(url: str) -> list[list[tuple[object, ...]]]:
    connection = await asyncpg.connect(url)
    try:
        return [[tuple(row) for row in await connection.fetch(sql)] for sql in DUMPS]
    finally:
        await connection.close()


async def test_every_call_reads_back_as_the_store_has_it_and_a_second_run_changes_nothing(
    store_file: Path, pg_url: str
) -> None:
    code, out, err = await migrate("--from", str(store_file), "--to", pg_url, "--node", "site-a")
    assert (code, err) == (0, ""), err
    assert f"{CALLS} new, 0 replaced; 1 unexpired tokens" in out
    assert "store.spool" in out

    store = Store(store_file)
    await store.open()
    connection = await asyncpg.connect(pg_url)
    try:
        call_ids = [f"call-{index:05d}" for index in range(CALLS - 1)] + ["call-full"]
        migrated = await read_calls(connection, call_ids)
        assert [call.call_id for call in migrated] == call_ids
        for call in migrated:
            assert call.node == "site-a"
            call.node = None
            assert call == await store.get_call(call.call_id)
    finally:
        await connection.close()
        await store.close()
    database = Database(pg_url)
    try:
        tokens = ClusterTokens(database)
        assert await tokens.get(LIVE_TOKEN.digest) == LIVE_TOKEN
        assert await tokens.get(EXPIRED_TOKEN.digest) is None
    finally:
        await database.close()

    before = await dump(pg_url)
    code, out, err = await migrate("--from", str(store_file), "--to", pg_url, "--node", "site-a")
    assert (code, err) == (0, ""), err
    assert f"0 new, {CALLS} replaced" in out
    assert await dump(pg_url) == before


async def test_calls_another_node_holds_are_left_alone_and_named(store_file: Path, pg_url: str) -> None:
    assert (await migrate("--from", str(store_file), "--to", pg_url, "--node", "site-a"))[0] == 0
    before = await dump(pg_url)

    code, out, err = await migrate("--from", str(store_file), "--to", pg_url, "--node", "site-b")

    assert code == 1
    assert f"not copied: {CALLS} calls the database already holds as calls of node site-a" in err
    assert "--node site-a" in err
    assert await dump(pg_url) == before


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_database_is_named_without_its_password(store_file: Path) -> None:
    port = free_port()
    url = f"postgresql://gateway:Sup3r-secret@127.0.0.1:{port}/gateway"

    code, out, err = await migrate("--from", str(store_file), "--to", url, "--node", "site-a")

    assert code == 1
    assert f"cannot connect to the cluster database postgresql://gateway:***@127.0.0.1:{port}/gateway" in err
    assert "Sup3r-secret" not in out + err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--to", "postgresql://db.example/gateway", "--node", "site a"], "--node must be a node name"),
        (["--to", "mysql://db.example/gateway", "--node", "site-a"], "--to must be a PostgreSQL URL"),
    ],
)
async def test_a_bad_node_or_url_is_refused_with_exit_2(store_file: Path, arguments: list[str], message: str) -> None:
    code, _, err = await migrate("--from", str(store_file), *arguments)
    assert code == 2
    assert message in err


async def test_a_file_that_is_not_there_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    code, _, err = await migrate("--from", str(missing), "--to", "postgresql://127.0.0.1:1/gateway", "--node", "a")
    assert code == 1
    assert f"no store file {missing}" in err
    assert not missing.exists()
