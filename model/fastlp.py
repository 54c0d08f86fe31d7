"""Pyomo models straight into ``highspy``: the same rows, without an interface's overhead.

:func:`compile` reads a model's rows with Pyomo's own ``generate_standard_repn`` (so every
family's rows are included, nothing is restated) into one ``highspy.HighsLp``, columns in the
order of their first appearance in the rows, as Pyomo's ``contrib.solver`` HiGHS interface
orders them (so HiGHS sees the same model either way). Through that interface each solve costs
~7-15 ms of model translation and output capture; compiled here, ~1-3 ms.

Two users: :mod:`model.solvers` runs every HiGHS solve through :func:`compile` (with the
configured options), and :func:`solve` is the quick exact solve of a small model with the
project's tight tolerances (exhaustive enumeration solves tens of thousands; the exact LP at a
hint). Integer variables are kept integer (an exact MIP, gap 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import highspy
import numpy as np
import pyomo.environ as pyo
from pyomo.repn import generate_standard_repn

from .solvers import TIGHT, quiet_highs

@dataclass
class Compiled:
    """A model as HiGHS takes it: ``lp`` (columns ``var_list``) and its objective component."""

    lp: highspy.HighsLp
    var_list: list
    objective: object
    integer: list[bool]    # per column

    @property
    def is_mip(self) -> bool:
        return any(self.integer)

    @cached_property
    def column(self) -> dict[int, int]:
        """``id(variable)`` -> its column."""
        return {id(v): j for j, v in enumerate(self.var_list)}

    def load(self, x) -> None:
        """Put the column values ``x`` into the Pyomo variables."""
        for v, value in zip(self.var_list, x):
            v.set_value(float(value), skip_validation=True)


def compile(m) -> Compiled:  # noqa: A001 - the verb is the point
    """``m``'s active constraints and objective as one ``HighsLp`` (raises ValueError when not linear)."""
    cols: dict[int, int] = {}
    var_list = []

    def col(v) -> int:
        i = cols.get(id(v))
        if i is None:
            i = cols[id(v)] = len(var_list)
            var_list.append(v)
        return i

    starts, index, value, lo, hi = [0], [], [], [], []
    for con in m.component_data_objects(pyo.Constraint, active=True):
        repn = generate_standard_repn(con.body, compute_values=True)
        if repn.nonlinear_expr is not None or repn.quadratic_vars:
            raise ValueError(f"{con.name} is not linear")
        for v, c in zip(repn.linear_vars, repn.linear_coefs):
            if c:
                index.append(col(v))
                value.append(float(c))
        starts.append(len(index))
        k = float(repn.constant or 0.0)
        lo.append(pyo.value(con.lower) - k if con.has_lb() else -np.inf)
        hi.append(pyo.value(con.upper) - k if con.has_ub() else np.inf)
    objs = list(m.component_data_objects(pyo.Objective, active=True))
    if len(objs) != 1:
        raise ValueError(f"the model has {len(objs)} active objectives, not one")
    obj = objs[0]
    orepn = generate_standard_repn(obj.expr, compute_values=True)
    if orepn.nonlinear_expr is not None or orepn.quadratic_vars:
        raise ValueError(f"{obj.name} is not linear")
    cost = {}
    for v, c in zip(orepn.linear_vars, orepn.linear_coefs):
        j = col(v)
        cost[j] = cost.get(j, 0.0) + float(c)
    n = len(var_list)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, len(lo)
    lp.col_cost_ = np.array([cost.get(j, 0.0) for j in range(n)], dtype=float)
    lp.col_lower_ = np.array([_bound(v.lb, -np.inf) for v in var_list], dtype=float)
    lp.col_upper_ = np.array([_bound(v.ub, np.inf) for v in var_list], dtype=float)
    lp.row_lower_, lp.row_upper_ = np.array(lo, dtype=float), np.array(hi, dtype=float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(value, dtype=float)
    lp.offset_ = float(orepn.constant or 0.0)
    if obj.sense == pyo.maximize:
        lp.sense_ = highspy.ObjSense.kMaximize
    integer = [not v.is_continuous() for v in var_list]
    if any(integer):
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in integer]
    return Compiled(lp=lp, var_list=var_list, objective=obj, integer=integer)


def _bound(b, default: float) -> float:
    return default if b is None else float(b)


def _highs() -> highspy.Highs:
    """A new quiet HiGHS with the tight tolerances and gap 0 (0.06 ms): never shared between threads
    (a study's worker may run several), and no run clock or cancel flag carried over."""
    h = quiet_highs()
    for opt in ("primal_feasibility_tolerance", "dual_feasibility_tolerance", "mip_feasibility_tolerance"):
        h.setOptionValue(opt, TIGHT)
    h.setOptionValue("mip_rel_gap", 0.0)
    return h


def solve(m) -> float | None:
    """Minimize ``m``'s active objective; load the optimum into its variables and return the objective
    value, or None when the model is infeasible (or HiGHS stops without an optimum)."""
    c = compile(m)
    h = _highs()
    h.passModel(c.lp)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    c.load(h.getSolution().col_value)
    return pyo.value(c.objective.expr)


def value_at(compiled: Compiled, fixed: list[tuple[object, float]]) -> float | None:
    """The optimum of ``compiled`` with the variables in ``fixed`` fixed at their values (the rest of
    the model as it is, integers still integer), or None when nothing fits: a look-up that builds
    no model. The Pyomo variables and ``compiled`` are left as they are."""
    cols, values = [], []
    for v, value in fixed:
        j = compiled.column.get(id(v))
        if j is not None:   # else in no row and not in the objective: its value changes nothing
            cols.append(j)
            values.append(float(value))
    h = _highs()
    h.passModel(compiled.lp)
    if cols:
        idx, val = np.array(cols, dtype=np.int32), np.array(values, dtype=float)
        h.changeColsBounds(len(cols), idx, val, val)
        if compiled.is_mip:   # a fixed integer column is a continuous one: with all of them fixed, an LP
            h.changeColsIntegrality(len(cols), idx, np.array([highspy.HighsVarType.kContinuous] * len(cols)))
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    return float(h.getInfo().objective_function_value)


def relaxation_bound(compiled: Compiled) -> float:
    """The optimum of ``compiled`` with every integer variable continuous (its LP relaxation): a lower
    bound on every solution of the MILP; ``inf`` when the relaxation is infeasible. Raises
    RuntimeError when HiGHS ends another way (then nothing is known)."""
    h = _highs()
    h.passModel(compiled.lp)
    if compiled.is_mip:
        n = compiled.lp.num_col_
        h.changeColsIntegrality(n, np.arange(n, dtype=np.int32),
                                np.array([highspy.HighsVarType.kContinuous] * n))
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kOptimal:
        return float(h.getInfo().objective_function_value)
    if status == highspy.HighsModelStatus.kInfeasible:
        return float("inf")
    raise RuntimeError(f"HiGHS ended the LP relaxation with {status.name}")
