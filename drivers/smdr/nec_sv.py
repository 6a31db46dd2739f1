"""NEC SL1000/SL1100/SL2100/SV8100/SV9100 SMDR report → CallRecord (docs/smdr.md).

Each record is held until the next line (or `hold_timeout_s`) because a `NEXT` line may carry its caller name.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, ClassVar

import structlog

from drivers.smdr.base import RecordParser, SmdrParseError, infer_year, local_now, parse_duration, to_utc
from gateway.events import CallRecord
from gateway.model import Direction

log = structlog.get_logger(__name__)

FORMAT = "nec-sv"

OPTION_DATE = "date"  # PRG 35-02-14: Date column printed (default) or not
# PTRS/ITRS records of one transferred call (one per station) become one call (default) or stay apart.
OPTION_MERGE_TRANSFER_LEGS = "merge_transfer_legs"
# A NEXT line follows its record at once; 2 s is ample even at 1200 baud.
HOLD_TIMEOUT_S = 2.0
# A time-only record (ICM has no date) later than this after its receive time belongs to the previous day.
TIME_ONLY_FUTURE_TOLERANCE = timedelta(hours=1)
# A name remainder wrapped onto its own line is short (the Account column is 16 wide); longer text is garbage.
MAX_NAME_REMAINDER = 24

# ---- 80 columns, date on (1-based inclusive in the spec → 0-based slices here)

LINE_WIDTH = 80
COL_TIME = slice(5, 10)
COL_DATE = slice(11, 16)
COL_LINE = slice(17, 21)
COL_LINE_NO_DATE = slice(11, 21)
COL_DURATION = slice(22, 30)
COL_STATION = slice(31, 41)
COL_DIALLED = slice(42, 62)
COL_ACCOUNT = slice(63, 79)
SEPARATOR_INDEXES = (10, 21, 30, 41, 62)  # cols 11, 22, 31, 42, 63
DATE_SEPARATOR_INDEX = 16  # col 17, only when the Date column is printed

# ---- classes

NEXT = "NEXT"
NO_ANSWER = "NO ANSWER"
ICM = "ICM"
BRD = "BRD"
DIRECTION_BY_CLASS: dict[str, Direction] = {
    **dict.fromkeys(("POT", "POTA", "POTP", "POTW", "IVOT", "IVOTP", "IDOT", BRD), Direction.OUT),
    **dict.fromkeys(("PIN", "IVIN", "IDIN"), Direction.IN),
    ICM: Direction.INTERNAL,
    **dict.fromkeys(("PTRS", "ITRS"), Direction.UNKNOWN),
}
TRANSFER_CLASSES = frozenset({"PTRS", "ITRS"})
ALL_LINES_BUSY = "ALB"
BUFFER_FULL = "BFL"
INTERNAL_CLASSES = frozenset({"SDTA", "SAD", "WAD"})  # data, sensor, remote-inspection calls
EVENT_CLASSES = frozenset({ALL_LINES_BUSY, BUFFER_FULL, *INTERNAL_CLASSES})

_CLASS_LIKE = re.compile(r"^[A-Z]{3,5}$")
_CLASS_GLUED_TO_TIME = re.compile(r"^([A-Z]{5})(\d\d:\d\d)$")
_TIME = re.compile(r"^\d\d:\d\d$")
_DATE = re.compile(r"^(\d\d)/(\d\d)$")
_LINE = re.compile(r"^\d{1,4}$")
_DURATION = re.compile(r"^\d{2,4}:\d\d:\d\d$")
_NUMBER = re.compile(r"^\+?[\d*#\-]+$")
_ACCOUNT = re.compile(r"^[\d*#]+$")
_PAGE_HEADER = re.compile(r"\bPAGE\b", re.IGNORECASE)
_PAGE_DATE = re.compile(r"(\d\d)/(\d\d)/(\d{4})")
_SUMMARY = re.compile(r"^\s*(OUTGOING|INCOMING|TOTAL|GRAND\s+TOTAL|SUMMARY)\b", re.IGNORECASE)
_SEPARATOR = re.compile(r"^[\s\-=_*]+$")
_MODEM_NOISE = re.compile(r"^AT")


@dataclass(frozen=True)
class NecSettings:
    """An NEC link's options, checked and compiled."""

    date_printed: bool  # PRG 35-02-14: the Date column is printed
    merge_transfer_legs: bool


