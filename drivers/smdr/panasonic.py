"""Panasonic KX-TD/TA/TDA/TDE/NCP/NS SMDR printer report → CallRecord (docs/smdr.md).

Long for a reason: a PBX format's parser, listing its columns, tokens and call codes.

Pattern A lines are read by column when they line up with the 80-column header, otherwise by token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any, ClassVar

import structlog

from drivers.smdr.base import (
    RecordParser,
    SmdrParseError,
    local_now,
    parse_clock,
    parse_duration,
    to_utc,
    two_digit_year,
)
from gateway.events import CallRecord
from gateway.model import Direction

log = structlog.get_logger(__name__)

FORMAT = "panasonic"

# ---- options

OPTION_TIME_IS = "time_is"
OPTION_DATE_ORDER = "date_order"
OPTION_LAYOUT = "layout"
OPTION_DEPT = "dept"
# The incoming and outgoing records of a CO-to-CO transfer or forward (CD TR/FW) become one call (default).
OPTION_MERGE_TRANSFER_LEGS = "merge_transfer_legs"
CODE_TRANSFER = "TR"
CODE_FORWARD = "FW"
TRANSFER_LEG_CODES = frozenset({CODE_TRANSFER, CODE_FORWARD})
TRANSFER_LEG_KEY = "co-transfer"
TIME_IS_END = "end"  # KX-TD/TDA/TDE/NCP/NS print the end of the call
TIME_IS_START = "start"  # KX-TA/TEA print the start
TIME_IS_VALUES = (TIME_IS_END, TIME_IS_START)
DATE_ORDERS = ("mdy", "dmy", "ymd")
DATE_ORDER_BY_SEPARATOR = {"/": "mdy", ".": "dmy"}  # when `date_order` is not set
LAYOUT_A, LAYOUT_B, LAYOUT_C = "A", "B", "C"
LAYOUTS = (LAYOUT_A, LAYOUT_B, LAYOUT_C)
_ORDER_TEXT = {"mdy": "m/d/y", "dmy": "d/m/y", "ymd": "y/m/d"}

# ---- Pattern A, 80 columns (1-based inclusive in the spec → 0-based slices here)

LINE_WIDTH = 80
COL_DATE = slice(0, 8)
COL_TIME = slice(9, 16)
COL_EXT = slice(17, 22)
COL_CO = slice(23, 25)
COL_DIAL = slice(26, 51)
COL_RING = slice(52, 56)
COL_DURATION = slice(57, 65)
COL_ACCOUNT = slice(66, 76)
COL_CD = slice(77, 80)
# Columns that separate fields and so must be blank for column mode (cols 9, 17, 23, 26, 52, 57, 66).
SEPARATOR_INDEXES = (8, 16, 22, 25, 51, 56, 65)

# ---- tokens

_DATE_AT_START = re.compile(r"^\s*(\d{1,2}|\*\*)([/.])(\d{1,2}|\*\*)\2(\d{4}|\d\d|\*\*)(?=\s|$)")
_DATE_FRAGMENT = re.compile(r"^\s*[\d*]{1,2}[/.][\d*]{1,2}[/.]")  # a damaged record, not serial noise
_TIME = re.compile(r"^(\*)?(\d{1,2}:\d\d(?:[AaPp][Mm])?)$")
# HH:MM'SS, `*` when the clock was changed; older KX-T models close the seconds with `"` (00:00'38").
_DURATION = re.compile(r"^[\d*]{1,2}:[\d*]{2}'[\d*]{2}\"?$")
_RING = re.compile(r"^[\d*]{1,2}'[\d*]{2}\"?$")  # M'SS
_CO_AB = re.compile(r"^\d{1,2}$")  # patterns A/B: 2 columns (`00` above 99)
_CO_C = re.compile(r"^\d{1,4}$")  # pattern C: 4 columns
_CD = re.compile(r"^[A-Za-z]{1,2}$")
# A cost, its currency after (`00560.00EU`, `00007. 00`) or before it (`EU00000.00`).
_CURRENCY = r"[A-Za-z]{1,3}|[£€$\x9c]"
_COST = re.compile(rf"^(?:({_CURRENCY})\s?)?(\d+\.\s?\d+)\s?({_CURRENCY})?(?=\s|$)")
# One token that can only be a cost (a currency on either side): printed before the Duration (B/C), or in the
# Acc code columns of an 80-column line.
_COST_TOKEN = re.compile(rf"^(?:(?:{_CURRENCY})\d+\.\d+|\d+\.\d+(?:{_CURRENCY}))$")
_EMPTY_ACCOUNT = re.compile(r"^\.+$")  # `....`

# Dial Number. Only calls received from a trunk carry a bracketed marker: `<I>` before the caller (`<D>` before a
# DDI/DID/MSN), KX-TA `< incoming >` / `< DISA incoming >` / `<DIL incoming>`, and localised or older texts
# (`< DE >` — "from" —, `< DISA >`, `<INCOMING>`): any marker but `<D>` introduces the caller.
_MARKER = re.compile(r"<\s*([^<>]*?)\s*>")
_MARKER_DDI = "D"
_INCOMING_TYPES = ("DISA", "DIL", "UCD")
# Intercom: the dialled extension with `EXT` after it (`1235EXT`) or before it (`EXT1235`, KX-NS sample).
_INTERCOM = re.compile(r"^(?:(.*?)\s*EXT|EXT\s*(\S+))$", re.IGNORECASE)
_CO_TO_CO = re.compile(r"^C-\s?(\d+)$", re.IGNORECASE)
DIAL_MARKERS = "PF=.Xx-"  # pause, EFA, host-PBX code, secret digit, privacy, transferred
_MASKED_MARKERS = ".Xx"
_NUMBER = re.compile(r"^\+?[\d*#]+$")

# Non-record lines
_STATUS = re.compile(
    r"\b(LOG[ -]?IN|LOG[ -]?OUT|CHECK[ -]?IN|CHECK[ -]?OUT|TIMED\s+REMINDER|WAKE[ -]?UP|ROOM\s+STATUS|"
    r"MESSAGE\s+WAITING|CALL\s+COST|REMOTE\s+MAINTENANCE)\b",
    re.IGNORECASE,
)
_HEADER = re.compile(r"\bDate\b.*\bTime\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+")


@dataclass
class _Fields:
    """The text fields of one record line, as read by column or by token."""

    mode: str
    date: str
    time: str
    ext: str
    co: str = ""
    dept: str = ""
    dial: str = ""
    ring: str = ""
    duration: str = ""
    account: str = ""
    cd: str = ""
    cost: str = ""
    currency: str = ""
    unknown: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PanasonicSettings:
    """A Panasonic link's options, checked and compiled (None: not set, learnt from the stream)."""

    time_is: str | None
    date_order: str | None
    layout: str
    dept: bool | None
    merge_transfer_legs: bool


