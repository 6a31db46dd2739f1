"""The repository documents itself: docs, code and README cite only documents that ship with it.

A user has only the repository. No file may point into the shared spec folder of the project's
workspace, and every `name.md` a file cites (`docs/smdr.md`, `api.md §6`, a Markdown link) must
be a document of the repository — and a cited `§N` or `#anchor` a section that document has.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# What is checked: every text file under these folders, and these files.
CHECKED_DIRS = ("docs", "gateway", "drivers", "simulators", "bench", "tests", "config")
CHECKED_FILES = ("README.md",)
TEXT_SUFFIXES = frozenset({".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini"})
EXCLUDED_DIRS: tuple[str, ...] = ()
# Documents cited before they are written (on a branch still to be merged). An entry must go once its
# document exists: test_pending_documents_are_still_pending fails as a reminder.
PENDING_DOCUMENTS: frozenset[str] = frozenset()

SHARED_FOLDER = "shared" + "/"  # split so that this file does not match itself
# A cited Markdown file, with an optional section (or range) after it: `docs/api.md §6`, `api.md §1–§7`.
_SECTION = r"§\s*(\d+(?:\.\d+)*)"
_CITED_DOC = re.compile(rf"(?<![\w.-])((?:[\w.-]+/)*[\w-]+\.md)\b(?:[ ,]*{_SECTION}(?:\s*[–-]\s*{_SECTION})?)?")
_SECTION_REF = re.compile(_SECTION)
# A Markdown link to a local document or anchor: [text](target) where target is not a URL.
_MD_LINK = re.compile(r"\]\((?!https?:|mailto:)([^)\s]*)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
_NUMBERED_HEADING = re.compile(r"^(\d+(?:\.\d+)*)\.?\s")


def _checked_files() -> list[Path]:
    files = [ROOT / name for name in CHECKED_FILES]
    for folder in CHECKED_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            relative = path.relative_to(ROOT).as_posix()
            if not path.is_file() or path.suffix not in TEXT_SUFFIXES or "__pycache__" in path.parts:
                continue
            if any(relative == excluded or relative.startswith(excluded + "/") for excluded in EXCLUDED_DIRS):
                continue
            files.append(path)
    return files


CHECKED = _checked_files()


def _ids(paths: list[Path]) -> list[str]:
    return [path.relative_to(ROOT).as_posix() for path in paths]


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces → hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _headings(document: Path) -> list[str]:
    text = document.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)  # no headings inside code blocks
    return _HEADING.findall(text)


def _anchors(document: Path) -> set[str]:
    anchors: set[str] = set()
    for heading in _headings(document):
        slug = _slug(heading)
        number = 1
        candidate = slug
        while candidate in anchors:  # repeated headings get -1, -2, …
            candidate = f"{slug}-{number}"
            number += 1
        anchors.add(candidate)
    return anchors


def _section_numbers(document: Path) -> set[str]:
    return {match.group(1) for heading in _headings(document) if (match := _NUMBERED_HEADING.match(heading))}


def _document(cited: str, citing: Path) -> Path | None:
    """The repository document a citation names: relative to the citing file, the root, or docs/."""
    name = Path(cited)
    for candidate in (citing.parent / name, ROOT / name, DOCS / name.name):
        if candidate.is_file():
            return candidate
    return None


def test_the_checked_set_covers_docs_code_and_tests() -> None:
    checked = set(_ids(CHECKED))
    assert {"README.md", "docs/trunkrec.md", "docs/smdr.md", "docs/api.md", "gateway/api/verba.py"} <= checked
    assert {"drivers/smdr/panasonic.py", "drivers/transport.py", "drivers/trunkrec/protocol.py"} <= checked


def test_pending_documents_are_still_pending() -> None:
    """Once a pending document exists, its entry in PENDING_DOCUMENTS is to be removed."""
    arrived = sorted(name for name in PENDING_DOCUMENTS if (DOCS / name).exists())
    assert not arrived, f"remove {arrived} from PENDING_DOCUMENTS: the document exists now"


@pytest.mark.parametrize("path", CHECKED, ids=_ids(CHECKED))
def test_no_file_points_outside_the_repository(path: Path) -> None:
    if path == Path(__file__).resolve():
        return
    hits = [
        f"{number}: {line.strip()}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if SHARED_FOLDER in line
    ]
    assert not hits, f"{path.relative_to(ROOT)} refers to the shared spec folder:\n" + "\n".join(hits)


@pytest.mark.parametrize("path", CHECKED, ids=_ids(CHECKED))
def test_every_cited_document_and_section_exists(path: Path) -> None:
    if path == Path(__file__).resolve():
        return
    """`name.md` names a document of the repository, `name.md §N` one of its numbered sections; a bare
    `§N` is a section of the Markdown file it is written in (in code, it must name its document)."""
    problems = []
    own_sections = _section_numbers(path) if path.suffix == ".md" else set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        covered: list[tuple[int, int]] = []
        for match in _CITED_DOC.finditer(line):
            covered.append(match.span())
            cited = match.group(1)
            document = _document(cited, path)
            if document is None:
                if Path(cited).name not in PENDING_DOCUMENTS:
                    problems.append(f"{number}: {cited} is not a document of the repository")
                continue
            sections = _section_numbers(document)
            for section in (match.group(2), match.group(3)):
                if section is not None and section not in sections:
                    problems.append(f"{number}: {cited} has no section §{section}")
        for match in _SECTION_REF.finditer(line):
            if any(start <= match.start() < end for start, end in covered):
                continue
            if path.suffix != ".md":
                problems.append(f"{number}: §{match.group(1)} without the document it belongs to")
            elif match.group(1) not in own_sections:
                problems.append(f"{number}: this document has no section §{match.group(1)}")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


MARKDOWN = [path for path in CHECKED if path.suffix == ".md"]


@pytest.mark.parametrize("path", MARKDOWN, ids=_ids(MARKDOWN))
def test_every_local_link_and_anchor_resolves(path: Path) -> None:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    problems = []
    for match in _MD_LINK.finditer(text):
        target, _, anchor = match.group(1).partition("#")
        document = (path.parent / target).resolve() if target else path
        if not document.exists():
            if Path(target).name not in PENDING_DOCUMENTS:
                problems.append(f"{match.group(1)}: no such file")
            continue
        if anchor and document.suffix == ".md" and anchor not in _anchors(document):
            problems.append(f"{match.group(1)}: {document.name} has no heading with the anchor #{anchor}")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)
