"""How a link's lines and records are shown to installers (`gateway tap`, the live tap of a running gateway)."""

from __future__ import annotations

from datetime import datetime

from gateway.events import CallRecord


def printable(raw: bytes) -> str:
    """The raw line as latin-1 text with control bytes shown as \\xNN, so the installer sees exactly what came."""
    return "".join(ch if " " <= ch <= "~" or ch >= "\xa0" else f"\\x{ord(ch):02x}" for ch in raw.decode("latin-1"))


def describe(record: CallRecord) -> str:
    def when(value: datetime | None) -> str:
        return value.isoformat(timespec="seconds") if value else "?"

    parts = [
        f"start={when(record.start)}",
        f"end={when(record.end)}",
        f"ext={record.extension or '-'}",
        f"other={record.other_number or '-'}",
        f"dir={record.direction.value}",
    ]
    if record.platform_call_id:
        parts.append(f"pcid={record.platform_call_id}" + ("+" if record.more_follows else ""))
    if record.duration_s is not None:
        parts.append(f"talk={record.duration_s:g}s")
    if record.ring_s is not None:
        parts.append(f"ring={record.ring_s:g}s")
    if record.trunk:
        parts.append(f"trunk={record.trunk}")
    if record.account:
        parts.append(f"account={record.account}")
    if record.answered is not None:
        parts.append(f"answered={'yes' if record.answered else 'no'}")
    return " ".join(parts)
