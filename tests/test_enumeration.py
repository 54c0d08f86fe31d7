"""The MILP's optimum equals exhaustive enumeration of every (g, N), done independently.

The enumeration uses tests/reference_lp.py (scipy's linprog on the reference
formulas, written apart from the model code). It scans every g and, for each, every
N until the first infeasible one: every memory term of the reference formulas is a
non-negative multiple of b or g (or a constant), so once no placement fits at
(g, N) none fits at a larger N or g either. The instances shrink the memories so
that the scan stays cheap.
"""

from __future__ import annotations

import pytest

import reference_lp as ref
from conftest import t4_with
from model import optimize
from model.accounting import build_accounting
from model.bounds import search_bounds
from model.families import batching


def enumerate_all(s, n, cap, alpha):
    """Best (throughput, g, N) over all feasible (g, N), the largest feasible g and b, and the LP count."""
    best, max_g, max_b, solved = (0.0, None, None), 0, 0, 0
    g = 1
    while True:
        N, feasible_here = 1, False
        while True:
            r = ref.solve_fixed_lp(s, n, g, N, cap, alpha)
            solved += 1
            if r is None:
                break
            feasible_here = True
            max_g, max_b = max(max_g, g), max(max_b, g * N)
            if r["throughput"] > best[0]:
                best = (r["throughput"], g, N)
            N += 1
        if not feasible_here:
            return best, max_g, max_b, solved
        g += 1


# s, n, (gpu, cpu, disk) GiB, alpha: small enough that the scan stays at a few hundred LPs
INSTANCES = [
    (512, 32, (16, 100, 20), 0.8),     # optimum at g = 1
    (128, 64, (12, 96, 6), 0.9),       # optimum at g = 3
    (512, 32, (16, 200, 0), 0.8),      # no disk; optimum at g = 19
    (1024, 32, (16, 95, 5), 0.9),
    (2048, 16, (16, 100, 10), 0.9),
    (512, 8, (16, 96, 10), 0.9),
    (128, 1, (8, 50, 60), 0.8),        # no decode step
]


_ENUMERATED: dict = {}


@pytest.mark.parametrize("g_encoding", ["one-hot", "bits"])
@pytest.mark.parametrize("inst", INSTANCES, ids=[f"s{i[0]}-n{i[1]}-{'/'.join(map(str, i[2]))}" for i in INSTANCES])
def test_milp_equals_exhaustive_enumeration(inst, g_encoding, monkeypatch):
    """Both encodings of g (model.families.batching.ONE_HOT_MAX_VALUES picks one by the size of g's
    range) must reach the enumerated optimum."""
    monkeypatch.setattr(batching, "ONE_HOT_MAX_VALUES", 256 if g_encoding == "one-hot" else 1)
    s, n, cap, a = inst
    alpha = {"gpu": a, "cpu": a, "disk": a}
    if inst not in _ENUMERATED:
        _ENUMERATED[inst] = enumerate_all(s, n, cap, alpha)
    (best, g_best, N_best), max_g, max_b, solved = _ENUMERATED[inst]
    assert g_best is not None, "instance must be feasible"
    sc = t4_with(s, n, *cap, alpha=a)
    res = optimize(sc)
    gap = sc.solver.gap
    # Never better than the true optimum, never worse than it by more than the MIP gap.
    assert res.throughput_tokens_per_s <= best * (1 + 1e-7)
    assert res.throughput_tokens_per_s >= best * (1 - gap - 1e-7)
    # The MILP's reported figures are those of the independent LP at its (g, N).
    mine = ref.solve_fixed_lp(s, n, res.gpu_batch_size, res.num_gpu_batches, cap, alpha)
    assert mine is not None
    assert res.throughput_tokens_per_s == pytest.approx(mine["throughput"], rel=1e-7)
    # The search bounds keep every feasible (g, N).
    acc = build_accounting(sc)
    bd = search_bounds(acc, dict(zip(("gpu", "cpu", "disk"), cap)), alpha)
    assert bd.g_hi >= max_g and bd.b_hi >= max_b
    assert solved < 6000
