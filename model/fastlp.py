"""Solve a small Pyomo model straight through ``highspy``: the same rows, without the interface's overhead.

Exhaustive enumeration solves tens of thousands of fixed-(g, N) models; through
``pyomo.contrib.solver`` each costs ~50 ms of interface work for a ~1 ms solve. This module
reads the model's rows with Pyomo's own ``generate_standard_repn`` (so every family's rows are
included, nothing is restated) and hands the matrix to HiGHS directly, with the project's
tight tolerances. Integer variables are kept integer (an exact MIP, gap 0).
"""

from __future__ import annotations

import highspy
import numpy as np
import pyomo.environ as pyo
from pyomo.repn import generate_standard_repn

from .solvers import TIGHT, quiet_highs

_H: highspy.Highs | None = None


def _highs() -> highspy.Highs:
    global _H
    if _H is None:
        _H = quiet_highs()
        for opt in ("primal_feasibility_tolerance", "dual_feasibility_tolerance", "mip_feasibility_tolerance"):
            _H.setOptionValue(opt, TIGHT)
        _H.setOptionValue("mip_rel_gap", 0.0)
    return _H


def solve(m) -> float | None:
    """Minimize ``m``'s active objective; load the optimum into its variables and return the objective
    value, or None when the model is infeasible (or HiGHS stops without an optimum)."""
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
        for v, c in zip(repn.linear_vars, repn.linear_coefs):
            if c:
                index.append(col(v))
                value.append(float(c))
        starts.append(len(index))
        k = float(repn.constant or 0.0)
        lo.append(pyo.value(con.lower) - k if con.has_lb() else -np.inf)
        hi.append(pyo.value(con.upper) - k if con.has_ub() else np.inf)
        if repn.nonlinear_expr is not None or repn.quadratic_vars:
            raise ValueError(f"{con.name} is not linear")
    obj = next(m.component_data_objects(pyo.Objective, active=True))
    orepn = generate_standard_repn(obj.expr, compute_values=True)
    cost = {}
    for v, c in zip(orepn.linear_vars, orepn.linear_coefs):
        j = col(v)
        cost[j] = cost.get(j, 0.0) + float(c)
    n = len(var_list)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, len(lo)
    lp.col_cost_ = np.array([cost.get(j, 0.0) for j in range(n)])
    lp.col_lower_ = np.array([v.lb if v.lb is not None else -np.inf for v in var_list], dtype=float)
    lp.col_upper_ = np.array([v.ub if v.ub is not None else np.inf for v in var_list], dtype=float)
    lp.row_lower_, lp.row_upper_ = np.array(lo, dtype=float), np.array(hi, dtype=float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.array(starts)
    lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(value, dtype=float)
    lp.offset_ = float(orepn.constant or 0.0)
    integer = [j for j, v in enumerate(var_list) if not v.is_continuous()]
    if integer:
        kinds = np.zeros(n, dtype=np.uint8)
        kinds[integer] = 1
        lp.integrality_ = [highspy.HighsVarType.kInteger if k else highspy.HighsVarType.kContinuous for k in kinds]
    sense = 1.0 if obj.sense == pyo.minimize else -1.0
    lp.col_cost_ = sense * lp.col_cost_
    lp.offset_ = sense * lp.offset_
    h = _highs()
    h.clearModel()
    h.passModel(lp)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    x = h.getSolution().col_value
    for j, v in enumerate(var_list):
        v.set_value(float(x[j]), skip_validation=True)
    return pyo.value(obj.expr)
