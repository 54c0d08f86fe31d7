"""Block-size ranges: exact bound tightening on ``b = g*N`` for the MILPs with expert decisions.

An expert decision enters the per-sequence model multiplied by ``u = 1/b`` (``pin * u``,
``kept * p[weights, d] / b``, ``cpu * mu(b)/b``). Each product's McCormick envelope is exact at
integer points, but its relaxation is only as tight as the range of ``u``: over ``b`` in
``[1, 13935]`` a pin of 1% buys a whole expert's saving at ``b = 1360``, and branching on the
bits of ``N`` never tightens the envelope's coefficients. With ``b`` restricted to ``[L, H]``
(``u`` in ``[1/H, 1/L]``, and the ranges of ``g`` and ``N`` cut to match) every envelope is
tight to the ratio ``H/L``. So (docs/model.md section 10.4):

1. cover ``[b_min, b_max]`` by geometric ranges (ratio :data:`FIRST_RATIO`) and bound each by the
   LP relaxation of the MILP restricted to it: every policy with ``b`` in the range is feasible
   there, so the relaxation's optimum is a lower bound on its time per sequence (the LPs get at most
   :data:`LP_SHARE` of the time left; a range left unbounded is kept for step 3);
2. drop each range whose bound is no better than the incumbent (the seed policy) by more than
   half the gap; split the survivors (ratio :data:`REFINE_RATIO`) and bound those;
3. merge contiguous survivors of several sizes each, and solve the MILP restricted to each
   surviving range, lowest bound first, from the incumbent where it lies in the range (HiGHS's MIP
   start); a range whose bound no longer beats the incumbent is dropped.

The answer is the best of the incumbent and the groups' optima: every ``b`` lies either in a
solved group or in a range whose relaxation proves that nothing there beats the answer by more
than the gap. Restricting ``b`` is exact (``u <= 1/L`` holds exactly when ``g*N >= L``), so each
group's MILP is the full MILP with fewer policies, not an approximation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

from . import solvers
from .build import ModelData, build_model

# Ratio H/L of the first cover, and of the split of each range that survives it. Measured on the
# README's expert rows (T4 / A100, n = 32 / 256, "all + trace"): the first cover keeps one or two
# ranges of ratio 2, whose MILPs still took 51 s (T4, n=256, b in [512, 2047]); split three ways,
# one to three ranges of ratio ~1.26 survive and the MILP over them takes 8 s.
FIRST_RATIO = 2.0
REFINE_RATIO = 2.0 ** (1.0 / 3.0)
# A surviving range of at most this many block sizes is split into single sizes: at small b even three
# sizes in one MILP are slow (memory-bound T4 host, "all + trace": b in [8, 10] 28 s, b = 9 alone 0.2 s).
SINGLE_MAX = 16
# The share of the time left that the LP bounds may take before the remaining ranges go unbounded to
# the MILPs.
LP_SHARE = 0.4


@dataclass
class Range:
    lo: int
    hi: int
    bound: float = math.inf         # LP relaxation bound on the time per sequence (inf: nothing fits)


@dataclass
class Outcome:
    """What the search found: the MILP of the group that holds the best policy found (None when no
    group beat the incumbent), its data, and its solve with the search's overall status and bound."""

    model: object
    data: ModelData | None
    result: solvers.SolveResult
    ranges_bounded: int = 0
    ranges_solved: list = field(default_factory=list)   # (lo, hi) of the ranges solved as MILPs
    lp_s: float = 0.0

    def note(self) -> str:
        kept = ", ".join(f"[{lo}, {hi}]" for lo, hi in self.ranges_solved) or "none"
        return (f"block-size ranges: {self.ranges_bounded} bounded by their LP relaxation in {self.lp_s:.1f} s; "
                f"MILPs over b in {kept}")


