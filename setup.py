"""Build glue: the C core is compiled by cffi (API mode) into wsstls._native."""

from setuptools import setup

setup(cffi_modules=["wsstls/_build.py:ffibuilder"])
