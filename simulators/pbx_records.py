"""What a PBX prints for a finished call, in each SMDR/CDR format the gateway reads (docs/smdr.md).

Long for a reason: a writer per format, each laying out that format's fields column- or field-exact.

One small writer per format turns a `CompletedCall` into that format's record line(s), laid out column- or
field-exact to docs/smdr.md's format reference; `PROFILES` says how the device frames them (line ending, login,
page headers). The PBX simulator (simulators/pbx.py) sends what this module writes; no I/O here.

Shared conventions (all formats):
- Instants are whole seconds: the seizure second (`call.start` with its fraction dropped, as a clock shows it)
  plus whole-second ring/talk times, each rounded up (IP Office: "times rounded up to the second") — so a call
  that talked at all never prints a zero duration.
- Times are printed on the PBX's wall clock (`tz`); a format that prints end times prints start + ring + talk.
- A transfer is two segments: the first party's (ring + talk), then `transfer_to`'s (transfer talk, no ring),
  the other party staying the same. Formats with one record per call (Mitel, 3CX) print one record.
- The trunk is printed in each format's own coding of `_trunk_index(call.trunk)` (the trunk's last digits).
- Free text (names, accounts) never carries a line break, and never the delimiter of a delimited format.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from simulators.traffic import DIRECTION_IN, DIRECTION_INTERNAL, DIRECTION_OUT, CompletedCall

AVAYA_IPO = "avaya-ipo"
PANASONIC = "panasonic"
NEC_SV = "nec-sv"
MITEL_MIVB = "mitel-mivb"
THREECX = "3cx"
CUSTOM = "custom"
FORMATS: tuple[str, ...] = (AVAYA_IPO, PANASONIC, NEC_SV, MITEL_MIVB, THREECX, CUSTOM)

# Continuous printer forms are 66 lines (11 in at 6 lines per inch); the formats with printer-style pages
# (Panasonic, NEC, and our custom report) fill what their header leaves of one.
PRINTER_PAGE_LINES = 66


@dataclass(frozen=True)
class LoginStep:
    """One step of a PBX port's login: what the PBX prints, then the reply it waits for."""

    prompt: str  # sent as is
    expect: str  # the reply the PBX requires, compared after stripping CR/LF


@dataclass(frozen=True)
class FormatProfile:
    """How a PBX of one format frames its output: terminator, login on its TCP port, page headers."""

    name: str
    line_ending: bytes
    login: tuple[LoginStep, ...] = ()
    # Record lines per page (0: no pages). The lines of one record_lines() call belong on one page: a NEC
    # `NEXT` line must follow its record, never a page header.
    lines_per_page: int = 0
    # The `options:` a gateway link of this format needs to read exactly what this module prints.
    gateway_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def page_header(self, at: datetime, page: int, tz: tzinfo) -> list[str]:
        """The lines starting page `page` (1, 2, …) printed at `at` (aware) on a clock in `tz`; [] without pages."""
        writer = _PAGE_HEADERS.get(self.name)
        return writer(at, page, tz) if writer is not None else []


# ---- shared helpers


@dataclass(frozen=True)
class _Segment:
    """The part of a call one internal party had: from its start (seizure or transfer) to its end."""

    extension: str
    start: datetime  # aware UTC, whole second
    ring_s: int
    talk_s: int
    first: bool
    last: bool

    @property
    def answered_at(self) -> datetime:
        return self.start + timedelta(seconds=self.ring_s)

    @property
    def end(self) -> datetime:
        return self.answered_at + timedelta(seconds=self.talk_s)


@dataclass(frozen=True)
class _Call:
    """A CompletedCall in printable units: whole seconds, the transfer only when there was one."""

    source: CompletedCall
    start: datetime  # seizure, aware UTC, whole second
    ring_s: int
    talk_s: int
    transfer_to: str | None
    transfer_talk_s: int

    @property
    def direction(self) -> str:
        return self.source.plan.direction

    @property
    def answered(self) -> bool:
        return self.talk_s > 0

    @property
    def total_talk_s(self) -> int:
        return self.talk_s + self.transfer_talk_s

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.ring_s + self.total_talk_s)

    @property
    def segments(self) -> list[_Segment]:
        plan = self.source.plan
        first = _Segment(plan.extension, self.start, self.ring_s, self.talk_s, True, self.transfer_to is None)
        if self.transfer_to is None:
            return [first]
        return [first, _Segment(self.transfer_to, first.end, 0, self.transfer_talk_s, False, True)]


