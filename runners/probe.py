"""python -m runners.probe: measure this machine's constants and write them as a hardware preset.

    python -m runners.probe [--out FILE.yaml] [--base-preset NAME|FILE.yaml] [--model CONFIG.json]
                            [--quick] [--skip gpu,disk,cpu] [--disk-path DIR] [--json]

It times the operations the cost model's hardware constants stand for, at the shapes of the
model in ``--model`` (default: Mixtral-8x7B, ``scenarios/models/mixtral-8x7b.json``), and
writes a preset usable as ``hardware: {preset: FILE.yaml}``. Every number in the file carries a
comment: how it was measured, the sizes, the repeats and their spread, or, for what was not
measured (the GPU on a machine without one, a section in ``--skip``), the base preset it was
copied from. The header names the date, the host's CPU model, core count and memory, the BLAS
library and its thread count, and the GPU.

Each measurement runs once to warm up, then repeats until the spread of its repeats (their
interquartile range over their median) is below a bound (10% with ``--quick``, 5% without) or
its time budget is spent (0.8 s with ``--quick``, 8 s without); the value is the median of the
repeats. A progress line per measurement goes to stderr.

What is measured, and the preset key it becomes:

=====================================  ===========================================================
measurement                            preset key
=====================================  ===========================================================
CPU streaming read (float32 max over   ``memory_bandwidth_gib_per_s.cpu`` (exact accounting: decode
a buffer far larger than the caches,   attention over a CPU-resident KV cache is
split over the usable cores)           ``KV bytes / this``)
CPU copy (``numpy.copyto``, counted    none: stated in the file, and compared with an independent
as bytes read + written)               copy by ``runners.bench --probe``
expert GEMV: one token through         ``tflops.cpu_gemv`` (a CPU expert's first routed token per
``h1 x h2`` matrices cycled through a  step, ``model/experts.py`` ``cpu_expert_seconds``); the
pool beyond the caches (float32; and   fastest dtype and thread count is used and named
numpy's float16 without ``--quick``),
with BLAS's thread count and with one
expert small GEMM: ``T`` = 32 tokens   ``tflops.cpu_gemm`` = the marginal rate
through the same pool, float32, both   ``(T - 1) * F / (time(T) - time(1))``: the cost model
thread counts                          charges ``F / cpu_gemv`` for the first token and
                                       ``F / cpu_gemm`` for each further one
batched decode attention over a KV     ``tflops.cpu`` = the fitted rate at ``g >= 64``,
pool of 64 sequences (context          ``h1 >= 4096`` (``4 * ctx * nh * hd`` FLOPs per sequence,
``prompt + gen/2`` = 528 tokens, the   as both accountings count them); ``cpu_efficiency.c2``
model's GQA/MLA shapes, float32), in   from the rates at smaller ``g`` (``--quick``; ``c1``, ``c3``
micro-batches of ``g`` sequences       come from the base preset), and ``c1, c2, c3`` together
                                       from heads scaled to ``h1/2``, ``h1/4`` without ``--quick``:
                                       least squares of ``rate = r0 * (1 + c1*A*B - c2*A - c3*B)``,
                                       ``A = log2(64/g)+``, ``B = log2(4096/h1)+`` (the clamp at 0.1
                                       is not fitted)
disk sequential write (``O_DIRECT``    ``bandwidth_gib_per_s.cpu_to_disk_cache_prefill``,
where the file system allows it, else  ``cpu_to_disk_hidden_prefill``, ``cpu_to_disk_decode``
``fsync`` + ``posix_fadvise            (one rate for all three)
DONTNEED``), time includes ``fsync``
disk sequential read (same file)       ``bandwidth_gib_per_s.disk_to_cpu``
GPU (torch + CUDA) pinned host to      ``bandwidth_gib_per_s.cpu_to_gpu``
device, one layer's fp16 weights
GPU pinned device to host: a KV-cache  ``bandwidth_gib_per_s.gpu_to_cpu_cache``,
block / a hidden-state block of 32     ``gpu_to_cpu_hidden``
sequences x the prompt
GPU fp16 GEMM ``(tokens x h1) @ (h1 x  ``tflops.gpu_matmul_prefill`` (tokens = 8 x prompt),
h2)``                                  ``gpu_matmul_decode`` (tokens = 32)
GPU fp16 batched attention matmuls     ``tflops.gpu_bmm_prefill`` (``QK^T`` over the prompt),
                                       ``gpu_bmm_decode`` (one query over the context)
GPU device-to-device copy              ``memory_bandwidth_gib_per_s.gpu`` (bytes read + written)
GPU memory: total, and what one        ``memory_gib.gpu``, ``alpha.gpu`` = allocatable / total
process can allocate (256 MiB chunks)
=====================================  ===========================================================

What cannot be measured comes from ``--base-preset`` (a shipped name or a preset file) and is
marked so; without a GPU (or with ``--skip gpu``) and without ``--base-preset`` the probe exits 2
before measuring anything. The host's memory and disk capacities are stated in the header but
not written (a scenario's ``memory_gib.cpu`` / ``disk`` are its own to give).

The disk file is created in ``--disk-path`` (default: the current directory; use the disk
FlexLLMGen offloads to) and always removed, also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import mmap
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from model.architecture import Architecture, expert_params, kv_cache_elements_per_token_per_layer, layer_dense_params
from model.errors import InputError, SolverError
from model.hf_config import from_hf_config
from model.scenario import CpuEfficiency, Hardware, _with_preset, build
from runners.cli import OneLineParser, add_debug_flag, main_guard, say

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "scenarios" / "models" / "mixtral-8x7b.json"
GIB = float(2**30)
MIB = 2**20
TERA = 1e12
SECTIONS = ("cpu", "disk", "gpu")
PROMPT_LEN, GEN_LEN = 512, 32            # the shipped scenarios' workload: decode context = 512 + 32/2
ATTN_POOL = 64                           # sequences in the CPU attention's KV pool (eff(g) = 1 from g = 64)
GEMM_TOKENS = 32                         # tokens of the "small GEMM" through one expert matrix


class ProbeFailed(SolverError):
    """A measurement could not be made (exit 1, one line)."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    quick: bool
    spread_bound: float          # stop repeating when the relative spread of the repeats is below this
    budget_s: float              # ... or when this much time is spent on one measurement
    stream_bytes: int            # CPU streaming buffers
    disk_bytes: int              # the disk file
    attn_groups: tuple[int, ...]  # micro-batch sizes g of the CPU attention
    attn_head_scales: tuple[int, ...]   # heads divided by these (1: the model's) for the c1/c3 fit
    gemv_16bit: bool             # also time numpy's float16 GEMV (slow: numpy's float16 matmul is not BLAS)


