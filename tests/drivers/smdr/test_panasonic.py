"""Panasonic SMDR parser: every spec sample, Pattern A columns, token mode, edge cases."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from drivers.smdr import parser_class
from drivers.smdr.base import SmdrParseError
from drivers.smdr.panasonic import PanasonicParser
from gateway.model import Direction

UTC = ZoneInfo("UTC")
BUDAPEST = ZoneInfo("Europe/Budapest")
RECEIVED = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)

HEADER = "  Date     Time    Ext CO        Dial Number        Ring Duration  Acc code  CD "
DASHES = "-" * 80


def parser(tz=UTC, **options) -> PanasonicParser:
    return PanasonicParser("pbx1", tz=tz, options=options)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def one(p: PanasonicParser, line: str, received_at: datetime = RECEIVED):
    records = p.feed(line, received_at)
    assert len(records) == 1, records
    return records[0]


def pattern_a(date="06/24/97", time="10:03AM", ext="11", co="01", dial="", ring="", duration="00:05'12", acc="", cd=""):
    """An exact 80-column Pattern A line: Date 1–8, Time 10–16, Ext 18–22, CO 24–25, Dial Number 27–51,
    Ring 53–56, Duration 58–65, Acc code 67–76, CD 78–80."""
    line = f"{date:<8} {time:>7} {ext:<5} {co:>2} {dial:<25} {ring:>4} {duration:>8} {acc:<10} {cd:<3}"
    assert len(line) == 80
    return line


def test_header_matches_the_column_table():
    columns = {
        "Date": (0, 8),
        "Time": (9, 16),
        "Ext": (17, 22),
        "CO": (23, 25),
        "Dial Number": (26, 51),
        "Ring": (52, 56),
        "Duration": (57, 65),
        "Acc code": (66, 76),
        "CD": (77, 80),
    }
    assert len(HEADER) == 80
    for name, (first, stop) in columns.items():
        assert HEADER[first:stop].strip() == name


# ---- every spec sample line (spaces collapsed → token mode)

# (line, options, start, end, extension, trunk, other_number, direction, duration_s, account, extra subset)
SAMPLES = [
    # KX-TD308: time is the END of the call
    (
        "06/24/97 10:03AM 11 1 1234567890123456789012345 00:05'12 1234567890",
        {},
        utc(1997, 6, 24, 9, 57, 48),
        utc(1997, 6, 24, 10, 3),
        "11",
        "1",
        "1234567890123456789012345",
        Direction.OUT,
        312,
        "1234567890",
        {},
    ),
    (
        "06/24/97 10:07AM 13 2 <I> 00:00'56",
        {},
        utc(1997, 6, 24, 10, 6, 4),
        utc(1997, 6, 24, 10, 7),
        "13",
        "2",
        None,
        Direction.IN,
        56,
        None,
        {},
    ),
    (
        "06/24/97 10:08AM 15 1 <I> 00:10'01 431211 TR",
        {},
        utc(1997, 6, 24, 9, 57, 59),
        utc(1997, 6, 24, 10, 8),
        "15",
        "1",
        None,
        Direction.IN,
        601,
        "431211",
        {"cd": "TR"},
    ),
    (
        "06/24/97 10:09AM 18 1 10222P1-202-346-7890 00:09'18 001 FW",
        {},
        utc(1997, 6, 24, 9, 59, 42),
        utc(1997, 6, 24, 10, 9),
        "18",
        "1",
        "1022212023467890",
        Direction.OUT,
        558,
        "001",
        {"cd": "FW", "dial_number": "10222P1-202-346-7890"},
    ),
    (
        "06/24/97 10:20AM 12 3 <I>4312111 00:21'46",
        {},
        utc(1997, 6, 24, 9, 58, 14),
        utc(1997, 6, 24, 10, 20),
        "12",
        "3",
        "4312111",
        Direction.IN,
        1306,
        None,
        {},
    ),
    # KX-TA616: time is the START of the call
    (
        "12/31/98 12:52PM 103 05 12345678901234567890123456789012 00:00'16 ....",
        {"time_is": "start"},
        utc(1998, 12, 31, 12, 52),
        utc(1998, 12, 31, 12, 52, 16),
        "103",
        "05",
        "12345678901234567890123456789012",
        Direction.OUT,
        16,
        None,
        {},
    ),
    (
        "12/31/98 *12:54PM 101 02 < incoming > 00:07'48 ....",
        {"time_is": "start"},
        utc(1998, 12, 31, 12, 54),
        utc(1998, 12, 31, 13, 1, 48),
        "101",
        "02",
        None,
        Direction.IN,
        468,
        None,
        {"transferred": True},
    ),
    (
        "12/31/98 1:04PM 102 05 < DISA incoming > 00:00'09 .... 0",
        {"time_is": "start"},
        utc(1998, 12, 31, 13, 4),
        utc(1998, 12, 31, 13, 4, 9),
        "102",
        "05",
        None,
        Direction.IN,
        9,
        None,
        {"incoming_type": "DISA", "unknown_tokens": ["0"]},
    ),
    # KX-TD612E UK: DD.MM.YY, 24 h end time, Dept and Cost
    (
        "24.03.94 10:03 201 12345 01 12345678901234567 00:05'12 00007. 00 12345",
        {},
        utc(1994, 3, 24, 9, 57, 48),
        utc(1994, 3, 24, 10, 3),
        "201",
        "01",
        "12345678901234567",
        Direction.OUT,
        312,
        "12345",
        {"dept": "12345", "cost": "00007.00"},
    ),
    (
        "24.03.94 10:08 205 05 <I>MARY WARD 00:10'01 00000. 00 43212 T",
        {},
        utc(1994, 3, 24, 9, 57, 59),
        utc(1994, 3, 24, 10, 8),
        "205",
        "05",
        None,
        Direction.IN,
        601,
        "43212",
        {"caller_name": "MARY WARD", "cost": "00000.00", "cd": "T"},
    ),
]


@pytest.mark.parametrize("sample", SAMPLES, ids=[sample[0][:30] for sample in SAMPLES])
def test_spec_samples(sample):
    line, options, start, end, extension, trunk, other, direction, duration, account, extra = sample
    record = one(parser(**options), line)
    assert (record.start, record.end) == (start, end)
    assert record.extension == extension
    assert record.trunk == trunk
    assert record.other_number == other
    assert record.direction == direction
    assert record.duration_s == duration
    assert record.account == account
    assert extra.items() <= record.extra.items()
    assert record.extra["mode"] == "tokens"
    assert (record.format, record.source, record.raw, record.received_at) == ("panasonic", "pbx1", line, RECEIVED)
    assert record.answered is None and record.platform_call_id is None


def test_sample_blocks_with_their_headers_need_no_options():
    """The KX-TA616 header (`Code`, no `Ring`) says times are starts; the UK header's `Dept` column is learnt."""
    p = parser()
    assert p.feed("Date Time Ext. CO Dial number Duration Code", RECEIVED) == []
    ta = one(p, "12/31/98 12:52PM 103 05 12345678901234567890123456789012 00:00'16 ....")
    assert ta.start == utc(1998, 12, 31, 12, 52)
    assert p.feed("Date Time Extn Dept CO Dial Number Duration Cost:£ Acc CD", RECEIVED) == []
    uk = one(p, "24.03.94 10:03 201 12345 01 12345678901234567 00:05'12 00007. 00 12345")
    assert uk.end == utc(1994, 3, 24, 10, 3)
    assert uk.extra["dept"] == "12345"
    assert one(p, "24.03.94 10:08 205 05 <I>MARY WARD 00:10'01 00000. 00 43212 T").trunk == "05"
    # an explicit option beats the header
    q = parser(time_is="end")
    q.feed("Date Time Ext. CO Dial number Duration Code", RECEIVED)
    assert one(q, "12/31/98 12:52PM 103 05 123 00:00'16 ....").end == utc(1998, 12, 31, 12, 52)


