"""Reading a configuration file: YAML → the frozen dataclasses of gateway.config, every problem of the file
listed with its line and key. PBX formats check their own options through `LinkFormats`, which the drivers
implement (drivers.smdr.SMDR_FORMATS) and the caller passes in: the core does not import the drivers.

Over 500 lines on purpose (~930): one reader walking one file's tree, a method per section in file order, and
the URL rules of links, recorders and the PostgreSQL store it checks; split, each half would only make sense beside
the other.
"""

from __future__ import annotations

import codecs
import ipaddress
import os
import re
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from yaml.nodes import MappingNode, Node, SequenceNode

from gateway.config import (
    DEFAULT_HTTP_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_LOG_FORMAT,
    DEFAULT_LOG_LEVEL,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_NEXT_WINDOW_S,
    DEFAULT_OPS_NETWORKS,
    DEFAULT_RECORDER_PING_INTERVAL_S,
    DEFAULT_RECORDER_TIMEOUT_S,
    DEFAULT_SPOOL_PATH,
    DEFAULT_STORE_PATH,
    DEFAULT_STORE_SYNC,
    DEFAULT_TOKEN_TTL_S,
    MAX_ON_DEMAND_RETENTION_S,
    NODE_NAME,
    NODE_NAME_RULE,
    POSTGRESQL_SCHEMES,
    STORE_SYNC_MODES,
    ApiConfig,
    ApiKeyConfig,
    ExtensionConfig,
    GatewayConfig,
    HttpConfig,
    LinkConfig,
    LinkFormats,
    LogConfig,
    LoginStep,
    OnDemandConfig,
    RecorderConfig,
    RetentionConfig,
    SerialSettings,
    StoreConfig,
    TlsConfig,
    UserConfig,
    default_node_name,
)
from gateway.config.yaml_nodes import (
    _AlreadyReported,
    _compose,
    _format_duration,
    _is_null,
    _kind,
    _line,
    _Map,
    _NodeReader,
)
from gateway.errors import ConfigError
from gateway.model import RecordingMode
from gateway.passwords import parse_password_hash
from gateway.redact import redacted_url

TOP_LEVEL_KEYS = ("node", "http", "store", "api", "on_demand", "extensions", "links", "recorders", "log")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")
SERIAL_PARITIES = ("N", "E", "O", "M", "S")
SERIAL_BYTESIZES = (5, 6, 7, 8)
SERIAL_STOPBITS = (1, 1.5, 2)
SERIAL_KEYS = ("baudrate", "bytesize", "parity", "stopbits", "xonxoff", "rtscts")
# Keys a `format: custom` link takes directly; the custom parser documents their meaning.
CUSTOM_FORMAT_KEYS = (
    "mode",
    "encoding",
    "terminator",
    "strip",
    "skip_first",
    "skip_regex",
    "record_regex",
    "min_length",
    "attach_regex",
    "attach_to",
    "delimiter",
    "quotechar",
    "min_fields",
    "fields",
    "columns",
    "pattern",
    "date_format",
    "time_format",
    "datetime_format",
    "year",
    "time_is",
    "duration_format",
    "direction_map",
    "internal_if",
    "platform_call_id_field",
    "more_follows_field",
    "more_follows_value",
)
_CUSTOM_REGEX_KEYS = ("skip_regex", "record_regex", "attach_regex", "pattern")
_CUSTOM_COUNT_KEYS = ("skip_first", "min_length", "min_fields")
LINK_KEYS = (
    "name",
    "format",
    "url",
    "timezone",
    *SERIAL_KEYS,
    "login",
    "options",
    "idle_timeout",
    "keepalive",
    "correlation_window",
)
RECORDER_KEYS = ("name", "url", "timeout", "ping_interval", *SERIAL_KEYS)
STORE_KEYS = ("path", "url", "spool", "sync", "retention")
API_KEY_KEYS = ("key", "name", "require_token", "networks", "sites")
POSTGRESQL_URL_FORM = "postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE[?PARAMETERS]"
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

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DIAL_STRING = re.compile(r"\+?[0-9*#]+")
_CHANNEL = re.compile(r"([0-9]+)/([0-9]+)")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_KEY_NAME_LENGTH = (3, 128)

RETENTION_KINDS = ("calls", "journal", "quarantine", "events")  # store.retention's keys, as RetentionConfig's *_s


def load_config(path: str | Path, formats: LinkFormats) -> GatewayConfig:
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
    reader = _Reader(file, source.absolute().parent, formats)
    config = None
    try:
        config = reader.gateway(_compose(text, file), source)
    except ConfigError as problem:
        reader.problems.append(problem)
    reader.raise_problems()
    assert config is not None
    return config


