"""``python -m runners.bench --probe``: the probe's CPU figures next to direct measurements.

The probe (``runners.probe``) measures CPU memory bandwidth and expert GEMV / GEMM rates with its
own repeat-until-stable loop, threads and shapes. This runs those measurements (the full,
non-``--quick`` settings; float32 and BLAS's own thread count only), then times the same
operations directly, in the same run, with nothing of the probe's code: one ``numpy.copyto`` and
one ``max`` over 1 GiB (one thread: numpy's element-wise operations are single-threaded, the
probe's use a thread per core), and the expert-shaped matmuls ``(1 x h1) @ (h1 x h2)`` and
``(T x h1) @ (h1 x h2)`` on one matrix (BLAS), each the median of five calls after one warm-up.
It prints both and their ratio (probe / direct). Speed is reported, never asserted: the machine
is shared.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import numpy as np

from model.hf_config import from_hf_config
from runners import probe as P

GIB = float(2**30)


def direct_seconds(fn, repeats: int = 5) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def direct_figures(h1: int, h2: int, tokens: int, nbytes: int = 1 << 30) -> dict[str, float]:
    """Copy and read bandwidth (GiB/s) and GEMV / GEMM rates (TFLOP/s), timed directly."""
    a = np.full(nbytes // 8, 1.0)
    b = np.full_like(a, 2.0)
    copy = 2 * a.nbytes / direct_seconds(lambda: np.copyto(b, a)) / GIB      # bytes read + written
    read = a.nbytes / direct_seconds(lambda: a.max()) / GIB
    del a, b
    W = np.full((h1, h2), 0.5, dtype=np.float32)
    x1 = np.ones((1, h1), dtype=np.float32)
    xT = np.ones((tokens, h1), dtype=np.float32)
    gemv = 2.0 * h1 * h2 / direct_seconds(lambda: x1 @ W) / 1e12
    gemm = 2.0 * tokens * h1 * h2 / direct_seconds(lambda: xT @ W) / 1e12
    return {"read": read, "copy": copy, "gemv": gemv, "gemm": gemm}


def probe_table(model_path=None) -> int:
    """Print the probe's CPU bandwidth and GEMM figures, the direct ones and their ratios."""
    sh = P.model_shapes(from_hf_config(model_path or P.DEFAULT_MODEL))
    s = dataclasses.replace(P.FULL, gemv_16bit=False)
    host = P.host_info()
    threads = max(1, host["usable_cores"])
    blas_threads = host["blas_threads"] or 1      # the direct matmuls run with BLAS's own thread count
    ms = {m.label: m for m in P.cpu_stream(s, threads)
          + P.cpu_expert_matmuls(sh, s, ("float32",), (blas_threads,))}
    d = direct_figures(sh.hidden, sh.intermediate, P.GEMM_TOKENS)
    nth = f"{blas_threads} BLAS thread{'s' * (blas_threads > 1)}"
    gemm = ms[f"CPU expert small GEMM, float32, {nth}"]
    rows = [
        ("CPU streaming read", "GiB/s", ms["CPU memory, streaming read"].value, d["read"],
         "numpy max over 1 GiB float64"),
        ("CPU copy (read + write)", "GiB/s", ms["CPU memory, copy"].value, d["copy"],
         "one numpy.copyto of 1 GiB float64"),
        (f"expert GEMV (1 x {sh.hidden} x {sh.intermediate})", "TFLOP/s",
         ms[f"CPU expert GEMV, float32, {nth}"].value, d["gemv"], "x @ W float32"),
        (f"expert GEMM ({P.GEMM_TOKENS} x {sh.hidden} x {sh.intermediate}, total rate)", "TFLOP/s",
         gemm.extra["total_rate_tflops"], d["gemm"], "x @ W float32"),
    ]
    print(f"host: {host['cpu_model']}, {threads} usable cores, BLAS {host['blas']} with {host['blas_threads']} "
          f"threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    print(f"{'figure':<52} {'unit':<8} {'probe':>10} {'direct':>10} {'probe/direct':>12}  direct measurement")
    for label, unit, pv, dv, how in rows:
        print(f"{label:<52} {unit:<8} {P.fmt(pv):>10} {P.fmt(dv):>10} {pv / dv:11.2f}x  {how}")
    print(f"(the probe's tflops.cpu_gemm is the marginal rate {P.fmt(gemm.value)} TFLOP/s: "
          f"({P.GEMM_TOKENS}-1) tokens' FLOPs over time({P.GEMM_TOKENS}) - time(1))")
    return 0
