"""One configuration lookup rule for every command: --config, $GATEWAY_CONFIG, ./config/gateway.yaml,
/etc/recorder-gateway/gateway.yaml; only the demo falls back to the file shipped with the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import cli
from gateway.config import locate
from gateway.config.locate import BUNDLED_CONFIG_PATH, CONFIG_ENV_VAR, find_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with no config/ in it, and no system-wide file whatever this machine has in /etc."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    monkeypatch.setattr(locate, "SYSTEM_CONFIG_PATH", tmp_path / "etc" / "gateway.yaml")
    return folder


def write_config(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((ROOT / "config" / "gateway.yaml").read_text())
    return path


def test_the_order_is_option_then_environment_then_the_folder_then_etc(elsewhere: Path, tmp_path: Path) -> None:
    system = write_config(locate.SYSTEM_CONFIG_PATH)
    assert find_config(None, environ={}) == system
    write_config(elsewhere / "config" / "gateway.yaml")
    assert find_config(None, environ={}) == Path("config/gateway.yaml")
    named = write_config(tmp_path / "named.yaml")
    assert find_config(None, environ={CONFIG_ENV_VAR: str(named)}) == named
    option = tmp_path / "option.yaml"
    assert find_config(option, environ={CONFIG_ENV_VAR: str(named)}) == option  # even before it is found missing


def test_a_missing_file_named_in_the_environment_is_refused_naming_the_variable(elsewhere: Path) -> None:
    write_config(elsewhere / "config" / "gateway.yaml")  # not used instead: the user named another file
    with pytest.raises(ConfigError, match=r"\$GATEWAY_CONFIG names /nowhere.yaml, which is not a file"):
        find_config(None, environ={CONFIG_ENV_VAR: "/nowhere.yaml"})


def test_nothing_found_names_every_place_tried_and_only_the_demo_falls_back(elsewhere: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        find_config(None, environ={})
    message = str(caught.value)
    assert "config/gateway.yaml" in message and str(locate.SYSTEM_CONFIG_PATH) in message
    assert "--config FILE" in message and str(BUNDLED_CONFIG_PATH) not in message
    assert find_config(None, environ={}, bundled_fallback=True) == BUNDLED_CONFIG_PATH


@pytest.mark.parametrize("command", [["run"], ["check"], ["tap", "--link", "ipo"]])
def test_every_command_started_elsewhere_says_the_same_thing(
    elsewhere: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(command) == cli.EXIT_CONFIG
    error = capsys.readouterr().err
    assert "no configuration file: no --config, $GATEWAY_CONFIG is not set" in error


def test_check_started_elsewhere_reads_the_file_the_environment_names(
    elsewhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    named = write_config(tmp_path / "site.yaml")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(named))
    cli.main(["check"])
    assert f"configuration: {named}" in capsys.readouterr().out


def test_help_states_the_rule() -> None:
    text = " ".join(cli.build_parser().format_help().split())  # whatever the terminal width
    assert "$GATEWAY_CONFIG" in text and "/etc/recorder-gateway/gateway.yaml" in text
    assert "`gateway demo` alone" in text
