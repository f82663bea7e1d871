"""The WSS echo server, with the seed report's TLS designs selectable.

``config`` (settings and counters), ``loop`` (one process's event loop over
the C core in csrc/server/), ``workers`` (one process or N sharing the port),
``cli`` (``python -m wsstls serve``).
"""

from .config import Mode, ServerConfig, ServerStats
from .loop import Server
from .workers import serve

__all__ = ["Mode", "Server", "ServerConfig", "ServerStats", "serve"]
