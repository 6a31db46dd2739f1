"""Where each key of a configuration file is written: `links[0].url` → its line, for the messages `gateway check`
prints about a file that loaded (a serial port missing, a risky setting) in the loader's `FILE:LINE: key:` form."""

from __future__ import annotations

from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

FIRST_LINE = 1  # where a message about a key the file does not write points: the file's start
_MERGE_TAG = "tag:yaml.org,2002:merge"


class KeyLines:
    """Dotted key paths (list positions from 0, as the loader names them) to 1-based line numbers."""

    def __init__(self, lines: dict[str, int]) -> None:
        self._lines = lines

    @classmethod
    def of_file(cls, source: Path) -> KeyLines:
        """Read again the file the configuration was loaded from. It loaded, so it parses; if it has changed or
        vanished since, messages fall back to the nearest section given, or line 1."""
        try:
            root = yaml.compose(source.read_text(encoding="utf-8-sig"), Loader=yaml.SafeLoader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return cls({})
        lines: dict[str, int] = {}
        if root is not None:
            _walk(root, "", lines)
        return cls(lines)

    def line(self, key: str) -> int:
        """The key's line; for a key the file leaves out, the line of its nearest written parent."""
        while key:
            if key in self._lines:
                return self._lines[key]
            key = _parent(key)
        return FIRST_LINE


def _parent(key: str) -> str:
    cut = max(key.rfind("."), key.rfind("["))
    return key[:cut] if cut > 0 else ""


def _walk(node: Node, path: str, lines: dict[str, int]) -> None:
    if isinstance(node, MappingNode):
        merged: list[Node] = []
        for key_node, value in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *base`: the mapping's own keys come first, as in the loader
                merged.extend(value.value if isinstance(value, SequenceNode) else [value])
            elif isinstance(key_node, ScalarNode):
                child = f"{path}.{key_node.value}" if path else str(key_node.value)
                lines.setdefault(child, key_node.start_mark.line + 1)
                _walk(value, child, lines)
        for source in merged:
            _walk(source, path, lines)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            lines.setdefault(child, item.start_mark.line + 1)
            _walk(item, child, lines)
