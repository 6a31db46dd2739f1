"""Response envelopes: exact XML layout, escaping of hostile values in every format, GetCallInformation."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from gateway.api.render import (
    CONTENT_TYPE_HTML,
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_TEXT,
    CONTENT_TYPE_XML,
    CallIdPayload,
    CallInformationPayload,
    NoPayload,
    ResponseType,
    TokenPayload,
    render_error,
    render_success,
)
from gateway.errors import ApiError

CALL_ID = "a8343631-9f35-4a3a-83f0-9e81592339fb"
NOT_FOUND = "Unable to retrieve the call identifier, because the call cannot be found."
HOSTILE = "<script>alert(1)</script> \"]]> &amp; 'q' \x00\x01\x0b\x1f\x7f tab\tLF\nCR\r end"
CONTROL_REMOVED = {"\x00", "\x01", "\x0b", "\x1f"}  # not allowed in XML 1.0 → U+FFFD

CDR_NAMES = (
    "ccdr_id",
    "native_id",
    "platform_call_id",
    "source_caller_id",
    "destination_caller_id",
    "extension",
    "direction",
    "start_time",
    "connect_time",
    "end_time",
    "duration",
    "recording_mode",
    "ondemand",
    "kept",
    "manual",
    "do_not_delete",
    "recorded",
    "link",
)
CDR_CAMEL = (
    "ccdrId",
    "nativeId",
    "platformCallId",
    "sourceCallerId",
    "destinationCallerId",
    "extension",
    "direction",
    "startTime",
    "connectTime",
    "endTime",
    "duration",
    "recordingMode",
    "ondemand",
    "kept",
    "manual",
    "doNotDelete",
    "recorded",
    "link",
)
RECORDING_NAMES = ("id", "native_id", "start_time", "end_time", "manual")
RECORDING_CAMEL = ("id", "nativeId", "startTime", "endTime", "manual")


def _cdr_values(source_caller: str | None = "Alice <8856>") -> tuple[str | None, ...]:
    return (
        CALL_ID,
        "TRS26140192",
        "71627389",
        source_caller,
        "0123456789",
        "8856",
        "in",
        "2024-05-01T10:00:00+00:00",
        "2024-05-01T10:00:05+00:00",
        None,
        None,
        "on_demand",
        "1",
        "0",
        "0",
        "0",
        "1",
        "ipo-1",
    )


def _call_info(source_caller: str | None = "Alice <8856>", state: int = 0) -> CallInformationPayload:
    recordings = (
        tuple(zip(RECORDING_NAMES, ("r-1", "TRS1.1", "2024-05-01T10:00:05+00:00", "2024-05-01T10:01:00+00:00", "0"))),
        tuple(zip(RECORDING_NAMES, ("r-2", None, "2024-05-01T10:02:00+00:00", None, "1"))),
    )
    return CallInformationPayload(state, tuple(zip(CDR_NAMES, _cdr_values(source_caller))), recordings)


def _xml_expected_value(value: str) -> str:
    return "".join("\ufffd" if char in CONTROL_REMOVED else char for char in value)


# ---- exact XML ---------------------------------------------------------------------------------


def test_xml_get_call_id_success_is_byte_exact() -> None:
    rendered = render_success(ResponseType.XML, "GetCallID", CallIdPayload(CALL_ID))
    assert rendered.content_type == CONTENT_TYPE_XML
    assert rendered.body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b"<VerbaApi>\n"
        b'<Response code="0" type="GetCallID"/>\n'
        b"<CallID>a8343631-9f35-4a3a-83f0-9e81592339fb</CallID>\n"
        b"</VerbaApi>\n"
    )


def test_xml_error_is_byte_exact() -> None:
    rendered = render_error(ResponseType.XML, "GetCallID", NOT_FOUND)
    assert rendered.content_type == CONTENT_TYPE_XML
    assert rendered.body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b"<VerbaApi>\n"
        b'<Response code="2" type="GetCallID">\n'
        b"<ErrorMessage>Unable to retrieve the call identifier, because the call cannot be found.</ErrorMessage>\n"
        b"</Response>\n"
        b"</VerbaApi>\n"
    )


def test_xml_keep_call_success_is_byte_exact() -> None:
    rendered = render_success(ResponseType.XML, "KeepCall", NoPayload())
    assert rendered.body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<VerbaApi>\n<Response code="0" type="KeepCall"/>\n</VerbaApi>\n'
    )


def test_xml_request_token_is_byte_exact() -> None:
    rendered = render_success(ResponseType.XML, "RequestToken", TokenPayload("tok-_123"))
    assert rendered.body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<VerbaApi>\n'
        b'<Response code="0" type="RequestToken" token="tok-_123"/>\n</VerbaApi>\n'
    )


def test_xml_get_call_information_layout() -> None:
    body = render_success(ResponseType.XML, "GetCallInformation", _call_info()).body.decode()
    lines = body.splitlines()
    assert lines[:4] == [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<VerbaApi>",
        '<Response code="0" type="GetCallInformation"/>',
        '<verbacdr state="0">',
    ]
    assert lines[4] == f"<ccdr_id>{CALL_ID}</ccdr_id>"
    assert "<source_caller_id>Alice &lt;8856&gt;</source_caller_id>" in lines
    assert "<end_time></end_time>" in lines
    assert lines[-3:] == ["</recordings>", "</verbacdr>", "</VerbaApi>"]

    root = ET.fromstring(body.encode())
    cdr = root.find("verbacdr")
    assert cdr is not None and cdr.get("state") == "0"
    assert [child.tag for child in cdr] == [*CDR_NAMES, "recordings"]
    assert [(child.text or None) for child in cdr][:-1] == list(_cdr_values())
    recordings = cdr.find("recordings")
    assert recordings is not None and len(recordings) == 2
    assert [child.tag for child in recordings[0]] == list(RECORDING_NAMES)
    assert recordings[1].find("native_id") is not None and recordings[1].findtext("native_id") == ""
    assert recordings[1].findtext("manual") == "1"


# ---- hostile values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        HOSTILE,
        "<script>alert(1)</script>",
        '"]]>',
        "&amp;",
        "\x00\x08\x0b\x0c\x0e\x1f",
        "'single' \"double\"",
        "lone \ud800 surrogate \ufffe\uffff",
        "line1\r\nline2\rline3\n",
    ],
)
@pytest.mark.parametrize("where", ["call_id", "action", "error", "token", "cdr"])
def test_xml_parses_and_round_trips_hostile_values(value: str, where: str) -> None:
    removed = CONTROL_REMOVED | {"\x08", "\x0c", "\x0e", "\ufffe", "\uffff"}
    expected = "".join("\ufffd" if (char in removed or "\ud800" <= char <= "\udfff") else char for char in value)
    if where == "call_id":
        body = render_success(ResponseType.XML, "GetCallID", CallIdPayload(value)).body
        assert ET.fromstring(body).findtext("CallID") == expected
    elif where == "action":
        body = render_success(ResponseType.XML, value, NoPayload()).body
        response = ET.fromstring(body).find("Response")
        assert response is not None and response.get("type") == expected
    elif where == "error":
        body = render_error(ResponseType.XML, value, value).body
        response = ET.fromstring(body).find("Response")
        assert response is not None and response.get("type") == expected
        assert response.findtext("ErrorMessage") == expected
    elif where == "token":
        body = render_success(ResponseType.XML, "RequestToken", TokenPayload(value)).body
        response = ET.fromstring(body).find("Response")
        assert response is not None and response.get("token") == expected
    else:
        body = render_success(ResponseType.XML, value, _call_info(value)).body
        assert ET.fromstring(body).findtext("verbacdr/source_caller_id") == expected
    # one element per line, whatever the value carried
    assert all(line.startswith("<") and line.endswith(">") for line in body.decode().splitlines())


def _render_everything(response_type: ResponseType, value: str) -> list[bytes]:
    return [
        render_success(response_type, "GetCallID", CallIdPayload(value)).body,
        render_success(response_type, value, CallIdPayload(CALL_ID)).body,
        render_success(response_type, "RequestToken", TokenPayload(value)).body,
        render_success(response_type, value, NoPayload()).body,
        render_success(response_type, value, _call_info(value)).body,
        render_error(response_type, value, value).body,
        render_error(response_type, "GetCallID", value).body,
    ]


@pytest.mark.parametrize("response_type", list(ResponseType))
@pytest.mark.parametrize("value", [HOSTILE, "<script>alert(1)</script>", "<SCRIPT>", "\ud800<script>"])
def test_raw_script_tag_never_appears(response_type: ResponseType, value: str) -> None:
    for body in _render_everything(response_type, value):
        assert b"<script>" not in body.lower()
        body.decode("utf-8")  # always valid UTF-8, lone surrogates included


@pytest.mark.parametrize("response_type", list(ResponseType))
def test_content_types(response_type: ResponseType) -> None:
    expected = {
        ResponseType.XML: CONTENT_TYPE_XML,
        ResponseType.JSON: CONTENT_TYPE_JSON,
        ResponseType.HTML: CONTENT_TYPE_HTML,
        ResponseType.TEXT: CONTENT_TYPE_TEXT,
    }[response_type]
    assert render_success(response_type, "GetCallID", CallIdPayload(CALL_ID)).content_type == expected
    assert render_error(response_type, "GetCallID", NOT_FOUND).content_type == expected


# ---- JSON --------------------------------------------------------------------------------------


def test_json_get_call_id_shape() -> None:
    body = render_success(ResponseType.JSON, "GetCallID", CallIdPayload(CALL_ID)).body
    assert body == f'{{"code": 0, "type": "GetCallID", "callID": "{CALL_ID}"}}'.encode()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (CallIdPayload(CALL_ID), {"code": 0, "type": "A", "callID": CALL_ID}),
        (TokenPayload("t0k"), {"code": 0, "type": "A", "token": "t0k"}),
        (NoPayload(), {"code": 0, "type": "A"}),
    ],
)
def test_json_success_payloads(payload: CallIdPayload | TokenPayload | NoPayload, expected: dict) -> None:
    assert json.loads(render_success(ResponseType.JSON, "A", payload).body) == expected


@pytest.mark.parametrize("value", [HOSTILE, "<b>&amp;</b>", "ünïcödé – 日本 😀", '\\"/', ""])
def test_json_round_trips_values_without_raw_markup(value: str) -> None:
    for body in (
        render_success(ResponseType.JSON, value, CallIdPayload(value)).body,
        render_error(ResponseType.JSON, value, value).body,
    ):
        assert not re.search(rb"[<>&]", body)
        decoded = json.loads(body)
        assert decoded["type"] == value
        assert decoded.get("callID", decoded.get("error")) == value
    assert json.loads(render_error(ResponseType.JSON, "GetCallID", value).body) == {
        "code": 2,
        "type": "GetCallID",
        "error": value,
    }


def test_json_lone_surrogate_becomes_replacement_character() -> None:
    body = render_success(ResponseType.JSON, "GetCallID", CallIdPayload("a\ud800b")).body
    assert json.loads(body)["callID"] == "a\ufffdb"


def test_json_get_call_information() -> None:
    body = render_success(ResponseType.JSON, "GetCallInformation", _call_info("<Alice> & Bob", state=1)).body
    assert not re.search(rb"[<>&]", body)
    decoded = json.loads(body)
    assert decoded["code"] == 0 and decoded["type"] == "GetCallInformation"
    cdr = decoded["verbacdr"]
    assert list(cdr) == ["state", *CDR_CAMEL, "recordings"]
    assert cdr["state"] == 1
    assert [cdr[name] for name in CDR_CAMEL] == list(_cdr_values("<Alice> & Bob"))
    assert cdr["endTime"] is None
    assert [list(recording) for recording in cdr["recordings"]] == [list(RECORDING_CAMEL)] * 2
    assert cdr["recordings"][1] == {
        "id": "r-2",
        "nativeId": None,
        "startTime": "2024-05-01T10:02:00+00:00",
        "endTime": None,
        "manual": "1",
    }


def test_json_get_call_information_without_recordings() -> None:
    payload = CallInformationPayload(0, (("ccdr_id", "x"),), ())
    decoded = json.loads(render_success(ResponseType.JSON, "GetCallInformation", payload).body)
    assert decoded["verbacdr"] == {"state": 0, "ccdrId": "x", "recordings": []}


# ---- TEXT --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "payload", "expected"),
    [
        ("GetCallID", CallIdPayload(CALL_ID), f"{CALL_ID}\n"),
        ("RequestToken", TokenPayload("abc-_DEF"), "abc-_DEF\n"),
        ("KeepCall", NoPayload(), "OK\n"),
    ],
)
def test_text_success(action: str, payload: CallIdPayload | TokenPayload | NoPayload, expected: str) -> None:
    rendered = render_success(ResponseType.TEXT, action, payload)
    assert rendered.body.decode() == expected


def test_text_error() -> None:
    assert render_error(ResponseType.TEXT, "GetCallID", NOT_FOUND).body.decode() == f"ERROR: {NOT_FOUND}\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a\r\nb", "a%0D%0Ab"),
        ("<b>&\"'%", "%3Cb%3E%26\"'%25"),  # quotes stay: no markup without a tag
        ("tab\tnul\x00del\x7fnel\x85ls\u2028", "tab%09nul%00del%7Fnel%C2%85ls%E2%80%A8"),
        ("ünïcödé 日本", "ünïcödé 日本"),
        ("x\ud800y", "x\ufffdy"),
    ],
)
def test_text_percent_encodes_unsafe_characters(value: str, expected: str) -> None:
    assert render_success(ResponseType.TEXT, "GetCallID", CallIdPayload(value)).body.decode() == f"{expected}\n"
    assert render_error(ResponseType.TEXT, "GetCallID", value).body.decode() == f"ERROR: {expected}\n"


@pytest.mark.parametrize("value", [HOSTILE, "x\nERROR: forged", "\u2028\u2029\x85\x0b\x0c\x1c"])
def test_text_has_no_injected_lines(value: str) -> None:
    assert len(render_success(ResponseType.TEXT, "GetCallID", CallIdPayload(value)).body.decode().splitlines()) == 1
    assert len(render_error(ResponseType.TEXT, "GetCallID", value).body.decode().splitlines()) == 1
    info = render_success(ResponseType.TEXT, "GetCallInformation", _call_info(value)).body.decode()
    assert len(info.splitlines()) == 1 + 1 + len(CDR_NAMES) + 2 * len(RECORDING_NAMES)


def test_text_get_call_information() -> None:
    body = render_success(ResponseType.TEXT, "GetCallInformation", _call_info()).body.decode()
    lines = body.splitlines()
    assert lines[0] == "OK"
    assert lines[1] == "state=0"
    assert lines[2 : 2 + len(CDR_NAMES)] == [
        f"{name}={'' if value is None else value.replace('<', '%3C').replace('>', '%3E')}"
        for name, value in zip(CDR_NAMES, _cdr_values())
    ]
    assert lines[2 + len(CDR_NAMES) :] == [
        "recording.1.id=r-1",
        "recording.1.native_id=TRS1.1",
        "recording.1.start_time=2024-05-01T10:00:05+00:00",
        "recording.1.end_time=2024-05-01T10:01:00+00:00",
        "recording.1.manual=0",
        "recording.2.id=r-2",
        "recording.2.native_id=",
        "recording.2.start_time=2024-05-01T10:02:00+00:00",
        "recording.2.end_time=",
        "recording.2.manual=1",
    ]


# ---- HTML --------------------------------------------------------------------------------------


PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "tr", "th", "td"}


class _PageParser(HTMLParser):
    """Collects the start tags, the title and the text of table cells and paragraphs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.cells: list[str] = []
        self.title = ""
        self.errors: list[str] = []
        self._current: str | None = None
        self._error = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in ("td", "th", "title"):
            self._current = ""
        self._error = tag == "p" and ("class", "error") in attrs
        if self._error:
            self._current = ""

    def handle_endtag(self, tag: str) -> None:
        if self._current is not None and tag in ("td", "th", "title", "p"):
            if tag == "title":
                self.title = self._current
            elif tag == "p" and self._error:
                self.errors.append(self._current)
            elif tag != "p":
                self.cells.append(self._current)
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._current += data


