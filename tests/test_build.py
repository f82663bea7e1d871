"""The C/Python boundary: csrc/python_api.cdef against the headers, and what the extension exports.

cffi checks struct field sizes on import and takes enum values from the compiler;
these tests check the rest: each function declared for Python has the header's
exact signature, each enum lists every member of the header's enum, each function
is called from Python somewhere, and the extension exports nothing but its init.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cffi import FFI, CDefError, model

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def _build_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("wsstls_build", ROOT / "wsstls" / "_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _build_module()


def _declarations() -> dict[str, object]:
    ffi = FFI()
    ffi.cdef(BUILD.read_cdef())
    return {key: tp for key, (tp, _) in ffi._parser._declarations.items()}


DECLS = _declarations()
FUNCTIONS = {k.split(" ", 1)[1]: tp for k, tp in DECLS.items() if k.startswith("function ")}
ENUMS = {k.split(" ", 1)[1]: tp for k, tp in DECLS.items() if k.startswith("enum ")}


def test_cdef_is_given_to_cffi_as_it_is_and_what_cffi_cannot_parse_fails() -> None:
    # The old builder cut the cdef out of the headers with regular expressions; a
    # static inline body or an #ifdef then went wrong silently.  Now nothing is cut.
    for bad in ("static inline int f(void) { return 0; }", "#ifdef X\nint g(void);\n#endif"):
        with pytest.raises(CDefError):
            FFI().cdef(BUILD.read_cdef() + "\n" + bad)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_cdef_agrees_with_the_headers(tmp_path: Path) -> None:
    """Each function's cdef type is its header's (a pointer initialised from the real
    function), each enum's cdef members are all of the header's (-Wswitch)."""
    lines = [f'#include "{h}"' for h in BUILD.API_HEADERS]
    for name, tp in FUNCTIONS.items():
        assert isinstance(tp, model.FunctionPtrType)
        lines.append(f"{tp.get_c_name(f'const check_{name}')} = {name};")
    for name, tp in ENUMS.items():
        assert isinstance(tp, model.EnumType)
        cases = " ".join(f"case {member}:" for member in tp.enumerators)
        lines.append(f"void check_{name}(enum {name} e) {{ switch (e) {{ {cases} break; }} }}")
    src = tmp_path / "check.c"
    src.write_text("\n".join(lines) + "\n")
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{CSRC}"]
    out = subprocess.run(["gcc", *flags, str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


def test_every_function_declared_for_python_is_called_from_python() -> None:
    """Only what Python calls is in the cdef (the rest stays internal to the extension)."""
    used: set[str] = set()
    for folder in ("wsstls", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            used |= set(re.findall(r"\blib\.(\w+)", path.read_text()))
    assert sorted(set(FUNCTIONS) - used) == []


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_the_extension_exports_only_its_module_init() -> None:
    import wsstls._native as native

    out = subprocess.run(
        ["nm", "-D", "--defined-only", native.__file__], capture_output=True, text=True, check=True
    )
    functions = {line.split()[-1] for line in out.stdout.splitlines() if " T " in line}
    assert functions == {"PyInit__native"}, sorted(functions)[:20]


def test_the_extension_has_nothing_but_the_cdef() -> None:
    from wsstls._native import lib

    assert set(FUNCTIONS) <= set(dir(lib))
    assert not hasattr(lib, "ringbio_new") and not hasattr(lib, "offload_submit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
