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
    for entry in sys.path:
        candidate = Path(entry or ".").resolve() / "wsstls"
        if candidate != here and _built(candidate):
            __path__[:] = [str(candidate)]
            return
    raise ImportError(
        f"wsstls: the C extension is not built in {here} and no built wsstls is installed: "
        "run `python -m pip install .` (or `pip install -e .` to work on the source)"
    )


_use_built_copy()

from .ring import RingBuffer, RingStats  # noqa: E402  (after the copy is chosen)

__all__ = ["RingBuffer", "RingStats", "__version__"]

__version__ = "0.1.0"
