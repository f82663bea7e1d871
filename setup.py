"""Build glue: the C core is compiled by cffi (API mode) into wsstls._native.

wsstls.measure._memcount is not a Python module: it is the copy-counting shim that
the copy ledger preloads (LD_PRELOAD) into a measuring process, so it must
not depend on Python.  It is built here only so that it ships with the wheel.
"""

from setuptools import Extension, setup

memcount = Extension(
    "wsstls.measure._memcount",
    sources=["csrc/measure/memcount.c"],
    # -fno-builtin: this file defines memcpy & co.; no fortify wrappers either.
    extra_compile_args=[
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-fno-builtin",
        "-U_FORTIFY_SOURCE",
    ],
    libraries=["dl"],
)

setup(cffi_modules=["wsstls/_build.py:ffibuilder"], ext_modules=[memcount])
