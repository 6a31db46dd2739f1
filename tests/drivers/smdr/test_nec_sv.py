"""NEC SV/SL SMDR parser: spec samples, exact columns, NEXT holding, years, edge cases."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from drivers.smdr import parser_class
from drivers.smdr.base import SmdrParseError
from drivers.smdr.nec_sv import NecSvParser
from gateway.model import Direction

UTC = ZoneInfo("UTC")
BUDAPEST = ZoneInfo("Europe/Budapest")
RECEIVED = datetime(2024, 12, 9, 12, 0, tzinfo=timezone.utc)
LATER = RECEIVED + timedelta(seconds=NecSvParser.hold_timeout_s)

SAMPLE_TITLES = "CLASS TIME DATE LINE DURATION STATION DIALLED No./CLI ACCOUNT"
SAMPLE_POT = "POT 10:52 12/09 002 00:00:10 2001 2142623801 08754"
SAMPLE_NEXT = "NEXT NECinfrontia Corp."


def parser(tz=UTC, **options) -> NecSvParser:
    return NecSvParser("nec1", tz=tz, options=options)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def feed_all(p: NecSvParser, lines: list[str], received_at: datetime = RECEIVED) -> list:
    records = [record for line in lines for record in p.feed(line, received_at)]
    return records + p.flush(received_at + timedelta(days=1))


def one(p: NecSvParser, line: str, received_at: datetime = RECEIVED):
    assert p.feed(line, received_at) == []  # held for a possible NEXT line
    (record,) = p.flush(received_at + timedelta(seconds=p.hold_timeout_s))
    return record


def nec(cls, time, date="", line="", duration="", station="", dialled="", account=""):
    """An exact-column line, date on: Class 1–4 (5-letter codes reach 5), Time 6–10, Date 12–16, Line 18–21,
    Duration 23–30, Station 32–41, Dialled No./CLI 43–62, Account 64–79."""
    text = f"{cls:<5}{time:<5} {date:<5} {line:<4} {duration:<8} {station:<10} {dialled:<20} {account:<16}"
    assert len(text) == 79
    return text


def nec_no_date(cls, time, line="", duration="", station="", dialled="", account=""):
    """Date off (PRG 35-02-14 = 0): Line 12–21, the rest unchanged."""
    text = f"{cls:<5}{time:<5} {line:<10} {duration:<8} {station:<10} {dialled:<20} {account:<16}"
    assert len(text) == 79
    return text


def page_header(day="12/09/2024", page=1):
    """Page header line 1: date at cols 61–70, `PAGE` at 72–75, page number at 77–79."""
    text = f"{'SMDR REPORT':<60}{day} PAGE {page:03}"
    assert text[60:70] == day and text[71:75] == "PAGE"
    return text


def test_registry_exposes_the_parser():
    assert parser_class("nec-sv") is NecSvParser
    assert NecSvParser.format == "nec-sv" and NecSvParser.hold_timeout_s == 2.0


# ---- the spec sample (spaces collapsed → token mode)


def test_spec_sample_report():
    p = parser()
    assert p.feed(SAMPLE_TITLES, RECEIVED) == []
    assert p.feed(SAMPLE_POT, RECEIVED) == []  # held: a NEXT line may follow
    (record,) = p.feed(SAMPLE_NEXT, RECEIVED)
    assert record.start == utc(2024, 12, 9, 10, 52)
    assert record.end == utc(2024, 12, 9, 10, 52, 10)
    assert record.duration_s == 10 and record.ring_s is None
    assert record.extension == "2001"
    assert record.other_number == "2142623801"
    assert record.direction == Direction.OUT
    assert record.trunk == "002"
    assert record.account == "08754"
    assert record.extra["class"] == "POT" and record.extra["mode"] == "tokens"
    assert record.extra["caller_name"] == "NECinfrontia Corp."
    assert (record.format, record.source, record.raw) == ("nec-sv", "nec1", SAMPLE_POT)
    assert p.flush(LATER + timedelta(days=1)) == []


@pytest.mark.parametrize(
    ("line", "start", "extension", "other", "direction", "duration", "account", "answered"),
    [
        (SAMPLE_POT, utc(2024, 12, 9, 10, 52), "2001", "2142623801", Direction.OUT, 10, "08754", None),
        (
            "PIN 10:53 12/09 003 00:01:10 2002 2142623801",
            utc(2024, 12, 9, 10, 53),
            "2002",
            "2142623801",
            Direction.IN,
            70,
            None,
            True,
        ),
        (
            "PIN 10:55 12/09 003 2142623801 NO ANSWER",
            utc(2024, 12, 9, 10, 55),
            None,
            "2142623801",
            Direction.IN,
            None,
            None,
            False,
        ),
        ("PIN 10:56 12/09 003 NO ANSWER", utc(2024, 12, 9, 10, 56), None, None, Direction.IN, None, None, False),
        ("ICM 11:00 00:00:45 2001 2002", utc(2024, 12, 9, 11, 0), "2001", "2002", Direction.INTERNAL, 45, None, True),
        (
            "IVOTP 11:01 12/09 010 00:02:00 2003 0012125551234 4711",
            utc(2024, 12, 9, 11, 1),
            "2003",
            "0012125551234",
            Direction.OUT,
            120,
            "4711",
            None,
        ),
        (
            "PTRS 11:02 12/09 002 00:00:30 2004 2142623801",
            utc(2024, 12, 9, 11, 2),
            "2004",
            "2142623801",
            Direction.UNKNOWN,
            30,
            None,
            None,
        ),
        (
            "BRD 11:03 12/09 002 00:00:00 2005 0900123456",
            utc(2024, 12, 9, 11, 3),
            "2005",
            "0900123456",
            Direction.OUT,
            0,
            None,
            False,
        ),
    ],
)
def test_token_mode_records(line, start, extension, other, direction, duration, account, answered):
    record = one(parser(), line)
    assert record.start == start
    assert record.end == (start + timedelta(seconds=duration) if duration is not None else None)
    assert (record.extension, record.other_number, record.direction) == (extension, other, direction)
    assert record.duration_s == duration and record.account == account and record.answered == answered


# ---- exact columns


def test_exact_column_records():
    p = parser()
    lines = [
        page_header(),
        SAMPLE_TITLES,
        nec("POT", "10:52", "12/09", "002", "00:00:10", "2001", "2142623801", "08754"),
        nec("PIN", "10:53", "12/09", "003", "00:01:10", "Front Desk", "2142623801", "NECinfrontia Cor"),
        "p.",  # the inline name's remainder, wrapped onto a line of its own
        nec("PIN", "10:55", "12/09", "003", "", "", "2142623801", "NO ANSWER"),
        nec("ICM", "11:00", "", "", "00:00:45", "2001", "2002"),
        nec("IVOTP", "11:01", "12/09", "010", "00:02:00", "2003", "0012125551234", "4711"),
    ]
    records = feed_all(p, lines)
    assert [record.extra["mode"] for record in records] == ["columns"] * 5
    pot, pin, no_answer, icm, ivotp = records
    assert (pot.extension, pot.trunk, pot.other_number, pot.account) == ("2001", "002", "2142623801", "08754")
    assert pin.extension == "Front Desk" and pin.account is None
    assert pin.extra["caller_name"] == "NECinfrontia Corp."
    assert (no_answer.answered, no_answer.account, no_answer.duration_s, no_answer.extension) == (
        False,
        None,
        None,
        None,
    )
    assert no_answer.end is None
    assert (icm.direction, icm.trunk, icm.account, icm.extension, icm.other_number) == (
        Direction.INTERNAL,
        None,
        None,
        "2001",
        "2002",
    )
    assert icm.extra["date_inferred"] is True and icm.start == utc(2024, 12, 9, 11, 0)
    assert (ivotp.direction, ivotp.trunk, ivotp.extra["class"]) == (Direction.OUT, "010", "IVOTP")


def test_date_off_layout():
    p = parser(date=False)
    line = nec_no_date("POT", "10:52", "0002", "00:00:10", "2001", "2142623801", "08754")
    record = one(p, line, RECEIVED)
    assert record.extra["mode"] == "columns"
    assert (record.trunk, record.extension, record.other_number, record.account) == (
        "0002",
        "2001",
        "2142623801",
        "08754",
    )
    assert record.start == utc(2024, 12, 9, 10, 52) and record.extra["date_inferred"] is True


# ---- years and zones


def test_year_from_page_header_and_change_between_pages():
    received = utc(2025, 3, 1, 12, 0)  # long after: the page header still gives the year
    p = parser()
    assert p.feed(page_header("12/31/2024"), received) == []
    records = feed_all(
        p,
        [
            "POT 23:58 12/31 002 00:00:10 2001 123",
            "POT 00:01 01/01 002 00:00:10 2001 456",  # still on the 12/31 page: next year
            page_header("01/01/2025", 2),
            "POT 23:59 12/31 002 00:00:10 2001 789",  # late record on the new year's page
            "POT 00:02 01/01 002 00:00:10 2001 012",
        ],
        received,
    )
    assert [record.start.year for record in records] == [2024, 2025, 2024, 2025]


def test_year_without_header_new_year():
    p = parser()
    late = one(p, "POT 23:58 12/31 002 00:00:10 2001 123", utc(2025, 1, 1, 0, 5))  # `12/31` read on `01/01`
    assert late.start == utc(2024, 12, 31, 23, 58)
    assert one(p, "POT 00:01 01/01 002 00:00:10 2001 123", utc(2025, 1, 1, 0, 5)).start == utc(2025, 1, 1, 0, 1)


def test_budapest_zone():
    p = parser(tz=BUDAPEST)
    winter = one(p, SAMPLE_POT, utc(2024, 12, 9, 10, 0))
    assert winter.start == utc(2024, 12, 9, 9, 52) and winter.end == utc(2024, 12, 9, 9, 52, 10)
    summer = one(p, "PIN 10:52 07/15 003 00:01:00 2001 0612345678", utc(2024, 7, 15, 9, 0))
    assert summer.start == utc(2024, 7, 15, 8, 52)
    # a time-only ICM record read just after local midnight belongs to the previous day
    icm = one(p, "ICM 23:58 00:00:10 2001 2002", utc(2024, 12, 9, 23, 5))  # 00:05 local on 12/10
    assert icm.start == utc(2024, 12, 9, 22, 58)


# ---- holding for NEXT


def test_held_record_released_by_flush_after_timeout():
    p = parser()
    assert p.feed(SAMPLE_POT, RECEIVED) == []
    assert p.flush(RECEIVED + timedelta(seconds=1)) == []
    (record,) = p.flush(LATER)
    assert "caller_name" not in record.extra
    assert p.feed(SAMPLE_NEXT, LATER) == []  # too late: dropped, never an error
    assert p.event_counts["next_unattached"] == 1


def test_following_lines_release_in_order():
    p = parser()
    assert p.feed("POT 10:52 12/09 002 00:00:10 2001 111", RECEIVED) == []
    (first,) = p.feed("POT 10:53 12/09 002 00:00:10 2001 222", RECEIVED)
    assert first.other_number == "111"
    (second,) = p.feed(SAMPLE_TITLES, RECEIVED)  # any non-NEXT line releases the held record first
    assert second.other_number == "222"
    assert p.feed("POT 10:54 12/09 002 00:00:10 2001 333", RECEIVED) == []
    (third,) = p.feed("ALB 10:55 12/09 3", RECEIVED)
    assert third.other_number == "333"
    assert p.flush(LATER) == []


def test_next_replaces_a_truncated_inline_name():
    p = parser()
    p.feed(nec("PIN", "10:53", "12/09", "003", "00:01:10", "2002", "2142623801", "NECinfrontia Cor"), RECEIVED)
    (record,) = p.feed(SAMPLE_NEXT, RECEIVED)
    assert record.extra["caller_name"] == "NECinfrontia Corp."
    assert record.extra["continuation_lines"] == [SAMPLE_NEXT]


def test_garbage_while_held_keeps_the_held_record():
    p = parser()
    p.feed(SAMPLE_POT, RECEIVED)
    with pytest.raises(SmdrParseError):
        p.feed("POT 99:99 12/09 002 00:00:10 2001 123", RECEIVED)
    (record,) = p.feed(SAMPLE_NEXT, RECEIVED)
    assert record.raw == SAMPLE_POT and record.extra["caller_name"] == "NECinfrontia Corp."


def test_reset_keeps_the_held_record():
    p = parser()
    p.feed(SAMPLE_POT, RECEIVED)
    p.reset()
    assert [record.raw for record in p.flush(LATER)] == [SAMPLE_POT]


# ---- non-records


@pytest.mark.parametrize(
    "line",
    [
        page_header(),
        SAMPLE_TITLES,
        "CLASS  TIME  DATE  LINE DURATION",
        "-" * 79,
        "=" * 79,
        "   ",
        "OUTGOING CALL/COST SUMMARY FOR DAY OF 12/09",
        "TOTAL NO. OF CALLS     12",
        "ATZ",
        "ALB 10:52 12/09 3",
        "BFL 10:52 12/09",
        "SDTA 10:52 12/09 002 00:00:10 2001",
        "SAD 10:52",
        "WAD 10:52",
        "NEXT orphan name",
    ],
)
def test_skipped_lines(line):
    p = parser()
    assert p.feed(line, RECEIVED) == []
    assert p.flush(LATER) == []


def test_events_are_counted():
    p = parser()
    for line in ("ALB 10:52 12/09 3", "BFL 10:53 12/09", "BFL 10:54 12/09", "SDTA 10:55 12/09 002"):
        assert p.feed(line, RECEIVED) == []
    assert p.event_counts == {"ALB": 1, "BFL": 2, "SDTA": 1}


def test_summary_block_is_skipped():
    lines = [
        "OUTGOING CALL/COST SUMMARY FOR DAY OF 12/09",
        "LINE 001      3 CALLS   00:10:00   1.20",
        "LINE 002      1 CALLS   00:00:40   0.10",
        "TOTAL NO. OF CALLS 4",
        page_header(),
        SAMPLE_POT,
    ]
    assert [record.raw for record in feed_all(parser(), lines)] == [SAMPLE_POT]


def test_unknown_class_with_a_time_is_still_a_record():
    record = one(parser(), "XYZ 10:52 12/09 002 00:00:10 2001 2142623801")
    assert record.direction == Direction.UNKNOWN and record.extra["class"] == "XYZ"


def test_wrapped_name_after_a_released_record_is_dropped():
    p = parser()
    p.feed(SAMPLE_POT, RECEIVED)
    p.flush(LATER)
    assert p.feed("Corp.", LATER) == []


@pytest.mark.parametrize(
    "line",
    [
        "this is not an SMDR line at all, it is much too long to be a name",
        "POT 10:5x 12/09 002 00:00:10 2001 123",
        "POT",
        "POT 25:10 12/09 002 00:00:10 2001 123",
        "PIN 10:52 02/30 002 00:00:10 2001 123",
        "hello",
    ],
)
def test_garbage_raises_parse_error(line):
    with pytest.raises(SmdrParseError):
        parser().feed(line, RECEIVED)


def test_bad_date_option_is_refused():
    with pytest.raises(ValueError, match="date"):
        NecSvParser.validate_options({"date": "maybe"})
    NecSvParser.validate_options({"date": False})
    NecSvParser.validate_options({"date": "off"})


def test_transfer_records_are_legs_of_their_line_unless_turned_off():

    received = datetime(2024, 12, 9, 11, 10, tzinfo=timezone.utc)
    for options, key in (({}, "line 002"), ({"merge_transfer_legs": False}, None)):
        nec = NecSvParser("pbx-nec", tz=timezone.utc, options=options)
        records = nec.feed("PTRS 11:02 12/09 002 00:00:30 2004 2142623801", received)
        records += nec.flush(received + timedelta(days=1))
        assert [(record.leg_key, record.joins_leg) for record in records] == [(key, True)]
    with pytest.raises(ValueError, match="merge_transfer_legs"):
        NecSvParser.validate_options({"merge_transfer_legs": "maybe"})
