"""3CX CDR parser: the common field order, configured orders, options and the documented edge cases (docs/smdr.md)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from drivers.smdr import parser_class
from drivers.smdr.base import SmdrParseError
from drivers.smdr.threecx import DEFAULT_FIELDS, FIELD_NAMES, ThreeCxParser
from gateway.model import Direction

UTC = timezone.utc
BUDAPEST = ZoneInfo("Europe/Budapest")
RECEIVED = datetime(2024, 3, 5, 12, 0, 0, tzinfo=UTC)
ALL_FIELDS = list(FIELD_NAMES)


def parser(tz=UTC, **options) -> ThreeCxParser:
    return ThreeCxParser("pbx-3cx", tz=tz, options=options)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def only(line: str, tz=UTC, **options):
    records = parser(tz, **options).feed(line, RECEIVED)
    assert len(records) == 1
    return records[0]


# Lines in the common 20-field order (the documented shape), link zone UTC.
# (line, start, end, extension, other_number, direction, platform_call_id, answered, duration_s)
COMMON_ORDER_SAMPLES = [
    pytest.param(
        "Call 1001,00000C1A2B3C4D5E_101,00:02:15,2024/03/05 09:15:02,2024/03/05 09:15:09,2024/03/05 09:17:24,"
        "TerminatedBySrc,+36301234567,Ext.101,10000,101,,,Ext.101,101,,,,,Chain: +36301234567;Ext.101;",
        utc(2024, 3, 5, 9, 15, 2),
        utc(2024, 3, 5, 9, 17, 24),
        "101",
        "+36301234567",
        Direction.IN,
        "1001",
        True,
        135,
        id="inbound",
    ),
    pytest.param(
        "Call 1002,00000C1A2B3C4D5E_102,00:00:48,2024/03/05 10:00:00,2024/03/05 10:00:12,2024/03/05 10:01:00,"
        "TerminatedByDst,Ext.102,0612345678,102,10000,0612345678,,0612345678,10000,**SALES,1,0.05,Local,"
        "Chain: Ext.102;0612345678;",
        utc(2024, 3, 5, 10, 0, 0),
        utc(2024, 3, 5, 10, 1, 0),
        "102",
        "0612345678",
        Direction.OUT,
        "1002",
        True,
        48,
        id="outbound",
    ),
    pytest.param(
        "Call 1003,00000C1A2B3C4D5E_103,00:01:00,2024/03/05 11:00:00,2024/03/05 11:00:03,2024/03/05 11:01:03,"
        "TerminatedBySrc,Ext.103,Ext.104,103,104,104,,Ext.104,104,,,,,Chain: Ext.103;Ext.104;",
        utc(2024, 3, 5, 11, 0, 0),
        utc(2024, 3, 5, 11, 1, 3),
        "104",
        "103",
        Direction.INTERNAL,
        "1003",
        True,
        60,
        id="internal",
    ),
    pytest.param(
        "Call 1004,00000C1A2B3C4D5E_104,,2024/03/05 11:30:00,,2024/03/05 11:30:20,TerminatedBySrc,+441632960000,"
        "Ext.105,10001,105,,,Ext.105,105,,,,,Chain: +441632960000;Ext.105;",
        utc(2024, 3, 5, 11, 30, 0),
        utc(2024, 3, 5, 11, 30, 20),
        "105",
        "+441632960000",
        Direction.IN,
        "1004",
        False,
        0,
        id="unanswered-inbound",
    ),
    pytest.param(
        "Call 1005,00000C1A2B3C4D5E_105,00:00:00,2024/03/05 11:40:00, ,2024/03/05 11:40:09,Failed,Ext.106,"
        "0036123456,106,10000,0036123456,,,,,,,,Chain: Ext.106;0036123456;",
        utc(2024, 3, 5, 11, 40, 0),
        utc(2024, 3, 5, 11, 40, 9),
        "106",
        "0036123456",
        Direction.OUT,
        "1005",
        False,
        0,
        id="failed-outbound-blank-answer",
    ),
]


@pytest.mark.parametrize(
    ("line", "start", "end", "extension", "other_number", "direction", "platform_call_id", "answered", "duration_s"),
    COMMON_ORDER_SAMPLES,
)
def test_common_order_samples(
    line, start, end, extension, other_number, direction, platform_call_id, answered, duration_s
):
    record = only(line)
    assert record.format == "3cx"
    assert record.source == "pbx-3cx"
    assert record.raw == line
    assert (record.start, record.end) == (start, end)
    assert record.extension == extension
    assert record.other_number == other_number
    assert record.direction is direction
    assert record.platform_call_id == platform_call_id
    assert record.answered is answered
    assert record.duration_s == duration_s
    assert record.more_follows is False


def test_inbound_details() -> None:
    record = only(COMMON_ORDER_SAMPLES[0].values[0])
    assert record.ring_s == 7
    assert record.trunk == "10000"  # the line DN (from-dn)
    assert record.account is None
    assert record.extra["callid"] == "00000C1A2B3C4D5E_101"
    assert record.extra["historyid"] == "1001"
    assert record.extra["reason_terminated"] == "TerminatedBySrc"
    assert record.extra["chain"] == "+36301234567;Ext.101;"
    assert record.extra["chain_parties"] == ["+36301234567", "Ext.101"]
    assert "bill_code" not in record.extra  # empty bill-* fields are left out


def test_outbound_details() -> None:
    record = only(COMMON_ORDER_SAMPLES[1].values[0])
    assert record.trunk == "10000"  # to-dn
    assert record.account == "**SALES"
    assert record.ring_s == 12
    assert record.extra["bill_rate"] == "1"
    assert record.extra["bill_name"] == "Local"


def test_unanswered_ring_is_whole_call() -> None:
    record = only(COMMON_ORDER_SAMPLES[3].values[0])
    assert record.ring_s == 20


def test_link_zone_converts_to_utc() -> None:
    line = (
        "Call 7,abc_7,00:00:10,2008/06/28 09:28:41,2008/06/28 09:28:45,2008/06/28 09:28:55,TerminatedBySrc,"
        "+3612345678,Ext.100,10000,100,,,Ext.100,100,,,,,Chain: +3612345678;Ext.100;"
    )
    record = only(line, tz=BUDAPEST)  # summer time, UTC+2
    assert record.start == utc(2008, 6, 28, 7, 28, 41)
    assert record.end == utc(2008, 6, 28, 7, 28, 55)
    assert record.ring_s == 4


def test_chain_with_quote_semicolons_and_commas_takes_the_surplus() -> None:
    line = (
        "Call 1010,cid_1010,00:00:30,2024/03/05 12:00:00,2024/03/05 12:00:05,2024/03/05 12:00:35,TerminatedByDst,"
        "+3612345,Ext.200,10000,200,,ReplacedDst,Ext.201,201,,,,,Chain: +3612345;Ext.200 O'Brien, Pat;Ext.201;"
    )
    assert len(line.split(",")) == 21
    record = only(line)
    assert record.extra["chain"] == "+3612345;Ext.200 O'Brien, Pat;Ext.201;"
    assert record.extra["chain_parties"] == ["+3612345", "Ext.200 O'Brien, Pat", "Ext.201"]
    assert record.extension == "201"  # final-dn
    assert record.direction is Direction.IN


def test_trailing_comma_is_tolerated() -> None:
    record = only(COMMON_ORDER_SAMPLES[0].values[0] + ",")
    assert record.extension == "101"
    assert record.extra["chain"] == "+36301234567;Ext.101;"


# A line in the order of all 27 fields, with party types (direction from from-type/to-type).
ALL_FIELDS_LINE = (
    "Call 300100,8f1e2d3c4b5a6978_4401,00:05:00,2024/04/30 08:00:00,2024/04/30 08:00:12,2024/04/30 08:05:12,"
    "TerminatedByDst,+36209876543,Ext.800,10020,800,800,ReplacedDst,Ext.1013,1013,,,,,"
    "Chain: +36209876543;Ext.800;Ext.1013;,Line,Queue,Extension,+36209876543,Support,Kovács Anna,"
)


def test_configured_order_with_types() -> None:
    record = only(ALL_FIELDS_LINE, fields=ALL_FIELDS)
    assert record.direction is Direction.IN
    assert record.extension == "1013"  # final-dn: the queue agent who answered
    assert record.other_number == "+36209876543"
    assert record.trunk == "10020"
    assert record.ring_s == 12
    assert record.duration_s == 300
    assert record.extra["final_dispname"] == "Kovács Anna"
    assert record.extra["to_type"] == "Queue"


def test_underscore_field_names_are_accepted() -> None:
    names = [name.replace("-", "_") for name in FIELD_NAMES]
    assert only(ALL_FIELDS_LINE, fields=names).extension == "1013"


def test_type_values_compared_case_insensitively() -> None:
    line = ALL_FIELDS_LINE.replace(",Line,Queue,Extension,", ",EXTERNAL_LINE,queue,extension,")
    assert only(line, fields=ALL_FIELDS).direction is Direction.IN
    outbound = (
        "Call 300101,x_1,00:01:00,2024/04/30 09:00:00,2024/04/30 09:00:05,2024/04/30 09:01:05,TerminatedBySrc,"
        "Ext.1013,+3611234567,1013,10020,+3611234567,,+3611234567,10020,,,,,Chain: Ext.1013;+3611234567;,"
        "extension,line,line,Kovács Anna,+3611234567,+3611234567,"
    )
    record = only(outbound, fields=ALL_FIELDS)
    assert (record.direction, record.extension, record.other_number, record.trunk) == (
        Direction.OUT,
        "1013",
        "+3611234567",
        "10020",
    )


def test_types_decide_over_prefixes_and_can_be_switched_off() -> None:
    # An IVR (type Ivr, no Ext. prefix) calling an extension: internal by type, inbound by prefixes alone.
    line = (
        "Call 300102,x_2,00:00:20,2024/04/30 10:00:00,2024/04/30 10:00:02,2024/04/30 10:00:22,TerminatedBySrc,"
        "IVR.900,Ext.1013,900,1013,1013,,Ext.1013,1013,,,,,Chain: IVR.900;Ext.1013;,Ivr,Extension,Extension,Menu,"
        "Kovács Anna,Kovács Anna,"
    )
    assert only(line, fields=ALL_FIELDS).direction is Direction.INTERNAL
    assert only(line, fields=ALL_FIELDS, direction_fields=False).direction is Direction.IN
    assert only(line, fields=ALL_FIELDS, external_types=["ivr"]).direction is Direction.IN


def test_subset_of_fields_in_another_order() -> None:
    fields = ["time-start", "time-end", "from-no", "to-no", "historyid", "duration", "time-answered"]
    line = "2024/03/05 09:00:00,2024/03/05 09:00:40,ext.110,+3617654321,Call 55,00:00:30,2024/03/05 09:00:10"
    record = only(line, fields=fields)
    assert record.direction is Direction.OUT
    assert record.extension == "110"  # no from-dn configured: the number without `Ext.`
    assert record.other_number == "+3617654321"
    assert record.platform_call_id == "55"
    assert record.trunk is None
    assert (record.ring_s, record.duration_s, record.answered) == (10, 30, True)


def test_ring_unknown_without_time_answered() -> None:
    fields = ["historyid", "time-start", "time-end", "from-no", "to-no"]
    record = only("Call 57,2024/03/05 09:00:00,2024/03/05 09:00:40,+3617654321,Ext.111", fields=fields)
    assert (record.answered, record.ring_s, record.duration_s) == (None, None, None)
    assert record.end == utc(2024, 3, 5, 9, 0, 40)


def test_end_computed_without_time_end() -> None:
    fields = ["historyid", "time-start", "time-answered", "duration", "from-no", "to-no"]
    record = only("Call 56,2024/03/05 09:00:00,2024/03/05 09:00:10,00:00:30,+3617654321,Ext.111", fields=fields)
    assert record.end == utc(2024, 3, 5, 9, 0, 40)
    assert record.direction is Direction.IN


@pytest.mark.parametrize(
    ("options", "header"),
    [
        ({}, ",".join(DEFAULT_FIELDS)),
        ({}, ",".join(name.replace("-", "_") for name in DEFAULT_FIELDS)),
        ({"fields": ALL_FIELDS}, ",".join(FIELD_NAMES) + ","),
    ],
)
def test_header_line_is_skipped(options, header) -> None:
    assert parser(**options).feed(header, RECEIVED) == []


@pytest.mark.parametrize("line", ["", "  "])
def test_blank_lines_are_skipped(line: str) -> None:
    assert parser().feed(line, RECEIVED) == []


@pytest.mark.parametrize(
    ("options", "line", "reason"),
    [
        ({}, "this is not a 3CX record at all", "1 items, but 20 fields"),
        ({}, "Call 1,abc,00:00:10,2024/03/05 09:00:00,,2024/03/05 09:00:10,Failed,Ext.100,555", "9 items, but 20"),
        (
            {"fields": ["historyid", "chain", "time-start"]},
            "Call 1,Chain: a;b,c;,2024/03/05 09:00:00",
            "4 items, but 3",
        ),
        (
            {},
            COMMON_ORDER_SAMPLES[0].values[0].replace("2024/03/05 09:15:02", "05.03.2024 09:15:02"),
            "time-start '05.03.2024 09:15:02'",
        ),
        ({}, COMMON_ORDER_SAMPLES[0].values[0].replace("2024/03/05 09:15:02", "2024/02/30 09:15:02"), "time-start"),
        ({}, COMMON_ORDER_SAMPLES[0].values[0].replace("00:02:15", "two minutes"), "duration"),
        ({"fields": ["historyid", "time-start"]}, "Call 1,", "time-start is empty"),
    ],
)
def test_garbage_is_a_parse_error(options, line: str, reason: str) -> None:
    with pytest.raises(SmdrParseError) as raised:
        parser(**options).feed(line, RECEIVED)
    assert reason in raised.value.reason


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"fields": ALL_FIELDS},
        {"fields": ["historyid", "time_start", "Time-End"]},
        {"direction_fields": False},
        {"external_types": ["Line", "ExternalLine"]},
        {"idle_timeout": 300.0, "keepalive": "\r\n"},  # link settings the config passes along
    ],
)
def test_valid_options(options) -> None:
    ThreeCxParser.validate_options(options)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"fields": "historyid,callid"}, "fields"),
        ({"fields": []}, "fields"),
        ({"fields": ["historyid", "caller"]}, "fields"),
        ({"fields": ["historyid", 7]}, "fields"),
        ({"fields": ["time-start", "time_start"]}, "fields"),
        ({"direction_fields": "yes"}, "direction_fields"),
        ({"external_types": "Line"}, "external_types"),
    ],
)
def test_invalid_options_name_the_key(options, key: str) -> None:
    with pytest.raises(ValueError) as raised:
        ThreeCxParser.validate_options(options)
    assert str(raised.value).startswith(f"{key}:")


def test_registry_exposes_the_parser() -> None:
    assert parser_class("3cx") is ThreeCxParser
    assert ThreeCxParser.format == "3cx"