class NecSvParser(RecordParser):
    """One NEC SV/SL link: remembers the page header's date (for the year) and holds the last record for `NEXT`."""

    format: ClassVar[str] = FORMAT
    vendor: ClassVar[str] = "NEC"
    hold_timeout_s: ClassVar[float] = HOLD_TIMEOUT_S
    settings: NecSettings

    def __init__(self, link: str, *, tz: tzinfo, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(link, tz=tz, options=options)
        self._date_printed = self.settings.date_printed
        self._merge_legs = self.settings.merge_transfer_legs
        self._page_date: date | None = None
        self._previous_was_record = False
        self._in_summary = False
        # Non-call lines seen, by class (ALB, BFL, SDTA …) and NEXT/remainder lines that found no record.
        self.event_counts: Counter[str] = Counter()

    @classmethod
    def compile_options(cls, options: Mapping[str, Any]) -> NecSettings:
        return NecSettings(
            date_printed=_flag(options.get(OPTION_DATE, True), OPTION_DATE),
            merge_transfer_legs=_flag(options.get(OPTION_MERGE_TRANSFER_LEGS, True), OPTION_MERGE_TRANSFER_LEGS),
        )

    def variant(self) -> str:
        date_column = "Date column printed" if self._date_printed else "no Date column (PRG 35-02-14 off)"
        year = f"year {self._page_date.year} from the page header" if self._page_date else "year inferred"
        return f"NEC: {date_column}, start times, {year}"

    # ---- holding

    def reset(self) -> None:
        """Reconnected: a held record stays held (flush releases it); what the last line was is forgotten."""
        self._previous_was_record = False
        self._in_summary = False

    def skip_line(self) -> list[CallRecord]:
        self._previous_was_record = False
        return super().skip_line()

    # ---- lines

    def parse(self, line: str, received_at: datetime) -> list[CallRecord]:
        tokens = line.split()
        if glued := _CLASS_GLUED_TO_TIME.match(tokens[0]):  # a 5-letter class fills col 5: `IVOTP10:52`
            tokens[:1] = glued.groups()
        first = tokens[0]
        previous_was_record, self._previous_was_record = self._previous_was_record, False
        if first == NEXT:
            return self._attach_name(line.split(NEXT, 1)[1].strip(), line, "next")
        if first in DIRECTION_BY_CLASS or first in EVENT_CLASSES or self._looks_like_record(tokens):
            self._in_summary = False
            if first in EVENT_CLASSES:
                return self.release_held() + self._event(first, tokens)
            fields = self._parse_record(line, tokens, received_at)  # raises before the held record is released
            self._previous_was_record = True
            return self.hold(line, received_at, fields)
        if self._skippable(line, first):
            return self.release_held()
        # A line of its own right after a record: the wrapped remainder of an inline caller name.
        if (self.held is not None or previous_was_record) and len(line.strip()) <= MAX_NAME_REMAINDER:
            return self._attach_name(line.strip(), line, "wrapped")
        if self._in_summary:
            return self.release_held()
        raise SmdrParseError(f"not an NEC SMDR line (unknown class {first[:12]!r})")

    def _looks_like_record(self, tokens: list[str]) -> bool:
        """A class code this parser does not know, followed by a time: still a call record (direction unknown)."""
        return bool(_CLASS_LIKE.match(tokens[0])) and len(tokens) > 1 and bool(_TIME.match(tokens[1]))

    def _skippable(self, line: str, first: str) -> bool:
        """Page header (remember its date), CLASS titles, summaries, separators, modem noise."""
        if first.upper() == "CLASS":
            self._in_summary = False
            return True
        if _PAGE_HEADER.search(line):
            self._in_summary = False
            if page_date := _PAGE_DATE.search(line):
                month, day, year = (int(part) for part in page_date.groups())
                try:
                    self._page_date = date(year, month, day)
                    self.note_context("page_date")
                except ValueError:
                    log.warning("nec page header with a bad date", link=self.link, date=page_date.group(0))
            return True
        if _SUMMARY.match(line):
            self._in_summary = True
            return True
        return bool(_SEPARATOR.match(line) or _MODEM_NOISE.match(line))

    def _attach_name(self, text: str, line: str, how: str) -> list[CallRecord]:
        """`NEXT <name>` or the wrapped remainder of an inline name → the held record's extra.caller_name, and
        the record is released; with nothing to attach to, the line is dropped (counted), never an error."""
        held = self.held
        inline = held.fields["extra"].get("caller_name") if held is not None else None
        if held is None or (how == "wrapped" and not inline):
            self.event_counts[f"{how}_unattached"] += 1
            log.info("nec caller name line without a record to attach to, dropped", link=self.link, kind=how)
            return self.release_held()
        extra = dict(held.fields["extra"])
        if how == "next":
            if inline and not text.startswith(inline):
                extra["inline_name"] = inline
            if text:
                extra["caller_name"] = text
        else:
            extra["caller_name"] = f"{inline}{text}" if inline else text
        extra.setdefault("continuation_lines", []).append(line)
        held.fields["extra"] = extra
        return self.release_held()

    def _event(self, code: str, tokens: list[str]) -> list[CallRecord]:
        """ALB (all lines busy), BFL (buffer full: records lost), SDTA/SAD/WAD: counted and logged, no record."""
        self.event_counts[code] += 1
        if code == BUFFER_FULL:
            log.warning("nec smdr buffer full: call records were lost", link=self.link)
        elif code == ALL_LINES_BUSY:
            group = next((token for token in tokens[2:] if not _DATE.match(token)), None)
            log.info("nec all lines in group busy", link=self.link, group=group)
        else:
            log.debug("nec internal data call skipped", link=self.link, call_class=code)
        return []

    # ---- records

    def _parse_record(self, line: str, tokens: list[str], received_at: datetime) -> dict[str, Any]:
        """The CallRecord fields of a call record line (held until the next line: a NEXT may follow)."""
        fields = self._read_columns(line) or self._read_tokens(tokens)
        call_class = tokens[0]
        received_local = local_now(received_at, self.tz)
        extra: dict[str, Any] = {"class": call_class, "mode": fields.mode}

        try:
            hour, minute = (int(part) for part in fields.time.split(":"))
            if hour > 23 or minute > 59:
                raise ValueError
        except ValueError as error:
            raise SmdrParseError(f"bad NEC time {fields.time!r}") from error
        if fields.date:
            date_match = _DATE.match(fields.date)
            assert date_match is not None  # the record's layout admits only a date here
            month, day = (int(part) for part in date_match.groups())
            year = self._year(month, day, received_local)
            try:
                naive = datetime(year, month, day, hour, minute)
            except ValueError as error:
                raise SmdrParseError(f"bad NEC date {fields.date!r}") from error
        else:  # ICM, or Date column off: the day it was received (yesterday if that puts it in the future)
            naive = received_local.replace(hour=hour, minute=minute, second=0, microsecond=0)
            if naive - received_local > TIME_ONLY_FUTURE_TOLERANCE:
                naive -= timedelta(days=1)
            extra["date_inferred"] = True
        start = to_utc(naive, self.tz, received_at)

        duration_s = None
        if fields.duration:
            try:
                duration_s = parse_duration(fields.duration)
            except ValueError as error:
                raise SmdrParseError(f"bad NEC duration {fields.duration!r}") from error
        end = start + timedelta(seconds=duration_s) if duration_s is not None else None

        direction = DIRECTION_BY_CLASS.get(call_class, Direction.UNKNOWN)
        if call_class in TRANSFER_CLASSES:
            extra["transferred"] = True
        if call_class not in DIRECTION_BY_CLASS:
            log.debug("nec unknown call class", link=self.link, call_class=call_class)

        account = None
        answered: bool | None = None
        account_text = fields.account.strip()
        if account_text.upper().startswith(NO_ANSWER):
            answered = False
        elif _ACCOUNT.match(account_text):
            account = account_text
        elif account_text:
            extra["caller_name"] = account_text
        if call_class == BRD:
            answered = False  # blocked by toll restriction: never connected
            extra["blocked"] = True
        elif answered is None and duration_s is not None and direction in (Direction.IN, Direction.INTERNAL):
            answered = True

        return dict(
            start=start,
            end=end,
            duration_s=float(duration_s) if duration_s is not None else None,
            extension=fields.station or None,
            other_number=fields.dialled or None,
            direction=direction,
            trunk=fields.line or None,
            account=account,
            answered=answered,
            extra=extra,
            # A trunk line carries one call at a time: a transfer's PTRS/ITRS record continues the record of
            # that line which ended when it began.
            leg_key=f"line {fields.line}" if self._merge_legs and fields.line else None,
            joins_leg=call_class in TRANSFER_CLASSES,
            leg_on_line=True,
        )

    def _year(self, month: int, day: int, received_local: datetime) -> int:
        """The page header's year — or the one next to it that puts MM/DD closest to the header's date."""
        if self._page_date is None:
            return infer_year(month, day, received_local)
        page = self._page_date
        candidates = []
        for year in (page.year - 1, page.year, page.year + 1):
            try:
                candidates.append((abs((date(year, month, day) - page).days), year))
            except ValueError:  # 29 February
                continue
        if not candidates:
            raise SmdrParseError(f"bad NEC date {month:02}/{day:02}")
        return min(candidates)[1]

    def _read_columns(self, line: str) -> _Fields | None:
        padded = line.ljust(LINE_WIDTH)
        if any(padded[index] != " " for index in SEPARATOR_INDEXES):
            return None
        if not _TIME.match(padded[COL_TIME]):
            return None
        date_text = ""
        if self._date_printed:
            if padded[DATE_SEPARATOR_INDEX] != " ":
                return None
            date_text = padded[COL_DATE].strip()
            if date_text and not _DATE.match(date_text):
                return None
            line_text = padded[COL_LINE].strip()
        else:
            line_text = padded[COL_LINE_NO_DATE].strip()
        duration = padded[COL_DURATION].strip()
        if duration and not _DURATION.match(duration):
            return None
        return _Fields(
            mode="columns",
            time=padded[COL_TIME],
            date=date_text,
            line=line_text,
            duration=duration,
            station=padded[COL_STATION].strip(),
            dialled=padded[COL_DIALLED].strip(),
            account=padded[COL_ACCOUNT].strip() + padded[COL_ACCOUNT.stop :].rstrip(),
        )

    @staticmethod
    def _read_tokens(tokens: list[str]) -> _Fields:
        """Class, time, [MM/DD], [line], [HH:MM:SS]; Station + Dialled with a duration, else Dialled; rest Account."""
        call_class = tokens[0]
        if len(tokens) < 2 or not _TIME.match(tokens[1]):
            raise SmdrParseError(f"NEC {call_class} record without a time (HH:MM)")
        fields = _Fields(mode="tokens", time=tokens[1])
        index = 2
        if index < len(tokens) and _DATE.match(tokens[index]):
            fields.date, index = tokens[index], index + 1
        if call_class != ICM and index < len(tokens) and _LINE.match(tokens[index]):
            fields.line, index = tokens[index], index + 1
        rest = tokens[index:]
        if rest and _DURATION.match(rest[0]):
            fields.duration, rest = rest[0], rest[1:]
            if rest and not _starts_no_answer(rest):
                fields.station, rest = rest[0], rest[1:]
        if rest and _NUMBER.match(rest[0]) and not _starts_no_answer(rest):
            fields.dialled, rest = rest[0], rest[1:]
        fields.account = " ".join(rest)
        return fields


@dataclass
class _Fields:
    mode: str
    time: str
    date: str = ""
    line: str = ""
    duration: str = ""
    station: str = ""
    dialled: str = ""
    account: str = ""


def _starts_no_answer(tokens: list[str]) -> bool:
    return " ".join(tokens[:2]).upper() == NO_ANSWER


def _flag(value: Any, option: str) -> bool:
    """A boolean option: YAML true/false, or yes/no/on/off/1/0 written as text."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{option}: must be true or false, not {value!r}")


PARSER = NecSvParser