def _parse_html(body: bytes) -> _PageParser:
    parser = _PageParser()
    parser.feed(body.decode("utf-8"))
    parser.close()
    return parser


def test_html_page_structure() -> None:
    rendered = render_success(ResponseType.HTML, "GetCallID", CallIdPayload(CALL_ID))
    text = rendered.body.decode()
    assert text.startswith("<!DOCTYPE html>\n")
    assert '<html lang="en">' in text and '<meta charset="utf-8">' in text
    page = _parse_html(rendered.body)
    assert page.title == "Verba API \u2013 GetCallID"
    assert "table" in page.tags
    assert page.cells == ["CallID", CALL_ID]
    assert "Result code: 0" in text


def test_html_error_page() -> None:
    page = _parse_html(render_error(ResponseType.HTML, "KeepCall", NOT_FOUND).body)
    assert page.errors == [NOT_FOUND]
    assert page.title == "Verba API \u2013 KeepCall"


@pytest.mark.parametrize("value", [HOSTILE, "<img src=x onerror=alert(1)>", "\"'><b>"])
def test_html_escapes_every_value(value: str) -> None:
    expected = "".join("\ufffd" if char in CONTROL_REMOVED else char for char in value)
    success = render_success(ResponseType.HTML, value, CallIdPayload(value)).body
    page = _parse_html(success)
    assert page.title == f"Verba API \u2013 {expected}"
    assert page.cells == ["CallID", expected]
    assert set(page.tags) <= PAGE_TAGS
    error = _parse_html(render_error(ResponseType.HTML, value, value).body)
    assert error.errors == [expected]
    assert b"<img" not in success and b"<b>" not in success


