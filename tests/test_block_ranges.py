"""Block-size ranges (model.block_ranges): the restriction of b = g*N is exact, the relaxation bound of a
range is a valid lower bound, and the search ends at the enumerated optimum whatever the incumbent.

The numbers come from exhaustive enumeration: every (g, N) of the tiny scenario solved as its fixed model
(a small MIP over the expert roles at that block size, model.enumerate.solve_fixed).
"""

from __future__ import annotations

import math

import pytest

from experts_tiny import MIB, tiny
from model import block_ranges, fastlp
from model.build import build_model
from model.enumerate import solve_fixed
from model.optimize import model_data
from model.scenario import override
from solver_matrix import solver_params

# One pytest-xdist worker runs this module (its module fixture enumerates every (g, N) of the tiny scenario): paid once, not per worker.
pytestmark = pytest.mark.xdist_group("test_block_ranges")

G_MAX, N_MAX = 4, 6


@pytest.fixture(scope="module")
def case():
    """The tiny scenario with every expert feature on, and the best time per sequence at every (g, N)."""
    sc = tiny(experts__pin_experts=True, experts__cpu_experts=True, experts__expert_traffic="expected",
              hardware__memory_gib={"gpu": 10 * MIB, "cpu": 64 * MIB, "disk": 0},
              search={"max_gpu_batch_size": G_MAX, "max_num_gpu_batches": N_MAX})
    data, _bounds = model_data(sc)
    per_point = {}
    for g in range(data.g_lo, data.g_hi + 1):
        for N in range(data.N_lo, data.N_hi + 1):
            total, _m = solve_fixed(data, g, N)
            if total is not None:
                per_point[g, N] = total / (g * N)
    assert len(per_point) >= 10   # a real choice of block sizes (g <= 2 fits), and the best uses the features
    return sc, data, per_point


def _best_in(per_point, lo, hi):
    vals = [t for (g, N), t in per_point.items() if lo <= g * N <= hi]
    return min(vals) if vals else None


@pytest.mark.parametrize("lo, hi, ratio", [(1, 1, 2.0), (1, 24, 2.0), (3, 100, 1.26), (814, 13935, 2.0 ** (1 / 3)),
                                           (5, 5, 1.5), (2, 1000, 10.0)])
def test_geometric_ranges_cover_the_interval_once(lo, hi, ratio):
    spans = block_ranges.geometric(lo, hi, ratio)
    assert spans[0][0] == lo and spans[-1][1] == hi
    for (a, b), (c, _d) in zip(spans, spans[1:]):
        assert c == b + 1                       # contiguous, no overlap
    for a, b in spans:
        assert a <= b and (a == b or b < a * ratio)


def test_refine_splits_small_ranges_into_single_sizes():
    assert block_ranges.refine(8, 15) == [(b, b) for b in range(8, 16)]
    big = block_ranges.refine(1024, 2047)
    assert len(big) == 3 and all(b < a * block_ranges.REFINE_RATIO for a, b in big)


def test_restricted_milp_equals_enumeration_over_its_range(case):
    """For every range of the search's covers: the MILP with b restricted to it has exactly the best time
    per sequence among the enumerated (g, N) with g*N in the range (none when no such pair fits), and its
    LP relaxation is no higher. A restriction that let b leave the range, or cut a fitting (g, N), fails."""
    _sc, data, per_point = case
    b_max = min(data.b_hi, data.g_hi * data.N_hi)
    spans = set(block_ranges.geometric(1, b_max, block_ranges.FIRST_RATIO))
    spans |= {s for lo, hi in list(spans) for s in block_ranges.refine(lo, hi)}
    spans |= {(7, 7), (11, 11), (5, 11), (7, 12)}   # no (g, N) of the bounds gives 7 or 11
    for lo, hi in sorted(spans):
        want = _best_in(per_point, lo, hi)
        sub = block_ranges.restrict(data, lo, hi)
        if sub is None:
            assert want is None, (lo, hi)
            continue
        got = fastlp.solve(build_model(sub))
        if want is None:
            assert got is None, (lo, hi)
            continue
        assert got == pytest.approx(want, rel=1e-7), (lo, hi)
        assert block_ranges.lp_bound(data, lo, hi) <= want * (1 + 1e-9), (lo, hi)


