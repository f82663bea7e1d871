# The compiled cffi extension (wsstls/_build.py): its declarations are csrc/python_api.cdef.
# cffi's objects are dynamic; wsstls._cdata is where the package meets them.
from typing import Any

ffi: Any
lib: Any
