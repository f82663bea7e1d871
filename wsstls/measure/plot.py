"""``bench --plot FILE.png``: throughput, latency and server CPU by size and by connections,
and the scaling panel (msg/s against server cores, wsstls beside the peers).

Every point is a measured cell (its median) with the runs' min..max as error bars; a line
joins two points of a design only where it was measured at every x between them.  Open
markers are client-bound cells.  Needs matplotlib (``pip install 'wsstls[plot]'``):
:func:`check` says so before the run starts.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from .report import human_size
from .runner import Cell, CellKey

__all__ = ["check", "draw", "segments"]


def check() -> str | None:
    """None when matplotlib can be used, else what to install."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed: pip install 'wsstls[plot]'"
    return None


def segments(measured: Sequence[float], axis: Sequence[float]) -> list[list[float]]:
    """Split ``measured`` x values into runs with no unmeasured ``axis`` value between.

    >>> segments([64, 16384], [64, 256, 16384])
    [[64], [16384]]
    """
    have = set(measured)
    out: list[list[float]] = []
    run: list[float] = []
    for x in sorted(set(axis) | have):
        if x in have:
            run.append(x)
        elif run:
            out.append(run)
            run = []
    if run:
        out.append(run)
    return out


def _series(
    ax: Any,
    points: Mapping[float, Cell],
    axis: Sequence[float],
    value: Any,
    label: str,
    color: Any,
    marker: str = "o",
) -> None:
    """Points with error bars (runs' min..max for msg/s), lines only over measured runs."""
    first = True
    for seg in segments(list(points), axis):
        cells = [points[x] for x in seg]
        ys = [value(c) for c in cells]
        err = None
        if value is _msg:
            err = [
                [y - c.msg_per_s_min for y, c in zip(ys, cells, strict=True)],
                [c.msg_per_s_max - y for y, c in zip(ys, cells, strict=True)],
            ]
        ax.errorbar(
            seg,
            ys,
            yerr=err,
            color=color,
            marker=None,
            capsize=3,
            linewidth=1.2,
            label=label if first else None,
        )
        first = False
        for x, y, c in zip(seg, ys, cells, strict=True):
            face = "none" if c.client_bound else color
            ax.plot([x], [y], marker=marker, color=color, markerfacecolor=face, linestyle="")


def _msg(c: Cell) -> float:
    return c.msg_per_s


def _lat(c: Cell) -> float:
    return c.lat_avg_us / 1000


def _cpu(c: Cell) -> float:
    return c.server_us_per_msg or float("nan")


def _thousands(v: float, _pos: int) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    return f"{v / 1e3:g}k" if abs(v) >= 1e3 else f"{v:g}"


def draw(
    path: str,
    res: Mapping[CellKey, Cell],
    designs: Sequence[str],
    conns: Sequence[int],
    base_conns: int,
    scaling: Sequence[Cell] = (),
) -> None:
    """Draw the panels into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sizes = sorted({s for (_, c, s) in res if c == base_conns})
    for i, d in enumerate(designs):
        color = colors[i % len(colors)]
        by_size: dict[float, Cell] = {
            s: res[(d, base_conns, s)] for s in sizes if (d, base_conns, s) in res
        }
        by_conn: dict[float, Cell] = {c: res[(d, c, 64)] for c in conns if (d, c, 64) in res}
        if by_size:
            _series(axes[0][0], by_size, sizes, _msg, d, color)
            _series(axes[1][0], by_size, sizes, _lat, d, color)
            _series(axes[1][2], by_size, sizes, _cpu, d, color)
        if by_conn:
            _series(axes[0][1], by_conn, conns, _msg, d, color)
            _series(axes[1][1], by_conn, conns, _lat, d, color)

    kinds = sorted(
        {(c.extra.get("server_kind", "?"), c.tls) for c in scaling},
        key=lambda k: (str(k[0]) != "wsstls", str(k[0]), not k[1]),
    )
    cores = sorted({int(c.extra.get("workers", 1)) for c in scaling})
    for i, (kind, tls) in enumerate(kinds):
        pts = {
            float(c.extra["workers"]): c
            for c in scaling
            if c.extra.get("server_kind") == kind and c.tls == tls
        }
        marker = "o" if tls else "s"
        _series(
            axes[0][2],
            pts,
            [float(n) for n in cores],
            _msg,
            f"{kind} {'wss' if tls else 'ws'}",
            colors[i % len(colors)],
            marker,
        )

    def size_axis(ax: Any) -> None:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: human_size(int(v))))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(f"message size ({base_conns} connections)")

    def conn_axis(ax: Any) -> None:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(list(conns)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("connections (64 B messages)")

    panels = (
        (axes[0][0], "throughput by message size", "messages/s", size_axis),
        (axes[1][0], "average latency by message size", "ms", size_axis),
        (axes[1][2], "server CPU per echoed message", "µs of CPU per message", size_axis),
        (axes[0][1], "throughput by connections", "messages/s", conn_axis),
        (axes[1][1], "average latency by connections", "ms", conn_axis),
    )
    for ax, title, ylabel, xaxis in panels:
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        xaxis(ax)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in (axes[0][0], axes[0][1]):
        ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
    sc = axes[0][2]
    sc.set_title("scaling: throughput by server cores")
    sc.yaxis.set_major_formatter(FuncFormatter(_thousands))
    sc.grid(True, alpha=0.3)
    if cores:
        sc.set_ylabel("messages/s")
        sc.set_xscale("log", base=2)
        sc.xaxis.set_major_locator(FixedLocator(cores))
        sc.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
        sc.xaxis.set_minor_locator(NullLocator())
        first = scaling[0]
        sc.set_xlabel(f"server cores ({human_size(first.size)} x {first.conns} connections)")
        sc.legend(fontsize=8)
    else:
        sc.set_xticks([])
        sc.set_yticks([])
        sc.text(
            0.5,
            0.5,
            "no scaling run\n(a server pool of 2+ CPUs, or --scaling)",
            ha="center",
            va="center",
            transform=sc.transAxes,
        )
    fig.suptitle(
        f"wsstls echo benchmark - {platform.node()}, {os.cpu_count()} CPUs; medians, bars: "
        "min..max of the runs; open markers: client-bound"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
