"""Configuration loading: the bundled files load, and every kind of mistake is refused with file, line and key."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from drivers.smdr import SMDR_FORMATS
from gateway.config import MAX_ON_DEMAND_RETENTION_S, GatewayConfig, SerialSettings
from gateway.config.check import check_config
from gateway.config.describe import describe_config
from gateway.config.load import load_config
from gateway.errors import ConfigError
from gateway.model import RecordingMode
from gateway.passwords import hash_password

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "config" / "gateway.yaml"
EXAMPLES = sorted((REPO / "config" / "examples").glob("*.yaml"))
# A cheap hash (tiny scrypt cost) keeps the module fast; the loader only parses it.
CHEAP_HASH = hash_password("secret", n=16)
GUID = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"

ONE_RECORDER = """\
recorders:
  - name: trunk1
    url: tcp://127.0.0.1:7010
"""
TWO_RECORDERS = """\
recorders:
  - name: trunk1
    url: tcp://127.0.0.1:7010
  - name: trunk2
    url: tcp://127.0.0.1:7011
"""


def write(tmp_path: Path, text: str, name: str = "gw.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> GatewayConfig:
    return load_config(write(tmp_path, text), SMDR_FORMATS)


def refused(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, SMDR_FORMATS)
    return caught.value


def assert_names(error: ConfigError, line: int, key: str | None, fragment: str) -> None:
    """The first line of the message is FILE:LINE: KEY: message, naming all three."""
    first = str(error).splitlines()[0]
    assert first.startswith(f"{error.file}:{line}: "), first
    assert "gw.yaml" in first
    assert error.line == line
    if key is not None:
        assert f":{line}: {key}: " in first, first
        assert error.key == key
    assert fragment in first, first


# ---- the files that ship


@pytest.mark.parametrize("path", [BUNDLED, *EXAMPLES], ids=lambda path: path.name)
def test_shipped_files_load(path: Path) -> None:
    config = load_config(path, SMDR_FORMATS)
    assert config.source == path
    assert describe_config(config, SMDR_FORMATS)


def test_examples_exist() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"minimal.yaml", "site-avaya-trunk.yaml", "secured-api.yaml", "serial-panasonic.yaml"} <= names


def test_bundled_default_content() -> None:
    config = load_config(BUNDLED, SMDR_FORMATS)
    assert (config.http.host, config.http.port, config.http.tls) == ("127.0.0.1", 8010, None)
    assert config.store.path == Path.cwd() / "var" / "gateway.db"
    demo, secure = config.api.keys
    assert (demo.key, demo.name, demo.require_token) == ("6f1c2a7e-3b8d-4e59-9a41-0c2d7e5b8f13", "demo", False)
    assert demo.networks == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert (secure.key, secure.name, secure.require_token) == (
        "3d2b9c14-8e7a-4f06-b5d1-2a9e6c7f4b80",
        "demo-secure",
        True,
    )
    assert [user.name for user in config.api.users] == ["demo"]
    assert config.on_demand.retention_s == MAX_ON_DEMAND_RETENTION_S
    assert [(e.number, e.mode, e.recorder, e.channel) for e in config.extensions] == [
        ("8856", RecordingMode.CONTROLLED, "trunk1", "1/5"),
        ("8857", RecordingMode.FULL, "trunk1", "1/6"),
        ("8858", RecordingMode.ON_DEMAND, "trunk1", "1/7"),
        ("8859", RecordingMode.CONTROLLED_AUTOSTART, "trunk1", "1/8"),
        ("8860", RecordingMode.DO_NOT_RECORD, None, None),
    ]
    (recorder,) = config.recorders
    assert (recorder.name, recorder.url, recorder.timeout_s) == ("trunk1", "tcp://127.0.0.1:7010", 2.0)
    (link,) = config.links
    assert (link.name, link.format, link.url, link.serial) == ("pbx-main", "avaya-ipo", "listen://127.0.0.1:5100", None)
    assert (config.log.level, config.log.format) == ("info", "console")
    assert check_config(config) == []


def test_defaults_for_a_tiny_file(tmp_path: Path) -> None:
    config = load(tmp_path, "log:\n  level: debug\n")
    assert config.http.port == 8010
    assert config.http.ops_networks == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert config.api.token_ttl_s == 3600 and config.api.next_window_s == 60
    assert config.store.path.is_absolute()
    assert config.extensions == () and config.links == () and config.recorders == ()
    assert config.log.level == "debug"


# ---- scalars keep their source text


def test_extension_number_keeps_leading_zero(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        ONE_RECORDER
        + "extensions:\n  - {number: 0123, mode: full, channel: 1/5}\n  - {number: '+3612', mode: full}\n  - {number: '*72#', mode: full}\n",
    )
    assert [extension.number for extension in config.extensions] == ["0123", "+3612", "*72#"]
    assert config.extension("0123") is not None


def test_names_take_source_text(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        recorders:
          - name: 007
            url: tcp://127.0.0.1:7010
        links:
          - name: 0100
            format: 3cx
            url: listen://127.0.0.1:5100
        extensions:
          - number: 10
            mode: full
            recorder: 007
            channel: 01/05
        """,
    )
    assert config.recorders[0].name == "007"
    assert config.links[0].name == "0100"
    assert (config.extensions[0].recorder, config.extensions[0].channel) == ("007", "1/5")


# ---- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("48h", 172800),
        ("90m", 5400),
        ("3600s", 3600),
        ("1.5h", 5400),
        ("'1.5h'", 5400),
        ("3600", 3600),
        ("'3600'", 3600),
        ("7200.5", 7200.5),
        ("172800", 172800),
        ("2d", 172800),
    ],
)
def test_on_demand_retention_parsing(tmp_path: Path, text: str, seconds: float) -> None:
    assert load(tmp_path, f"on_demand:\n  retention: {text}\n").on_demand.retention_s == seconds


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("49h", "at most 48h"),
        ("172801", "at most 48h"),
        ("2881m", "at most 48h"),
        ("0", "greater than 0"),
        ("0h", "greater than 0"),
        ("-5", "greater than 0"),
        ("3d", "at most 48h"),
        ("-5h", "greater than 0"),
        ("5y", "must be a duration"),
        ("soon", "must be a duration"),
        ("true", "must be a duration"),
    ],
)
def test_on_demand_retention_refused(tmp_path: Path, text: str, fragment: str) -> None:
    error = refused(tmp_path, f"# retention\non_demand:\n  retention: {text}\n")
    assert_names(error, 3, "on_demand.retention", fragment)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2d", 2 * 86400), ("1w", 7 * 86400), ("1.5d", 1.5 * 86400), ("90m", 5400)],
)
def test_every_duration_takes_days_and_weeks(tmp_path: Path, text: str, seconds: float) -> None:
    config = load(tmp_path, f"store:\n  retention:\n    journal: {text}\n")
    assert config.store.retention.journal_s == seconds