def _whole_s(seconds: float) -> int:
    """Seconds rounded up (IP Office's rule, used by all): a connected call never prints a zero duration.
    Rounded to microseconds first so float noise (10.0000000001) does not add a second."""
    return max(0, math.ceil(round(seconds, 6)))


def _prepare(call: CompletedCall) -> _Call:
    plan = call.plan
    talk_s = _whole_s(plan.talk_s)
    transfer_to = plan.transfer_to if plan.transfer_to and talk_s > 0 else None  # only an answered call moves
    return _Call(
        source=call,
        start=call.start.astimezone(timezone.utc).replace(microsecond=0),
        ring_s=_whole_s(plan.ring_s),
        talk_s=talk_s,
        transfer_to=transfer_to,
        transfer_talk_s=_whole_s(plan.transfer_talk_s) if transfer_to else 0,
    )


def _local(moment: datetime, tz: tzinfo) -> datetime:
    """An instant on the PBX's wall clock (naive)."""
    return moment.astimezone(tz).replace(tzinfo=None)


_LAST_DIGITS = re.compile(r"(\d+)\D*$")


def _trunk_index(trunk: str) -> int:
    """The trunk's number (its last digits, below 1000) that every format codes its own way; 1 if it has none."""
    match = _LAST_DIGITS.search(trunk)
    return int(match.group(1)) % 1000 if match else 1


_LINE_BREAKS = re.compile(r"[\r\n\x00\x0c]+")


def _text(value: str | None, *, drop: str = "") -> str:
    """Free text as a PBX prints it: raw (markup untouched), but never a line break, NUL, form feed or `drop`."""
    text = _LINE_BREAKS.sub(" ", value or "")
    for char in drop:
        text = text.replace(char, "")
    return " ".join(text.split())


_NOT_DIALLABLE = re.compile(r"[^0-9*#+]")


def _digits(number: str) -> str:
    """A number as dial-digit columns print it: digits, `*`, `#` and a leading `+` only."""
    return _NOT_DIALLABLE.sub("", number)


def _hms(seconds: int, *, cap_hours: int = 99) -> str:
    """`HH:MM:SS`; hours beyond `cap_hours` print as the cap (a 2-digit field)."""
    hours, rest = divmod(seconds, 3600)
    if hours > cap_hours:
        hours, rest = cap_hours, 3599
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def _clock_12h(local: datetime) -> tuple[str, bool]:
    """`hh:mm` on a 12-hour dial (00:xx → 12:xx) and whether it is PM. Not strftime: %p follows the locale."""
    return f"{(local.hour % 12) or 12:02d}:{local.minute:02d}", local.hour >= 12


# ---- Avaya IP Office (docs/smdr.md, avaya-ipo): CSV, one record per call segment, Call ID + Continuation

IPO_FIELD_COUNTS = (17, 30, 35)  # by release: up to Park Time / + charging and targeting / + R11 fields
IPO_DEFAULT_FIELDS = 30
IPO_DELIMITER = ","
IPO_CHARGING_FIELDS = 13  # 17–29: AuthValid … External Targeted Number, "empty if not applicable"
IPO_SERVER_IP = "192.0.2.1"  # R11 caller/called server IP (TEST-NET-1: documentation address)
IPO_TIME = "%Y/%m/%d %H:%M:%S"


def _ipo_device(extension: str) -> tuple[str, str]:
    """Party device and name of an extension: `E<ext>` and IP Office's default user name `Extn<ext>`."""
    return f"E{extension}", f"Extn{extension}"