def test_registry_exposes_the_parser():
    assert parser_class("panasonic") is PanasonicParser
    assert PanasonicParser.format == "panasonic"


# ---- Pattern A columns


def test_exact_column_line():
    line = "06/24/97 10:03AM 11    01 <I>MARY WARD              0'05 00:05'12 1234       TR "
    assert line == pattern_a(dial="<I>MARY WARD", ring="0'05", acc="1234", cd="TR")
    record = one(parser(), line)
    assert record.extra["mode"] == "columns"
    assert record.extension == "11" and record.trunk == "01"
    assert record.direction == Direction.IN and record.extra["caller_name"] == "MARY WARD"
    assert record.other_number is None
    assert record.ring_s == 5 and record.duration_s == 312
    assert record.end == utc(1997, 6, 24, 10, 3)
    assert record.start == utc(1997, 6, 24, 9, 57, 43)  # end − duration − ring
    assert record.account == "1234" and record.extra["cd"] == "TR"


def test_page_with_header_dashes_blank_lines_and_noise():
    p = parser()
    lines = [
        "Enter password:",
        "SMDR",
        "AT&F",
        "ATZ",
        HEADER,
        DASHES,
        pattern_a(ext="101", co="02", dial="0123456789", duration="00:01'00", acc="...."),
        pattern_a(time="10:05AM", ext="102", co="", dial="105EXT", duration="00:00'30"),
        "",
        "   ",
        "=" * 40,
        HEADER,
        DASHES,
        pattern_a(time="10:09AM", ext="103", co="03", dial="<D>5551234<I>06201234567", ring="0'12"),
    ]
    records = [record for line in lines for record in p.feed(line, RECEIVED)]
    assert [record.extension for record in records] == ["101", "102", "103"]
    assert all(record.extra["mode"] == "columns" for record in records)
    outgoing, intercom, incoming = records
    assert (outgoing.direction, outgoing.other_number, outgoing.account) == (Direction.OUT, "0123456789", None)
    assert (intercom.direction, intercom.other_number, intercom.trunk) == (Direction.INTERNAL, "105", None)
    assert (incoming.direction, incoming.other_number) == (Direction.IN, "06201234567")
    assert incoming.extra["ddi"] == "5551234"
    assert incoming.ring_s == 12