# ---- store retention


def test_retention_defaults_keep_calls_for_ever_and_lines_90_days(tmp_path: Path) -> None:
    for text in ("log: {level: info}\n", "store: {sync: normal}\n", "store:\n  retention: {}\n"):
        retention = load(tmp_path, text).store.retention
        assert (retention.calls_s, retention.journal_s, retention.quarantine_s) == (None, 90 * 86400, 90 * 86400)
        assert retention.events_s == 7 * 86400


def test_retention_keys_take_durations_and_forever(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        store:
          retention:
            calls: 400d
            journal: 26w
            quarantine: forever
            events: 30d
        """,
    )
    retention = config.store.retention
    assert (retention.calls_s, retention.journal_s, retention.quarantine_s) == (400 * 86400, 26 * 7 * 86400, None)
    assert retention.events_s == 30 * 86400
    described = describe_config(config, SMDR_FORMATS)
    assert "  retention: calls 400d, journal 26w, quarantine forever, events 30d" in described


@pytest.mark.parametrize("key", ["calls", "journal", "quarantine", "events"])
@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("90x", "must be forever or a duration: seconds, or a number with s, m, h, d or w (48h, 90m, 3600s, 90d, 26w)"),
        ("never", "must be forever or a duration"),
        ("Forever", "must be forever or a duration"),
        ("-1d", "must be greater than 0, not -1d (write forever to never prune)"),
        ("-5", "must be greater than 0, not -5"),
        ("0", "must be greater than 0"),
        ("[90d]", "must be forever or a duration, not a list"),
        ("true", "must be forever or a duration"),
    ],
)
def test_retention_refused(tmp_path: Path, key: str, text: str, fragment: str) -> None:
    error = refused(tmp_path, f"store:\n  retention:\n    {key}: {text}\n")
    assert_names(error, 3, f"store.retention.{key}", fragment)


def test_retention_lists_every_bad_key_and_refuses_unknown_ones(tmp_path: Path) -> None:
    error = refused(tmp_path, "store:\n  retention:\n    calls: 1y\n    journal: -2d\n    recordings: 90d\n")
    lines = str(error).splitlines()
    assert len(lines) == 3
    assert "store.retention.calls: must be forever or a duration" in lines[0]
    assert "store.retention.journal: must be greater than 0" in lines[1]
    assert (
        "store.retention.recordings: unknown key 'recordings'; expected one of: calls, journal, quarantine" in lines[2]
    )


def test_retention_must_be_a_mapping(tmp_path: Path) -> None:
    assert_names(refused(tmp_path, "store:\n  retention: 90d\n"), 2, "store.retention", "must be a mapping")


# ---- api keys


def test_key_guid_is_lower_cased_and_networks_parsed(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        api:
          keys:
            - key: 74C8EEA0-50C6-40B2-9F3E-252ED501C3C8
              name: crm
              require_token: true
              networks:
                - 10.1.2.3
                - 10.0.0.1/8
                - ::1
                - fe80::/10
                - Crm.Example.COM
        """,
    )
    (key,) = config.api.keys
    assert key.key == GUID and key.require_token is True
    assert key.networks == (
        ipaddress.ip_network("10.1.2.3/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("fe80::/10"),
        "crm.example.com",
    )


def test_ops_networks_take_addresses_and_networks(tmp_path: Path) -> None:
    config = load(tmp_path, "http:\n  ops_networks:\n    - 10.9.8.7\n    - 10.20.0.1/16\n    - ::1\n")
    assert config.http.ops_networks == (
        ipaddress.ip_network("10.9.8.7/32"),
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("::1/128"),
    )
    assert "/healthz, /livez, /metrics from: 10.9.8.7/32, 10.20.0.0/16, ::1/128" in describe_config(
        config, SMDR_FORMATS
    )


def test_every_bad_ops_network_is_listed(tmp_path: Path) -> None:
    error = refused(tmp_path, "http:\n  ops_networks:\n    - nope!\n    - 10.0.0.0/8\n    - 1.2.3.4/40\n")
    assert_names(error, 3, "http.ops_networks[0]", "neither an IP address nor a CIDR network")
    assert ":5: http.ops_networks[2]: '1.2.3.4/40' is not a valid CIDR network" in str(error)


def test_key_listed_bare_is_not_echoed(tmp_path: Path) -> None:
    error = refused(tmp_path, f"api:\n  keys:\n    - {GUID}\n")
    assert_names(error, 3, "api.keys[0]", "must be a mapping")
    assert GUID not in str(error)


def test_key_without_networks_allows_any(tmp_path: Path) -> None:
    config = load(tmp_path, f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n")
    assert config.api.keys[0].networks is None
    assert config.api.keys[0].require_token is False


def test_user_defaults_and_timezone(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"""\
        api:
          users:
            - name: a
              password_hash: "{CHEAP_HASH}"
            - name: b
              password_hash: "{CHEAP_HASH}"
              timezone: Europe/Budapest
        """,
    )
    assert [(user.name, user.timezone) for user in config.api.users] == [("a", "UTC"), ("b", "Europe/Budapest")]
    assert config.api.users[0].password_hash == CHEAP_HASH


def test_password_hash_error_does_not_echo_the_hash(tmp_path: Path) -> None:
    secret = "scrypt$n=16384,r=8,p=1$c2VjcmV0c2FsdA==$TOPSECRETDIGESTVALUE!!"
    error = refused(tmp_path, f'api:\n  users:\n    - name: a\n      password_hash: "{secret}"\n')
    assert_names(error, 4, "api.users[0].password_hash", "base64")
    assert secret not in str(error)
    assert "TOPSECRET" not in str(error)


# ---- extensions and recorders


def test_recorder_is_inferred_when_only_one(tmp_path: Path) -> None:
    config = load(
        tmp_path, ONE_RECORDER + "extensions:\n  - number: '8856'\n    mode: controlled\n    channel: '1/5'\n"
    )
    assert config.extensions[0].recorder == "trunk1"


def test_recorder_named_among_several(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        TWO_RECORDERS
        + "extensions:\n  - {number: '1', mode: full, recorder: trunk2, channel: '1/5'}\n  - {number: '2', mode: full, recorder: trunk1, channel: '1/5'}\n",
    )
    assert [(e.recorder, e.channel) for e in config.extensions] == [("trunk2", "1/5"), ("trunk1", "1/5")]


def test_channel_mapped_twice(tmp_path: Path) -> None:
    error = refused(
        tmp_path,
        ONE_RECORDER
        + """\
extensions:
  - number: "8856"
    mode: full
    channel: "1/5"
  - number: "8857"
    mode: full
    channel: "01/05"
""",
    )
    assert_names(
        error,
        10,
        "extensions[1].channel",
        "channel 1/5 of recorder trunk1 is already mapped to extension 8856 (line 7)",
    )


def test_recorder_serial_settings(tmp_path: Path) -> None:
    config = load(
        tmp_path, "recorders:\n  - {name: r, url: /dev/ttyS0, baudrate: 19200}\n  - {name: s, url: 'socket://h:7000'}\n"
    )
    assert config.recorders[0].serial == SerialSettings(baudrate=19200)
    assert config.recorders[1].serial is None
    assert config.recorders[0].timeout_s == 2.0


# ---- links


@pytest.mark.parametrize(
    "url",
    [
        "listen://0.0.0.0:5100",
        "listen://[::]:5100",
        "tcp://pbx.example.com:2300",
        "tcp://[::1]:5100",
        "tcp://10.0.0.5:65535",
        "/dev/ttyUSB0",
        "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0",
        "rfc2217://10.0.0.9:4001",
        "socket://10.0.0.9:4001",
    ],
)
def test_link_url_accepted(tmp_path: Path, url: str) -> None:
    config = load(tmp_path, f"links:\n  - name: pbx\n    format: avaya-ipo\n    url: '{url}'\n")
    assert config.links[0].url == url
    assert config.links[0].line == 2
    serial_url = url.startswith(("/", "rfc2217:"))
    assert (config.links[0].serial == SerialSettings()) if serial_url else (config.links[0].serial is None)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://pbx:80", "'http://' URLs are not supported"),
        ("tcp://pbx", "port is missing"),
        ("tcp://pbx:0", "1–65535"),
        ("tcp://pbx:99999", "1–65535"),
        ("listen://:5100", "host is missing"),
        ("tcp://::1:5100", "accepted forms"),
        ("tcp://[zz]:5100", "not an IPv6 address"),
        ("dev/ttyUSB0", "neither a URL nor an absolute serial port path"),
        ("COM3", "neither a URL nor an absolute serial port path"),
        ("tcp://pbx:5100/path", "after the port"),
        ("", "must not be empty"),
    ],
)
def test_link_url_refused(tmp_path: Path, url: str, fragment: str) -> None:
    error = refused(tmp_path, f"links:\n  - name: pbx\n    format: avaya-ipo\n    url: '{url}'\n")
    assert_names(error, 4, "links[0].url", fragment)
    assert "accepted forms: listen://HOST:PORT, tcp://HOST:PORT" in str(error)


