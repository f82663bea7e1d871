"""wsstls._cdata, the one door to the extension: the Python names of the C enums cover the
headers' enums exactly (no number written twice), only _cdata imports the extension, and no
module reaches into another object's C object."""

from __future__ import annotations

import enum
import re
from pathlib import Path

import pytest

import wsstls
from wsstls import RingBuffer
from wsstls._cdata import EchoStatus, LoopReport, TLSStatus, handle
from wsstls._native import ffi

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


PACKAGE = Path(wsstls.__file__).resolve().parent


def _sources() -> dict[str, str]:
    return {
        str(p.relative_to(PACKAGE)): p.read_text()
        for p in PACKAGE.rglob("*.py")
        if "peers" not in p.parts and p.name != "_build.py"  # (the builder makes _native)
    }


def test_only_cdata_imports_the_extension() -> None:
    importers = {name for name, text in _sources().items() if "_native import" in text}
    assert importers == {"_cdata.py"}


def test_no_module_reaches_into_another_objects_c_object() -> None:
    """A wrapper's C object is its own ``self._handle``; anyone else asks ``handle()``."""
    for name, text in _sources().items():
        foreign = re.findall(r"(?<!self)\._handle\b", text.replace("owner._handle", ""))
        assert not foreign, f"{name} reads another object's _handle"
        assert not re.search(r"\.(_r|_c|_ctx)\b", text), f"{name} reads a private C object"


def test_handle_fails_cleanly() -> None:
    ring = RingBuffer(16)
    assert handle(ring) is not None
    ring.close()
    with pytest.raises(ValueError, match="closed"):
        handle(ring)
    with pytest.raises(TypeError, match="wraps no C object"):
        handle(object())