QUICK = Settings(True, 0.10, 0.8, 256 * MIB, 256 * MIB, (64, 4), (1,), False)
FULL = Settings(False, 0.05, 8.0, 1024 * MIB, 2048 * MIB, (64, 16, 4, 1), (1, 2, 4), True)


# --------------------------------------------------------------------------- one measurement


@dataclass
class Measured:
    """One measurement: its value in ``unit``, how it was made, and the preset keys it sets."""

    label: str
    value: float
    unit: str
    how: str
    repeats: int
    spread: float | None          # interquartile range / median of the repeats (see relative_spread)
    seconds: float                # wall time spent, warm-up included
    keys: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def note(self) -> str:
        sp = "n/a" if self.spread is None else f"{100 * self.spread:.1f}%"
        return f"{self.repeats} repeats, spread {sp}"


def timed(fn: Callable[[], Any], s: Settings, sync: Callable[[], Any] | None = None,
          clock: Callable[[], float] = time.perf_counter) -> tuple[float, int, float | None, float]:
    """Seconds of one call of ``fn`` (the median of the repeats), repeats, spread, wall time.

    One warm-up call first; then repeats until the interquartile range of the repeats is within
    ``s.spread_bound`` of their median (at least five repeats) or ``s.budget_s`` is spent (at least
    one repeat). The spread is that relative interquartile range ((slowest - fastest) / median
    below four repeats). The median, not the fastest: on a shared machine a lucky repeat is as
    unrepresentative as an unlucky one.
    """
    start = time.perf_counter()
    fn()
    if sync:
        sync()
    times: list[float] = []
    while True:
        t0 = clock()
        fn()
        if sync:
            sync()
        times.append(clock() - t0)
        spread = relative_spread(times)
        if len(times) >= 5 and spread is not None and spread <= s.spread_bound:
            break
        if time.perf_counter() - start >= s.budget_s or len(times) >= 200:
            break
    return statistics.median(times), len(times), spread, time.perf_counter() - start


def relative_spread(times: list[float]) -> float | None:
    """Interquartile range / median (range / median below four values; None for one)."""
    if len(times) < 2:
        return None
    med = statistics.median(times)
    if len(times) < 4:
        return (max(times) - min(times)) / med
    q1, _, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / med


def progress(m: Measured) -> None:
    keys = f" -> {', '.join(m.keys)}" if m.keys else ""
    say(f"probe: {m.label}: {fmt(m.value)} {m.unit} ({m.note()}, {m.seconds:.1f} s){keys}")


def fmt(v: float) -> str:
    """Four significant digits in fixed-point notation (YAML 1.1 reads ``1e-05`` as a string)."""
    if v == 0 or not math.isfinite(v):
        return "0.0" if v == 0 else str(v)
    decimals = max(1, 3 - math.floor(math.log10(abs(v))))
    return f"{v:.{decimals}f}"


# --------------------------------------------------------------------------- host facts


def host_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        mem = float("nan")
    blas = blas_info()
    return {"cpu_model": cpu, "cores": os.cpu_count() or 1, "usable_cores": usable, "memory_gib": round(mem, 2),
            "python": platform.python_version(), "numpy": np.__version__, **blas}


