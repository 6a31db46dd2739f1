"""What the benchmark scripts share: the repository root, free loopback ports, percentiles, tool checks."""

from __future__ import annotations

import math
import shutil
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback TCP port free right now (the server started next binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank percentile: the smallest sample with at least q % of the samples at or below it. Always
    one of the samples, so never above the maximum (statistics.quantiles' default interpolates beyond it when
    there are fewer than 100 samples)."""
    if not samples:
        raise ValueError("no samples")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def summary_ms(samples_s: Sequence[float], unit: str = "samples") -> str:
    """`n samples: p50 …, p99 …, max …` in milliseconds, saying how many samples the percentiles rest on."""
    return (
        f"{len(samples_s)} {unit}: p50 {percentile(samples_s, 50) * 1000:.1f} ms, "
        f"p99 {percentile(samples_s, 99) * 1000:.1f} ms, max {max(samples_s) * 1000:.1f} ms"
    )


def require_tool(name: str, install_hint: str) -> None:
    """Skip this benchmark (exit 0, one clear line) when a program it drives is not installed, so that
    `make bench` goes on with the others."""
    if shutil.which(name) is None:
        print(f"{Path(sys.argv[0]).name}: skipped: {name} is not installed ({install_hint})")
        raise SystemExit(0)
