"""kill -9 of a real gateway process while IP Office records stream in: three cycles of bench/soak.py.

Every record /healthz counted before a kill, every callID the API handed out and every KeepCall answered 0
must be there after the restart on the same store, once. `make soak` runs the same harness for 100 cycles.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from soak import run_soak  # noqa: E402 — bench/ holds scripts, not a package

CYCLES = 3
RECORDS_PER_CYCLE = 1_000  # ~0.2 s of streaming a cycle at the soak's default rate
TIME_LIMIT_S = 60.0  # three cycles take ~5 s on the 2-vCPU VM; the limit only stops a runaway


async def test_three_kill_9_cycles_lose_nothing_acknowledged(tmp_path):
    report = await run_soak(
        CYCLES, seed=7, records_per_cycle=RECORDS_PER_CYCLE, time_limit_s=TIME_LIMIT_S, store=tmp_path / "soak.db"
    )
    summary = report.render()
    assert report.cycles == CYCLES and not report.time_limited, summary
    assert report.kills_mid_stream and report.kills_when_counted, summary
    assert report.records_counted > 0 and report.callids_checked > 0, summary
    assert report.records_lost == 0, summary
    assert report.records_recovered == report.records_counted, summary
    assert report.duplicates == 0, summary
    assert report.callids_changed == 0, summary
    assert report.keeps_lost == 0, summary
    assert report.final_sample_failed == 0 and report.count_mismatches == 0, summary
