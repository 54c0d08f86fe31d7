"""One solver adapter: any Pyomo-driven MIP solver in, our own :class:`SolveResult` out.

``solve(model, options)`` maps our option names (time limit, relative gap,
threads, extra options) onto the solver's own, runs it, loads the incumbent (if
any) into the model and reports termination, objective, best bound, gap, wall
time, and solver name and version. Unknown or missing solvers raise
:class:`InputError` naming the solver and how to install it.

Tolerances are part of the formulation (DESIGN.md section 2.5): the binary
expansions multiply feasibility errors by up to 2^k, so every solver runs with
feasibility and integrality tolerances of about 1e-9.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import pyomo.environ as pyo

from .errors import InputError, SolverError

TIGHT = 1e-9


@dataclass
class SolveResult:
    solver: str
    version: str
    termination: str          # optimal | time_limit | infeasible | error | ...
    has_solution: bool
    objective: float | None   # incumbent objective (seconds per sequence)
    bound: float | None       # best proven lower bound on it
    gap: float | None         # |objective - bound| / |objective|
    wall_s: float
    message: str = ""


@dataclass(frozen=True)
class SolverSpec:
    name: str
    install: str
    run: Callable[..., SolveResult]
    available: Callable[[], bool]


def _gap(obj, bound) -> float | None:
    if obj is None or bound is None or not math.isfinite(obj) or not math.isfinite(bound):
        return None
    return abs(obj - bound) / max(abs(obj), 1e-12)


# --------------------------------------------------------------------------- HiGHS
def _contrib(pyomo_name: str):
    from pyomo.contrib.solver.common.factory import SolverFactory

    return SolverFactory(pyomo_name)


def _contrib_available(pyomo_name: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return bool(_contrib(pyomo_name).available())
        except Exception:  # noqa: BLE001 - any import/licence failure means "not available"
            return False
    return check


_HIGHS_TIGHT = {
    "mip_feasibility_tolerance": TIGHT,
    "primal_feasibility_tolerance": TIGHT,
    "dual_feasibility_tolerance": TIGHT,
    # Measured on 9 varied scenarios (2-core machine, HiGHS 1.16): presolve off halves
    # the total MILP time (4.4 s -> 2.2 s; reference example 1.3 s -> 0.6 s). The model
    # is small and already tight, so presolve mostly costs time. Override with
    # solver.options: {presolve: "on"}.
    "presolve": "off",
}


def _run_contrib(pyomo_name: str, label: str, tight: dict[str, Any]):
    def run(model, *, time_limit_s: float, mip_gap: float, threads: int | None,
            options: dict[str, Any], is_mip: bool) -> SolveResult:
        from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition as TC

        solver = _contrib(pyomo_name)
        opts = dict(tight)
        opts.update(options)
        t0 = time.perf_counter()
        res = solver.solve(model, time_limit=time_limit_s, rel_gap=mip_gap, threads=threads,
                           solver_options=opts, load_solutions=False,
                           raise_exception_on_nonoptimal_result=False)
        wall = time.perf_counter() - t0
        tc = res.termination_condition
        has = res.solution_status in (SolutionStatus.feasible, SolutionStatus.optimal)
        if has:
            res.solution_loader.load_vars()
        term = {
            TC.convergenceCriteriaSatisfied: "optimal",
            TC.maxTimeLimit: "time_limit",
            TC.provenInfeasible: "infeasible",
            TC.locallyInfeasible: "infeasible",
            TC.infeasibleOrUnbounded: "infeasible",
            TC.iterationLimit: "iteration_limit",
            TC.interrupted: "interrupted",
            TC.unbounded: "unbounded",
        }.get(tc, "error")
        obj = res.incumbent_objective if has else None
        bound = res.objective_bound
        if bound is not None and not math.isfinite(bound):
            bound = None
        if term == "optimal" and not is_mip:
            bound = obj
        version = ".".join(str(x) for x in solver.version()) if solver.version() else "?"
        return SolveResult(solver=label, version=version, termination=term, has_solution=has,
                           objective=obj, bound=bound, gap=_gap(obj, bound), wall_s=wall,
                           message=str(tc.name))
    return run


SOLVERS: dict[str, SolverSpec] = {
    "highs": SolverSpec("highs", "pip install highspy",
                        _run_contrib("highs", "highs", _HIGHS_TIGHT), _contrib_available("highs")),
}


def get_solver(name: str) -> SolverSpec:
    """The adapter for ``name``, or an :class:`InputError` that says how to install it."""
    key = name.strip().lower()
    if key not in SOLVERS:
        known = ", ".join(sorted(SOLVERS))
        raise InputError("solver.name", name, f"unknown solver (known: {known})")
    spec = SOLVERS[key]
    if not spec.available():
        raise InputError("solver.name", name, f"solver is not installed ({spec.install})")
    return spec


def solve(model: pyo.ConcreteModel, name: str, *, time_limit_s: float, mip_gap: float,
          threads: int | None = None, options: dict[str, Any] | None = None, is_mip: bool = True) -> SolveResult:
    """Solve ``model`` with solver ``name``; the incumbent, if any, is loaded into the model."""
    spec = get_solver(name)
    try:
        return spec.run(model, time_limit_s=time_limit_s, mip_gap=mip_gap, threads=threads,
                        options=dict(options or {}), is_mip=is_mip)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - report any solver crash as one line
        raise SolverError(f"{spec.name} failed: {exc.__class__.__name__}: {exc}") from exc