def test_html_get_call_information() -> None:
    page = _parse_html(render_success(ResponseType.HTML, "GetCallInformation", _call_info()).body)
    first_table = page.cells[: 2 * (1 + len(CDR_NAMES))]
    assert first_table[:2] == ["state", "0"]
    assert first_table[2::2] == list(CDR_NAMES)
    assert first_table[3::2] == ["" if value is None else value for value in _cdr_values()]
    assert page.cells[2 * (1 + len(CDR_NAMES)) :] == [
        *RECORDING_NAMES,
        "r-1",
        "TRS1.1",
        "2024-05-01T10:00:05+00:00",
        "2024-05-01T10:01:00+00:00",
        "0",
        "r-2",
        "",
        "2024-05-01T10:02:00+00:00",
        "",
        "1",
    ]


@pytest.mark.parametrize("response_type", [ResponseType.HTML, ResponseType.XML, ResponseType.JSON, ResponseType.TEXT])
def test_get_call_information_every_format_renders(response_type: ResponseType) -> None:
    for state in (0, 1):
        rendered = render_success(response_type, "GetCallInformation", _call_info(state=state))
        assert rendered.body
        assert "Alice" in rendered.body.decode()


def test_invalid_payload_element_name_is_refused() -> None:
    payload = CallInformationPayload(0, (("bad><x", "v"),), ())
    for response_type in ResponseType:
        with pytest.raises(ValueError):
            render_success(response_type, "GetCallInformation", payload)


# ---- ResponseType.parse ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ResponseType.XML),
        ("", ResponseType.XML),
        ("XML", ResponseType.XML),
        ("xml", ResponseType.XML),
        ("Json", ResponseType.JSON),
        ("html", ResponseType.HTML),
        ("tExT", ResponseType.TEXT),
    ],
)
def test_response_type_parse(value: str | None, expected: ResponseType) -> None:
    assert ResponseType.parse(value) is expected


@pytest.mark.parametrize("value", ["CSV", " XML", "XML ", "JſON", "<script>", "x" * 5000])
def test_response_type_parse_rejects_without_echo(value: str) -> None:
    with pytest.raises(ApiError) as caught:
        ResponseType.parse(value)
    assert caught.value.http_status == 400
    assert caught.value.message == "Invalid value for parameter 'responseType'; use XML, JSON, HTML or TEXT"
