"""A throwaway PostgreSQL cluster for the tests: Debian's `postgresql` package (`initdb`/`pg_ctl` from
/usr/lib/postgresql/*/bin), on a free loopback port, with a password user. PostgreSQL refuses to run as root, so
when the suite runs as root (CI) the cluster directory belongs to the `postgres` system user and the programs
run through `runuser`. `.ci/ensure-packages` installs the package when it is missing.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVICE_USER = "postgres"  # the Debian package's system user
START_TIMEOUT_S = 60  # pg_ctl -w waits for the server to accept connections; ~1 s here, more on a busy machine
STOP_TIMEOUT_S = 30
DATABASE = "gateway"
USER = "gateway"


class ClusterError(Exception):
    pass


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin folder; fails in CI and skips elsewhere when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[-3]))
    if found:
        return Path(found[-1]).parent
    reason = "PostgreSQL is not installed (Debian package `postgresql`; `make test` installs it when run as root)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresCluster:
    """One server; `url` is a `postgresql://` URL for its `gateway` database and user."""

    directory: Path
    port: int
    password: str
    bin: Path
    # False: fsync, synchronous commits and full-page writes off (tests: nothing must survive a power cut);
    # True: PostgreSQL's own defaults, for benchmarks whose figures must be a real server's.
    durable: bool = False

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def url_for(self, database: str) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        as_service_user = os.geteuid() == 0
        argv = (["runuser", "-u", SERVICE_USER, "--"] if as_service_user else []) + list(command)
        env = {**os.environ, "PGPASSWORD": self.password}
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.directory, env=env)
        if result.returncode != 0:
            raise ClusterError(f"{' '.join(command[:2])}: {result.stderr.strip() or result.stdout.strip()}")
        return result

    @classmethod
    def create(cls, *, durable: bool = False) -> PostgresCluster:
        # Not under pytest's tmp_path: that is private to root (0700), and the server runs as `postgres`.
        programs = postgres_bin()
        directory = Path(tempfile.mkdtemp(prefix="gateway-test-pg-"))
        cluster = cls(directory, _free_port(), secrets.token_hex(12), programs, durable)
        try:
            data = directory / "data"
            password_file = directory / "password"
            password_file.write_text(cluster.password + "\n")
            if os.geteuid() == 0:
                shutil.chown(directory, SERVICE_USER, SERVICE_USER)
                shutil.chown(password_file, SERVICE_USER, SERVICE_USER)
            password_file.chmod(0o600)
            cluster._run(
                str(cluster.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                "-A",
                "scram-sha-256",
                f"--pwfile={password_file}",
                *([] if durable else ["--no-sync"]),  # a test cluster: nothing in it must survive a power cut
                timeout=START_TIMEOUT_S,
            )
            password_file.unlink()
            cluster.start()
            cluster._run(
                str(cluster.bin / "createdb"), "-h", str(data), "-p", str(cluster.port), "-U", USER, DATABASE,
                timeout=START_TIMEOUT_S,
            )  # fmt: skip
        except BaseException:
            cluster.remove()
            raise
        return cluster

    def start(self) -> None:
        data = self.directory / "data"
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={data}"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.directory / "server.log"),
            "-w", "-t", str(START_TIMEOUT_S), "start",
            timeout=START_TIMEOUT_S + 5,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), "-m", mode, "-w", "stop",
            timeout=STOP_TIMEOUT_S,
        )  # fmt: skip

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except ClusterError:
            pass  # already stopped
        shutil.rmtree(self.directory, ignore_errors=True)
