"""Mitel MiVoice Business SMDR parser: spec samples, layouts, clocks, years, damaged lines (docs/smdr.md)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from drivers.smdr import parser_class
from drivers.smdr.base import SmdrParseError
from drivers.smdr.mitel_mivb import MitelMivbParser
from gateway.model import Direction

BUDAPEST = ZoneInfo("Europe/Budapest")
UTC = timezone.utc
# 2024-03-06 13:00 in Budapest (CET, UTC+1): a day after the samples' 03/05.
RECEIVED = datetime(2024, 3, 6, 12, 0, tzinfo=UTC)

# The anonymised real 207-character records of the spec, byte-exact (trailing blanks included).
SAMPLE_207 = [
    " 03/05 13:14:13             9999         9999999999           00000                                        001   98029                                   C0099410 A                                            ",
    "+03/05 13:15:09  0000:00:21         0000 9999                        9907                                  001   9999999999           9999               A0097399 A                                            ",
    "-03/05 13:38:35  0000:06:59 9999         9999999999           00000A                                       001   88029                                   A0099648 A                                            ",
    " 03/05 15:42:52  0000:00:05         0007 9999                        9999                                  001   9999999999           9999               C0093299 A                                            ",
]
# Real SX-2000 lines damaged by a forum (merged / collapsed spacing).
FORUM_LINES = [
    "07/09 10:53 00:03:06 5304 514254 A T100 P0110:00 T100 *** 5050 E 5020X P014",
    "07/09 10:58 00:00:14 5075 01226261010 A T100",
]
# Vendor templates with placeholders: not data.
TEMPLATES = [
    "06/13_11:42p_00:08:29_214 _fttt_6135952122xxxxxxxxxxxmmmmmAsT054k_rrrr_aaaaaaaaaaaas000",
    "01/30_03:10P_00:02:22_T102_f008_201xxxxxxxxxxxxxxxxxxmmmmmh_201kaaa aaaas 000",
]

# Standard 90-character record, first column of each field (vendor field table), written out independently.
STANDARD_AT = {
    "flag": 1,
    "date": 2,
    "start": 8,
    "duration": 15,
    "calling": 24,
    "attendant": 29,
    "answer": 30,
    "digits": 34,
    "completion": 60,
    "forward": 61,
    "called": 62,
    "transfer": 66,
    "third": 68,
    "account": 73,
    "sflag": 85,
    "system": 86,
}
EXTENDED_AT = {
    "flag": 1,
    "date": 2,
    "start": 8,
    "duration": 15,
    "calling": 26,
    "attendant": 34,
    "answer": 35,
    "digits": 39,
    "completion": 65,
    "called": 67,
}


def place(width: int, at: dict[str, int], **values: str) -> str:
    """A fixed-width line with each value written from its first column (1-based)."""
    line = [" "] * width
    for name, text in values.items():
        first = at[name] - 1
        line[first : first + len(text)] = text
    return "".join(line)


def standard(**values: str) -> str:
    line = place(90, STANDARD_AT, **values)
    assert len(line) == 90
    return line


def local(*args: int) -> datetime:
    """A Budapest wall-clock time as aware UTC."""
    return datetime(*args, tzinfo=BUDAPEST).astimezone(UTC)


def parser(**options: object) -> MitelMivbParser:
    return MitelMivbParser("pbx1", tz=BUDAPEST, options=options)


def parse_one(line: str, received_at: datetime = RECEIVED, **options: object):
    records = parser(**options).feed(line, received_at)
    assert len(records) == 1
    return records[0]


def test_registry_exposes_the_parser() -> None:
    assert parser_class("mitel-mivb") is MitelMivbParser
    assert MitelMivbParser.format == "mitel-mivb"


def test_observed_site_samples_keep_their_207_characters() -> None:
    assert all(len(line) == 207 for line in SAMPLE_207)


# (line, start wall clock, duration_s, ring_s, calling, called, direction, extension, other_number, answered)
SAMPLE_207_EXPECTED = [
    (SAMPLE_207[0], (2024, 3, 5, 13, 14, 13), None, None, "9999", None, Direction.OUT, "9999", "9999999999", False),
    (SAMPLE_207[1], (2024, 3, 5, 13, 15, 9), 21, 0, None, "9907", Direction.IN, "9907", "9999999999", True),
    (SAMPLE_207[2], (2024, 3, 5, 13, 38, 35), 419, None, "9999", None, Direction.OUT, "9999", "9999999999", True),
    (SAMPLE_207[3], (2024, 3, 5, 15, 42, 52), 5, 7, None, "9999", Direction.IN, "9999", "9999999999", True),
]


@pytest.mark.parametrize(
    "options", [{}, {"layout": "observed-207"}, {"layout": "207"}], ids=["auto", "preset", "alias"]
)
@pytest.mark.parametrize("trailing_blanks_lost", [False, True], ids=["exact", "rstripped"])
@pytest.mark.parametrize(
    ("line", "wall", "duration_s", "ring_s", "calling", "called", "direction", "extension", "other", "answered"),
    SAMPLE_207_EXPECTED,
)
def test_observed_207_char_samples(
    line,
    wall,
    duration_s,
    ring_s,
    calling,
    called,
    direction,
    extension,
    other,
    answered,
    options,
    trailing_blanks_lost,
) -> None:
    if trailing_blanks_lost:
        line = line.rstrip()
    record = parse_one(line, **options)
    assert record.format == "mitel-mivb"
    assert record.source == "pbx1"
    assert record.raw == line
    assert record.start == local(*wall)
    assert record.start.tzinfo is UTC
    assert record.duration_s == duration_s
    assert record.end == (record.start + timedelta(seconds=duration_s) if duration_s is not None else None)
    assert record.ring_s == ring_s
    assert record.extra.get("calling") == calling
    assert record.extra.get("called") == called
    assert record.direction is direction
    assert record.extension == extension
    assert record.other_number == other
    assert record.answered is answered
    assert record.trunk is None
    assert record.platform_call_id is None
    assert record.extra["system_id"] == "001"


def test_observed_207_vendor_extras() -> None:
    incoming = parse_one(SAMPLE_207[1])
    assert incoming.extra["long_call"] == "+"
    assert incoming.extra["did"] == "9999"  # digits of an incoming call are the DID
    assert incoming.extra["dnis"] == "9999"
    assert incoming.extra["call_ref"] == "A0097399"
    outgoing = parse_one(SAMPLE_207[2])
    assert outgoing.extra["long_call"] == "-"
    assert outgoing.extra["meter_pulses"] == "00000"
    assert outgoing.extra["completion"] == "A"
    assert "did" not in outgoing.extra
    assert "long_call" not in parse_one(SAMPLE_207[0]).extra  # column 1 blank, kept as a column


def test_column_override_promotes_the_call_reference() -> None:
    record = parse_one(SAMPLE_207[0], layout="observed-207", columns={"platform_call_id": [154, 161], "call_ref": None})
    assert record.platform_call_id == "C0099410"
    assert "call_ref" not in record.extra


@pytest.mark.parametrize(
    ("line", "wall", "duration_s", "calling", "unparsed"),
    [
        (FORUM_LINES[0], (2023, 7, 9, 10, 53), 186, "5304", "514254 A T100 P0110:00 T100 *** 5050 E 5020X P014"),
        (FORUM_LINES[1], (2023, 7, 9, 10, 58), 14, "5075", "01226261010 A T100"),
    ],
)
def test_damaged_forum_lines_give_partial_records(line, wall, duration_s, calling, unparsed) -> None:
    record = parse_one(line)
    assert record.start == local(*wall)  # 07/09 read in March 2024: last July
    assert record.duration_s == duration_s
    assert record.end == record.start + timedelta(seconds=duration_s)
    assert record.extension == calling
    assert record.extra["calling"] == calling
    assert record.extra["partial"] is True
    assert record.extra["unparsed"] == unparsed
    assert record.direction is Direction.UNKNOWN
    assert record.raw == line


@pytest.mark.parametrize(
    "line",
    [
        "07",
        "hello world",
        "13/45 10:00 00:00:10 201",
        "02/30 10:00 00:00:10 201",
        "03/05 25:00 00:00:10 201",
        "03/05 13:00p 00:00:10 201",
        *TEMPLATES,
    ],
)
def test_garbage_is_a_parse_error(line: str) -> None:
    with pytest.raises(SmdrParseError):
        parser().feed(line, RECEIVED)


@pytest.mark.parametrize("line", ["-" * 90, "=" * 40, " ----- ---- "])
def test_separator_lines_are_skipped(line: str) -> None:
    assert parser().feed(line, RECEIVED) == []


def test_standard_outgoing_pm_call() -> None:
    line = standard(
        date="06/13",
        start="11:42p",
        duration="00:08:29",
        calling="214",
        digits="6135952122",
        completion="A",
        called="T054",
        account="12345",
        system="000",
    )
    record = parse_one(line, received_at=datetime(2024, 6, 14, 8, 0, tzinfo=UTC))
    assert record.start == local(2024, 6, 13, 23, 42)  # CEST: 21:42 UTC
    assert record.start == datetime(2024, 6, 13, 21, 42, tzinfo=UTC)
    assert record.end == record.start + timedelta(seconds=509)
    assert record.duration_s == 509
    assert record.direction is Direction.OUT
    assert record.extension == "214"
    assert record.other_number == "6135952122"
    assert record.trunk == "T054"
    assert record.account == "12345"
    assert record.answered is True
    assert record.ring_s is None
    assert record.extra["system_id"] == "000"
    assert record.extra["completion"] == "A"


def test_standard_incoming_call_with_time_to_answer() -> None:
    line = standard(
        date="01/30", start="03:10P", duration="00:02:22", calling="T102", answer="008", digits="201", called="201"
    )
    record = parse_one(line)
    assert record.start == local(2024, 1, 30, 15, 10)
    assert record.direction is Direction.IN
    assert record.trunk == "T102"
    assert record.extension == "201"
    assert record.other_number is None  # no ANI in the standard record
    assert record.extra["did"] == "201"
    assert record.ring_s == 8
    assert record.answered is True


def test_standard_incoming_with_ani() -> None:
    line = standard(date="01/30", start="09:10", duration="00:00:40", calling="X007", answer="003", called="2201")
    line = line + " " + "0612345678" + " " + "2201".ljust(10)  # ANI 92–101, DNIS 103–112
    record = parse_one(line)
    assert len(line) == 112
    assert record.other_number == "0612345678"
    assert record.extra["dnis"] == "2201"
    assert record.trunk == "X007"


@pytest.mark.parametrize("stars", ["***", "*** "])
def test_unanswered_incoming(stars: str) -> None:
    line = standard(
        date="04/15", start="01:42P", duration="00:00:31", calling="T090", attendant="*", answer=stars, called="ATT2"
    )
    record = parse_one(line)
    assert record.answered is False
    assert record.ring_s is None
    assert record.extension == "ATT2"
    assert record.direction is Direction.IN
    assert record.extra["attendant"] == "*"


def test_internal_call_transfer_and_third_party() -> None:
    line = standard(
        flag="%",
        date="03/01",
        start="10:00",
        duration="00:12:00",
        calling="2001",
        digits="2002",
        called="2002",
        transfer="T",
        third="2003",
    )
    record = parse_one(line)
    assert record.direction is Direction.INTERNAL
    assert record.extension == "2001"
    assert record.other_number == "2002"
    assert record.trunk is None
    assert record.extra["transfer"] == "T"
    assert record.extra["third_party"] == "2003"
    assert record.extra["long_call"] == "%"


def test_blank_duration_is_unanswered_and_has_no_end() -> None:
    line = standard(date="03/01", start="10:00", calling="2001", digits="0612345678", called="T001")
    record = parse_one(line)
    assert record.duration_s is None
    assert record.end is None
    assert record.answered is False


def test_duration_overflow_99_99_99() -> None:
    line = standard(
        flag="+", date="03/01", start="10:00", duration="99:99:99", calling="2001", called="T001", digits="123"
    )
    record = parse_one(line)
    assert record.duration_s == 100 * 3600
    assert record.extra["duration_overflow"] is True


def test_short_line_missing_trailing_blanks_and_leading_blank_column() -> None:
    line = standard(
        date="03/01", start="10:00", duration="00:00:10", calling="2001", digits="0612345678", called="T001"
    ).rstrip()
    assert line.startswith(" 03/01")
    record = parse_one(line)
    assert record.trunk == "T001"
    assert record.other_number == "0612345678"


def test_metering_splits_digits_and_pulses() -> None:
    line = standard(
        date="03/01",
        start="10:00",
        duration="00:01:00",
        calling="2001",
        digits="0612345678".ljust(21) + "00012",
        called="T001",
    )
    record = parse_one(line, metering=True)
    assert record.other_number == "0612345678"
    assert record.extra["meter_pulses"] == "00012"


def test_seconds_in_start_time_shift_later_columns() -> None:
    at = {name: first + 3 if first >= 14 else first for name, first in STANDARD_AT.items()}
    line = place(
        93, at, date="03/05", start="01:14:13p", duration="00:00:42", calling="2001", digits="0612345678", called="T001"
    )
    for options in ({}, {"seconds_in_time": True}, {"layout": "standard", "seconds_in_time": True}):
        record = parse_one(line, **options)
        assert record.start == local(2024, 3, 5, 13, 14, 13)
        assert record.duration_s == 42
        assert record.trunk == "T001"
        assert record.extension == "2001"


@pytest.mark.parametrize("options", [{}, {"layout": "extended"}], ids=["auto", "explicit"])
def test_extended_digit_length(options) -> None:
    line = place(
        101,
        EXTENDED_AT,
        date="03/05",
        start="09:30",
        duration="0102:03:04",
        calling="T1234",
        answer="012",
        digits="4455",
        called="22001",
    )
    record = parse_one(line, **options)
    assert record.start == local(2024, 3, 5, 9, 30)
    assert record.duration_s == 102 * 3600 + 3 * 60 + 4
    assert record.trunk == "T1234"
    assert record.extension == "22001"
    assert record.ring_s == 12
    assert record.extra["did"] == "4455"


def test_extended_time_to_answer_option() -> None:
    at = dict(STANDARD_AT, attendant=28, answer=29)
    line = place(90, at, date="03/05", start="09:30", duration="00:01:00", calling="T001", answer="0125", called="2001")
    assert parse_one(line, extended_time_to_answer=True).ring_s == 125


@pytest.mark.parametrize(
    ("start", "options", "hour", "minute"),
    [
        ("11:42p", {}, 23, 42),
        ("11:42P", {"clock": 24}, 23, 42),  # a `p` is PM whatever the option says
        ("12:42p", {}, 12, 42),
        ("01:42", {}, 1, 42),
        ("12:42", {"clock": 12}, 0, 42),  # 12 h clock, no `p`: just after midnight
        ("12:42", {"clock": "12h"}, 0, 42),
        ("12:42", {"clock": 24}, 12, 42),
        ("12:42", {}, 12, 42),  # no `p` seen yet: 24 h
        ("13:42", {}, 13, 42),
        ("9:05", {}, 9, 5),
        ("9:05p", {}, 21, 5),
    ],
)
def test_clock(start: str, options: dict, hour: int, minute: int) -> None:
    line = standard(date="03/05", start=start, duration="00:00:10", calling="2001", called="2002")
    assert parse_one(line, **options).start == local(2024, 3, 5, hour, minute)


def test_clock_detected_from_a_pm_mark() -> None:
    mitel = parser()
    pm = standard(date="03/05", start="01:00p", duration="00:00:10", calling="2001", called="2002")
    after_midnight = standard(date="03/05", start="12:30", duration="00:00:10", calling="2001", called="2002")
    assert mitel.feed(pm, RECEIVED)[0].start == local(2024, 3, 5, 13, 0)
    assert mitel.feed(after_midnight, RECEIVED)[0].start == local(2024, 3, 5, 0, 30)


def test_new_year_inference() -> None:
    line = standard(date="12/31", start="11:58p", duration="00:05:00", calling="2001", digits="123", called="T001")
    received = local(2025, 1, 1, 0, 10)
    record = parse_one(line, received_at=received)
    assert record.start == local(2024, 12, 31, 23, 58)
    assert record.end == local(2025, 1, 1, 0, 3)
    same_day = parse_one(line, received_at=local(2024, 12, 31, 23, 59))
    assert same_day.start == local(2024, 12, 31, 23, 58)


def test_utc_conversion_across_zones() -> None:
    line = standard(date="07/01", start="08:00", duration="00:00:10", calling="2001", called="2002")
    received = datetime(2024, 7, 1, 12, tzinfo=UTC)
    assert MitelMivbParser("l", tz=BUDAPEST).feed(line, received)[0].start == datetime(2024, 7, 1, 6, tzinfo=UTC)
    assert MitelMivbParser("l", tz=UTC).feed(line, received)[0].start == datetime(2024, 7, 1, 8, tzinfo=UTC)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"layout": "jumbo"}, "layout"),
        ({"layout": ["standard"]}, "layout"),
        ({"clock": 13}, "clock"),
        ({"clock": True}, "clock"),
        ({"seconds_in_time": "yes"}, "seconds_in_time"),
        ({"metering": 1}, "metering"),
        ({"extended_time_to_answer": "no"}, "extended_time_to_answer"),
        ({"columns": [1, 2]}, "columns"),
        ({"columns": {"calling": [27, 24]}}, "columns.calling"),
        ({"columns": {"calling": [0, 4]}}, "columns.calling"),
        ({"columns": {"calling": "24-27"}}, "columns.calling"),
    ],
)
def test_validate_options_refuses(options: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        MitelMivbParser.validate_options(options)


def test_validate_options_accepts_presets_and_transport_keys() -> None:
    for options in (
        {},
        {"layout": "standard"},
        {"layout": "Extended"},
        {"layout": "observed-207"},
        {"layout": "auto"},
        {"clock": 12, "seconds_in_time": False, "columns": {"account": [73, 84], "extra_code": 90}},
        {"idle_timeout": 300.0, "keepalive": "\n", "encoding": "latin-1"},
    ):
        MitelMivbParser.validate_options(options)


def test_reset_and_flush_are_harmless() -> None:
    mitel = parser()
    mitel.reset()
    assert mitel.flush(RECEIVED) == []
    assert mitel.hold_timeout_s == 0