def _avaya_ipo(call: _Call, tz: tzinfo, *, fields: int = IPO_DEFAULT_FIELDS) -> list[str]:
    if fields not in IPO_FIELD_COUNTS:
        raise ValueError(f"ipo_fields must be one of {IPO_FIELD_COUNTS}, not {fields}")
    plan = call.source.plan
    clean = lambda value: _text(value, drop=IPO_DELIMITER)  # fields never contain `,`
    other = clean(plan.other)
    account = clean(plan.account)
    inbound = call.direction == DIRECTION_IN
    internal = call.direction == DIRECTION_INTERNAL
    trunk = _trunk_index(call.source.trunk)
    # The trunk channel's party name: the name the PBX shows for the external party, else the line's name.
    trunk_party = (f"T9{trunk:03d}", clean(plan.caller_name) or f"LINE {trunk}.1")
    call_id = str(call.source.pbx_call_id)
    start_text = _local(call.start, tz).strftime(IPO_TIME)  # the same on every segment of a call

    lines = []
    for segment in call.segments:
        other_party = _ipo_device(other) if internal else trunk_party
        record = [
            start_text,
            _hms(segment.talk_s, cap_hours=9999),
            str(segment.ring_s),
            other if inbound else clean(plan.extension),  # Caller
            "I" if inbound else "O",  # internal calls are O
            clean(plan.extension) if inbound else other,  # Called Number: the original target when transferred
            clean(plan.extension) if inbound else other,  # Dialled Number
            account,
            "1" if internal else "0",
            call_id,
            "0" if segment.last else "1",
            *_ipo_device(clean(segment.extension)),
            *other_party,
            "0",  # Hold Time
            "0",  # Park Time
        ]
        if fields >= 30:
            record += [""] * IPO_CHARGING_FIELDS
        if fields >= 35:
            record += [IPO_SERVER_IP, call_id, IPO_SERVER_IP, call_id, segment.end.strftime(IPO_TIME)]
        lines.append(IPO_DELIMITER.join(record))
    return lines


# ---- Panasonic (docs/smdr.md, panasonic): 80-column Pattern A printer report, end time, no call id

PANASONIC_HEADER = "  Date     Time    Ext CO        Dial Number        Ring Duration  Acc code  CD "
PANASONIC_RULE = "-" * 80
# Skip Perforation is set to 0 (no blank lines at a page end): the header is all that is not a record.
PANASONIC_LINES_PER_PAGE = PRINTER_PAGE_LINES - 2
# The LAN login: user SMDR, password PCCSMDR (unconfirmed defaults, docs/smdr.md, panasonic).
PANASONIC_LOGIN = (LoginStep("login: ", "SMDR"), LoginStep("Enter password: ", "PCCSMDR"))
PANASONIC_INCOMING = "<I>"
PANASONIC_INTERCOM = "EXT"  # intercom: number + `EXT`
PANASONIC_TRANSFER = "TR"  # CD of the record whose party transferred the call away
PANASONIC_NOT_ANSWERED = "NA"


def _panasonic_duration(seconds: int) -> str:
    """`HH:MM'SS` (longer calls print as 99:59'59)."""
    hours, minutes, secs = _hms(seconds).split(":")
    return f"{hours}:{minutes}'{secs}"


def _panasonic_ring(seconds: int) -> str:
    """`M'SS` in the 4-column Ring field (longer rings print as 9'59)."""
    seconds = min(seconds, 9 * 60 + 59)
    return f"{seconds // 60}'{seconds % 60:02d}"


def _panasonic_line(
    date: str, time: str, ext: str, co: str, dial: str, ring: str, duration: str, account: str, cd: str
) -> str:
    """Date 1–8, Time 10–16, Ext 18–22, CO 24–25, Dial Number 27–51, Ring 53–56, Duration 58–65, Acc code
    67–76, CD 78–80; values cut to their columns."""
    return (
        f"{date[:8]:<8} {time[:7]:<7} {ext[:5]:<5} {co[:2]:<2} {dial[:25]:<25} {ring[:4]:>4} {duration[:8]:<8} "
        f"{account[:10]:<10} {cd[:3]:<3}"
    )


