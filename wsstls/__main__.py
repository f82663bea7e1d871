"""Command line: ``python -m wsstls bench|serve|copies|ring-bench`` (also the ``wsstls`` script)."""

from __future__ import annotations

import sys

from .cliargs import Parser


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="wsstls", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("bench", help="the benchmark ('wsstls bench --help')", add_help=False)
    sub.add_parser("serve", help="the WSS echo server ('wsstls serve --help')", add_help=False)
    sub.add_parser("copies", help="the copy ledger ('wsstls copies --help')", add_help=False)
    sub.add_parser("ring-bench", help="the ring microbenchmark", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command in (None, "bench"):
        from .measure.bench import main as bench_main

        return bench_main(rest)
    if args.command == "ring-bench":
        from .measure.ringbench import main as ring_main

        return ring_main(rest)
    if args.command == "serve":
        from .server.cli import main as serve_main

        return serve_main(rest)
    if args.command == "copies":
        from .measure.ledger import main as copies_main

        return copies_main(rest)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