def test_dial_number_filling_all_25_columns_and_co_00():
    record = one(parser(), pattern_a(co="00", dial="9" * 25, ring="", acc="7777777777"))
    assert record.extra["mode"] == "columns"
    assert record.other_number == "9" * 25 and record.trunk == "00" and record.account == "7777777777"
    assert record.ring_s is None


def test_short_line_without_trailing_blanks():
    line = pattern_a(dial="0123", duration="00:00'07").rstrip()
    assert len(line) == 65
    record = one(parser(), line)
    assert record.extra["mode"] == "columns" and record.duration_s == 7 and record.account is None


def test_misaligned_line_falls_back_to_tokens():
    line = "06/24/97  10:03AM 11 01 0123456789  0'05  00:01'00 42"
    record = one(parser(), line)
    assert record.extra["mode"] == "tokens"
    assert (record.extension, record.trunk, record.other_number, record.ring_s, record.account) == (
        "11",
        "01",
        "0123456789",
        5,
        "42",
    )


# ---- times


def test_budapest_zone_is_converted_to_utc():
    record = one(parser(tz=BUDAPEST), pattern_a(date="01/15/25", time="10:03AM", duration="00:05'12"))
    assert record.end == utc(2025, 1, 15, 9, 3)  # CET, +1
    summer = one(parser(tz=BUDAPEST), pattern_a(date="07/15/24", time="10:03AM", duration="00:05'12"))
    assert summer.end == utc(2024, 7, 15, 8, 3)  # CEST, +2
    assert summer.start == utc(2024, 7, 15, 7, 57, 48)


def test_start_before_midnight_is_on_the_previous_day():
    record = one(parser(), pattern_a(date="03/01/24", time="12:03AM", duration="00:05'12", ring="1'00"))
    assert record.end == utc(2024, 3, 1, 0, 3)
    assert record.start == utc(2024, 2, 29, 23, 56, 48)


def test_time_is_start():
    record = one(parser(time_is="start"), pattern_a(time="11:58PM", ring="0'10", duration="00:05'00"))
    assert record.start == utc(1997, 6, 24, 23, 58)
    assert record.end == utc(1997, 6, 25, 0, 3, 10)


def test_twelve_hour_clock():
    assert one(parser(), pattern_a(time="12:52PM", duration="00:00'00")).end == utc(1997, 6, 24, 12, 52)
    assert one(parser(), pattern_a(time="12:10AM", duration="00:00'00")).end == utc(1997, 6, 24, 0, 10)
    assert one(parser(), pattern_a(time="1:04PM", duration="00:00'00")).end == utc(1997, 6, 24, 13, 4)
    assert one(parser(), pattern_a(time="23:59", duration="00:00'00")).end == utc(1997, 6, 24, 23, 59)