def test_link_serial_settings_and_options(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        links:
          - name: kx
            format: panasonic
            url: /dev/ttyUSB0
            timezone: Europe/Budapest
            baudrate: 1200
            bytesize: 7
            parity: e
            stopbits: 1.5
            xonxoff: true
            rtscts: false
            idle_timeout: 300
            keepalive: "\\r\\n"
            options:
              time_is: start
              site_note: [a, b]
        """,
    )
    (link,) = config.links
    assert link.serial == SerialSettings(
        baudrate=1200, bytesize=7, parity="E", stopbits=1.5, xonxoff=True, rtscts=False
    )
    assert link.timezone == "Europe/Budapest"
    assert link.options == {"time_is": "start", "site_note": ["a", "b"], "idle_timeout": 300.0, "keepalive": "\r\n"}


def test_link_login_on_tcp(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "links:\n  - name: m\n    format: mitel-mivb\n    url: tcp://10.0.0.1:1752\n    login:\n      - {expect: 'login:', send: 'smdr'}\n",
    )
    assert [(step.expect, step.send) for step in config.links[0].login] == [("login:", "smdr")]


def test_custom_format_keys_go_into_options(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        links:
          - name: csv
            format: custom
            url: listen://127.0.0.1:5200
            mode: delimited
            delimiter: ","
            min_fields: 5
            skip_regex: '^\\s*$'
            fields: {date: 0, time: 1, duration: 2, extension: 3}
            direction_map: {I: in, O: out}
            year: infer
        """,
    )
    assert config.links[0].options == {
        "mode": "delimited",
        "delimiter": ",",
        "min_fields": 5,
        "skip_regex": "^\\s*$",
        "fields": {"date": 0, "time": 1, "duration": 2, "extension": 3},
        "direction_map": {"I": "in", "O": "out"},
        "year": "infer",
    }


