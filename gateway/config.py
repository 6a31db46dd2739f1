"""YAML configuration → frozen dataclasses; every error names the file, line and key (docs/configuration.md)."""

from __future__ import annotations

import codecs
import ipaddress
import math
import os
import re
import ssl
import uuid
import zoneinfo
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.errors import ConfigError
from gateway.model import RecordingMode
from gateway.passwords import parse_password_hash

DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8010
DEFAULT_STORE_PATH = "var/gateway.db"
DEFAULT_TOKEN_TTL_S = 3600
DEFAULT_NEXT_WINDOW_S = 60.0
MAX_ON_DEMAND_RETENTION_S = 48 * 3600
DAY_S = 86400
# store.retention defaults (docs/configuration.md): calls are kept for ever unless the file says otherwise; raw journal
# lines and quarantined lines are troubleshooting material, kept 90 days.
DEFAULT_CALLS_RETENTION_S: float | None = None
DEFAULT_JOURNAL_RETENTION_S: float | None = 90 * DAY_S
DEFAULT_QUARANTINE_RETENTION_S: float | None = 90 * DAY_S
RETENTION_FOREVER = "forever"
DEFAULT_RECORDER_TIMEOUT_S = 2.0
LINK_FORMATS = ("avaya-ipo", "panasonic", "nec-sv", "mitel-mivb", "3cx", "custom")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    certfile: Path
    keyfile: Path


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = DEFAULT_HTTP_HOST
    port: int = DEFAULT_HTTP_PORT
    tls: TlsConfig | None = None


STORE_SYNC_MODES = ("full", "normal")
DEFAULT_STORE_SYNC = "full"
DEFAULT_LOG_LEVEL = "info"
DEFAULT_LOG_FORMAT = "console"


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """How long the store keeps rows, in seconds; None = for ever. What is never pruned: docs/configuration.md."""

    calls_s: float | None = DEFAULT_CALLS_RETENTION_S  # finished calls, by end time
    journal_s: float | None = DEFAULT_JOURNAL_RETENTION_S  # raw link lines, by arrival time
    quarantine_s: float | None = DEFAULT_QUARANTINE_RETENTION_S  # quarantined lines, by arrival time


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path = Path(DEFAULT_STORE_PATH)
    # full: every commit is on disk before it is acknowledged, power loss included (fsync per commit).
    # normal: commits survive a crash or kill of the gateway, but the last ones may be lost if the
    # machine itself loses power; saves the fsync (~0.3–1 ms) on each KeepCall answer.
    sync: str = DEFAULT_STORE_SYNC
    retention: RetentionConfig = field(default_factory=RetentionConfig)


@dataclass(frozen=True, slots=True)
class ApiKeyConfig:
    key: str  # GUID, lower-cased
    name: str  # 3–128 characters
    require_token: bool = False
    # None = any address. Entries are ip_network objects (a bare address is a /32 or /128)
    # or host names (str), resolved when a request is checked.
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | str, ...] | None = None


