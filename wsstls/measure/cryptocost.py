"""The crypto cost model of the pipelined and ASYNC designs (issue 10).

Two cores cannot show parallel crypto winning by timing alone, so this module
measures what two cores can show - the cost of sealing a record inline, of one
pipelined dispatch to the crypto pool, of one ASYNC pause/resume - and predicts
each design's messages per second on N cores from them and from the measured
inline server CPU per message:

    T    inline server CPU per message at size S (measured by the bench)
    C    crypto CPU per message: 2 directions x (records x a + S x b)
    L    T - C: the loop's own work (system calls, framing), which no design moves
    inline           loop = T                              msg/s = 1 / T
    async            loop = L + C_small + pauses x p_loop  workers: C_big + pauses x p_work
    pipelined        loop = L + C / min(P, N) + batches x d, total = T + batches x d
    pipelined+async  loop = L + batches x p_loop           workers: C + batches x (d + p_work)
    msg/s = min(1 / loop, (N - 1) / workers, N / total), and 1 / total on one core.

The constants (a, b, d, p) come from ``measure_constants()``: sans-IO
connections in this process, CPU time of the calling thread plus the pool's
worker time from the crypto counters, medians of several rounds.
"""

from __future__ import annotations

import math
import os
import select
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..tls import (
    SelfSigned,
    TLSConnection,
    TLSContext,
    TLSVersion,
    crypto_counters,
    self_signed,
)

__all__ = ["DESIGNS", "Constants", "Prediction", "measure_constants", "predict", "render", "run"]

RECORD = 16384
#: The designs the model knows, with their server ``--mode``.
DESIGNS = ("inline", "async", "pipelined", "pipelined+async")


@dataclass(frozen=True)
class Constants:
    """Measured costs in microseconds (see the module docstring)."""

    record_us: float  # a: fixed cost of sealing or opening one record
    byte_ns: float  # b: per plaintext byte
    dispatch_us: float  # d: one pipelined batch handed to the pool and waited for
    pause_loop_us: float  # p on the loop thread: one ASYNC pause + resume round trip
    pause_work_us: float  # p on a worker: taking the job, signalling its eventfd
    pipelines: int
    threshold: int  # async: records of at least this many bytes are offloaded
    job_us: float = 0.0  # ASYNC designs' own cost per message where nothing pauses

    def crypto_us(self, size: int) -> float:
        """C: both directions' records of one echoed message of ``size`` bytes."""
        return 2 * (records(size) * self.record_us + size * self.byte_ns / 1000)


def records(size: int, record: int = RECORD) -> int:
    return max(1, math.ceil(size / record))


@dataclass(frozen=True)
class Prediction:
    design: str
    cores: int
    msg_s: float
    loop_us: float  # the loop thread's CPU per message
    total_us: float  # the process's CPU per message


def predict(design: str, size: int, inline_us: float, k: Constants, cores: int) -> Prediction:
    """Messages per second of ``design`` on ``cores`` cores at ``size`` bytes (see module doc)."""
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
    if cores < 1:
        raise ValueError(f"cores must be at least 1, got {cores}")
    crypto = min(k.crypto_us(size), inline_us)  # (constants measured apart: at most all of it)
    loop_own = inline_us - crypto
    r = records(size)
    work = 0.0
    if design == "inline":
        loop, total = inline_us, inline_us
    elif design == "async":
        big = r if min(size, RECORD) >= k.threshold else 0  # records offloaded per direction
        offloaded = crypto * big / r
        pauses = 2 * big
        loop = loop_own + (crypto - offloaded) + pauses * k.pause_loop_us + k.job_us
        work = offloaded + pauses * k.pause_work_us
        total = loop + work
    elif design == "pipelined":
        batches = 2 * math.ceil(r / k.pipelines) if r > 1 else 0
        share = min(k.pipelines, cores, r)
        loop = loop_own + crypto / share + batches * k.dispatch_us
        total = inline_us + batches * k.dispatch_us
        work = total - loop
    else:  # pipelined+async: one pause per batch, the pool seals every record
        batches = 2 * math.ceil(r / k.pipelines)
        big = min(size, RECORD) >= k.threshold
        if not big:  # inline, in jobs
            return replace(predict("async", size, inline_us, k, cores), design=design)
        loop = loop_own + batches * k.pause_loop_us + k.job_us
        work = crypto + batches * (k.dispatch_us + k.pause_work_us)
        total = loop + work
    if cores == 1:
        rate = 1e6 / total
    else:
        limits = [1e6 / loop, cores * 1e6 / total]
        if work > 0:
            limits.append((cores - 1) * 1e6 / work)
        rate = min(limits)
    return Prediction(design, cores, rate, loop, total)


