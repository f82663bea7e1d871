"""The bench's core plan: which CPUs run the servers and which run the load generator.

A benchmark of a server is only the server's when the client is not the bottleneck.  The
plan splits the CPUs this process may use (``os.sched_getaffinity``) into a *server pool*
and *client CPUs*:

- 1 CPU: both share it (every figure then describes both);
- 2 CPUs: the server gets the second, the client the first (the client saturates first on
  such a machine: its cells are marked, and servers are compared by CPU per message);
- 3 CPUs or more: whole cores are split in two, the server pool gets the upper half (rounded
  down), the client the rest, so the client has at least as many cores as the server.  SMT
  siblings stay on the same side, and the server pool hands out one thread per core before
  it hands out siblings.

A single-loop server takes the first CPU of the pool, plus one per offload thread; ``--workers
N`` and the peers of the scaling table take the first N; the scaling table runs 1, 2, 4, ...
workers up to the pool's size.  The load generator runs one thread per client CPU, pinned.

Pure functions of their inputs: the unit tests plan for machines of any size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cliargs import format_cpus

__all__ = [
    "CorePlan",
    "plan_cores",
    "plan_for_this_machine",
    "sibling_groups",
]

MAX_CLIENT_THREADS = 1024


@dataclass(frozen=True)
class CorePlan:
    """The CPUs of a bench run: the server pool (in hand-out order) and the client CPUs."""

    allowed: tuple[int, ...]
    server: tuple[int, ...]
    client: tuple[int, ...]
    client_threads: int
    notes: tuple[str, ...] = field(default=())

    @property
    def shared(self) -> bool:
        """Server and client run on some of the same CPUs."""
        return bool(set(self.server) & set(self.client))

    def server_cpus(self, n: int) -> tuple[int, ...]:
        """The CPUs of a server given ``n`` cores: the pool's first ``n``.

        Past the pool it borrows the other allowed CPUs (the client's), then wraps: the cell
        then shares CPUs with the client (:meth:`borrows`)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        order = list(self.server) + [c for c in self.allowed if c not in self.server]
        return tuple(order[i % len(order)] for i in range(n))

    def borrows(self, n: int) -> bool:
        """A server given ``n`` cores runs on a client CPU."""
        return bool(set(self.server_cpus(n)) & set(self.client))

    def client_pins(self, connections: int) -> list[int]:
        """The load generator's threads for ``connections``: thread i on ``client[i % len]``."""
        threads = max(1, min(self.client_threads, connections))
        return [self.client[i % len(self.client)] for i in range(threads)]

    def scaling_workers(self) -> list[int]:
        """Worker counts of the scaling table: 1, 2, 4, ... up to the pool's size."""
        out, n = [], 1
        while n <= len(self.server):
            out.append(n)
            n *= 2
        return out

    def describe(self) -> str:
        """One line: the allowed CPUs and the split."""
        threads = f"{self.client_threads} thread{'s' if self.client_threads != 1 else ''}"
        return (
            f"CPUs {format_cpus(self.allowed)} ({len(self.allowed)}): server "
            f"{format_cpus(self.server)}, client {format_cpus(self.client)} ({threads}, pinned)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "allowed_cpus": list(self.allowed),
            "server_cpus": list(self.server),
            "client_cpus": list(self.client),
            "client_threads": self.client_threads,
            "notes": list(self.notes),
        }


def _groups(allowed: Sequence[int], siblings: Mapping[int, object] | None) -> list[list[int]]:
    """The allowed CPUs grouped by core (``siblings``: CPU -> its core's key), by lowest CPU."""
    by_core: dict[object, list[int]] = {}
    for c in allowed:
        key = siblings.get(c, ("cpu", c)) if siblings is not None else ("cpu", c)
        by_core.setdefault(key, []).append(c)
    return sorted((sorted(g) for g in by_core.values()), key=lambda g: g[0])


def _one_per_core_first(groups: list[list[int]]) -> tuple[int, ...]:
    """(first thread of each core ..., then second threads ...)."""
    depth = max((len(g) for g in groups), default=0)
    return tuple(g[i] for i in range(depth) for g in groups if i < len(g))


def plan_cores(
    allowed: Iterable[int],
    *,
    server: Iterable[int] | None = None,
    client: Iterable[int] | None = None,
    client_threads: int | None = None,
    siblings: Mapping[int, object] | None = None,
) -> CorePlan:
    """The core plan for the ``allowed`` CPUs (see the module's docstring).

    ``server``/``client``: ``--server-cpus``/``--client-cpus`` (either alone takes the rest of
    the allowed CPUs for the other side).  ``client_threads``: ``--client-threads`` (default:
    one per client CPU).  ``siblings``: CPU -> core key, to keep SMT siblings together.
    Raises ValueError naming the option at fault.
    """
    allowed_t = tuple(sorted(set(allowed)))
    if not allowed_t:
        raise ValueError("no CPU is available to this process")
    notes: list[str] = []
    for name, given in (("--server-cpus", server), ("--client-cpus", client)):
        if given is not None:
            bad = sorted(set(given) - set(allowed_t))
            if bad:
                raise ValueError(
                    f"{name}: CPU {format_cpus(bad)} is not one this process may use "
                    f"(allowed: {format_cpus(allowed_t)})"
                )
            if not set(given):
                raise ValueError(f"{name}: no CPU given")
    if server is not None or client is not None:
        srv = tuple(sorted(set(server))) if server is not None else ()
        cli = tuple(sorted(set(client))) if client is not None else ()
        if not srv:
            srv = tuple(c for c in allowed_t if c not in cli) or cli
        if not cli:
            cli = tuple(c for c in allowed_t if c not in srv) or srv
    elif len(allowed_t) == 1:
        srv = cli = allowed_t
    elif len(allowed_t) == 2:
        cli, srv = (allowed_t[0],), (allowed_t[1],)
    else:
        groups = _groups(allowed_t, siblings)
        if len(groups) < 2:  # one core's SMT threads: split the threads instead
            groups = [[c] for c in allowed_t]
        k = len(groups) // 2
        srv = _one_per_core_first(groups[len(groups) - k :])
        cli = tuple(sorted(c for g in groups[: len(groups) - k] for c in g))
    if client_threads is None:
        client_threads = len(cli)
    if not 1 <= client_threads <= MAX_CLIENT_THREADS:
        raise ValueError(f"--client-threads: 1 .. {MAX_CLIENT_THREADS}, got {client_threads}")
    common = sorted(set(srv) & set(cli))
    if len(allowed_t) == 1:
        notes.append("one CPU: server and client share it; every figure describes both together")
    elif common:
        notes.append(
            f"server and client share CPU {format_cpus(common)}: every figure describes both"
        )
    elif len(cli) == 1:
        notes.append(
            "the load generator has one CPU: it saturates before a fast server does; such "
            "cells are marked c: compare servers by server CPU per message there"
        )
    return CorePlan(allowed_t, srv, cli, client_threads, tuple(notes))


def sibling_groups(cpus: Iterable[int], root: str = "/sys/devices/system/cpu") -> dict[int, object]:
    """CPU -> (package, core) from sysfs, for the CPUs whose topology is readable."""
    out: dict[int, object] = {}
    for c in cpus:
        topo = Path(root) / f"cpu{c}" / "topology"
        try:
            pkg = int((topo / "physical_package_id").read_text())
            core = int((topo / "core_id").read_text())
        except (OSError, ValueError):
            continue
        out[c] = (pkg, core)
    return out


def plan_for_this_machine(
    server: Iterable[int] | None = None,
    client: Iterable[int] | None = None,
    client_threads: int | None = None,
) -> CorePlan:
    """:func:`plan_cores` over ``os.sched_getaffinity(0)`` and this machine's topology."""
    allowed = sorted(os.sched_getaffinity(0))
    return plan_cores(
        allowed,
        server=server,
        client=client,
        client_threads=client_threads,
        siblings=sibling_groups(allowed),
    )
