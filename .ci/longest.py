#!/usr/bin/env python3
"""The longest functions and classes of the package at two git revisions, as a Markdown table.

    python .ci/longest.py [BEFORE [AFTER]] [--top N]

Defaults: BEFORE = 996e2b2^ (the tree before issue 12's layout work), AFTER = main.
What is counted, in the files under wsstls/ and csrc/ (tests, bench/, the fuzz targets and
the peer echo servers left out), besides each file's lines:

- Python: every function, method (``Class.method``) and class, from its ``def``/``class``
  line to its last line as ``ast`` gives them (docstring and comments inside included,
  decorators not).
- C: every function definition, from the first line of its signature to the ``}`` that
  closes it (the tree's style: the body's braces alone on their lines at column 0).

Lines are physical lines, blank ones included.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsstls.cliargs import Parser, integer  # noqa: E402

_C_NAME = re.compile(r"(\w+)\s*\(")


def files(rev: str) -> dict[str, str]:
    """path -> text of the package's .py and .c files at ``rev``."""
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    wanted = [
        n
        for n in names
        if (n.startswith("wsstls/") and n.endswith(".py") and "/peers/" not in n)
        or (n.startswith("csrc/") and n.endswith(".c") and "/fuzz/" not in n)
    ]
    return {
        n: subprocess.run(
            ["git", "show", f"{rev}:{n}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        for n in wanted
    }


def python_spans(text: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """([(function, lines)], [(class, lines)]) of one module."""
    funcs: list[tuple[str, int]] = []
    classes: list[tuple[str, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((prefix + child.name, child.end_lineno - child.lineno + 1))  # type: ignore[operator]
                walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                classes.append((prefix + child.name, child.end_lineno - child.lineno + 1))  # type: ignore[operator]
                walk(child, prefix + child.name + ".")

    walk(ast.parse(text), "")
    return funcs, classes


def c_spans(text: str) -> list[tuple[str, int]]:
    """[(function, lines)] of one C file: a line "{" at column 0 opens a body, "}" closes it."""
    lines = text.splitlines()
    out: list[tuple[str, int]] = []
    i = 0
    while i < len(lines):
        if lines[i] == "{":
            # The signature: the lines above, back to a blank line, a comment's end,
            # a preprocessor line or the end of the previous definition.
            start = i
            while start > 0:
                above = lines[start - 1]
                if not above.strip() or above.rstrip().endswith(("*/", ";", "}")):
                    break
                if above.startswith(("#", "/*", " *", "//")):
                    break
                start -= 1
            end = i + 1
            while end < len(lines) and lines[end] != "}":
                end += 1
            signature = " ".join(lines[start:i])
            match = _C_NAME.search(signature)
            if match and "=" not in signature.split("(", 1)[0]:
                out.append((match.group(1), end - start + 1))
            i = end
        i += 1
    return out


Spans = list[tuple[int, str]]


def measure(rev: str) -> tuple[Spans, Spans, Spans]:
    """([(lines, "file: function")], [(lines, "file: class")], [(lines, file)]), longest first."""
    funcs: Spans = []
    classes: Spans = []
    sizes: Spans = []
    for path, text in files(rev).items():
        sizes.append((len(text.splitlines()), path))
        if path.endswith(".py"):
            f, c = python_spans(text)
            classes += [(n, f"{path}: {name}") for name, n in c]
        else:
            f = c_spans(text)
        funcs += [(n, f"{path}: {name}") for name, n in f]
    for spans in (funcs, classes, sizes):
        spans.sort(key=lambda t: (-t[0], t[1]))
    return funcs, classes, sizes


def table(title: str, before: Spans, after: Spans, top: int) -> str:
    rows = [f"| {title}: before | lines | after | lines |", "|---|---:|---|---:|"]
    for i in range(top):
        b = before[i] if i < len(before) else (0, "")
        a = after[i] if i < len(after) else (0, "")
        rows.append(f"| `{b[1]}` | {b[0]} | `{a[1]}` | {a[0]} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("before", nargs="?", default="996e2b2^")
    parser.add_argument("after", nargs="?", default="main")
    parser.add_argument("--top", type=integer(1, 1000), default=10)
    args = parser.parse_args(argv)
    before, after = measure(args.before), measure(args.after)
    for title, b, a in zip(("functions", "classes", "files"), before, after, strict=True):
        print(table(title, b, a, args.top))
        print()


if __name__ == "__main__":
    main()
