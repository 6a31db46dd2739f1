"""Response envelopes of the Verba-compatible API in XML, JSON, HTML and TEXT (docs/api.md §2).

Every value is treated as hostile: it is escaped for the output format so that no caller name,
dialled number or parameter can inject markup, XML or lines. Built with plain string joins,
because rendering sits on the hot path of every request.
"""

from __future__ import annotations

import enum
import functools
import html
import re
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii

from gateway.errors import ApiError

CODE_SUCCESS = 0
CODE_ERROR = 2

CONTENT_TYPE_XML = "application/xml; charset=utf-8"
CONTENT_TYPE_JSON = "application/json; charset=utf-8"
CONTENT_TYPE_HTML = "text/html; charset=utf-8"
CONTENT_TYPE_TEXT = "text/plain; charset=utf-8"

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
XML_ROOT = "VerbaApi"
XML_CALL_ID = "CallID"
XML_ERROR_MESSAGE = "ErrorMessage"
XML_CDR = "verbacdr"
XML_RECORDINGS = "recordings"
XML_RECORDING = "recording"
JSON_TOKEN = "token"
JSON_ERROR = "error"
TEXT_OK = "OK"
TEXT_ERROR_PREFIX = "ERROR: "
HTML_TITLE_PREFIX = "Verba API \u2013 "

INVALID_RESPONSE_TYPE = "Invalid value for parameter 'responseType'; use XML, JSON, HTML or TEXT"


class ResponseType(enum.StrEnum):
    XML = "XML"
    JSON = "JSON"
    HTML = "HTML"
    TEXT = "TEXT"

    @classmethod
    def parse(cls, value: str | None) -> ResponseType:
        """The `responseType` parameter, case-insensitive; missing or empty means XML."""
        if not value:
            return cls.XML
        # isascii() first: str.upper() maps some non-ASCII letters onto ASCII ones ("ſ" → "S").
        response_type = _RESPONSE_TYPES.get(value.upper()) if value.isascii() else None
        if response_type is None:
            raise ApiError(400, INVALID_RESPONSE_TYPE)  # never echo the value
        return response_type


_RESPONSE_TYPES = {member.value: member for member in ResponseType}


@dataclass(frozen=True, slots=True)
class CallIdPayload:
    call_id: str


@dataclass(frozen=True, slots=True)
class TokenPayload:
    token: str


@dataclass(frozen=True, slots=True)
class NoPayload:
    pass


@dataclass(frozen=True, slots=True)
class CallInformationPayload:
    state: int  # 0 ongoing, 1 finished
    # (element name, value or None = empty), in the order of docs/api.md §6
    fields: tuple[tuple[str, str | None], ...]
    # per recording: (element name, value) for id, native_id, start_time, end_time, manual
    recordings: tuple[tuple[tuple[str, str | None], ...], ...]


Payload = CallIdPayload | TokenPayload | NoPayload | CallInformationPayload


@dataclass(frozen=True, slots=True)
class RenderedResponse:
    body: bytes
    content_type: str


# ---- escaping ---------------------------------------------------------------------------------

# Lone surrogates cannot be encoded as UTF-8 at all; every format replaces them with U+FFFD.
_SURROGATES = re.compile("[\ud800-\udfff]")
# Characters outside the XML 1.0 `Char` production (HTML treats the same ones as parse errors).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Anything that needs work in XML: the invalid characters, the five specials, and TAB/LF/CR,
# which are written as character references so that attribute-value normalisation and
# end-of-line handling give back the exact value and every element stays on one line.
_XML_NEEDS_WORK = re.compile("[\x00-\x1f&<>\"'\ud800-\udfff\ufffe\uffff]")
_XML_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "'": "&apos;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)
# TEXT: percent-encode %, markup characters and every control character (C0, DEL, C1, and the
# Unicode line/paragraph separators, which some viewers break lines on). Quotes carry no markup
# without a tag, so our own messages ("Missing parameter 'status'") stay readable.
_TEXT_UNSAFE = re.compile("[%<>&\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _xml(value: str) -> str:
    if _XML_NEEDS_WORK.search(value) is None:
        return value
    return _XML_INVALID.sub("\ufffd", value).translate(_XML_ESCAPES)


def _json(value: str | None) -> str:
    """A JSON string literal (or null) that carries no raw `<`, `>` or `&` and only ASCII."""
    if value is None:
        return "null"
    if not value.isascii():
        value = _SURROGATES.sub("\ufffd", value)
    return encode_basestring_ascii(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _percent_encode(match: re.Match[str]) -> str:
    char = match.group()
    if "\ud800" <= char <= "\udfff":
        return "\ufffd"
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))


