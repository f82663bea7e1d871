"""The README's "The pieces" names every source file of the tree (a new file gets its line:
csrc/, wsstls/, bench/ and .ci/), and every file it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_sanitizer  # reads README.md only (the sanitizer's copy has none)

ROOT = Path(__file__).resolve().parent.parent


def pieces() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The pieces", 1)[1]
    return section.split("```", 2)[1]


def test_the_pieces_name_every_source_file() -> None:
    block = pieces()
    named = set(re.findall(r"[\w.\[\]]+", block))
    missing = []
    sources = [*ROOT.glob("csrc/**/*.[ch]"), *ROOT.glob("wsstls/**/*.py")]
    sources += [*ROOT.glob("bench/**/*.py"), *ROOT.glob("bench/**/*.c")]
    sources += [p for p in ROOT.glob(".ci/*") if p.is_file()]
    for path in sorted(sources):
        if "peers" in path.parts or path.name in ("__init__.py", "__main__.py"):
            continue  # (the peers are one line; package markers need none)
        stem, ext = path.stem, path.suffix
        forms = {path.name, f"{stem}.[ch]"} if ext in (".c", ".h") else {path.name}
        if not forms & named:
            missing.append(str(path.relative_to(ROOT)))
    assert missing == [], f"not in README's 'The pieces': {missing}"


def test_every_file_the_pieces_name_exists() -> None:
    """A file named in "The pieces" (by name, or as ``name.[ch]``) is in the tree."""
    block = pieces()
    names = set(re.findall(r"\w+(?:\.\[ch\]|\.(?:py|c|h|go|cdef|pyi|md))(?![\w.])", block))
    tree = {p.name for p in ROOT.rglob("*") if ".git" not in p.parts}
    missing = []
    for name in sorted(names):
        if name.endswith(".[ch]"):
            stem = name[: -len(".[ch]")]
            wanted = {f"{stem}.c", f"{stem}.h"}
        else:
            wanted = {name}
        if not wanted <= tree:
            missing.append(name)
    assert names, "no file names found in 'The pieces'"
    assert missing == [], f"named in README's 'The pieces' but not in the tree: {missing}"
