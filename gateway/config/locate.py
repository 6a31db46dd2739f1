"""Which configuration file a command reads: one lookup rule for every command (docs/configuration.md).

`--config FILE`, else `$GATEWAY_CONFIG`, else `./config/gateway.yaml`, else `/etc/recorder-gateway/gateway.yaml`;
only `gateway demo` then falls back to the default file shipped beside the code. A file named on the command line
or in the environment is used or refused as named, never silently replaced by a later place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gateway.config import DEFAULT_CONFIG_PATH
from gateway.errors import ConfigError

CONFIG_ENV_VAR = "GATEWAY_CONFIG"
SYSTEM_CONFIG_PATH = Path("/etc/recorder-gateway/gateway.yaml")
# The default configuration as shipped with the code, for `gateway demo` started outside the project folder.
BUNDLED_CONFIG_PATH = Path(__file__).resolve().parents[2] / DEFAULT_CONFIG_PATH

# For --help and messages: the places tried in order when neither --config nor the environment names a file.
SEARCHED_PLACES = f"./{DEFAULT_CONFIG_PATH} (in the current folder), else {SYSTEM_CONFIG_PATH}"
LOOKUP_RULE = f"--config FILE, else ${CONFIG_ENV_VAR}, else {SEARCHED_PLACES}"


def find_config(
    given: Path | None,
    *,
    environ: Mapping[str, str],
    bundled_fallback: bool = False,
    system_path: Path | None = None,
    bundled_path: Path | None = None,
) -> Path:
    """The file to read, by the rule above; ConfigError naming every place tried when there is none.

    A path from `--config` is returned even when missing, so that loading it says 'no such file' about the file
    the user named; one from the environment that is missing is refused here, naming the variable.
    """
    if given is not None:
        return given
    from_environment = environ.get(CONFIG_ENV_VAR, "")
    if from_environment:
        if not Path(from_environment).is_file():
            raise ConfigError(f"${CONFIG_ENV_VAR} names {from_environment}, which is not a file")
        return Path(from_environment)
    candidates = [DEFAULT_CONFIG_PATH, system_path or SYSTEM_CONFIG_PATH]
    if bundled_fallback:
        candidates.append(bundled_path or BUNDLED_CONFIG_PATH)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(candidate) for candidate in candidates)
    raise ConfigError(
        f"no configuration file: no --config, ${CONFIG_ENV_VAR} is not set, and none of {tried} exists "
        f"(relative to {Path.cwd()}); name one with --config FILE"
    )
