"""Code blocks in docs/ that say they run (marked `<!-- test: run -->` above the fence) are run here, as
written, so that the docs cannot drift from the code. Unmarked blocks are fragments."""

from __future__ import annotations

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
                await test(gateway_link_port=unused_tcp_port)  # type: ignore[operator]
        # Every record the example's PBX printed reached the gateway: nothing left in flight at its stop().
        assert not [entry for entry in logs if entry["event"] == "kept unsent lines for the next link"]
        await eventually(lambda: gateway.links["pbx"].records > 0)
    finally:
        await gateway.stop()
