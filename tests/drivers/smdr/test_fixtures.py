"""Every sample line under tests/fixtures/<format>/ through its format's parser, against the expectations beside it.

A fixture is `<name>.txt` (the lines, exactly as a PBX prints them — written from the vendor's documented
layout, never from our simulator) and `<name>.yaml`:

    about: what the lines show and where the layout is documented
    options: {…}                    # the link's format options (optional)
    received_at: 2024-01-02T12:00:00Z
    expect:                         # one entry per line of the .txt, in order
      - skip                        # no record, no error (header, separator, status line)
      - error                       # quarantined
      - {start: …, end: …, extension: …, direction: in, extra: {…}}   # the record begun on that line
    calls: 1                        # optional: the records make this many calls in the call tracker
    one_last_call_of: ["101"]       # optional: `extension=…&status=last` finds exactly one call

Only the keys given are checked; `extra` is checked as a subset; times are ISO 8601 (UTC) or null.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.smdr import parser_class
from drivers.smdr.base import SmdrParseError
from gateway.calls import CallTracker
from gateway.events import CallRecord

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=timezone.utc)
RECORD_KEYS = (
    "start",
    "end",
    "extension",
    "other_number",
    "direction",
    "duration_s",
    "ring_s",
    "trunk",
    "account",
    "platform_call_id",
    "more_follows",
    "answered",
)


def fixture_files() -> list[Path]:
    return sorted(FIXTURES.glob("*/*.txt"))


def load(path: Path) -> tuple[list[str], dict[str, Any]]:
    lines = path.read_bytes().decode("latin-1").splitlines()
    spec = yaml.safe_load(path.with_suffix(".yaml").read_text(encoding="utf-8"))
    return lines, spec


def read(path: Path) -> tuple[dict[int, list[CallRecord]], dict[int, str], dict[str, Any], list[str]]:
    lines, spec = load(path)
    parser = parser_class(path.parent.name)(f"fixture-{path.stem}", tz=timezone.utc, options=spec.get("options"))
    received_at = _time(spec["received_at"])
    records: dict[int, list[CallRecord]] = {}
    errors: dict[int, str] = {}

    def keep(found: list[CallRecord]) -> None:
        for record in found:
            records.setdefault(record.origin_seq, []).append(record)

    for index, line in enumerate(lines):
        parser.begin_line(index)
        try:
            keep(parser.feed(line, received_at))
        except SmdrParseError as error:
            errors[index] = error.reason
    keep(parser.flush(FAR_FUTURE))
    return records, errors, spec, lines


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _actual(record: CallRecord, key: str) -> Any:
    value = getattr(record, key)
    return value.value if key == "direction" else value


@pytest.mark.parametrize("path", fixture_files(), ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_fixture_lines_read_as_documented(path: Path) -> None:
    records, errors, spec, lines = read(path)
    expectations = spec["expect"]
    assert len(expectations) == len(lines), f"{path.name}: {len(lines)} lines, {len(expectations)} expectations"
    for index, (line, expected) in enumerate(zip(lines, expectations)):
        where = f"{path.name} line {index + 1}: {line!r}"
        found = records.get(index, [])
        if expected == "skip":
            assert not found and index not in errors, f"{where}: expected skip, got {found or errors[index]}"
        elif expected == "error":
            assert index in errors, f"{where}: expected a quarantine, got {found}"
        else:
            assert index not in errors, f"{where}: quarantined: {errors.get(index)}"
            assert len(found) == 1, f"{where}: expected one record, got {len(found)}"
            record = found[0]
            for key in RECORD_KEYS:
                if key in expected:
                    want = _time(expected[key]) if key in ("start", "end") else expected[key]
                    if key in ("duration_s", "ring_s") and want is not None:
                        want = float(want)
                    assert _actual(record, key) == want, f"{where}: {key} {_actual(record, key)!r} != {want!r}"
            for key, want in (expected.get("extra") or {}).items():
                assert record.extra.get(key) == want, f"{where}: extra[{key}] {record.extra.get(key)!r} != {want!r}"


CALL_FIXTURES = [path for path in fixture_files() if "calls" in load(path)[1]]


@pytest.mark.parametrize("path", CALL_FIXTURES, ids=lambda path: f"{path.parent.name}/{path.stem}")
async def test_fixture_records_make_the_calls_they_describe(path: Path, store) -> None:
    records, _, spec, _ = read(path)
    tracker = CallTracker(store, ())
    await tracker.start()
    try:
        calls = {tracker.apply(record).call_id for seq in sorted(records) for record in records[seq]}
        assert len(calls) == spec["calls"], f"{path.name}: {len(calls)} calls, expected {spec['calls']}"
        for extension in spec.get("one_last_call_of", ()):
            await tracker.find_by_status(str(extension), ["last"], 0)  # raises when none or more than one
    finally:
        await tracker.flush()