def _panasonic(call: _Call, tz: tzinfo) -> list[str]:
    plan = call.source.plan
    trunk = _trunk_index(call.source.trunk)
    co = "" if call.direction == DIRECTION_INTERNAL else f"{trunk:02d}" if trunk <= 99 else "00"  # `00` above 99
    if call.direction == DIRECTION_IN:
        # The caller's number when it has one (the gateway needs it), else the name the PBX got.
        dial = PANASONIC_INCOMING + (_digits(plan.other) or _text(plan.caller_name))
    elif call.direction == DIRECTION_OUT:
        dial = _digits(plan.other)
    else:
        dial = _digits(plan.other) + PANASONIC_INTERCOM
    lines = []
    for segment in call.segments:
        end = _local(segment.end, tz)  # KX-TD/TDA/NS print the END of the call, to the minute
        time, pm = _clock_12h(end)
        if not call.answered:
            cd = PANASONIC_NOT_ANSWERED
        elif not segment.last:
            cd = PANASONIC_TRANSFER
        else:
            cd = ""
        lines.append(
            _panasonic_line(
                date=end.strftime("%m/%d/%y"),
                time=time + ("PM" if pm else "AM"),
                ext=_text(segment.extension),
                co=co,
                dial=dial,
                # The transfer target's record has no ring: its Duration counts from the transfer.
                ring=_panasonic_ring(segment.ring_s) if segment.first else "",
                duration=_panasonic_duration(segment.talk_s),
                account=_text(plan.account),
                cd=cd,
            )
        )
    return lines


def _panasonic_page_header(at: datetime, page: int, tz: tzinfo) -> list[str]:
    return [PANASONIC_HEADER, PANASONIC_RULE]


# ---- NEC SV/SL (docs/smdr.md, nec-sv): 80-column report, no year, no call id, NEXT line for the caller name

# The titles start on their fields' first columns (DATE 12, LINE 18 … ACCOUNT 64), except TIME: `CLASS` is one
# wider than the Class field, so TIME moves to 7 to stay a word of its own.
NEC_TITLES = (
    f"{'CLASS':<6}{'TIME':<5}{'DATE':<6}{'LINE':<5}{'DURATION':<9}{'STATION':<11}{'DIALLED No./CLI':<21}ACCOUNT"
)
# Page header: date + PAGE line, CLASS line. (The device follows the CLASS line with an extra LF; a line list
# cannot say "LF without CR", and an empty line would be a line of its own, so it is left out.)
NEC_LINES_PER_PAGE = PRINTER_PAGE_LINES - 2
NEC_NO_ANSWER = "NO ANSWER"
NEC_NEXT = "NEXT"
NEC_LINE_WIDTH = 80
NEC_CLASS_IN, NEC_CLASS_OUT, NEC_CLASS_INTERNAL, NEC_CLASS_TRANSFER = "PIN", "POT", "ICM", "PTRS"


def _nec_line(
    call_class: str, time: str, date: str, line: str, duration: str, station: str, dialled: str, account: str
) -> str:
    """Class 1–4, Time 6–10, Date 12–16, Line 18–21, Duration 23–30, Station 32–41, Dialled No./CLI 43–62,
    Account 64–79 (date printed: PRG 35-02-14 = 1)."""
    return (
        f"{call_class[:5]:<5}{time:<5} {date:<5} {line[:4]:<4} {duration[:8]:<8} {station[:10]:<10} "
        f"{dialled[:20]:<20} {account[:16]:<16}"
    )