def blas_info() -> dict[str, Any]:
    """The BLAS numpy calls and its thread count (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            if lib.get("user_api") == "blas":
                return {"blas": f"{lib.get('internal_api')} {lib.get('version') or ''}".strip(),
                        "blas_threads": int(lib.get("num_threads") or 1)}
    except Exception:  # noqa: BLE001 - informational only
        pass
    return {"blas": "unknown", "blas_threads": None}


# --------------------------------------------------------------------------- model shapes


@dataclass(frozen=True)
class Shapes:
    name: str
    hidden: int                  # h1
    intermediate: int            # h2 of one routed expert (or the dense MLP)
    heads: int                   # query heads
    kv_heads: int                # K/V heads read per query group (MLA: 1 latent)
    dk: int                      # key width per head (MLA: latent + rope)
    dv: int                      # value width per head (MLA: latent)
    separate_v: bool             # False for MLA: the values are the latent itself
    layer_weight_bytes: int      # one layer's fp16 weights (the largest layer group)
    kv_bytes_per_token: int      # fp16, one layer


def model_shapes(arch: Architecture) -> Shapes:
    a = arch.attention
    moe = arch.moe_group or arch.groups[0]
    if a.kind == "mla":
        kv_heads, dk, dv, sep = 1, a.kv_lora_rank + a.qk_rope_head_dim, a.kv_lora_rank, False
    else:
        kv_heads, dk, dv, sep = a.num_kv_heads, a.head_dim, a.head_dim, True
    layer = max((layer_dense_params(arch, g) + (g.mlp.num_experts * expert_params(arch, g.mlp)
                                                if g.mlp.kind == "moe" else 0)) * 2 for g in arch.groups)
    return Shapes(arch.name, arch.hidden_size, moe.mlp.intermediate_size, a.num_heads, kv_heads, dk, dv, sep,
                  layer, 2 * kv_cache_elements_per_token_per_layer(arch))


# --------------------------------------------------------------------------- CPU


def _split(n: int, parts: int) -> list[slice]:
    edges = [n * i // parts for i in range(parts + 1)]
    return [slice(edges[i], edges[i + 1]) for i in range(parts)]


def cpu_stream(s: Settings, threads: int) -> list[Measured]:
    """Streaming read (float32 max) and copy over buffers of ``s.stream_bytes``, one slice per thread."""
    n = s.stream_bytes // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.empty(n, dtype=np.float32)
    dst.fill(0.0)                      # touch every page before timing
    parts = _split(n, threads)
    out = []
    with ThreadPoolExecutor(threads) as pool:
        def read():
            list(pool.map(lambda sl: np.maximum.reduce(src[sl]), parts))

        def copy():
            list(pool.map(lambda sl: np.copyto(dst[sl], src[sl]), parts))

        size = f"{s.stream_bytes // MIB} MiB float32"
        t, k, sp, w = timed(read, s)
        out.append(Measured("CPU memory, streaming read", s.stream_bytes / t / GIB, "GiB/s",
                            f"float32 max over a {size} buffer, {threads} threads", k, sp, w,
                            ("memory_bandwidth_gib_per_s.cpu",)))
        progress(out[-1])
        t, k, sp, w = timed(copy, s)
        out.append(Measured("CPU memory, copy", 2 * s.stream_bytes / t / GIB, "GiB/s",
                            f"numpy.copyto of a {size} buffer into another, {threads} threads, "
                            "counted as bytes read + written", k, sp, w))
        progress(out[-1])
    del src, dst
    return out


def cpu_expert_matmuls(sh: Shapes, s: Settings, dtypes: tuple[str, ...] = ("float32", "float16"),
                       thread_counts: tuple[int, ...] | None = None) -> list[Measured]:
    """GEMV (1 token) and small GEMM (``GEMM_TOKENS``) through ``h1 x h2`` expert matrices.

    The cost model's GEMV streams an expert's weights from DRAM, so the matrices are cycled
    through a pool of at least ``s.stream_bytes`` (one Mixtral matrix is 224 MiB in float32; a
    small expert's would otherwise be read from the caches). Each is timed with BLAS's own thread
    count and with one thread (on a busy host BLAS's threads can wait for cores: a small GEMV was
    20x slower with two threads than with one here); the fastest dtype and thread count of each
    becomes its preset key."""
    from threadpoolctl import threadpool_limits

    h1, h2, T = sh.hidden, sh.intermediate, GEMM_TOKENS
    F1 = 2.0 * h1 * h2                     # FLOPs per token through one matrix
    rng = np.random.default_rng(0)
    if thread_counts is None:
        thread_counts = tuple(sorted({blas_info()["blas_threads"] or 1, 1}, reverse=True))
    gemvs: list[Measured] = []
    gemms: list[Measured] = []
    out: list[Measured] = []
    for dname in dtypes:
        if dname != "float32" and not s.gemv_16bit:
            continue
        dt = np.dtype(dname).type
        W0 = rng.random((h1, h2), dtype=np.float32).astype(dt, copy=False)
        n = max(1, math.ceil(s.stream_bytes / W0.nbytes))
        pool = [W0] + [W0.copy() for _ in range(n - 1)]
        x1 = np.ones((1, h1), dtype=dt)
        xT = np.ones((T, h1), dtype=dt)
        for threads in thread_counts:
            with threadpool_limits(limits=threads, user_api="blas"):
                nth = f"{threads} BLAS thread{'s' * (threads > 1)}"
                shape = (f"({h1} x {h2}) {dname}, numpy, {nth}, cycling through {n} matrices "
                         f"({n * W0.nbytes / MIB:.0f} MiB)")
                t1, k1, sp1, w1 = timed(lambda: [x1 @ W for W in pool], s)
                gemv = Measured(f"CPU expert GEMV, {dname}, {nth}", n * F1 / t1 / TERA, "TFLOP/s",
                                f"(1 x {h1}) @ {shape}", k1, sp1, w1,
                                extra={"matrices": n, "seconds_1": t1, "threads": threads, "dtype": dname})
                out.append(gemv)
                gemvs.append(gemv)
                progress(gemv)
                if dname == "float16":   # numpy's float16 matmul is a plain loop: ~20 s per 32-token GEMM here
                    continue
                tT, kT, spT, wT = timed(lambda: [xT @ W for W in pool], s)
                marginal = (T - 1) * n * F1 / (tT - t1) if tT > t1 else float("inf")
                gemm = Measured(f"CPU expert small GEMM, {dname}, {nth}", marginal / TERA, "TFLOP/s",
                                f"marginal rate (T-1) x F / (time(T) - time(1)) with T = {T} tokens: "
                                f"({T} x {h1}) @ {shape}", kT, spT, wT,
                                extra={"tokens": T, "matrices": n, "total_rate_tflops": T * n * F1 / tT / TERA,
                                       "seconds_T": tT, "seconds_1": t1, "threads": threads, "dtype": dname})
                out.append(gemm)
                gemms.append(gemm)
                progress(gemm)
        del W0, pool
    max(gemvs, key=lambda m: m.value).keys = ("tflops.cpu_gemv",)
    finite = [m for m in gemms if math.isfinite(m.value)]
    if not finite:
        raise ProbeFailed(f"CPU small GEMM: {GEMM_TOKENS} tokens took no longer than one; "
                          "the machine is too noisy to measure it, run again")
    max(finite, key=lambda m: m.value).keys = ("tflops.cpu_gemm",)
    return out


def _attention_pass(q, k, v, g: int, scale: float):
    """Decode attention of every sequence in the pool, ``g`` sequences at a time."""
    for i in range(0, q.shape[0], g):
        sc = np.matmul(q[i:i + g], np.swapaxes(k[i:i + g], -1, -2))     # (g, kvh, grp, ctx)
        sc *= scale
        sc -= sc.max(axis=-1, keepdims=True)
        np.exp(sc, out=sc)
        sc /= sc.sum(axis=-1, keepdims=True)
        np.matmul(sc, v[i:i + g])


def cpu_attention(sh: Shapes, s: Settings, base_eff: dict[str, float]) -> tuple[list[Measured], dict[str, float]]:
    """Batched decode attention rates; returns the measurements and the fitted tflops.cpu, c1, c2, c3."""
    ctx = PROMPT_LEN + GEN_LEN // 2
    rng = np.random.default_rng(1)
    out: list[Measured] = []
    rows = []          # (A, B, rate FLOP/s)
    for scale in s.attn_head_scales:
        heads = max(1, sh.heads // scale)
        kvh = max(1, sh.kv_heads // scale) if sh.kv_heads > 1 else 1
        grp = max(1, heads // kvh)
        heads = kvh * grp
        h1 = sh.hidden * heads / sh.heads
        q = rng.random((ATTN_POOL, kvh, grp, sh.dk), dtype=np.float32)
        k = rng.random((ATTN_POOL, kvh, ctx, sh.dk), dtype=np.float32)
        if sh.separate_v:
            v = rng.random((ATTN_POOL, kvh, ctx, sh.dv), dtype=np.float32)
        else:
            v = k[..., : sh.dv]           # MLA: the values are the latent part of the cached vector
        flops = ATTN_POOL * ctx * (2 * heads * sh.dk + 2 * heads * sh.dv)
        kv_mib = (k.nbytes + (v.nbytes if sh.separate_v else 0)) / MIB
        for g in s.attn_groups:
            t, n, sp, w = timed(lambda: _attention_pass(q, k, v, g, 1.0 / math.sqrt(sh.dk)), s)
            A = max(0.0, math.log2(64 / g))
            B = max(0.0, math.log2(4096 / h1))
            m = Measured(f"CPU decode attention, g={g}, {heads} heads", flops / t / TERA, "TFLOP/s",
                         f"{ATTN_POOL} sequences x context {ctx}, {kvh} KV heads x {grp} queries, "
                         f"dk {sh.dk}, dv {sh.dv}, float32 ({kv_mib:.0f} MiB of K/V), micro-batches of {g}",
                         n, sp, w, extra={"g": g, "heads": heads, "h1": h1, "A": A, "B": B})
            out.append(m)
            progress(m)
            rows.append((A, B, flops / t))
        del q, k, v
    fit = fit_efficiency(rows, base_eff)
    for m in out:
        m.extra["fit_rate_tflops"] = fit["cpu"] * efficiency_factor(m.extra["A"], m.extra["B"], fit) / TERA
    return out, fit


def efficiency_factor(A: float, B: float, c: dict[str, float]) -> float:
    """The reference's rate factor ``1 + c1*A*B - c2*A - c3*B`` (clamped at 0.1 as it is)."""
    return max(0.1, 1 + c["c1"] * A * B - c["c2"] * A - c["c3"] * B)


def fit_efficiency(rows: list[tuple[float, float, float]], base: dict[str, float]) -> dict[str, Any]:
    """Least squares of ``rate = r0 * (1 + c1*A*B - c2*A - c3*B)``; ``r0`` becomes tflops.cpu.

    Linear in ``(r0, r0*c1, r0*c2, r0*c3)``. When B does not vary (one head count, or every h1 at
    or above 4096), c1 and c3 are not identifiable: they are kept from ``base`` and only r0 and c2
    are fitted. Returns ``{"cpu": r0 in FLOP/s, "c1", "c2", "c3", "fitted": [names]}``.
    """
    A = np.array([r[0] for r in rows])
    B = np.array([r[1] for r in rows])
    y = np.array([r[2] for r in rows])
    X = np.column_stack([np.ones_like(A), A * B, -A, -B])
    if len(set(B.tolist())) >= 2 and len(set(A.tolist())) >= 2 and np.linalg.matrix_rank(X) == 4:
        sol, *_ = np.linalg.lstsq(X, y, rcond=None)
        r0 = sol[0]
        return {"cpu": r0, "c1": sol[1] / r0, "c2": sol[2] / r0, "c3": sol[3] / r0, "fitted": ["c1", "c2", "c3"]}
    c1, c3 = base["c1"], base["c3"]
    X2 = np.column_stack([1 + c1 * A * B - c3 * B, -A])
    if len(set(A.tolist())) < 2:
        r0 = float(np.mean(y / X2[:, 0]))
        return {"cpu": r0, "c1": c1, "c2": base["c2"], "c3": c3, "fitted": []}
    sol, *_ = np.linalg.lstsq(X2, y, rcond=None)
    return {"cpu": sol[0], "c1": c1, "c2": sol[1] / sol[0], "c3": c3, "fitted": ["c2"]}


# --------------------------------------------------------------------------- disk


def _aligned(nbytes: int) -> mmap.mmap:
    """A page-aligned buffer (O_DIRECT needs aligned memory), filled with incompressible bytes."""
    buf = mmap.mmap(-1, nbytes)
    buf.write(np.random.default_rng(2).integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    return buf


def disk_rates(s: Settings, path: Path) -> list[Measured]:
    """Sequential write (with fsync) and read of a file in ``path``; the file is always removed."""
    size = s.disk_bytes
    free = shutil.disk_usage(path).free
    if free < size + 256 * MIB:
        size = (free - 256 * MIB) // 2 // (8 * MIB) * (8 * MIB)
        if size < 64 * MIB:
            raise ProbeFailed(f"--disk-path {path}: only {free / MIB:.0f} MiB free, too little to measure the disk")
        say(f"probe: --disk-path has {free / GIB:.1f} GiB free: the disk file is {size // MIB} MiB")
    chunk = 8 * MIB
    fd_tmp, name = tempfile.mkstemp(prefix=".runners-probe-", suffix=".tmp", dir=path)
    os.close(fd_tmp)
    buf = None
    fd = -1
    try:
        buf = _aligned(chunk)
        view = memoryview(buf)
        direct = hasattr(os, "O_DIRECT")
        if direct:
            try:
                fd = os.open(name, os.O_RDWR | os.O_DIRECT)
                os.pwrite(fd, view, 0)            # O_DIRECT may be refused only at the first I/O
            except OSError:
                if fd >= 0:
                    os.close(fd)
                fd, direct = -1, False
        if fd < 0:
            fd = os.open(name, os.O_RDWR)
        method = "O_DIRECT" if direct else "buffered, fsync + posix_fadvise(DONTNEED) to drop the page cache"

        def drop():
            if not direct and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

        def write():
            for off in range(0, size, chunk):
                os.pwrite(fd, view, off)
            os.fsync(fd)
            drop()

        def read():
            drop()
            for off in range(0, size, chunk):
                os.preadv(fd, [view], off)

        how = f"a {size // MIB} MiB file in {path}, {chunk // MIB} MiB requests, {method}"
        t, k, sp, w = timed(write, s)
        wr = Measured("disk sequential write", size / t / GIB, "GiB/s", how + ", time includes fsync", k, sp, w,
                      ("bandwidth_gib_per_s.cpu_to_disk_cache_prefill",
                       "bandwidth_gib_per_s.cpu_to_disk_hidden_prefill", "bandwidth_gib_per_s.cpu_to_disk_decode"),
                      {"direct_io": direct, "file_bytes": size})
        progress(wr)
        t, k, sp, w = timed(read, s)
        rd = Measured("disk sequential read", size / t / GIB, "GiB/s", how, k, sp, w,
                      ("bandwidth_gib_per_s.disk_to_cpu",), {"direct_io": direct, "file_bytes": size})
        progress(rd)
        view.release()
        return [wr, rd]
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        if buf is not None:
            with contextlib.suppress(BufferError):
                buf.close()


# --------------------------------------------------------------------------- GPU


def cuda_device():
    """``torch`` when it is installed and sees a CUDA GPU, else a one-line reason (str)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install -e '.[probe]')"
    try:
        if not torch.cuda.is_available():
            return "torch sees no CUDA GPU"
    except Exception as exc:  # noqa: BLE001 - a broken driver is "no GPU" here
        return f"CUDA is not usable ({type(exc).__name__})"
    return torch


def pcie_link(which: str = "current") -> str | None:
    """The first NVIDIA GPU's PCIe link from sysfs, e.g. ``PCIe 4.0 x16`` (None when unknown).

    ``which``: ``current`` (negotiated now; an idle GPU may have trained its link down, so read it
    right after a transfer) or ``max`` (the device's maximum: an upper bound on the link).
    """
    gens = {"2.5": "1.0", "5.0": "2.0", "8.0": "3.0", "16.0": "4.0", "32.0": "5.0", "64.0": "6.0"}
    with contextlib.suppress(OSError):
        for dev in sorted(Path("/sys/bus/pci/devices").iterdir()):
            try:
                if (dev / "vendor").read_text().strip() != "0x10de" or \
                        not (dev / "class").read_text().strip().startswith("0x03"):
                    continue
                speed = (dev / f"{which}_link_speed").read_text().split()[0]
                width = (dev / f"{which}_link_width").read_text().strip()
            except OSError:
                continue
            return f"PCIe {gens.get(speed, speed + ' GT/s')} x{width}"
    return None


def gpu_rates(torch, sh: Shapes, s: Settings) -> tuple[list[Measured], dict[str, Any]]:
    """The GPU section (needs torch with CUDA). Each repeat is timed between two
    ``torch.cuda.synchronize()`` calls."""
    dev = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(dev)
    info = {"gpu_name": props.name, "gpu_total_gib": props.total_memory / GIB, "host_link": None}
    sync = torch.cuda.synchronize
    out: list[Measured] = []

    def cuda_clock():
        sync()
        return time.perf_counter()

    def measure(label, fn, work, unit, how, keys=(), extra=None):
        t, k, sp, w = timed(fn, s, sync=sync, clock=cuda_clock)
        m = Measured(label, work / t, unit, how, k, sp, w, tuple(keys), extra or {})
        out.append(m)
        progress(m)
        return m

    cap = 512 * MIB if s.quick else 4 * 1024 * MIB
    layer = min(sh.layer_weight_bytes, cap)
    kv_block = sh.kv_bytes_per_token * PROMPT_LEN * 32
    hidden_block = 2 * sh.hidden * PROMPT_LEN * 32
    for label, nbytes, key, h2d in (("GPU host-to-device, one layer's weights", layer,
                                     "bandwidth_gib_per_s.cpu_to_gpu", True),
                                    ("GPU device-to-host, KV-cache block", kv_block,
                                     "bandwidth_gib_per_s.gpu_to_cpu_cache", False),
                                    ("GPU device-to-host, hidden-state block", hidden_block,
                                     "bandwidth_gib_per_s.gpu_to_cpu_hidden", False)):
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        devbuf = torch.empty(nbytes, dtype=torch.uint8, device=dev)
        fn = (lambda d=devbuf, h=host: d.copy_(h, non_blocking=True)) if h2d else \
            (lambda d=devbuf, h=host: h.copy_(d, non_blocking=True))
        size = f"{nbytes / MIB:.0f} MiB" + (" (capped)" if h2d and layer < sh.layer_weight_bytes else "")
        measure(label, fn, nbytes / GIB, "GiB/s", f"pinned memory, {size}, one copy_", (key,),
                {"bytes": nbytes})
        if h2d:
            info["host_link"] = pcie_link("current")     # read while the link is trained up
        del host, devbuf
    n = (256 * MIB if s.quick else 1024 * MIB) // 2
    a = torch.empty(n, dtype=torch.float16, device=dev)
    b = torch.empty_like(a)
    measure("GPU memory, device-to-device copy", lambda: b.copy_(a), 2 * 2 * n / GIB, "GiB/s",
            f"{2 * n / MIB:.0f} MiB fp16, counted as bytes read + written", ("memory_bandwidth_gib_per_s.gpu",))
    del a, b
    h1, h2 = sh.hidden, sh.intermediate
    W = torch.randn(h1, h2, dtype=torch.float16, device=dev)
    for label, tokens, key in (("GPU fp16 GEMM, prefill shape", 8 * PROMPT_LEN, "tflops.gpu_matmul_prefill"),
                               ("GPU fp16 GEMM, decode shape", 32, "tflops.gpu_matmul_decode")):
        x = torch.randn(tokens, h1, dtype=torch.float16, device=dev)
        measure(label, lambda x=x: x @ W, 2.0 * tokens * h1 * h2 / TERA, "TFLOP/s",
                f"({tokens} x {h1}) @ ({h1} x {h2}) fp16", (key,))
        del x
    del W
    heads, hd = sh.heads, sh.dk
    g = 8
    q = torch.randn(g * heads, PROMPT_LEN, hd, dtype=torch.float16, device=dev)
    kt = torch.randn(g * heads, hd, PROMPT_LEN, dtype=torch.float16, device=dev)
    measure("GPU fp16 bmm, prefill attention scores", lambda: torch.bmm(q, kt),
            2.0 * g * heads * PROMPT_LEN * PROMPT_LEN * hd / TERA, "TFLOP/s",
            f"bmm ({g * heads} x {PROMPT_LEN} x {hd}) @ ({hd} x {PROMPT_LEN}): {g} sequences x {heads} heads",
            ("tflops.gpu_bmm_prefill",))
    del q, kt
    ctx, g = PROMPT_LEN + GEN_LEN // 2, 32
    q = torch.randn(g * heads, 1, hd, dtype=torch.float16, device=dev)
    kt = torch.randn(g * heads, hd, ctx, dtype=torch.float16, device=dev)
    measure("GPU fp16 bmm, decode attention scores", lambda: torch.bmm(q, kt),
            2.0 * g * heads * ctx * hd / TERA, "TFLOP/s",
            f"bmm ({g * heads} x 1 x {hd}) @ ({hd} x {ctx}): {g} sequences x {heads} heads, one query each",
            ("tflops.gpu_bmm_decode",))
    del q, kt
    # memory: the total, and what this process can really allocate
    torch.cuda.empty_cache()
    chunks, chunk = [], 256 * MIB
    t0 = time.perf_counter()
    try:
        while len(chunks) * chunk < props.total_memory:     # unified memory would not stop by itself
            chunks.append(torch.empty(chunk, dtype=torch.uint8, device=dev))
    except torch.cuda.OutOfMemoryError:
        pass
    got = len(chunks) * chunk
    del chunks
    torch.cuda.empty_cache()
    total = props.total_memory
    m = Measured("GPU memory a process can allocate", got / GIB, "GiB",
                 f"{chunk // MIB} MiB chunks until out of memory; total {total / GIB:.2f} GiB", 1, None,
                 time.perf_counter() - t0, ("memory_gib.gpu", "alpha.gpu"),
                 {"total_gib": total / GIB, "alpha": got / total})
    out.append(m)
    progress(m)
    return out, info


# --------------------------------------------------------------------------- the preset


LAYOUT = [  # (section, keys): the shipped presets' order
    ("memory_gib", ("gpu",)),
    ("alpha", ("gpu",)),
    ("memory_bandwidth_gib_per_s", ("gpu", "cpu")),
    ("bandwidth_gib_per_s", ("cpu_to_gpu", "gpu_to_cpu_cache", "gpu_to_cpu_hidden", "disk_to_cpu",
                             "cpu_to_disk_cache_prefill", "cpu_to_disk_hidden_prefill", "cpu_to_disk_decode")),
    ("tflops", ("gpu_matmul_prefill", "gpu_matmul_decode", "gpu_bmm_prefill", "gpu_bmm_decode", "cpu",
                "cpu_gemv", "cpu_gemm")),
    ("cpu_efficiency", ("c1", "c2", "c3")),
]
UNITS = {"memory_gib": "GiB", "alpha": "fraction", "memory_bandwidth_gib_per_s": "GiB/s",
         "bandwidth_gib_per_s": "GiB/s", "tflops": "TFLOP/s", "cpu_efficiency": "coefficient"}


def measured_values(ms: list[Measured], fit: dict[str, Any] | None) -> dict[str, tuple[float, str]]:
    """Preset key -> (value in the key's unit, comment)."""
    vals: dict[str, tuple[float, str]] = {}
    for m in ms:
        for key in m.keys:
            if key == "alpha.gpu":
                vals[key] = (m.extra["alpha"], f"MEASURED: allocatable {m.value:.2f} GiB / total "
                                               f"{m.extra['total_gib']:.2f} GiB ({m.how})")
            elif key == "memory_gib.gpu":
                vals[key] = (m.extra["total_gib"], "MEASURED: the device's total memory (torch)")
            else:
                vals[key] = (m.value, f"MEASURED: {m.label}: {m.how}; {m.note()}")
    if fit is not None:
        att = list(fit["measurements"])

        def heads(m):
            return "" if m.extra["heads"] == att[0].extra["heads"] else f" {m.extra['heads']} heads"
        g_rates = ", ".join(f"g={m.extra['g']}{heads(m)} {m.value * 1000:.2f}" for m in att)
        how = (f"batched decode attention, {att[0].how.split(', micro-batches')[0]}; GFLOP/s measured: {g_rates}; "
               f"spread of each <= {max((m.spread or 0) for m in att) * 100:.1f}%")
        vals["tflops.cpu"] = (fit["cpu"] / TERA, f"MEASURED: least-squares rate at g >= 64, h1 >= 4096 of {how}")
        for c in ("c1", "c2", "c3"):
            if c in fit["fitted"]:
                vals[f"cpu_efficiency.{c}"] = (fit[c], "MEASURED: fitted with tflops.cpu to the attention rates "
                                                       "(rate = r0 * (1 + c1*A*B - c2*A - c3*B))")
    return vals


def compose(values: dict[str, tuple[float, str]], base: dict | None, base_name: str | None) -> dict[str, Any]:
    """Key -> (value, comment, measured?) for every key the preset writes, measured over base."""
    out: dict[str, tuple[Any, str, bool]] = {}
    for section, keys in LAYOUT:
        for k in keys:
            dotted = f"{section}.{k}"
            if dotted in values:
                v, c = values[dotted]
                out[dotted] = (v, c, True)
            elif base is not None and isinstance(base.get(section), dict) and k in base[section]:
                out[dotted] = (base[section][k], f"from base preset {base_name}: not measured", False)
            elif section == "cpu_efficiency":
                default = getattr(CpuEfficiency(), k)
                out[dotted] = (default, "the reference's fitted value (the scenario default): not measured", False)
    return out


def preset_text(entries: dict[str, tuple[Any, str, bool]], header: list[str], top: dict[str, str]) -> str:
    lines = [f"# {h}" if h else "#" for h in header]
    for k, v in top.items():
        lines.append(f"{k}: {json.dumps(v)}")
    for section, keys in LAYOUT:
        present = [k for k in keys if f"{section}.{k}" in entries]
        if not present:
            continue
        lines.append(f"{section}:   # {UNITS[section]}")
        for k in present:
            v, comment, _ = entries[f"{section}.{k}"]
            text = fmt(float(v))
            lines.append(f"  {k}: {text}   # {' '.join(comment.split())}")
    return "\n".join(lines) + "\n"


def check_preset(text: str) -> None:
    """The written preset validates as a scenario's hardware (capacities supplied for the check)."""
    import yaml
    raw = yaml.safe_load(text)
    raw.setdefault("memory_gib", {}).update({"cpu": 1, "disk": 1})
    try:
        build(Hardware, raw, "hardware")
    except InputError as exc:
        raise ProbeFailed(f"a measured value is outside what a scenario accepts: {exc.field} = {exc.value}: "
                          f"{exc.problem} (a loaded machine can measure absurdly low rates: run again when it is "
                          "quieter, or --skip that section and take it from --base-preset)") from None


# --------------------------------------------------------------------------- command line


def parse_args(argv):
    ap = OneLineParser(prog="python -m runners.probe", description=__doc__.split("\n")[0])
    ap.add_argument("--out", metavar="FILE.yaml", default=None,
                    help="write the preset here (default: print it on stdout); a .yaml or .yml file in an "
                         "existing, writable folder")
    ap.add_argument("--base-preset", metavar="NAME|FILE.yaml", default=None,
                    help="a shipped preset name (e.g. a100_40g_pcie) or a preset file that supplies what is not "
                         "measured (the GPU on a machine without one, sections in --skip)")
    ap.add_argument("--model", metavar="CONFIG.json", default=str(DEFAULT_MODEL),
                    help="Hugging Face config.json whose shapes are measured (default: Mixtral-8x7B, "
                         "scenarios/models/mixtral-8x7b.json)")
    ap.add_argument("--quick", action="store_true",
                    help="smaller buffers, a looser spread bound (10%%), 0.8 s per measurement, float32 only, "
                         "attention at g = 64 and 4 (fits c2 only): well under 30 s")
    ap.add_argument("--skip", default="", metavar="SECTIONS",
                    help="comma-separated sections not to measure: gpu, disk, cpu (taken from --base-preset)")
    ap.add_argument("--disk-path", metavar="DIR", default=".",
                    help="folder on the disk to measure (the one FlexLLMGen offloads to); a temporary file is "
                         "written there and always removed (default: the current folder)")
    ap.add_argument("--json", action="store_true",
                    help="print the measurements and the preset as one JSON object on stdout")
    add_debug_flag(ap)
    return ap.parse_args(argv)


def check_out(out: str | None) -> Path | None:
    if out is None:
        return None
    p = Path(out).expanduser()
    if p.suffix not in (".yaml", ".yml"):
        raise InputError("--out", out, "must end in .yaml or .yml (how a scenario's hardware.preset tells a "
                                       "file from a shipped name)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError("--out", out, "its folder does not exist")
    if p.exists() and (p.is_dir() or not p.is_file()):
        raise InputError("--out", out, "exists and is not a regular file")
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError("--out", out, "not writable")
    writable_folder(parent, "--out", out)
    return p


def writable_folder(folder: Path, flag: str, value: str) -> None:
    """Create and remove a file in ``folder`` (permission bits do not tell root, /proc or a read-only mount)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".runners-probe-check-", dir=folder)
    except OSError as exc:
        raise InputError(flag, value, f"not writable ({exc.strerror or type(exc).__name__})") from None
    os.close(fd)
    os.unlink(name)


def check_disk_path(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError("--disk-path", path, "does not exist")
    if not p.is_dir():
        raise InputError("--disk-path", path, "is not a folder")
    writable_folder(p, "--disk-path", path)
    return p


def load_base(name: str | None) -> dict | None:
    if name is None:
        return None
    try:
        hw = _with_preset({"preset": name}, Path.cwd())
    except InputError as exc:
        raise InputError("--base-preset", name, f"{exc.problem}" + (f" ({exc.field})" if exc.field not in
                                                                   ("hardware.preset",) else "")) from None
    hw.pop("preset", None)
    return hw


def write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def probe(args) -> dict[str, Any]:
    """Measure, compose and return ``{"text": preset YAML, "json": the --json object}``."""
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    unknown = sorted(skip - set(SECTIONS))
    if unknown:
        raise InputError("--skip", args.skip, f"unknown section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
    if skip == set(SECTIONS):
        raise InputError("--skip", args.skip, "skips every section: nothing left to measure")
    out_path = check_out(args.out)
    disk_path = check_disk_path(args.disk_path) if "disk" not in skip else None
    try:
        arch = from_hf_config(args.model)
    except InputError as exc:
        raise InputError("--model", args.model, f"{exc.problem} ({exc.field})") from None
    sh = model_shapes(arch)
    base = load_base(args.base_preset)
    torch_or_reason = cuda_device() if "gpu" not in skip else "skipped (--skip gpu)"
    has_gpu = not isinstance(torch_or_reason, str)
    missing = [sec for sec in SECTIONS if sec in skip or (sec == "gpu" and not has_gpu)]
    if missing and base is None:
        why = torch_or_reason if "gpu" in missing and not has_gpu and "gpu" not in skip else "--skip"
        raise InputError("--base-preset", None, f"required: a base preset must supply the {', '.join(missing)} "
                                                f"numbers ({'no GPU: ' + why if why != '--skip' else 'skipped'}); "
                                                "e.g. --base-preset a100_40g_pcie")
    s = QUICK if args.quick else FULL
    host = host_info()
    threads = max(1, host["usable_cores"])
    say(f"probe: {host['cpu_model']}, {host['usable_cores']} usable cores, {host['memory_gib']} GiB; "
        f"BLAS {host['blas']} with {host['blas_threads']} threads; shapes of {sh.name}"
        + ("; quick" if s.quick else ""))
    if not has_gpu:
        say(f"probe: GPU section skipped: {torch_or_reason}; GPU numbers from base preset {args.base_preset}")
    t_start = time.perf_counter()
    ms: list[Measured] = []
    fit = None
    gpu_info: dict[str, Any] = {}
    base_eff = {k: getattr(CpuEfficiency(), k) for k in ("c1", "c2", "c3")}   # the reference's fit
    if base is not None and isinstance(base.get("cpu_efficiency"), dict):
        base_eff.update({k: v for k, v in base["cpu_efficiency"].items() if k in base_eff})
    if "cpu" not in skip:
        ms += cpu_stream(s, threads)
        ms += cpu_expert_matmuls(sh, s)
        att, fit = cpu_attention(sh, s, base_eff)
        ms += att
        fit["measurements"] = att
        say(f"probe: CPU attention fit: tflops.cpu {fmt(fit['cpu'] / TERA)}, c1 {fit['c1']:.4f}, c2 {fit['c2']:.4f}, "
            f"c3 {fit['c3']:.4f} (fitted: {', '.join(fit['fitted']) or 'none'})")
    if disk_path is not None:
        ms += disk_rates(s, disk_path)
    if has_gpu:
        gms, gpu_info = gpu_rates(torch_or_reason, sh, s)
        ms += gms
    values = measured_values(ms, fit)
    entries = compose(values, base, args.base_preset)
    measured_secs = sorted({sec for sec in SECTIONS if sec not in missing})
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    gpu_name = gpu_info.get("gpu_name") or f"none here ({torch_or_reason}); GPU numbers from {args.base_preset}"
    base_name_txt = (base or {}).get("name")
    name = f"{host['cpu_model']} host, probed {date[:10]}" + (f" + {gpu_info['gpu_name']}" if has_gpu else
                                                             f" + {base_name_txt or args.base_preset} GPU numbers")
    source = (f"measured by runners.probe on {date} ({', '.join(measured_secs)})"
              + (f"; {', '.join(missing)} from base preset {args.base_preset} (not measured)" if missing else ""))
    host_link = gpu_info.get("host_link") or (base or {}).get("host_link")
    header = [
        f"Hardware preset MEASURED by `python -m runners.probe{' --quick' if s.quick else ''}` on {date}.",
        f"Host: {host['cpu_model']}; {host['cores']} cores ({host['usable_cores']} usable by this process); "
        f"{host['memory_gib']} GiB memory.",
        f"GPU: {gpu_name}.",
        f"Software: Python {host['python']}, numpy {host['numpy']}, BLAS {host['blas']} with "
        f"{host['blas_threads']} threads; streaming and attention use {threads} threads.",
        f"Shapes: {sh.name} ({Path(args.model).name}): h1 {sh.hidden}, expert h2 {sh.intermediate}, "
        f"{sh.heads} heads / {sh.kv_heads} KV heads, decode context {PROMPT_LEN} + {GEN_LEN}/2.",
        f"Repeats: each measurement repeats until the interquartile range of its repeats is within "
        f"{100 * s.spread_bound:.0f}% of their median or {s.budget_s:g} s is spent; the value is the median.",
        "Lines marked MEASURED were measured here; the others come from the base preset, as marked.",
        f"Not written: the host's capacities (memory {host['memory_gib']} GiB; disk: the scenario's "
        "memory_gib.cpu / disk) and the alphas, unless measured.",
        "",
        "Use it as  hardware: {preset: <this file>, memory_gib: {gpu: ..., cpu: ..., disk: ...}}",
        "Units: GiB = 2^30 bytes; bandwidths in GiB/s; FLOP rates in TFLOP/s (1e12 FLOP/s).",
    ]
    for m in ms:
        if not m.keys and "A" not in m.extra:    # the attention rates are listed on tflops.cpu's line
            header.append(f"Also measured (no preset key): {m.label} {fmt(m.value)} {m.unit}: {m.how}; {m.note()}")
    top = {"name": name, "source": source}
    if host_link:
        top["host_link"] = host_link + ("" if gpu_info.get("host_link") else " (from the base preset)")
    text = preset_text(entries, header, top)
    check_preset(text)
    say(f"probe: done in {time.perf_counter() - t_start:.1f} s")
    obj = {
        "preset_file": str(out_path) if out_path else None,
        "base_preset": args.base_preset,
        "date": date,
        "quick": s.quick,
        "host": host,
        "gpu": gpu_info or {"gpu_name": None, "note": torch_or_reason},
        "model": {"name": sh.name, "config": str(args.model), **{k: v for k, v in asdict(sh).items() if k != "name"}},
        "measurements": [{**{k: v for k, v in asdict(m).items() if k != "extra"}, "keys": list(m.keys),
                          "extra": m.extra} for m in ms],
        "preset": {k: {"value": v, "measured": meas, "note": c} for k, (v, c, meas) in entries.items()},
        "preset_yaml": text,
    }
    if fit is not None:
        obj["cpu_attention_fit"] = {k: (v / TERA if k == "cpu" else v) for k, v in fit.items() if k != "measurements"}
    return {"text": text, "json": obj, "out": out_path}


def run(argv=None) -> int:
    args = parse_args(argv)
    res = probe(args)
    if res["out"] is not None:
        write_atomically(res["out"], res["text"])
        say(f"probe: wrote {res['out']}")
    if args.json:
        print(json.dumps(res["json"], indent=2, default=str))
    elif res["out"] is None:
        sys.stdout.write(res["text"])
    return 0


if __name__ == "__main__":
    main_guard(run)
