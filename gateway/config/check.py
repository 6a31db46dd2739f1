"""What `gateway check` finds in a file that loaded: problems this machine has with it (serial ports, TLS files, the
store's folder), which stop the gateway as surely as a bad value, and warnings about settings that are risky or
cannot work as meant. Each names file, line and key like the loader's messages."""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import ssl
import stat
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.config.key_lines import KeyLines

SERIAL_BY_ID_FOLDER = "/dev/serial/by-id"
FIRST_UNPRIVILEGED_PORT = 1024  # binding below it needs root or CAP_NET_BIND_SERVICE
_ALL_ADDRESSES = ("0.0.0.0", "::", "")
_LOOPBACK_NAMES = ("localhost", "localhost.")


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of `gateway check`: a problem (exit status 2) or a warning (exit status unchanged)."""

    file: str
    line: int
    key: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        severity = "warning: " if self.warning else ""
        return f"{self.file}:{self.line}: {self.key}: {severity}{self.message}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A link's or a recorder's url, with what it occupies: a serial device, a port it listens on or connects to."""

    key: str  # links[0].url
    owner: str  # links[0] pbx-main
    url: str
    serial_path: str | None = None  # local serial port, symlinks resolved
    listen: tuple[str, int] | None = None  # listen://HOST:PORT
    connect: tuple[str, int] | None = None  # tcp://, rfc2217://, socket://


class _Findings:
    def __init__(self, config: GatewayConfig) -> None:
        self.file = str(config.source)
        self.lines = KeyLines.of_file(config.source)
        self.found: list[Finding] = []

    def problem(self, key: str, message: str) -> None:
        self.found.append(Finding(self.file, self.lines.line(key), key, message))

    def warn(self, key: str, message: str) -> None:
        self.found.append(Finding(self.file, self.lines.line(key), key, message, warning=True))

    def where(self, key: str) -> str:
        return f"line {self.lines.line(key)}"


def check_config(config: GatewayConfig) -> list[Finding]:
    """Everything `gateway check` reports after loading: problems first, then warnings, each group in line order."""
    findings = _Findings(config)
    _check_serial_ports(config, findings)
    _check_tls(config, findings)
    _check_store(config, findings)
    _warn_about_access(config, findings)
    _warn_about_shared_endpoints(config, findings)
    _warn_about_privileged_ports(config, findings)
    return sorted(findings.found, key=lambda finding: (finding.warning, finding.line))


def endpoints(config: GatewayConfig) -> list[Endpoint]:
    devices = [(f"links[{i}]", link.name, link.url) for i, link in enumerate(config.links)]
    devices += [(f"recorders[{i}]", recorder.name, recorder.url) for i, recorder in enumerate(config.recorders)]
    found = []
    for key, name, url in devices:
        endpoint = Endpoint(key=f"{key}.url", owner=f"{key} {name}", url=url)
        if url.startswith("/"):
            endpoint = Endpoint(endpoint.key, endpoint.owner, url, serial_path=os.path.realpath(url))
        else:
            scheme, _, rest = url.partition("://")
            host_port = rest.split("?", 1)[0]
            host, _, port = host_port.rpartition(":")
            address = (host.strip("[]"), int(port))
            if scheme == "listen":
                endpoint = Endpoint(endpoint.key, endpoint.owner, url, listen=address)
            else:
                endpoint = Endpoint(endpoint.key, endpoint.owner, url, connect=address)
        found.append(endpoint)
    return found


def _check_serial_ports(config: GatewayConfig, findings: _Findings) -> None:
    for endpoint in endpoints(config):
        if endpoint.serial_path is None:
            continue
        url = endpoint.url
        try:
            status = os.stat(url)
        except FileNotFoundError:
            hint = ""
            if url.startswith(SERIAL_BY_ID_FOLDER + "/"):
                hint = f" (is the adapter plugged in? `ls -l {SERIAL_BY_ID_FOLDER}/` lists the ones this machine sees)"
            findings.problem(endpoint.key, f"serial port {url} does not exist{hint}")
            continue
        except OSError as error:
            findings.problem(endpoint.key, f"cannot look at serial port {url}: {error.strerror or error}")
            continue
        if not stat.S_ISCHR(status.st_mode):
            findings.problem(endpoint.key, f"{url} is not a serial port (not a character device)")
        elif not os.access(url, os.R_OK | os.W_OK):
            group = _group_name(status.st_gid)
            findings.problem(
                endpoint.key,
                f"permission denied on serial port {url}: it belongs to group {group}; add user {_user_name()} to "
                f"it (usermod -aG {group} USER, then log in again) — the service unit runs in group dialout",
            )


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _check_tls(config: GatewayConfig, findings: _Findings) -> None:
    tls = config.http.tls
    if tls is None:
        return
    unreadable = False
    for key, file in (("http.tls.certfile", tls.certfile), ("http.tls.keyfile", tls.keyfile)):
        try:
            with open(file, "rb"):
                pass
        except OSError as exc:
            unreadable = True
            findings.problem(key, f"cannot read {file}: {exc.strerror or exc}")
    if unreadable:
        return
    try:
        # An empty password makes an encrypted key fail here instead of prompting on the terminal.
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.certfile, tls.keyfile, password="")
    except (ssl.SSLError, OSError, ValueError) as exc:
        findings.problem("http.tls", f"cannot use {tls.certfile} with {tls.keyfile}: {exc}")