def _nec(call: _Call, tz: tzinfo) -> list[str]:
    plan = call.source.plan
    internal = call.direction == DIRECTION_INTERNAL
    inbound = call.direction == DIRECTION_IN
    trunk_line = "" if internal else f"{_trunk_index(call.source.trunk):03d}"
    dialled = _digits(plan.other)
    lines = []
    for segment in call.segments:
        if segment.first:
            call_class = NEC_CLASS_INTERNAL if internal else NEC_CLASS_IN if inbound else NEC_CLASS_OUT
            # Time = when the call was placed (outgoing, intercom) or answered (incoming); an incoming call
            # nobody answered is stamped when it came in.
            moment = segment.answered_at if inbound and call.answered else segment.start
        else:
            # Each extension sharing a transferred trunk call gets its own PTRS record, stamped when it picked
            # the call up (its Duration counts from then); an intercom transfer is one more ICM record.
            call_class = NEC_CLASS_INTERNAL if internal else NEC_CLASS_TRANSFER
            moment = segment.start
        local = _local(moment, tz)
        if not call.answered and call.direction != DIRECTION_OUT:
            # `NO ANSWER`: blank Duration; blank Station when nobody picked up a trunk call.
            duration, station, account = "", "" if inbound else _text(segment.extension), NEC_NO_ANSWER
        else:
            # An outgoing trunk call is logged with its Duration whatever happened (no answer supervision).
            duration = _hms(segment.talk_s)
            station = _text(segment.extension)
            account = "" if internal else _text(plan.account)  # ICM: Date, Line, Account empty
        lines.append(
            _nec_line(
                call_class=call_class,
                time=local.strftime("%H:%M"),
                date="" if internal else local.strftime("%m/%d"),
                line=trunk_line,
                duration=duration,
                station=station,
                dialled=dialled,
                account=account,
            )
        )
        name = _text(plan.caller_name)
        if segment.first and name and not internal:
            # PRG 35-02-18: the caller name on a `NEXT` line right after its record.
            lines.append(f"{NEC_NEXT} {name}"[:NEC_LINE_WIDTH])
    return lines


def _nec_page_header(at: datetime, page: int, tz: tzinfo) -> list[str]:
    """Line 1: `MM/DD/YYYY` at cols 61–70, `PAGE` at 72–75, page number at 77–79; line 2: the CLASS titles."""
    day = _local(at, tz).strftime("%m/%d/%Y")
    return [f"{'':60}{day} PAGE {page % 1000:03d}", NEC_TITLES]


# ---- Mitel MiVoice Business (docs/smdr.md, mitel-mivb): standard 90-char record + ANI/DNIS (112), 12 h clock, one record per call

# 1-based inclusive columns of the standard record with the ANI/DNIS option (vendor field table).
MITEL_COLUMNS: dict[str, tuple[int, int]] = {
    "long_call": (1, 1),
    "date": (2, 6),
    "start": (8, 13),
    "duration": (15, 22),
    "calling": (24, 27),
    "attendant": (29, 29),
    "time_to_answer": (30, 32),
    "digits": (34, 59),
    "completion": (60, 60),
    "speed_forward": (61, 61),
    "called": (62, 65),
    "transfer": (66, 66),
    "third_party": (68, 71),
    "account": (73, 84),
    "system_flag": (85, 85),
    "system_id": (86, 88),
    "ani": (92, 101),
    "dnis": (103, 112),
}
MITEL_LINE_LENGTH = 112  # 90 standard + ANI/DNIS: without ANI an incoming record has no caller number
MITEL_PM = "p"  # after the minutes; nothing for AM (vendor template `hh:mmp`)
MITEL_UNANSWERED = "***"
MITEL_ANSWERED = "A"  # completion status
MITEL_TRANSFERRED = "T"
MITEL_SYSTEM_ID = "001"
MITEL_DURATION_OVERFLOW = "99:99:99"  # ≥ 100 h
# Long-call flag by duration: blank < 5 min, `-` 5:00–9:59, `%` 10:00–29:59, `+` ≥ 30 min.
MITEL_LONG_CALL_FLAGS = ((30 * 60, "+"), (10 * 60, "%"), (5 * 60, "-"))
# Mitel's default 12 h clock prints `12:05` for 00:05; only `clock: 12` tells the gateway so before a PM record.
MITEL_GATEWAY_OPTIONS: Mapping[str, Any] = {"clock": 12}


def _mitel_place(values: Mapping[str, str]) -> str:
    line = [" "] * MITEL_LINE_LENGTH
    for name, text in values.items():
        first, last = MITEL_COLUMNS[name]
        text = text[: last - first + 1]
        line[first - 1 : first - 1 + len(text)] = text
    return "".join(line)


