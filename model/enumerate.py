"""Exhaustive enumeration of the fixed-(g, N) LP: the baseline the MILP is measured against.

For every ``(g, N)`` with ``g_lo <= g <= g_hi``, ``N_lo <= N <= N_hi`` and
``g*N <= b_hi`` it solves the placement LP in absolute units (seconds per block,
GiB), built straight from the accounting's linear forms as matrices and handed to
``highspy`` (no Pyomo: a Pyomo build per LP would dominate the time). This is
what the original script's grid search did, minus its heuristic shortcuts.

``prune=True`` stops scanning ``N`` for a ``g`` at the first infeasible ``N``
(and stops ``g`` when ``N = N_lo`` is infeasible). That is exact, not heuristic:
every memory term is non-negative and grows with ``b`` and ``g``, so the
feasible placements only shrink as ``N`` or ``g`` grows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import highspy
import numpy as np

from .solvers import quiet_highs
from .terms import DECODE_OVERLAPPED, DEVICES, MEMORY_KEYS, PREFILL_GROUPS, TENSOR_KINDS, Accounting

_VARS = [(k, d) for k in TENSOR_KINDS for d in DEVICES]  # the 9 fractions come first
_IDX = {kd: i for i, kd in enumerate(_VARS)}


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


def _row(acc: Accounting, q, g: int, b: int, ncol: int):
    """Coefficients over the 9 fractions, and the constant, of quantity ``q`` at (g, b)."""
    eff = acc.efficiency(g)
    coef = np.zeros(ncol)
    for d, c in q.block.items():
        coef[_IDX[("weights", d)]] += c
    for part, scale in ((q.sequence, b), (q.microbatch, g), (q.cpu_attention, b * eff)):
        for kd, c in part.coef.items():
            coef[_IDX[kd]] += scale * c
    const = q.const + b * q.sequence.const + g * q.microbatch.const + b * eff * q.cpu_attention.const \
        + b * sum(f(g) for f in q.per_batch_size)
    return coef, const


def solve_fixed_lp(acc: Accounting, g: int, N: int, capacity_gib: dict, alpha: dict,
                   fixed_fractions=None, h: highspy.Highs | None = None):
    """Minimum block time (s) and fractions at fixed ``(g, N)``; ``(None, None)`` if infeasible.

    Columns: the 9 fractions, then per layer group its prefill layer time and its
    overlapped decode time (epigraph variables of the two max() terms).
    """
    b = g * N
    n = acc.gen_len
    ncol = 9 + 2 * len(acc.groups)
    rows, lo, hi = [], [], []
    for k in TENSOR_KINDS:  # fractions sum to one
        r = np.zeros(ncol)
        for d in DEVICES:
            r[_IDX[(k, d)]] = 1.0
        rows.append(r), lo.append(1.0), hi.append(1.0)
    cost = np.zeros(ncol)
    offset = 0.0
    for i, grp in enumerate(acc.groups):
        tp, tq = 9 + 2 * i, 10 + 2 * i
        t = {key: _row(acc, q, g, b, ncol) for key, q in grp.time.items()}
        for chain in PREFILL_GROUPS.values():  # T_p >= sum of chain
            r = np.zeros(ncol)
            const = 0.0
            for c in chain:
                r -= t[("prefill", c)][0]
                const += t[("prefill", c)][1]
            r[tp] = 1.0
            rows.append(r), lo.append(const), hi.append(np.inf)
        for c in DECODE_OVERLAPPED:  # T_q >= component
            r = -t[("decode", c)][0]
            r[tq] = 1.0
            rows.append(r), lo.append(t[("decode", c)][1]), hi.append(np.inf)
        ctog_coef, ctog_const = t[("decode", "ctog")]
        cost[tp] += grp.count
        cost[tq] += (n - 1) * grp.count
        cost += (n - 1) * grp.count * ctog_coef
        offset += (n - 1) * grp.count * ctog_const
    for key in MEMORY_KEYS:
        for _grp, q in acc.memory[key].cases():
            coef, const = _row(acc, q, g, b, ncol)
            rows.append(coef), lo.append(-np.inf), hi.append(alpha[key[0]] * capacity_gib[key[0]] - const)
    col_lo = np.zeros(ncol)
    col_hi = np.array([1.0 if acc.allowed[kd] else 0.0 for kd in _VARS] + [np.inf] * (ncol - 9))
    for kd, v in (fixed_fractions or {}).items():
        col_lo[_IDX[kd]] = col_hi[_IDX[kd]] = v
    A = np.array(rows)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = ncol, A.shape[0]
    lp.col_cost_ = cost
    lp.col_lower_, lp.col_upper_ = col_lo, col_hi
    lp.row_lower_, lp.row_upper_ = np.array(lo), np.array(hi)
    nz = np.nonzero(A.T)  # column-wise
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.searchsorted(nz[0], np.arange(ncol + 1))
    lp.a_matrix_.index_ = nz[1]
    lp.a_matrix_.value_ = A.T[nz]
    lp.offset_ = offset
    if h is None:
        h = _highs()
    h.passModel(lp)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None, None
    x = h.getSolution().col_value
    return h.getInfo().objective_function_value, {kd: x[_IDX[kd]] for kd in _VARS}


def _highs() -> highspy.Highs:
    h = quiet_highs()
    h.setOptionValue("primal_feasibility_tolerance", 1e-9)
    h.setOptionValue("dual_feasibility_tolerance", 1e-9)
    return h


def enumerate_policies(acc: Accounting, capacity_gib: dict, alpha: dict, g_lo: int, g_hi: int, N_lo: int,
                       N_hi: int, b_hi: int, fixed_fractions=None, prune: bool = False) -> EnumerationResult:
    """Best throughput over every (g, N) in range by solving each fixed-(g, N) LP."""
    t0 = time.perf_counter()
    h = _highs()
    best = (None, None, None)
    solved = feasible = 0
    max_g = max_b = 0
    n = acc.gen_len
    for g in range(g_lo, g_hi + 1):
        any_feasible = False
        for N in range(N_lo, min(N_hi, b_hi // g) + 1):
            total, _x = solve_fixed_lp(acc, g, N, capacity_gib, alpha, fixed_fractions, h)
            solved += 1
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