def test_merge_keys_are_honoured(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        links:
          - &base
            name: a
            format: avaya-ipo
            url: listen://0.0.0.0:5100
            timezone: Europe/Budapest
          - <<: *base
            name: b
            url: listen://0.0.0.0:5101
        """,
    )
    assert [(link.name, link.url, link.timezone) for link in config.links] == [
        ("a", "listen://0.0.0.0:5100", "Europe/Budapest"),
        ("b", "listen://0.0.0.0:5101", "Europe/Budapest"),
    ]


# ---- the refusals: every class of mistake names file, line and key

REFUSALS = [
    # (id, yaml, line, key, fragment)
    ("unknown top-level key", "http:\n  port: 8010\nlinkz: []\n", 3, "linkz", "unknown key 'linkz'"),
    (
        "unknown http key",
        "http:\n  host: 127.0.0.1\n  prot: 80\n",
        3,
        "http.prot",
        "unknown key 'prot'; expected one of: host, port, tls",
    ),
    (
        "duplicate key",
        "http:\n  port: 8010\n  host: 127.0.0.1\n  port: 8011\n",
        4,
        "http.port",
        "duplicate key 'port' (already given on line 2)",
    ),
    ("duplicate section", "log:\n  level: info\nlog:\n  level: debug\n", 3, "log", "duplicate key 'log'"),
    ("port not an integer", "http:\n  port: eighty\n", 2, "http.port", "must be an integer"),
    ("port quoted", "http:\n  port: '8010'\n", 2, "http.port", "must be an integer"),
    ("port float", "http:\n  port: 80.5\n", 2, "http.port", "must be an integer"),
    ("port zero", "http:\n  port: 0\n", 2, "http.port", "1–65535"),
    ("port too big", "http:\n  port: 65536\n", 2, "http.port", "1–65535"),
    ("host empty", "http:\n  host: ''\n", 2, "http.host", "host name or an IP address"),
    ("host is a list", "http:\n  host: [a]\n", 2, "http.host", "must be a host name or IP address, not a list"),
    ("http not a mapping", "http: 8010\n", 1, "http", "must be a mapping"),
    (
        "tls without keyfile",
        "http:\n  tls:\n    certfile: gw.yaml\n",
        3,
        "http.tls.keyfile",
        "is required when tls is given",
    ),
    (
        "tls missing file",
        "http:\n  tls:\n    certfile: no-such-cert.pem\n    keyfile: gw.yaml\n",
        3,
        "http.tls.certfile",
        "does not exist",
    ),
    ("ops_networks empty", "http:\n  ops_networks: []\n", 2, "http.ops_networks", "at least one network"),
    ("ops_networks null", "http:\n  ops_networks:\n", 2, "http.ops_networks", "at least one network"),
    ("ops_networks not a list", "http:\n  ops_networks: 10.0.0.0/8\n", 2, "http.ops_networks", "must be a list"),
    (
        "ops_networks host name",
        "http:\n  ops_networks:\n    - 127.0.0.1\n    - monitor.example.com\n",
        4,
        "http.ops_networks[1]",
        "no host names here",
    ),
    (
        "ops_networks bad cidr",
        "http:\n  ops_networks: [10.0.0.0/33]\n",
        2,
        "http.ops_networks[0]",
        "not a valid CIDR network",
    ),
    ("store path empty", "store:\n  path: ''\n", 2, "store.path", "must not be empty"),
    ("token_ttl zero", "api:\n  token_ttl: 0\n", 2, "api.token_ttl", "greater than 0"),
    ("token_ttl float", "api:\n  token_ttl: 1.5\n", 2, "api.token_ttl", "must be an integer"),
    ("next_window text", "api:\n  next_window: soon\n", 2, "api.next_window", "must be a number"),
    ("keys not a list", "api:\n  keys: {key: x}\n", 2, "api.keys", "must be a list"),
    (
        "key not a GUID",
        "api:\n  keys:\n    - key: not-a-guid\n      name: crm\n",
        3,
        "api.keys[0].key",
        "must be a GUID",
    ),
    (
        "key GUID in braces",
        "api:\n  keys:\n    - key: '{" + GUID + "}'\n      name: crm\n",
        3,
        "api.keys[0].key",
        "must be a GUID",
    ),
    (
        "key GUID without dashes",
        "api:\n  keys:\n    - key: " + GUID.replace("-", "") + "\n      name: crm\n",
        3,
        "api.keys[0].key",
        "must be a GUID",
    ),
    ("key missing", "api:\n  keys:\n    - name: crm\n", 3, "api.keys[0].key", "is required"),
    (
        "key name short",
        f"api:\n  keys:\n    - key: {GUID}\n      name: ab\n",
        4,
        "api.keys[0].name",
        "3–128 characters",
    ),
    (
        "key name long",
        f"api:\n  keys:\n    - key: {GUID}\n      name: {'x' * 129}\n",
        4,
        "api.keys[0].name",
        "3–128 characters",
    ),
    (
        "require_token yes please",
        f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n      require_token: yes please\n",
        5,
        "api.keys[0].require_token",
        "must be true or false",
    ),
    (
        "require_token yes",
        f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n      require_token: yes\n",
        5,
        "api.keys[0].require_token",
        "must be true or false",
    ),
    (
        "duplicate key in an item",
        "extensions:\n  - number: '1'\n    mode: full\n    number: '2'\n",
        4,
        "extensions[0].number",
        "duplicate key 'number' (already given on line 2)",
    ),
    (
        "require_token quoted",
        f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n      require_token: 'true'\n",
        5,
        "api.keys[0].require_token",
        "must be true or false",
    ),
    (
        "duplicate key value",
        f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n    - key: {GUID.upper()}\n      name: crm2\n",
        5,
        "api.keys[1].key",
        "already used by api.keys[0] (line 3)",
    ),
    (
        "duplicate key name",
        f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n    - key: 3d2b9c14-8e7a-4f06-b5d1-2a9e6c7f4b80\n      name: crm\n",
        6,
        "api.keys[1].name",
        "duplicate name 'crm'",
    ),
    (
        "network bad",
        f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n      networks:\n        - 10.0.0.0/8\n        - 300.1.1.1\n",
        7,
        "api.keys[0].networks[1]",
        "neither an IP address",
    ),
    (
        "network bad cidr",
        f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n      networks: [10.0.0.0/33]\n",
        5,
        "api.keys[0].networks[0]",
        "not a valid CIDR",
    ),
    (
        "network bad host",
        f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n      networks: [-bad-.example]\n",
        5,
        "api.keys[0].networks[0]",
        "neither an IP address",
    ),
    (
        "networks empty",
        f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n      networks: []\n",
        5,
        "api.keys[0].networks",
        "at least one network",
    ),
    (
        "unquoted ::1 in a flow list",
        f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n      networks: [127.0.0.1, ::1]\n",
        5,
        None,
        "must be quoted",
    ),
    (
        "user without name",
        f"api:\n  users:\n    - password_hash: '{CHEAP_HASH}'\n",
        3,
        "api.users[0].name",
        "is required",
    ),
    (
        "user empty name",
        f"api:\n  users:\n    - name: ''\n      password_hash: '{CHEAP_HASH}'\n",
        3,
        "api.users[0].name",
        "must not be empty",
    ),
    (
        "user without hash",
        "api:\n  users:\n    - name: bob\n",
        3,
        "api.users[0].password_hash",
        "gateway hash-password",
    ),
    (
        "user bad hash",
        "api:\n  users:\n    - name: bob\n      password_hash: plaintext\n",
        4,
        "api.users[0].password_hash",
        "not a password hash",
    ),
    (
        "user bad timezone",
        f"api:\n  users:\n    - name: bob\n      password_hash: '{CHEAP_HASH}'\n      timezone: Mars/Olympus\n",
        5,
        "api.users[0].timezone",
        "unknown time zone",
    ),
    (
        "duplicate user",
        f"api:\n  users:\n    - name: bob\n      password_hash: '{CHEAP_HASH}'\n    - name: bob\n      password_hash: '{CHEAP_HASH}'\n",
        5,
        "api.users[1].name",
        "duplicate user 'bob'",
    ),
    ("retention not a mapping", "on_demand: 48h\n", 1, "on_demand", "must be a mapping"),
    ("extensions not a list", "extensions:\n  number: 1\n", 2, "extensions", "must be a list"),
    ("extension item not a mapping", "extensions:\n  - 8856\n", 2, "extensions[0]", "must be a mapping"),
    ("extension number missing", "extensions:\n  - mode: full\n", 2, "extensions[0].number", "is required"),
    (
        "extension number letters",
        "extensions:\n  - number: 88a6\n    mode: full\n",
        2,
        "extensions[0].number",
        "dial string",
    ),
    (
        "extension number empty",
        "extensions:\n  - number: ''\n    mode: full\n",
        2,
        "extensions[0].number",
        "dial string",
    ),
    (
        "extension number null",
        "extensions:\n  - number:\n    mode: full\n",
        2,
        "extensions[0].number",
        "not empty (null)",
    ),
    ("extension mode missing", "extensions:\n  - number: 1\n", 2, "extensions[0].mode", "is required"),
    (
        "extension mode unknown",
        "extensions:\n  - number: 1\n    mode: always\n",
        3,
        "extensions[0].mode",
        "unknown mode 'always'",
    ),
    (
        "extension unknown key",
        "extensions:\n  - number: 1\n    mode: full\n    chanel: 1/5\n",
        4,
        "extensions[0].chanel",
        "unknown key 'chanel'",
    ),
    (
        "duplicate extension",
        "extensions:\n  - {number: '1', mode: full}\n  - {number: '1', mode: on_demand}\n",
        3,
        "extensions[1].number",
        "already defined at extensions[0] (line 2)",
    ),
    (
        "channel bad form",
        ONE_RECORDER + "extensions:\n  - number: 1\n    mode: full\n    channel: 1-5\n",
        7,
        "extensions[0].channel",
        "SPAN/TIMESLOT",
    ),
    (
        "channel zero",
        ONE_RECORDER + "extensions:\n  - number: 1\n    mode: full\n    channel: 0/5\n",
        7,
        "extensions[0].channel",
        "positive",
    ),
    (
        "channel no recorder",
        "extensions:\n  - number: 1\n    mode: full\n    channel: 1/5\n",
        4,
        "extensions[0].channel",
        "no recorder is configured",
    ),
    (
        "channel needs recorder",
        TWO_RECORDERS + "extensions:\n  - number: 1\n    mode: full\n    channel: 1/5\n",
        7,
        "extensions[0].recorder",
        "recorder is required when more than one recorder is configured",
    ),
    (
        "recorder without channel",
        ONE_RECORDER + "extensions:\n  - number: 1\n    mode: full\n    recorder: trunk1\n",
        5,
        "extensions[0].channel",
        "is required when a recorder is given",
    ),
    (
        "unknown recorder",
        ONE_RECORDER + "extensions:\n  - number: 1\n    mode: full\n    recorder: trunk9\n    channel: 1/5\n",
        7,
        "extensions[0].recorder",
        "unknown recorder 'trunk9'; configured recorders: trunk1",
    ),
    ("recorder name missing", "recorders:\n  - url: tcp://h:1\n", 2, "recorders[0].name", "is required"),
    ("recorder url missing", "recorders:\n  - name: r\n", 2, "recorders[0].url", "is required"),
    (
        "recorder listen url",
        "recorders:\n  - name: r\n    url: listen://0.0.0.0:7010\n",
        3,
        "recorders[0].url",
        "listen://HOST:PORT is not accepted here",
    ),
    (
        "recorder timeout zero",
        "recorders:\n  - name: r\n    url: tcp://h:1\n    timeout: 0\n",
        4,
        "recorders[0].timeout",
        "greater than 0",
    ),
    (
        "recorder timeout text",
        "recorders:\n  - name: r\n    url: tcp://h:1\n    timeout: fast\n",
        4,
        "recorders[0].timeout",
        "must be a number",
    ),
    (
        "recorder serial on tcp",
        "recorders:\n  - name: r\n    url: tcp://h:1\n    baudrate: 9600\n",
        4,
        "recorders[0].baudrate",
        "serial settings are only for",
    ),
    (
        "duplicate recorder",
        "recorders:\n  - {name: r, url: 'tcp://h:1'}\n  - {name: r, url: 'tcp://h:2'}\n",
        3,
        "recorders[1].name",
        "duplicate recorder name 'r'",
    ),
    ("link name missing", "links:\n  - format: 3cx\n    url: listen://0.0.0.0:1\n", 2, "links[0].name", "is required"),
    ("link format missing", "links:\n  - name: a\n    url: listen://0.0.0.0:1\n", 2, "links[0].format", "is required"),
    (
        "link format unknown",
        "links:\n  - name: a\n    format: avaya\n    url: listen://0.0.0.0:1\n",
        3,
        "links[0].format",
        "unknown format 'avaya'",
    ),
    ("link url missing", "links:\n  - name: a\n    format: 3cx\n", 2, "links[0].url", "is required"),
    (
        "link unknown key",
        "links:\n  - name: a\n    format: 3cx\n    url: listen://0.0.0.0:1\n    speed: 9600\n",
        5,
        "links[0].speed",
        "unknown key 'speed'",
    ),
    (
        "custom key on a non-custom link",
        "links:\n  - name: a\n    format: 3cx\n    url: listen://0.0.0.0:1\n    pattern: x\n",
        5,
        "links[0].pattern",
        "go under options",
    ),
    (
        "serial settings on tcp",
        "links:\n  - name: a\n    format: 3cx\n    url: tcp://pbx:1\n    baudrate: 9600\n",
        5,
        "links[0].baudrate",
        "serial settings are only for",
    ),
    (
        "serial settings on socket",
        "links:\n  - name: a\n    format: 3cx\n    url: socket://pbx:1\n    parity: N\n",
        5,
        "links[0].parity",
        "serial settings are only for",
    ),
    (
        "login on listen",
        "links:\n  - name: a\n    format: 3cx\n    url: listen://0.0.0.0:1\n    login:\n      - {expect: x, send: y}\n",
        5,
        "links[0].login",
        "only for tcp://",
    ),
    (
        "login step incomplete",
        "links:\n  - name: a\n    format: 3cx\n    url: tcp://pbx:1\n    login:\n      - {expect: x}\n",
        6,
        "links[0].login[0].send",
        "is required",
    ),
    (
        "login step unknown key",
        "links:\n  - name: a\n    format: 3cx\n    url: tcp://pbx:1\n    login:\n      - {expect: x, send: y, wait: 1}\n",
        6,
        "links[0].login[0].wait",
        "unknown key 'wait'",
    ),
    (
        "baudrate negative",
        "links:\n  - name: a\n    format: 3cx\n    url: /dev/ttyS0\n    baudrate: -1\n",
        5,
        "links[0].baudrate",
        "greater than 0",
    ),
    (
        "bytesize 9",
        "links:\n  - name: a\n    format: 3cx\n    url: /dev/ttyS0\n    bytesize: 9\n",
        5,
        "links[0].bytesize",
        "5, 6, 7 or 8",
    ),
    (
        "parity X",
        "links:\n  - name: a\n    format: 3cx\n    url: /dev/ttyS0\n    parity: X\n",
        5,
        "links[0].parity",
        "N, E, O, M, S",
    ),
    (
        "stopbits 3",
        "links:\n  - name: a\n    format: 3cx\n    url: /dev/ttyS0\n    stopbits: 3\n",
        5,
        "links[0].stopbits",
        "1, 1.5 or 2",
    ),
    (
        "rtscts yes please",
        "links:\n  - name: a\n    format: 3cx\n    url: /dev/ttyS0\n    rtscts: yes please\n",
        5,
        "links[0].rtscts",
        "true or false",
    ),
    (
        "link timezone bad",
        "links:\n  - name: a\n    format: 3cx\n    url: listen://0.0.0.0:1\n    timezone: Europe\n",
        5,
        "links[0].timezone",
        "unknown time zone",
    ),
    (
        "idle_timeout zero",
        "links:\n  - name: a\n    format: 3cx\n    url: listen://0.0.0.0:1\n    idle_timeout: 0\n",
        5,
        "links[0].idle_timeout",
        "greater than 0",
    ),
    (
        "options not a mapping",
        "links:\n  - name: a\n    format: 3cx\n    url: listen://0.0.0.0:1\n    options: [a]\n",
        5,
        "links[0].options",
        "must be a mapping",
    ),
    (
        "custom bad regex",
        "links:\n  - name: a\n    format: custom\n    url: listen://0.0.0.0:1\n    pattern: '(unclosed'\n",
        5,
        "links[0].pattern",
        "invalid regular expression",
    ),
    (
        "custom bad encoding",
        "links:\n  - name: a\n    format: custom\n    url: listen://0.0.0.0:1\n    encoding: klingon\n",
        5,
        "links[0].encoding",
        "unknown encoding",
    ),
    (
        "option given twice",
        "links:\n  - name: a\n    format: custom\n    url: listen://0.0.0.0:1\n    mode: csv\n    options:\n      mode: fixed\n",
        5,
        "links[0].mode",
        "given both here and under options (line 7)",
    ),
    (
        "duplicate link",
        "links:\n  - {name: a, format: 3cx, url: 'listen://0.0.0.0:1'}\n  - {name: a, format: 3cx, url: 'listen://0.0.0.0:2'}\n",
        3,
        "links[1].name",
        "duplicate link name 'a'",
    ),
    ("log level", "log:\n  level: verbose\n", 2, "log.level", "expected one of: debug, info, warning, error"),
    ("log format", "log:\n  format: xml\n", 2, "log.format", "expected one of: console, json"),
    ("yaml syntax", "http:\n  host: 127.0.0.1\n port: 8010\n", 3, None, "YAML syntax error"),
    # A quote or bracket left open: the line where it opened, not where the parser noticed.
    ("yaml unclosed quote", 'http:\n  host: "127.0.0.1\n', 2, None, "quoted scalar opened on line 2"),
    ("top level a list", "- http\n- api\n", 1, None, "the top level must be a mapping"),
    ("top level a scalar", "hello\n", 1, None, "the top level must be a mapping"),
    ("empty file", "", 1, None, "the configuration is empty"),
    ("only comments", "# nothing here\n", 1, None, "the configuration is empty"),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS]
)
def test_refused(tmp_path: Path, text: str, line: int, key: str | None, fragment: str) -> None:
    error = refused(tmp_path, text)
    assert_names(error, line, key, fragment)


def test_an_unclosed_bracket_is_reported_where_it_opened_and_where_the_parser_gave_up(tmp_path: Path) -> None:
    # The case: `port: [8010` left open; the parser gives up only at the next section, lines later.
    text = "http:\n  host: 127.0.0.1\n  port: [8010\n\n# The store\nstore:\n  path: var/gateway.db\n"
    error = refused(tmp_path, text)
    assert_names(error, 3, None, "a flow sequence opened on line 3 and not closed by line 6")
    assert "expected ',' or ']'" in str(error)


def test_bad_indentation_is_reported_where_the_parser_gave_up_naming_the_mapping_it_was_in(tmp_path: Path) -> None:
    error = refused(tmp_path, "a: 1\nb:\n  c: 1\n  d: 2\n e: 3\n")
    assert_names(error, 5, None, "(while parsing a block mapping that opened on line 1)")


def test_all_problems_are_listed_first_one_first(tmp_path: Path) -> None:
    error = refused(tmp_path, "log:\n  level: loud\nhttp:\n  port: 0\n  prot: 1\n")
    lines = str(error).splitlines()
    assert lines[0].endswith(
        "gw.yaml:2: log.level: unknown log level 'loud'; expected one of: debug, info, warning, error"
    )
    assert any(":4: http.port: " in line for line in lines[1:])
    assert any(":5: http.prot: unknown key" in line for line in lines[1:])
    assert len(error.problems) == 3  # type: ignore[attr-defined]


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/gateway.yaml", SMDR_FORMATS)


def test_tls_paths_relative_to_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_text("not a certificate")
    (tmp_path / "tls" / "key.pem").write_text("not a key")
    config = load(tmp_path, "http:\n  tls:\n    certfile: tls/cert.pem\n    keyfile: tls/key.pem\n")
    assert config.http.tls is not None
    assert config.http.tls.certfile == tmp_path / "tls" / "cert.pem"
    problems = check_config(config)
    assert any(problem.key == "http.tls" and problem.message.startswith("cannot use") for problem in problems)


# ---- check_config and describe_config


def test_check_reports_missing_serial_ports(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        recorders:
          - name: r
            url: /dev/null
        links:
          - name: a
            format: panasonic
            url: /dev/serial/by-id/no-such-adapter
          - name: b
            format: panasonic
            url: rfc2217://10.0.0.9:4001
        """,
    )
    (problem,) = [finding for finding in check_config(config) if not finding.warning]
    assert (problem.line, problem.key, problem.warning) == (7, "links[0].url", False)
    assert problem.message.startswith("serial port /dev/serial/by-id/no-such-adapter does not exist")


