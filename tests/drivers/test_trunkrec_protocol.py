"""TRUNKREC/1 wire format: framing with resync, parsing, encoding (docs/trunkrec.md)."""

from __future__ import annotations

import pytest

from drivers.trunkrec import protocol as p


def lines(framer: p.LineFramer, *chunks: bytes) -> list[str | str]:
    out = []
    for chunk in chunks:
        out.extend(item if isinstance(item, str) else f"error: {item}" for item in framer.feed(chunk))
    return out


def test_crlf_and_bare_lf_end_lines_and_reads_may_split_anywhere():
    framer = p.LineFramer()
    assert lines(framer, b"HELLO TRUNK", b"REC/1 channels=60\r", b"\nEVT SYNC\nEVT CALL 1/5 CONNECT id=X\r\n") == [
        "HELLO TRUNKREC/1 channels=60",
        "EVT SYNC",
        "EVT CALL 1/5 CONNECT id=X",
    ]


def test_over_long_line_is_one_error_then_resync():
    framer = p.LineFramer()
    long_line = b"X" * 3000
    out = lines(framer, long_line[:1500], long_line[1500:] + b"\r\nEVT SYNC\r\n")
    assert out == ["error: line too long", "EVT SYNC"]
    assert framer.framing_errors == 1


def test_line_of_exactly_1024_bytes_is_accepted():
    framer = p.LineFramer()
    line = b"a1 OK x=" + b"y" * (1024 - 8)
    assert lines(framer, line + b"\r\n") == [line.decode()]


def test_non_printable_bytes_spoil_only_their_line():
    framer = p.LineFramer()
    assert lines(framer, b"EVT \x00SYNC\r\nEVT SYNC\r\n\xff\xfe\r\n") == [
        "error: non-printable bytes in line",
        "EVT SYNC",
        "error: non-printable bytes in line",
    ]


def test_blank_lines_are_skipped():
    assert lines(p.LineFramer(), b"\r\n\r\nEVT SYNC\r\n") == ["EVT SYNC"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "HELLO TRUNKREC/1 channels=60 name=sim1",
            p.Hello("TRUNKREC/1", 60, "sim1", {"channels": "60", "name": "sim1"}),
        ),
        ("a1 OK rec=R000017", p.Reply("a1", True, {"rec": "R000017"})),
        ("a2 OK rec=R000017 dur=42", p.Reply("a2", True, {"rec": "R000017", "dur": "42"})),
        ("a3 ERR NOCALL no call on channel", p.Reply("a3", False, code="NOCALL", text="no call on channel")),
        ("a4 ERR BUSY", p.Reply("a4", False, code="BUSY", text="")),
        ("EVT SYNC", p.Event("SYNC")),
        (
            "EVT CALL 1/5 SETUP id=TRS26140192 calling=01707392200 called=8856 dir=in ts=2026-11-23T10:00:01Z",
            p.Event(
                "CALL",
                "1/5",
                "SETUP",
                {
                    "id": "TRS26140192",
                    "calling": "01707392200",
                    "called": "8856",
                    "dir": "in",
                    "ts": "2026-11-23T10:00:01Z",
                },
            ),
        ),
        ("EVT REC 1/5 STOPPED rec=R000017 dur=42", p.Event("REC", "1/5", "STOPPED", {"rec": "R000017", "dur": "42"})),
        ("EVT ALARM 1 LOS", p.Event("ALARM", "1", "LOS")),
        (
            "EVT CALL 1/5 SETUP id=X calling=John%20Smith%25 called=8856 dir=in",
            p.Event("CALL", "1/5", "SETUP", {"id": "X", "calling": "John Smith%", "called": "8856", "dir": "in"}),
        ),
    ],
)
def test_parse_device_lines(line, expected):
    assert p.parse_device_line(line) == expected


@pytest.mark.parametrize(
    "line", ["", "EVT", "EVT BOGUS 1/5", "EVT CALL 1/5", "a1", "a1 MAYBE", "a1 ERR", "bad-tag! OK", "x" * 17 + " OK"]
)
def test_malformed_device_lines_raise_protocol_error(line):
    with pytest.raises(p.ProtocolError):
        p.parse_device_line(line)


def test_encoding_round_trips_and_percent_encodes_spaces():
    wire = p.encode_event(p.EVT_CALL, "1/5", p.CALL_SETUP, id="X1", calling="John Smith 100%", called="8856", dir="in")
    assert wire == b"EVT CALL 1/5 SETUP id=X1 calling=John%20Smith%20100%25 called=8856 dir=in\r\n"
    assert p.parse_device_line(wire.decode().rstrip("\r\n")).fields["calling"] == "John Smith 100%"


def test_requests_encode_and_parse():
    wire = p.encode_request("a1", p.START, "1/5", ref="a8343631-9f35-4a3a-83f0-9e81592339fb")
    assert wire == b"a1 START 1/5 ref=a8343631-9f35-4a3a-83f0-9e81592339fb\r\n"
    assert p.parse_request_line(wire.decode().strip()) == p.Request(
        "a1", "START", ("1/5",), {"ref": "a8343631-9f35-4a3a-83f0-9e81592339fb"}
    )
    with pytest.raises(p.ProtocolError):
        p.encode_request("tag-with-dash", p.PING)


def test_err_text_stays_on_one_printable_line():
    assert p.encode_err("a1", p.HWFAIL, "disk\r\nEVT SYNC") == b"a1 ERR HWFAIL disk  EVT SYNC\r\n"
