"""`gateway check` on a file that loads: this machine's problems (exit 2) and risky settings (warnings, exit 0), each
as FILE:LINE: key: message; and the probe of TCP targets and listen ports on loopback."""

from __future__ import annotations

import asyncio
import socket
import textwrap
from pathlib import Path

import pytest

from drivers.smdr import SMDR_FORMATS
from gateway import probe
from gateway.cli import main
from gateway.config import GatewayConfig
from gateway.config.check import Finding, check_config
from gateway.config.key_lines import KeyLines
from gateway.config.load import load_config
from gateway.passwords import hash_password

GUID = "74c8eea0-50c6-40b2-9f3e-252ed501c3c8"
ONE_KEY = f"api:\n  keys:\n    - key: {GUID}\n      name: crm\n"
CHEAP_HASH = hash_password("secret", n=16)


def load(tmp_path: Path, text: str) -> GatewayConfig:
    path = tmp_path / "gw.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, SMDR_FORMATS)


def warnings(config: GatewayConfig) -> list[Finding]:
    return [finding for finding in check_config(config) if finding.warning]


def test_a_finding_prints_as_file_line_key_message(tmp_path: Path) -> None:
    config = load(tmp_path, "http:\n  port: 8010\n")
    (finding,) = check_config(config)
    assert str(finding) == (
        f"{tmp_path / 'gw.yaml'}:1: api.keys: warning: no API key is configured: every API request and the status "
        "page will be refused (add one under api.keys)"
    )


