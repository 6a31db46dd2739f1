"""What the benchmark scripts share: percentiles that never exceed the maximum, a missing tool skipping one
benchmark instead of stopping `make bench`, and the --store-url that runs a benchmark on PostgreSQL."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import api_bench  # noqa: E402 — bench/ is a script folder, not a package
import ingest_bench  # noqa: E402
from benchlib import percentile, summary_ms  # noqa: E402


def test_a_percentile_is_one_of_the_samples_and_never_above_the_maximum() -> None:
    samples = [random.Random(seed).uniform(0.05, 0.15) for seed in range(86)]  # the 86 probes
    assert percentile(samples, 99) <= max(samples)
    assert percentile(samples, 99) in samples
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0  # nearest rank: ceil(0.5 * 4) = the 2nd
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([7.0], 99) == 7.0


def test_a_summary_says_how_many_samples_its_percentiles_rest_on() -> None:
    assert summary_ms([0.001, 0.002, 0.003], "probes") == "3 probes: p50 2.0 ms, p99 3.0 ms, max 3.0 ms"


@pytest.mark.parametrize("q", [0, 101])
def test_a_percentile_outside_0_to_100_is_refused(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


def test_the_api_benchmark_without_wrk_skips_itself_with_a_clear_line(tmp_path: Path) -> None:
    # An empty PATH: no wrk on it (the interpreter is named by its full path).
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "api_bench.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": str(tmp_path)},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "skipped: wrk is not installed" in result.stdout


@pytest.mark.parametrize("script", [api_bench, ingest_bench], ids=["api_bench", "ingest_bench"])
def test_the_benchmarks_take_a_store_url_or_auto_and_run_on_sqlite_without_one(script) -> None:
    url = "postgresql://bench:s3cret@db.example:5433/gateway?sslmode=require"
    assert script.parse_args(["--store-url", url]).store_url == url
    assert script.parse_args(["--store-url", "auto"]).store_url == "auto"
    assert script.parse_args([]).store_url is None


@pytest.mark.parametrize("script", [api_bench, ingest_bench], ids=["api_bench", "ingest_bench"])
def test_a_store_url_that_is_not_postgresql_is_refused_without_quoting_it(script, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        script.parse_args(["--store-url", "mysql://bench:s3cret@db.example/gateway"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--store-url: must be a PostgreSQL URL starting with postgresql://" in error
    assert "s3cret" not in error