class _Reader(_NodeReader):
    """Walks the node tree of one file, building the dataclasses and collecting problems."""

    def __init__(self, file: str, base_dir: Path, formats: LinkFormats):
        super().__init__(file, base_dir)
        self.formats = formats
        self.node = default_node_name()  # the file's `node`, once read: the default spool file is named after it

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
        if (node := top.get("node")) is not None:
            with self.collecting():
                self.node = sections["node"] = self.node_name(node, "node")
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
        sections.setdefault("node", self.node)
        return GatewayConfig(source=source, **sections)

    def node_name(self, node: Node, path: str) -> str:
        """A node's name: `node`, or an entry of api.keys[].sites."""
        name = self.text(node, path, "a node name")
        if not NODE_NAME.fullmatch(name):
            raise self.error(node, path, f"must be a node name of {NODE_NAME_RULE}, not {name!r}")
        return name

    def http(self, node: Node, path: str) -> HttpConfig:
        section = self.mapping(node, path, ("host", "port", "tls", "ops_networks", "max_connections"))
        host, port, tls = DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT, None
        ops_networks = DEFAULT_OPS_NETWORKS
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
        if (value := section.get("ops_networks")) is not None:
            ops_networks = self.ops_networks(value, section.key("ops_networks"))
        max_connections = DEFAULT_MAX_CONNECTIONS
        if (value := section.get("max_connections")) is not None:
            max_connections = int(self.positive(value, section.key("max_connections"), integer=True))
        return HttpConfig(host=host, port=port, tls=tls, ops_networks=ops_networks, max_connections=max_connections)

    def ops_networks(self, node: Node, path: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """Addresses and CIDR networks, no host names: a scrape must not wait for a DNS lookup, and a monitor
        whose name stops resolving would be locked out of the one page that says why."""
        items = [] if _is_null(node) else self.sequence(node, path)
        if not items:
            raise self.error(
                node, path, "must list at least one network (leave ops_networks out for this machine only)"
            )
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for index, item in enumerate(items):
            with self.collecting():
                entry = self.network_entry(item, f"{path}[{index}]", host_names=False)
                assert not isinstance(entry, str)  # host_names=False: never a name
                networks.append(entry)
        return tuple(networks)

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
        section = self.mapping(node, path, STORE_KEYS)
        url = None
        if (value := section.get("url")) is not None:
            if "path" in section.entries:
                raise self.error(
                    section.key_line("url"),
                    section.key("url"),
                    "store.path and store.url are exclusive: path is SQLite, url is PostgreSQL",
                )
            url = self.postgresql_url(value, section.key("url"))
        elif "spool" in section.entries:
            raise self.error(
                section.key_line("spool"),
                section.key("spool"),
                "store.spool is only for store.url; store.path is the SQLite file",
            )
        # The local file: the SQLite store, or with a url this node's spool (named after the node by default).
        store_path = Path(DEFAULT_STORE_PATH) if url is None else Path(DEFAULT_SPOOL_PATH.format(node=self.node))
        file_key = "path" if url is None else "spool"
        if (value := section.get(file_key)) is not None:
            text = self.text(value, section.key(file_key), "a file path")
            if not text.strip():
                raise self.error(value, section.key(file_key), "must not be empty")
            store_path = Path(text)
        sync = DEFAULT_STORE_SYNC
        if (value := section.get("sync")) is not None:
            sync = self.choice(value, section.key("sync"), STORE_SYNC_MODES, "sync mode")
        retention = RetentionConfig()
        if (value := section.given("retention")) is not None:
            retention = self.retention(value, section.key("retention"))
        return StoreConfig(path=_absolute(store_path), sync=sync, retention=retention, url=url)

    def postgresql_url(self, node: Node, path: str) -> str:
        """The url as written (query parameters kept); messages show it with its password as ***."""
        url = self.text(node, path, "a PostgreSQL URL")
        try:
            check_postgresql_url(url)
        except ValueError as exc:
            shown = f", not {redacted_url(url)!r}" if url.strip() else ""
            raise self.error(node, path, f"{exc}; expected {POSTGRESQL_URL_FORM}{shown}") from None
        return url

    def retention(self, node: Node, path: str) -> RetentionConfig:
        """`store.retention`: calls, journal, quarantine, events — each `forever` or a duration."""
        section = self.mapping(node, path, RETENTION_KINDS)
        periods: dict[str, float | None] = {}
        for name in RETENTION_KINDS:
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
                entry = self.mapping(item, item_path, API_KEY_KEYS)
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
                sites = None
                if (value := entry.given("sites")) is not None:
                    sites = self.sites(value, entry.key("sites"))
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
                keys.append(
                    ApiKeyConfig(key=key, name=name, require_token=require_token, networks=networks, sites=sites)
                )
        return keys

    def sites(self, node: Node, path: str) -> tuple[str, ...]:
        """api.keys[].sites: the nodes whose calls the key sees."""
        items = self.sequence(node, path)
        if not items:
            raise self.error(node, path, "must list at least one node (leave sites out for every node)")
        sites: list[str] = []
        first_line: dict[str, int] = {}
        for index, item in enumerate(items):
            with self.collecting():
                site = self.node_name(item, f"{path}[{index}]")
                if site in first_line:
                    raise self.error(
                        item, f"{path}[{index}]", f"duplicate site {site!r}: already listed on line {first_line[site]}"
                    )
                first_line[site] = _line(item)
                sites.append(site)
        return tuple(sites)

    def networks(self, node: Node, path: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | str, ...]:
        items = self.sequence(node, path)
        if not items:
            raise self.error(node, path, "must list at least one network (leave networks out to allow any address)")
        return tuple(self.network_entry(item, f"{path}[{index}]") for index, item in enumerate(items))

    def network_entry(
        self, item: Node, item_path: str, *, host_names: bool = True
    ) -> ipaddress.IPv4Network | ipaddress.IPv6Network | str:
        """An IP address (as a /32 or /128), a CIDR network, or — where `host_names` — a host name (lower case)."""
        what = "an IP address, a CIDR network or a host name" if host_names else "an IP address or a CIDR network"
        text = self.text(item, item_path, what).strip()
        try:
            return ipaddress.ip_network(ipaddress.ip_address(text))
        except ValueError:
            pass
        if "/" in text:
            try:
                return ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise self.error(
                    item, item_path, f"{text!r} is not a valid CIDR network (e.g. 10.0.0.0/8, fe80::/10)"
                ) from None
        if not host_names:
            raise self.error(
                item, item_path, f"{text!r} is neither an IP address nor a CIDR network (no host names here)"
            )
        if not _is_host_name(text):
            raise self.error(item, item_path, f"{text!r} is neither an IP address, a CIDR network nor a host name")
        return text.rstrip(".").lower()

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
                    entry.key_line(given[0]),
                    entry.key(given[0]),
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
                ping_interval_s = DEFAULT_RECORDER_PING_INTERVAL_S
                if (value := entry.get("ping_interval")) is not None:
                    ping_interval_s = float(self.positive(value, entry.key("ping_interval")))
                serial = self.serial_settings(entry, kind)
                if name in first_by_name:
                    where, line = first_by_name[name]
                    raise self.error(
                        name_node,
                        entry.key("name"),
                        f"duplicate recorder name {name!r}: already used by {where} (line {line})",
                    )
                first_by_name[name] = (item_path, _line(name_node))
                recorder = RecorderConfig(
                    name=name,
                    url=url,
                    timeout_s=timeout_s,
                    ping_interval_s=ping_interval_s,
                    serial=serial,
                    line=entry.line,
                )
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
        format_node = entry.require("format", f"is required (one of: {', '.join(self.formats.names)})")
        with self.collecting():
            link_format = self.choice(format_node, entry.key("format"), self.formats.names, "format")
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
            name=name,
            format=link_format,
            url=url,
            timezone=timezone,
            serial=serial,
            login=tuple(login),
            options=options,
            line=entry.line,
        )
        return link, name_node

    def format_options(self, link_format: str, options: dict[str, Any], entry: _Map, options_map: _Map | None) -> None:
        """The format's own checks of its options (bad patterns, columns, field maps), refused at start-up."""
        try:
            self.formats.validate_options(link_format, options)
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
                if recorder is not None and channel is not None and channel_node is not None:
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


