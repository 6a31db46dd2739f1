"""YAML read with line numbers: the node tree of a file, mappings that refuse duplicate and unknown keys, and the
scalar readers (text, numbers, durations, choices …) whose errors name file, line and key."""

from __future__ import annotations

import math
import re
import zoneinfo
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.config import DAY_S, RETENTION_FOREVER
from gateway.errors import ConfigError

MAX_PROBLEMS_LISTED = 20  # a file with more problems than this is listed in part

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP = (_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp"))
_MAP, _SEQ, _MERGE = _TAG + "map", _TAG + "seq", _TAG + "merge"
_DECIMAL = re.compile(r"[-+]?[0-9][0-9_]*")
_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?")
# A sign is accepted so that "-5h" is refused as "must be greater than 0", not as "not a duration".
_DURATION = re.compile(r"(?P<amount>[-+]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+))\s*(?P<unit>[smhdw]?)")
_DURATION_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": DAY_S, "w": 7 * DAY_S}
_DURATION_FORMS = "seconds, or a number with s, m, h, d or w (48h, 90m, 3600s, 90d, 26w)"


# Constructs that open with a bracket or a quote: when one is never closed, the parser runs on and gives up lines
# later (often at the next section), so the line that opened it is where the mistake is.
_OPENED_BY_A_DELIMITER = ("flow sequence", "flow mapping", "flow node", "quoted scalar")


def _compose(text: str, file: str) -> Node | None:
    """YAML text → node tree (with line marks); syntax errors become ConfigError."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, text, file) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(
            f"YAML syntax error: {exc.reason} (character U+{character:04X})", file=file, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML syntax error: {exc}", file=file) from None


def _syntax_error(exc: yaml.MarkedYAMLError, text: str, file: str) -> ConfigError:
    """Names both the line where the construct being read opened and the line where the parser gave up.

    The error's line is the opening one for a bracket or quote left open (the parser only notices lines later),
    and the line where it gave up otherwise (a block mapping 'opens' at the top of the file; the bad indentation
    is where the parser stopped).
    """
    opened_line = exc.context_mark.line + 1 if exc.context_mark is not None else None
    gave_up_line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
    problem = exc.problem or exc.context or "invalid YAML"
    context = exc.context if exc.problem else None
    if context and opened_line is not None and opened_line != gave_up_line:
        unclosed = any(construct in context for construct in _OPENED_BY_A_DELIMITER)
        if unclosed and gave_up_line is not None:
            line: int | None = opened_line
            construct = context.removeprefix("while parsing ").removeprefix("while scanning ")
            message = (
                f"{construct} opened on line {opened_line} and not closed by line {gave_up_line},"
                f" where the parser gave up: {problem}"
            )
        else:
            line = gave_up_line or opened_line
            message = f"{problem} ({context} that opened on line {opened_line})"
    else:
        line = gave_up_line or opened_line
        message = f"{problem} ({context})" if context else problem
    lines = text.splitlines()
    source_lines = [lines[number - 1] for number in (opened_line, gave_up_line) if number and 0 < number <= len(lines)]
    hint = '; an IPv6 address inside [...] must be quoted, e.g. ["::1"]' if any("::" in s for s in source_lines) else ""
    return ConfigError(f"YAML syntax error: {message}{hint}", file=file, line=line)


class _AlreadyReported(ConfigError):
    """Drops the item being read: the problem that makes it unusable is already on the list."""


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(node: Node, *, echo: bool = True) -> str:
    """How to name what was found, for 'must be …' messages (echo=False: never repeat a scalar's text)."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "empty (null)"
    return repr(node.value) if echo else "a single value"


def _is_null(node: Node | None) -> bool:
    return node is None or (isinstance(node, ScalarNode) and node.tag == _NULL)


class _Map:
    """A YAML mapping node: keys are checked for duplicates (and later for unknown names); values stay nodes.

    Merge keys (`<<: *anchor`) are honoured: merged entries fill keys the mapping does not give itself.
    """

    def __init__(self, reader: _NodeReader, node: MappingNode, path: str):
        self.reader = reader
        self.node = node
        self.path = path
        self.line = _line(node)
        self.entries: dict[str, tuple[ScalarNode, Node]] = {}
        merged: list[tuple[str, ScalarNode, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.extend(self._merged(value_node))
                continue
            if not isinstance(key_node, ScalarNode):
                reader.report(key_node, path, "a key must be a plain name, not a list or mapping")
                continue
            name = key_node.value
            if name in self.entries:
                first_line = _line(self.entries[name][0])
                reader.report(
                    key_node, _child(path, name), f"duplicate key '{name}' (already given on line {first_line})"
                )
                continue
            self.entries[name] = (key_node, value_node)
        for name, key_node, value_node in merged:
            self.entries.setdefault(name, (key_node, value_node))

    def _merged(self, value: Node) -> list[tuple[str, ScalarNode, Node]]:
        sources = value.value if isinstance(value, SequenceNode) else [value]
        entries: list[tuple[str, ScalarNode, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                self.reader.report(source, self.path, "a merge key (<<) must refer to a mapping")
                continue
            inner = _Map(_NodeReader(self.reader.file, self.reader.base_dir), source, self.path)
            entries.extend((name, key_node, value_node) for name, (key_node, value_node) in inner.entries.items())
        return entries

    def refuse_unknown(self, allowed: Collection[str], hint: str = "") -> None:
        for name, (key_node, _value) in self.entries.items():
            if name not in allowed:
                expected = ", ".join(allowed)
                self.reader.report(
                    key_node, _child(self.path, name), f"unknown key '{name}'; expected one of: {expected}{hint}"
                )

    def key(self, name: str) -> str:
        return _child(self.path, name)

    def get(self, name: str) -> Node | None:
        entry = self.entries.get(name)
        return entry[1] if entry else None

    def given(self, name: str) -> Node | None:
        """The value node, or None when the key is absent or null."""
        node = self.get(name)
        return None if _is_null(node) else node

    def key_line(self, name: str) -> int:
        return _line(self.entries[name][0])

    def require(self, name: str, why: str = "is required") -> Node:
        node = self.get(name)
        if node is None:
            raise self.reader.error(self.line, self.key(name), why)
        return node


class _NodeReader:
    """Reads the nodes of one file into values, collecting problems; gateway.config.load builds the sections."""

    def __init__(self, file: str, base_dir: Path):
        self.file = file
        self.base_dir = base_dir
        self.problems: list[ConfigError] = []

    # -- problems

    def error(self, where: Node | int | None, key: str | None, message: str) -> ConfigError:
        line = _line(where) if isinstance(where, Node) else where
        return ConfigError(message, file=self.file, line=line, key=key or None)

    def report(self, where: Node | int | None, key: str | None, message: str) -> None:
        self.problems.append(self.error(where, key, message))

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Record a ConfigError raised inside and carry on with the next section or item."""
        try:
            yield
        except _AlreadyReported:
            pass
        except ConfigError as problem:
            self.problems.append(problem)

    def raise_problems(self) -> None:
        if not self.problems:
            return
        problems = sorted(self.problems, key=lambda problem: problem.line or 0)
        first = problems[0]
        listed = [str(problem) for problem in problems[1:MAX_PROBLEMS_LISTED]]
        if len(problems) > MAX_PROBLEMS_LISTED:
            listed.append(f"… and {len(problems) - MAX_PROBLEMS_LISTED} more problems")
        message = "\n".join([first.reason, *listed])
        error = ConfigError(message, file=first.file, line=first.line, key=first.key)
        error.problems = tuple(problems)  # type: ignore[attr-defined]
        raise error

    # -- node shapes

    def mapping(self, node: Node, path: str, allowed: Collection[str] | None = None, hint: str = "") -> _Map:
        if not isinstance(node, MappingNode) or node.tag != _MAP:
            raise self.error(node, path, f"must be a mapping (key: value lines), not {_kind(node, echo=False)}")
        mapping = _Map(self, node, path)
        if allowed is not None:
            mapping.refuse_unknown(allowed, hint)
        return mapping

    def sequence(self, node: Node, path: str) -> list[Node]:
        if not isinstance(node, SequenceNode) or node.tag != _SEQ:
            raise self.error(node, path, f"must be a list, not {_kind(node, echo=False)}")
        return list(node.value)

    def scalar(self, node: Node, path: str, what: str) -> ScalarNode:
        if not isinstance(node, ScalarNode):
            raise self.error(node, path, f"must be {what}, not {_kind(node)}")
        return node

    # -- scalars

    def text(self, node: Node, path: str, what: str = "text") -> str:
        """A string; a plain number or date keeps its source text (`0123` stays "0123")."""
        scalar = self.scalar(node, path, what)
        if scalar.tag == _STR:
            return scalar.value
        if scalar.tag in (_INT, _FLOAT, _TIMESTAMP) and scalar.style is None:
            return scalar.value
        if scalar.tag == _NULL:
            raise self.error(node, path, f"must be {what}, not empty (null)")
        if scalar.tag == _BOOL:
            raise self.error(
                node, path, f"must be {what}, not the boolean {scalar.value!r} (quote it if the text is meant)"
            )
        raise self.error(node, path, f"unsupported YAML tag {scalar.tag}")

    def name(self, node: Node, path: str) -> str:
        value = self.text(node, path)
        if not value.strip():
            raise self.error(node, path, "must not be empty")
        return value

    def integer(self, node: Node, path: str) -> int:
        scalar = self.scalar(node, path, "an integer")
        if scalar.style is None and scalar.tag == _INT and _DECIMAL.fullmatch(scalar.value):
            return int(scalar.value.replace("_", ""), 10)
        raise self.error(node, path, f"must be an integer, not {_kind(scalar)}")

    def number(self, node: Node, path: str) -> float:
        """An int or a float (finite), written as a plain YAML number."""
        scalar = self.scalar(node, path, "a number")
        if scalar.style is None and scalar.tag in (_INT, _FLOAT, _STR):
            if scalar.tag == _INT and _DECIMAL.fullmatch(scalar.value):
                return int(scalar.value.replace("_", ""), 10)
            if _FLOAT_TEXT.fullmatch(scalar.value) and any(ch.isdigit() for ch in scalar.value):
                number = float(scalar.value.replace("_", ""))
                if math.isfinite(number):
                    return number
        raise self.error(node, path, f"must be a number, not {_kind(scalar)}")

    def positive(self, node: Node, path: str, *, integer: bool = False) -> float:
        value = self.integer(node, path) if integer else self.number(node, path)
        if value <= 0:
            raise self.error(node, path, f"must be greater than 0, not {value:g}")
        return value

    def boolean(self, node: Node, path: str) -> bool:
        scalar = self.scalar(node, path, "true or false")
        if scalar.style is None and scalar.tag == _BOOL and scalar.value.lower() in ("true", "false"):
            return scalar.value.lower() == "true"
        raise self.error(node, path, f"must be true or false, not {_kind(scalar)}")

    def choice(self, node: Node, path: str, choices: Collection[str], what: str = "value") -> str:
        value = self.text(node, path)
        if value not in choices:
            raise self.error(node, path, f"unknown {what} {value!r}; expected one of: {', '.join(choices)}")
        return value

    def timezone(self, node: Node, path: str) -> str:
        value = self.text(node, path, "a time zone name")
        try:
            zoneinfo.ZoneInfo(value)
        except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
            raise self.error(
                node, path, f"unknown time zone {value!r} (use an IANA name such as Europe/Budapest or UTC)"
            ) from None
        return value

    def duration(self, node: Node, path: str, *, alternatives: str = "") -> float:
        """Seconds as a number, or text with an s/m/h/d/w suffix (`48h`, `90m`, `1.5h`, `90d`, `26w`).

        `alternatives` names other accepted values for the message ("forever or ").
        """
        scalar = self.scalar(node, path, f"{alternatives}a duration")
        if scalar.style is None and scalar.tag in (_INT, _FLOAT):
            return self.number(node, path)
        match = _DURATION.fullmatch(scalar.value.strip()) if scalar.tag == _STR else None
        if match is None:
            raise self.error(node, path, f"must be {alternatives}a duration: {_DURATION_FORMS}, not {_kind(scalar)}")
        return float(match["amount"]) * _DURATION_UNIT_S[match["unit"] or "s"]

    def retention_period(self, node: Node, path: str) -> float | None:
        """`forever` (None) or a duration greater than 0."""
        if isinstance(node, ScalarNode) and node.tag == _STR and node.value.strip() == RETENTION_FOREVER:
            return None
        seconds = float(self.duration(node, path, alternatives=f"{RETENTION_FOREVER} or "))
        if seconds <= 0:
            raise self.error(
                node, path, f"must be greater than 0, not {node.value} (write {RETENTION_FOREVER} to never prune)"
            )
        return seconds

    def plain(self, node: Node, path: str) -> Any:
        """A node as a plain Python value (safe_load semantics; strings and dates keep their source text)."""
        if isinstance(node, MappingNode):
            mapping = self.mapping(node, path)
            return {name: self.plain(value, mapping.key(name)) for name, (_key, value) in mapping.entries.items()}
        if isinstance(node, SequenceNode):
            return [self.plain(item, f"{path}[{index}]") for index, item in enumerate(self.sequence(node, path))]
        if node.tag in (_STR, _TIMESTAMP):
            return node.value
        if node.tag == _NULL:
            return None
        if node.tag == _INT and _DECIMAL.fullmatch(node.value):
            return int(node.value.replace("_", ""), 10)
        if node.tag in (_INT, _FLOAT, _BOOL):
            return yaml.constructor.SafeConstructor().construct_object(node)
        raise self.error(node, path, f"unsupported YAML tag {node.tag}")


def _format_duration(seconds: float) -> str:
    # Weeks and days only from a week up, so the on-demand limit still reads 48h.
    if seconds >= 7 * DAY_S and seconds % (7 * DAY_S) == 0:
        return f"{seconds / (7 * DAY_S):g}w"
    if seconds >= 7 * DAY_S and seconds % DAY_S == 0:
        return f"{seconds / DAY_S:g}d"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"
