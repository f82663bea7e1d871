"""``python -m wsstls.measure.counted [serve options]``: the echo server with a counting window.

Run with the copy-counting shim preloaded (``memcount.preload_env()``): SIGUSR1
opens the window, SIGUSR2 closes it, and the ``--stats`` file gets what the
window counted under ``memcount`` ("kind:library" -> [calls, bytes]).  The
server itself knows nothing of the shim: this module hooks it in.
"""

from __future__ import annotations

import signal
import sys

from ..server.cli import main as serve_main
from ..server.loop import Server
from .memcount import Counter

__all__ = ["count_between_signals", "main"]


def count_between_signals(server: Server) -> None:
    """Count copies and system calls between SIGUSR1 and SIGUSR2 into ``server.stats``."""
    if not Counter.available():
        return
    counter = Counter()

    def window_end(*_: object) -> None:
        counts = counter.stop()
        server.stats.memcount = {
            f"{kind}:{cls}": [n, counts.bytes[(kind, cls)]]
            for (kind, cls), n in counts.calls.items()
        }

    signal.signal(signal.SIGUSR1, lambda *_: counter.start())
    signal.signal(signal.SIGUSR2, window_end)


def main(argv: list[str] | None = None) -> int:
    return serve_main(argv, on_server=count_between_signals)


if __name__ == "__main__":
    sys.exit(main())
