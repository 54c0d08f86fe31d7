"""Every reported figure of a policy, read from the one Pyomo model (docs/model.md section 2.3).

A policy with its batch sizes fixed is the fixed-(g, N) model of :func:`model.build.build_model`
(every family, the same rows as the MILP). Its figures are that model's expressions at the
policy's point:

* a fully fixed policy (g, N, every fraction) is evaluated *at a point*: the fractions are set,
  each family's auxiliary variables are completed (:func:`model.limits.complete`: the epigraph
  of a max is the max), and every row is checked with the one tolerance
  (:data:`model.limits.FIT_TOL`); a family with auxiliary variables and no completion is solved
  as an LP instead;
* an optimized policy is the LP solution of the same model.

So the evaluator, the optimizer's re-check, the enumeration, the report and the sensitivity
all see every family, with no formula written twice.
"""

from __future__ import annotations

from dataclasses import replace

import pyomo.environ as pyo

from .build import ModelData, build_model
from .families.cost import MIB_PER_GIB, US_PER_S
from .families.timing import chain_values, formula
from .limits import complete, describe, limits, violated_rows, violations
from .terms import DEVICES, MEMORY_KEYS, PHASES, SEQ_KINDS, Evaluation, GroupTimes


def fixed_model(data: ModelData, g: int, N: int, fractions=None):
    """The fixed-(g, N) model; with ``fractions`` (all nine), those are fixed too."""
    fixed = data.fixed_at(g, N)
    if fractions is not None:
        fixed = replace(fixed, fixed_fractions=dict(fractions))
    return build_model(fixed)


def set_fractions(m, fractions) -> None:
    """Put the policy's fractions into the model's variables (the point to evaluate)."""
    pl = m.placement
    for d in DEVICES:
        pl.weights_fraction[d].set_value(fractions[("weights", d)], skip_validation=True)
    for k in SEQ_KINDS:
        for d in DEVICES:
            pl.fraction[k, d].set_value(fractions[(k, d)], skip_validation=True)


def clean_point(m) -> None:
    """Clip a solver's fractions to [0, 1], renormalize each kind to sum to one, and put them back
    (a solver's -1e-12 is not a placement)."""
    set_fractions(m, fractions_of(m))


def fractions_of(m) -> dict[tuple[str, str], float]:
    """The fractions at the model's current point, cleaned to [0, 1] and renormalized."""
    pl = m.placement
    out = {}
    w = {d: max(0.0, pyo.value(pl.weights_fraction[d])) for d in DEVICES}
    tot = sum(w.values())
    for d in DEVICES:
        out[("weights", d)] = w[d] / tot
    for k in SEQ_KINDS:
        vals = {d: min(1.0, max(0.0, pyo.value(pl.fraction[k, d]))) for d in DEVICES}
        tot = sum(vals.values())
        for d in DEVICES:
            out[(k, d)] = vals[d] / tot
    return out


def at_point(data: ModelData, g: int, N: int, fractions, solver: str = "highs", opts=None):
    """Evaluate a fully fixed policy: ``(model, violation lines)`` with the model at the policy's point.

    An empty list means it fits. Completed without a solver where every family can; otherwise the
    fixed LP is solved (its only freedom is the auxiliary variables).
    """
    m = fixed_model(data, g, N, fractions)
    set_fractions(m, fractions)
    if not complete(m):
        from . import solvers

        r = solvers.solve(m, solver, is_mip=False, **(opts or {"time_limit_s": 60.0, "mip_gap": 1e-4}))
        if not r.has_solution:
            for lim in limits(m):
                lim.constraint.deactivate()
            solvers.solve(m, solver, is_mip=False, **(opts or {"time_limit_s": 60.0, "mip_gap": 1e-4}))
            set_fractions(m, fractions)
        complete(m)
    return m, check(m)


def check(m) -> list[str]:
    """Lines naming what does not fit at the model's current point (empty: every row fits)."""
    bad = violations(m)
    if bad:
        return bad
    rows = violated_rows(m)
    return [f"{describe(m, c) or c.name} is violated" for c in rows[:5]]


def evaluation(m, data: ModelData, g: int, N: int) -> Evaluation:
    """Times, throughput and peaks at the model's current (completed) point."""
    b = g * N
    per_s = b / US_PER_S
    cost, tm = m.cost, m.timing
    groups = []
    counts = {grp.name: grp.count for grp in data.accounting.groups}
    for grp in m.LAYER_GROUPS:
        layer = {ph: {c: pyo.value(cost.layer_time_per_seq_us[grp, ph, c]) * per_s for c in m.COMPONENTS}
                 for ph in PHASES}
        pre, dec = chain_values(m, grp, "prefill"), chain_values(m, grp, "decode")
        groups.append(GroupTimes(
            grp, counts[grp], layer,
            prefill_layer_s=pyo.value(tm.prefill_layer_us[grp]) * per_s,
            decode_layer_s=pyo.value(tm.decode_layer_us[grp]) * per_s,
            bottleneck={"prefill": max(pre, key=pre.get), "decode": max(dec, key=dec.get)}))
    obj = m.objective
    pre_total = pyo.value(obj.prefill_time_per_seq_s) * b
    dec_total = pyo.value(obj.decode_time_per_seq_s) * b
    total = pre_total + dec_total
    peaks, homes = {}, {}
    for dev, ph in MEMORY_KEYS:
        if dev == "disk":
            home = pyo.value(cost.disk_memory_per_seq_mib)
            work = 0.0
        else:
            home = pyo.value(getattr(cost, f"{dev}_home_per_seq_mib")[ph])
            working = getattr(cost, f"{dev}_working_per_seq_mib")
            work = max(pyo.value(working[ph, grp]) for grp in m.LAYER_GROUPS)
        homes[(dev, ph)] = home * b / MIB_PER_GIB
        peaks[(dev, ph)] = (home + work) * b / MIB_PER_GIB
    n = data.accounting.gen_len
    words = {name: w for ph in PHASES for name, w, _c, _f in tm.chains[ph]}
    return Evaluation(groups=groups, prefill_total_s=pre_total, decode_total_s=dec_total, total_s=total,
                      throughput_tokens_per_s=n * b / total, peak_memory_gib=peaks, home_memory_gib=homes,
                      chain_words=words, formula=formula(m))


def evaluate_accounting(acc, g: int, N: int, fractions) -> Evaluation:
    """The figures of a fixed policy under an accounting alone (no capacities: nothing is checked),
    through the same model: for tests and tools that vary the accounting directly."""
    big = {d: 1e5 for d in DEVICES}
    data = ModelData(accounting=acc, capacity_gib=big, alpha={d: 1.0 for d in DEVICES}, g_lo=g, g_hi=g, N_lo=N,
                     N_hi=N, b_hi=g * N)
    m = fixed_model(data, g, N, fractions)
    set_fractions(m, fractions)
    complete(m)
    return evaluation(m, data.fixed_at(g, N), g, N)
