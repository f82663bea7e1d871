"""The cost model of the pipelined and ASYNC designs (wsstls.measure.cryptocost).

Pure arithmetic on given constants: what the model must say whatever this machine
measures.  The measuring side runs in ``python -m wsstls bench`` (``--crypto``)."""

from __future__ import annotations

import pytest

from wsstls.measure.cryptocost import DESIGNS, Constants, predict, records, render

K = Constants(record_us=0.5, byte_ns=0.3, dispatch_us=3.0, pause_loop_us=2.0,
              pause_work_us=0.5, pipelines=4, threshold=16384, job_us=0.4)  # fmt: skip
MIB = 1 << 20


def test_records() -> None:
    assert [records(n) for n in (1, 16384, 16385, MIB)] == [1, 1, 2, 64]


@pytest.mark.parametrize("cores", [1, 2, 8])
def test_inline_is_one_loop_whatever_the_cores(cores: int) -> None:
    p = predict("inline", 65536, 50.0, K, cores)
    assert p.msg_s == pytest.approx(1e6 / 50.0)
    assert p.loop_us == p.total_us == 50.0


def test_small_messages_stay_inline_paying_only_the_jobs() -> None:
    inline = predict("inline", 64, 5.0, K, 8).msg_s
    for design in ("async", "pipelined+async"):
        p = predict(design, 64, 5.0, K, 8)
        assert p.msg_s == pytest.approx(1e6 / (5.0 + K.job_us))  # no pause: records < threshold
        assert p.msg_s < inline
    assert predict("pipelined", 64, 5.0, K, 8).msg_s == pytest.approx(inline)  # one record


def test_one_core_pays_everything() -> None:
    for design in DESIGNS:
        p = predict(design, MIB, 900.0, K, 1)
        assert p.msg_s == pytest.approx(1e6 / p.total_us)
        assert p.total_us >= 900.0  # offloading adds work, it moves none off one core


def test_more_cores_help_only_the_parallel_designs() -> None:
    for design in ("pipelined", "pipelined+async"):
        rates = [predict(design, MIB, 900.0, K, n).msg_s for n in (1, 2, 4, 8)]
        assert rates == sorted(rates) and rates[-1] > 1.5 * rates[0]
    big = predict("pipelined+async", MIB, 900.0, K, 8).msg_s
    assert big > 2 * predict("inline", MIB, 900.0, K, 8).msg_s  # the loop only dispatches


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="design"):
        predict("threads", 64, 5.0, K, 2)
    with pytest.raises(ValueError, match="cores"):
        predict("inline", 64, 5.0, K, 0)


def test_render_names_the_targets() -> None:
    rows = []
    for size in (64, 262144):
        for d in DESIGNS:
            row: dict[str, object] = {"size": size, "design": d, "measured_1": 1.0,
                                      "measured_2": 2.0, "loop_us": 1.0, "worker_us": 0.0,
                                      "records_per_call": 0.0, "pauses": 0.0}  # fmt: skip
            for n in (1, 2, 8):
                row[f"model_{n}"] = predict(d, size, 5.0 if size == 64 else 200.0, K, n).msg_s
            rows.append(row)
    text = render({"constants": {k: float(v) for k, v in K.__dict__.items()}, "rows": rows,
                   "cores": [[1], [0, 1]]})  # fmt: skip
    assert "target: pipelined+async >= 2x inline" in text
    assert "target: async at 64 B within 5 %" in text
    assert len(text.splitlines()) == 3 + len(rows) + 2  # title, constants, header; 2 targets