class PanasonicParser(RecordParser):
    """One Panasonic SMDR link. Keeps what a header line told it (Dept column, KX-TA start times)."""

    format: ClassVar[str] = FORMAT
    vendor: ClassVar[str] = "Panasonic"
    settings: PanasonicSettings

    def __init__(self, link: str, *, tz: tzinfo, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(link, tz=tz, options=options)
        settings = self.settings
        self._time_is_option: str | None = settings.time_is
        self._date_order: str | None = settings.date_order
        self._layout = settings.layout
        self._dept_option: bool | None = settings.dept
        self._merge_legs: bool = settings.merge_transfer_legs
        # Learnt from header lines when the options leave them open.
        self._header_time_is: str | None = None
        self._header_dept: bool | None = None
        # By separator: from a date only one order can read (13/02/24 → dmy).
        self._learnt_date_order: dict[str, str] = {}
        self._last_separator = "/"

    @classmethod
    def compile_options(cls, options: Mapping[str, Any]) -> PanasonicSettings:
        time_is = options.get(OPTION_TIME_IS)
        if time_is is not None and _lower(time_is) not in TIME_IS_VALUES:
            raise ValueError(f"{OPTION_TIME_IS}: must be one of {', '.join(TIME_IS_VALUES)}, not {time_is!r}")
        date_order = options.get(OPTION_DATE_ORDER)
        if date_order is not None and _lower(date_order) not in DATE_ORDERS:
            raise ValueError(f"{OPTION_DATE_ORDER}: must be one of {', '.join(DATE_ORDERS)}, not {date_order!r}")
        layout = options.get(OPTION_LAYOUT)
        if layout is not None and str(layout).upper() not in LAYOUTS:
            raise ValueError(f"{OPTION_LAYOUT}: must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        for option in (OPTION_DEPT, OPTION_MERGE_TRANSFER_LEGS):
            value = options.get(option)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{option}: must be true or false, not {value!r}")
        return PanasonicSettings(
            time_is=_lower(time_is),
            date_order=_lower(date_order),
            layout=str(layout if layout is not None else LAYOUT_A).upper(),
            dept=options.get(OPTION_DEPT),
            merge_transfer_legs=options.get(OPTION_MERGE_TRANSFER_LEGS, True),
        )

    @property
    def time_is(self) -> str:
        return self._time_is_option or self._header_time_is or TIME_IS_END

    def variant(self) -> str:
        if self._time_is_option:
            times = f"{self.time_is} times (time_is option)"
        elif self._header_time_is == TIME_IS_START:
            times = "start times (KX-TA/TEA header: `Code`, no `Acc code`/`CD`)"
        elif self._header_time_is == TIME_IS_END:
            times = "end times (KX-TD/TDA/TDE/NCP/NS header)"
        else:
            times = "end times (default; no header seen yet)"
        if self._date_order:
            order = f"{_ORDER_TEXT[self._date_order]} (date_order option)"
        elif learnt := self._learnt_date_order.get(self._last_separator):
            order = f"{_ORDER_TEXT[learnt]} (seen in a date)"
        else:
            order = (
                f"{_ORDER_TEXT[DATE_ORDER_BY_SEPARATOR[self._last_separator]]} (from the separator, not yet confirmed)"
            )
        parts = [times, order, f"layout {self._layout}"]
        dept = self._dept_option if self._dept_option is not None else self._header_dept
        if dept:
            parts.append("Dept column")
        return "Panasonic: " + ", ".join(parts)

    # ---- lines

    def parse(self, line: str, received_at: datetime) -> list[CallRecord]:
        if not _DATE_AT_START.match(line):
            return self._non_record(line)
        fields = self._read_columns(line) or self._read_tokens(line)
        if fields is None:  # a status line (LOG IN, Check in …): not a call
            log.debug("panasonic status line skipped", link=self.link)
            return []
        return [self._build(line, fields, received_at)]

    def _non_record(self, line: str) -> list[CallRecord]:
        """Headers, dashes, titles, login prompts, modem noise → []; a record missing its date → error."""
        if _HEADER.search(line):
            self._learn_header(line)
            return []
        tokens = line.split()
        if _DATE_FRAGMENT.match(line) or any(_DURATION.match(token) for token in tokens):
            raise SmdrParseError("Panasonic record without a readable date at the line start")
        log.debug("panasonic non-record line skipped", link=self.link)
        return []

    def _learn_header(self, line: str) -> None:
        """A column header confirms the layout: a `Dept` column, and which family printed it.

        What tells the families apart is the account column: KX-TA/TEA/TES (start times) head it `Code` and
        have no `CD` column; KX-TD/TDA/TDE/NCP/NS (end times) head it `Acc code` (or `Acc`) beside a `CD`
        column. Whether a `Ring` column is printed is a programmable option of the latter, not a model trait.
        """
        words = set(_WORD.findall(line.lower()))
        self.note_context("header")
        self._header_dept = "dept" in words
        if "code" in words and "acc" not in words and "cd" not in words:  # `… Dial number Duration Code`
            self._header_time_is = TIME_IS_START
        else:
            self._header_time_is = TIME_IS_END

    # ---- column mode (Pattern A)

    def _read_columns(self, line: str) -> _Fields | None:
        if self._layout != LAYOUT_A:
            return None
        padded = line.ljust(LINE_WIDTH)
        if any(padded[index] != " " for index in SEPARATOR_INDEXES):
            return None
        if not _DURATION.match(padded[COL_DURATION].strip()):
            return None
        if not _DATE_AT_START.match(padded[COL_DATE]) or not padded[COL_EXT].strip():
            return None
        return _Fields(
            mode="columns",
            date=padded[COL_DATE].strip(),
            time=padded[COL_TIME].strip(),
            ext=padded[COL_EXT].strip(),
            co=padded[COL_CO].strip(),
            dial=padded[COL_DIAL].strip(),
            ring=padded[COL_RING].strip(),
            duration=padded[COL_DURATION].strip(),
            account=padded[COL_ACCOUNT].strip(),
            cd=padded[COL_CD].strip(),
            unknown=padded[LINE_WIDTH:].split(),
        )

    # ---- token mode

    def _is_co(self, token: str) -> bool:
        return bool((_CO_C if self._layout == LAYOUT_C else _CO_AB).match(token))

    def _read_tokens(self, line: str) -> _Fields | None:
        tokens = line.split()
        if len(tokens) < 2:
            raise SmdrParseError("Panasonic record with a date but no time")
        duration_index = next(
            (index for index in range(3, len(tokens)) if _DURATION.match(tokens[index])),
            None,
        )
        if duration_index is None:
            if _STATUS.search(line):
                return None
            if any(_INTERCOM.match(token) for token in tokens[3:]):
                # An intercom record: the PBX prints no Duration for extension-to-extension calls.
                fields = _Fields(mode="tokens", date=tokens[0], time=tokens[1], ext="")
                self._read_body(tokens[2:], fields)
                return fields
            raise SmdrParseError("Panasonic record without a Duration (HH:MM'SS)")
        fields = _Fields(mode="tokens", date=tokens[0], time=tokens[1], ext="", duration=tokens[duration_index])
        body_end = duration_index
        if duration_index - 1 >= 3 and _RING.match(tokens[duration_index - 1]):
            fields.ring = tokens[duration_index - 1]
            body_end -= 1
        body = tokens[2:body_end]
        if not body:
            raise SmdrParseError("Panasonic record without an extension")
        self._read_body(body, fields)
        self._read_tail(tokens[duration_index + 1 :], fields)
        return fields

    def _read_body(self, body: list[str], fields: _Fields) -> None:
        """Ext, [Dept], CO, Dial Number, read by token (docs/smdr.md)."""
        bracket = next((index for index, token in enumerate(body) if token.startswith("<")), None)
        if bracket is not None:
            before, dial = body[:bracket], body[bracket:]
            if not before:
                raise SmdrParseError("Panasonic record without an extension")
            fields.ext = before[0]
            if len(before) >= 3:
                fields.dept, fields.co = " ".join(before[1:-1]), before[-1]
            elif len(before) == 2:
                fields.co = before[1]
        else:
            fields.ext, rest = body[0], body[1:]
            if self._has_dept(rest):
                fields.dept, rest = rest[0], rest[1:]
            if rest and self._is_co(rest[0]):
                fields.co, rest = rest[0], rest[1:]
            dial = rest
        if dial and _COST_TOKEN.match(dial[-1]):  # patterns B/C may print the cost before the Duration
            fields.cost, dial = dial[-1], dial[:-1]
        fields.dial = " ".join(dial)

    def _has_dept(self, rest: list[str]) -> bool:
        """Dept comes between Ext and CO only in layouts that have it (option or header) — or when the token
        after Ext cannot be a CO but the one after it can (KX-TD612E `201 12345 01 …`)."""
        dept = self._dept_option if self._dept_option is not None else self._header_dept
        if len(rest) < 2 or dept is False:
            return False
        if dept:
            return self._is_co(rest[1])
        return not self._is_co(rest[0]) and rest[0].isdigit() and self._is_co(rest[1])

    @staticmethod
    def _read_tail(tokens: list[str], fields: _Fields) -> None:
        """After Duration: [cost] account [unknown …] [CD]."""
        rest = list(tokens)
        if rest and _CD.match(rest[-1]):
            fields.cd = rest.pop()
        text = " ".join(rest)
        cost = _COST.match(text)
        if cost:
            fields.cost, fields.currency = cost.group(2), cost.group(1) or cost.group(3) or ""
            text = text[cost.end() :].strip()
        rest = text.split()
        if rest:
            fields.account = rest.pop(0)
        fields.unknown = rest

    # ---- normalisation

    def _build(self, line: str, fields: _Fields, received_at: datetime) -> CallRecord:
        extra: dict[str, Any] = {"mode": fields.mode}
        received_local = local_now(received_at, self.tz)
        day = self._parse_date(fields.date, received_local)
        clock, transferred = self._parse_time(fields.time)
        if transferred:
            extra["transferred"] = True
        duration_s = _parse_span(fields.duration, "Duration") if fields.duration else None
        ring_s = _parse_span(fields.ring, "Ring") if fields.ring else None
        times_known = day is not None and clock is not None
        if not times_known or (fields.duration and duration_s is None) or (fields.ring and ring_s is None):
            extra["times_unknown"] = True
        if not fields.duration:  # intercom: the call ended at the printed time; how long it lasted is not printed
            extra["duration_unknown"] = True
        start = end = None
        if day is not None and clock is not None:  # times_known
            stamp = to_utc(datetime(day.year, day.month, day.day, *clock), self.tz, received_at)
            if duration_s is not None and not (fields.ring and ring_s is None):
                span = timedelta(seconds=duration_s + (ring_s or 0))
            else:
                span = None
            if self.time_is == TIME_IS_START:
                start, end = stamp, (stamp + span if span is not None else None)
            else:
                end, start = stamp, (stamp - span if span is not None else None)

        direction, other_number, dial_extra = _parse_dial(fields.dial)
        extra.update(dial_extra)
        if fields.dept:
            extra["dept"] = fields.dept
        if fields.cd:
            extra["cd"] = fields.cd.upper()
        if fields.account and not fields.cost and _COST_TOKEN.match(fields.account):
            cost = _COST.match(fields.account)  # a cost with its currency in the Acc code columns: no account
            assert cost is not None
            fields.cost, fields.currency, fields.account = cost.group(2), cost.group(1) or cost.group(3) or "", ""
        if fields.cost:
            extra["cost"] = fields.cost.replace(" ", "")
            if fields.currency:
                extra["currency"] = fields.currency
        if fields.unknown:
            extra["unknown_tokens"] = fields.unknown
        account = fields.account if fields.account and not _EMPTY_ACCOUNT.match(fields.account) else None
        # A call transferred or forwarded to an outside line (trunk to trunk) is logged twice under the extension
        # that sent it out: the incoming leg (`<I>`, with or without a code) and the outgoing leg, marked TR or
        # FW. Both carry a key naming that extension; the tracker joins an incoming and an outgoing leg of the
        # same extension whose times meet, and never two of one direction or a guess between several.
        code = (fields.cd or "").upper()
        transfer_leg = (
            self._merge_legs and bool(fields.ext) and (code in TRANSFER_LEG_CODES or direction is Direction.IN)
        )
        return self.record(
            line,
            received_at,
            start=start,
            end=end,
            duration_s=float(duration_s) if duration_s is not None else None,
            ring_s=float(ring_s) if ring_s is not None else None,
            extension=fields.ext or None,
            other_number=other_number,
            direction=direction,
            trunk=fields.co or None,
            account=account,
            extra=extra,
            leg_key=f"{TRANSFER_LEG_KEY} {fields.ext}" if transfer_leg else None,
            joins_leg=transfer_leg,
        )

    def _parse_date(self, text: str, received_local: datetime) -> datetime | None:
        match = _DATE_AT_START.match(text)
        if not match:
            raise SmdrParseError(f"bad Panasonic date {text!r}")
        first, separator, second, third = match.groups()
        if "*" in first + second + third:
            return None  # `**/**/**`: date unknown, record kept
        self._last_separator = separator
        if self._date_order is None and separator not in self._learnt_date_order:
            self._learn_date_order(separator, first, second)
        order = self._date_order or self._learnt_date_order.get(separator) or DATE_ORDER_BY_SEPARATOR[separator]
        if order == "mdy":
            month_text, day_text, year_text = first, second, third
        elif order == "dmy":
            day_text, month_text, year_text = first, second, third
        else:
            year_text, month_text, day_text = first, second, third
        year = int(year_text) if len(year_text) == 4 else two_digit_year(int(year_text), received_local)
        try:
            return datetime(year, int(month_text), int(day_text))
        except ValueError as error:
            raise SmdrParseError(f"bad Panasonic date {text!r} ({order})") from error

    def _learn_date_order(self, separator: str, first: str, second: str) -> None:
        """Day/month or month/day, when a date shows it (a first number over 12 is a day, and so is a second
        one): the separator alone does not tell (KX-TA624 and KX-TD816 print `31/12/98`)."""
        if len(first) > 2 or len(second) > 2:  # year first
            return
        if int(first) > 12 >= int(second):
            self._learnt_date_order[separator] = "dmy"
        elif int(second) > 12 >= int(first):
            self._learnt_date_order[separator] = "mdy"
        else:
            return
        self.note_context(f"date_order {separator}")

    @staticmethod
    def _parse_time(text: str) -> tuple[tuple[int, int, int] | None, bool]:
        """(hour, minute, second) or None when unknown; True if a `*` prefix marks a transferred call (KX-TA)."""
        match = _TIME.match(text)
        if match:
            try:
                return parse_clock(match.group(2)), bool(match.group(1))
            except ValueError as error:
                raise SmdrParseError(f"bad Panasonic time {text!r}") from error
        if "*" in text:
            return None, False  # clock changed during the call
        raise SmdrParseError(f"bad Panasonic time {text!r}")


def _lower(value: Any) -> str | None:
    return None if value is None else str(value).strip().lower()


def _parse_span(text: str, name: str) -> int | None:
    """Duration `HH:MM'SS` / Ring `M'SS` → seconds; None when starred (clock changed during the call)."""
    if "*" in text:
        return None
    try:
        return parse_duration(text.rstrip('"'))
    except ValueError as error:
        raise SmdrParseError(f"bad Panasonic {name} {text!r}") from error


def _caller(text: str) -> tuple[str | None, dict[str, Any]]:
    """What follows `<I>` / `incoming`: a number → other_number, a name → extra.caller_name."""
    text = text.strip()
    if not text:
        return None, {}
    compact = re.sub(r"[\s\-]", "", text)
    if _NUMBER.match(compact):
        return compact, {}
    return None, {"caller_name": text}


def _parse_dial(text: str) -> tuple[Direction, str | None, dict[str, Any]]:
    """Dial Number → (direction, other_number, extra)."""
    text = text.strip()
    if not text:
        return Direction.UNKNOWN, None, {}
    extra: dict[str, Any] = {"dial_number": text}
    if _MARKER.search(text):  # received from a trunk: `<D>` DDI, then the caller after any other marker
        parts = _MARKER.split(text)
        number = None
        if parts[0].strip():
            extra["dial_prefix"] = parts[0].strip()
        for marker, value in zip(parts[1::2], parts[2::2]):
            word = " ".join(marker.split()).upper()
            if word == _MARKER_DDI:
                if value.strip():
                    extra["ddi"] = re.sub(r"\s", "", value)
                continue
            kind = next((kind for kind in _INCOMING_TYPES if word.startswith(kind)), None)
            if kind:
                extra["incoming_type"] = kind
            if word not in ("I", "INCOMING"):
                extra["incoming_marker"] = marker.strip()
            number, caller_extra = _caller(value)
            extra.update(caller_extra)
        return Direction.IN, number, extra
    intercom = _INTERCOM.match(text)
    if intercom:
        target = (intercom.group(1) or intercom.group(2) or "").strip()
        return Direction.INTERNAL, target or None, extra
    co_to_co = _CO_TO_CO.match(text)
    if co_to_co:  # CO-to-CO call through DISA: `C-xx`
        extra["co_to_co"] = co_to_co.group(1)
        return Direction.UNKNOWN, None, extra
    digits = re.sub(f"[{re.escape(DIAL_MARKERS)}\\s]", "", text)
    if any(marker in text for marker in _MASKED_MARKERS):
        extra["masked"] = True
    if _NUMBER.match(digits):
        return Direction.OUT, digits, extra
    if not digits:  # only markers (all digits secret)
        return Direction.OUT, None, extra
    return Direction.UNKNOWN, None, extra


PARSER = PanasonicParser
