"""`gateway tap` and `gateway check` say which layout/variant a link's lines are read as, so a wrong guess shows."""

from __future__ import annotations

import asyncio
import io
from datetime import datetime, timezone

from drivers.transport import FramedLine
from gateway.config import LinkConfig
from gateway.tap import Tap

AT = datetime(2024, 1, 2, 12, 0, tzinfo=timezone.utc)


def tap_output(fmt: str, lines: list[str], options: dict | None = None) -> list[str]:
    out = io.StringIO()
    tap = Tap(LinkConfig("pbx", fmt, "listen://127.0.0.1:1", timezone="UTC", options=options or {}), out)
    tap.say("layout", tap.variant)
    asyncio.run(tap.deliver([FramedLine(line.encode("latin-1"), AT, "test") for line in lines]))
    return [line.split(None, 1)[1] for line in out.getvalue().splitlines()]


def layouts(output: list[str]) -> list[str]:
    return [line.split(None, 1)[1] for line in output if line.startswith("layout")]


def test_tap_shows_the_panasonic_reading_and_each_change_a_line_makes():
    output = tap_output(
        "panasonic",
        [
            "Date     Time    Ext. CO Dial number                      Duration  Code",
            "31/12/98 12:52PM 103  05 0612345678                       00:00'16  ....",
        ],
    )
    assert layouts(output) == [
        "Panasonic: end times (default; no header seen yet), m/d/y (from the separator, not yet confirmed), layout A",
        "Panasonic: start times (KX-TA/TEA header: `Code`, no `Acc code`/`CD`), m/d/y (from the separator, not yet "
        "confirmed), layout A",
        "Panasonic: start times (KX-TA/TEA header: `Code`, no `Acc code`/`CD`), d/m/y (seen in a date), layout A",
    ]


def test_the_time_is_option_is_named_as_the_reason():
    output = tap_output("panasonic", [], {"time_is": "start", "date_order": "dmy"})
    assert layouts(output) == ["Panasonic: start times (time_is option), d/m/y (date_order option), layout A"]


def test_check_names_each_links_reading(tmp_path):
    from drivers.smdr import SMDR_FORMATS
    from gateway.config.describe import describe_config
    from gateway.config.load import load_config

    source = tmp_path / "gateway.yaml"
    source.write_text(
        "links:\n"
        "  - {name: pana, format: panasonic, url: 'listen://127.0.0.1:9101', timezone: UTC, options: {time_is: start}}\n"
        "  - {name: ipo, format: avaya-ipo, url: 'listen://127.0.0.1:9102', timezone: UTC}\n"
    )
    text = describe_config(load_config(source, SMDR_FORMATS), SMDR_FORMATS)
    assert "    reads lines as: Panasonic: start times (time_is option)" in text
    assert "    reads lines as: IP Office: CSV by field index" in text