def test_describe_never_shows_secrets(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"""\
        api:
          keys:
            - key: {GUID.upper()}
              name: crm-key
          users:
            - name: bob
              password_hash: "{CHEAP_HASH}"
        links:
          - name: m
            format: mitel-mivb
            url: tcp://10.0.0.1:1752
            login:
              - {{expect: "Password:", send: "hunter2"}}
        """,
    )
    text = describe_config(config, SMDR_FORMATS)
    assert "crm-key" in text and "bob" in text and "tcp://10.0.0.1:1752" in text
    for secret in (GUID, GUID.upper(), CHEAP_HASH, CHEAP_HASH.split("$")[-1], "hunter2"):
        assert secret not in text


def test_describe_bundled_default() -> None:
    text = describe_config(load_config(BUNDLED, SMDR_FORMATS), SMDR_FORMATS)
    assert "127.0.0.1:8010" in text
    assert "8856: controlled, recorder trunk1 channel 1/5" in text
    assert "pbx-main: avaya-ipo at listen://127.0.0.1:5100" in text
    assert "trunk1: tcp://127.0.0.1:7010 (timeout 2 s)" in text
    assert "6f1c2a7e" not in text and "3d2b9c14" not in text and "scrypt$" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("log: {format: json}\n", ("info", "json", "full")),
        ("log: {level: debug}\n", ("debug", "console", "full")),
        ("store: {sync: normal}\n", ("info", "console", "normal")),
    ],
)
def test_defaults_of_partly_given_sections_are_values(tmp_path, text, expected):
    """A section that gives some keys gets the documented defaults for the others (not dataclass internals)."""
    path = tmp_path / "partial.yaml"
    path.write_text(text)
    config = load_config(path, SMDR_FORMATS)
    assert (config.log.level, config.log.format, config.store.sync) == expected


