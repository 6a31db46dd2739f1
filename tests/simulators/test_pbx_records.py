"""PBX record writer: what each format prints for a call reads back, through the gateway's own parsers, as the
record(s) the mapping gives (docs/smdr.md, format reference); page headers are skipped, garbage is refused."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest

from drivers.smdr import create_parser
from drivers.smdr.base import RecordParser, SmdrParseError
from drivers.smdr.custom import CustomParser
from gateway.config import LinkConfig
from gateway.events import CallRecord
from gateway.model import Direction
from simulators.pbx_records import (
    CUSTOM_OPTIONS,
    FORMATS,
    PANASONIC_HEADER,
    PROFILES,
    FormatProfile,
    LoginStep,
    garbage_line,
    record_lines,
)
from simulators.traffic import DIRECTION_IN, DIRECTION_INTERNAL, DIRECTION_OUT, CompletedCall, PlannedCall

UTC = ZoneInfo("UTC")
BUDAPEST = ZoneInfo("Europe/Budapest")
# Markup, a comma, a pipe-free quote: printed raw, never breaking a delimited line.
MARKUP_NAME = "<script>alert('x')</script>, Acme \"Ltd\""
# Formats whose times of day have no seconds: the parsed start is the true one rounded down (≤ 59 s early).
MINUTE_FORMATS = frozenset({"panasonic", "nec-sv", "mitel-mivb"})
RECEIVE_DELAY = timedelta(seconds=5)
FAR_FUTURE = timedelta(days=1)
DIRECTIONS = {DIRECTION_IN: Direction.IN, DIRECTION_OUT: Direction.OUT, DIRECTION_INTERNAL: Direction.INTERNAL}
ANY = object()  # the format does not carry this field: not compared


def completed(
    local_start: datetime,
    tz: tzinfo,
    *,
    call_id: int = 1000014155,
    trunk: str = "5",
    **plan: object,
) -> CompletedCall:
    planned = PlannedCall(at_s=0.0, **plan)  # type: ignore[arg-type]
    start = local_start.replace(tzinfo=tz).astimezone(timezone.utc)
    return CompletedCall(plan=planned, pbx_call_id=call_id, start=start, trunk=trunk)


# name → (call, the PBX's zone)
SCENARIOS: dict[str, tuple[CompletedCall, tzinfo]] = {
    "inbound": (
        completed(
            datetime(2025, 3, 4, 9, 28, 41, 600000),
            UTC,
            direction=DIRECTION_IN,
            extension="8856",
            other="0612345678",
            ring_s=9,
            talk_s=95.4,
            account="4321",
        ),
        UTC,
    ),
    "outbound": (
        completed(
            datetime(2025, 3, 4, 15, 2, 10),
            UTC,
            call_id=1000014160,
            direction=DIRECTION_OUT,
            extension="8857",
            other="0012025550123",
            ring_s=12,
            talk_s=312,
            account="77",
        ),
        UTC,
    ),
    "internal": (
        completed(
            datetime(2025, 3, 4, 11, 15, 0),
            UTC,
            trunk="",
            direction=DIRECTION_INTERNAL,
            extension="8858",
            other="8859",
            ring_s=4,
            talk_s=61,
        ),
        UTC,
    ),
    "unanswered": (  # 00:30: a 12-hour clock prints 12:30 (AM)
        completed(
            datetime(2025, 3, 5, 0, 30, 5), UTC, direction=DIRECTION_IN, extension="8856", other="0612345678", ring_s=23
        ),
        UTC,
    ),
    "transferred": (
        completed(
            datetime(2025, 3, 4, 14, 5, 0),
            UTC,
            direction=DIRECTION_IN,
            extension="8856",
            other="0612345678",
            ring_s=7,
            talk_s=13,
            transfer_to="8857",
            transfer_talk_s=21,
            account="4321",
        ),
        UTC,
    ),
    "midnight": (  # New Year's Eve on the PBX's clock: the call ends in another day, month and year
        completed(
            datetime(2024, 12, 31, 23, 59, 20),
            BUDAPEST,
            direction=DIRECTION_OUT,
            extension="8857",
            other="0036123456789",
            ring_s=15,
            talk_s=95,
        ),
        BUDAPEST,
    ),
    "budapest": (  # summer time (UTC+2), a PM hour of 12, over an hour long
        completed(
            datetime(2024, 7, 15, 12, 10, 5),
            BUDAPEST,
            trunk="12",
            direction=DIRECTION_IN,
            extension="8856",
            other="0612345678",
            ring_s=6,
            talk_s=3725,
            account="99",
        ),
        BUDAPEST,
    ),
    "name": (
        completed(
            datetime(2025, 3, 4, 12, 15, 30),
            UTC,
            direction=DIRECTION_IN,
            extension="8856",
            other="0612345678",
            ring_s=5,
            talk_s=42,
            caller_name=MARKUP_NAME,
        ),
        UTC,
    ),
}


# ---- what each format's record(s) must read back as


@dataclass
class Want:
    start: datetime  # the true start of the record's segment (whole second, UTC)
    extension: str | None
    other_number: str | None  # digits
    direction: Direction
    duration_s: float | None
    ring_s: object = ANY
    platform_call_id: object = ANY
    answered: object = ANY
    account: object = ANY
    more_follows: object = ANY


def whole(seconds: float) -> int:
    """Printed durations are whole seconds, rounded up (IP Office's rule; the writer uses it everywhere)."""
    return math.ceil(round(seconds, 6))


@dataclass
class Facts:
    """A scenario call in the units the records speak."""

    call: CompletedCall
    start: datetime
    ring: int
    talk: int
    transfer_talk: int

    @property
    def plan(self) -> PlannedCall:
        return self.call.plan

    @property
    def direction(self) -> Direction:
        return DIRECTIONS[self.plan.direction]

    @property
    def answered(self) -> bool:
        return self.talk > 0

    @property
    def transferred(self) -> bool:
        return self.plan.transfer_to is not None

    @property
    def transfer_at(self) -> datetime:
        return self.start + timedelta(seconds=self.ring + self.talk)

    @property
    def call_id(self) -> str:
        return str(self.call.pbx_call_id)


def facts(call: CompletedCall) -> Facts:
    plan = call.plan
    return Facts(
        call,
        call.start.replace(microsecond=0),
        whole(plan.ring_s),
        whole(plan.talk_s),
        whole(plan.transfer_talk_s) if plan.transfer_to else 0,
    )


def want_avaya_ipo(f: Facts) -> list[Want]:
    """One record per segment, all with the call's start, its Call ID; Continuation 1 until the last."""
    plan = f.plan
    wants = [
        Want(
            f.start,
            plan.extension,
            plan.other,
            f.direction,
            f.talk,
            f.ring,
            f.call_id,
            f.answered,
            plan.account,
            more_follows=f.transferred,
        )
    ]
    if f.transferred:
        wants.append(
            Want(
                f.start,
                plan.transfer_to,
                plan.other,
                f.direction,
                f.transfer_talk,
                0,
                f.call_id,
                True,
                plan.account,
                more_follows=False,
            )
        )
    return wants


def want_panasonic(f: Facts) -> list[Want]:
    """End time to the minute, start = end − duration − ring; no call id, answered unknown (None)."""
    plan = f.plan
    wants = [Want(f.start, plan.extension, plan.other, f.direction, f.talk, f.ring, None, None, plan.account)]
    if f.transferred:  # the target's record has no Ring: it starts at the transfer
        wants.append(
            Want(
                f.transfer_at,
                plan.transfer_to,
                plan.other,
                f.direction,
                f.transfer_talk,
                None,
                None,
                None,
                plan.account,
            )
        )
    return wants


def want_nec_sv(f: Facts) -> list[Want]:
    """Time = placed (out, intercom) or answered (in); no ring, no call id; NO ANSWER: no duration, no station."""
    plan = f.plan
    internal = f.direction is Direction.INTERNAL
    account = None if internal else plan.account  # ICM: Account empty
    if not f.answered and f.direction is not Direction.OUT:
        first = Want(
            f.start,
            None if f.direction is Direction.IN else plan.extension,
            plan.other,
            f.direction,
            None,
            None,
            None,
            False,
            None,
        )
    else:
        at = f.start + timedelta(seconds=f.ring) if f.direction is Direction.IN else f.start
        answered = None if f.direction is Direction.OUT else True  # POT: no answer supervision
        first = Want(at, plan.extension, plan.other, f.direction, f.talk, None, None, answered, account)
    wants = [first]
    if f.transferred:  # PTRS (direction unknown) for a trunk call, ICM for an intercom one
        wants.append(
            Want(
                f.transfer_at,
                plan.transfer_to,
                plan.other,
                Direction.INTERNAL if internal else Direction.UNKNOWN,
                f.transfer_talk,
                None,
                None,
                True if internal else None,
                account,
            )
        )
    return wants


def want_mitel_mivb(f: Facts) -> list[Want]:
    """One record per call (transfer flag + third party), start to the minute, time to answer on incoming calls."""
    plan = f.plan
    ring = f.ring if f.direction is Direction.IN and f.answered else None
    other = plan.other[:10] if f.direction is Direction.IN else plan.other  # ANI is 10 columns
    return [
        Want(
            f.start, plan.extension, other, f.direction, f.talk + f.transfer_talk, ring, None, f.answered, plan.account
        )
    ]


def want_3cx(f: Facts) -> list[Want]:
    """One record per call; extension = final-dn when the final party is an extension (docs/smdr.md, 3cx mapping rules): the
    transfer target inbound, and for an intercom call the called extension (the caller is then other_number)."""
    plan = f.plan
    if f.direction is Direction.IN:
        extension, other = plan.transfer_to or plan.extension, plan.other
    elif f.direction is Direction.OUT:
        extension, other = plan.extension, plan.other
    else:
        extension, other = plan.transfer_to or plan.other, plan.extension
    return [
        Want(
            f.start,
            extension,
            other,
            f.direction,
            f.talk + f.transfer_talk,
            f.ring,
            f.call_id,
            f.answered,
            plan.account,
        )
    ]


def want_custom(f: Facts) -> list[Want]:
    """Like IP Office, but each segment with its own start (the target's at the transfer, no ring)."""
    plan = f.plan
    wants = [
        Want(
            f.start,
            plan.extension,
            plan.other,
            f.direction,
            f.talk,
            f.ring,
            f.call_id,
            f.answered,
            plan.account,
            more_follows=f.transferred,
        )
    ]
    if f.transferred:
        wants.append(
            Want(
                f.transfer_at,
                plan.transfer_to,
                plan.other,
                f.direction,
                f.transfer_talk,
                0,
                f.call_id,
                True,
                plan.account,
                more_follows=False,
            )
        )
    return wants


WANTS = {
    "avaya-ipo": want_avaya_ipo,
    "panasonic": want_panasonic,
    "nec-sv": want_nec_sv,
    "mitel-mivb": want_mitel_mivb,
    "3cx": want_3cx,
    "custom": want_custom,
}


# ---- helpers


def tz_name(tz: tzinfo) -> str:
    return str(tz)


def make_parser(fmt: str, tz: tzinfo) -> RecordParser:
    profile = PROFILES[fmt]
    link = LinkConfig(
        name=f"sim-{fmt}", format=fmt, url="tcp://127.0.0.1:1", timezone=tz_name(tz), options=profile.gateway_options
    )
    return create_parser(link)


def call_end(call: CompletedCall) -> datetime:
    return call.start + timedelta(seconds=call.plan.length_s)


def read_back(fmt: str, call: CompletedCall, tz: tzinfo, parser: RecordParser | None = None) -> list[CallRecord]:
    """Page 1's header, then the call's lines, through the gateway's parser (held records flushed)."""
    parser = parser or make_parser(fmt, tz)
    received = call_end(call) + RECEIVE_DELAY
    for line in PROFILES[fmt].page_header(call_end(call), 1, tz):
        assert parser.feed(line, received) == [], line
    records = [record for line in record_lines(fmt, call, tz) for record in parser.feed(line, received)]
    return records + parser.flush(received + FAR_FUTURE)


def digits(number: str | None) -> str | None:
    return None if number is None else re.sub(r"\D", "", number)


def check(record: CallRecord, want: Want, *, to_minute: bool) -> None:
    assert record.start is not None
    if to_minute:
        assert want.start - timedelta(seconds=59) <= record.start <= want.start, (record.start, want.start)
    else:
        assert record.start == want.start
    assert record.extension == want.extension
    assert digits(record.other_number) == digits(want.other_number)
    assert record.direction is want.direction
    assert record.duration_s == want.duration_s
    for name in ("ring_s", "platform_call_id", "answered", "account", "more_follows"):
        expected = getattr(want, name)
        if expected is not ANY:
            assert getattr(record, name) == expected, name


# ---- round trips


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_records_read_back_as_the_call(fmt: str, scenario: str) -> None:
    call, tz = SCENARIOS[scenario]
    records = read_back(fmt, call, tz)
    wants = WANTS[fmt](facts(call))
    assert len(records) == len(wants), [record.raw for record in records]
    for record, want in zip(records, wants):
        check(record, want, to_minute=fmt in MINUTE_FORMATS)
        external = call.plan.direction != DIRECTION_INTERNAL
        assert (record.trunk is not None) is external, record.trunk
        assert record.format == fmt


@pytest.mark.parametrize("fields", [17, 30, 35])
def test_ip_office_record_lengths(fields: int) -> None:
    call, tz = SCENARIOS["transferred"]
    lines = record_lines("avaya-ipo", call, tz, ipo_fields=fields)
    assert [len(line.split(",")) for line in lines] == [fields, fields]
    parser = make_parser("avaya-ipo", tz)
    records = [record for line in lines for record in parser.feed(line, call_end(call))]
    for record, want in zip(records, want_avaya_ipo(facts(call)), strict=True):
        check(record, want, to_minute=False)


def test_ip_office_rejects_an_unknown_record_length() -> None:
    call, tz = SCENARIOS["inbound"]
    with pytest.raises(ValueError, match="ipo_fields"):
        record_lines("avaya-ipo", call, tz, ipo_fields=31)


def test_unknown_format_is_refused() -> None:
    call, tz = SCENARIOS["inbound"]
    with pytest.raises(ValueError, match="unknown format"):
        record_lines("siemens", call, tz)


def ambiguous(moment: datetime, tz: tzinfo) -> bool:
    """In the hour a DST end repeats: a wall clock without an offset cannot say which one (no format can)."""
    local = moment.astimezone(tz).replace(tzinfo=None)
    return local.replace(fold=0, tzinfo=tz).utcoffset() != local.replace(fold=1, tzinfo=tz).utcoffset()


def random_calls(count: int, seed: int) -> list[tuple[CompletedCall, tzinfo]]:
    """Calls of every shape at random times of a year, in zones east and west, with fractional seconds."""
    rng = random.Random(seed)
    zones = [UTC, BUDAPEST, ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")]
    calls = []
    while len(calls) < count:
        tz = rng.choice(zones)
        direction = rng.choice([DIRECTION_IN, DIRECTION_OUT, DIRECTION_INTERNAL])
        answered = rng.random() < 0.8
        transfer = answered and rng.random() < 0.3
        start = datetime(2024, 1, 1) + timedelta(seconds=rng.randrange(366 * 86400))
        call = completed(
            start,
            tz,
            call_id=rng.randint(1, 10**9),
            trunk="" if direction == DIRECTION_INTERNAL else str(rng.randint(1, 150)),
            direction=direction,
            extension=str(rng.randint(2000, 2999)),
            other=str(rng.randint(4000, 4999)) if direction == DIRECTION_INTERNAL else f"06{rng.randrange(10**8):08d}",
            ring_s=rng.choice([0, 1, 5, 30, 61]) + rng.random(),
            talk_s=rng.choice([1, 59, 300, 4000]) + rng.random() if answered else 0.0,
            transfer_to=str(rng.randint(3000, 3999)) if transfer else None,
            transfer_talk_s=rng.randint(1, 500) if transfer else 0.0,
            account=rng.choice([None, "4321", "99"]),
        )
        if not (ambiguous(call.start, tz) or ambiguous(call_end(call), tz)):
            calls.append((call, tz))
    return calls


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_calls_read_back(fmt: str) -> None:
    for call, tz in random_calls(300, seed=20250304):
        records = read_back(fmt, call, tz)
        wants = WANTS[fmt](facts(call))
        assert len(records) == len(wants), call
        for record, want in zip(records, wants):
            check(record, want, to_minute=fmt in MINUTE_FORMATS)


# ---- caller names: raw markup, never breaking a line


def test_caller_name_is_printed_raw_where_the_format_has_a_name() -> None:
    call, tz = SCENARIOS["name"]
    without_comma = MARKUP_NAME.replace(",", "")
    (ipo,) = read_back("avaya-ipo", call, tz)
    assert ipo.extra["party2_name"] == without_comma  # the trunk party's name; `,` would split the CSV
    (nec,) = read_back("nec-sv", call, tz)
    assert nec.extra["caller_name"] == MARKUP_NAME  # the NEXT line: not delimited, kept whole
    (custom,) = read_back("custom", call, tz)
    assert custom.extra["caller_name"] == MARKUP_NAME  # no `|` in it; quotes printed as they are


def test_panasonic_prints_the_name_when_the_caller_has_no_number() -> None:
    call = completed(
        datetime(2025, 3, 4, 12, 0),
        UTC,
        direction=DIRECTION_IN,
        extension="8856",
        other="",
        ring_s=3,
        talk_s=30,
        caller_name="MARY WARD",
    )
    (record,) = read_back("panasonic", call, UTC)
    assert record.other_number is None and record.extra["caller_name"] == "MARY WARD"
    assert record.direction is Direction.IN


def test_line_breaks_in_text_never_reach_the_wire() -> None:
    call = completed(
        datetime(2025, 3, 4, 12, 0),
        UTC,
        direction=DIRECTION_IN,
        extension="8856",
        other="0612345678",
        ring_s=3,
        talk_s=30,
        caller_name="Evil\r\nPAGE 001\x00",
        account="12\n3",
    )
    for fmt in FORMATS:
        for line in record_lines(fmt, call, UTC):
            assert not set(line) & set("\r\n\x00\x0c"), (fmt, line)


# ---- layouts: byte-exact where docs/smdr.md gives columns


def test_panasonic_lines_fill_the_80_columns_of_the_header() -> None:
    for scenario, (call, tz) in SCENARIOS.items():
        for line in record_lines("panasonic", call, tz):
            assert len(line) == len(PANASONIC_HEADER) == 80, scenario
            assert all(line[index] == " " for index in (8, 16, 22, 25, 51, 56, 65)), (scenario, line)
        for record in read_back("panasonic", call, tz):
            assert record.extra["mode"] == "columns"  # not the collapsed-spacing fallback


def test_panasonic_prints_a_12_hour_end_time_and_marks_transfers() -> None:
    call, tz = SCENARIOS["transferred"]  # 14:05:00 + 7 + 13 → 14:05:20, then + 21 → 14:05:41
    first, second = record_lines("panasonic", call, tz)
    assert first.startswith("03/04/25 02:05PM 8856  05 <I>0612345678")
    assert first[52:56] == "0'07" and first[57:65] == "00:00'13" and first[77:80] == "TR "
    assert second[52:56] == "    " and second[57:65] == "00:00'21"
    (unanswered,) = record_lines("panasonic", *SCENARIOS["unanswered"])
    assert unanswered[9:16] == "12:30AM" and unanswered[77:79] == "NA"


def test_nec_columns_and_page_header() -> None:
    call, tz = SCENARIOS["midnight"]
    (line,) = record_lines("nec-sv", call, tz)
    assert line.startswith("POT  23:59 12/31 005  00:01:35 8857       0036123456789")
    assert len(line) <= 80
    title, classes = PROFILES["nec-sv"].page_header(call_end(call), 7, tz)
    assert title[60:70] == "01/01/2025" and title[71:75] == "PAGE" and title[76:79] == "007"
    assert classes.startswith("CLASS")
    (record,) = read_back("nec-sv", call, tz)
    assert record.extra["mode"] == "columns"
    assert record.start.astimezone(BUDAPEST).year == 2024  # the page says 2025; 12/31 is the year before


def test_nec_unanswered_and_transfer_records() -> None:
    (unanswered,) = record_lines("nec-sv", *SCENARIOS["unanswered"])
    assert unanswered[0:4] == "PIN " and unanswered[22:41].strip() == "" and unanswered[63:79].strip() == "NO ANSWER"
    first, second = record_lines("nec-sv", *SCENARIOS["transferred"])
    assert first.startswith("PIN  14:05") and second.startswith("PTRS 14:05")
    assert second[31:41].strip() == "8857"
    lines = record_lines("nec-sv", *SCENARIOS["name"])
    assert lines[1] == f"NEXT {MARKUP_NAME}"


def test_mitel_standard_record_with_ani() -> None:
    call, tz = SCENARIOS["budapest"]  # 12:10 PM, 1 h 2 min 5 s, trunk 12
    (line,) = record_lines("mitel-mivb", call, tz)
    assert len(line) == 112
    assert line[0] == "+"  # ≥ 30 minutes
    assert line[1:6] == "07/15" and line[7:13] == "12:10p" and line[14:22] == "01:02:05"
    assert line[23:27] == "T012" and line[29:32] == "006" and line[61:65] == "8856"
    assert line[91:101] == "0612345678"
    (unanswered,) = record_lines("mitel-mivb", *SCENARIOS["unanswered"])
    assert unanswered[7:13] == "12:30 " and unanswered[29:32] == "***"
    (transferred,) = record_lines("mitel-mivb", *SCENARIOS["transferred"])
    assert transferred[65] == "T" and transferred[67:71] == "8857"
    for scenario, (call, tz) in SCENARIOS.items():
        for record in read_back("mitel-mivb", call, tz):
            assert "partial" not in record.extra, scenario


def test_3cx_common_twenty_fields() -> None:
    call, tz = SCENARIOS["transferred"]
    (line,) = record_lines("3cx", call, tz)
    fields = line.split(",")
    assert len(fields) == 20
    assert fields[0] == "Call 1000014155" and fields[19] == "Chain: 0612345678;Ext.8856;Ext.8857;"
    assert fields[3:6] == ["2025/03/04 14:05:00", "2025/03/04 14:05:07", "2025/03/04 14:05:41"]
    (unanswered,) = record_lines("3cx", *SCENARIOS["unanswered"])
    assert unanswered.split(",")[4] == ""  # time-answered empty: not answered


def test_custom_layout_matches_its_options() -> None:
    CustomParser.validate_options(CUSTOM_OPTIONS)
    assert PROFILES["custom"].gateway_options == CUSTOM_OPTIONS
    for call, tz in SCENARIOS.values():
        for line in record_lines("custom", call, tz):
            assert len(line.split(CUSTOM_OPTIONS["delimiter"])) == CUSTOM_OPTIONS["min_fields"]


# ---- profiles, page headers, garbage


def test_profiles() -> None:
    assert tuple(PROFILES) == FORMATS == ("avaya-ipo", "panasonic", "nec-sv", "mitel-mivb", "3cx", "custom")
    assert all(isinstance(profile, FormatProfile) and profile.name == fmt for fmt, profile in PROFILES.items())
    assert PROFILES["avaya-ipo"].line_ending == b"\r\n"
    assert PROFILES["panasonic"].line_ending == b"\r"  # New Line Code CR
    assert PROFILES["panasonic"].login == (LoginStep("login: ", "SMDR"), LoginStep("Enter password: ", "PCCSMDR"))
    assert [fmt for fmt, profile in PROFILES.items() if profile.login] == ["panasonic"]
    paged = {fmt for fmt, profile in PROFILES.items() if profile.lines_per_page}
    assert paged == {"panasonic", "nec-sv", "custom"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_page_headers_are_skipped_by_the_parser(fmt: str) -> None:
    profile = PROFILES[fmt]
    at = datetime(2025, 3, 4, 12, 0, tzinfo=timezone.utc)
    headers = [profile.page_header(at, page, BUDAPEST) for page in (1, 2, 1000)]
    if not profile.lines_per_page:
        assert headers == [[], [], []]
        return
    parser = make_parser(fmt, BUDAPEST)
    for lines in headers:
        assert lines and all(lines), "non-empty lines only"
        for line in lines:
            assert parser.feed(line, at) == [], line
    assert parser.flush(at + FAR_FUTURE) == []
    # and a record after a second page's header still reads back
    call, tz = SCENARIOS["inbound"]
    parser = make_parser(fmt, tz)
    for line in profile.page_header(call_end(call), 2, tz):
        assert parser.feed(line, call_end(call)) == []
    assert len(read_back(fmt, call, tz, parser)) == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_garbage_is_refused_by_every_parser(fmt: str) -> None:
    rng = random.Random(7)
    call, tz = SCENARIOS["inbound"]
    received = call_end(call) + RECEIVE_DELAY
    parser = make_parser(fmt, tz)
    for _ in range(50):
        line = garbage_line(rng)
        with pytest.raises(SmdrParseError):
            parser.feed(line, received)
    # also right after a record (NEC holds it for a NEXT line; a short line there would be a name remainder)
    for line in record_lines(fmt, call, tz):
        parser.feed(line, received)
    with pytest.raises(SmdrParseError):
        parser.feed(garbage_line(rng), received)


def test_garbage_is_reproducible() -> None:
    assert [garbage_line(random.Random(3)) for _ in range(2)] == [garbage_line(random.Random(3))] * 2


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_record_names_the_journal_line_it_began_on(fmt: str, scenario: str) -> None:
    """What a crash replay identifies a record by (and derives its callID from): the line it began on."""
    call, tz = SCENARIOS[scenario]
    parser = make_parser(fmt, tz)
    received = call_end(call) + RECEIVE_DELAY
    lines = [*PROFILES[fmt].page_header(call_end(call), 1, tz), *record_lines(fmt, call, tz)]
    records: list[CallRecord] = []
    begun_on: dict[int, str] = {}
    for seq, line in enumerate(lines, start=100):
        parser.begin_line(seq)
        records.extend(parser.feed(line, received))
        begun_on[seq] = line
    records += parser.flush(received + FAR_FUTURE)
    assert records
    for record in records:
        assert record.origin_seq in begun_on, record.raw
        assert begun_on[record.origin_seq] in record.raw  # the first line of the record is that line
    assert len({(record.origin_seq, record.origin_index) for record in records}) == len(records)
