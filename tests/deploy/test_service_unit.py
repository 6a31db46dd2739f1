"""deploy/recorder-gateway.service: the keys the service needs are there, its paths are the ones docs/install.md
tells the installer to create, and (where systemd-analyze is installed) systemd itself accepts it."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.smdr import SMDR_FORMATS
from gateway.config.check import check_config
from gateway.config.load import load_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "recorder-gateway.service"
INSTALL_DOC = ROOT / "docs" / "install.md"
ANALYZE_TIMEOUT_S = 30.0
# systemd-analyze security rates 0 (locked down) to 10 (exposed); the unit scored 1.6 with systemd 252.
MAX_EXPOSURE = 2.0

REQUIRED = {
    "Service": {
        "Type": "notify",
        "NotifyAccess": "main",
        "User": "recorder-gateway",
        "SupplementaryGroups": "dialout",
        "StateDirectory": "recorder-gateway",
        "ConfigurationDirectory": "recorder-gateway",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "DevicePolicy": "closed",
        "CapabilityBoundingSet": "",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
    },
    "Install": {"WantedBy": "multi-user.target"},
}


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def all_values(key: str) -> list[str]:
    """Every assignment of a key given more than once (configparser keeps only the last)."""
    return [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|min)?", value)
    assert match, f"not a simple time span: {value!r}"
    return float(match[1]) * (60 if match[2] == "min" else 1)


def test_the_unit_has_the_keys_the_service_needs() -> None:
    parsed = unit()
    for section, keys in REQUIRED.items():
        for key, value in keys.items():
            assert parsed.get(section, key, fallback=None) == value, f"[{section}] {key}"


def test_timeouts_and_the_watchdog_are_set() -> None:
    service = unit()["Service"]
    for key in ("WatchdogSec", "RestartSec", "TimeoutStopSec", "TimeoutStartSec"):
        assert seconds(service[key]) > 0, key


def test_only_the_serial_port_drivers_are_allowed_read_write() -> None:
    assert sorted(all_values("DeviceAllow")) == ["char-ttyACM rw", "char-ttyS rw", "char-ttyUSB rw"]
    assert unit()["Service"].get("PrivateDevices", "no") == "no", "PrivateDevices would hide the serial ports"


def test_exec_start_and_paths_are_the_ones_the_install_guide_uses() -> None:
    service = unit()["Service"]
    command = service["ExecStart"].split()
    assert command[1:3] == ["run", "--config"]
    program, config_file = command[0], command[3]
    assert program == "/opt/recorder-gateway/bin/gateway"
    assert config_file == "/etc/recorder-gateway/gateway.yaml"
    assert config_file.startswith(f"/etc/{service['ConfigurationDirectory']}/")
    state_folder = f"/var/lib/{service['StateDirectory']}"
    assert service["WorkingDirectory"] == state_folder
    guide = INSTALL_DOC.read_text()
    for text in (program, config_file, state_folder, "deploy/recorder-gateway.service", service["User"], "dialout"):
        assert text in guide, f"docs/install.md does not mention {text}"
    assert "python3 -m venv /opt/recorder-gateway" in guide  # where ExecStart's program comes from


def _unit_runnable_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's gateway (verify checks that the program exists)."""
    program = Path(sys.executable).parent / "gateway"
    if not program.exists():
        pytest.skip("the gateway console script is not installed in this environment")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/recorder-gateway/bin/gateway", str(program)))
    return copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit_and_rates_it_well_protected(tmp_path: Path) -> None:
    copy = _unit_runnable_here(tmp_path)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=ANALYZE_TIMEOUT_S
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(copy)],
        capture_output=True,
        text=True,
        timeout=ANALYZE_TIMEOUT_S,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    if security.returncode != 0 and match is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit offline: {security.stderr.strip()}")
    assert match, security.stdout
    assert float(match[1]) <= MAX_EXPOSURE, security.stdout


def test_the_install_guide_configuration_loads_and_has_nothing_to_warn_about(tmp_path: Path) -> None:
    guide = INSTALL_DOC.read_text()
    match = re.search(r"<!-- install: gateway.yaml -->\n```yaml\n(.*?)```", guide, re.S)
    assert match, "docs/install.md has no marked gateway.yaml"
    path = tmp_path / "gateway.yaml"
    path.write_text(match[1])
    config = load_config(path, SMDR_FORMATS)
    assert config.store.path == Path("/var/lib/recorder-gateway/gateway.db")
    findings = [str(finding) for finding in check_config(config)]
    # On this machine the adapter and /var/lib/recorder-gateway are missing; nothing else may be found.
    assert all(("links[0].url" in finding or "store.path" in finding) for finding in findings), findings
    assert not any("warning" in finding for finding in findings), findings