@pytest.mark.parametrize(
    ("date", "options", "day"),
    [
        ("06/24/97", {}, (1997, 6, 24)),
        ("02/03/25", {}, (2025, 2, 3)),  # mdy for `/`
        ("02.03.25", {}, (2025, 3, 2)),  # dmy for `.`
        ("02/03/25", {"date_order": "dmy"}, (2025, 3, 2)),
        ("02.03.25", {"date_order": "mdy"}, (2025, 2, 3)),
        ("24/03/02", {"date_order": "ymd"}, (2024, 3, 2)),
        ("12/31/26", {}, (2026, 12, 31)),  # next year: still 20yy
        ("12/31/27", {}, (1927, 12, 31)),  # more than a year ahead: 19yy
    ],
)
def test_date_order_and_two_digit_years(date, options, day):
    record = one(parser(**options), pattern_a(date=date, time="10:00", duration="00:00'00"))
    assert record.end == utc(*day, 10, 0)


def test_unknown_date_and_starred_times_keep_the_record():
    p = parser()
    starred_date = one(p, pattern_a(date="**/**/**", dial="0123"))
    assert (starred_date.start, starred_date.end) == (None, None)
    assert starred_date.duration_s == 312 and starred_date.other_number == "0123"
    assert starred_date.extra["times_unknown"] is True
    starred_time = one(p, "06/24/97 **:**AM 11 01 0123 00:05'12")
    assert (starred_time.start, starred_time.end) == (None, None)
    starred_duration = one(p, pattern_a(dial="0123", duration="**:**'**"))
    assert starred_duration.extra["mode"] == "columns"
    assert starred_duration.duration_s is None and starred_duration.start is None
    assert starred_duration.end == utc(1997, 6, 24, 10, 3)
    starred_ring = one(p, "06/24/97 10:03AM 11 01 0123 *'** 00:05'12")
    assert starred_ring.ring_s is None and starred_ring.start is None and starred_ring.duration_s == 312


# ---- Dial Number


@pytest.mark.parametrize(
    ("dial", "direction", "other", "extra"),
    [
        ("<I>", Direction.IN, None, {}),
        ("<I>0612345678", Direction.IN, "0612345678", {}),
        ("<I>+36 1 234 5678", Direction.IN, "+3612345678", {}),
        ("<D>201<I>0612345678", Direction.IN, "0612345678", {"ddi": "201"}),
        ("<D>201<I>JOHN SMITH", Direction.IN, None, {"ddi": "201", "caller_name": "JOHN SMITH"}),
        ("<DIL incoming>", Direction.IN, None, {"incoming_type": "DIL"}),
        ("< incoming >", Direction.IN, None, {}),
        ("105EXT", Direction.INTERNAL, "105", {}),
        ("105 EXT", Direction.INTERNAL, "105", {}),
        ("9P0123456789", Direction.OUT, "90123456789", {}),
        ("F0123=45", Direction.OUT, "012345", {}),
        ("0123......", Direction.OUT, "0123", {"masked": True}),
        ("0123XXXX", Direction.OUT, "0123", {"masked": True}),
        ("-2345", Direction.OUT, "2345", {}),
        ("*72#", Direction.OUT, "*72#", {}),
        ("C-05", Direction.UNKNOWN, None, {"co_to_co": "05"}),
        ("", Direction.UNKNOWN, None, {}),
    ],
)
def test_dial_number(dial, direction, other, extra):
    for line in (pattern_a(dial=dial), f"06/24/97 10:03AM 11 01 {dial} 00:05'12".replace("  ", " ")):
        record = one(parser(), line)
        assert (record.direction, record.other_number) == (direction, other), line
        assert extra.items() <= record.extra.items()
        if dial:
            assert record.extra["dial_number"] == dial


def test_token_mode_intercom_without_co():
    record = one(parser(), "06/24/97 10:03AM 11 105EXT 00:00'30")
    assert (record.trunk, record.direction, record.other_number) == (None, Direction.INTERNAL, "105")