def _mitel(call: _Call, tz: tzinfo) -> list[str]:
    plan = call.source.plan
    local = _local(call.start, tz)
    clock, pm = _clock_12h(local)
    duration_s = call.total_talk_s  # one record for the whole call, transfer included
    trunk = f"T{_trunk_index(call.source.trunk):03d}"
    extension = _text(plan.extension)
    other = _digits(plan.other).lstrip("+")  # Mitel digits are 0-9 * # only
    inbound = call.direction == DIRECTION_IN
    if not call.answered:
        time_to_answer = MITEL_UNANSWERED
    elif inbound:
        time_to_answer = f"{min(call.ring_s, 999):03d}"  # incoming only
    else:
        time_to_answer = ""
    values = {
        "long_call": next((flag for limit, flag in MITEL_LONG_CALL_FLAGS if duration_s >= limit), " "),
        "date": local.strftime("%m/%d"),
        "start": clock + (MITEL_PM if pm else " "),
        "duration": MITEL_DURATION_OVERFLOW if duration_s >= 100 * 3600 else _hms(duration_s),
        "calling": trunk if inbound else extension,
        "time_to_answer": time_to_answer,
        # Incoming: the DID digits that reached the extension; else what the extension dialled.
        "digits": extension if inbound else other,
        "completion": MITEL_ANSWERED if call.answered else "",
        "called": extension if inbound else trunk if call.direction == DIRECTION_OUT else other,
        "transfer": MITEL_TRANSFERRED if call.transfer_to else "",
        "third_party": _text(call.transfer_to),
        "account": _text(plan.account),
        "system_id": MITEL_SYSTEM_ID,
        "ani": other if inbound else "",
        "dnis": extension if inbound else "",
    }
    return [_mitel_place(values)]


# ---- 3CX (docs/smdr.md, 3cx): one CSV line per call in the common 20-field order, `Call <historyid>` … `Chain: …;`

THREECX_DELIMITER = ","
THREECX_TIME = "%Y/%m/%d %H:%M:%S"
THREECX_EXTENSION = "Ext."
THREECX_HISTORY_PREFIX = "Call "
THREECX_CHAIN_PREFIX = "Chain: "
THREECX_CHAIN_SEPARATOR = ";"
THREECX_TERMINATED_BY_SOURCE = "TerminatedBySrc"  # the caller hung up (or gave up ringing)
THREECX_TERMINATED_BY_DESTINATION = "TerminatedByDst"
THREECX_REPLACED_DESTINATION = "ReplacedDst"  # reason-changed when the call was transferred


def _threecx_line_dn(trunk: str) -> str:
    """The line/trunk DN (observed: `10021`)."""
    return f"10{_trunk_index(trunk):03d}"


def _threecx(call: _Call, tz: tzinfo) -> list[str]:
    plan = call.source.plan
    clean = lambda value: _text(value, drop=THREECX_DELIMITER + THREECX_CHAIN_SEPARATOR)
    stamp = lambda moment: _local(moment, tz).strftime(THREECX_TIME)
    extension, other = clean(plan.extension), clean(plan.other)
    line_dn = _threecx_line_dn(call.source.trunk)
    party = lambda dn: (THREECX_EXTENSION + dn, dn)  # (number, DN) of an extension
    if call.direction == DIRECTION_IN:
        source, destination, dialled = (other, line_dn), party(extension), extension
    elif call.direction == DIRECTION_OUT:
        source, destination, dialled = party(extension), (other, line_dn), other
    else:
        source, destination, dialled = party(extension), party(other), other
    # The party the call ended with: the transfer target (taking the extension's side), else the destination.
    transferred_to = party(clean(call.transfer_to)) if call.transfer_to else None
    if transferred_to and call.direction != DIRECTION_OUT:
        final = transferred_to
    else:
        final = destination
    chain = [source[0], destination[0]] + ([transferred_to[0]] if transferred_to else [])
    historyid = call.source.pbx_call_id
    callid = f"{int(call.start.timestamp() * 1000):016X}_{historyid}"  # shape of 3CX's `00000171C2F42B4E_16`
    record = [
        f"{THREECX_HISTORY_PREFIX}{historyid}",
        callid,
        _hms(call.total_talk_s, cap_hours=9999),  # duration: talk time
        stamp(call.start),
        stamp(call.start + timedelta(seconds=call.ring_s)) if call.answered else "",
        stamp(call.end),
        THREECX_TERMINATED_BY_DESTINATION if call.answered else THREECX_TERMINATED_BY_SOURCE,
        source[0],
        destination[0],
        source[1],
        destination[1],
        dialled,
        THREECX_REPLACED_DESTINATION if transferred_to else "",
        final[0],
        final[1],
        clean(plan.account),  # bill-code
        "",  # bill-rate
        "",  # bill-cost
        "",  # bill-name
        THREECX_CHAIN_PREFIX + "".join(f"{member}{THREECX_CHAIN_SEPARATOR}" for member in chain),
    ]
    return [THREECX_DELIMITER.join(record)]


