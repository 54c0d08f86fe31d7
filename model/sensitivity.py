"""What limits a policy: binding constraints and the marginal value of each resource.

From the fixed-(g, N) LP (the re-solve after the MILP), solved for its duals, and derived
for every family without knowing any of them (docs/model.md section 9):

* binding constraints: every row with a nonzero dual that a family labelled or registered as a
  limit (:mod:`model.limits`), in plain words ("GPU memory (prefill)", "prefill layer time set
  by compute (layers)", "block latency limit");
* the marginal value of a scenario field ``theta`` (a memory, a link, a family's own limit): by
  the envelope theorem, at the LP optimum ``x*``,

      dt/dtheta = sum_rows  -y_r * d(body_r(x*) - bound_r)/dtheta  + d(objective(x*))/dtheta

  with ``y_r`` the row's dual (d optimum / d bound). The derivatives are read off the same
  model rebuilt from the scenario with ``theta * (1 + 1e-6)``, evaluated at the same ``x*``:
  every row of every family, matched by name;

and ``d(tokens/s) = -(n / t^2) dt`` with ``t`` seconds per sequence. All of it is local: at the
chosen g and N, for small changes (an LP's value is piecewise linear in its right-hand sides;
more memory may also allow a larger N, which this does not see). tests/test_sensitivity.py
checks the figures against finite differences.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pyomo.environ as pyo

from .build import ModelData, build_model
from .limits import describe, limits
from .scenario import field_value

_EPS = 1e-6


@dataclass
class Sensitivity:
    tokens_per_s_per_gib: dict[str, float]
    tokens_per_s_per_gib_per_s: dict[str, float]
    binding: list[str] = field(default_factory=list)
    per_field: dict[str, float] = field(default_factory=dict)   # any priced scenario field -> tokens/s per unit
    solver_note: str = ""
    note: str = ("local to the chosen gpu_batch_size and num_gpu_batches; an LP's value is piecewise linear, "
                 "so large changes may differ")


def priced_fields(sc, m) -> dict[str, float]:
    """Scenario fields to price: memories, links, memory bandwidths (exact accounting), and every
    limit's own field (e.g. ``workload.max_block_time_s``)."""
    hw = sc.hardware
    out = {f"hardware.memory_gib.{d}": getattr(hw.memory_gib, d) for d in ("gpu", "cpu", "disk")}
    bw = hw.bandwidth_gib_per_s
    out.update({f"hardware.bandwidth_gib_per_s.{k}": getattr(bw, k) for k in bw.__dataclass_fields__})
    mbw = hw.memory_bandwidth_gib_per_s
    if mbw is not None and sc.model.accounting == "exact":
        out.update({f"hardware.memory_bandwidth_gib_per_s.{k}": getattr(mbw, k) for k in ("gpu", "cpu")})
    for lim in limits(m):
        value = field_value(sc, lim.field)
        if isinstance(value, (int, float)) and value:
            out.setdefault(lim.field, float(value))
    return out


def _bumped(sc, path: str, value: float):
    """``sc`` with one field changed, without re-validation (a value at its sanity cap may be
    nudged past it for the derivative)."""
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(sc, **{head: value})
    return dataclasses.replace(sc, **{head: _bumped(getattr(sc, head), rest, value)})


def _rows(m) -> dict[str, object]:
    return {c.name: c for c in m.component_data_objects(pyo.Constraint, active=True)}


def _active_side(con, dual: float):
    """The bound a row's dual belongs to: the one the body sits on (equality: either)."""
    if con.has_lb() and con.has_ub():
        lb, ub, body = pyo.value(con.lower), pyo.value(con.upper), pyo.value(con.body)
        return con.upper if abs(body - ub) <= abs(body - lb) else con.lower
    return con.upper if con.has_ub() else con.lower


def _load_point(src, dst) -> None:
    """Copy every variable value of ``src`` into the same-named variable of ``dst``."""
    values = {v.name: v.value for v in src.component_data_objects(pyo.Var)}
    for v in dst.component_data_objects(pyo.Var):
        if v.name in values:
            v.set_value(values[v.name], skip_validation=True)


