"""The server connection's state table (wsstls/server/loop.py), and h11's rule that everything
that moves the state machine lives in one place: a phase changes only in ``_advance``, the
connection's registration with the C loop (``hot``, ``watching``) only where ``_arm`` and the
loop's own reports put it."""

from __future__ import annotations

import ast
import inspect

import pytest

from wsstls.server import loop
from wsstls.server.loop import TRANSITIONS, Cause, Phase

LIVE = [p for p in Phase if p is not Phase.CLOSED]


def reachable(start: Phase) -> set[Phase]:
    seen, todo = {start}, [start]
    while todo:
        here = todo.pop()
        for (src, _), dst in TRANSITIONS.items():
            if src is here and dst not in seen:
                seen.add(dst)
                todo.append(dst)
    return seen


def test_every_phase_is_reached_from_a_new_connection() -> None:
    assert reachable(Phase.TLS) == set(Phase)  # wss://
    assert reachable(Phase.WS) == set(Phase) - {Phase.TLS}  # ws://


@pytest.mark.parametrize("phase", LIVE, ids=[p.name for p in LIVE])
def test_every_live_phase_can_fail_stop_and_end(phase: Phase) -> None:
    assert TRANSITIONS[phase, Cause.FAILED] is Phase.CLOSED
    assert TRANSITIONS[phase, Cause.SHUTDOWN] is Phase.CLOSED
    assert Phase.CLOSED in reachable(phase)


def test_closed_is_final() -> None:
    assert not [key for key in TRANSITIONS if key[0] is Phase.CLOSED]


def test_input_ending_while_open_echoes_before_closing() -> None:
    """The peer's end of the stream does not close an open connection at once: what it
    sent before is echoed first (ENDING closes once nothing is left to echo or send)."""
    assert TRANSITIONS[Phase.OPEN, Cause.INPUT_ENDED] is Phase.ENDING
    assert TRANSITIONS[Phase.ENDING, Cause.DONE] is Phase.CLOSED
    assert (Phase.ENDING, Cause.INPUT_ENDED) not in TRANSITIONS  # it cannot end twice


def _assignments(attr: str) -> set[str]:
    """The functions of loop.py that assign ``<something>.attr``."""
    tree = ast.parse(inspect.getsource(loop))
    where: set[str] = set()
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            for node in ast.walk(fn):
                targets = node.targets if isinstance(node, ast.Assign) else []
                if any(isinstance(t, ast.Attribute) and t.attr == attr for t in targets):
                    where.add(f"{cls.name}.{fn.name}")
    return where


def test_one_place_moves_the_phase() -> None:
    assert _assignments("phase") == {"_Conn.__init__", "Server._advance"}


def test_one_place_arms_the_connection() -> None:
    """``hot``/``watching`` mirror the C loop's registration: set where Python changes it
    (_arm, _watch), where the loop reports it changed (a COLD report) and on closing."""
    allowed = {"_Conn.__init__", "Server._arm", "Server._watch", "Server._on_report"}
    allowed.add("Server._close")
    assert _assignments("hot") <= allowed
    assert _assignments("watching") <= allowed
