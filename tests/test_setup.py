"""The first five minutes: the README's set-up commands and a checkout without its build.

CI (.ci/run) runs the README's two commands verbatim from a fresh virtual
environment; these tests pin what makes that possible.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.no_sanitizer  # subprocesses of a plain interpreter


def _readme_command(which: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "readme_command"), which],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def test_readme_commands_are_what_ci_runs() -> None:
    main, tests = _readme_command("main"), _readme_command("tests")
    assert main == "python -m pip install . && python -m wsstls bench"
    assert tests == "python -m pip install -e '.[test]' && python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert '.ci/readme_command "$which"' in ci  # CI checks the README says the same
    assert f'main="{main}"' in ci and f'tests="{tests}"' in ci  # and runs these
    assert "python3 -m venv" in ci  # its own environment


def _unbuilt_tree(tmp_path: Path) -> Path:
    """A checkout's wsstls/ package as `pip install .` leaves it: sources, no extension."""
    pkg = tmp_path / "wsstls"
    pkg.mkdir()
    for name in ("__init__.py", "__main__.py"):
        shutil.copy(ROOT / "wsstls" / name, pkg / name)
    return tmp_path


def test_an_unbuilt_tree_defers_to_the_installed_copy(tmp_path: Path) -> None:
    root = _unbuilt_tree(tmp_path)
    probe = "import wsstls, wsstls.server; print(wsstls.server.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert not out.stdout.startswith(str(root)), out.stdout  # the built copy's code, whole
    run = subprocess.run([sys.executable, "-m", "wsstls", "--help"], cwd=root,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "bench" in run.stdout


def test_an_unbuilt_tree_alone_says_what_to_run_in_one_line(tmp_path: Path) -> None:
    root = _unbuilt_tree(tmp_path)
    # -S: no site-packages, so no installed copy to defer to
    run = subprocess.run([sys.executable, "-S", "-m", "wsstls", "bench"], cwd=root,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "python -m pip install ." in lines[0]
    imp = subprocess.run([sys.executable, "-S", "-c", "import wsstls"], cwd=root,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert imp.returncode == 1 and "ImportError: wsstls: the C extension is not built" in imp.stderr
