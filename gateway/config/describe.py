"""What `gateway check` prints: the configuration as it would run (gateway.config.check finds what is wrong with it)."""

from __future__ import annotations

from gateway.config import RETENTION_FOREVER, GatewayConfig, LinkConfig, LinkFormats, SerialSettings
from gateway.config.yaml_nodes import _format_duration
from gateway.redact import redacted_url


def describe_config(config: GatewayConfig, formats: LinkFormats) -> str:
    """What the configuration would run, for `gateway check`; never shows a key, a hash, a login text or the store
    URL's password."""
    http = config.http
    scheme = "https" if http.tls else "http"
    host = f"[{http.host}]" if ":" in http.host else http.host
    lines = [f"configuration: {config.source}", f"node: {config.node}", f"HTTP API: {scheme}://{host}:{http.port}/"]
    if http.tls:
        lines.append(f"  TLS certificate: {http.tls.certfile}, key: {http.tls.keyfile}")
    lines.append(f"  /healthz, /livez, /metrics from: {', '.join(str(network) for network in http.ops_networks)}")
    if config.store.url is None:
        lines.append(f"store: {config.store.path} (sync: {config.store.sync})")
    else:
        lines.append(f"store: PostgreSQL {redacted_url(config.store.url)}")
        lines.append(f"  spool (this node's own file): {config.store.path} (sync: {config.store.sync})")
    retention = config.store.retention
    kept = [
        f"{name} {RETENTION_FOREVER if seconds is None else _format_duration(seconds)}"
        for name, seconds in (
            ("calls", retention.calls_s),
            ("journal", retention.journal_s),
            ("quarantine", retention.quarantine_s),
            ("events", retention.events_s),
        )
    ]
    lines.append(f"  retention: {', '.join(kept)}")
    api = config.api
    lines.append(f"API: token TTL {api.token_ttl_s} s, status=next window {api.next_window_s:g} s")
    lines.append(f"  keys ({len(api.keys)}):")
    for key in api.keys:
        networks = ", ".join(str(network) for network in key.networks) if key.networks is not None else "any address"
        token = "token required" if key.require_token else "no token"
        sites = f"; sites {', '.join(key.sites)}" if key.sites is not None else ""
        lines.append(f"    {key.name}: {token}; from {networks}{sites}")
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
        lines.append(f"    reads lines as: {_describe_link_variant(formats, link)}")
    lines.append(f"extensions ({len(config.extensions)}):")
    for extension in config.extensions:
        where = "no recorder channel"
        if extension.channel:
            where = f"recorder {extension.recorder} channel {extension.channel}"
        lines.append(f"  {extension.number}: {extension.mode.value}, {where}")
    lines.append(f"log: {config.log.level}, {config.log.format}")
    return "\n".join(lines)


def _describe_link_variant(formats: LinkFormats, link: LinkConfig) -> str:
    try:
        return formats.describe(link)
    except Exception as error:  # a description must not make `check` fail; validation reports real problems
        return f"unknown ({type(error).__name__}: {error})"


def _describe_serial(serial: SerialSettings) -> str:
    flow = [name for name in ("xonxoff", "rtscts") if getattr(serial, name)]
    text = f"{serial.baudrate} {serial.bytesize}{serial.parity}{serial.stopbits:g}"
    return f"{text} {'+'.join(flow)}" if flow else text
