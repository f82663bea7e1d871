"""The Python names of the C enums cover the headers' enums exactly (no number written twice)."""

from __future__ import annotations

import enum

import pytest
from wsstls._native import ffi

from wsstls._cdata import EchoStatus, LoopReport, TLSStatus

ENUMS = [
    (TLSStatus, "enum tls_status", "TLS_"),
    (EchoStatus, "enum wsecho_status", "WSECHO_"),
    (LoopReport, "enum wsloop_report", "WSLOOP_"),
]


@pytest.mark.parametrize(("py", "c_enum", "prefix"), ENUMS, ids=[e[1] for e in ENUMS])
def test_each_c_enum_has_one_python_enum_with_the_same_names_and_values(
    py: type[enum.IntEnum], c_enum: str, prefix: str
) -> None:
    c = {name.removeprefix(prefix): value for name, value in ffi.typeof(c_enum).relements.items()}
    assert {m.name: m.value for m in py} == c


def test_one_meaning_per_value_within_each_enum() -> None:
    for py, _, _ in ENUMS:
        assert len({m.value for m in py}) == len(py)