@dataclass(frozen=True, slots=True)
class UserConfig:
    name: str
    password_hash: str
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class ApiConfig:
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    next_window_s: float = DEFAULT_NEXT_WINDOW_S
    keys: tuple[ApiKeyConfig, ...] = ()
    users: tuple[UserConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class OnDemandConfig:
    retention_s: float = MAX_ON_DEMAND_RETENTION_S


@dataclass(frozen=True, slots=True)
class ExtensionConfig:
    number: str
    mode: RecordingMode
    recorder: str | None = None  # resolved: the recorder's name when a channel is given
    channel: str | None = None  # "<span>/<timeslot>"


@dataclass(frozen=True, slots=True)
class SerialSettings:
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    xonxoff: bool = False
    rtscts: bool = False


@dataclass(frozen=True, slots=True)
class LoginStep:
    expect: str
    send: str


@dataclass(frozen=True, slots=True)
class LinkConfig:
    name: str
    format: str  # one of LINK_FORMATS
    url: str
    timezone: str | None = None  # None: the machine's zone
    serial: SerialSettings | None = None  # local serial and rfc2217 only
    login: tuple[LoginStep, ...] = ()  # tcp:// only
    options: Mapping[str, Any] = field(default_factory=dict)  # format-specific keys (custom format, …)
    line: int | None = None  # where the link is defined, for later error messages


@dataclass(frozen=True, slots=True)
class RecorderConfig:
    name: str
    url: str  # tcp://HOST:PORT or a serial port path / pySerial URL
    timeout_s: float = DEFAULT_RECORDER_TIMEOUT_S
    serial: SerialSettings | None = None  # local serial and rfc2217 only (defaults when not given)
    line: int | None = field(default=None, compare=False)  # where the recorder is defined


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = DEFAULT_LOG_LEVEL  # debug | info | warning | error
    format: str = DEFAULT_LOG_FORMAT  # console | json


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    source: Path  # the file this came from
    http: HttpConfig = field(default_factory=HttpConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    on_demand: OnDemandConfig = field(default_factory=OnDemandConfig)
    extensions: tuple[ExtensionConfig, ...] = ()
    links: tuple[LinkConfig, ...] = ()
    recorders: tuple[RecorderConfig, ...] = ()
    log: LogConfig = field(default_factory=LogConfig)

    def extension(self, number: str) -> ExtensionConfig | None:
        for extension in self.extensions:
            if extension.number == number:
                return extension
        return None


# ---- loading and validation (below) ----

TOP_LEVEL_KEYS = ("http", "store", "api", "on_demand", "extensions", "links", "recorders", "log")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")
SERIAL_PARITIES = ("N", "E", "O", "M", "S")
SERIAL_BYTESIZES = (5, 6, 7, 8)
SERIAL_STOPBITS = (1, 1.5, 2)
SERIAL_KEYS = ("baudrate", "bytesize", "parity", "stopbits", "xonxoff", "rtscts")
# Keys a `format: custom` link takes directly; the custom parser documents their meaning.
CUSTOM_FORMAT_KEYS = (
    "mode", "encoding", "terminator", "strip", "skip_first", "skip_regex", "record_regex", "min_length",
    "attach_regex", "attach_to", "delimiter", "quotechar", "min_fields", "fields", "columns", "pattern",
    "date_format", "time_format", "datetime_format", "year", "time_is", "duration_format", "direction_map",
    "internal_if", "platform_call_id_field", "more_follows_field", "more_follows_value",
)
_CUSTOM_REGEX_KEYS = ("skip_regex", "record_regex", "attach_regex", "pattern")
_CUSTOM_COUNT_KEYS = ("skip_first", "min_length", "min_fields")
LINK_KEYS = (
    "name", "format", "url", "timezone", *SERIAL_KEYS, "login", "options", "idle_timeout", "keepalive",
    "correlation_window",
)
RECORDER_KEYS = ("name", "url", "timeout", *SERIAL_KEYS)
MAX_PROBLEMS_LISTED = 20  # a file with more problems than this is listed in part

# URL kinds, as `_url_kind` classifies them.
URL_LISTEN = "listen"
URL_TCP = "tcp"
URL_SERIAL = "serial"  # a local serial port path
URL_RFC2217 = "rfc2217"
URL_SOCKET = "socket"
_URL_FORM_TEXT = {
    URL_LISTEN: "listen://HOST:PORT",
    URL_TCP: "tcp://HOST:PORT",
    URL_SERIAL: "a serial port path such as /dev/ttyUSB0",
    URL_RFC2217: "rfc2217://HOST:PORT",
    URL_SOCKET: "socket://HOST:PORT",
}
LINK_URL_KINDS = (URL_LISTEN, URL_TCP, URL_SERIAL, URL_RFC2217, URL_SOCKET)
RECORDER_URL_KINDS = (URL_TCP, URL_SERIAL, URL_RFC2217, URL_SOCKET)
_NETWORK_URL = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[^\s:/?#\[\]@]*))"
    r"(?::(?P<port>[^/?#]*))?(?P<rest>[/?#].*)?",
    re.DOTALL,
)
_ANY_SCHEME = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP = (_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp"))
_MAP, _SEQ, _MERGE = _TAG + "map", _TAG + "seq", _TAG + "merge"
_DECIMAL = re.compile(r"[-+]?[0-9][0-9_]*")
_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?")
# A sign is accepted so that "-5h" is refused as "must be greater than 0", not as "not a duration".
_DURATION = re.compile(r"(?P<amount>[-+]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+))\s*(?P<unit>[smhdw]?)")
_DURATION_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": DAY_S, "w": 7 * DAY_S}
_DURATION_FORMS = "seconds, or a number with s, m, h, d or w (48h, 90m, 3600s, 90d, 26w)"
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DIAL_STRING = re.compile(r"\+?[0-9*#]+")
_CHANNEL = re.compile(r"([0-9]+)/([0-9]+)")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_KEY_NAME_LENGTH = (3, 128)


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a configuration file; any problem raises ConfigError naming file, line and key.

    When the file has several problems, the ConfigError's first line is the first of them (by line)
    in the `FILE:LINE: KEY: message` form and each further line is another one; the individual
    errors are on its `problems` attribute.
    """
    source = Path(path)
    file = str(path)
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise ConfigError("no such file", file=file) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a configuration file", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", file=file) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("the file is not UTF-8 text", file=file, line=line) from None
    reader = _Reader(file, source.absolute().parent)
    config = None
    try:
        config = reader.gateway(_compose(text, file), source)
    except ConfigError as problem:
        reader.problems.append(problem)
    reader.raise_problems()
    assert config is not None
    return config


def _compose(text: str, file: str) -> Node | None:
    """YAML text → node tree (with line marks); syntax errors become ConfigError."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        context = f" ({exc.context})" if exc.problem and exc.context else ""
        lines = text.splitlines()
        source_line = lines[line - 1] if line is not None and 0 < line <= len(lines) else ""
        hint = '; an IPv6 address inside [...] must be quoted, e.g. ["::1"]' if "::" in source_line else ""
        raise ConfigError(f"YAML syntax error: {problem}{context}{hint}", file=file, line=line) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(
            f"YAML syntax error: {exc.reason} (character U+{character:04X})", file=file, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML syntax error: {exc}", file=file) from None


class _AlreadyReported(ConfigError):
    """Drops the item being read: the problem that makes it unusable is already on the list."""


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(node: Node, *, echo: bool = True) -> str:
    """How to name what was found, for 'must be …' messages (echo=False: never repeat a scalar's text)."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "empty (null)"
    return repr(node.value) if echo else "a single value"


def _is_null(node: Node | None) -> bool:
    return node is None or (isinstance(node, ScalarNode) and node.tag == _NULL)


class _Map:
    """A YAML mapping node: keys are checked for duplicates (and later for unknown names); values stay nodes.

    Merge keys (`<<: *anchor`) are honoured: merged entries fill keys the mapping does not give itself.
    """

    def __init__(self, reader: _Reader, node: MappingNode, path: str):
        self.reader = reader
        self.node = node
        self.path = path
        self.line = _line(node)
        self.entries: dict[str, tuple[ScalarNode, Node]] = {}
        merged: list[tuple[str, ScalarNode, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.extend(self._merged(value_node))
                continue
            if not isinstance(key_node, ScalarNode):
                reader.report(key_node, path, "a key must be a plain name, not a list or mapping")
                continue
            name = key_node.value
            if name in self.entries:
                first_line = _line(self.entries[name][0])
                reader.report(
                    key_node, _child(path, name), f"duplicate key '{name}' (already given on line {first_line})"
                )
                continue
            self.entries[name] = (key_node, value_node)
        for name, key_node, value_node in merged:
            self.entries.setdefault(name, (key_node, value_node))

    def _merged(self, value: Node) -> list[tuple[str, ScalarNode, Node]]:
        sources = value.value if isinstance(value, SequenceNode) else [value]
        entries: list[tuple[str, ScalarNode, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                self.reader.report(source, self.path, "a merge key (<<) must refer to a mapping")
                continue
            inner = _Map(_Reader(self.reader.file, self.reader.base_dir), source, self.path)
            entries.extend((name, key_node, value_node) for name, (key_node, value_node) in inner.entries.items())
        return entries

    def refuse_unknown(self, allowed: Collection[str], hint: str = "") -> None:
        for name, (key_node, _value) in self.entries.items():
            if name not in allowed:
                expected = ", ".join(allowed)
                self.reader.report(
                    key_node, _child(self.path, name), f"unknown key '{name}'; expected one of: {expected}{hint}"
                )

    def key(self, name: str) -> str:
        return _child(self.path, name)

    def get(self, name: str) -> Node | None:
        entry = self.entries.get(name)
        return entry[1] if entry else None

    def given(self, name: str) -> Node | None:
        """The value node, or None when the key is absent or null."""
        node = self.get(name)
        return None if _is_null(node) else node

    def key_line(self, name: str) -> int:
        return _line(self.entries[name][0])

    def require(self, name: str, why: str = "is required") -> Node:
        node = self.get(name)
        if node is None:
            raise self.reader.error(self.line, self.key(name), why)
        return node


class _Reader:
    """Walks the node tree of one file, building the dataclasses and collecting problems."""

    def __init__(self, file: str, base_dir: Path):
        self.file = file
        self.base_dir = base_dir
        self.problems: list[ConfigError] = []

    # -- problems

    def error(self, where: Node | int | None, key: str | None, message: str) -> ConfigError:
        line = _line(where) if isinstance(where, Node) else where
        return ConfigError(message, file=self.file, line=line, key=key or None)

    def report(self, where: Node | int | None, key: str | None, message: str) -> None:
        self.problems.append(self.error(where, key, message))

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Record a ConfigError raised inside and carry on with the next section or item."""
        try:
            yield
        except _AlreadyReported:
            pass
        except ConfigError as problem:
            self.problems.append(problem)

    def raise_problems(self) -> None:
        if not self.problems:
            return
        problems = sorted(self.problems, key=lambda problem: problem.line or 0)
        first = problems[0]
        listed = [str(problem) for problem in problems[1:MAX_PROBLEMS_LISTED]]
        if len(problems) > MAX_PROBLEMS_LISTED:
            listed.append(f"… and {len(problems) - MAX_PROBLEMS_LISTED} more problems")
        message = "\n".join([first.reason, *listed])
        error = ConfigError(message, file=first.file, line=first.line, key=first.key)
        error.problems = tuple(problems)  # type: ignore[attr-defined]
        raise error

    # -- node shapes

    def mapping(self, node: Node, path: str, allowed: Collection[str] | None = None, hint: str = "") -> _Map:
        if not isinstance(node, MappingNode) or node.tag != _MAP:
            raise self.error(node, path, f"must be a mapping (key: value lines), not {_kind(node, echo=False)}")
        mapping = _Map(self, node, path)
        if allowed is not None:
            mapping.refuse_unknown(allowed, hint)
        return mapping

    def sequence(self, node: Node, path: str) -> list[Node]:
        if not isinstance(node, SequenceNode) or node.tag != _SEQ:
            raise self.error(node, path, f"must be a list, not {_kind(node, echo=False)}")
        return list(node.value)

    def scalar(self, node: Node, path: str, what: str) -> ScalarNode:
        if not isinstance(node, ScalarNode):
            raise self.error(node, path, f"must be {what}, not {_kind(node)}")
        return node

    # -- scalars

    def text(self, node: Node, path: str, what: str = "text") -> str:
        """A string; a plain number or date keeps its source text (`0123` stays "0123")."""
        scalar = self.scalar(node, path, what)
        if scalar.tag == _STR:
            return scalar.value
        if scalar.tag in (_INT, _FLOAT, _TIMESTAMP) and scalar.style is None:
            return scalar.value
        if scalar.tag == _NULL:
            raise self.error(node, path, f"must be {what}, not empty (null)")
        if scalar.tag == _BOOL:
            raise self.error(
                node, path, f"must be {what}, not the boolean {scalar.value!r} (quote it if the text is meant)"
            )
        raise self.error(node, path, f"unsupported YAML tag {scalar.tag}")

    def name(self, node: Node, path: str) -> str:
        value = self.text(node, path)
        if not value.strip():
            raise self.error(node, path, "must not be empty")
        return value

    def integer(self, node: Node, path: str) -> int:
        scalar = self.scalar(node, path, "an integer")
        if scalar.style is None and scalar.tag == _INT and _DECIMAL.fullmatch(scalar.value):
            return int(scalar.value.replace("_", ""), 10)
        raise self.error(node, path, f"must be an integer, not {_kind(scalar)}")

    def number(self, node: Node, path: str) -> float:
        """An int or a float (finite), written as a plain YAML number."""
        scalar = self.scalar(node, path, "a number")
        if scalar.style is None and scalar.tag in (_INT, _FLOAT, _STR):
            if scalar.tag == _INT and _DECIMAL.fullmatch(scalar.value):
                return int(scalar.value.replace("_", ""), 10)
            if _FLOAT_TEXT.fullmatch(scalar.value) and any(ch.isdigit() for ch in scalar.value):
                number = float(scalar.value.replace("_", ""))
                if math.isfinite(number):
                    return number
        raise self.error(node, path, f"must be a number, not {_kind(scalar)}")

    def positive(self, node: Node, path: str, *, integer: bool = False) -> float:
        value = self.integer(node, path) if integer else self.number(node, path)
        if value <= 0:
            raise self.error(node, path, f"must be greater than 0, not {value:g}")
        return value

    def boolean(self, node: Node, path: str) -> bool:
        scalar = self.scalar(node, path, "true or false")
        if scalar.style is None and scalar.tag == _BOOL and scalar.value.lower() in ("true", "false"):
            return scalar.value.lower() == "true"
        raise self.error(node, path, f"must be true or false, not {_kind(scalar)}")

    def choice(self, node: Node, path: str, choices: Collection[str], what: str = "value") -> str:
        value = self.text(node, path)
        if value not in choices:
            raise self.error(node, path, f"unknown {what} {value!r}; expected one of: {', '.join(choices)}")
        return value

    def timezone(self, node: Node, path: str) -> str:
        value = self.text(node, path, "a time zone name")
        try:
            zoneinfo.ZoneInfo(value)
        except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
            raise self.error(
                node, path, f"unknown time zone {value!r} (use an IANA name such as Europe/Budapest or UTC)"
            ) from None
        return value

    def duration(self, node: Node, path: str, *, alternatives: str = "") -> float:
        """Seconds as a number, or text with an s/m/h/d/w suffix (`48h`, `90m`, `1.5h`, `90d`, `26w`).

        `alternatives` names other accepted values for the message ("forever or ").
        """
        scalar = self.scalar(node, path, f"{alternatives}a duration")
        if scalar.style is None and scalar.tag in (_INT, _FLOAT):
            return self.number(node, path)
        match = _DURATION.fullmatch(scalar.value.strip()) if scalar.tag == _STR else None
        if match is None:
            raise self.error(node, path, f"must be {alternatives}a duration: {_DURATION_FORMS}, not {_kind(scalar)}")
        return float(match["amount"]) * _DURATION_UNIT_S[match["unit"] or "s"]

    def retention_period(self, node: Node, path: str) -> float | None:
        """`forever` (None) or a duration greater than 0."""
        if isinstance(node, ScalarNode) and node.tag == _STR and node.value.strip() == RETENTION_FOREVER:
            return None
        seconds = float(self.duration(node, path, alternatives=f"{RETENTION_FOREVER} or "))
        if seconds <= 0:
            raise self.error(
                node, path, f"must be greater than 0, not {node.value} (write {RETENTION_FOREVER} to never prune)"
            )
        return seconds

    def plain(self, node: Node, path: str) -> Any:
        """A node as a plain Python value (safe_load semantics; strings and dates keep their source text)."""
        if isinstance(node, MappingNode):
            mapping = self.mapping(node, path)
            return {name: self.plain(value, mapping.key(name)) for name, (_key, value) in mapping.entries.items()}
        if isinstance(node, SequenceNode):
            return [self.plain(item, f"{path}[{index}]") for index, item in enumerate(self.sequence(node, path))]
        if node.tag in (_STR, _TIMESTAMP):
            return node.value
        if node.tag == _NULL:
            return None
        if node.tag == _INT and _DECIMAL.fullmatch(node.value):
            return int(node.value.replace("_", ""), 10)
        if node.tag in (_INT, _FLOAT, _BOOL):
            return yaml.constructor.SafeConstructor().construct_object(node)
        raise self.error(node, path, f"unsupported YAML tag {node.tag}")

    # -- the file

    def gateway(self, root: Node | None, source: Path) -> GatewayConfig | None:
        if root is None or _is_null(root):
            raise self.error(
                1, None, "the configuration is empty; expected sections such as http, api, extensions, links, recorders"
            )
        if not isinstance(root, MappingNode):
            raise self.error(
                root,
                None,
                f"the top level must be a mapping of sections ({', '.join(TOP_LEVEL_KEYS)}), "
                f"not {_kind(root, echo=False)}",
            )
        top = self.mapping(root, "", TOP_LEVEL_KEYS)
        sections: dict[str, Any] = {}
        readers = {
            "http": self.http,
            "store": self.store,
            "api": self.api,
            "on_demand": self.on_demand,
            "recorders": self.recorders,
            "links": self.links,
            "log": self.log,
        }
        for name, read in readers.items():
            node = top.given(name)
            if node is not None:
                with self.collecting():
                    sections[name] = read(node, name)
        # With a broken recorder, references to it are not checked: its own error says what to fix.
        recorders_complete = not any((problem.key or "").startswith("recorders") for problem in self.problems)
        node = top.given("extensions")
        if node is not None:
            with self.collecting():
                recorders = sections.get("recorders", ())
                sections["extensions"] = self.extensions(node, "extensions", recorders, recorders_complete)
        sections.setdefault("store", StoreConfig(path=_absolute(Path(DEFAULT_STORE_PATH))))
        if self.problems:
            return None
        return GatewayConfig(source=source, **sections)

    def http(self, node: Node, path: str) -> HttpConfig:
        section = self.mapping(node, path, ("host", "port", "tls"))
        host, port, tls = DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT, None
        if (value := section.get("host")) is not None:
            host = self.text(value, section.key("host"), "a host name or IP address")
            if not _is_host(host):
                raise self.error(
                    value,
                    section.key("host"),
                    f"must be a host name or an IP address (0.0.0.0 or :: for all), not {host!r}",
                )
        if (value := section.get("port")) is not None:
            port = self.port(value, section.key("port"))
        if (value := section.get("tls")) is not None:
            if _is_null(value):
                raise self.error(
                    value, section.key("tls"), "needs certfile and keyfile (leave tls out to serve plain HTTP)"
                )
            tls = self.tls(value, section.key("tls"))
        return HttpConfig(host=host, port=port, tls=tls)

    def port(self, node: Node, path: str) -> int:
        port = self.integer(node, path)
        if not 1 <= port <= 65535:
            raise self.error(node, path, f"must be a port number 1–65535, not {port}")
        return port

    def tls(self, node: Node, path: str) -> TlsConfig:
        section = self.mapping(node, path, ("certfile", "keyfile"))
        files = []
        for name in ("certfile", "keyfile"):
            value = section.require(name, "is required when tls is given (both certfile and keyfile)")
            text = self.text(value, section.key(name), "a file path")
            if not text.strip():
                raise self.error(value, section.key(name), "must not be empty")
            file = Path(text) if Path(text).is_absolute() else self.base_dir / text
            if not file.is_file():
                state = "is not a file" if file.exists() else "does not exist"
                raise self.error(
                    value,
                    section.key(name),
                    f"{file} {state} (relative paths are relative to the configuration file's folder)",
                )
            files.append(file)
        return TlsConfig(certfile=files[0], keyfile=files[1])

    def store(self, node: Node, path: str) -> StoreConfig:
        section = self.mapping(node, path, ("path", "sync", "retention"))
        store_path = Path(DEFAULT_STORE_PATH)
        if (value := section.get("path")) is not None:
            text = self.text(value, section.key("path"), "a file path")
            if not text.strip():
                raise self.error(value, section.key("path"), "must not be empty")
            store_path = Path(text)
        sync = DEFAULT_STORE_SYNC
        if (value := section.get("sync")) is not None:
            sync = self.choice(value, section.key("sync"), STORE_SYNC_MODES, "sync mode")
        retention = RetentionConfig()
        if (value := section.given("retention")) is not None:
            retention = self.retention(value, section.key("retention"))
        return StoreConfig(path=_absolute(store_path), sync=sync, retention=retention)

    def retention(self, node: Node, path: str) -> RetentionConfig:
        section = self.mapping(node, path, ("calls", "journal", "quarantine"))
        periods: dict[str, float | None] = {}
        for name in ("calls", "journal", "quarantine"):
            if (value := section.get(name)) is not None:
                with self.collecting():
                    periods[f"{name}_s"] = self.retention_period(value, section.key(name))
        return RetentionConfig(**periods)

    def api(self, node: Node, path: str) -> ApiConfig:
        section = self.mapping(node, path, ("token_ttl", "next_window", "keys", "users"))
        token_ttl_s, next_window_s = DEFAULT_TOKEN_TTL_S, DEFAULT_NEXT_WINDOW_S
        if (value := section.get("token_ttl")) is not None:
            token_ttl_s = int(self.positive(value, section.key("token_ttl"), integer=True))
        if (value := section.get("next_window")) is not None:
            next_window_s = float(self.positive(value, section.key("next_window")))
        keys: list[ApiKeyConfig] = []
        if (value := section.given("keys")) is not None:
            keys = self.api_keys(value, section.key("keys"))
        users: list[UserConfig] = []
        if (value := section.given("users")) is not None:
            users = self.users(value, section.key("users"))
        return ApiConfig(token_ttl_s=token_ttl_s, next_window_s=next_window_s, keys=tuple(keys), users=tuple(users))

    def api_keys(self, node: Node, path: str) -> list[ApiKeyConfig]:
        keys: list[ApiKeyConfig] = []
        first_by_key: dict[str, tuple[str, int]] = {}
        first_by_name: dict[str, tuple[str, int]] = {}
        for index, item in enumerate(self.sequence(node, path)):
            item_path = f"{path}[{index}]"
            with self.collecting():
                entry = self.mapping(item, item_path, ("key", "name", "require_token", "networks"))
                key_node = entry.require("key")
                key = self.text(key_node, entry.key("key"), "a GUID")
                if not _GUID.fullmatch(key.strip()):
                    raise self.error(
                        key_node,
                        entry.key("key"),
                        "must be a GUID in the 8-4-4-4-12 hex form, e.g. 74c8eea0-50c6-40b2-9f3e-252ed501c3c8",
                    )
                key = str(uuid.UUID(key.strip()))
                name_node = entry.require("name")
                name = self.name(name_node, entry.key("name"))
                low, high = _KEY_NAME_LENGTH
                if not low <= len(name) <= high:
                    raise self.error(
                        name_node, entry.key("name"), f"must be {low}–{high} characters long, not {len(name)}"
                    )
                require_token = False
                if (value := entry.get("require_token")) is not None:
                    require_token = self.boolean(value, entry.key("require_token"))
                networks = None
                if (value := entry.given("networks")) is not None:
                    networks = self.networks(value, entry.key("networks"))
                if key in first_by_key:
                    where, line = first_by_key[key]
                    raise self.error(
                        key_node,
                        entry.key("key"),
                        f"duplicate key: the same GUID is already used by {where} (line {line})",
                    )
                if name in first_by_name:
                    where, line = first_by_name[name]
                    raise self.error(
                        name_node, entry.key("name"), f"duplicate name {name!r}: already used by {where} (line {line})"
                    )
                first_by_key[key] = (item_path, _line(key_node))
                first_by_name[name] = (item_path, _line(name_node))
                keys.append(ApiKeyConfig(key=key, name=name, require_token=require_token, networks=networks))
        return keys

    def networks(self, node: Node, path: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | str, ...]:
        items = self.sequence(node, path)
        if not items:
            raise self.error(node, path, "must list at least one network (leave networks out to allow any address)")
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network | str] = []
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]"
            text = self.text(item, item_path, "an IP address, a CIDR network or a host name").strip()
            try:
                networks.append(ipaddress.ip_network(ipaddress.ip_address(text)))
                continue
            except ValueError:
                pass
            if "/" in text:
                try:
                    networks.append(ipaddress.ip_network(text, strict=False))
                except ValueError:
                    raise self.error(
                        item, item_path, f"{text!r} is not a valid CIDR network (e.g. 10.0.0.0/8, fe80::/10)"
                    ) from None
                continue
            if not _is_host_name(text):
                raise self.error(item, item_path, f"{text!r} is neither an IP address, a CIDR network nor a host name")
            networks.append(text.rstrip(".").lower())
        return tuple(networks)

    def users(self, node: Node, path: str) -> list[UserConfig]:
        users: list[UserConfig] = []
        first_by_name: dict[str, tuple[str, int]] = {}
        for index, item in enumerate(self.sequence(node, path)):
            item_path = f"{path}[{index}]"
            with self.collecting():
                entry = self.mapping(item, item_path, ("name", "password_hash", "timezone"))
                name_node = entry.require("name")
                name = self.name(name_node, entry.key("name"))
                hash_node = entry.require("password_hash", "is required (print one with `gateway hash-password`)")
                password_hash = self.text(hash_node, entry.key("password_hash"), "a password hash")
                try:
                    parse_password_hash(password_hash.strip())
                except ValueError as exc:
                    # The reason never contains the hash itself; neither may this message.
                    raise self.error(
                        hash_node, entry.key("password_hash"), f"{exc}; print a new one with `gateway hash-password`"
                    ) from None
                timezone = "UTC"
                if (value := entry.get("timezone")) is not None:
                    timezone = self.timezone(value, entry.key("timezone"))
                if name in first_by_name:
                    where, line = first_by_name[name]
                    raise self.error(
                        name_node,
                        entry.key("name"),
                        f"duplicate user {name!r}: already defined at {where} (line {line})",
                    )
                first_by_name[name] = (item_path, _line(name_node))
                users.append(UserConfig(name=name, password_hash=password_hash.strip(), timezone=timezone))
        return users

    def on_demand(self, node: Node, path: str) -> OnDemandConfig:
        section = self.mapping(node, path, ("retention",))
        retention_s = float(MAX_ON_DEMAND_RETENTION_S)
        if (value := section.get("retention")) is not None:
            retention_s = float(self.duration(value, section.key("retention")))
            if retention_s <= 0:
                raise self.error(value, section.key("retention"), "must be greater than 0")
            if retention_s > MAX_ON_DEMAND_RETENTION_S:
                raise self.error(
                    value, section.key("retention"), f"must be at most 48h, not {_format_duration(retention_s)}"
                )
        return OnDemandConfig(retention_s=retention_s)

    def log(self, node: Node, path: str) -> LogConfig:
        section = self.mapping(node, path, ("level", "format"))
        level, format_ = DEFAULT_LOG_LEVEL, DEFAULT_LOG_FORMAT
        if (value := section.get("level")) is not None:
            level = self.choice(value, section.key("level"), LOG_LEVELS, "log level")
        if (value := section.get("format")) is not None:
            format_ = self.choice(value, section.key("format"), LOG_FORMATS, "log format")
        return LogConfig(level=level, format=format_)

    # -- devices

    def url(self, node: Node, path: str, kinds: Collection[str]) -> tuple[str, str]:
        """The url's text and its kind (URL_TCP, URL_SERIAL, …), or an error listing the accepted forms."""
        url = self.text(node, path, "a URL or a serial port path")
        forms = ", ".join(_URL_FORM_TEXT[kind] for kind in kinds)
        try:
            kind = _url_kind(url)
        except ValueError as exc:
            raise self.error(node, path, f"{exc}; accepted forms: {forms}") from None
        if kind not in kinds:
            raise self.error(node, path, f"{_URL_FORM_TEXT[kind]} is not accepted here; accepted forms: {forms}")
        return url, kind

    def serial_settings(self, entry: _Map, kind: str) -> SerialSettings | None:
        given = [name for name in SERIAL_KEYS if name in entry.entries]
        if kind not in (URL_SERIAL, URL_RFC2217):
            if given:
                raise self.error(
                    entry.key_line(given[0]), entry.key(given[0]),
                    "serial settings are only for a local serial port path or an rfc2217:// url",
                )
            return None
        values: dict[str, Any] = {}
        for name in given:
            node, key = entry.entries[name][1], entry.key(name)
            if name == "baudrate":
                values[name] = int(self.positive(node, key, integer=True))
            elif name == "bytesize":
                values[name] = self.integer(node, key)
                if values[name] not in SERIAL_BYTESIZES:
                    raise self.error(node, key, f"must be 5, 6, 7 or 8, not {values[name]}")
            elif name == "parity":
                values[name] = self.text(node, key, "one of N, E, O, M, S").upper()
                if values[name] not in SERIAL_PARITIES:
                    raise self.error(
                        node, key, f"must be one of N, E, O, M, S (none, even, odd, mark, space), not {values[name]!r}"
                    )
            elif name == "stopbits":
                values[name] = self.number(node, key)
                if values[name] not in SERIAL_STOPBITS:
                    raise self.error(node, key, f"must be 1, 1.5 or 2, not {values[name]:g}")
            else:
                values[name] = self.boolean(node, key)
        return SerialSettings(**values)

    def recorders(self, node: Node, path: str) -> tuple[RecorderConfig, ...]:
        recorders: list[RecorderConfig] = []
        first_by_name: dict[str, tuple[str, int]] = {}
        for index, item in enumerate(self.sequence(node, path)):
            item_path = f"{path}[{index}]"
            with self.collecting():
                entry = self.mapping(item, item_path, RECORDER_KEYS)
                name_node = entry.require("name")
                name = self.name(name_node, entry.key("name"))
                url, kind = self.url(entry.require("url"), entry.key("url"), RECORDER_URL_KINDS)
                timeout_s = DEFAULT_RECORDER_TIMEOUT_S
                if (value := entry.get("timeout")) is not None:
                    timeout_s = float(self.positive(value, entry.key("timeout")))
                serial = self.serial_settings(entry, kind)
                if name in first_by_name:
                    where, line = first_by_name[name]
                    raise self.error(
                        name_node,
                        entry.key("name"),
                        f"duplicate recorder name {name!r}: already used by {where} (line {line})",
                    )
                first_by_name[name] = (item_path, _line(name_node))
                recorder = RecorderConfig(name=name, url=url, timeout_s=timeout_s, serial=serial, line=entry.line)
                recorders.append(recorder)
        return tuple(recorders)

    def links(self, node: Node, path: str) -> tuple[LinkConfig, ...]:
        links: list[LinkConfig] = []
        first_by_name: dict[str, tuple[str, int]] = {}
        for index, item in enumerate(self.sequence(node, path)):
            item_path = f"{path}[{index}]"
            with self.collecting():
                link, name_node = self.link(item, item_path)
                if link.name in first_by_name:
                    where, line = first_by_name[link.name]
                    raise self.error(
                        name_node,
                        f"{item_path}.name",
                        f"duplicate link name {link.name!r}: already used by {where} (line {line})",
                    )
                first_by_name[link.name] = (item_path, _line(name_node))
                links.append(link)
        return tuple(links)

    def link(self, node: Node, path: str) -> tuple[LinkConfig, Node]:
        entry = self.mapping(node, path)
        link_format: str | None = None
        format_node = entry.require("format", f"is required (one of: {', '.join(LINK_FORMATS)})")
        with self.collecting():
            link_format = self.choice(format_node, entry.key("format"), LINK_FORMATS, "format")
        takes_custom_keys = link_format in ("custom", None)  # None: the format is wrong, already reported
        allowed = LINK_KEYS + CUSTOM_FORMAT_KEYS if takes_custom_keys else LINK_KEYS
        entry.refuse_unknown(allowed, "" if takes_custom_keys else "; format-specific settings go under options:")
        name_node = entry.require("name")
        name = self.name(name_node, entry.key("name"))
        url, kind = self.url(entry.require("url"), entry.key("url"), LINK_URL_KINDS)
        timezone = None
        if (value := entry.get("timezone")) is not None:
            timezone = self.timezone(value, entry.key("timezone"))
        serial = self.serial_settings(entry, kind)
        login: list[LoginStep] = []
        if (value := entry.get("login")) is not None:
            if kind != URL_TCP:
                raise self.error(entry.key_line("login"), entry.key("login"), "login steps are only for tcp:// links")
            login = self.login(value, entry.key("login"))
        options: dict[str, Any] = {}
        options_map: _Map | None = None
        if (value := entry.given("options")) is not None:
            options_map = self.mapping(value, entry.key("options"))
            for key, (_, option) in options_map.entries.items():
                options[key] = self.plain(option, options_map.key(key))
        direct: dict[str, Any] = {}
        if (value := entry.get("idle_timeout")) is not None:
            direct["idle_timeout"] = float(self.positive(value, entry.key("idle_timeout")))
        if (value := entry.get("correlation_window")) is not None:
            direct["correlation_window"] = float(self.positive(value, entry.key("correlation_window")))
        if (value := entry.get("keepalive")) is not None:
            direct["keepalive"] = self.text(value, entry.key("keepalive"))
        if link_format == "custom":
            for key in CUSTOM_FORMAT_KEYS:
                if (value := entry.get(key)) is not None:
                    direct[key] = self.custom_option(key, value, entry.key(key))
        for key in direct:
            if options_map is not None and key in options_map.entries:
                raise self.error(
                    entry.key_line(key),
                    entry.key(key),
                    f"is given both here and under options (line {options_map.key_line(key)}); keep one",
                )
        options.update(direct)
        if link_format is None:
            raise _AlreadyReported("format")
        self.format_options(link_format, options, entry, options_map)
        link = LinkConfig(
            name=name, format=link_format, url=url, timezone=timezone, serial=serial,
            login=tuple(login), options=options, line=entry.line,
        )
        return link, name_node

    def format_options(self, link_format: str, options: dict[str, Any], entry: _Map, options_map: _Map | None) -> None:
        """The format's own checks of its options (bad patterns, columns, field maps), refused at start-up."""
        from drivers.smdr import parser_class  # late: the drivers import this module

        try:
            parser_class(link_format).validate_options(options)
        except ValueError as error:
            # Format checks start their messages with the key at fault: "pattern: is required in regex mode".
            named, _, rest = str(error).partition(":")
            key = named.strip() if named.strip() in options else None
            message = rest.strip() if key is not None and rest.strip() else str(error)
            if key is not None and options_map is not None and key in options_map.entries:
                line, path = options_map.key_line(key), options_map.key(key)
            elif key is not None and key in entry.entries:
                line, path = entry.key_line(key), entry.key(key)
            else:
                line, path = entry.line, entry.key("options")
            raise self.error(line, path, message) from None

    def login(self, node: Node, path: str) -> list[LoginStep]:
        steps = []
        for index, item in enumerate(self.sequence(node, path)):
            step_path = f"{path}[{index}]"
            step = self.mapping(item, step_path, ("expect", "send"))
            expect = self.text(step.require("expect"), step.key("expect"))
            send = self.text(step.require("send"), step.key("send"))
            steps.append(LoginStep(expect=expect, send=send))
        return steps

    def custom_option(self, key: str, node: Node, path: str) -> Any:
        if key == "skip_regex" and isinstance(node, SequenceNode):  # several patterns: headers, dashes, titles
            return [self.regex(item, f"{path}[{index}]") for index, item in enumerate(node.value)]
        if key in _CUSTOM_REGEX_KEYS:
            return self.regex(node, path)
        if key in _CUSTOM_COUNT_KEYS:
            count = self.integer(node, path)
            if count < 0:
                raise self.error(node, path, f"must be 0 or more, not {count}")
            return count
        if key == "encoding":
            encoding = self.text(node, path, "an encoding name")
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise self.error(
                    node, path, f"unknown encoding {encoding!r} (e.g. ascii, latin-1, utf-8, cp1252)"
                ) from None
            return encoding
        return self.plain(node, path)

    def regex(self, node: Node, path: str) -> str:
        pattern = self.text(node, path, "a regular expression")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise self.error(node, path, f"invalid regular expression: {exc}") from None
        return pattern

    def extensions(
        self, node: Node, path: str, recorders: tuple[RecorderConfig, ...], recorders_complete: bool
    ) -> tuple[ExtensionConfig, ...]:
        recorder_names = [recorder.name for recorder in recorders]
        modes = [mode.value for mode in RecordingMode]
        extensions: list[ExtensionConfig] = []
        first_by_number: dict[str, tuple[str, int]] = {}
        first_by_channel: dict[tuple[str, str], tuple[str, int]] = {}
        for index, item in enumerate(self.sequence(node, path)):
            item_path = f"{path}[{index}]"
            with self.collecting():
                entry = self.mapping(item, item_path, ("number", "mode", "recorder", "channel"))
                number_node = entry.require("number")
                number = self.text(number_node, entry.key("number"), "an extension number").strip()
                if not _DIAL_STRING.fullmatch(number):
                    raise self.error(
                        number_node,
                        entry.key("number"),
                        f"must be a dial string of digits (with optional leading +, and * or #), not {number!r}",
                    )
                mode_node = entry.require("mode", f"is required (one of: {', '.join(modes)})")
                mode = RecordingMode(self.choice(mode_node, entry.key("mode"), modes, "mode"))
                recorder_node, channel_node = entry.given("recorder"), entry.given("channel")
                recorder = channel = None
                if recorder_node is not None:
                    recorder = self.name(recorder_node, entry.key("recorder"))
                    if recorder not in recorder_names and recorders_complete:
                        configured = ", ".join(recorder_names) if recorder_names else "none"
                        raise self.error(
                            recorder_node,
                            entry.key("recorder"),
                            f"unknown recorder {recorder!r}; configured recorders: {configured}",
                        )
                    if channel_node is None:
                        raise self.error(
                            entry.line,
                            entry.key("channel"),
                            'is required when a recorder is given (the recorder channel as SPAN/TIMESLOT, e.g. "1/5")',
                        )
                if channel_node is not None:
                    channel = self.channel(channel_node, entry.key("channel"))
                    if recorder is None and recorders_complete:
                        if not recorder_names:
                            raise self.error(
                                channel_node,
                                entry.key("channel"),
                                "no recorder is configured (add one under recorders:)",
                            )
                        if len(recorder_names) > 1:
                            raise self.error(
                                entry.line,
                                entry.key("recorder"),
                                "recorder is required when more than one recorder is configured",
                            )
                        recorder = recorder_names[0]
                if number in first_by_number:
                    where, line = first_by_number[number]
                    raise self.error(
                        number_node,
                        entry.key("number"),
                        f"extension {number} is already defined at {where} (line {line})",
                    )
                if recorder is not None and channel is not None and (recorder, channel) in first_by_channel:
                    other, line = first_by_channel[(recorder, channel)]
                    raise self.error(
                        channel_node,
                        entry.key("channel"),
                        f"channel {channel} of recorder {recorder} is already mapped to extension {other} "
                        f"(line {line})",
                    )
                first_by_number[number] = (item_path, _line(number_node))
                if recorder is not None and channel is not None:
                    first_by_channel[(recorder, channel)] = (number, _line(channel_node))
                extensions.append(ExtensionConfig(number=number, mode=mode, recorder=recorder, channel=channel))
        return tuple(extensions)

    def channel(self, node: Node, path: str) -> str:
        text = self.text(node, path, 'a channel "SPAN/TIMESLOT"').strip()
        match = _CHANNEL.fullmatch(text)
        if match is None or int(match[1]) < 1 or int(match[2]) < 1:
            raise self.error(node, path, f'must be SPAN/TIMESLOT with both positive integers, e.g. "1/5", not {text!r}')
        return f"{int(match[1])}/{int(match[2])}"


def _absolute(path: Path) -> Path:
    """A relative store path is relative to the current working directory (where `gateway` was started)."""
    return Path(os.path.abspath(path))


def _is_host_name(text: str) -> bool:
    """RFC 1123 host name (a trailing dot is allowed); the last label may not be all digits."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return all(_HOST_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return _is_host_name(text)


def _url_kind(url: str) -> str:
    """Classify a link/recorder url (URL_LISTEN, URL_TCP, …); ValueError says what is wrong with it."""
    text = url.strip()
    if not text:
        raise ValueError("must not be empty")
    if text != url:
        raise ValueError("must not start or end with spaces")
    if text.startswith("/"):
        return URL_SERIAL
    match = _NETWORK_URL.fullmatch(text)
    if match is None:
        scheme = _ANY_SCHEME.match(text)
        if scheme and "://" in text:
            raise ValueError(f"'{scheme['scheme']}://' URLs are not supported")
        raise ValueError(f"{text!r} is neither a URL nor an absolute serial port path")
    scheme = match["scheme"]
    kinds = {"listen": URL_LISTEN, "tcp": URL_TCP, "rfc2217": URL_RFC2217, "socket": URL_SOCKET}
    if scheme not in kinds:
        raise ValueError(f"'{scheme}://' URLs are not supported")
    kind = kinds[scheme]
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            raise ValueError(f"[{match['ipv6']}] is not an IPv6 address") from None
    elif not match["host"]:
        raise ValueError("the host is missing")
    elif not _is_host(match["host"]):
        raise ValueError(
            f"{match['host']!r} is not a host name or an IP address (an IPv6 address goes in brackets: [::1]:5100)"
        )
    if match["port"] is None:
        raise ValueError("the port is missing (HOST:PORT)")
    if not match["port"].isdigit() or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"the port must be 1–65535, not {match['port']!r}")
    rest = match["rest"] or ""
    if rest and not (kind in (URL_RFC2217, URL_SOCKET) and rest.startswith("?")):
        raise ValueError(f"unexpected {rest!r} after the port")
    return kind


def _format_duration(seconds: float) -> str:
    # Weeks and days only from a week up, so the on-demand limit still reads 48h.
    if seconds >= 7 * DAY_S and seconds % (7 * DAY_S) == 0:
        return f"{seconds / (7 * DAY_S):g}w"
    if seconds >= 7 * DAY_S and seconds % DAY_S == 0:
        return f"{seconds / DAY_S:g}d"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _describe_link_variant(link: LinkConfig) -> str:
    """How the link's format parser will read its lines (layout, time semantics …) before any line is seen."""
    from drivers.smdr import create_parser  # late: the drivers import this module

    try:
        return create_parser(link).variant()
    except Exception as error:  # a description must not make `check` fail; validation reports real problems
        return f"unknown ({type(error).__name__}: {error})"


def describe_config(config: GatewayConfig) -> str:
    """What the configuration would run, for `gateway check`; never shows a key, a hash or a login text."""
    http = config.http
    scheme = "https" if http.tls else "http"
    host = f"[{http.host}]" if ":" in http.host else http.host
    lines = [f"configuration: {config.source}", f"HTTP API: {scheme}://{host}:{http.port}/"]
    if http.tls:
        lines.append(f"  TLS certificate: {http.tls.certfile}, key: {http.tls.keyfile}")
    lines.append(f"store: {config.store.path} (sync: {config.store.sync})")
    retention = config.store.retention
    kept = [
        f"{name} {RETENTION_FOREVER if seconds is None else _format_duration(seconds)}"
        for name, seconds in (
            ("calls", retention.calls_s), ("journal", retention.journal_s), ("quarantine", retention.quarantine_s)
        )
    ]
    lines.append(f"  retention: {', '.join(kept)}")
    api = config.api
    lines.append(f"API: token TTL {api.token_ttl_s} s, status=next window {api.next_window_s:g} s")
    lines.append(f"  keys ({len(api.keys)}):")
    for key in api.keys:
        networks = ", ".join(str(network) for network in key.networks) if key.networks is not None else "any address"
        token = "token required" if key.require_token else "no token"
        lines.append(f"    {key.name}: {token}; from {networks}")
    lines.append(f"  users ({len(api.users)}):")
    for user in api.users:
        lines.append(f"    {user.name} (timezone {user.timezone})")
    lines.append(f"on-demand retention: {_format_duration(config.on_demand.retention_s)}")
    lines.append(f"recorders ({len(config.recorders)}):")
    for recorder in config.recorders:
        serial = f", {_describe_serial(recorder.serial)}" if recorder.serial else ""
        lines.append(f"  {recorder.name}: {recorder.url} (timeout {recorder.timeout_s:g} s{serial})")
    lines.append(f"links ({len(config.links)}):")
    for link in config.links:
        details = [f"timezone {link.timezone or 'of this machine'}"]
        if link.serial:
            details.append(_describe_serial(link.serial))
        if link.login:
            details.append(f"{len(link.login)} login steps")
        if link.options:
            details.append("options: " + ", ".join(sorted(link.options)))
        lines.append(f"  {link.name}: {link.format} at {link.url} ({'; '.join(details)})")
        lines.append(f"    reads lines as: {_describe_link_variant(link)}")
    lines.append(f"extensions ({len(config.extensions)}):")
    for extension in config.extensions:
        where = "no recorder channel"
        if extension.channel:
            where = f"recorder {extension.recorder} channel {extension.channel}"
        lines.append(f"  {extension.number}: {extension.mode.value}, {where}")
    lines.append(f"log: {config.log.level}, {config.log.format}")
    return "\n".join(lines)


def _describe_serial(serial: SerialSettings) -> str:
    flow = [name for name in ("xonxoff", "rtscts") if getattr(serial, name)]
    text = f"{serial.baudrate} {serial.bytesize}{serial.parity}{serial.stopbits:g}"
    return f"{text} {'+'.join(flow)}" if flow else text


def check_config(config: GatewayConfig) -> list[str]:
    """Problems a valid file can still have on this machine: missing serial ports, unusable TLS files, store folder."""
    problems: list[str] = []
    devices = [(f"links[{i}] {link.name}", link.url) for i, link in enumerate(config.links)]
    devices += [(f"recorders[{i}] {recorder.name}", recorder.url) for i, recorder in enumerate(config.recorders)]
    for label, url in devices:
        if not url.startswith("/"):
            continue
        if not os.path.exists(url):
            problems.append(f"{label}: serial port {url} does not exist")
        elif not os.access(url, os.R_OK | os.W_OK):
            problems.append(
                f"{label}: no read/write permission on serial port {url} (is this user in the dialout group?)"
            )
    tls = config.http.tls
    if tls is not None:
        unreadable = False
        for label, file in (("http.tls.certfile", tls.certfile), ("http.tls.keyfile", tls.keyfile)):
            try:
                with open(file, "rb"):
                    pass
            except OSError as exc:
                unreadable = True
                problems.append(f"{label}: cannot read {file}: {exc.strerror or exc}")
        if not unreadable:
            try:
                # An empty password makes an encrypted key fail here instead of prompting on the terminal.
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(tls.certfile, tls.keyfile, password="")
            except (ssl.SSLError, OSError, ValueError) as exc:
                problems.append(f"http.tls: cannot use {tls.certfile} with {tls.keyfile}: {exc}")
    store_path = config.store.path
    if store_path.is_dir():
        problems.append(f"store.path: {store_path} is a folder, not a database file")
    else:
        folder = store_path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            problems.append(f"store.path: cannot create {store_path}: {folder} is not writable")
    return problems
