"""The throwaway PostgreSQL cluster the store tests will run on (tests/pg_cluster.py) starts as the suite runs it —
as root in CI, through the `postgres` system user — takes the gateway user's password over TCP, and carries a
NOTIFY from one session to another's LISTEN (what cross-node wake-ups need)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.pg_cluster import PostgresCluster

PSQL_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster.create()
    yield cluster
    cluster.remove()


def psql(cluster: PostgresCluster, sql: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.bin / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", cluster.url, "-c", sql],
        capture_output=True,
        text=True,
        timeout=PSQL_TIMEOUT_S,
        env={**os.environ, "PGPASSWORD": password or ""} if password is not None else dict(os.environ),
    )


def test_the_cluster_answers_over_tcp_with_the_gateway_users_password(cluster):
    result = psql(cluster, "SELECT current_user || ' ' || current_database()")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "gateway gateway"


def test_a_wrong_password_is_refused(cluster):
    wrong = cluster.url.replace(cluster.password, "not-the-password")
    result = subprocess.run(
        [str(cluster.bin / "psql"), "-X", "-d", wrong, "-c", "SELECT 1"], capture_output=True, text=True,
        timeout=PSQL_TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode != 0 and "password authentication failed" in result.stderr


def test_a_notify_reaches_a_listening_session(cluster):
    # One psql session listens, a second notifies; the listener's next command shows the notification.
    listener = subprocess.Popen(
        [str(cluster.bin / "psql"), "-X", "-d", cluster.url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert listener.stdin is not None
    listener.stdin.write("LISTEN calls;\n\\echo listening\n")
    listener.stdin.flush()
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == "LISTEN"
    assert listener.stdout.readline().strip() == "listening"
    assert psql(cluster, "NOTIFY calls, 'site-a 8856'").returncode == 0
    out, _ = listener.communicate("SELECT 1;\n", timeout=PSQL_TIMEOUT_S)
    assert 'Asynchronous notification "calls" with payload "site-a 8856"' in out


def test_the_test_cluster_runs_without_fsync_and_a_durable_one_with_it(cluster):
    assert psql(cluster, "SHOW fsync").stdout.strip() == "off"
    durable = PostgresCluster.create(durable=True)  # what the benchmarks' `--store-url auto` runs on
    try:
        settings = psql(durable, "SELECT current_setting('fsync') || ' ' || current_setting('synchronous_commit')")
        assert settings.returncode == 0, settings.stderr
        assert settings.stdout.strip() == "on on"
    finally:
        durable.remove()