# ---- custom (docs/smdr.md, custom): our own `|`-delimited layout, one record per segment like IP Office

CUSTOM_DELIMITER = "|"
CUSTOM_COLUMNS = (
    ("Date", "date"),
    ("Time", "time"),
    ("Dir", "direction"),
    ("Ext", "extension"),
    ("Number", "other_number"),
    ("Trunk", "trunk"),
    ("Ring", "ring_s"),
    ("Duration", "duration"),
    ("Ans", "answered"),
    ("Account", "account"),
    ("CallID", "platform_call_id"),
    ("More", "more_follows"),
    ("Name", "caller_name"),  # not a CallRecord field: the gateway keeps it in extra
)
CUSTOM_HEADER = CUSTOM_DELIMITER.join(title for title, _ in CUSTOM_COLUMNS)
CUSTOM_RULE = "-" * len(CUSTOM_HEADER)
CUSTOM_LINES_PER_PAGE = PRINTER_PAGE_LINES - 2
CUSTOM_DATE = "%Y/%m/%d"
CUSTOM_TIME = "%H:%M:%S"
CUSTOM_DIRECTION_CODES = {DIRECTION_IN: "I", DIRECTION_OUT: "O", DIRECTION_INTERNAL: "X"}
CUSTOM_OPTIONS: dict[str, Any] = {
    "mode": "delimited",
    "delimiter": CUSTOM_DELIMITER,
    "quotechar": "",  # none: names are printed raw, quotes included
    "min_fields": len(CUSTOM_COLUMNS),
    "skip_regex": ["^Date\\|Time\\|"],  # the header repeated on every page (the dashes are skipped anyway)
    "fields": {name: index for index, (_, name) in enumerate(CUSTOM_COLUMNS)},
    "date_format": CUSTOM_DATE,
    "time_format": CUSTOM_TIME,
    "time_is": "start",
    "duration_format": "HH:MM:SS",
    "direction_map": {code: direction for direction, code in CUSTOM_DIRECTION_CODES.items()},
}


def _custom(call: _Call, tz: tzinfo) -> list[str]:
    plan = call.source.plan
    clean = lambda value: _text(value, drop=CUSTOM_DELIMITER)
    lines = []
    for segment in call.segments:
        local = _local(segment.start, tz)  # each segment's own start: the transfer target's is the transfer
        record = [
            local.strftime(CUSTOM_DATE),
            local.strftime(CUSTOM_TIME),
            CUSTOM_DIRECTION_CODES[call.direction],
            clean(segment.extension),
            clean(plan.other),
            clean(call.source.trunk),
            str(segment.ring_s),
            _hms(segment.talk_s, cap_hours=9999),
            "Y" if segment.talk_s > 0 else "N",
            clean(plan.account),
            str(call.source.pbx_call_id),
            "0" if segment.last else "1",
            clean(plan.caller_name),
        ]
        lines.append(CUSTOM_DELIMITER.join(record))
    return lines


def _custom_page_header(at: datetime, page: int, tz: tzinfo) -> list[str]:
    return [CUSTOM_HEADER, CUSTOM_RULE]