def test_store_sync_refuses_unknown_modes(tmp_path):
    path = tmp_path / "sync.yaml"
    path.write_text("store:\n  sync: sometimes\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, SMDR_FORMATS)
    assert f"{path}:2" in str(raised.value) and "store.sync" in str(raised.value)


@pytest.mark.parametrize(
    ("link_yaml", "line", "key"),
    [
        ("    format: panasonic\n    url: /dev/ttyS0\n    options:\n      layout: Z\n", 6, "links[0].options.layout"),
        (
            "    format: custom\n    url: listen://0.0.0.0:5100\n    mode: regex\n    pattern: '(no groups)'\n",
            6,
            "links[0].pattern",
        ),
        (
            "    format: 3cx\n    url: listen://0.0.0.0:5100\n    options:\n      fields: [bogus]\n",
            6,
            "links[0].options.fields",
        ),
    ],
)
def test_format_options_are_checked_by_the_format_at_start_up(tmp_path, link_yaml, line, key):
    path = tmp_path / "formats.yaml"
    path.write_text("links:\n  - name: pbx\n" + link_yaml)
    with pytest.raises(ConfigError) as raised:
        load_config(path, SMDR_FORMATS)
    message = str(raised.value).splitlines()[0]
    assert message.startswith(f"{path}:{line}: {key}: "), message


def test_custom_skip_regex_accepts_a_list(tmp_path):
    path = tmp_path / "unify.yaml"
    path.write_text(
        "links:\n  - name: unify\n    format: custom\n    url: listen://0.0.0.0:5100\n    mode: delimited\n"
        "    delimiter: '|'\n    skip_regex: ['^Datum\\|', '^-+$']\n"
        "    fields: {date: 0, time: 1, trunk: 2, extension: 3, duration: 5, other_number: 6}\n"
        "    date_format: '%d.%m.%y'\n    time_format: '%H:%M:%S'\n"
    )
    assert load_config(path, SMDR_FORMATS).links[0].options["skip_regex"] == ["^Datum\\|", "^-+$"]


def test_link_correlation_window_is_a_positive_number(tmp_path):
    path = tmp_path / "corr.yaml"
    path.write_text(
        "links:\n  - name: pbx\n    format: avaya-ipo\n    url: listen://0.0.0.0:5100\n    correlation_window: 300\n"
    )
    assert load_config(path, SMDR_FORMATS).links[0].options["correlation_window"] == 300.0
    path.write_text(
        "links:\n  - name: pbx\n    format: avaya-ipo\n    url: listen://0.0.0.0:5100\n    correlation_window: -1\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, SMDR_FORMATS)
    assert f"{path}:5" in str(raised.value) and "links[0].correlation_window" in str(raised.value)


# ---- a cluster of gateways: node, store.url, store.spool, api.keys[].sites

PG_PASSWORD = "s3cret-pw"
PG_URL = f"postgresql://gateway:{PG_PASSWORD}@db.example:5432/gateway?sslmode=require"


@pytest.mark.parametrize(
    ("host_name", "node"),
    [
        ("pbx1", "pbx1"),
        ("pbx1.example.com", "pbx1"),
        ("site a_1", "site-a_1"),
        ("hôte", "h-te"),
        ("x" * 70, "x" * 64),
        ("", "gateway"),
    ],
)
def test_the_default_node_is_the_host_names_first_label_made_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host_name: str, node: str
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: host_name)
    assert load(tmp_path, "log:\n  level: info\n").node == node


@pytest.mark.parametrize("node", ["site-a", "a", "pbx1.example.com", "Site_B-2", "1234", "n" * 64])
def test_node_names_accepted(tmp_path: Path, node: str) -> None:
    assert load(tmp_path, f"node: {node}\n").node == node


@pytest.mark.parametrize(
    "url",
    [
        PG_URL,
        "postgres://db.example/gateway",
        "postgresql://gateway@10.0.0.5:6432/gateway",
        "postgresql://gateway:p%40ss%2Fword@[::1]:5432/gateway",
        "postgresql://db/gateway?sslmode=verify-full&application_name=site-a",
        "postgresql://%2Fvar%2Frun%2Fpostgresql/gateway",
    ],
)
def test_store_url_is_kept_as_written_and_the_spool_is_named_after_the_node(tmp_path: Path, url: str) -> None:
    config = load(tmp_path, f"node: site-a\nstore:\n  url: '{url}'\n")
    assert config.store.url == url
    assert config.store.path == Path.cwd() / "var" / "gateway-site-a.db"


def test_store_spool_is_the_local_file_with_a_url(tmp_path: Path) -> None:
    config = load(tmp_path, f"store:\n  url: {PG_URL}\n  spool: var/spool.db\n  sync: normal\n")
    assert (config.store.path, config.store.sync) == (Path.cwd() / "var" / "spool.db", "normal")
    assert load(tmp_path, f"store:\n  url: {PG_URL}\n  spool: {tmp_path}/s.db\n").store.path == tmp_path / "s.db"


def test_without_a_url_the_store_is_sqlite_alone(tmp_path: Path) -> None:
    config = load(tmp_path, "node: site-a\nstore:\n  path: var/site.db\n")
    assert (config.store.url, config.store.path) == (None, Path.cwd() / "var" / "site.db")
    assert load(tmp_path, "node: site-a\n").store.url is None


def test_api_key_sites(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"api:\n  keys:\n    - {{key: {GUID}, name: crm, sites: [site-a, site-b]}}\n"
        "    - {key: 11111111-2222-4333-8444-555555555555, name: all}\n",
    )
    assert [key.sites for key in config.api.keys] == [("site-a", "site-b"), None]


def key_with(sites: str) -> str:
    return f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n      sites: {sites}\n"


CLUSTER_REFUSALS = [
    # (id, yaml, line, key, fragment)
    ("node with a space", "log: {level: info}\nnode: site a\n", 2, "node", "must be a node name of 1–64 letters"),
    ("node too long", f"node: {'n' * 65}\n", 1, "node", "1–64 letters, digits, '.', '_' or '-'"),
    ("node a slash", "node: site/a\n", 1, "node", "not 'site/a'"),
    ("node empty", "node: ''\n", 1, "node", "must be a node name"),
    ("node null", "node:\n", 1, "node", "must be a node name, not empty (null)"),
    ("node a list", "node: [a]\n", 1, "node", "must be a node name, not a list"),
    (
        "path and url",
        f"store:\n  path: var/gateway.db\n  url: {PG_URL}\n",
        3,
        "store.url",
        "store.path and store.url are exclusive: path is SQLite, url is PostgreSQL",
    ),
    (
        "spool without url",
        "store:\n  path: var/gateway.db\n  spool: var/spool.db\n",
        3,
        "store.spool",
        "store.spool is only for store.url; store.path is the SQLite file",
    ),
    ("spool empty", f"store:\n  url: {PG_URL}\n  spool: ''\n", 3, "store.spool", "must not be empty"),
    ("url a file path", "store:\n  url: var/gateway.db\n", 2, "store.url", "a SQLite file goes in store.path"),
    ("url of another database", "store:\n  url: mysql://db/gw\n", 2, "store.url", "starting with postgresql://"),
    ("url empty", "store:\n  url: ''\n", 2, "store.url", "must not be empty"),
    ("url null", "store:\n  url:\n", 2, "store.url", "must be a PostgreSQL URL, not empty (null)"),
    ("url without host", "store:\n  url: postgresql:///gateway\n", 2, "store.url", "the host is missing"),
    ("url without database", "store:\n  url: postgresql://db:5432\n", 2, "store.url", "database name is missing"),
    ("url with / only", "store:\n  url: postgresql://db/\n", 2, "store.url", "database name is missing"),
    ("url port zero", "store:\n  url: postgresql://db:0/gw\n", 2, "store.url", "1–65535, not '0'"),
    ("url port too big", "store:\n  url: postgresql://db:65536/gw\n", 2, "store.url", "1–65535, not '65536'"),
    ("url port text", "store:\n  url: postgresql://db:pg/gw\n", 2, "store.url", "1–65535, not 'pg'"),
    ("url bad host", "store:\n  url: postgresql://db_1/gw\n", 2, "store.url", "'db_1' is not a host name"),
    ("url ipv6 unclosed", "store:\n  url: 'postgresql://[::1/gw'\n", 2, "store.url", "the host is not valid"),
    ("url fragment", "store:\n  url: 'postgresql://db/gw#x'\n", 2, "store.url", "a # has no place"),
    ("url spaces", "store:\n  url: ' postgresql://db/gw'\n", 2, "store.url", "must not start or end with spaces"),
    ("sites empty", key_with("[]"), 5, "api.keys[0].sites", "must list at least one node"),
    ("sites not a list", key_with("site-a"), 5, "api.keys[0].sites", "must be a list"),
    ("site bad name", key_with("[site-a, 'site b']"), 5, "api.keys[0].sites[1]", "must be a node name of 1–64"),
    (
        "site twice",
        key_with("\n        - site-a\n        - site-a"),
        7,
        "api.keys[0].sites[1]",
        "duplicate site 'site-a': already listed on line 6",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [case[1:] for case in CLUSTER_REFUSALS],
    ids=[case[0] for case in CLUSTER_REFUSALS],
)
def test_cluster_keys_refused(tmp_path: Path, text: str, line: int, key: str | None, fragment: str) -> None:
    assert_names(refused(tmp_path, text), line, key, fragment)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (f"postgresql://gateway:{PG_PASSWORD}@db.example:99999/gateway", "1–65535"),
        (f"postgresql://gateway:{PG_PASSWORD}@db.example", "database name is missing"),
        (f"postgresql://gateway:{PG_PASSWORD}@/gateway", "the host is missing"),
        (f"mysql://gateway:{PG_PASSWORD}@db.example/gateway", "starting with postgresql://"),
        (f"postgresql://gateway:{PG_PASSWORD}/x@db.example/gateway", "write @ / ? # as %40 %2F %3F %23"),
        (f"postgresql://gateway:{PG_PASSWORD}#x@db.example/gateway", "write @ / ? # as %40 %2F %3F %23"),
        (f"postgresql://db.example/gateway?password={PG_PASSWORD}#x", "a # has no place"),
        (f"postgresql://gateway:{PG_PASSWORD}@db_x/gateway", "'db_x' is not a host name"),
    ],
)
def test_a_refused_url_is_shown_without_its_password(tmp_path: Path, url: str, fragment: str) -> None:
    error = refused(tmp_path, f"store:\n  url: '{url}'\n")
    assert_names(error, 2, "store.url", fragment)
    assert PG_PASSWORD not in str(error)
    assert ":***@" in str(error) or "password=***" in str(error)


