"""Code blocks in docs/ that claim to work are exercised here, so that the docs cannot drift from the code:
python blocks (each marked `<!-- test: run -->` above the fence; an unmarked one fails the suite) run as written;
each command line of an `sh` block is parsed by its program's own argument parser (make: the target exists);
each YAML block that stands on its own loads as a configuration (or a simulator scenario)."""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.config import LinkConfig
from gateway.service import Gateway
from tests.conftest import eventually

DOCS = Path(__file__).resolve().parents[1] / "docs"
RUN_MARKER = "<!-- test: run -->"
_RUNNABLE = re.compile(re.escape(RUN_MARKER) + r"\s*\n```python\n(.*?)\n```", re.S)


def runnable_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in sorted(DOCS.glob("*.md")):
        for index, match in enumerate(_RUNNABLE.finditer(path.read_text())):
            blocks.append((f"{path.name}#{index + 1}", match.group(1)))
    return blocks


def test_the_simulators_guide_has_a_runnable_example() -> None:
    assert any(name.startswith("simulators.md") for name, _ in runnable_blocks())


@pytest.mark.parametrize(("name", "code"), runnable_blocks(), ids=[name for name, _ in runnable_blocks()])
async def test_a_runnable_docs_example_runs_as_written(name: str, code: str, gateway_config, unused_tcp_port) -> None:
    namespace: dict[str, object] = {}
    exec(compile(textwrap.dedent(code), f"docs/{name}", "exec"), namespace)  # noqa: S102 — our own docs
    tests = [value for key, value in namespace.items() if key.startswith("test_") and callable(value)]
    assert tests, f"docs/{name}: a runnable example defines an async test_… function to run"
    link = LinkConfig("pbx", "avaya-ipo", f"listen://127.0.0.1:{unused_tcp_port}", timezone="Europe/Budapest")
    gateway = Gateway(gateway_config(links=(link,)))
    await gateway.start()
    try:
        with capture_logs() as logs:
            for test in tests:
                # An example asks for what it needs by parameter name (today: the gateway link's port).
                wanted = inspect.signature(test).parameters  # type: ignore[arg-type]
                await test(**({"gateway_link_port": unused_tcp_port} if "gateway_link_port" in wanted else {}))  # type: ignore[operator]
        # Every record the example's PBX printed reached the gateway: nothing left in flight at its stop().
        assert not [entry for entry in logs if entry["event"] == "kept unsent lines for the next link"]
        if any("gateway_link_port" in inspect.signature(test).parameters for test in tests):  # type: ignore[arg-type]
            await eventually(lambda: gateway.links["pbx"].records > 0)
    finally:
        await gateway.stop()


# ---- every other block that claims to work: commands, configuration and scenario files

# A fenced block, possibly indented inside a list item: (indent, language, body).
_FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
# Which parser reads a documented command line's arguments, by how the line starts.
_COMMANDS = {
    "gateway": "gateway.cli",
    ".venv/bin/gateway": "gateway.cli",
    "python -m gateway": "gateway.cli",
    "python -m simulators.pbx": "simulators.pbx",
    "python -m simulators.trunkrec": "simulators.trunkrec",
}
MAKEFILE = DOCS.parent / "Makefile"


def fenced_blocks(language: str) -> list[tuple[str, str]]:
    """(where: the document and line, dedented body) of every block fenced as `language`."""
    blocks = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        for match in _FENCE.finditer(text):
            if match.group(2) == language:
                line = text.count("\n", 0, match.start()) + 1
                indent = len(match.group(1))
                body = "".join(row[indent:] for row in match.group(3).splitlines(keepends=True))
                blocks.append((f"{path.name}:{line}", body))
    return blocks


def command_lines() -> list[tuple[str, str]]:
    """Each command of the `sh` blocks, backslash continuations joined and comments dropped."""
    commands = []
    for where, body in fenced_blocks("sh"):
        for command in re.sub(r"\\\n\s*", " ", body).splitlines():
            command = command.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append((where, command))
    return commands


def test_every_python_block_in_the_docs_is_run() -> None:
    """A python block either runs as written (marked, run above) or is not there: nothing claims to work untested."""
    marked = {code for _, code in runnable_blocks()}
    unmarked = [where for where, body in fenced_blocks("python") if body.rstrip("\n") not in marked]
    assert not unmarked, f"python blocks not marked {RUN_MARKER} (so never run): {unmarked}"


@pytest.mark.parametrize(("where", "command"), command_lines(), ids=[f"{w} {c[:40]}" for w, c in command_lines()])
def test_a_documented_command_line_is_accepted_by_its_program(where: str, command: str) -> None:
    import importlib
    import shlex

    if command.startswith("make "):
        target = command.split()[1]
        assert re.search(rf"(?m)^{re.escape(target)}:", MAKEFILE.read_text()), f"{where}: no make target {target}"
        return
    program = next((name for name in sorted(_COMMANDS, key=len, reverse=True) if command.startswith(name + " ")), None)
    assert program is not None, f"{where}: a command this test does not know how to check: {command}"
    parser = importlib.import_module(_COMMANDS[program]).build_parser()
    try:
        parser.parse_args(shlex.split(command[len(program) :]))
    except SystemExit:
        pytest.fail(f"{where}: {program} refuses the documented arguments: {command}")


def yaml_blocks() -> list[tuple[str, str]]:
    """YAML blocks that stand on their own: a whole file (top-level keys) or a list of links. More deeply
    indented blocks show one key inside a section and are fragments."""
    return [(where, body) for where, body in fenced_blocks("yaml") if not body.startswith("   ")]


@pytest.mark.parametrize(("where", "text"), yaml_blocks(), ids=[where for where, _ in yaml_blocks()])
def test_a_documented_configuration_or_scenario_loads(where: str, text: str, tmp_path: Path) -> None:
    from drivers.smdr import SMDR_FORMATS
    from gateway.config.load import load_config
    from simulators.traffic import load_scenario

    path = tmp_path / "documented.yaml"
    if text.startswith("calls:"):
        path.write_text(text)
        assert load_scenario(path), f"{where}: a scenario without calls"
        return
    path.write_text(f"links:\n{text}" if text.startswith("  - ") else text)
    load_config(path, SMDR_FORMATS)  # raises ConfigError naming the line when the docs drifted
