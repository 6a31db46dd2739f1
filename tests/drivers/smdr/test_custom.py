"""Generic configurable parser: delimited, fixed and regex modes, skipping, continuation lines, option checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from drivers.smdr import parser_class
from drivers.smdr.base import SmdrParseError
from drivers.smdr.custom import CustomParser
from gateway.model import Direction

BUDAPEST = ZoneInfo("Europe/Budapest")
UTC = timezone.utc
RECEIVED = datetime(2012, 6, 20, 12, 0, tzinfo=UTC)

# The spec's Unify OpenScape Business example.
UNIFY_HEADER = "Datum|Uhrzeit|Lt|Tln|Ruf|Dauer|Rufnummer|Betrag|I|"
UNIFY_LINE = "20.06.12|13:11:35|201|33388|00:02|00:00:07|0123456789||1||||||"
UNIFY_OPTIONS = {
    "mode": "delimited",
    "delimiter": "|",
    "skip_regex": ["^Datum\\|"],
    "fields": {"date": 0, "time": 1, "trunk": 2, "extension": 3, "duration": 5, "other_number": 6},
    "date_format": "%d.%m.%y",
    "time_format": "%H:%M:%S",
}
PANASONIC_DURATION = r"(?P<h>\d+):(?P<m>\d\d)'(?P<s>\d\d)"
FIXED_COLUMNS = {
    "flag": [1, 1],
    "date": [2, 9],
    "time": [11, 17],
    "extension": [19, 22],
    "other_number": [24, 37],
    "duration": [39, 46],
    "code": [48, 50],
}
#                1         2         3         4         5
#       12345678901234567890123456789012345678901234567890
FIXED = " 06/19/12 01:04PM 201  0612345678     00:01:05 ABC"


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=BUDAPEST).astimezone(UTC)


def parser(**options: object) -> CustomParser:
    CustomParser.validate_options(options)
    return CustomParser("pbx9", tz=BUDAPEST, options=options)


def parse_one(line: str, received_at: datetime = RECEIVED, **options: object):
    records = parser(**options).feed(line, received_at)
    assert len(records) == 1
    return records[0]


def test_registry_exposes_the_parser() -> None:
    assert parser_class("custom") is CustomParser
    assert CustomParser.format == "custom"


def test_unify_openscape_example_exactly() -> None:
    unify = parser(**UNIFY_OPTIONS)
    assert unify.feed(UNIFY_HEADER, RECEIVED) == []
    [record] = unify.feed(UNIFY_LINE, RECEIVED)
    assert record.format == "custom"
    assert record.source == "pbx9"
    assert record.raw == UNIFY_LINE
    assert record.received_at == RECEIVED
    assert record.start == datetime(2012, 6, 20, 11, 11, 35, tzinfo=UTC)  # 13:11:35 CEST
    assert record.end == datetime(2012, 6, 20, 11, 11, 42, tzinfo=UTC)
    assert record.duration_s == 7
    assert record.ring_s is None
    assert record.trunk == "201"
    assert record.extension == "33388"
    assert record.other_number == "0123456789"
    assert record.direction is Direction.UNKNOWN
    assert record.account is None
    assert record.platform_call_id is None
    assert record.more_follows is False
    assert record.answered is None
    assert record.extra == {}
    assert unify.feed(UNIFY_HEADER, RECEIVED) == []  # headers repeat every page


def test_unify_header_after_reconnect_with_skip_first() -> None:
    options = dict(UNIFY_OPTIONS, skip_first=1)
    del options["skip_regex"]
    unify = parser(**options)
    assert unify.feed(UNIFY_HEADER, RECEIVED) == []
    assert len(unify.feed(UNIFY_LINE, RECEIVED)) == 1
    with pytest.raises(SmdrParseError):
        unify.feed(UNIFY_HEADER, RECEIVED)  # not skipped any more: not a date
    unify.reset()
    assert unify.feed(UNIFY_HEADER, RECEIVED) == []
    assert len(unify.feed(UNIFY_LINE, RECEIVED)) == 1


@pytest.mark.parametrize("line", ["-" * 40, "=====", " ---- ---- ", "||||||"])
def test_separator_lines_are_skipped(line: str) -> None:
    assert parser(**UNIFY_OPTIONS).feed(line, RECEIVED) == []


@pytest.mark.parametrize(
    ("line", "options"),
    [
        ("garbage", UNIFY_OPTIONS),
        ("Tln|Ruf|Dauer", UNIFY_OPTIONS),
        ("31.02.12|13:11:35|201|33388", UNIFY_OPTIONS),
        ("20.06.12|25:11:35|201|33388", UNIFY_OPTIONS),
        ("20.06.12|13:11:35|201|33388|00:02|7 min|0123", UNIFY_OPTIONS),
        ("20.06.12|13:11:35", dict(UNIFY_OPTIONS, min_fields=7)),
        ("x" * 10, dict(UNIFY_OPTIONS, min_length=40)),
        ("no digits here", {"pattern": r"^(?P<extension>\d+) (?P<time>\S+)$"}),
        ("|||x|||", UNIFY_OPTIONS),
    ],
)
def test_garbage_is_a_parse_error(line: str, options: dict) -> None:
    with pytest.raises(SmdrParseError):
        parser(**options).feed(line, RECEIVED)


def test_skip_regex_as_single_string_and_record_regex() -> None:
    options = dict(UNIFY_OPTIONS, skip_regex="^Datum", record_regex=r"^\d\d\.\d\d\.\d\d\|")
    custom = parser(**options)
    assert custom.feed(UNIFY_HEADER, RECEIVED) == []
    assert custom.feed("TOTAL 12 CALLS", RECEIVED) == []  # not a record by record_regex: skipped silently
    assert len(custom.feed(UNIFY_LINE, RECEIVED)) == 1


def test_fixed_mode_with_blank_first_column_and_12h_clock() -> None:
    record = parse_one(FIXED, mode="fixed", columns=FIXED_COLUMNS, date_format="%m/%d/%y", time_format="%I:%M%p")
    assert record.start == local(2012, 6, 19, 13, 4)
    assert record.duration_s == 65
    assert record.end == record.start + timedelta(seconds=65)
    assert record.extension == "201"
    assert record.other_number == "0612345678"
    assert record.extra == {"code": "ABC"}  # the blank flag column is absent, not ""


def test_fixed_mode_short_line_is_padded() -> None:
    short = FIXED[:30]
    record = parse_one(short, mode="fixed", columns=FIXED_COLUMNS, date_format="%m/%d/%y")
    assert record.start == local(2012, 6, 19, 13, 4)  # default time reading: 12 h with AM/PM
    assert record.other_number == "0612345"
    assert record.duration_s is None
    assert record.end is None


def test_fixed_mode_flag_in_column_one() -> None:
    line = "+" + FIXED[1:]
    record = parse_one(line, columns=FIXED_COLUMNS, date_format="%m/%d/%y")  # mode inferred from columns
    assert record.extra["flag"] == "+"


@pytest.mark.parametrize(
    ("clock", "hour", "minute"),
    [("12:52AM", 0, 52), ("12:05PM", 12, 5), ("1:04PM", 13, 4), ("10:03AM", 10, 3), ("09:15", 9, 15)],
)
def test_regex_mode_12h_clock_and_panasonic_duration(clock: str, hour: int, minute: int) -> None:
    options = {
        "mode": "regex",
        "pattern": r"^(?P<date>\d\d/\d\d/\d\d)\s+(?P<time>\S+)\s+(?P<extension>\d+)\s+(?P<trunk>\d+)\s+"
        r"(?P<other_number>\S+)\s+(?P<duration>\S+)",
        "date_format": "%m/%d/%y",
        "duration_format": PANASONIC_DURATION,
    }
    record = parse_one(f"06/19/12 {clock:>7} 101 01 0612345678 00:01'05", **options)
    assert record.start == local(2012, 6, 19, hour, minute)
    assert record.duration_s == 65
    assert record.trunk == "01"


def test_new_year_inference_without_year() -> None:
    options = {
        "fields": {"date": 0, "time": 1, "extension": 2, "duration": 3},
        "date_format": "%m/%d",
        "time_format": "%H:%M",
    }
    record = parse_one("12/31,23:58,201,00:05:00", received_at=local(2025, 1, 1, 0, 10), **options)
    assert record.start == local(2024, 12, 31, 23, 58)
    assert record.end == local(2025, 1, 1, 0, 3)
    leap = parse_one("02/29,10:00,201,60", received_at=local(2024, 3, 1, 9, 0), **options)
    assert leap.start == local(2024, 2, 29, 10, 0)


def test_year_infer_overrides_a_printed_year_and_two_digit_years() -> None:
    options = {"fields": {"date": 0, "time": 1, "extension": 2}, "date_format": "%m/%d/%y"}
    assert parse_one("06/19/97,10:00,201", **options).start.year == 1997
    assert parse_one("06/19/12,10:00,201", **options).start.year == 2012
    assert parse_one("06/19/97,10:00,201", year="infer", **options).start.year == 2012


def test_time_without_date_is_dated_by_the_receive_day() -> None:
    options = {"fields": {"time": 0, "extension": 1}}
    assert parse_one("13:00,201", received_at=local(2024, 5, 2, 14, 0), **options).start == local(2024, 5, 2, 13, 0)
    late = parse_one("23:59,201", received_at=local(2024, 5, 2, 0, 5), **options)
    assert late.start == local(2024, 5, 1, 23, 59)


def test_time_is_end_and_answer() -> None:
    options = {"fields": {"datetime": 0, "ring": 1, "duration": 2, "extension": 3}}
    end_record = parse_one("2024-05-02 10:00:30,10,20,201", time_is="end", **options)
    assert end_record.end == local(2024, 5, 2, 10, 0, 30)
    assert end_record.start == local(2024, 5, 2, 10, 0, 0)
    assert end_record.ring_s == 10
    answer = parse_one("2024-05-02 10:00:10,10,20,201", time_is="answer", **options)
    assert answer.start == local(2024, 5, 2, 10, 0, 0)
    assert answer.end == local(2024, 5, 2, 10, 0, 30)
    start = parse_one("2024-05-02 10:00:00,10,20,201", **options)
    assert (start.start, start.end) == (local(2024, 5, 2, 10, 0, 0), local(2024, 5, 2, 10, 0, 30))


def test_datetime_format_seconds_duration_and_timezone_option() -> None:
    options = {
        "fields": {"datetime": 0, "duration": 1, "caller": 2, "called": 3},
        "datetime_format": "%Y/%m/%d %H:%M:%S",
        "duration_format": "seconds",
        "timezone": "UTC",
    }
    record = parse_one("2024/05/02 10:00:00,75,201,0612345678", **options)
    assert record.start == datetime(2024, 5, 2, 10, 0, tzinfo=UTC)
    assert record.duration_s == 75
    assert record.extension == "201"  # direction unknown: the caller is taken as the station
    assert record.other_number == "0612345678"
    assert record.extra == {"caller": "201", "called": "0612345678"}


def test_printed_utc_offset_wins_over_the_link_zone() -> None:
    record = parse_one("2024-05-02T10:00:00+00:00,201", fields={"datetime": 0, "extension": 1})
    assert record.start == datetime(2024, 5, 2, 10, 0, tzinfo=UTC)


def test_quoted_csv_with_stray_spaces() -> None:
    options = {"fields": {"datetime": 0, "extension": 1, "other_number": 2, "account": 3, "caller_name": 4}}
    record = parse_one('2024-05-02 10:00:00, 201 ,"0612345678", 42 , "Doe, John"', **options)
    assert record.extension == "201"
    assert record.account == "42"
    assert record.extra == {"caller_name": "Doe, John"}


@pytest.mark.parametrize(
    ("raw_direction", "other", "direction"),
    [
        ("I", "0612345678", Direction.IN),
        ("O", "0612345678", Direction.OUT),
        ("o", "0612345678", Direction.OUT),
        ("O", "202", Direction.INTERNAL),
        ("X", "0612345678", Direction.UNKNOWN),
    ],
)
def test_direction_map_and_internal_if(raw_direction: str, other: str, direction: Direction) -> None:
    options = {
        "fields": {"datetime": 0, "direction": 1, "extension": 2, "other_number": 3},
        "direction_map": {"I": "in", "O": "out"},
        "internal_if": r"\d{3}",
    }
    record = parse_one(f"2024-05-02 10:00:00,{raw_direction},201,{other}", **options)
    assert record.direction is direction
    assert record.extra["direction"] == raw_direction


@pytest.mark.parametrize(
    ("caller", "called", "direction", "extension", "other"),
    [
        ("201", "0612345678", Direction.OUT, "201", "0612345678"),
        ("0612345678", "201", Direction.IN, "201", "0612345678"),
        ("201", "202", Direction.INTERNAL, "201", "202"),
    ],
)
def test_caller_called_roles_from_internal_if(caller, called, direction, extension, other) -> None:
    options = {"fields": {"datetime": 0, "caller": 1, "called": 2}, "internal_if": r"2\d\d"}
    record = parse_one(f"2024-05-02 10:00:00,{caller},{called}", **options)
    assert (record.direction, record.extension, record.other_number) == (direction, extension, other)


def test_internal_if_by_field() -> None:
    options = {"fields": {"datetime": 0, "extension": 1, "trunk": 2}, "internal_if": {"trunk": "^$"}}
    assert parse_one("2024-05-02 10:00:00,201,", **options).direction is Direction.INTERNAL
    assert parse_one("2024-05-02 10:00:00,201,7", **options).direction is Direction.UNKNOWN


def test_plain_direction_words_without_a_map() -> None:
    options = {"fields": {"datetime": 0, "direction": 1, "extension": 2}}
    assert parse_one("2024-05-02 10:00:00,Incoming,201", **options).direction is Direction.IN


def test_multi_record_grouping_fields() -> None:
    options = {
        "fields": {"datetime": 0, "extension": 1, "callid": 2, "cont": 3},
        "platform_call_id_field": "callid",
        "more_follows_field": "cont",
        "more_follows_value": "M",
    }
    first = parse_one("2024-05-02 10:00:00,201,C77,M", **options)
    last = parse_one("2024-05-02 10:01:00,202,C77,", **options)
    assert (first.platform_call_id, first.more_follows) == ("C77", True)
    assert (last.platform_call_id, last.more_follows) == ("C77", False)
    truthy = parse_one("2024-05-02 10:00:00,201,C77,1", **{**options, "more_follows_value": None})
    assert truthy.more_follows is True


def test_answered_and_direct_seconds_targets() -> None:
    options = {"fields": {"datetime": 0, "extension": 1, "answered": 2, "ring_s": 3, "duration_s": 4}}
    record = parse_one("2024-05-02 10:00:00,201,N,4.5,0", **options)
    assert record.answered is False
    assert record.ring_s == 4.5
    assert record.duration_s == 0
    assert record.end == record.start + timedelta(seconds=4.5)


class TestContinuationLines:
    OPTIONS = {
        "mode": "regex",
        "pattern": r"^(?P<class>\w+)\s+(?P<time>\d\d:\d\d)\s+(?P<extension>\d+)\s+(?P<other_number>\d+)",
        "attach_regex": "^NEXT ",
        "attach_to": "caller_name",
    }
    FIRST = "PIN 10:52 2001 2142623801"
    SECOND = "POT 10:53 2002 2142623802"
    RECEIVED = datetime(2024, 5, 2, 9, 0, tzinfo=UTC)

    def test_continuation_attaches_to_the_held_record(self) -> None:
        nec = parser(**self.OPTIONS)
        assert nec.feed(self.FIRST, self.RECEIVED) == []  # held: a NEXT line may follow
        assert nec.feed("NEXT NECinfrontia Corp.", self.RECEIVED) == []
        [first] = nec.feed(self.SECOND, self.RECEIVED)
        assert first.extra == {"class": "PIN", "caller_name": "NECinfrontia Corp."}
        assert first.raw == f"{self.FIRST}\nNEXT NECinfrontia Corp."
        assert first.start == local(2024, 5, 2, 10, 52)
        assert nec.flush(self.RECEIVED + timedelta(seconds=1)) == []
        [second] = nec.flush(self.RECEIVED + timedelta(seconds=2))
        assert second.extension == "2002"
        assert "caller_name" not in second.extra
        assert nec.flush(self.RECEIVED + timedelta(seconds=10)) == []

    def test_orphan_continuation_is_dropped(self) -> None:
        nec = parser(**self.OPTIONS)
        assert nec.feed("NEXT nobody before me", self.RECEIVED) == []
        assert nec.flush(self.RECEIVED + timedelta(days=1)) == []

    def test_attach_to_a_record_field_and_release_by_skip_line(self) -> None:
        nec = parser(**dict(self.OPTIONS, attach_to="account", skip_regex=["^CLASS"]))
        nec.feed(self.FIRST, self.RECEIVED)
        nec.feed("NEXT 12", self.RECEIVED)
        nec.feed("NEXT 34", self.RECEIVED)
        [record] = nec.feed("CLASS TIME DATE LINE", self.RECEIVED)
        assert record.account == "12 34"

    def test_held_record_survives_an_error_line(self) -> None:
        nec = parser(**self.OPTIONS)
        nec.feed(self.FIRST, self.RECEIVED)
        with pytest.raises(SmdrParseError):
            nec.feed("what is this", self.RECEIVED)
        [record] = nec.flush(self.RECEIVED + timedelta(seconds=5))
        assert record.extension == "2001"


def test_transport_keys_are_accepted_and_ignored() -> None:
    record = parse_one(UNIFY_LINE, **UNIFY_OPTIONS, encoding="cp1252", terminator="\r\n", strip="\x00\x0c")
    assert record.extension == "33388"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"mode": "xml", "fields": {"time": 0}}, "mode"),
        ({"time": 0}, "mode"),
        ({"fields": {"time": 0}, "columns": {"time": [1, 5]}}, "mode"),
        ({"mode": "delimited"}, "fields"),
        ({"mode": "delimited", "fields": {}}, "fields"),
        ({"mode": "delimited", "fields": {"time": -1}}, "fields.time"),
        ({"mode": "delimited", "fields": {"time": "0"}}, "fields.time"),
        ({"mode": "fixed"}, "columns"),
        ({"mode": "fixed", "columns": {"time": [5, 1]}}, "columns.time"),
        ({"mode": "fixed", "columns": {"time": [0, 5]}}, "columns.time"),
        ({"mode": "fixed", "columns": {"time": [1, 2, 3]}}, "columns.time"),
        ({"mode": "regex"}, "pattern"),
        ({"mode": "regex", "pattern": "(unclosed"}, "pattern"),
        ({"mode": "regex", "pattern": r"(\d+) (\d+)"}, "pattern"),
        ({"fields": {"trunk": 0, "account": 1}}, "fields"),
        ({"fields": {"time": 0, "raw": 1}}, "fields.raw"),
        ({"fields": {"time": 0}, "skip_regex": ["ok", "[bad"]}, r"skip_regex\[1\]"),
        ({"fields": {"time": 0}, "record_regex": "*"}, "record_regex"),
        ({"fields": {"time": 0}, "attach_regex": "("}, "attach_regex"),
        ({"fields": {"time": 0}, "attach_to": "name"}, "attach_to"),
        ({"fields": {"time": 0}, "attach_regex": "^NEXT", "attach_to": "duration"}, "attach_to"),
        ({"fields": {"time": 0}, "delimiter": ""}, "delimiter"),
        ({"fields": {"time": 0}, "quotechar": "''"}, "quotechar"),
        ({"fields": {"time": 0}, "min_fields": -1}, "min_fields"),
        ({"fields": {"time": 0}, "skip_first": "two"}, "skip_first"),
        ({"fields": {"time": 0}, "min_length": 1.5}, "min_length"),
        ({"fields": {"time": 0}, "date_format": "dd.mm.yy"}, "date_format"),
        ({"fields": {"time": 0}, "time_format": "%H:%Q"}, "time_format"),
        ({"fields": {"time": 0}, "year": "guess"}, "year"),
        ({"fields": {"time": 0}, "time_is": "middle"}, "time_is"),
        ({"fields": {"time": 0}, "timezone": "Mars/Olympus"}, "timezone"),
        ({"fields": {"time": 0}, "duration_format": "minutes"}, "duration_format"),
        ({"fields": {"time": 0}, "duration_format": "(?P<h"}, "duration_format"),
        ({"fields": {"time": 0}, "direction_map": {"I": "inbound-ish"}}, "direction_map.I"),
        ({"fields": {"time": 0}, "direction_map": ["I"]}, "direction_map"),
        ({"fields": {"time": 0}, "internal_if": "[0-9"}, "internal_if"),
        ({"fields": {"time": 0}, "internal_if": {"trunk": "^$"}}, "internal_if.trunk"),
        ({"fields": {"time": 0}, "platform_call_id_field": "callid"}, "platform_call_id_field"),
        ({"fields": {"time": 0}, "more_follows_field": "cont"}, "more_follows_field"),
        ({"fields": {"time": 0}, "more_follows_value": "M"}, "more_follows_value"),
    ],
)
def test_validate_options_refuses(options: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        CustomParser.validate_options(options)
    with pytest.raises(ValueError, match=key):
        CustomParser("pbx9", tz=BUDAPEST, options=options)


@pytest.mark.parametrize(
    "options",
    [
        UNIFY_OPTIONS,
        {"fields": {"extension": 0}},  # a party and no time is enough
        {"mode": "fixed", "columns": {"time": 5, "extension": [7, 10]}},
        {"pattern": r"(?P<datetime>\S+ \S+)"},
        {"fields": {"time": 0}, "duration_format": "hh:mm:ss", "quotechar": None, "delimiter": "||"},
        {"fields": {"time": 0, "cont": 1}, "more_follows_field": "cont", "more_follows_value": True},
    ],
)
def test_validate_options_accepts(options: dict) -> None:
    CustomParser.validate_options(options)
