"""wsstls: where the bytes get copied when TLS runs over a buffered transport.

A C byte ring with partial writes (``RingBuffer``), an OpenSSL BIO over it,
a WebSocket echo server and the copy ledger that measures them.
"""

from .ring import RingBuffer, RingStats

__all__ = ["RingBuffer", "RingStats", "__version__"]

__version__ = "0.1.0"