def test_key_lines_point_at_the_key_or_its_nearest_written_parent(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("http:\n  port: 8010\nbase: &base\n  url: tcp://h:1\nlinks:\n  - name: a\n    <<: *base\n")
    lines = KeyLines.of_file(path)
    assert lines.line("http.port") == 2
    assert lines.line("http.tls.certfile") == 1  # not written: its parent http is
    assert lines.line("links[0].name") == 6
    assert lines.line("links[0].url") == 4  # from the merged anchor
    assert lines.line("api.keys") == 1
    assert KeyLines.of_file(tmp_path / "vanished.yaml").line("http.port") == 1


def test_serial_port_problems_name_the_url_key_and_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_device = tmp_path / "ttyFAKE"
    not_a_device.write_text("")
    config_text = ONE_KEY + textwrap.dedent(
        f"""\
        links:
          - name: gone
            format: panasonic
            url: /dev/serial/by-id/usb-no-such-adapter-if00-port0
          - name: file
            format: panasonic
            url: {not_a_device}
        """
    )
    path = tmp_path / "gw.yaml"
    path.write_text(config_text)
    assert main(["check", "--config", str(path)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[0].startswith(f"{path}:8: links[0].url: serial port /dev/serial/by-id/usb-no-such-adapter")
    assert "ls -l /dev/serial/by-id/" in errors[0]
    assert errors[1] == f"{path}:11: links[1].url: {not_a_device} is not a serial port (not a character device)"


def test_warnings_alone_leave_the_exit_status_at_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            http:
              host: 0.0.0.0
              port: 8010
            api:
              users:
                - name: bob
                  password_hash: "{CHEAP_HASH}"
            """
        )
    )
    assert main(["check", "--config", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"{path}:4: api.keys: warning: no API key is configured: every API request and the status page will be "
        "refused (add one under api.keys)",
        f"{path}:5: api.users: warning: RequestToken passwords would cross the network unencrypted: http.host "
        "0.0.0.0 accepts other machines and http.tls is not set (add http.tls, or listen on 127.0.0.1 behind a "
        "TLS proxy)",
    ]
    assert "configuration OK (2 warnings)" in captured.out


def test_passwords_on_loopback_or_over_tls_are_not_warned_about(tmp_path: Path) -> None:
    config = load(tmp_path, f'{ONE_KEY}  users:\n    - name: bob\n      password_hash: "{CHEAP_HASH}"\n')
    assert warnings(config) == []


def test_ports_and_serial_ports_used_twice_are_warned_about(tmp_path: Path) -> None:
    by_id = tmp_path / "by-id-link"
    by_id.symlink_to("/dev/null")
    config = load(
        tmp_path,
        ONE_KEY
        + textwrap.dedent(
            f"""\
        http:
          port: 5100
        links:
          - {{name: on-api-port, format: panasonic, url: "listen://0.0.0.0:5100"}}
          - {{name: l1, format: panasonic, url: "listen://127.0.0.1:5200"}}
          - {{name: l2, format: panasonic, url: "listen://0.0.0.0:5200"}}
          - {{name: s1, format: panasonic, url: /dev/null}}
          - {{name: s2, format: panasonic, url: {by_id}}}
          - {{name: t1, format: avaya-ipo, url: "tcp://10.0.0.5:2300"}}
        recorders:
          - {{name: r1, url: "tcp://10.0.0.5:2300"}}
          - {{name: low, url: "tcp://10.0.0.6:23"}}
        """
        ),
    )
    found = {(finding.key, finding.line): finding.message for finding in warnings(config)}
    assert found.keys() == {
        ("links[0].url", 8),
        ("links[2].url", 10),
        ("links[4].url", 12),
        ("recorders[0].url", 15),
    }
    assert found[("links[0].url", 8)].startswith("port 5100 is the API's port (http.port, line 6)")
    assert found[("links[2].url", 10)].startswith("port 5200 is also listened on by links[1] l1 (line 9)")
    assert found[("links[4].url", 12)].startswith(f"serial port {by_id} is also used by links[3] s1 (line 11)")
    assert found[("recorders[0].url", 15)].startswith("links[5] t1 (line 13) connects to the same address")


def test_ports_below_1024_are_warned_about(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f'{ONE_KEY}http:\n  port: 443\nlinks:\n  - {{name: a, format: panasonic, url: "listen://0.0.0.0:23"}}\n',
    )
    assert [(finding.key, finding.message.split(":")[0]) for finding in warnings(config)] == [
        ("http.port", "port 443 is below 1024"),
        ("links[0].url", "port 23 is below 1024"),
    ]


PG_URL = "postgresql://gateway:s3cret-pw@db.example:5432/gateway?sslmode=require"


def test_check_with_a_store_url_prints_the_node_and_the_url_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(f"node: site-a\nstore:\n  url: {PG_URL}\n  spool: {tmp_path}/spool.db\n{ONE_KEY}")
    assert main(["check", "--config", str(path)]) == 0
    captured = capsys.readouterr()
    assert "node: site-a" in captured.out.splitlines()
    assert "store: PostgreSQL postgresql://gateway:***@db.example:5432/gateway?sslmode=require" in captured.out
    assert f"spool (this node's own file): {tmp_path}/spool.db" in captured.out
    assert "s3cret-pw" not in captured.out + captured.err


def test_a_spool_that_cannot_be_created_is_a_store_spool_problem(tmp_path: Path) -> None:
    (tmp_path / "spool.db").mkdir()
    config = load(tmp_path, f"store:\n  url: {PG_URL}\n  spool: {tmp_path}/spool.db\n{ONE_KEY}")
    assert [(finding.key, finding.line) for finding in check_config(config)] == [("store.spool", 3)]


# ---- the probe, in-process: TCP targets and listen ports on loopback (serial ports: tests/integration)


async def test_probe_connect_reports_connected_refused_and_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    accepted = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reachable, detail = await probe.probe_connect("127.0.0.1", port)
        assert reachable and detail.startswith("connected in ") and detail.endswith(" ms")
    finally:
        server.close()
        await server.wait_closed()
    reachable, detail = await probe.probe_connect("127.0.0.1", port)  # closed now
    assert (reachable, detail.split(" (")[0]) == (False, "refused")

    # A listener that never accepts, its backlog full: further connects get no answer, as behind a firewall.
    monkeypatch.setattr(probe, "PROBE_CONNECT_TIMEOUT_S", 0.3)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(silent.getsockname())
            fillers.append(filler)
        reachable, detail = await probe.probe_connect(*silent.getsockname())
        assert (reachable, detail.split(" (")[0]) == (False, "timed out after 0.3 s")
    finally:
        for filler in fillers:
            filler.close()
        silent.close()


async def test_probe_listen_reports_a_free_port_and_one_in_use() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    holder.close()
    assert await probe.probe_listen("127.0.0.1", port) == (True, "free: the gateway can listen here")
    reachable, detail = await probe.probe_listen("192.0.2.1", port)  # TEST-NET-1: never this machine's
    assert (reachable, detail) == (False, "192.0.2.1 is not an address of this machine")
