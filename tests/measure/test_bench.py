"""``python -m wsstls bench``: its inputs checked before any work, its failures reported, the
report's marks and comparisons, and short real runs (the scaling table, a client-bound cell)
with the JSON fields the README documents."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from wsstls.measure import bench, plot, report
from wsstls.measure.runner import Cell, Runner, Sample
from wsstls.measure.servers import ServerProcess

# ---------------------------------------------------------------- bad inputs


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the bench starts a server or the load generator."""

    def started(*_a: Any, **_k: Any) -> None:
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(ServerProcess, "__init__", started)
    monkeypatch.setattr(Runner, "sample", started)


BAD = [
    (["--conns", "0"], "--conns"),
    (["--conns", "100,x"], "--conns"),
    (["--conns", "99999999999"], "--conns"),
    (["--sizes", "-1"], "--sizes"),
    (["--sizes", "999999999999"], "--sizes"),
    (["--threads", "0"], "--threads"),
    (["--threads", "99999999999"], "--threads"),
    (["--workers", "0"], "--workers"),
    (["--transports", "tcp"], "--transports"),
    (["--modes", "inline,fast"], "--modes"),
    (["--url", "http://127.0.0.1/"], "--url"),
    (["--url", "ws://[::1]:80/"], "--url"),
    (["--url", "ws://127.0.0.1:0/"], "--url"),
    (["--url", "ws://127.0.0.1:9/", "--peers"], "--peers"),
    (["--duration", "0"], "--duration"),
    (["--duration", "nan"], "--duration"),
    (["--duration", "inf"], "--duration"),
    (["--warmup", "-1"], "--warmup"),
    (["--repeat", "0"], "--repeat"),
    (["--big", "0"], "--big"),
    (["--server-cpus", "99999"], "--server-cpus"),
    (["--server-cpus", "a-b"], "--server-cpus"),
    (["--client-cpus", "5-2"], "--client-cpus"),
    (["--client-threads", "0"], "--client-threads"),
    (["--scaling", "0"], "--scaling"),
    (["--scaling", "two"], "--scaling"),
    (["--scaling-conns", "0"], "--scaling-conns"),
    (["--scaling-peers", "nginx"], "--scaling-peers"),
    (["--json", "/nonexistent-dir/out.json"], "--json"),
    (["--plot", "/nonexistent-dir/out.png"], "--plot"),
    (["--json", "/"], "--json"),
    (["--sweep-sizes", "0"], "--sweep-sizes"),
    (["--sweep-sizes", "64,big"], "--sweep-sizes"),
    (["--sweep-conns", "0"], "--sweep-conns"),
    (["--no-such-option"], "unrecognized"),
]