def test_describe_shows_the_node_the_url_without_its_password_the_spool_and_sites(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"node: site-a\nstore:\n  url: '{PG_URL}&password={PG_PASSWORD}'\n"
        f"api:\n  keys:\n    - {{key: {GUID}, name: crm, sites: [site-a, site-b]}}\n",
    )
    text = describe_config(config, SMDR_FORMATS)
    assert "node: site-a" in text.splitlines()
    assert (
        "store: PostgreSQL postgresql://gateway:***@db.example:5432/gateway?sslmode=require&password=***"
        in text.splitlines()
    )
    assert f"  spool (this node's own file): {Path.cwd() / 'var' / 'gateway-site-a.db'} (sync: full)" in text
    assert "    crm: no token; from any address; sites site-a, site-b" in text.splitlines()
    assert PG_PASSWORD not in text


def test_max_connections_defaults_to_10000_and_takes_a_positive_whole_number(tmp_path: Path) -> None:
    assert load(tmp_path, "http:\n  port: 8010\n").http.max_connections == 10_000
    assert load(tmp_path, "http:\n  max_connections: 20000\n").http.max_connections == 20_000
    for text in ("0", "-3", "1.5", "lots"):
        error = refused(tmp_path, f"http:\n  max_connections: {text}\n")
        assert error.line == 2 and error.key == "http.max_connections", error


def test_a_recorders_ping_interval_defaults_to_5_s_and_takes_positive_seconds(tmp_path: Path) -> None:
    recorder = """recorders:\n  - name: trunk1\n    url: tcp://127.0.0.1:7010\n"""
    assert load(tmp_path, recorder).recorders[0].ping_interval_s == 5.0
    assert load(tmp_path, recorder + "    ping_interval: 1.5\n").recorders[0].ping_interval_s == 1.5
    error = refused(tmp_path, recorder + "    ping_interval: 0\n")
    assert error.line == 4 and error.key == "recorders[0].ping_interval", error
