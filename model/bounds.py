"""Search bounds from physics (docs/model.md section 4.3), and the obvious infeasibilities.

Every memory quantity is ``W*block(p) + b*seq(p) + g*micro(p) <= alpha*C`` with
``b = g*N >= g >= 1``. Replacing each part by its minimum over all placements
gives bounds that no feasible policy can exceed:

    g <= (alpha*C - W*min block) / (min micro + min seq)     per device and phase (b >= g)
    b <= (alpha*C - W*min block - min micro) / min seq       per device and phase (g >= 1),
         and the same for the sum over devices of each phase

so the search never cuts off a feasible (g, N). ``N <= b_max / g_lo``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import Infeasible
from .terms import DEVICES, MEMORY_KEYS, SEQ_KINDS, Accounting, Affine, Quantity

_DEVICE_LABEL = {"gpu": "GPU", "cpu": "CPU", "disk": "disk"}


@dataclass(frozen=True)
class SearchBounds:
    g_lo: int
    g_hi: int
    N_lo: int
    N_hi: int
    b_hi: int
    source: dict[str, str] = field(default_factory=dict)  # g_hi/N_hi/b_hi -> "memory" | "search.*" | "policy"


def _min_affine(a: Affine, acc: Accounting, fixed) -> float:
    """Minimum of an affine form over every placement (fixed fractions respected)."""
    total = a.const
    for kind in SEQ_KINDS:
        coefs = {d: a.coef.get((kind, d), 0.0) for d in DEVICES}
        if fixed and (kind, "gpu") in fixed:
            total += sum(coefs[d] * fixed[(kind, d)] for d in DEVICES)
        else:
            total += min(coefs[d] for d in DEVICES if acc.allowed[(kind, d)])
    return total


def _min_block(q: Quantity, acc: Accounting, fixed) -> float:
    coefs = {d: q.block.get(d, 0.0) for d in DEVICES}
    if fixed and ("weights", "gpu") in fixed:
        return q.const + sum(coefs[d] * fixed[("weights", d)] for d in DEVICES)
    return q.const + min(coefs[d] for d in DEVICES if acc.allowed[("weights", d)])


def _memory_cases(acc: Accounting):
    """Every (device, phase) with each layer group's working buffers in turn."""
    return [(key, q) for key in MEMORY_KEYS for _grp, q in acc.memory[key].cases()]


def _label(key) -> str:
    dev, phase = key
    return f"{_DEVICE_LABEL[dev]} memory" + (f" ({phase})" if phase else "")


def search_bounds(acc: Accounting, capacity_gib: dict, alpha: dict, *, fixed_fractions=None,
                  fixed_g: int | None = None, fixed_N: int | None = None,
                  max_g: int | None = None, max_N: int | None = None) -> SearchBounds:
    """Bounds on g, N and b that keep every feasible policy, or :class:`Infeasible` with reasons."""
    usable = {d: alpha[d] * capacity_gib[d] for d in DEVICES}
    reasons: list[str] = []

    # All weights must fit somewhere (the simplest and most common impossibility).
    weight_devices = [d for d in DEVICES if acc.allowed[("weights", d)]]
    total_usable = sum(usable[d] for d in weight_devices)
    if acc.weights_gib > total_usable * (1 + 1e-12):
        parts = " + ".join(f"{usable[d]:.4g}" for d in weight_devices)
        names = " + ".join(_DEVICE_LABEL[d] for d in weight_devices)
        reasons.append(f"weights {acc.weights_gib:.2f} GiB > usable {names} = {parts} "
                       f"= {total_usable:.2f} GiB")

    g_hi, g_src = math.inf, "memory"
    b_hi = math.inf
    for key, q in _memory_cases(acc):
        if not q.cpu_attention.is_zero():
            raise ValueError("memory quantities must not depend on eff(g)")
        room = usable[key[0]] - _min_block(q, acc, fixed_fractions)
        seq = _min_affine(q.sequence, acc, fixed_fractions)
        micro = _min_affine(q.microbatch, acc, fixed_fractions)
        if seq < 0 or micro < 0:
            raise ValueError(f"{_label(key)}: memory terms must not be negative")
        one = room - seq - micro  # what is left with g = b = 1
        if one < -1e-12 * max(1.0, usable[key[0]]):
            if any(r.startswith(_label(key) + ":") for r in reasons):
                continue
            reasons.append(
                f"{_label(key)}: the least any policy needs with one sequence is "
                f"{usable[key[0]] - one:.4g} GiB > usable {alpha[key[0]]:g} x {capacity_gib[key[0]]:g} "
                f"= {usable[key[0]]:.4g} GiB")
            continue
        per_g = micro + seq
        if per_g > 0:
            g_hi = min(g_hi, room / per_g)
        if seq > 0:
            b_hi = min(b_hi, (room - micro) / seq)
    for phase in ("prefill", "decode"):  # all devices together, with the smallest working buffers each
        q = Quantity()
        for k in MEMORY_KEYS:
            if k[1] in (phase, None):
                q = q.plus(acc.memory[k].cases()[0][1])  # home + one group's buffers <= home + the largest
        room = sum(usable.values()) - _min_block(q, acc, fixed_fractions)
        seq = _min_affine(q.sequence, acc, fixed_fractions)
        micro = _min_affine(q.microbatch, acc, fixed_fractions)
        if seq > 0:
            b_hi = min(b_hi, (room - micro) / seq)
    if reasons:
        raise Infeasible(reasons)
    if not math.isfinite(g_hi) or not math.isfinite(b_hi):
        raise ValueError("memory does not bound the batch sizes: the accounting has no per-sequence bytes")
    g_hi_i = int(math.floor(g_hi * (1 + 1e-12)))
    b_hi_i = int(math.floor(b_hi * (1 + 1e-12)))
    g_hi_i = min(g_hi_i, b_hi_i)
    source = {"g_hi": g_src, "b_hi": "memory", "N_hi": "memory"}
    if max_g is not None and max_g < g_hi_i:
        g_hi_i, source["g_hi"] = max_g, "search.max_gpu_batch_size"
    g_lo = 1
    if fixed_g is not None:
        if fixed_g > g_hi_i:
            raise Infeasible([f"GPU memory: gpu_batch_size {fixed_g} > {g_hi_i}, the most that fits "
                              f"(working memory grows with the GPU batch size)"])
        g_lo = g_hi_i = fixed_g
        source["g_hi"] = "policy"
    if b_hi_i < g_lo:
        fit = "none fit" if b_hi_i < 1 else f"at most {b_hi_i} fit"
        raise Infeasible([f"total memory: the KV cache and activations of {g_lo} sequence(s) do not fit "
                          f"beside the weights ({fit})"])
    N_hi = b_hi_i // g_lo
    if max_N is not None and max_N < N_hi:
        N_hi, source["N_hi"] = max_N, "search.max_num_gpu_batches"
    N_lo = 1
    if fixed_N is not None:
        if fixed_N > N_hi:
            raise Infeasible([f"total memory: num_gpu_batches {fixed_N} x gpu_batch_size {g_lo} sequences "
                              f"exceed the at most {b_hi_i} whose KV cache fits"])
        N_lo = N_hi = fixed_N
        source["N_hi"] = "policy"
    return SearchBounds(g_lo=g_lo, g_hi=g_hi_i, N_lo=N_lo, N_hi=N_hi, b_hi=b_hi_i, source=source)