@pytest.mark.usefixtures("no_work")
@pytest.mark.parametrize(("argv", "option"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_naming_the_option(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("wsstls bench: error: ") and option in lines[0]


@pytest.mark.usefixtures("no_work")
def test_plot_without_matplotlib_fails_before_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    with pytest.raises(SystemExit) as exc:
        bench.main(["--plot", str(tmp_path / "out.png")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--plot" in err and "matplotlib" in err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_url_with_nothing_listening_reports_the_first_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc = bench.main(["--url", f"ws://127.0.0.1:{_closed_port()}/", "--quick"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "no connection" in err and "Connection refused" in err


# ---------------------------------------------------------------- the report


def _sample(msg: float, saturation: float = 0.5, us: float | None = 5.0) -> Sample:
    return Sample(msg_per_s=msg, mb_per_s=msg * 64 / 1e6, lat_avg_us=100.0, lat_p50_us=90.0,
                  lat_p99_us=300.0, messages=int(msg), errors=0, connect_failures=0,
                  connections=100, client_cpu=saturation, client_saturation=saturation,
                  server_cpu=0.9, server_us_per_msg=us, first_error=None)  # fmt: skip


def _cell(name: str, rates: list[float], saturation: float = 0.5, us: float = 5.0) -> Cell:
    return Cell(name, name, True, 100, 64, [_sample(r, saturation, us) for r in rates], 1, 1,
                (1,), False)  # fmt: skip


def test_spread_and_unstable_flag() -> None:
    steady = _cell("a", [100.0, 105.0, 110.0])
    assert steady.msg_per_s == 105.0 and steady.msg_per_s_min == 100.0
    assert steady.spread == pytest.approx(10 / 105)
    assert not steady.unstable
    shaky = _cell("b", [100.0, 150.0, 125.0])
    assert shaky.unstable and "!" in report.marks(shaky)
    assert _cell("c", [100.0]).spread is None  # one run: no spread, no flag
    rec = shaky.to_json()
    assert rec["msg_per_s_min"] == 100.0 and rec["msg_per_s_max"] == 150.0
    assert rec["msg_per_s_runs"] == [100.0, 150.0, 125.0] and rec["unstable"] is True


def test_client_bound_cells_are_marked_and_not_concluded_from() -> None:
    base = _cell("inline", [200.0, 210.0, 190.0], saturation=0.95, us=5.0)
    other = _cell("offload", [130.0, 140.0, 120.0], saturation=0.7, us=7.5)
    assert base.client_bound and not other.client_bound
    assert report.marks(base).startswith("c")
    line = report.comparison("64 B x 100", base, other, "inline", "offload")
    assert "no conclusion from msg/s" in line and "inline" in line
    assert "7.5 vs 5.0 us (1.50x, runs 1.50-1.50x)" in line
    free = _cell("inline", [200.0, 210.0, 190.0], saturation=0.6, us=5.0)
    line = report.comparison("64 B x 100", free, other, "inline", "offload")
    assert "no conclusion" not in line
    assert "0.65x (runs 0.63-0.67x)" in line  # ratios run by run: 130/200, 140/210, 120/190


def test_seed_table_shows_spread_marks_and_paired_range() -> None:
    res = {("a", 100, 64): _cell("a", [200.0, 220.0, 180.0], saturation=0.95),
           ("b", 100, 64): _cell("b", [100.0, 100.0, 100.0])}  # fmt: skip
    text = report.seed_tables(res, "a", "b", [100], [64], 100)
    row = next(line for line in text.splitlines() if line.strip().startswith("100 "))
    assert "200 msg/s  20% c" in row  # spread 40/200 and client-bound
    assert "-50% [-55,-44] c" in row


def test_human_units() -> None:
    assert [report.human_size(n) for n in (64, 1024, 1536, 16384, 1 << 20)] == [
        "64 B", "1 KiB", "1.5 KiB", "16 KiB", "1 MiB"]  # fmt: skip


def test_plot_lines_only_where_measured() -> None:
    axis = [64, 256, 1024, 4096, 16384]
    assert plot.segments([64, 16384], axis) == [[64], [16384]]
    assert plot.segments([64, 256, 1024, 4096, 16384], axis) == [axis]
    assert plot.segments([64, 1024, 4096], axis) == [[64], [1024, 4096]]


# ---------------------------------------------------------------- real runs


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = bench.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
@pytest.mark.no_sanitizer
@pytest.mark.timeout(240)
def test_quick_scaling_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["--quick", "--scaling", "1,2", "--modes", "inline", "--json", str(out_json)]
    drawn = plot.check() is None  # matplotlib installed: the scaling panel is drawn too
    if drawn:
        argv += ["--plot", str(out_png)]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    assert out_png.is_file() == drawn
    assert out.splitlines()[1].startswith("core plan: CPUs ")
    assert "Scaling: 64 B x 8 connections" in out
    doc = json.loads(out_json.read_text())
    settings = doc["settings"]
    allowed = sorted(os.sched_getaffinity(0))
    assert settings["allowed_cpus"] == allowed
    assert settings["server_cpus"] and settings["client_cpus"]
    assert settings["scaling_workers"] == [1, 2]
    scaling = [r for r in doc["records"] if r.get("table") == "scaling"]
    ours = {(r["workers"], r["tls"]): r for r in scaling if r["server_kind"] == "wsstls"}
    assert set(ours) == {(1, True), (2, True), (1, False), (2, False)}
    for (workers, _tls), r in ours.items():
        assert r["server_cores"] == workers
        assert r["msg_per_s"] > 0 and r["messages"] > 0
        assert isinstance(r["client_bound"], bool)
        assert r["errors"] == 0 and r["connect_failures"] == 0
    for r in doc["records"]:
        for k in ("client_bound", "server_cores", "client_saturation", "spread", "msg_per_s_min",
                  "msg_per_s_max", "client_threads", "server_cpus"):  # fmt: skip
            assert k in r, k
    # the peers of the scaling table are measured when installed, skipped with one line if not
    for peer in ("picows", "gorilla"):
        rows = [r for r in scaling if r["server_kind"] == peer]
        assert len(rows) == 4 or f"{peer}: not" in out, peer


@pytest.mark.slow
@pytest.mark.no_sanitizer
@pytest.mark.timeout(120)
def test_one_shared_client_cpu_is_flagged_client_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cpu = str(min(os.sched_getaffinity(0)))
    out_json = tmp_path / "bench.json"
    rc, out, err = _run(["--quick", "--modes", "inline", "--server-cpus", cpu, "--client-cpus",
                         cpu, "--json", str(out_json)], capsys)  # fmt: skip
    assert rc == 0, err
    doc = json.loads(out_json.read_text())
    inline = next(r for r in doc["records"] if r["design"] == "inline")
    assert inline["client_bound"] is True and inline["shares_client_cpus"] is True
    assert inline["client_saturation"] >= 0.9
    assert doc["settings"]["client_cpus"] == [int(cpu)]
    row = next(ln for ln in out.splitlines() if ln.startswith("  inline TLS (ring, direct"))
    assert " c s " in row or "c s" in row
    assert "no conclusion from msg/s" in out


@pytest.mark.slow
@pytest.mark.no_sanitizer
@pytest.mark.timeout(240)
def test_quick_sweep_of_openssl_designs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--sweep-sizes: each size's four designs against real servers, TLS 1.2, with the
    crypto counters per message from each server's --stats."""
    out_json = tmp_path / "bench.json"
    argv = ["--quick", "--modes", "inline", "--scaling", "off", "--sweep-sizes", "64,64k",
            "--sweep-conns", "2", "--json", str(out_json)]  # fmt: skip
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    assert "OpenSSL's designs by size, TLS 1.2, 2 connections" in out
    sweep = json.loads(out_json.read_text())["sweep"]
    cells = {(r["server"], r["size"]): r for r in sweep}
    assert set(cells) == {(d, n) for d in bench.SWEEP_DESIGNS for n in (64, 65536)}
    for r in sweep:
        assert r["msg_per_s"] > 0 and r["errors"] == 0 and r["server_messages"] > 0
        for k in ("mb_per_s", "server_us_per_msg", "spread", "client_bound",
                  "records_per_call", "pauses_per_msg", "job_calls_per_msg"):  # fmt: skip
            assert k in r, k
    small, big = cells[("async", 64)], cells[("async", 65536)]
    assert small["pauses_per_msg"] == 0 and big["pauses_per_msg"] >= 8  # 4 records each way
    assert small["job_calls_per_msg"] < 0.1  # small messages stay out of ASYNC jobs
    assert cells[("pipelined", 65536)]["records_per_call"] > 1
    assert cells[("inline", 65536)]["records_per_call"] is None