def _text(value: str) -> str:
    if _TEXT_UNSAFE.search(value) is None:
        return value
    return _TEXT_UNSAFE.sub(_percent_encode, value)


def _html(value: str) -> str:
    return html.escape(_XML_INVALID.sub("\ufffd", value), quote=True)


_SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.lru_cache(maxsize=256)
def _json_name(name: str) -> str:
    """Element name → JSON member name: snake_case → camelCase, first letter lower (CallID → callID).

    Element names are the gateway's own constants; this also refuses anything that is not a
    plain identifier, so a programming error can never emit an element name with markup.
    """
    if _SAFE_NAME.fullmatch(name) is None:
        raise ValueError(f"not a valid payload element name: {name!r}")
    first, *rest = name.split("_")
    return first[:1].lower() + first[1:] + "".join(part[:1].upper() + part[1:] for part in rest)


def _check_name(name: str) -> str:
    _json_name(name)  # validates (cached)
    return name


# ---- XML --------------------------------------------------------------------------------------

_XML_HEAD = f"{XML_DECLARATION}\n<{XML_ROOT}>\n"
_XML_TAIL = f"</{XML_ROOT}>\n"


def _xml_element(name: str, value: str | None) -> str:
    name = _check_name(name)
    return f"<{name}>{_xml(value) if value else ''}</{name}>\n"


def _xml_success(action: str, payload: Payload) -> str:
    response = f'<Response code="{CODE_SUCCESS}" type="{_xml(action)}"'
    if type(payload) is CallIdPayload:
        return f"{_XML_HEAD}{response}/>\n<{XML_CALL_ID}>{_xml(payload.call_id)}</{XML_CALL_ID}>\n{_XML_TAIL}"
    if type(payload) is TokenPayload:
        return f'{_XML_HEAD}{response} token="{_xml(payload.token)}"/>\n{_XML_TAIL}'
    if type(payload) is CallInformationPayload:
        parts = [_XML_HEAD, response, f'/>\n<{XML_CDR} state="{int(payload.state)}">\n']
        parts.extend(_xml_element(name, value) for name, value in payload.fields)
        parts.append(f"<{XML_RECORDINGS}>\n")
        for recording in payload.recordings:
            parts.append(f"<{XML_RECORDING}>\n")
            parts.extend(_xml_element(name, value) for name, value in recording)
            parts.append(f"</{XML_RECORDING}>\n")
        parts.append(f"</{XML_RECORDINGS}>\n</{XML_CDR}>\n{_XML_TAIL}")
        return "".join(parts)
    return f"{_XML_HEAD}{response}/>\n{_XML_TAIL}"


def _xml_error(action: str, message: str) -> str:
    return (
        f'{_XML_HEAD}<Response code="{CODE_ERROR}" type="{_xml(action)}">\n'
        f"<{XML_ERROR_MESSAGE}>{_xml(message)}</{XML_ERROR_MESSAGE}>\n</Response>\n{_XML_TAIL}"
    )


# ---- JSON -------------------------------------------------------------------------------------


def _json_members(members: tuple[tuple[str, str | None], ...]) -> str:
    return ", ".join(f'"{_json_name(name)}": {_json(value)}' for name, value in members)


def _json_success(action: str, payload: Payload) -> str:
    head = f'{{"code": {CODE_SUCCESS}, "type": {_json(action)}'
    if type(payload) is CallIdPayload:
        return f'{head}, "{_json_name(XML_CALL_ID)}": {_json(payload.call_id)}}}'
    if type(payload) is TokenPayload:
        return f'{head}, "{JSON_TOKEN}": {_json(payload.token)}}}'
    if type(payload) is CallInformationPayload:
        members = _json_members(payload.fields)
        recordings = ", ".join(f"{{{_json_members(recording)}}}" for recording in payload.recordings)
        separator = ", " if members else ""
        return (
            f'{head}, "{XML_CDR}": {{"state": {int(payload.state)}{separator}{members}, '
            f'"{_json_name(XML_RECORDINGS)}": [{recordings}]}}}}'
        )
    return f"{head}}}"


def _json_error(action: str, message: str) -> str:
    return f'{{"code": {CODE_ERROR}, "type": {_json(action)}, "{JSON_ERROR}": {_json(message)}}}'


# ---- TEXT -------------------------------------------------------------------------------------