# ------------------------------------------------------------- measuring


def _pair(server: TLSContext, client: TLSContext) -> tuple[TLSConnection, TLSConnection]:
    # The ring transport, sans-IO, with room for a whole 1 MiB message's records
    # (a memory BIO moves what is left after every record it gives out).
    s = server.connection(transport="ring", ring_capacity=1 << 22)
    c = client.connection(transport="ring", ring_capacity=1 << 22)
    for _ in range(100):
        done_c = c.do_handshake()
        s.feed(c.take())
        done_s = s.do_handshake()
        if s.want_async:
            select.select([s.async_fd], [], [], 5.0)
        c.feed(s.take())
        if done_c and done_s:
            return s, c
    raise RuntimeError("the measuring handshake did not complete")


def _cpu_us(conn: TLSConnection, data: bytes, rounds: int) -> tuple[float, float, float]:
    """Median over rounds of (calling thread CPU, pool worker CPU, pauses + dispatches) of
    writing ``data`` (waiting on the async fd when paused); the output is taken (and
    dropped) outside the timed calls."""
    caller, worker, events = [], [], []
    for _ in range(rounds):
        before, spent, sent, pauses = crypto_counters(), 0, 0, 0
        for _ in range(100_000):
            if sent == len(data):
                break
            t0 = time.thread_time_ns()
            sent += conn.write(data[sent:])
            if conn.want_async:
                pauses += 1
                select.select([conn.async_fd], [], [], 5.0)
            spent += time.thread_time_ns() - t0
            conn.take()  # the peer never reads it: sealing is what is measured
        after = crypto_counters()
        caller.append(spent / 1000)
        worker.append((after.worker_ns - before.worker_ns) / 1000)
        events.append(pauses + after.dispatches - before.dispatches)
    return statistics.median(caller), statistics.median(worker), statistics.median(events)


def measure_constants(pipelines: int = 4, threshold: int = RECORD, rounds: int = 7) -> Constants:
    """Seal records inline, pipelined and paused in this process; the costs (see Constants)."""
    pem = self_signed("localhost")
    kw: dict[str, Any] = {
        "cert_pem": pem.cert_pem, "key_pem": pem.key_pem, "max_version": TLSVersion.TLSv1_2
    }  # fmt: skip
    client = TLSContext(False, verify=False)
    burst = 32  # records per measured write
    # a and b: a line through the inline cost of 1 KiB and 16 KiB records.
    per = {}
    for size in (1024, RECORD):
        s, _ = _pair(TLSContext(True, max_send_fragment=size, **kw), client)
        caller, _, _ = _cpu_us(s, os.urandom(size * burst), rounds)
        per[size] = caller / burst
    b_us = max((per[RECORD] - per[1024]) / (RECORD - 1024), 0.0)
    a_us = max(per[1024] - 1024 * b_us, 0.0)
    inline_rec = per[RECORD]
    # d: a batch of `pipelines` full records handed to the pool (caller + workers).
    s, _ = _pair(TLSContext(True, pipelines=pipelines, split_send_fragment=RECORD, **kw), client)
    caller, worker, batches = _cpu_us(s, os.urandom(RECORD * pipelines * 8), rounds)
    dispatch = max((caller + worker - 8 * pipelines * inline_rec) / max(batches, 1), 0.0)
    # p: one record per pause (threshold 0): the caller's side and the worker's.
    s, _ = _pair(TLSContext(True, crypto="async", offload_threshold=0, **kw), client)
    caller, worker, pauses = _cpu_us(s, os.urandom(RECORD * 8), rounds)
    pauses = max(pauses, 1)
    pause_loop = caller / pauses  # the loop seals nothing itself: all of it is the pause
    pause_work = max((worker - 8 * inline_rec) / pauses, 0.0)
    return Constants(
        record_us=a_us,
        byte_ns=b_us * 1000,
        dispatch_us=dispatch,
        pause_loop_us=pause_loop,
        pause_work_us=pause_work,
        pipelines=pipelines,
        threshold=threshold,
    )


def constants_dict(k: Constants) -> dict[str, float]:
    return {key: float(v) for key, v in asdict(k).items()}


# ------------------------------------------- in-process server work, 1 and 2 cores


def _contexts(design: str, pipelines: int, threshold: int) -> TLSContext:
    pem = _PEM()
    kw: dict[str, Any] = {"cert_pem": pem.cert_pem, "key_pem": pem.key_pem,
                          "max_version": TLSVersion.TLSv1_2}  # fmt: skip
    if design in ("pipelined", "pipelined+async"):
        kw.update(pipelines=pipelines, split_send_fragment=RECORD)
    if design in ("async", "pipelined+async"):
        kw.update(crypto="async", offload_threshold=threshold)
    return TLSContext(True, **kw)


