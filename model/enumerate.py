"""Exhaustive enumeration over (g, N): the baseline the MILP is checked and measured against.

For every ``(g, N)`` with ``g_lo <= g <= g_hi``, ``N_lo <= N <= N_hi`` and ``g*N <= b_max`` it
solves the fixed-(g, N) model of :func:`model.build.build_model`: every family, the same rows
as the MILP (no formula of its own), so a new family is enumerated without edits. A fixed
model that still holds integer decisions (expert roles, a family's binary) is solved exactly
(MIP gap 0) at that (g, N). This is what the original script's grid search did, minus its
heuristic shortcuts.

``prune=True`` stops scanning ``N`` for a ``g`` at the first infeasible ``N`` (and stops ``g``
when ``N = N_lo`` is infeasible). That is exact, not heuristic: every memory term is
non-negative and grows with ``b`` and ``g``, so the feasible placements only shrink as ``N`` or
``g`` grows (a family whose limit is not monotone must be enumerated with ``prune=False``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyomo.environ as pyo

from . import fastlp, solvers
from .build import ModelData, build_model
from .evaluation import clean_point
from .limits import complete, violated_rows


@dataclass
class EnumerationResult:
    best_throughput: float | None
    best_g: int | None
    best_N: int | None
    lps_solved: int
    feasible: int
    seconds: float
    max_feasible_g: int = 0
    max_feasible_b: int = 0


def solve_fixed(data: ModelData, g: int, N: int, solver: str = "highs"):
    """Seconds per block of the best placement at ``(g, N)`` and the solved model, or ``(None, None)``.

    ``solver="highs"`` goes straight through highspy (:mod:`model.fastlp`, the same rows); any other
    name through the solver adapter.
    """
    m = build_model(data.fixed_at(g, N))
    if solver == "highs":
        if fastlp.solve(m) is None:
            return None, None
    else:
        is_mip = any(not v.is_continuous() for v in m.component_data_objects(pyo.Var, active=True))
        r = solvers.solve(m, solver, time_limit_s=600.0, mip_gap=0.0, is_mip=is_mip)
        if not r.has_solution or r.termination != "optimal":
            return None, None
    clean_point(m)
    complete(m)
    if violated_rows(m):
        return None, None
    return pyo.value(m.objective.time_per_seq_s) * g * N, m


def enumerate_policies(data: ModelData, prune: bool = True, solver: str = "highs",
                       progress=None) -> EnumerationResult:
    """Best throughput over every (g, N) in ``data``'s bounds by solving each fixed model."""
    t0 = time.perf_counter()
    best = (None, None, None)
    solved = feasible = 0
    max_g = max_b = 0
    n = data.accounting.gen_len
    for g in range(data.g_lo, data.g_hi + 1):
        any_feasible = False
        for N in range(data.N_lo, min(data.N_hi, data.b_hi // g) + 1):
            total, _m = solve_fixed(data, g, N, solver)
            solved += 1
            if progress is not None:
                progress(solved)
            if total is None:
                if prune:
                    break
                continue
            feasible += 1
            any_feasible = True
            max_g, max_b = max(max_g, g), max(max_b, g * N)
            tput = n * g * N / total
            if best[0] is None or tput > best[0]:
                best = (tput, g, N)
        if prune and not any_feasible:
            break
    return EnumerationResult(best[0], best[1], best[2], solved, feasible, time.perf_counter() - t0, max_g, max_b)