def _check_store(config: GatewayConfig, findings: _Findings) -> None:
    store_path = config.store.path
    key = "store.path" if config.store.url is None else "store.spool"  # the local file, whichever key names it
    if store_path.is_dir():
        findings.problem(key, f"{store_path} is a folder, not a database file")
        return
    folder = store_path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        findings.problem(key, f"cannot create {store_path}: {folder} is not writable by {_user_name()}")


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost); a host name is not presumed."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_about_access(config: GatewayConfig, findings: _Findings) -> None:
    api = config.api
    if not api.keys:
        findings.warn(
            "api.keys",
            "no API key is configured: every API request and the status page will be refused (add one under api.keys)",
        )
    http = config.http
    if api.users and http.tls is None and not is_loopback(http.host):
        findings.warn(
            "api.users",
            f"RequestToken passwords would cross the network unencrypted: http.host {http.host} accepts other "
            "machines and http.tls is not set (add http.tls, or listen on 127.0.0.1 behind a TLS proxy)",
        )


def _overlaps(host_a: str, host_b: str) -> bool:
    """Whether two listen addresses collide on the same port (the same address, or one of them is 'all')."""
    return host_a == host_b or host_a in _ALL_ADDRESSES or host_b in _ALL_ADDRESSES


def _warn_about_shared_endpoints(config: GatewayConfig, findings: _Findings) -> None:
    seen: list[Endpoint] = []
    http = config.http
    for endpoint in endpoints(config):
        if endpoint.listen is not None:
            host, port = endpoint.listen
            if port == http.port and _overlaps(host, http.host):
                findings.warn(
                    endpoint.key,
                    f"port {port} is the API's port (http.port, {findings.where('http.port')}): this link cannot listen",
                )
        for earlier in seen:
            if endpoint.serial_path is not None and endpoint.serial_path == earlier.serial_path:
                findings.warn(
                    endpoint.key,
                    f"serial port {endpoint.url} is also used by {earlier.owner} ({findings.where(earlier.key)}): "
                    "a serial port can be opened by one of them only",
                )
            elif (
                endpoint.listen is not None
                and earlier.listen is not None
                and endpoint.listen[1] == earlier.listen[1]
                and _overlaps(endpoint.listen[0], earlier.listen[0])
            ):
                findings.warn(
                    endpoint.key,
                    f"port {endpoint.listen[1]} is also listened on by {earlier.owner} "
                    f"({findings.where(earlier.key)}): only one of them can listen",
                )
            elif endpoint.connect is not None and endpoint.connect == earlier.connect:
                findings.warn(
                    endpoint.key,
                    f"{earlier.owner} ({findings.where(earlier.key)}) connects to the same address: most PBXs and "
                    "serial device servers take one connection per port, so one of them may be refused",
                )
        seen.append(endpoint)


def _warn_about_privileged_ports(config: GatewayConfig, findings: _Findings) -> None:
    ports = [("http.port", config.http.port)]
    ports += [(endpoint.key, endpoint.listen[1]) for endpoint in endpoints(config) if endpoint.listen is not None]
    for key, port in ports:
        if port < FIRST_UNPRIVILEGED_PORT:
            findings.warn(
                key,
                f"port {port} is below {FIRST_UNPRIVILEGED_PORT}: listening on it needs root or "
                "CAP_NET_BIND_SERVICE, which deploy/recorder-gateway.service does not grant (docs/install.md)",
            )


def problems(findings: list[Finding]) -> list[Finding]:
    return [finding for finding in findings if not finding.warning]
