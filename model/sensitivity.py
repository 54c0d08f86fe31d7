"""What limits a policy: binding constraints and the marginal value of each resource.

From the fixed-(g, N) LP (the re-solve after the MILP), solved by HiGHS for its duals:

* binding constraints: every capacity and timing constraint with a nonzero dual, by
  name (``capacity.cpu_memory_within_capacity[decode]``,
  ``timing.decode_overlap_covers_component[moe,dtoc]``: the term that sets a phase's time);
* tokens/s per extra GiB of GPU / CPU / disk memory: a capacity row reads
  ``(home + work)/b <= alpha * C / b`` (MiB inside the model), so
  ``dt/dC = sum_phases dual * 1024 * alpha / b``;
* tokens/s per extra GiB/s of each link (and of each device's memory bandwidth under
  exact accounting): by the envelope theorem ``dt/dtheta = df/dtheta +
  sum_rows dual_row * d(row's time terms)/dtheta`` at the LP optimum; each time term is
  affine in ``1/theta`` (or a max of such terms), so its derivative is read off the
  accounting rebuilt at ``theta * (1 + 1e-6)``;

and ``d(tokens/s) = -(n / t^2) dt`` with ``t`` seconds per sequence. All of it is
local: at the chosen g and N, for small changes (an LP's value is piecewise linear
in its right-hand sides; more memory may also allow a larger N, which this does not
see). tests/test_sensitivity.py checks the figures against finite differences.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pyomo.environ as pyo

from .accounting import build_accounting
from .build import ModelData, build_model
from .experts import ExpertSetup, specialize
from .families.cost import MIB_PER_GIB, US_PER_S
from .scenario import Scenario
from .terms import DECODE_OVERLAPPED, PREFILL_GROUPS

_EPS = 1e-6


@dataclass
class Sensitivity:
    tokens_per_s_per_gib: dict[str, float]
    tokens_per_s_per_gib_per_s: dict[str, float]
    binding: list[str] = field(default_factory=list)
    note: str = ("local to the chosen gpu_batch_size and num_gpu_batches; an LP's value is piecewise linear, "
                 "so large changes may differ")


def _links(sc: Scenario) -> dict[str, float]:
    bw = sc.hardware.bandwidth_gib_per_s
    out = {f"bandwidth_gib_per_s.{k}": getattr(bw, k) for k in bw.__dataclass_fields__}
    mbw = sc.hardware.memory_bandwidth_gib_per_s
    if mbw is not None and sc.model.accounting == "exact":
        out.update({f"memory_bandwidth_gib_per_s.{k}": getattr(mbw, k) for k in ("gpu", "cpu")})
    return out


def _bumped(sc: Scenario, path: str, value: float) -> Scenario:
    """``sc`` with one hardware rate changed, without re-validation (a rate at its sanity cap may
    be nudged past it for the derivative)."""
    section, key = path.split(".")
    hw = sc.hardware
    new_section = dataclasses.replace(getattr(hw, section), **{key: value})
    return dataclasses.replace(sc, hardware=dataclasses.replace(hw, **{section: new_section}))


def _time_terms_us(acc, g: int, N: int, p) -> dict:
    """Per-sequence microseconds of every (group, phase, component) at a fixed policy."""
    ev_b = g * N
    eff = acc.efficiency(g)
    return {(grp.name, ph, c): US_PER_S * q.value(ev_b, g, eff, p) / ev_b
            for grp in acc.groups for (ph, c), q in grp.time.items()}


def _price(row, epigraph_var, duals) -> float:
    """d(optimum)/d(time the row requires): the row's dual, oriented by how the solver sees the row.

    ``t >= sum(terms)`` reaches the solver as ``t - sum >= k`` or ``sum - t <= k`` depending on
    which side holds variables; the dual is d(optimum)/d(k) either way, so its sign follows the
    coefficient of ``t`` in the row's body.
    """
    from pyomo.repn import generate_standard_repn

    repn = generate_standard_repn(row.body, compute_values=True)
    coef = next(c for v, c in zip(repn.linear_vars, repn.linear_coefs) if v is epigraph_var)
    return duals.get(row, 0.0) * (1.0 if coef > 0 else -1.0)


def _lp_fractions(lp) -> dict:
    pl = lp.placement
    out = {("weights", d): pyo.value(pl.weights_fraction[d]) for d in lp.DEVICES}
    out.update({(k, d): pyo.value(pl.fraction[k, d]) for k in pl.SEQ_KINDS for d in lp.DEVICES})
    return out


def sensitivity(sc: Scenario, data: ModelData, g: int, N: int) -> Sensitivity:
    """Binding constraints and marginal values at ``(g, N)``; see the module docstring."""
    fixed = data.fixed_at(g, N)
    lp = build_model(fixed)
    from pyomo.contrib.solver.common.factory import SolverFactory

    opts = {"primal_feasibility_tolerance": 1e-9, "dual_feasibility_tolerance": 1e-9}
    res = SolverFactory("highs").solve(lp, load_solutions=False, raise_exception_on_nonoptimal_result=False,
                                       solver_options=opts)
    res.solution_loader.load_vars()
    duals = res.solution_loader.get_duals()
    fractions = _lp_fractions(lp)  # the primal point that goes with these duals
    t = pyo.value(lp.objective.time_per_seq_s)
    n = data.accounting.gen_len
    to_tput = -n / t**2
    b = g * N
    binding = sorted(c.name for c, d in duals.items() if abs(d) > 1e-12 and any(
        key in c.name for key in ("within_capacity", "covers_chain", "covers_component")))

    per_gib = {}
    cap = lp.capacity
    for dev in ("gpu", "cpu"):
        rows = getattr(cap, f"{dev}_memory_within_capacity")
        dt = sum(duals.get(rows[ph], 0.0) for ph in lp.PHASES) * MIB_PER_GIB * data.alpha[dev] / b
        per_gib[dev] = to_tput * dt
    per_gib["disk"] = to_tput * duals.get(cap.disk_memory_within_capacity, 0.0) * MIB_PER_GIB * data.alpha["disk"] / b

    base_terms = _time_terms_us(fixed.accounting, g, N, fractions)
    per_bw = {}
    tm = lp.timing
    counts = {grp.name: grp.count for grp in fixed.accounting.groups}
    for path, value in _links(sc).items():
        bumped_sc = _bumped(sc, path, value * (1 + _EPS))
        bumped = build_accounting(bumped_sc)
        if data.expert_decision is not None:
            bumped = specialize(bumped, ExpertSetup.from_scenario(bumped_sc), data.expert_decision, b)
        terms = _time_terms_us(bumped, g, N, fractions)
        # d(term)/d(theta) for terms affine in 1/theta: -(term(theta) - term(theta(1+e))) (1+e) / (e theta)
        d = {key: -(base_terms[key] - terms[key]) * (1 + _EPS) / (_EPS * value) for key in base_terms}
        dt = sum(counts[grp] * (n - 1) * d[(grp, "decode", "ctog")] for grp in counts) / US_PER_S
        for grp in counts:
            for chain, comps in PREFILL_GROUPS.items():
                row = tm.prefill_layer_covers_chain[grp, chain]
                dt += _price(row, tm.prefill_layer_us[grp], duals) * sum(d[(grp, "prefill", c)] for c in comps)
            for c in DECODE_OVERLAPPED:
                row = tm.decode_overlap_covers_component[grp, c]
                dt += _price(row, tm.decode_overlap_us[grp], duals) * d[(grp, "decode", c)]
        per_bw[path] = to_tput * dt
    clean = lambda d: {k: (v if abs(v) > 1e-15 else 0.0) for k, v in d.items()}  # noqa: E731 - no "-0.0"
    return Sensitivity(tokens_per_s_per_gib=clean(per_gib), tokens_per_s_per_gib_per_s=clean(per_bw),
                       binding=binding)