def _text_success(payload: Payload) -> str:
    if type(payload) is CallIdPayload:
        return f"{_text(payload.call_id)}\n"
    if type(payload) is TokenPayload:
        return f"{_text(payload.token)}\n"
    if type(payload) is CallInformationPayload:
        lines = [TEXT_OK, f"state={int(payload.state)}"]
        lines.extend(f"{_check_name(name)}={_text(value) if value else ''}" for name, value in payload.fields)
        for number, recording in enumerate(payload.recordings, start=1):
            lines.extend(
                f"{XML_RECORDING}.{number}.{_check_name(name)}={_text(value) if value else ''}"
                for name, value in recording
            )
        lines.append("")
        return "\n".join(lines)
    return f"{TEXT_OK}\n"


def _text_error(message: str) -> str:
    return f"{TEXT_ERROR_PREFIX}{_text(message)}\n"


# ---- HTML -------------------------------------------------------------------------------------

_HTML_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
    "th,td{border:1px solid #999;padding:.2em .6em;text-align:left}.error{color:#b00}"
)


def _html_page(action: str, code: int, body: str) -> str:
    action = _html(action)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{HTML_TITLE_PREFIX}{action}</title>\n"
        f"<style>{_HTML_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{action}</h1>\n<p>Result code: {code}</p>\n{body}</body>\n</html>\n"
    )


def _html_rows(members: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(
        f"<tr><th>{_html(_check_name(name))}</th><td>{_html(value) if value else ''}</td></tr>\n"
        for name, value in members
    )


def _html_success(action: str, payload: Payload) -> str:
    if type(payload) is CallIdPayload:
        body = f"<table>\n<tr><th>{XML_CALL_ID}</th><td>{_html(payload.call_id)}</td></tr>\n</table>\n"
    elif type(payload) is TokenPayload:
        body = f"<table>\n<tr><th>{JSON_TOKEN}</th><td>{_html(payload.token)}</td></tr>\n</table>\n"
    elif type(payload) is CallInformationPayload:
        parts = [
            "<table>\n",
            f"<tr><th>state</th><td>{int(payload.state)}</td></tr>\n",
            _html_rows(payload.fields),
            "</table>\n",
        ]
        if payload.recordings:
            parts.append(f"<h2>{XML_RECORDINGS}</h2>\n<table>\n<tr>")
            parts.extend(f"<th>{_html(_check_name(name))}</th>" for name, _ in payload.recordings[0])
            parts.append("</tr>\n")
            for recording in payload.recordings:
                parts.append("<tr>")
                parts.extend(f"<td>{_html(value) if value else ''}</td>" for _, value in recording)
                parts.append("</tr>\n")
            parts.append("</table>\n")
        body = "".join(parts)
    else:
        body = f"<p>{TEXT_OK}</p>\n"
    return _html_page(action, CODE_SUCCESS, body)


def _html_error(action: str, message: str) -> str:
    return _html_page(action, CODE_ERROR, f'<p class="error">{_html(message)}</p>\n')


# ---- entry points -----------------------------------------------------------------------------


def render_success(response_type: ResponseType, action: str, payload: Payload) -> RenderedResponse:
    """The code-0 envelope of `action` carrying `payload`, in the requested format."""
    if response_type is ResponseType.XML:
        return RenderedResponse(_xml_success(action, payload).encode("utf-8"), CONTENT_TYPE_XML)
    if response_type is ResponseType.JSON:
        return RenderedResponse(_json_success(action, payload).encode("utf-8"), CONTENT_TYPE_JSON)
    if response_type is ResponseType.TEXT:
        return RenderedResponse(_text_success(payload).encode("utf-8"), CONTENT_TYPE_TEXT)
    return RenderedResponse(_html_success(action, payload).encode("utf-8"), CONTENT_TYPE_HTML)


def render_error(response_type: ResponseType, action: str, message: str) -> RenderedResponse:
    """The code-2 envelope of `action` carrying `message`, in the requested format."""
    if response_type is ResponseType.XML:
        return RenderedResponse(_xml_error(action, message).encode("utf-8"), CONTENT_TYPE_XML)
    if response_type is ResponseType.JSON:
        return RenderedResponse(_json_error(action, message).encode("utf-8"), CONTENT_TYPE_JSON)
    if response_type is ResponseType.TEXT:
        return RenderedResponse(_text_error(message).encode("utf-8"), CONTENT_TYPE_TEXT)
    return RenderedResponse(_html_error(action, message).encode("utf-8"), CONTENT_TYPE_HTML)
