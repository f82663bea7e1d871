"""wsstls: where the bytes get copied when TLS runs over a buffered transport.

A C byte ring with partial writes (``RingBuffer``), an OpenSSL BIO over it,
a WebSocket echo server and the copy ledger that measures them.
"""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path


def _built(package_dir: Path) -> bool:
    """True when ``package_dir`` holds a compiled ``_native`` extension."""
    return any(
        (package_dir / f"_native{suffix}").is_file()
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def _installed_copies(here: Path) -> list[Path]:
    """Other ``wsstls`` package folders the import system can find (site-packages, editable)."""
    found = []
    others = [p for p in sys.path if Path(p or ".").resolve() / "wsstls" != here]
    for finder in sys.meta_path:
        try:
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec("wsstls", others)
            else:
                find_spec = getattr(finder, "find_spec", None)
                spec = find_spec("wsstls", None) if find_spec is not None else None
        except (ImportError, ValueError, OSError):
            continue
        for location in (spec and spec.submodule_search_locations) or ():
            found.append(Path(location).resolve())
    return [p for p in found if p != here]


def _use_built_copy() -> None:
    """Run from a copy of wsstls whose C extension is built.

    ``python -m wsstls`` in a source checkout imports the checkout's ``wsstls/``
    (the working directory comes first on ``sys.path``).  When that tree was not
    built in place (``pip install .`` builds into site-packages, not here), the
    installed copy is used instead, whole, so its Python and its C always match.
    """
    here = Path(__file__).resolve().parent
    if _built(here):
        return
    for candidate in _installed_copies(here):
        if _built(candidate):
            __path__[:] = [str(candidate)]
            return
    message = (
        f"wsstls: the C extension is not built in {here} and no built wsstls is installed: "
        "run `python -m pip install .` (or `pip install -e .` to work on the source)"
    )
    if sys.argv[:1] == ["-m"]:  # `python -m wsstls` is locating its main module: one line
        print(message, file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(message)


_use_built_copy()

from .ring import RingBuffer, RingStats  # noqa: E402  (after the copy is chosen)

__all__ = ["RingBuffer", "RingStats", "__version__"]

__version__ = "0.1.0"