@pytest.mark.parametrize("incumbent", ["none", "optimum", "worst"])
def test_search_ends_at_the_enumerated_optimum(case, incumbent):
    """Without an incumbent, from the worst fitting policy, and from the optimum itself (then no range
    beats it and the search certifies it)."""
    sc, data, per_point = case
    best = min(per_point.values())
    start = {"none": None, "optimum": best, "worst": max(per_point.values())}[incumbent]
    opts = dict(time_limit_s=60.0, mip_gap=sc.solver.gap, threads=None, options={})
    out = block_ranges.search(data, sc, opts, start)
    assert out.result.termination == "optimal"
    if incumbent == "optimum":
        assert out.model is None          # nothing beats the incumbent by more than the gap
        assert out.result.bound is not None and out.result.bound >= best * (1 - sc.solver.gap)
    else:
        assert out.model is not None
        assert out.result.objective == pytest.approx(best, rel=1e-6)
        assert out.result.bound <= out.result.objective * (1 + 1e-9)
    assert out.ranges_bounded >= 1


@pytest.mark.parametrize("solver", solver_params())
def test_every_solver_ends_the_search_at_the_enumerated_optimum(case, solver):
    """The restricted MILPs through each installed solver (the LP bounds are HiGHS's whatever the solver):
    the same optimum as enumeration, within the solver's gap."""
    sc, data, per_point = case
    sc = override(sc, {"solver.name": solver})
    data = type(data)(**{**data.__dict__, "scenario": sc})
    opts = dict(time_limit_s=60.0, mip_gap=sc.solver.gap, threads=None, options={})
    out = block_ranges.search(data, sc, opts, None)
    assert out.result.termination == "optimal"
    assert out.result.objective == pytest.approx(min(per_point.values()), rel=max(sc.solver.gap, 1e-6) * 2)


def test_ranges_left_unbounded_are_still_solved(case, monkeypatch):
    """With no time for LP bounds (a large model's LPs take seconds each) every range goes to the MILPs
    unbounded, and the search still ends at the enumerated optimum, proven."""
    import time

    sc, data, per_point = case
    monkeypatch.setattr(block_ranges, "LP_SHARE", 0.0)
    opts = dict(time_limit_s=60.0, mip_gap=sc.solver.gap, threads=None, options={})
    out = block_ranges.search(data, sc, opts, None, deadline=time.perf_counter() + 60.0)
    assert out.ranges_bounded == 0
    assert out.result.termination == "optimal"
    assert out.result.objective == pytest.approx(min(per_point.values()), rel=1e-6)


def test_search_from_a_mip_start_keeps_the_optimum(case):
    """The enumerated optimum's (g, N) and roles as HiGHS's MIP start, with no incumbent value: the
    search still solves every surviving range and ends at the same optimum."""
    sc, data, per_point = case
    g, N = min(per_point, key=per_point.get)
    _total, m = solve_fixed(data, g, N)
    pick = lambda name: frozenset(i for i, v in getattr(m.experts, name).items() if v.value > 0.5)  # noqa: E731
    from model.experts import Decision

    opts = dict(time_limit_s=60.0, mip_gap=sc.solver.gap, threads=None, options={})
    out = block_ranges.search(data, sc, opts, None, (g, N, Decision(pinned=pick("pinned"), cpu=pick("on_cpu"))))
    assert out.result.termination == "optimal"
    assert out.result.objective == pytest.approx(per_point[g, N], rel=1e-6)


def test_prune_rule_keeps_half_the_gap_for_the_lp():
    assert block_ranges._prunable(1.0, 1.0, 1e-6)
    assert block_ranges._prunable(1.0 - 4e-7, 1.0, 1e-6)
    assert not block_ranges._prunable(1.0 - 6e-7, 1.0, 1e-6)
    assert not block_ranges._prunable(-math.inf, 1.0, 1e-6)
    assert block_ranges._prunable(math.inf, math.inf, 1e-6) is True   # no incumbent, nothing fits: pruned
