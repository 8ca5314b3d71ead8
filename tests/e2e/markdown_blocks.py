"""The fenced code blocks of a markdown file, with the ``docs-test`` markers written before them.

A marker is an HTML comment (shown in the source, invisible when rendered) right before a
block, blank lines allowed in between; several may stack::

    <!-- docs-test: skip (needs a Citus cluster) -->
    <!-- docs-test: slow -->
    <!-- docs-test: setup
    vector = [0.1] * 384
    -->

``skip (reason)``: the block is reported as skipped with that reason. ``slow``: the test is
marked ``slow``. ``setup``: hidden Python that runs (in the file's namespace) right before
the block, for the context the prose implies (an engine, a few rows, a query vector).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+)(?P<lang>[^`\s]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*(?P<end>-->)?\s*$")
_SKIP = re.compile(r"^skip\s*\((?P<reason>.+)\)$")


class MarkerError(ValueError):
    """A ``docs-test`` marker this harness does not understand."""


@dataclass
class Block:
    """One fenced block: where it starts (1-based line of the fence), its language and text."""

    path: Path
    line: int
    lang: str
    code: str
    skip: str | None = None
    slow: bool = False
    setup: list[str] = field(default_factory=list)

    @property
    def first_code_line(self) -> int:
        return self.line + 1


def _markers(lines: list[str], fence_index: int) -> tuple[str | None, bool, list[str]]:
    """The markers in the comments just above ``lines[fence_index]``."""
    skip: str | None = None
    slow = False
    setups: list[str] = []
    index = fence_index - 1
    while index >= 0:
        if not lines[index].strip():
            index -= 1
            continue
        if lines[index].strip().endswith("-->"):
            end = index
            start = end
            while start >= 0 and "<!--" not in lines[start]:
                start -= 1
            match = _MARKER.match(lines[start]) if start >= 0 else None
            if match is None:
                break
            body = match.group("body")
            if body.startswith("setup"):
                setups.insert(0, textwrap.dedent("\n".join(lines[start + 1 : end])))
            elif start != end:
                raise MarkerError(f"line {start + 1}: only a setup marker spans lines")
            elif _SKIP.match(body):
                skip = _SKIP.match(body).group("reason")  # type: ignore[union-attr]
            elif body == "slow":
                slow = True
            else:
                raise MarkerError(f"line {start + 1}: unknown docs-test marker {body!r}")
            index = start - 1
            continue
        break
    return skip, slow, setups


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, in order, markers attached."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        indent, fence = match.group("indent"), match.group("fence")
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line
            for line in lines[index + 1 : end]
        ]
        skip, slow, setup = _markers(lines, index)
        found.append(
            Block(
                path,
                index + 1,
                match.group("lang").lower(),
                "\n".join(body) + "\n",
                skip,
                slow,
                setup,
            )
        )
        index = end + 1
    return found