def _duals(lp, solver: str):
    """Duals of the fixed LP from the configured solver where it gives them, else from HiGHS."""
    from pyomo.contrib.solver.common.factory import SolverFactory

    note = ""
    name = {"highs": "highs", "gurobi": "gurobi_direct", "scip": "scip_direct"}.get(solver)
    if name is None:
        note = f"duals from HiGHS ({solver} gives no duals through this interface)"
        name = "highs"
    opts = {"highs": {"primal_feasibility_tolerance": 1e-9, "dual_feasibility_tolerance": 1e-9}}.get(name, {})
    try:
        res = SolverFactory(name).solve(lp, load_solutions=False, raise_exception_on_nonoptimal_result=False,
                                        solver_options=opts)
        res.solution_loader.load_vars()
        return res.solution_loader.get_duals(), note
    except Exception:  # noqa: BLE001 - a solver without duals: fall back to HiGHS
        if name == "highs":
            raise
        res = SolverFactory("highs").solve(lp, load_solutions=False, raise_exception_on_nonoptimal_result=False,
                                           solver_options={"primal_feasibility_tolerance": 1e-9,
                                                           "dual_feasibility_tolerance": 1e-9})
        res.solution_loader.load_vars()
        return res.solution_loader.get_duals(), f"duals from HiGHS ({solver} gave none)"


def sensitivity(sc, data: ModelData, g: int, N: int) -> Sensitivity:
    """Binding constraints and marginal values at ``(g, N)``; see the module docstring."""
    from .accounting import build_accounting

    fixed = data.fixed_at(g, N)
    lp = build_model(fixed)
    duals, solver_note = _duals(lp, sc.solver.name)
    t = pyo.value(lp.objective.time_per_seq_s)
    n = data.accounting.gen_len
    to_tput = -n / t**2
    binding = []
    for con, y in duals.items():
        if abs(y) > 1e-12:
            words = describe(lp, con)
            if words is not None and words not in binding:
                binding.append(words)
    per_field = {}
    for path, value in priced_fields(sc, lp).items():
        step = _EPS * value if value else _EPS
        bumped_sc = _bumped(sc, path, value + step)
        hw = bumped_sc.hardware
        bumped = dataclasses.replace(   # the same decisions (attention mode, expert roles), rebuilt accounting
            data, accounting=build_accounting(bumped_sc), scenario=bumped_sc,
            capacity_gib={d: getattr(hw.memory_gib, d) for d in ("gpu", "cpu", "disk")})
        other = build_model(bumped.fixed_at(g, N))
        _load_point(lp, other)
        d_obj = (pyo.value(other.objective.time_per_seq_s) - t) / step
        dt = d_obj
        other_rows = _rows(other)
        for con, y in duals.items():
            if abs(y) <= 1e-15 or con.name not in other_rows:
                continue
            o = other_rows[con.name]
            side, o_side = _active_side(con, y), _active_side(o, y)
            before = pyo.value(con.body) - pyo.value(side)
            after = pyo.value(o.body) - pyo.value(o_side)
            dt += -y * (after - before) / step
        per_field[path] = to_tput * dt
    clean = lambda v: v if abs(v) > 1e-15 else 0.0  # noqa: E731 - no "-0.0"
    per_gib = {d: clean(per_field.get(f"hardware.memory_gib.{d}", 0.0)) for d in ("gpu", "cpu", "disk")}
    per_bw = {k.split(".", 1)[1]: clean(v) for k, v in per_field.items()
              if k.startswith(("hardware.bandwidth_gib_per_s.", "hardware.memory_bandwidth_gib_per_s."))}
    return Sensitivity(tokens_per_s_per_gib=per_gib, tokens_per_s_per_gib_per_s=per_bw, binding=binding,
                       per_field={k: clean(v) for k, v in per_field.items()}, solver_note=solver_note)
