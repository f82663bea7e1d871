"""Command-line argument checks shared by every ``wsstls`` command.

Every input is checked while the command line is parsed, before any work
starts.  A bad one ends the command with one line on stderr that names the
option and says what is allowed, and exit status 2::

    wsstls serve: error: --port: an integer from 0 to 65535, got '70000' (see --help)

``Parser`` is ``argparse.ArgumentParser`` with that one-line error; the
converters below are its ``type=`` functions.  Each returns the checked value
or raises ``argparse.ArgumentTypeError`` with what is allowed.  Checks that
involve several options call ``parser.error("--a ... --b ...")``.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import socket
from collections.abc import Callable, Iterable
from typing import NoReturn

__all__ = [
    "Parser",
    "choice_list",
    "cpu_list",
    "format_cpus",
    "host",
    "input_file",
    "integer",
    "integer_list",
    "number",
    "output_file",
    "port",
    "size",
    "size_list",
]

_Error = argparse.ArgumentTypeError


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (no usage), exit status 2."""

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")  # "--port: ...", not "argument --port: ..."
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ---------------------------------------------------------------- numbers


def _bound(value: int) -> str:
    """``2**63 - 1`` reads better than 9223372036854775807; small bounds stay plain."""
    if value >= 1 << 20:
        for exp in range(20, 64):
            if value == (1 << exp) - 1:
                return f"2**{exp} - 1"
            if value == 1 << exp:
                return f"2**{exp}"
    return str(value)


def _bytes(value: int) -> str:
    """4096 -> ``4 KiB``, 2**24 -> ``16 MiB``; others as ``_bound`` writes them."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if value >= 1 << shift and value % (1 << shift) == 0:
            return f"{value >> shift} {unit}"
    return _bound(value)


def integer(lo: int, hi: int, what: str = "an integer") -> Callable[[str], int]:
    """A whole number ``lo <= n <= hi``."""

    def convert(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise _Error(f"{what} from {_bound(lo)} to {_bound(hi)}, got {text!r}")
        return value

    return convert


def port(text: str) -> int:
    """A TCP port, 0-65535 (0: the system picks a free one)."""
    return integer(0, 65535, "a port number")(text)


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SIZE = re.compile(r"\s*(\d+)\s*(?:([kmg])(?:ib)?|(b))?\s*", re.IGNORECASE)


def _parse_size(text: str) -> int | None:
    m = _SIZE.fullmatch(text)
    if m is None:
        return None
    unit = (m.group(2) or m.group(3) or "").lower()
    return int(m.group(1)) * _UNITS[unit]


def size(lo: int, hi: int) -> Callable[[str], int]:
    """A byte count ``lo <= n <= hi``: ``65536``, ``64K``, ``64KiB``, ``16M``, ``1G``
    (binary units)."""

    def convert(text: str) -> int:
        value = _parse_size(text)
        if value is None or not lo <= value <= hi:
            raise _Error(
                f"a size in bytes from {_bytes(lo)} to {_bytes(hi)} "
                f"(suffixes K, M, G: binary), got {text!r}"
            )
        return value

    return convert


def number(
    lo: float, hi: float, *, lo_open: bool = False, unit: str = ""
) -> Callable[[str], float]:
    """A finite number ``lo <= x <= hi`` (``lo < x`` when ``lo_open``); never nan or inf."""
    what = f"a number of {unit}" if unit else "a number"
    allowed = f"above {lo:g} and at most {hi:g}" if lo_open else f"from {lo:g} to {hi:g}"

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
        if not ok:
            raise _Error(f"{what} {allowed}, got {text!r}")
        return value

    return convert


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def integer_list(lo: int, hi: int, what: str = "integers") -> Callable[[str], list[int]]:
    """Comma-separated whole numbers, each ``lo <= n <= hi``; at least one."""
    one = integer(lo, hi)

    def convert(text: str) -> list[int]:
        parts = _split(text)
        try:
            if parts:
                return [one(p) for p in parts]
        except _Error:
            pass
        raise _Error(
            f"comma-separated {what}, each from {_bound(lo)} to {_bound(hi)}, got {text!r}"
        )

    return convert


def size_list(lo: int, hi: int) -> Callable[[str], list[int]]:
    """Comma-separated byte counts (suffixes as in ``size``), each ``lo <= n <= hi``."""
    one = size(lo, hi)

    def convert(text: str) -> list[int]:
        parts = _split(text)
        try:
            if parts:
                return [one(p) for p in parts]
        except _Error:
            pass
        raise _Error(
            f"comma-separated sizes in bytes, each from {_bytes(lo)} to {_bytes(hi)} "
            f"(suffixes K, M, G: binary), got {text!r}"
        )

    return convert


def choice_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """Comma-separated names out of ``choices`` (order kept, repeats dropped); at least one."""
    known = list(choices)

    def convert(text: str) -> list[str]:
        parts = list(dict.fromkeys(_split(text)))
        bad = [p for p in parts if p not in known]
        if bad or not parts:
            got = f"{bad[0]!r}" if bad else f"{text!r}"
            raise _Error(f"comma-separated names out of {', '.join(known)}; got {got}")
        return parts

    return convert


# ------------------------------------------------------------------- CPUs


def format_cpus(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0-2,5"`` (the kernel's cpulist format)."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [c]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def cpu_list(text: str) -> tuple[int, ...]:
    """CPU numbers, ``0,1`` or ``0-3,6`` (order kept), each one this process may use
    (``os.sched_getaffinity``)."""
    allowed = os.sched_getaffinity(0)
    may = f"this process may use CPUs {format_cpus(allowed)}"
    not_one = f"is not one this process may use (it may use {format_cpus(allowed)})"
    cpus: list[int] = []
    for part in _split(text):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise _Error(f"CPU numbers such as 0,1 or 0-3 ({may}), got {text!r}")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last - first > 1 << 16:
            raise _Error(f"CPU numbers such as 0,1 or 0-3 ({may}), got {text!r}")
        for c in range(first, last + 1):
            if c not in allowed:
                raise _Error(f"CPU {c} {not_one}")
            if c not in cpus:
                cpus.append(c)
    if not cpus:
        raise _Error(f"CPU numbers such as 0,1 or 0-3 ({may}), got {text!r}")
    return tuple(cpus)


# ---------------------------------------------------------- names and files


def host(text: str) -> str:
    """An IP address (``::1`` or ``[::1]``) or a host name that resolves."""
    name = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    try:
        if not name or name.startswith("-"):
            raise UnicodeError
        socket.getaddrinfo(name, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        why = f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else ""
        raise _Error(f"an IP address or a host name that resolves, got {text!r}{why}") from None
    return name


def input_file(text: str) -> str:
    """A file that exists and can be read."""
    try:
        with open(text, "rb"):
            pass
    except OSError as exc:
        raise _Error(f"a file to read, got {text!r}: {exc.strerror}") from None
    return text


def output_file(text: str) -> str:
    """A file that can be written, checked without leaving a trace: an existing one is
    opened for writing without truncating it, a new one created and removed."""
    why = None
    if not text:
        why = "empty path"
    elif os.path.isdir(text):
        why = "it is a directory"
    else:
        try:
            if os.path.exists(text):
                with open(text, "r+b"):
                    pass
            else:
                os.close(os.open(text, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                os.unlink(text)
        except OSError as exc:
            why = exc.strerror or str(exc)
    if why is not None:
        raise _Error(f"a file that can be written, got {text!r}: {why}")
    return text
