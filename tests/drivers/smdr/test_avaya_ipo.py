"""Avaya IP Office SMDR parser: the vendor's sample lines and the documented edge cases (docs/smdr.md)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from drivers.smdr import parser_class
from drivers.smdr.avaya_ipo import AvayaIpoParser
from drivers.smdr.base import SmdrParseError
from gateway.model import Direction

UTC = timezone.utc
BUDAPEST = ZoneInfo("Europe/Budapest")
RECEIVED = datetime(2008, 6, 28, 12, 0, 0, tzinfo=UTC)


def parser(tz=UTC) -> AvayaIpoParser:
    return AvayaIpoParser("pbx-main", tz=tz)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def only(line: str, tz=UTC):
    records = parser(tz).feed(line, RECEIVED)
    assert len(records) == 1
    return records[0]


# Every vendor sample line (IP Office SMDR examples), byte for byte, with what it must map to (link zone UTC).
# (line, start, end, extension, other_number, direction, platform_call_id, answered, duration_s)
SPEC_SAMPLES = [
    pytest.param(
        "2008/06/28 09:28:41,00:00:00,9,8004206,I,4324,4324,,0,1000014155,0,E4324,Joe Bloggs,T9161,LINE 5.1,0,0",
        utc(2008, 6, 28, 9, 28, 41),
        utc(2008, 6, 28, 9, 28, 50),
        "4324",
        "8004206",
        Direction.IN,
        "1000014155",
        False,
        0,
        id="lost-incoming",
    ),
    pytest.param(
        "2008/06/28 09:30:57,00:00:13,7,01707392200,I,299999,299999,,0,1000014160,1,E4750,John Smith,T9002,LINE 1.2,11,0",
        utc(2008, 6, 28, 9, 30, 57),
        utc(2008, 6, 28, 9, 31, 28),
        "4750",
        "01707392200",
        Direction.IN,
        "1000014160",
        True,
        13,
        id="transfer-to-voicemail-part1",
    ),
    pytest.param(
        "2008/06/28 09:30:57,00:00:21,0,01707392200,I,299999,299999,,0,1000014160,0,V9502,VM Channel 2,T9002,LINE 1.2,0,0",
        utc(2008, 6, 28, 9, 30, 57),
        utc(2008, 6, 28, 9, 31, 18),
        None,
        "01707392200",
        Direction.IN,
        "1000014160",
        True,
        21,
        id="transfer-to-voicemail-part2",
    ),
]


@pytest.mark.parametrize(
    ("line", "start", "end", "extension", "other_number", "direction", "platform_call_id", "answered", "duration_s"),
    SPEC_SAMPLES,
)
def test_spec_samples(line, start, end, extension, other_number, direction, platform_call_id, answered, duration_s):
    record = only(line)
    assert record.format == "avaya-ipo"
    assert record.source == "pbx-main"
    assert record.raw == line
    assert record.received_at == RECEIVED
    assert (record.start, record.end) == (start, end)
    assert record.extension == extension
    assert record.other_number == other_number
    assert record.direction is direction
    assert record.platform_call_id == platform_call_id
    assert record.answered is answered
    assert record.duration_s == duration_s


def test_lost_call_fields_in_detail() -> None:
    record = only(SPEC_SAMPLES[0].values[0])
    assert record.ring_s == 9
    assert record.trunk == "T9161"
    assert record.account is None
    assert record.more_follows is False
    assert record.extra["trunk_name"] == "LINE 5.1"
    assert record.extra["party1_name"] == "Joe Bloggs"
    assert record.extra["party2_device"] == "T9161"
    assert record.extra["called_number"] == "4324"
    assert record.extra["hold_time_s"] == 0
    assert record.extra["park_time_s"] == 0


def test_link_zone_converts_to_utc() -> None:
    record = only(SPEC_SAMPLES[0].values[0], tz=BUDAPEST)  # summer time, UTC+2
    assert record.start == utc(2008, 6, 28, 7, 28, 41)
    assert record.end == utc(2008, 6, 28, 7, 28, 50)
    assert record.start.tzinfo is UTC


def test_end_adds_ring_connected_hold_and_park() -> None:
    record = only(
        "2010/01/05 10:00:00,00:01:00,5,201,O,0123456789,0123456789,ACC1,0,1000100,0,E201,Ann,T9003,Line 1.3,20,15"
    )
    assert record.end == record.start + timedelta(seconds=5 + 60 + 20 + 15)
    assert record.ring_s == 5
    assert record.duration_s == 60
    assert record.extra["hold_time_s"] == 20
    assert record.extra["park_time_s"] == 15
    assert record.account == "ACC1"


def test_end_across_dst_change_is_elapsed_time() -> None:
    # 2024-03-31 02:00 CET Budapest jumps to 03:00 CEST: a call started 01:59:50 lasting 30 s ends 03:00:20 local.
    record = only("2024/03/31 01:59:50,00:00:30,0,201,O,5551234,5551234,,0,77,0,E201,Ann,T9001,Line 1.1,0,0", BUDAPEST)
    assert record.start == utc(2024, 3, 31, 0, 59, 50)
    assert record.end == utc(2024, 3, 31, 1, 0, 20)


def test_outbound_external() -> None:
    record = only(
        "2008/06/26 11:02:10,00:02:03,12,4688,O,901707555000,901707555000,,0,1000013900,0,E4688,Joe Bloggs,T9005,Line 2.1,0,0"
    )
    assert record.direction is Direction.OUT
    assert record.extension == "4688"
    assert record.other_number == "901707555000"
    assert record.trunk == "T9005"


def test_outbound_uses_dialled_number_when_called_number_empty() -> None:
    record = only(
        "2008/06/26 11:02:10,00:00:10,0,4688,O,,901707555000,,0,1000013901,0,E4688,Joe Bloggs,T9005,Line 2.1,0,0"
    )
    assert record.other_number == "901707555000"


def test_outbound_without_extension_party_takes_caller() -> None:
    record = only(
        "2008/06/26 11:02:10,00:00:10,0,4688,O,901707555000,901707555000,,0,1000013902,0,V9501,VM Channel 1,T9005,Line 2.1,0,0"
    )
    assert record.extension == "4688"
    assert record.direction is Direction.OUT


def test_internal_call_other_party_is_the_other_extension() -> None:
    record = only(
        "2008/06/26 10:27:44,00:00:44,4,4688,O,4207,4207,,1,1000013898,0,E4688,Joe Bloggs,E4207,John Smith,0,0"
    )
    assert record.direction is Direction.INTERNAL
    assert record.extension == "4688"
    assert record.other_number == "4207"
    assert record.trunk is None
    assert record.answered is True


def test_is_internal_letter_falls_back_to_devices_and_tolerates_trailing_space() -> None:
    # Vendor example: `I` in Is Internal and a space after the last field.
    line = "2008/10/20 06:43:58,00:00:10,21,15,O,11,11,,I,28,0,E15,Extn15,V9051,VM Channel 1,0,0 "
    record = only(line)
    assert record.raw == line
    assert record.direction is Direction.INTERNAL  # no T… party
    assert record.extension == "15"  # the V… voicemail party is not an extension
    assert record.other_number == "11"  # no second extension: the number called
    assert record.extra["park_time_s"] == 0
    assert record.extra["is_internal"] == "I"


def test_is_internal_letter_with_a_trunk_uses_direction_field() -> None:
    record = only("2008/10/20 06:43:58,00:00:10,2,01707392200,I,11,11,,I,29,0,E11,Extn11,T9001,Line 1.1,0,0")
    assert record.direction is Direction.IN


@pytest.mark.parametrize("count", [17, 30, 35])
def test_field_counts_by_release(count: int) -> None:
    base = [
        "2008/08/01 15:14:19",
        "00:00:05",
        "7",
        "01707299900",
        "I",
        "23",
        "390664",
        "",
        "0",
        "1000013",
        "0",
        "E23",
        "Extn23",
        "T9001",
        "Line 1.2",
        "0",
        "0",
    ]
    r11 = ["192.0.2.10", "10523", "192.0.2.11", "10524", "2008/08/01 13:14:31"]
    fields = (base + [""] * 13 + r11)[:count]
    record = only(",".join(fields))
    assert record.extension == "23"
    assert record.other_number == "01707299900"
    assert record.start == utc(2008, 8, 1, 15, 14, 19)
    assert record.end == utc(2008, 8, 1, 15, 14, 31)
    if count == 35:
        assert record.extra["caller_server_ip"] == "192.0.2.10"
        assert record.extra["called_unique_call_id"] == "10524"
        assert record.extra["record_time"] == "2008/08/01 13:14:31"
    else:
        assert "caller_server_ip" not in record.extra


def test_vendor_line_with_trailing_empties() -> None:
    # Vendor "External Call" example: splits into 31 items.
    line = "2008/08/01 15:14:19,00:00:05,7,01707299900,I,23,390664,,0,1000013,0,E23,Extn23,T9001,Line 1.2,0,0,,,,,,,,,,,,,,"
    assert len(line.split(",")) == 31
    record = only(line)
    assert (record.direction, record.extension, record.ring_s, record.duration_s) == (Direction.IN, "23", 7, 5)
    assert record.extra["dialled_number"] == "390664"


def test_extra_fields_beyond_35_are_ignored() -> None:
    line = (
        "2008/08/01 15:14:19,00:00:05,7,01707299900,I,23,390664,,0,1000013,0,E23,Extn23,T9001,Line 1.2,0,0" + ",x" * 25
    )
    assert only(line).extension == "23"


def test_sip_caller_drops_host() -> None:
    record = only(
        "2019/03/05 14:02:11,00:00:30,2,12345@192.0.2.123,I,201,201,,0,1000400,0,E201,Alice,T9010,SIP Line,0,0"
    )
    assert record.other_number == "12345"
    assert record.extra["caller"] == "12345@192.0.2.123"


def test_blank_caller() -> None:
    record = only("2019/03/05 14:05:00,00:00:30,4,,I,201,201,,0,1000401,0,E201,Alice,T9001,Line 1.1,0,0")
    assert record.direction is Direction.IN
    assert record.other_number is None
    assert record.extension == "201"


def test_names_with_markup_are_kept_and_never_become_numbers() -> None:
    record = only("2019/03/05 14:06:00,00:00:30,4,,I,201,201,,0,1000402,0,E201,<b>Joe</b>,T9001,<i>Line</i>,0,0")
    assert record.extra["party1_name"] == "<b>Joe</b>"
    assert record.extra["trunk_name"] == "<i>Line</i>"
    assert record.other_number is None


def test_wakeup_call_without_trunk() -> None:
    record = only("2013/05/14 07:00:00,00:00:12,5,,O,204,204,,1,1000200,0,V8000,Wakeup Call,E204,Extn204,0,0")
    assert record.direction is Direction.INTERNAL
    assert record.extension == "204"
    assert record.other_number is None
    assert record.trunk is None
    assert record.extra["party1_name"] == "Wakeup Call"


def test_two_part_transfer_shares_call_id() -> None:
    link = parser()
    first = link.feed(
        "2014/01/10 10:00:00,00:00:30,5,01632960111,I,300,300,,0,1000500,1,E300,Reception,T9001,Line 1.1,0,0", RECEIVED
    )
    second = link.feed(
        "2014/01/10 10:00:00,00:02:00,0,01632960111,I,300,300,,0,1000500,0,E301,Sales,T9001,Line 1.1,0,0", RECEIVED
    )
    assert len(first) == len(second) == 1  # each segment is emitted at once
    assert first[0].platform_call_id == second[0].platform_call_id == "1000500"
    assert (first[0].more_follows, second[0].more_follows) == (True, False)
    assert (first[0].extension, second[0].extension) == ("300", "301")
    assert link.flush(RECEIVED + timedelta(days=1)) == []


def test_leading_nuls_are_tolerated() -> None:
    record = only(
        "\x00\x002008/06/28 09:28:41,00:00:00,9,8004206,I,4324,4324,,0,1000014155,0,E4324,Joe Bloggs,T9161,LINE 5.1,0,0"
    )
    assert record.start == utc(2008, 6, 28, 9, 28, 41)


@pytest.mark.parametrize(
    "line",
    [
        "Call Start,Connected Time,Ring Time,Caller,Direction,Called Number,Dialled Number,Account,Is Internal,Call ID,"
        "Continuation,Party1Device,Party1Name,Party2Device,Party2Name,Hold Time,Park Time",
        "CallStart,ConnectedTime,RingTime,Caller,Direction,CalledNumber,DialledNumber,Account,IsInternal,CallID,Continuation",
        "",
        "   ",
    ],
)
def test_skipped_lines(line: str) -> None:
    assert parser().feed(line, RECEIVED) == []


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("hello world, this is not SMDR", "fields"),
        ("Call me maybe", "fields"),
        ("2008/06/28 09:28:41,00:00:00,9,8004206,I", "fields"),
        ("2008/13/45 09:28:41,00:00:00,9,8004206,I,4324,4324,,0,1000014155,0,E4324,Joe,T9161,LINE 5.1,0,0", "date"),
        ("28.06.2008 09:28:41,00:00:00,9,8004206,I,4324,4324,,0,1000014155,0,E4324,Joe,T9161,LINE 5.1,0,0", "date"),
        ("2008/06/28 09:28:41,soon,9,8004206,I,4324,4324,,0,1000014155,0,E4324,Joe,T9161,LINE 5.1,0,0", "connected"),
        ("2008/06/28 09:28:41,00:00:00,nine,8004206,I,4324,4324,,0,1000014155,0,E4324,Joe,T9161,LINE 5.1,0,0", "ring"),
        ("2008/06/28 09:28:41,00:00:00,9,8004206,I,4324,4324,,0,1000014155,0,E4324,Joe,T9161,LINE 5.1,x,0", "hold"),
    ],
)
def test_garbage_is_a_parse_error(line: str, reason: str) -> None:
    with pytest.raises(SmdrParseError) as raised:
        parser().feed(line, RECEIVED)
    assert reason in raised.value.reason


def test_registry_exposes_the_parser() -> None:
    assert parser_class("avaya-ipo") is AvayaIpoParser
    assert AvayaIpoParser.format == "avaya-ipo"


# 2026-10-25 in Budapest: 02:00–03:00 happens twice (CEST, then CET). A record's wall-clock time in that hour
# is the later reading unless that is after the record arrived.
REPEATED_HOUR_LINE = (
    "2026/10/25 02:30:00,00:00:40,3,01707392200,I,8857,8857,,0,1000020001,0,E8857,Desk,T9001,LINE 1.1,0,0"
)


@pytest.mark.parametrize(
    ("received", "start"),
    [
        pytest.param(utc(2026, 10, 25, 1, 31, 0), utc(2026, 10, 25, 1, 30, 0), id="second-pass-call"),
        pytest.param(utc(2026, 10, 25, 0, 31, 0), utc(2026, 10, 25, 0, 30, 0), id="first-pass-call"),
        pytest.param(utc(2026, 10, 25, 1, 20, 0), utc(2026, 10, 25, 1, 30, 0), id="pbx-clock-minutes-ahead"),
        pytest.param(utc(2026, 10, 25, 5, 0, 0), utc(2026, 10, 25, 1, 30, 0), id="late-record"),
    ],
)
def test_the_repeated_autumn_hour_is_read_by_the_receive_time(received, start):
    (record,) = parser(BUDAPEST).feed(REPEATED_HOUR_LINE, received)
    assert record.start == start
    assert record.end == start + timedelta(seconds=43)


def test_a_time_in_the_skipped_spring_hour_reads_with_the_winter_offset():
    # 2026-03-29 02:30 does not exist in Budapest; a PBX whose clock printed it is read as CET (UTC+1).
    line = "2026/03/29 02:30:00,00:00:40,3,01707392200,I,8857,8857,,0,1000020002,0,E8857,Desk,T9001,LINE 1.1,0,0"
    (record,) = parser(BUDAPEST).feed(line, utc(2026, 3, 29, 2, 0, 0))
    assert record.start == utc(2026, 3, 29, 1, 30, 0)


@pytest.mark.parametrize(
    "zone", ["Europe/Budapest", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "UTC"]
)
def test_wall_clock_times_convert_like_zoneinfo_all_year(zone):
    from drivers.smdr.base import to_utc

    tz = ZoneInfo(zone)
    moment = datetime(2025, 1, 1)
    while moment.year == 2025:
        expected = moment.replace(tzinfo=tz).astimezone(UTC)
        assert to_utc(moment, tz) == expected, moment
        # An odd step, so the samples drift over every minute of the hour: each DST gap and fold (Lord Howe's
        # are 30 min) is hit at least twice; 15 min 7 s instead of 7 min 13 s saved 1.5 s of suite time.
        moment += timedelta(minutes=15, seconds=7)
