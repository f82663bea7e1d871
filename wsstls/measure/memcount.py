"""Control of the copy-counting shim (csrc/measure/memcount.c, built as wsstls.measure._memcount).

The shim counts memcpy/memmove calls of at least 16 bytes and socket system
calls, by the library that made them, while a window is open.  It only sees
anything when preloaded: ``preload_env()`` gives the environment for a child
process, ``Counter.available()`` tells whether this process has it.

The shim is driven through ctypes because it must not depend on Python (it
is loaded before the interpreter) and is called only at window boundaries.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CLASSES", "KINDS", "Counter", "Counts", "preload_env", "shim_path"]

#: Who made the call: the loaded object the caller's code is in.
CLASSES = ("libssl", "libcrypto", "wsstls", "python", "libc", "other")
#: What was counted: copies, read-side and write-side system calls, epoll_wait calls.
KINDS = ("copy", "read", "write", "poll")


def shim_path() -> Path | None:
    """The built shim next to this package, or None."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = here / f"_memcount{suffix}"
        if p.exists():
            return p
    return None


def preload_env(env: dict[str, str] | None = None) -> dict[str, str] | None:
    """``env`` (default: os.environ) with the shim preloaded, or None if not built."""
    path = shim_path()
    if path is None:
        return None
    env = dict(os.environ if env is None else env)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(path), env.get("LD_PRELOAD", "")]))
    return env


@dataclass
class Counts:
    """Calls and bytes per (kind, class), e.g. ``calls[("copy", "libssl")]``."""

    calls: dict[tuple[str, str], int] = field(default_factory=dict)
    bytes: dict[tuple[str, str], int] = field(default_factory=dict)

    def __iadd__(self, other: Counts) -> Counts:
        for key, n in other.calls.items():
            self.calls[key] = self.calls.get(key, 0) + n
        for key, n in other.bytes.items():
            self.bytes[key] = self.bytes.get(key, 0) + n
        return self

    def total(self, kind: str) -> tuple[int, int]:
        """(calls, bytes) of one kind over all classes."""
        return (
            sum(n for (k, _), n in self.calls.items() if k == kind),
            sum(n for (k, _), n in self.bytes.items() if k == kind),
        )


class Counter:
    """Open and close counting windows in a process where the shim is preloaded."""

    def __init__(self) -> None:
        path = shim_path()
        if path is None:
            raise RuntimeError("the copy-counting shim is not built (pip install wsstls)")
        self._lib = ctypes.CDLL(str(path))
        if not self._lib.memcount_active():
            raise RuntimeError(f"the shim is not preloaded: run with LD_PRELOAD={path}")
        if (self._lib.memcount_classes(), self._lib.memcount_kinds()) != (
            len(CLASSES),
            len(KINDS),
        ):
            raise RuntimeError("the shim and wsstls.measure.memcount disagree: rebuild wsstls")
        self._out = (ctypes.c_uint64 * (len(KINDS) * len(CLASSES) * 2))()
        self.start()  # ctypes' first calls set up state of its own: not in a real window
        self.stop()

    @staticmethod
    def available() -> bool:
        """True when this process has the shim preloaded."""
        path = shim_path()
        return path is not None and bool(ctypes.CDLL(str(path)).memcount_active())

    def start(self) -> None:
        """Zero the counters and start counting."""
        self._lib.memcount_start()

    def stop(self) -> Counts:
        """Stop counting and return what the window saw."""
        self._lib.memcount_stop()
        self._lib.memcount_read(self._out)
        counts = Counts()
        for k, kind in enumerate(KINDS):
            for c, cls in enumerate(CLASSES):
                i = (k * len(CLASSES) + c) * 2
                if self._out[i]:
                    counts.calls[(kind, cls)] = self._out[i]
                    counts.bytes[(kind, cls)] = self._out[i + 1]
        return counts
