"""One solver adapter: any Pyomo-driven MIP solver in, our own :class:`SolveResult` out.

``solve(model, options)`` maps our option names (time limit, relative gap,
threads, extra options) onto the solver's own, runs it, loads the incumbent (if
any) into the model and reports termination, objective, best bound, gap, wall
time, and solver name and version. Unknown or missing solvers raise
:class:`InputError` naming the solver and how to install it.

Tolerances are part of the formulation (docs/model.md section 7): the binary
expansions multiply feasibility errors by up to 2^k, so every solver runs with
feasibility and integrality tolerances of about 1e-9.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import threading
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
    check_options: Callable[[dict], None] | None = None  # raises InputError for an option it does not know


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
    # Sub-MIP heuristics (RENS, RINS) took two thirds of the solve on the slow reference
    # scenarios (HiGHS's timing report: 1.31 of 1.96 s, sub-MIP depth 12) while branching
    # closes the gap in a few dozen nodes; off, the solver time over 48 of the 161 reference
    # scenarios fell by about 30% (README "Solve speed"). Re-enable with solver.options.
    "mip_heuristic_run_rens": False,
    "mip_heuristic_run_rins": False,
    # Cuts separated at nodes (not only at the root) are where HiGHS's numerics went wrong on this
    # model: over 188 test models (the 161 reference scenarios and 42 points of a100_16g, HiGHS on the
    # written models) it pruned the optimum's subtree in 1-3 of them (answers up to 1.4e-3 worse, at
    # N = 511 instead of 613-693), and not once with them off; solver time -5% (29.4 -> 28.0 s).
    "mip_allow_cut_separation_at_nodes": False,
    # The feasibility-jump heuristic found nothing the search used on this model: off, over 189 test
    # models (the 161 reference scenarios, 28 a100_16g points) HiGHS explored the same nodes to the same
    # answers in 3.5% less time (23.0 -> 22.2 s; median 0.084 -> 0.078 s). (The root reduced-cost
    # heuristic does pay for itself: off, 9.4x the nodes on t4_reference.)
    "mip_heuristic_run_feasibility_jump": False,
    # HiGHS also stops at an absolute gap of 1e-6 (its default mip_abs_gap): on an objective of
    # ~0.2 seconds per sequence that is a relative 5e-6, looser than the requested relative gap
    # (default 1e-6), and such a stop is reported "feasible", not "optimal". The relative gap decides.
    "mip_abs_gap": 0.0,
}


CANCEL_WAIT_S = 5.0   # after a signal, how long to wait for an in-process solver to stop before leaving it


def _interruptible(call: Callable[[], Any], cancel: Callable[[], None]) -> Any:
    """``call()`` in a worker thread while the main thread waits, so that Ctrl-C and SIGTERM
    (whose Python handlers only ever run in the main thread) reach us during a solve that runs
    in C: on either, ``cancel()`` asks the solver to stop (repeatedly: the solver object may not
    exist yet), we wait up to :data:`CANCEL_WAIT_S` for it, and the signal's exception is
    re-raised. Off the main thread (a worker of a parallel study) ``call()`` runs directly."""
    if threading.current_thread() is not threading.main_thread():
        return call()
    box: dict[str, Any] = {}
    done = threading.Event()   # not Thread.is_alive: a join() cut short by a signal can make it lie

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread below
            box["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=target, name="solver", daemon=True)
    worker.start()
    stop: BaseException | None = None
    deadline = 0.0
    while not done.is_set():
        try:
            if stop is not None:
                with contextlib.suppress(Exception):
                    cancel()
                if time.monotonic() > deadline:
                    break   # the solver ignores the request: leave it (a daemon thread) and exit
            done.wait(0.1)
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt, runners.cli.Terminated
            if stop is None:
                stop, deadline = exc, time.monotonic() + CANCEL_WAIT_S
    if stop is not None:
        raise stop
    if "error" in box:
        raise box["error"]
    return box["value"]


def _run_contrib(pyomo_name: str, label: str, tight: dict[str, Any]):
    def run(model, *, time_limit_s: float, mip_gap: float, threads: int | None,
            options: dict[str, Any], is_mip: bool) -> SolveResult:
        from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition as TC

        solver = _contrib(pyomo_name)
        opts = dict(tight)
        opts.update(options)
        t0 = time.perf_counter()

        def call():
            return solver.solve(model, time_limit=time_limit_s, rel_gap=mip_gap, threads=threads,
                                solver_options=opts, load_solutions=False,
                                raise_exception_on_nonoptimal_result=False)
        res = call()
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


_HIGHS_STATUS = {
    "kOptimal": "optimal", "kTimeLimit": "time_limit", "kInfeasible": "infeasible",
    "kUnboundedOrInfeasible": "infeasible", "kUnbounded": "unbounded", "kIterationLimit": "iteration_limit",
    "kSolutionLimit": "iteration_limit", "kInterrupt": "interrupted",
}


def _highs_available() -> bool:
    try:
        import highspy  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


def _run_highs(model, *, time_limit_s: float, mip_gap: float, threads: int | None,
               options: dict[str, Any], is_mip: bool, compiled=None, start=None) -> SolveResult:
    """HiGHS through ``highspy`` straight: the model compiled by :func:`model.fastlp.compile` (the rows,
    columns and their order that Pyomo's ``contrib.solver`` interface would give HiGHS), the options
    set on a new ``Highs`` object. On the main thread the solve runs in a worker thread and a
    signal cancels it (``cancelSolve``); elsewhere (a study's worker) it runs directly, without the
    interrupt callbacks. ``start``: ``(variable, value)`` pairs of a known policy's integer variables,
    given to HiGHS as a partial MIP start (it completes the rest)."""
    import highspy
    import numpy as np

    from . import fastlp

    t0 = time.perf_counter()   # the wall time counts the translation, as through the Pyomo interfaces
    if compiled is None:
        compiled = fastlp.compile(model)
    # A new object per solve (0.06 ms): a reused one keeps its run clock, against which HiGHS's LP solver
    # checks time_limit, so after a minute of earlier solves an LP with a 58 s limit stopped at once
    # ("time_limit", taken for "nothing fits"); it would also keep a cancel flag.
    h = quiet_highs()
    for key, value in {**_HIGHS_TIGHT, "time_limit": float(time_limit_s), "mip_rel_gap": float(mip_gap),
                       **({"threads": int(threads)} if threads is not None else {}), **options,
                       # HiGHS's log would go to stdout and corrupt --json (the Pyomo interface captured it)
                       "output_flag": False}.items():
        if h.setOptionValue(key, value) != highspy.HighsStatus.kOk:
            raise InputError(f"solver.options.{key}", value, "HiGHS refused this option")
    h.passModel(compiled.lp)
    if start:
        cols = [(compiled.column[id(v)], float(x)) for v, x in start if id(v) in compiled.column]
        if cols:
            h.setSolution(len(cols), np.array([j for j, _ in cols], dtype=np.int32),
                          np.array([x for _, x in cols], dtype=float))
    if threading.current_thread() is threading.main_thread():
        h.HandleUserInterrupt = True   # the interrupt callbacks that make cancelSolve stop the solve
        _interruptible(h.run, h.cancelSolve)
    else:
        h.run()
    wall = time.perf_counter() - t0
    status = h.getModelStatus()
    term = _HIGHS_STATUS.get(status.name, "error")
    info = h.getInfo()
    has = info.primal_solution_status == 2   # 2: feasible
    obj = bound = None
    if has:
        compiled.load(h.getSolution().col_value)
        obj = float(info.objective_function_value)
    if compiled.is_mip and info.mip_node_count != -1:
        bound = float(info.mip_dual_bound)
    elif has and term == "optimal":
        bound = obj
    if bound is not None and not math.isfinite(bound):
        bound = None
    version = f"{h.versionMajor()}.{h.versionMinor()}.{h.versionPatch()}"
    return SolveResult(solver="highs", version=version, termination=term, has_solution=has,
                       objective=obj, bound=bound, gap=_gap(obj, bound), wall_s=wall, message=status.name)


# --------------------------------------------------------------------------- legacy (pyomo.opt) solvers
_INTEGER_TIME_LIMIT = {"glpk"}  # glpsol --tmlim takes whole seconds


@contextlib.contextmanager
def _quiet_pyomo():
    """Pyomo logs solver failures itself; we report them once, as one line."""
    logger = logging.getLogger("pyomo")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _private_tempdir():
    """Pyomo's temporary files (``tmp*.pyomo.lp``, ``.soln``, logs) in a folder of our own,
    removed on every exit path: Pyomo itself removes them only after a solve that returns."""
    from pyomo.common.tempfiles import TempfileManager

    saved = TempfileManager.tempdir
    stack = getattr(TempfileManager, "_context_stack", None)
    depth = len(stack) if isinstance(stack, list) else None
    with tempfile.TemporaryDirectory(prefix="moe-offload-solver-") as folder:
        TempfileManager.tempdir = folder
        try:
            yield folder
        finally:
            TempfileManager.tempdir = saved
            # a solve cut short leaves its context pushed; Pyomo would warn about it at exit
            while depth is not None and isinstance(stack, list) and len(stack) > depth:
                with contextlib.suppress(Exception):
                    TempfileManager.pop(remove=True)
                    continue
                break


def _legacy_available(pyomo_name: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return bool(pyo.SolverFactory(pyomo_name).available(exception_flag=False))
        except Exception:  # noqa: BLE001
            return False
    return check


def _run_legacy(pyomo_name: str, label: str, names: dict[str, str | None], tight: dict[str, Any]):
    """A ``pyomo.opt`` solver; ``names`` maps time_limit/mip_gap/threads onto its own option names."""

    def run(model, *, time_limit_s: float, mip_gap: float, threads: int | None,
            options: dict[str, Any], is_mip: bool) -> SolveResult:
        from pyomo.opt import SolutionStatus, TerminationCondition as TC

        solver = pyo.SolverFactory(pyomo_name)
        opts = dict(tight)
        if names.get("time_limit"):
            opts[names["time_limit"]] = int(math.ceil(time_limit_s)) if label in _INTEGER_TIME_LIMIT else time_limit_s
        if names.get("mip_gap") and is_mip:
            opts[names["mip_gap"]] = mip_gap
        if names.get("threads") and threads:
            opts[names["threads"]] = threads
        opts.update(options)
        solver.options.update(opts)
        t0 = time.perf_counter()
        with _quiet_pyomo(), _private_tempdir():
            # a solver child (cbc, glpsol) is killed by subprocess.run on any exception,
            # KeyboardInterrupt and runners.cli.Terminated included; its files go with the folder
            res = solver.solve(model, load_solutions=False, tee=False)
        wall = time.perf_counter() - t0
        tc = res.solver.termination_condition
        term = {
            TC.optimal: "optimal", TC.globallyOptimal: "optimal", TC.locallyOptimal: "optimal",
            TC.maxTimeLimit: "time_limit", TC.infeasible: "infeasible", TC.infeasibleOrUnbounded: "infeasible",
            TC.unbounded: "unbounded", TC.maxIterations: "iteration_limit", TC.userInterrupt: "interrupted",
        }.get(tc, "error")
        if tc == TC.feasible and str(res.solver.status) == "ok":
            # glpsol reports a MIP that stopped at its relative gap as merely "feasible";
            # when it stopped at the time limit it says so (maxTimeLimit) instead.
            term = "optimal" if wall < time_limit_s else "time_limit"
        has = len(res.solution) > 0 and res.solution(0).status in (
            SolutionStatus.optimal, SolutionStatus.feasible, SolutionStatus.stoppedByLimit, SolutionStatus.other,
            SolutionStatus.locallyOptimal, SolutionStatus.globallyOptimal, SolutionStatus.bestSoFar)
        if term == "infeasible":
            has = False
        obj = bound = None
        if has:
            model.solutions.load_from(res)
            obj = pyo.value(next(model.component_data_objects(pyo.Objective, active=True)))
            lb = res.problem.lower_bound
            bound = float(lb) if lb is not None and math.isfinite(float(lb)) else None
            if term == "optimal" and (bound is None or not is_mip):
                bound = obj if not is_mip else bound
        version = solver.version()
        version = ".".join(str(x) for x in version) if version else "?"
        return SolveResult(solver=label, version=version, termination=term, has_solution=has,
                           objective=obj, bound=bound, gap=_gap(obj, bound), wall_s=wall, message=str(tc))
    return run


_STDOUT_SWAP = threading.Lock()


def quiet_highs():
    """A ``highspy.Highs`` with its output off; its constructor's banner goes to /dev/null, not stdout.
    One thread at a time: two interleaved swaps of file descriptor 1 could leave it on /dev/null."""
    import highspy

    with _STDOUT_SWAP:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                h = highspy.Highs()
                h.setOptionValue("output_flag", False)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
    return h


def _check_highs_options(options: dict) -> None:
    import highspy

    h = quiet_highs()
    for key, value in options.items():
        if h.setOptionValue(key, value) != highspy.HighsStatus.kOk:
            known = h.getOptionType(key)[0] == highspy.HighsStatus.kOk
            raise InputError(f"solver.options.{key}", value,
                             "invalid value for this HiGHS option" if known else "unknown HiGHS option")


SOLVERS: dict[str, SolverSpec] = {
    "highs": SolverSpec("highs", "pip install highspy",
                        _run_highs, _highs_available,
                        _check_highs_options),
    "cbc": SolverSpec("cbc", "apt-get install coinor-cbc (Debian/Ubuntu) or conda install -c conda-forge coin-or-cbc",
                      _run_legacy("cbc", "cbc", {"time_limit": "sec", "mip_gap": "ratio", "threads": "threads"},
                                  # CBC's integer preprocessing cut off the optimum of this model
                                  # (mixtral-8x22b, dbrx: 0.7-3.5% worse, claimed optimal), and a
                                  # primalTolerance below its 1e-7 default did the same on t4_reference
                                  # and dbrx; repair and certification cover what 1e-7 lets through.
                                  {"integerTolerance": TIGHT, "preprocess": "off"}),
                      _legacy_available("cbc")),
    "glpk": SolverSpec("glpk", "apt-get install glpk-utils (Debian/Ubuntu) or conda install -c conda-forge glpk",
                       # GLPK's MIP presolver declared a feasible model infeasible (deepseek-v2-lite with
                       # one-layer weight staging: "LP HAS NO PRIMAL FEASIBLE SOLUTION" after it reduced 126
                       # coefficients; with --nointopt, --exact or not, the relaxation is feasible, as HiGHS says)
                       _run_legacy("glpk", "glpk", {"time_limit": "tmlim", "mip_gap": "mipgap"}, {"nointopt": ""}),
                       _legacy_available("glpk")),
    "scip": SolverSpec("scip", "pip install pyscipopt",
                       _run_contrib("scip_direct", "scip", {"numerics/feastol": TIGHT}),
                       _contrib_available("scip_direct")),
    "gurobi": SolverSpec("gurobi", "pip install gurobipy (a licence is needed beyond the size-limited one)",
                         _run_contrib("gurobi_direct", "gurobi",
                                      {"FeasibilityTol": TIGHT, "IntFeasTol": TIGHT, "OptimalityTol": TIGHT}),
                         _contrib_available("gurobi_direct")),
    "cplex": SolverSpec("cplex", "pip install cplex (the community edition is size-limited)",
                        _run_legacy("cplex_direct", "cplex",
                                    {"time_limit": "timelimit", "mip_gap": "mip_tolerances_mipgap",
                                     "threads": "threads"},
                                    {"simplex_tolerances_feasibility": TIGHT, "mip_tolerances_integrality": TIGHT}),
                        _legacy_available("cplex_direct")),
    "xpress": SolverSpec("xpress", "pip install xpress (the community licence is size-limited)",
                         _run_legacy("xpress_direct", "xpress",
                                     {"time_limit": "maxtime", "mip_gap": "miprelstop", "threads": "threads"},
                                     {"feastol": TIGHT, "miptol": TIGHT}),
                         _legacy_available("xpress_direct")),
}

# Messages by which size-limited (community / restricted) licences refuse a model.
_SIZE_LIMIT_HINTS = ("size-limited", "size limit", "community edition", "restricted license",
                     "model too large", "problem size limits")


def get_solver(name: str) -> SolverSpec:
    """The adapter for ``name``, or an :class:`InputError` that says how to install it."""
    key = name.strip().lower()
    if key not in SOLVERS:
        known = ", ".join(sorted(SOLVERS))
        raise InputError("solver.name", name, f"unknown solver (known: {known})")
    spec = SOLVERS[key]
    if _AVAILABLE.get(key) is not spec:
        if not spec.available():
            raise InputError("solver.name", name, f"solver is not installed ({spec.install})")
        _AVAILABLE[key] = spec   # asked once per process: a study asks three times per point
    return spec


_AVAILABLE: dict[str, SolverSpec] = {}


# Solver options that set what solver.mip_gap, solver.time_limit_s and solver.threads already set
# (each solver's own names, compared without case or leading dashes). Given in solver.options
# they would silently override the explicit (or default) setting, and a 50%-gap answer would be
# labelled optimal: they are bad input instead, naming both.
DUPLICATE_OPTIONS = {
    "highs": {"mip_rel_gap": "mip_gap", "time_limit": "time_limit_s", "threads": "threads"},
    "cbc": {"ratio": "mip_gap", "ratiogap": "mip_gap", "sec": "time_limit_s", "seconds": "time_limit_s",
            "threads": "threads"},
    "glpk": {"mipgap": "mip_gap", "tmlim": "time_limit_s"},
    "scip": {"limits/gap": "mip_gap", "limits/time": "time_limit_s", "parallel/maxnthreads": "threads",
             "lp/threads": "threads"},
    "gurobi": {"mipgap": "mip_gap", "timelimit": "time_limit_s", "threads": "threads"},
    "cplex": {"mip_tolerances_mipgap": "mip_gap", "mip.tolerances.mipgap": "mip_gap", "timelimit": "time_limit_s",
              "threads": "threads"},
    "xpress": {"miprelstop": "mip_gap", "maxtime": "time_limit_s", "threads": "threads"},
}
SETTING_FLAGS = {"mip_gap": "--mip-gap", "time_limit_s": "--time-limit", "threads": "--threads"}


def check_duplicate_options(name: str, options: dict) -> None:
    """An option that sets what a first-class setting sets is bad input naming both."""
    table = DUPLICATE_OPTIONS.get(str(name).strip().lower(), {})
    for key, value in options.items():
        setting = table.get(str(key).strip().lstrip("-").lower())
        if setting is not None:
            raise InputError(f"solver.options.{key}", value,
                             f"sets the same thing as solver.{setting} ({SETTING_FLAGS[setting]}); "
                             f"give it there instead, not both")


def check_options(name: str, options: dict) -> None:
    """Reject options the solver does not know, where the solver lets us ask (HiGHS), and options
    that duplicate solver.mip_gap / time_limit_s / threads."""
    spec = get_solver(name)
    check_duplicate_options(spec.name, options)
    if spec.check_options is not None and options:
        spec.check_options(options)


def solve(model: pyo.ConcreteModel, name: str, *, time_limit_s: float, mip_gap: float,
          threads: int | None = None, options: dict[str, Any] | None = None, is_mip: bool = True,
          compiled=None, start=None) -> SolveResult:
    """Solve ``model`` with solver ``name``; the incumbent, if any, is loaded into the model.

    ``compiled``: ``model`` as :func:`model.fastlp.compile` gave it, reused by HiGHS (ignored by the
    others); the caller vouches that the model has not changed since."""
    spec = get_solver(name)
    check_duplicate_options(spec.name, dict(options or {}))
    try:
        extra = {"compiled": compiled} if compiled is not None and spec.name == "highs" else {}
        if start and spec.name == "highs":
            extra["start"] = start
        res = spec.run(model, time_limit_s=time_limit_s, mip_gap=mip_gap, threads=threads,
                       options=dict(options or {}), is_mip=is_mip, **extra)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - report any solver crash as one line
        text = " ".join(str(exc).split())
        if any(h in text.lower() for h in _SIZE_LIMIT_HINTS):
            raise SolverError(f"{spec.name}: the installed licence is size-limited and refused this model "
                              f"({text[:200]}); use a full licence or another solver") from exc
        raise SolverError(f"{spec.name} failed: {exc.__class__.__name__}: {text[:300]}") from exc
    if res.termination == "interrupted":
        # the solver saw the Ctrl-C itself (SCIP, a child's own handler): never a solver error
        raise KeyboardInterrupt
    if res.termination == "optimal" and is_mip and res.gap is not None and res.gap > gap_tolerance(mip_gap):
        # "optimal" only within the requested gap (a solver's own stopping rule may differ)
        res.message = f"{res.message}; stopped at gap {res.gap:.3g} > requested {mip_gap:g}"
        res.termination = "feasible"
    return res


def gap_tolerance(mip_gap: float) -> float:
    """The largest reported gap that still counts as within ``mip_gap`` (rounding of the two bounds)."""
    return mip_gap * (1 + 1e-6) + 1e-9