def check_postgresql_url(url: str) -> None:
    """ValueError says what is wrong with a store.url, never quoting its user name or password."""
    if not url.strip():
        raise ValueError("must not be empty")
    if url != url.strip():
        raise ValueError("must not start or end with spaces")
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in POSTGRESQL_SCHEMES:
        hint = "" if separator else " (a SQLite file goes in store.path)"
        raise ValueError(f"must be a PostgreSQL URL starting with postgresql:// or postgres://{hint}")
    end = re.search(r"[/?#]", rest)
    if end is not None and "@" in rest[end.start() :]:
        # The user name or password holds an unencoded / ? or #: the URL would be read with the wrong host.
        raise ValueError("an @ after the host: in a user name or password write @ / ? # as %40 %2F %3F %23")
    if "#" in rest:
        raise ValueError("a # has no place in a PostgreSQL URL (in a password, write it as %23)")
    try:
        parts = urlsplit(url)
    except ValueError:  # urllib's reason ("Invalid IPv6 URL") quotes nothing of the URL
        raise ValueError("the host is not valid (an IPv6 address goes in brackets: [::1]:5432)") from None
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        written = parts.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
        raise ValueError(f"the port must be a number 1–65535, not {written!r}")
    host = parts.hostname
    if not host:
        raise ValueError("the host is missing")
    # libpq also takes a Unix-socket folder, percent-encoded: postgresql://%2Fvar%2Frun%2Fpostgresql/gateway
    if not _is_host(host) and not host.lower().startswith("%2f"):
        raise ValueError(f"{host!r} is not a host name or an IP address (an IPv6 address goes in brackets)")
    if not parts.path.removeprefix("/"):
        raise ValueError("the database name is missing (/DATABASE after the host)")


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
    url_scheme: str = match["scheme"]
    kinds = {"listen": URL_LISTEN, "tcp": URL_TCP, "rfc2217": URL_RFC2217, "socket": URL_SOCKET}
    if url_scheme not in kinds:
        raise ValueError(f"'{url_scheme}://' URLs are not supported")
    kind = kinds[url_scheme]
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