# ---- trailing fields


def test_cost_currency_and_unknown_trailing_tokens():
    record = one(parser(layout="B"), "06/24/97 10:03AM 11 01 0123456 00:05'12 00560.00EU 42 extra stuff FW")
    assert record.extra["cost"] == "00560.00" and record.extra["currency"] == "EU"
    assert record.account == "42" and record.extra["cd"] == "FW"
    assert record.extra["unknown_tokens"] == ["extra", "stuff"]
    pattern_c = one(parser(layout="C"), "06/24/97 10:03AM 11 0123 0123456 00:05'12 00560.00EUR")
    assert pattern_c.trunk == "0123" and pattern_c.extra["currency"] == "EUR" and pattern_c.account is None


@pytest.mark.parametrize("pound", ["£", "\x9c"])  # ISO-8859-1 and IBM-ASCII bytes, both read as latin-1
def test_non_ascii_pound_in_header(pound):
    assert parser().feed(f"Date Time Extn Dept CO Dial Number Duration Cost:{pound} Acc CD", RECEIVED) == []


# ---- non-records and garbage


@pytest.mark.parametrize(
    "line",
    [
        HEADER,
        DASHES,
        "=" * 80,
        "",
        "AT&F0",
        "ATE0Q1",
        "login:",
        "Enter password:",
        "Panasonic KX-TDA100 SMDR",
        "06/24/97 10:03AM 101 LOG IN",
        "06/24/97 10:05AM 101 LOG OUT",
        "06/24/97 10:05AM 101 Check in",
        "06/24/97 10:05AM 101 Timed Reminder/Start",
    ],
)
def test_skipped_lines(line):
    assert parser().feed(line, RECEIVED) == []


@pytest.mark.parametrize(
    "line",
    [
        "06/24/97 garbage here 00:05'12",  # bad time
        "13/45/97 10:03AM 11 01 0123 00:05'12",  # no such date
        "06/24/97 10:03AM 11 01 0123",  # no duration
        "06/24/97",  # date only
        "06/24/9 10:03AM 11 01 0123 00:05'12",  # damaged date
        "10:03AM 11 01 0123 00:05'12",  # record without its date
        "06/24/97 10:03AM 00:05'12",  # no extension
        "06/24/97 25:03 11 01 0123 00:05'12",  # bad hour
    ],
)
def test_garbage_raises_parse_error(line):
    with pytest.raises(SmdrParseError):
        parser().feed(line, RECEIVED)


@pytest.mark.parametrize("options", [{"time_is": "middle"}, {"date_order": "ydm"}, {"layout": "Z"}, {"dept": "maybe"}])
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        PanasonicParser.validate_options(options)


def test_good_options_are_accepted():
    PanasonicParser.validate_options({"time_is": "start", "date_order": "dmy", "layout": "c", "dept": True})


def test_trunk_to_trunk_legs_are_keyed_by_the_extension_that_sent_the_call_out_unless_turned_off():
    """Incoming legs and TR/FW legs carry the extension's key (the tracker joins an incoming and an outgoing leg
    of one extension that meet in time); a plain outgoing record is no leg."""
    received = datetime(1997, 6, 24, 10, 15, tzinfo=timezone.utc)
    lines = (
        "06/24/97 10:08AM 15 1 <I> 00:10'01 431211 TR",
        "06/24/97 10:09AM 18 1 10222P1-202-346-7890 00:09'18 001 FW",
        "06/24/97 10:03AM 11 1 1234567890123456789012345 00:05'12 1234567890",
        "06/24/97 10:09AM 18 2 <I>0123456 00:09'20",
    )
    parser = PanasonicParser("pbx", tz=timezone.utc)
    legs = [(record.leg_key, record.joins_leg) for line in lines for record in parser.feed(line, received)]
    assert legs == [("co-transfer 15", True), ("co-transfer 18", True), (None, False), ("co-transfer 18", True)]
    parser = PanasonicParser("pbx", tz=timezone.utc, options={"merge_transfer_legs": False})
    assert all(record.leg_key is None for line in lines for record in parser.feed(line, received))
    with pytest.raises(ValueError, match="merge_transfer_legs"):
        PanasonicParser.validate_options({"merge_transfer_legs": "yes"})