def geometric(lo: int, hi: int, ratio: float) -> list[tuple[int, int]]:
    """Consecutive integer ranges covering ``[lo, hi]``, each ``[L, H]`` with ``H < L * ratio`` (at
    least one value each)."""
    out, L = [], lo
    while L <= hi:
        H = min(hi, max(L, math.ceil(L * ratio) - 1))
        out.append((L, H))
        L = H + 1
    return out


def refine(lo: int, hi: int) -> list[tuple[int, int]]:
    """The split of a surviving range: single block sizes when it holds at most :data:`SINGLE_MAX`
    (with ``b`` fixed every envelope is exact), else geometric ranges of ratio :data:`REFINE_RATIO`."""
    if hi - lo + 1 <= SINGLE_MAX:
        return [(b, b) for b in range(lo, hi + 1)]
    return geometric(lo, hi, REFINE_RATIO)


def restrict(data: ModelData, lo: int, hi: int) -> ModelData | None:
    """``data`` with ``b = g*N`` restricted to ``[lo, hi]`` and the ranges of ``g`` and ``N`` cut to
    match (``g <= hi``, ``N >= lo / g_hi``, ``N <= hi / g_lo``, ``g >= lo / N_hi``), or None when no
    ``(g, N)`` of the search bounds has ``g*N`` in the range."""
    g_hi = min(data.g_hi, hi)
    N_hi = min(data.N_hi, hi // data.g_lo)
    if g_hi < data.g_lo or N_hi < data.N_lo:
        return None
    N_lo = max(data.N_lo, -(-lo // g_hi))
    g_lo = max(data.g_lo, -(-lo // N_hi))
    if N_lo > N_hi or g_lo > g_hi or g_lo * N_lo > hi or g_hi * N_hi < lo:
        return None
    return replace(data, b_lo=max(lo, g_lo * N_lo), b_hi=min(hi, g_hi * N_hi, data.b_hi),
                   g_lo=g_lo, g_hi=g_hi, N_lo=N_lo, N_hi=N_hi)


def lp_bound(data: ModelData, lo: int, hi: int) -> float:
    """A lower bound on the time per sequence of every policy with ``b`` in ``[lo, hi]``: the LP
    relaxation of the restricted MILP (HiGHS, whatever solver the MILP uses; ``inf``: none fits)."""
    from . import fastlp

    sub = restrict(data, lo, hi)
    if sub is None:
        return math.inf
    return fastlp.relaxation_bound(fastlp.compile(build_model(sub)))


# Relative difference below which a restricted MILP's objective is the incumbent's, found again
SAME_POLICY_REL = 1e-12


def _prunable(bound: float, incumbent: float, gap: float) -> bool:
    """Nothing in a range with this bound beats the incumbent by more than half the gap (the other half
    is the LP's own tolerance)."""
    return bound >= incumbent * (1.0 - gap / 2.0)


def _start(m, incumbent_point) -> list:
    """The incumbent's integer variables in the restricted MILP ``m``: the batching family's (g, N) and
    the expert roles (the block-size choice is left to the solver to complete)."""
    from .families import batching

    g, N, decision = incumbent_point
    pts = batching.integer_point(m, g, N)
    blk = m.experts
    for name, chosen in (("pinned", decision.pinned), ("on_cpu", decision.cpu)):
        if hasattr(blk, name):
            pts += [(v, 1 if key in chosen else 0) for key, v in getattr(blk, name).items()]
    return pts


def search(data: ModelData, sc, opts: dict, incumbent: float | None, incumbent_point=None,
           deadline: float | None = None) -> Outcome:
    """Steps 1-3 of the module docstring. ``incumbent``: the seed policy's exact time per sequence (None:
    no seed); ``incumbent_point``: its ``(g, N, Decision)``, for the MIP start; ``deadline``: a
    ``time.perf_counter()`` after which no new LP or MILP starts (the MILPs get the time left)."""
    gap = sc.solver.gap
    best = math.inf if incumbent is None else incumbent
    deadline = math.inf if deadline is None else deadline
    t0 = time.perf_counter()
    b_min = data.b_min
    b_max = min(data.b_hi, data.g_hi * data.N_hi)
    bounded = 0
    # the LPs get at most this share of the time left: on a large model each costs seconds (DeepSeek-MoE
    # 16B, 3,456 decisions: 2-5 s), and a range left unbounded is still solved, as part of a MILP
    lp_deadline = t0 + LP_SHARE * (deadline - t0) if math.isfinite(deadline) else math.inf

    def bound_all(spans):
        nonlocal bounded
        kept = []
        for lo, hi in spans:
            if time.perf_counter() > lp_deadline:
                kept.append(Range(lo, hi, -math.inf))   # not bounded: kept for the MILPs
                continue
            r = Range(lo, hi, lp_bound(data, lo, hi))
            bounded += 1
            if not _prunable(r.bound, best, gap):
                kept.append(r)
        return kept

    groups = []
    for r in bound_all(geometric(b_min, b_max, FIRST_RATIO)):
        if r.hi > r.lo and r.bound > -math.inf:
            groups += bound_all(refine(r.lo, r.hi))
        else:
            groups.append(r)
    lp_s = time.perf_counter() - t0
    merged: list[Range] = []
    for r in groups:   # contiguous ranges of several sizes: one MILP (T4, n=256, "all + trace": 13 s, 56 s apart)
        if merged and merged[-1].hi + 1 == r.lo and merged[-1].hi > merged[-1].lo and r.hi > r.lo:
            merged[-1] = Range(merged[-1].lo, r.hi, min(merged[-1].bound, r.bound))
        else:
            merged.append(r)
    groups = sorted(merged, key=lambda r: r.bound)

    chosen = None          # (model, data, result)
    last = None
    bounds_left = []       # lower bounds of what was not proven
    solved = []
    proven = True
    for grp in groups:
        if _prunable(grp.bound, best, gap):
            continue
        left = deadline - time.perf_counter()
        if left <= 0:
            proven = False
            bounds_left.append(grp.bound)
            continue
        sub = restrict(data, grp.lo, grp.hi)
        if sub is None:
            continue
        m = build_model(sub)
        start = None
        if incumbent_point is not None and chosen is None:
            g, N, _dec = incumbent_point
            if grp.lo <= g * N <= grp.hi:
                start = _start(m, incumbent_point)
        res = solvers.solve(m, sc.solver.name, is_mip=True, start=start,
                            **{**opts, "time_limit_s": max(1.0, min(opts["time_limit_s"], left))})
        solved.append((grp.lo, grp.hi))
        last = res
        if res.termination not in ("optimal", "infeasible"):
            proven = False
            bounds_left.append(res.bound if res.bound is not None else grp.bound)
        # a real improvement only: the same policy as the seed, found again with its objective a few ulps
        # lower (4.7e-15 relative in tests/test_block_ranges.py), keeps the seed
        if res.has_solution and res.objective is not None and res.objective < best * (1.0 - SAME_POLICY_REL):
            best = res.objective
            chosen = (m, sub, res)
    overall = min([best] + bounds_left)            # the search's bound (inf: nothing fits anywhere)
    overall = overall if math.isfinite(overall) else None
    status = "optimal" if proven and math.isfinite(best) else ("infeasible" if proven else "time_limit")
    if chosen is not None:      # best is finite, so status is optimal or time_limit
        m, sub, res = chosen
        result = replace(res, termination=status, bound=res.bound if overall is None else overall,
                         wall_s=time.perf_counter() - t0)
        result.gap = solvers._gap(result.objective, result.bound)
        return Outcome(m, sub, result, bounded, solved, lp_s)
    base = last or solvers.SolveResult(solver=sc.solver.key, version="", termination=status, has_solution=False,
                                       objective=None, bound=None, gap=None, wall_s=0.0, message="")
    result = replace(base, termination=status, has_solution=False, objective=None, bound=overall, gap=None,
                     wall_s=time.perf_counter() - t0)
    return Outcome(None, None, result, bounded, solved, lp_s)
