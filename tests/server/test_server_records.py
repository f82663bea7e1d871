"""The server with ``--records direct``: the ``websockets`` client in every mode, and the
server's own account (``--stats``) that every TLS connection was on the direct path.

The Autobahn families, the stdlib/s_client interop, the load and robustness tests run
against the direct designs too (``*-direct`` in tests/serverutil.py's DESIGNS).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest
import serverutil
from serverutil import DESIGNS, ServerProcess
from test_server_interop import binary_of, echo, open_ws, run, text_of

from wsstls.server.cli import parse

server_certs = serverutil.server_certs
process_factory = serverutil.process_factory

DIRECT = [name for name, d in DESIGNS.items() if d.records == "direct"]


@pytest.mark.parametrize("design", DIRECT)
def test_websockets_client_over_direct_records(
    process_factory: Callable[..., ServerProcess], tmp_path: object, design: str
) -> None:
    stats = f"{tmp_path}/stats.json"
    sp = process_factory(design, extra=["--stats", stats])
    server = sp.handle

    async def main() -> None:
        for conn in range(3):
            async with open_ws(server) as ws:
                for i, size in enumerate([0, 1, 125, 126, 16384, 16385, 100_000, 1 << 20]):
                    await echo(ws, binary_of(size, seed=i + conn))
                    await echo(ws, text_of(size))

    run(main())
    assert sp.stop() == 0
    with open(stats) as f:
        doc = json.load(f)
    assert doc["records"] == {"direct": 3}, doc["records"]
    assert doc["messages_fast"] + doc["messages_slow"] >= 3 * 16


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--records", "kernel"], "--records: invalid choice: 'kernel'"),
        (["--records", "direct", "--transport", "fd"], "it needs --transport ring"),
    ],
)
def test_records_option_is_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_records_direct_without_tls_is_accepted() -> None:
    cfg, _ = parse(["--no-tls", "--records", "direct"])
    assert cfg.records == "direct" and not cfg.tls


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        ([], "direct"),  # the default: direct where it runs
        (["--records", "openssl"], "openssl"),
        (["--transport", "fd"], "openssl"),
        (["--transport", "mem"], "openssl"),
        (["--mode", "offload"], "direct"),
        (["--mode", "async"], "openssl"),
        (["--mode", "pipelined"], "openssl"),
        (["--mode", "pipelined+async"], "openssl"),
    ],
)
def test_the_default_record_path(argv: list[str], path: str) -> None:
    """Without --records the server seals and opens its own TLS 1.3 records wherever the
    direct layer runs, and stays on OpenSSL's elsewhere instead of refusing the options."""
    cfg, _ = parse(argv)
    assert cfg.record_path == path


def test_a_default_server_serves_direct_records(
    process_factory: Callable[..., ServerProcess], tmp_path: object
) -> None:
    """``serve`` with no --records: the stdlib client's connections go the direct path."""
    stats = f"{tmp_path}/stats.json"
    sp = process_factory(replace(DESIGNS["inline-ring"], records=None), extra=["--stats", stats])
    server = sp.handle

    async def main() -> None:
        for _ in range(2):
            async with open_ws(server) as ws:
                await echo(ws, binary_of(70_000, seed=1))

    run(main())
    assert sp.stop() == 0
    with open(stats) as f:
        assert json.load(f)["records"] == {"direct": 2}
