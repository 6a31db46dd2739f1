"""The configuration model: frozen dataclasses and their defaults (docs/configuration.md).

Reading a file into it is gateway.config.load (YAML → these dataclasses, every error naming file, line and key,
over the line-numbered YAML nodes of gateway.config.yaml_nodes); `gateway check` prints it with
gateway.config.describe. Drivers take their parts of it (LinkConfig, SerialSettings, RecorderConfig).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.model import RecordingMode

DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8010
# A contact centre's desktops each park a status=next request; 10,000 of them, with room for slow or hostile
# clients beside them, fit in ~150 MB (docs/benchmarks.md) and under a raised open-file limit.
DEFAULT_MAX_CONNECTIONS = 10_000
# Who may read /healthz, /livez and /metrics without a key: this machine only, until the file names a monitor's network.
DEFAULT_OPS_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
DEFAULT_STORE_PATH = "var/gateway.db"
# With store.url (PostgreSQL) the node's own local file, relative to the current directory like store.path.
DEFAULT_SPOOL_PATH = "var/gateway-{node}.db"
POSTGRESQL_SCHEMES = ("postgresql", "postgres")
DEFAULT_POSTGRESQL_PORT = 5432
# A node's name (the top-level `node`, api.keys[].sites): it names a file (the spool) and appears in URLs and metrics.
MAX_NODE_NAME_LENGTH = 64
NODE_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_NODE_NAME_LENGTH}}}")
NODE_NAME_RULE = f"1–{MAX_NODE_NAME_LENGTH} letters, digits, '.', '_' or '-'"
_NOT_NODE_CHARACTER = re.compile(r"[^A-Za-z0-9._-]")
FALLBACK_NODE_NAME = "gateway"  # a machine without a host name
DEFAULT_TOKEN_TTL_S = 3600
DEFAULT_NEXT_WINDOW_S = 60.0
MAX_ON_DEMAND_RETENTION_S = 48 * 3600
DAY_S = 86400
# store.retention defaults (docs/configuration.md): calls are kept for ever unless the file says otherwise; raw journal
# lines and quarantined lines are troubleshooting material, kept 90 days.
DEFAULT_CALLS_RETENTION_S: float | None = None
DEFAULT_JOURNAL_RETENTION_S: float | None = 90 * DAY_S
DEFAULT_QUARANTINE_RETENTION_S: float | None = 90 * DAY_S
DEFAULT_EVENTS_RETENTION_S: float | None = 7 * DAY_S
RETENTION_FOREVER = "forever"
DEFAULT_RECORDER_TIMEOUT_S = 2.0
DEFAULT_RECORDER_PING_INTERVAL_S = 5.0


def default_node_name(host_name: str | None = None) -> str:
    """This machine's host name as a node name: its first label (`pbx1.example.com` → `pbx1`), with any character
    a node name may not hold replaced by `-`."""
    name = (socket.gethostname() if host_name is None else host_name).split(".", 1)[0]
    name = _NOT_NODE_CHARACTER.sub("-", name)[:MAX_NODE_NAME_LENGTH]
    return name or FALLBACK_NODE_NAME


@dataclass(frozen=True, slots=True)
class TlsConfig:
    certfile: Path
    keyfile: Path


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = DEFAULT_HTTP_HOST
    port: int = DEFAULT_HTTP_PORT
    tls: TlsConfig | None = None
    # The networks /healthz, /livez and /metrics answer (403 elsewhere): they need no key, and say how busy the site is.
    ops_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = DEFAULT_OPS_NETWORKS
    # Open connections at once; more are answered 503 and closed. status=next waiters each hold one.
    max_connections: int = DEFAULT_MAX_CONNECTIONS


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
    events_s: float | None = DEFAULT_EVENTS_RETENTION_S  # the event feed (GET /events resumes within it)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path = Path(DEFAULT_STORE_PATH)
    # full: every commit is on disk before it is acknowledged, power loss included (fsync per commit).
    # normal: commits survive a crash or kill of the gateway, but the last ones may be lost if the
    # machine itself loses power; saves the fsync (~0.3–1 ms) on each KeepCall answer.
    sync: str = DEFAULT_STORE_SYNC
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    # PostgreSQL, shared by the gateways of a cluster (docs/scale-out.md); None = the SQLite file at `path` alone.
    # With a url, `path` is this node's own local file (store.spool): the local file is always `path`.
    url: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyConfig:
    key: str  # GUID, lower-cased
    name: str  # 3–128 characters
    require_token: bool = False
    # None = any address. Entries are ip_network objects (a bare address is a /32 or /128)
    # or host names (str), resolved when a request is checked.
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | str, ...] | None = None
    # The nodes whose calls this key sees; None = every node.
    sites: tuple[str, ...] | None = None


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
    format: str  # a format of the drivers' registry (drivers.smdr.SMDR_FORMATS)
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
    # How often an idle link is PINGed; three missed replies in a row and the link is dropped and reopened.
    ping_interval_s: float = DEFAULT_RECORDER_PING_INTERVAL_S
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
    node: str = field(default_factory=default_node_name)  # this gateway's name in a cluster

    def extension(self, number: str) -> ExtensionConfig | None:
        for extension in self.extensions:
            if extension.number == number:
                return extension
        return None


class LinkFormats(Protocol):
    """The PBX record formats a link may name, and their own checks of its `options` (the drivers' registry)."""

    @property
    def names(self) -> tuple[str, ...]: ...

    def validate_options(self, format_name: str, options: Mapping[str, Any]) -> None:
        """Raises ValueError naming the key at fault first ("pattern: is required in regex mode")."""

    def describe(self, link: LinkConfig) -> str:
        """How the link's parser will read its lines (layout, time semantics …), for `gateway check`."""