# ---- the table

_WRITERS: dict[str, Callable[[_Call, tzinfo], list[str]]] = {
    AVAYA_IPO: _avaya_ipo,
    PANASONIC: _panasonic,
    NEC_SV: _nec,
    MITEL_MIVB: _mitel,
    THREECX: _threecx,
    CUSTOM: _custom,
}
_PAGE_HEADERS: dict[str, Callable[[datetime, int, tzinfo], list[str]]] = {
    PANASONIC: _panasonic_page_header,
    NEC_SV: _nec_page_header,
    CUSTOM: _custom_page_header,
}

PROFILES: dict[str, FormatProfile] = {
    # avaya-ipo: CSV records end CR LF; no login (IP only, the PBX pushes or the gateway connects); no pages.
    AVAYA_IPO: FormatProfile(AVAYA_IPO, b"\r\n"),
    # panasonic: New Line Code is CR or CR+LF; CR alone is the case the gateway must survive. LAN login: user SMDR,
    # password PCCSMDR. Header + dashes on every page.
    PANASONIC: FormatProfile(PANASONIC, b"\r", PANASONIC_LOGIN, PANASONIC_LINES_PER_PAGE),
    # nec-sv: records CR LF; plain text, no login; date+PAGE and CLASS lines on every page.
    NEC_SV: FormatProfile(NEC_SV, b"\r\n", (), NEC_LINES_PER_PAGE),
    # mitel-mivb: one line per record (any terminator accepted; CR LF sent); no login; no pages.
    MITEL_MIVB: FormatProfile(MITEL_MIVB, b"\r\n", gateway_options=MITEL_GATEWAY_OPTIONS),
    # 3cx: one CSV line per call; no login; no header documented.
    THREECX: FormatProfile(THREECX, b"\r\n"),
    # custom: our layout: LF alone, a header + dashes repeated per page (the options skip them).
    CUSTOM: FormatProfile(CUSTOM, b"\n", (), CUSTOM_LINES_PER_PAGE, CUSTOM_OPTIONS),
}


def record_lines(fmt: str, call: CompletedCall, tz: tzinfo, *, ipo_fields: int = IPO_DEFAULT_FIELDS) -> list[str]:
    """The record line(s), without terminators, that a PBX of `fmt` whose clock runs in `tz` prints for `call`.

    A transfer prints two records where the format does (IP Office: same Call ID, Continuation 1 then 0;
    Panasonic: the first marked TR; NEC: the target's PTRS record; custom: like IP Office); Mitel and 3CX print
    one record per call. `ipo_fields` picks the IP Office release's record length (17, 30 or 35 fields).
    """
    writer = _WRITERS.get(fmt)
    if writer is None:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    prepared = _prepare(call)
    if fmt == AVAYA_IPO:
        return _avaya_ipo(prepared, tz, fields=ipo_fields)
    return writer(prepared, tz)


# ---- fault injection

GARBAGE_WORDS = ("PARITY ERROR", "FRAMING ERROR", "BUFFER OVERRUN", "LINE NOISE", "CARRIER LOST")


def garbage_line(rng: random.Random) -> str:
    """A line no parser accepts: line noise that looks like a damaged record.

    Why each parser refuses it: no `,` (IP Office needs ≥ 11 fields, 3CX its 20) and no `|` (custom needs 13);
    it starts `dd/dd/` with no year (Panasonic: a date fragment is a damaged record, not noise to skip; the
    `M:SS'SS` token is a Duration too); Mitel finds no `mm/dd hh:mm`; NEC finds no class code, and it is longer
    than a wrapped caller-name remainder (24) and holds no PAGE/CLASS/summary word that NEC would skip.
    """
    return (
        f"{rng.randint(10, 99)}/{rng.randint(10, 99)}/ {rng.choice(GARBAGE_WORDS)} "
        f"{rng.randint(0, 9)}:{rng.randint(0, 59):02d}'{rng.randint(0, 59):02d} #{rng.getrandbits(16):04X}"
    )