_pem_cache: list[SelfSigned] = []


def _PEM() -> SelfSigned:
    if not _pem_cache:
        _pem_cache.append(self_signed("localhost"))
    return _pem_cache[0]


def _pin_all_threads(cpus: set[int]) -> None:
    """Pin every thread of this process (the crypto pool's included) to ``cpus``."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass(frozen=True)
class Measured:
    """The server half of an in-memory echo, per message: wall-clock rate and CPU."""

    msg_s: float  # wall clock, the process pinned to the cores given
    loop_us: float  # CPU of the calling ("loop") thread
    worker_us: float  # CPU of the crypto pool's workers
    records_per_call: float  # our cipher's records per call (0: the provider's cipher)
    pauses: float  # ASYNC pauses per message


def server_side(design: str, size: int, cpus: set[int], seconds: float = 0.25,
                pipelines: int = 4, threshold: int = RECORD) -> Measured:  # fmt: skip
    """The server's half of an in-memory TLS 1.2 echo (open the client's message, seal
    the echo), with every thread of the process pinned to ``cpus``: only the server's
    calls are timed, waits for the pool included."""
    server_ctx = _contexts(design, pipelines, threshold)
    client_ctx = TLSContext(False, verify=False, max_version=TLSVersion.TLSv1_2)
    s, c = _pair(server_ctx, client_ctx)
    before_cpus = os.sched_getaffinity(0)
    _pin_all_threads(cpus)
    try:
        msg = os.urandom(size)
        view = memoryview(msg)
        rbuf = bytearray(65536)
        wall = cpu = count = 0
        k0 = crypto_counters()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or count < 3:
            sent = 0
            while sent < size:
                sent += c.write(view[sent:])
                wire = c.take()
                t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
                s.feed(wire)
                wall += time.perf_counter_ns() - t0
                cpu += time.thread_time_ns() - c0
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            got = 0
            while got < size:  # open: one buffer throughout (a paused read resumes into it)
                n = s.readinto(rbuf)
                if n is None:
                    if not s.want_async:
                        raise RuntimeError("the server read stalled")
                    select.select([s.async_fd], [], [], 5.0)
                    continue
                got += n
            out = bytearray()
            sent = 0
            while sent < size:  # seal the echo (the same bytes back)
                sent += s.write(view[sent:])
                if sent < size and s.want_async:  # (asked only when it stopped short)
                    select.select([s.async_fd], [], [], 5.0)
                out += s.take()
            wall += time.perf_counter_ns() - t0
            cpu += time.thread_time_ns() - c0
            c.feed(bytes(out))
            left = size
            while left > 0:
                data = c.read(1 << 20)
                if not data:
                    raise RuntimeError("the client read stalled")
                left -= len(data)
            count += 1
        k1 = crypto_counters()
        calls = k1.cipher_calls - k0.cipher_calls
        return Measured(
            msg_s=count / (wall / 1e9),
            loop_us=cpu / count / 1000,
            worker_us=(k1.worker_ns - k0.worker_ns) / count / 1000,
            records_per_call=(k1.cipher_records - k0.cipher_records) / calls if calls else 0.0,
            pauses=(k1.pauses - k0.pauses) / count,
        )
    finally:
        _pin_all_threads(before_cpus)


# ----------------------------------------------------------------- the table

SIZES = (64, 16384, 262144, 1 << 20)
SWEEP = (64, 1024, 4096, 16384, 65536, 262144, 1 << 20)


def _core_sets() -> tuple[set[int], set[int]]:
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[-1]}, set(cpus[-2:])


def run(
    sizes: tuple[int, ...] = SIZES, repeat: int = 3, seconds: float = 0.25
) -> dict[str, object]:
    """Measure the constants, then every design's in-process server half on 1 and 2 cores
    (the designs alternating, median of ``repeat``), with the model's prediction beside.

    The model's inputs are CPU times (a busy machine's other processes do not inflate them
    as they do the wall clock): inline's CPU per message at each size, the constants, and
    the ASYNC designs' own cost where nothing pauses, taken from the smallest size (async's
    CPU per message over inline's: the look at the record headers, its calls out of jobs;
    the calls that do run in jobs are in the pause constant)."""
    k = measure_constants()
    one, two = _core_sets()
    measured: dict[int, dict[tuple[str, int], Measured]] = {}
    for size in sizes:
        runs: dict[tuple[str, int], list[Measured]] = {}
        for _ in range(repeat):
            for design in DESIGNS:  # A B C D, A B C D, ...
                for n, cpus in ((1, one), (2, two)):
                    runs.setdefault((design, n), []).append(
                        server_side(design, size, cpus, seconds)
                    )
        measured[size] = {key: _median(v) for key, v in runs.items()}
    small = measured[min(sizes)]
    k = replace(k, job_us=max(small[("async", 1)].loop_us - small[("inline", 1)].loop_us, 0.0))
    rows = []
    for size in sizes:
        med = measured[size]
        inline_us = med[("inline", 1)].loop_us
        for design in DESIGNS:
            m1, m2 = med[(design, 1)], med[(design, 2)]
            rows.append({
                "size": size, "design": design,
                "measured_1": m1.msg_s, "measured_2": m2.msg_s,
                "loop_us": m2.loop_us, "worker_us": m2.worker_us,
                "records_per_call": m2.records_per_call, "pauses": m2.pauses,
                **{f"model_{n}": predict(design, size, inline_us, k, n).msg_s for n in (1, 2, 8)},
            })  # fmt: skip
    return {"constants": constants_dict(k), "rows": rows, "cores": [sorted(one), sorted(two)]}


_FIELDS = ("msg_s", "loop_us", "worker_us", "records_per_call", "pauses")


def _median(runs: list[Measured]) -> Measured:
    return Measured(*(statistics.median(getattr(r, f) for r in runs) for f in _FIELDS))


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def render(doc: dict[str, object]) -> str:
    k = doc["constants"]
    rows = doc["rows"]
    assert isinstance(k, dict) and isinstance(rows, list)
    lines = [
        "Pipelining and ASYNC jobs: the server's half of a TLS 1.2 echo in process "
        "(open + seal), msg/s, median; model beside",
        f"  constants: record {k['record_us']:.2f} us + {k['byte_ns']:.3f} ns/B, "
        f"dispatch {k['dispatch_us']:.1f} us, pause {k['pause_loop_us']:.1f} us loop + "
        f"{k['pause_work_us']:.1f} us worker, jobs {k['job_us']:.1f} us/msg; "
        f"{int(k['pipelines'])} pipelines, async "
        f"threshold {_size(int(k['threshold']))}; cores {doc['cores']}",
        f"  {'size':>8} {'design':<16} {'1 core':>10} {'model':>10} {'2 cores':>10} "
        f"{'model':>10} {'8 model':>10} {'vs inline':>9} {'loop us':>9} {'pool us':>8} "
        f"{'rec/call':>8} {'pauses':>6}",
    ]
    inline8: dict[int, float] = {}
    for r in rows:
        if r["design"] == "inline":
            inline8[r["size"]] = r["model_8"]
    for r in rows:
        ratio = r["model_8"] / inline8[r["size"]] if inline8.get(r["size"]) else 0.0
        rpc = r["records_per_call"]
        per_call = f"{rpc:.1f}" if rpc else "-"  # (inline, async: the provider cipher)
        lines.append(
            f"  {_size(r['size']):>8} {r['design']:<16} {r['measured_1']:>10,.0f} "
            f"{r['model_1']:>10,.0f} {r['measured_2']:>10,.0f} {r['model_2']:>10,.0f} "
            f"{r['model_8']:>10,.0f} {ratio:>8.2f}x {r['loop_us']:>9.1f} {r['worker_us']:>8.1f} "
            f"{per_call:>8} {r['pauses']:>6.1f}"
        )
    big = [r for r in rows if r["design"] == "pipelined+async" and r["size"] >= 262144]
    small = [r for r in rows if r["design"] == "async" and r["size"] == 64]
    if big:
        worst = min(r["model_8"] / inline8[r["size"]] for r in big)
        lines.append(f"  target: pipelined+async >= 2x inline at 256 KiB-1 MiB on 8 cores "
                     f"(model): {worst:.2f}x")  # fmt: skip
    if small:
        r = small[0]
        lines.append(f"  target: async at 64 B within 5 % of inline on 8 cores (model): "
                     f"{r['model_8'] / inline8[64]:.3f}x")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m wsstls.measure.cryptocost [--sweep] [--json FILE]``: the table alone."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m wsstls.measure.cryptocost",
                                description=(__doc__ or "").split("\n\n")[0])  # fmt: skip
    p.add_argument("--sweep", action="store_true", help="sizes 64 B to 1 MiB (7 sizes)")
    p.add_argument("--repeat", type=int, default=3, choices=range(1, 11), metavar="1..10")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    a = p.parse_args(argv)
    doc = run(SWEEP if a.sweep else SIZES, repeat=a.repeat)
    print(render(doc))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
