"""Read the fenced code blocks of the documentation pages.

The convention the docs follow: every fenced block either is a ``python`` block that the test
suite runs, or is preceded by an HTML comment ``<!-- not-run: reason -->`` (blank lines
between them are allowed) that says why it is not run. A ``--8<-- "path"`` line inside a block
is a pymdownx.snippets include: it is replaced by the file's contents, so included files run as
part of their page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:(?P<reason>.*?)-->$")
SNIPPET = re.compile(r'^(?P<indent>[ \t]*)--8<--\s+"(?P<path>[^"]+)"\s*$')


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its code and why it is not run (if so)."""

    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    not_run: str | None  # the reason given by the marker; "" for a marker without a reason

    @property
    def runs(self) -> bool:
        return self.language == "python" and self.not_run is None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    """Every Markdown page of the site, in a stable order."""
    return sorted(DOCS.rglob("*.md"))


def expand_snippets(code: str) -> str:
    """Replace each pymdownx.snippets include line by the included file (paths from the root)."""

    def include(line: str) -> str:
        match = SNIPPET.match(line)
        if match is None:
            return line
        text = (ROOT / match["path"]).read_text()
        return "\n".join(match["indent"] + t if t else t for t in text.splitlines())

    return "\n".join(include(line) for line in code.split("\n"))


def _dedent(lines: list[str], indent: str) -> list[str]:
    return [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines]


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        end = i + 1
        while end < len(lines):
            stripped = lines[end].strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                break
            end += 1
        before = i - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = NOT_RUN.match(lines[before].strip()) if before >= 0 else None
        code = "\n".join(_dedent(lines[i + 1 : end], indent))
        found.append(
            Block(
                page=page,
                line=i + 1,
                language=match["info"].lower(),
                code=expand_snippets(code) + "\n",
                not_run=marker["reason"].strip() if marker else None,
            )
        )
        i = end + 1
    return found
