"""The Python API: optimize a scenario, or evaluate a fixed policy.

    from model import load_scenario, optimize
    result = optimize(load_scenario("scenarios/t4_reference.yaml"))
    print(result.throughput_tokens_per_s, result.gpu_batch_size, result.num_gpu_batches)

:func:`optimize` solves one MILP over ``(g, N)`` and the placement, then fixes
``g`` and ``N`` and re-solves the LP (docs/model.md section 8.3); the reported figures
are that LP's, re-evaluated straight from the formulas. It refuses to report
when the LP is infeasible or disagrees with the MILP beyond the gap.
With ``g``, ``N`` and all percents fixed, it evaluates that policy instead.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field, replace

import pyomo.environ as pyo

from . import block_ranges, solvers
from .accounting import build_accounting
from .attention import best_of_modes
from .bounds import SearchBounds, search_bounds
from .build import ModelData, build_model
from .families import batching
from .errors import Infeasible, SolverError
from .experts import Decision, ExpertSetup, decision_pairs, expected_experts_moved, specialize
from .scenario import DEVICE_NAMES, Scenario, field_value
from .evaluation import at_point, check, clean_point, evaluation, fractions_of
from .limits import complete, limits
from .sensitivity import Sensitivity, sensitivity as compute_sensitivity
from .terms import DEVICES, TENSOR_KINDS, Accounting, Evaluation, fractions_from_percent


@dataclass
class Result:
    """What one run found: policy, predicted performance, and how it was found."""

    scenario: Scenario
    accounting: Accounting
    status: str                                     # optimal | time_limit | evaluated | infeasible
    gpu_batch_size: int | None = None
    num_gpu_batches: int | None = None
    fractions: dict[tuple[str, str], float] = field(default_factory=dict)
    evaluation: Evaluation | None = None
    solve: solvers.SolveResult | None = None        # the MILP (or the LP when g, N are fixed)
    resolve: solvers.SolveResult | None = None      # the fixed-(g, N) LP re-solve
    bounds: SearchBounds | None = None
    binding_bounds: list[str] = field(default_factory=list)
    flexllmgen_percent: tuple[int, ...] | None = None
    flexllmgen_num_gpu_batches: int | None = None      # N for the flags (< N when rounding needs room)
    flexllmgen_throughput: float | None = None
    build_s: float = 0.0
    total_s: float = 0.0
    infeasible_reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sensitivity: Sensitivity | None = None
    capped_by: list[str] = field(default_factory=list)   # limits that one more GPU batch (or a larger g) would break
    expert_setup: ExpertSetup | None = None         # expert-aware features in effect (None: the core model)
    expert_decision: Decision | None = None
    attention_requested: str | None = None          # policy.attention asked for (auto: both modes were tried)
    attention_throughputs: dict[str, float | None] | None = None   # auto: tokens/s of each mode (None: infeasible)

    @property
    def attention(self) -> str:
        """Where decode attends the off-GPU KV cache in this result: ``cpu`` or ``gpu`` (model.attention)."""
        return self.accounting.attention

    @property
    def pinned_experts(self) -> list[list[int]]:
        """``[layer, expert]`` pairs kept resident on the GPU."""
        return decision_pairs(self.accounting, self.expert_decision.pinned) if self.expert_decision else []

    @property
    def cpu_experts(self) -> list[list[int]]:
        """``[layer, expert]`` pairs computed on the CPU in decode."""
        return decision_pairs(self.accounting, self.expert_decision.cpu) if self.expert_decision else []

    @property
    def expected_experts_moved_per_layer(self) -> dict[int, float] | None:
        """Per MoE layer: expected experts whose weights move in a decode step at the chosen block size."""
        if self.block_size is None or not self.accounting.expert_groups:
            return None
        setup = self.expert_setup or ExpertSetup()
        return expected_experts_moved(self.accounting, setup, self.expert_decision or Decision(), self.block_size)

    @property
    def throughput_tokens_per_s(self) -> float | None:
        return self.evaluation.throughput_tokens_per_s if self.evaluation else None

    @property
    def model_info(self) -> dict:
        """What was modeled: name, total and active parameters, weights GiB, KV bytes per token."""
        from .accounting import model_info

        return model_info(self.scenario, self.accounting)

    @property
    def block_size(self) -> int | None:
        return None if self.gpu_batch_size is None else self.gpu_batch_size * self.num_gpu_batches

    @property
    def capacity_gib(self) -> dict[str, float]:
        mem = self.scenario.hardware.memory_gib
        return {d: getattr(mem, d) for d in DEVICE_NAMES}

    @property
    def usable_gib(self) -> dict[str, float]:
        alpha = self.scenario.hardware.alpha
        return {d: getattr(alpha, d) * c for d, c in self.capacity_gib.items()}


def _fixed_fractions(sc: Scenario):
    return None if sc.policy.percent is None else fractions_from_percent(sc.policy.percent)


def evaluate_policy(sc: Scenario, g: int, N: int, percent) -> Result:
    """Predict the throughput, times and peaks of one fully fixed policy: the same Pyomo model as
    the optimizer's, evaluated at the policy's point (no solver where every family can complete it)."""
    if sc.policy.attention == "auto":   # both attention modes; the faster (model.attention)
        return best_of_modes(evaluate_policy, sc, g, N, percent)
    t0 = time.perf_counter()
    setup = ExpertSetup.from_scenario(sc)
    if setup.has_decisions:
        raise ValueError("evaluate_policy: pinned or CPU experts are decisions; use optimize()")
    data = _data(sc, build_accounting(sc), g, g, N, N, g * N)
    if setup.active and data.experts is not None:
        data = replace(data, expert_decision=Decision())
    p = fractions_from_percent(percent)
    m, bad = at_point(data, g, N, p, sc.solver.name)
    fixed = data.fixed_at(g, N)
    ev = evaluation(m, fixed, g, N)
    res = Result(scenario=sc, accounting=fixed.accounting, status="evaluated", gpu_batch_size=g, num_gpu_batches=N,
                 expert_setup=data.experts, expert_decision=data.expert_decision,
                 fractions=p, evaluation=ev, flexllmgen_percent=tuple(int(round(x)) for x in percent)
                 if all(float(x).is_integer() for x in percent) else None)
    res.flexllmgen_throughput = ev.throughput_tokens_per_s if res.flexllmgen_percent else None
    res.flexllmgen_num_gpu_batches = N
    if bad:
        res.status = "infeasible"
        res.infeasible_reasons = bad
    res.total_s = time.perf_counter() - t0
    return res


def _data(sc: Scenario, acc: Accounting, g_lo: int, g_hi: int, N_lo: int, N_hi: int, b_hi: int) -> ModelData:
    hw = sc.hardware
    setup = ExpertSetup.from_scenario(sc)
    return ModelData(accounting=acc, capacity_gib={d: getattr(hw.memory_gib, d) for d in DEVICE_NAMES},
                     alpha={d: getattr(hw.alpha, d) for d in DEVICE_NAMES}, g_lo=g_lo, g_hi=g_hi, N_lo=N_lo,
                     N_hi=N_hi, b_hi=b_hi, fixed_fractions=_fixed_fractions(sc), name=sc.name,
                     experts=setup if setup.active and acc.expert_groups else None, scenario=sc)


def model_data(sc: Scenario) -> tuple[ModelData, SearchBounds]:
    """The plain data of ``sc``'s MILP and its search bounds (raises :class:`Infeasible`)."""
    acc = build_accounting(sc)
    hw, pol = sc.hardware, sc.policy
    capacity = {d: getattr(hw.memory_gib, d) for d in DEVICE_NAMES}
    alpha = {d: getattr(hw.alpha, d) for d in DEVICE_NAMES}
    kw = dict(fixed_fractions=_fixed_fractions(sc), fixed_g=pol.gpu_batch_size, fixed_N=pol.num_gpu_batches,
              max_g=sc.search.max_gpu_batch_size, max_N=sc.search.max_num_gpu_batches)
    if pol.attention == "auto" and acc.gpu_attention_delta is not None:
        # the mode is a decision: bounds that keep every feasible policy of either mode
        from .attention import apply_attention

        found, why = [], []
        for mode_acc in (acc, apply_attention(acc, "gpu")):
            try:
                found.append(search_bounds(mode_acc, capacity, alpha, **kw))
            except Infeasible as exc:
                why.append(exc)
        if not found:   # a reason of both modes once; the others name their mode
            cpu, gpu = why[0].reasons, why[1].reasons
            raise Infeasible([r for r in cpu if r in gpu] + [f"cpu attention: {r}" for r in cpu if r not in gpu]
                             + [f"gpu attention: {r}" for r in gpu if r not in cpu])
        bounds = found[0] if len(found) == 1 else SearchBounds(
            g_lo=min(b.g_lo for b in found), g_hi=max(b.g_hi for b in found), N_lo=min(b.N_lo for b in found),
            N_hi=max(b.N_hi for b in found), b_hi=max(b.b_hi for b in found), source=dict(found[0].source))
    else:
        bounds = search_bounds(acc, capacity, alpha, **kw)
    return _data(sc, acc, bounds.g_lo, bounds.g_hi, bounds.N_lo, bounds.N_hi, bounds.b_hi), bounds


def build_for(sc: Scenario) -> pyo.ConcreteModel:
    """The Pyomo MILP that :func:`optimize` solves for ``sc`` (e.g. to write it to a file)."""
    return build_model(model_data(sc)[0])


def optimize(sc: Scenario, *, sensitivity: bool = True, integer_percents: bool = True,
             hint: tuple[int, int] | None = None) -> Result:
    """The throughput-optimal policy for ``sc`` (fixing what ``sc.policy`` fixes).

    ``sensitivity=False`` skips the marginal values and binding constraints (one more LP
    and a rebuilt accounting per rate), ``integer_percents=False`` FlexLLMGen's integer
    percents (a small MIP): studies that need neither run faster.

    ``hint=(g, N)``: batch sizes to start from, e.g. the optimum of a neighbouring point of a
    study. With HiGHS, when they fit, the exact LP there bounds the optimum from above and HiGHS
    prunes every node that cannot beat it (option ``objective_bound``); the answer is the same,
    found in about half the time when the hint is close (docs/model.md section 8.7). Ignored
    by other solvers and when the expert roles are decisions.

    Raises :class:`Infeasible` when no policy fits, :class:`SolverError` when the
    solver fails or its answer does not survive the fixed-(g, N) re-check, and
    :class:`InputError` for an unknown or missing solver.
    """
    pol = sc.policy
    if pol.gpu_batch_size and pol.num_gpu_batches and pol.percent is not None \
            and not ExpertSetup.from_scenario(sc).has_decisions:
        res = evaluate_policy(sc, pol.gpu_batch_size, pol.num_gpu_batches, pol.percent)
        if res.status == "infeasible":
            raise Infeasible(res.infeasible_reasons)
        return res
    with _deadline(sc.solver.time_limit_s + TIME_LIMIT_GRACE_S):
        return _optimize(sc, sensitivity, integer_percents, time.perf_counter(), hint)


# Beyond solver.time_limit_s, what the re-checks, sensitivity and integer percents may add before the
# whole run is stopped (building the model and the seeds count against the time limit itself).
TIME_LIMIT_GRACE_S = 30.0


class _TimeUp(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float):
    """Stop the run (a SolverError) when it outlasts ``seconds``: the solver's own limit bounds its
    search; this bounds everything around it, model building included. Main thread only."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def ring(signum, frame):
        raise _TimeUp()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(0.001, seconds))
    try:
        yield
    except _TimeUp:
        raise SolverError(f"the time limit ran out ({seconds - TIME_LIMIT_GRACE_S:g} s, solver.time_limit_s / "
                          f"--time-limit, plus {TIME_LIMIT_GRACE_S:g} s for the checks around the solve) before a "
                          f"policy was reported; building the model counts too") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _optimize(sc: Scenario, sensitivity: bool, integer_percents: bool, t_start: float,
              hint: tuple[int, int] | None = None) -> Result:
    solvers.check_options(sc.solver.name, sc.solver.options)  # fail fast: unknown solver, missing, bad option
    data, bounds = model_data(sc)
    acc = data.accounting
    t0 = time.perf_counter()
    opts = dict(time_limit_s=max(min(1.0, sc.solver.time_limit_s), sc.solver.time_limit_s - (t0 - t_start)),
                mip_gap=sc.solver.gap,
                threads=sc.solver.threads, options=sc.solver.options)
    if bounds.g_lo == bounds.g_hi and bounds.N_lo == bounds.N_hi and data.experts is None:
        g, N = bounds.g_lo, bounds.N_lo
        lp, lp_res, build_s = _solve_fixed(data, g, N, sc, opts)
        data = _with_decision(data, lp)     # the attention mode, when it was a decision
        milp_res, notes = lp_res, []
    else:
        decisions = data.has_expert_decisions
        extra_notes, milp = [], None
        if decisions:
            # expert decisions: the seed policy, then the MILP over the block-size ranges that its
            # relaxation cannot rule out (model.block_ranges)
            seed = _seed(data, sc, opts)
            build_s = 0.0
            opts = {**opts, "time_limit_s": max(1.0, sc.solver.time_limit_s - (time.perf_counter() - t_start))}
            found = block_ranges.search(
                data, sc, opts, None if seed is None else seed[4].objective,
                None if seed is None else (seed[0], seed[1], seed[2].expert_decision),
                deadline=t_start + sc.solver.time_limit_s)
            milp_res, extra_notes = found.result, [found.note()]
            if seed is not None and found.model is None:
                return _seed_result(sc, bounds, seed, milp_res, build_s, t_start, opts, sensitivity,
                                    integer_percents, extra_notes=extra_notes)
            m = found.model
        else:
            m = build_model(data)
            build_s = time.perf_counter() - t0
            milp_res, milp = _solve_hinted(m, data, sc, opts, hint)
        if not milp_res.has_solution:
            if milp_res.termination == "infeasible":
                # The smallest (g, N) fits whenever anything does (feasibility is monotone): an exact
                # LP there either confirms the solver or shows its infeasibility claim is numerical.
                if _try_fixed(data, data.g_lo, data.N_lo, sc, opts)[0] is not None:
                    raise SolverError(f"{milp_res.solver} declared the MILP infeasible, but g={data.g_lo}, "
                                      f"N={data.N_lo} fits: numerical trouble (extreme rates or sizes?)")
                raise Infeasible(explain_infeasible(data))
            raise SolverError(f"{milp_res.solver} stopped ({milp_res.termination}) without a policy "
                              f"after {milp_res.wall_s:.1f} s")
        g, N = _batch_sizes(m)
        data = _with_decision(data, m)
        lp, lp_res, g2, N2, notes, facts = _resolve_with_repair(data, g, N, sc, opts)
        trust_bound = True
        if notes:
            pass   # repaired: certified below
        elif _optimistic(milp_res, lp_res, sc.solver.gap):
            # the MILP's (g, N) fits, but its objective was better than the exact LP there by more than the
            # gap (a solver's tolerances let it bend a row): certify the exact policy like a repaired one
            notes = [f"the solver's objective at g={g}, N={N} was optimistic (its tolerances); the exact LP there "
                     f"is {lp_res.objective / milp_res.objective - 1:.2e} worse"]
        elif _bound_beaten(milp_res, lp_res, sc.solver.gap):
            # the exact LP at the MILP's own (g, N) beats the solver's bound: its search was misled by its
            # tolerances, so its claim of optimality is void; re-solve below this policy to certify it
            notes = [f"the exact LP at g={g}, N={N} beat the solver's bound by "
                     f"{1 - lp_res.objective / milp_res.bound:.2e} (its tolerances); re-solved below it"]
            trust_bound = False
        elif milp_res.termination == "optimal" and (better := _better_next(data, g, N, lp_res, sc, opts, milp)):
            # one more GPU batch is better in exact terms: the solver stopped at an edge that its search
            # only believed in (seen at N = 2^k - 1: its tolerances pruned the subtree of the next bit)
            notes = [f"the exact LP at g={g}, N={N + 1} beat the solver's N={N} by "
                     f"{1 - better[1].objective / lp_res.objective:.2e}; re-solved below it"]
            lp, lp_res, g2, N2 = better
            trust_bound = False
        if notes:
            lp, lp_res, g2, N2, data, more = _certify(m, data, sc, opts, milp_res, (lp, lp_res, g2, N2), (g, N),
                                                      facts, trust_bound=trust_bound)
            notes += more
            # certified within the requested gap: that is what "optimal" promises, whatever the solver's
            # own (optimistic) bound said
            milp_res = replace(milp_res, termination="optimal", bound=lp_res.objective * (1 - sc.solver.gap),
                               gap=sc.solver.gap)
        else:
            _check_agreement(milp_res, lp_res, sc.solver.gap, g, N)
        g, N = g2, N2
        notes += extra_notes
    return _report(sc, data, bounds, g, N, lp, lp_res, milp_res, build_s, notes, opts, t_start,
                   sensitivity, integer_percents)


def _report(sc: Scenario, data: ModelData, bounds, g: int, N: int, lp, lp_res, solve, build_s: float,
            notes: list[str], opts, t_start: float, want_sensitivity: bool = True,
            want_percents: bool = True) -> Result:
    """The Result of the policy ``(g, N)`` whose fixed LP is ``lp``: re-evaluated from the formulas
    (with the expert decision applied at ``b = g*N``), checked against capacity, with sensitivity
    and FlexLLMGen's integer percents."""
    clean_point(lp)
    if data.attention_mode == "cpu" and sum(pyo.value(lp.placement.fraction["cache", d]) for d in ("cpu", "disk")) \
            < 1e-12:
        # no cache off the GPU: both modes are the same policy; report FlexGen's default (GPU attention)
        data = replace(data, attention_mode="gpu")
        lp = build_model(data.fixed_at(g, N))
        lp_res = solvers.solve(lp, sc.solver.name, is_mip=False, **opts)
        clean_point(lp)
    fixed = data.fixed_at(g, N)
    acc = fixed.accounting
    complete(lp)
    bad = check(lp)
    if bad:
        raise SolverError("solved policy does not fit: " + "; ".join(bad))
    fractions = fractions_of(lp)
    ev = evaluation(lp, fixed, g, N)
    lp_time = lp_res.objective * g * N
    if not math.isclose(ev.total_s, lp_time, rel_tol=1e-6):
        raise SolverError(f"re-evaluated time {ev.total_s:.6f} s disagrees with the LP's {lp_time:.6f} s "
                          f"at g={g}, N={N}")
    res = Result(scenario=sc, accounting=acc, status=solve.termination,
                 gpu_batch_size=g, num_gpu_batches=N, fractions=fractions, evaluation=ev, solve=solve,
                 resolve=lp_res if lp_res is not solve else None, bounds=bounds, build_s=build_s,
                 expert_setup=data.experts, expert_decision=data.expert_decision,
                 attention_requested=sc.policy.attention)
    res.binding_bounds = _binding(bounds, g, N)
    res.capped_by = capping_limits(data, g, N, sc, opts) if want_sensitivity else []
    res.notes = notes + _expected_traffic_notes(data)
    if want_sensitivity:
        res.sensitivity = compute_sensitivity(sc, data, g, N)
    if want_percents:
        res.flexllmgen_num_gpu_batches, res.flexllmgen_percent, res.flexllmgen_throughput = integer_percents(
            data, g, N, sc.solver.name, opts)
    res.total_s = time.perf_counter() - t_start
    return res


def _expected_traffic_notes(data: ModelData) -> list[str]:
    """Say so when the block-size one-hot stops short of where every expert surely moves."""
    if data.experts is None or data.experts.traffic != "expected":
        return []
    from .experts import MAX_EXACT_BLOCK_SIZE, exact_block_sizes

    _sizes, _flat, capped = exact_block_sizes(data.accounting, data.g_lo * data.N_lo,
                                              min(data.b_hi, data.g_hi * data.N_hi))
    if not capped:
        return []
    return [f"expected expert traffic is exact in the MILP up to block size {MAX_EXACT_BLOCK_SIZE}; above it the "
            f"MILP counts every expert as moving (the reported figures are exact at the chosen block size)"]


def _seed(data: ModelData, sc: Scenario, opts):
    """A good policy to start from when experts may be pinned or put on the CPU.

    Easier MILPs give policies that are feasible for the full one: the same scenario without
    the decisions, and (with CPU experts and expected traffic or pinning) every expert on the
    CPU. The best, re-solved exactly under the full model, is the incumbent of the block-size
    range search (:func:`model.block_ranges.search`): ranges whose relaxation cannot beat it are
    dropped, and it is the MIP start where its block size lies. The first (cheap) MILP gets at
    most a fifth of the time limit, the other at most half of what is left. Returns ``(g, N,
    data with the seed's decision, its fixed LP, the LP's result)`` or None.
    """
    from dataclasses import replace as dc_replace

    setup = data.experts
    variants = [dc_replace(setup, pin=False, cpu=False)]
    if setup.cpu and (setup.pin or setup.traffic == "expected"):
        # (with CPU experts alone the MILP finds that policy itself: memory-bound T4 host, 1.7 s. A seed of
        # "CPU experts alone, every expert moving", solved here before the range search, took up to 60 s)
        variants += ["every expert on the CPU"]
    best = None
    t0 = time.perf_counter()
    for i, variant in enumerate(variants):
        left = sc.solver.time_limit_s - (time.perf_counter() - t0)
        budget = {**opts, "time_limit_s": max(1.0, sc.solver.time_limit_s / 5 if i == 0 else left / 2)}
        if isinstance(variant, str):
            # Fiddler's regime as a policy of its own: the full MILP with every expert computed on the CPU
            # and none pinned, an easy MILP over (g, N) alone; the CPU-experts MILP above, with a routing
            # trace (per-layer decisions), can run out of its budget before it finds it (memory-bound T4
            # host: 2.13 tokens/s found in 20 s, against 3.76 for all on the CPU)
            m = build_model(data)
            for v in m.experts.on_cpu.values():
                v.fix(1)
            for v in (m.experts.pinned.values() if hasattr(m.experts, "pinned") else ()):
                v.fix(0)
            if best is not None and sc.solver.key == "highs":
                from . import fastlp

                # its LP relaxation (exact products: the roles are fixed) already no better than the seed
                # in hand: skip the MILP (T4 and A100 at prompt 512: 8 s each, for a policy 35% slower)
                if fastlp.relaxation_bound(fastlp.compile(m)) >= best[4].objective:
                    continue
        else:
            m = build_model(ModelData(**{**data.__dict__, "experts": variant if variant.active else None}))
        r = solvers.solve(m, sc.solver.name, is_mip=True, **budget)
        if not r.has_solution:
            continue
        g, N = _batch_sizes(m)
        full = _with_decision(ModelData(**{**data.__dict__, "experts": setup}), m)
        lp, res = _try_fixed(full, g, N, sc, budget)
        if lp is not None and (best is None or res.objective < best[4].objective):
            best = (g, N, full, lp, res)
    return best


# Above the exact value at the hint, so that the hint itself stays below the bound (solver tolerances).
HINT_BOUND_SLACK = 2e-6
# With a hint's bound, HiGHS's root reduced-cost heuristic finds little that the bound does not already
# give: off (with feasibility jump, now off for every solve), HiGHS's time over 2 x 100 consecutive
# a100_16g points fell by 19% and 8% (17.7 -> 14.3 s, 3.7 -> 3.4 s), the same answers. Options the
# user sets win.
HINTED_HIGHS_OPTIONS = {"mip_heuristic_run_root_reduced_cost": False}


def _solve_hinted(m, data: ModelData, sc: Scenario, opts, hint: tuple[int, int] | None):
    """Solve the MILP ``m``; with a usable hint, under HiGHS's ``objective_bound`` (the exact value at the
    hint, plus :data:`HINT_BOUND_SLACK`). HiGHS treats that bound as proven: given one below the optimum
    it returns a worse policy and calls it optimal, so an answer above the bound, or none, is thrown
    away and the MILP solved again without it. Returns the result and, with HiGHS and no expert
    decisions, ``(m, compiled m)`` for exact look-ups at other (g, N) (:func:`_exact_value`), else None."""
    milp = None
    compile_s = 0.0
    if sc.solver.key == "highs" and not data.has_expert_decisions:
        from . import fastlp

        t0 = time.perf_counter()
        milp = (m, fastlp.compile(m))
        compile_s = time.perf_counter() - t0   # counted in the solver's time, as when HiGHS compiles it itself

    def timed(res):
        return replace(res, wall_s=res.wall_s + compile_s)

    run = dict(is_mip=True, compiled=None if milp is None else milp[1])
    bound = _hint_bound(data, sc, hint, milp)
    if bound is None:
        return timed(solvers.solve(m, sc.solver.name, **run, **opts)), milp
    hinted = {**opts, "options": {**HINTED_HIGHS_OPTIONS, **opts["options"], "objective_bound": bound}}
    res = solvers.solve(m, sc.solver.name, **run, **hinted)
    if res.has_solution and res.objective is not None and res.objective <= bound and res.termination == "optimal":
        return timed(res), milp
    return timed(solvers.solve(m, sc.solver.name, **run, **opts)), milp


def _hint_bound(data: ModelData, sc: Scenario, hint: tuple[int, int] | None, milp=None) -> float | None:
    """The MILP objective bound a hint gives (HiGHS only), or None: no hint, another solver, an
    objective bound the user set, expert decisions, or a hint outside the bounds or that does not fit."""
    if hint is None or sc.solver.key != "highs" or "objective_bound" in sc.solver.options:
        return None
    if data.has_expert_decisions:
        return None
    value = _exact_value(data, *(int(x) for x in hint), milp=milp)
    return None if value is None else value * (1 + HINT_BOUND_SLACK)


def _exact_value(data: ModelData, g: int, N: int, milp=None) -> float | None:
    """The exact optimum's time per sequence at ``(g, N)`` through HiGHS straight (no solver interface),
    or None when ``(g, N)`` lies outside the search bounds or nothing fits there: a cheap first look
    before the configured solver is asked.

    ``milp``: ``(m, compiled m)``, the MILP without expert decisions, compiled for HiGHS. Its optimum
    with the batching family's integer variables fixed at ``(g, N)`` is the exact LP's there (the
    formulation is exact at integer points: tests/test_families.py), so no model is built; else
    the fixed-(g, N) model is built and solved."""
    if not (data.g_lo <= g <= data.g_hi and data.N_lo <= N <= data.N_hi and g * N <= data.b_hi):
        return None
    from . import fastlp

    if milp is not None:
        m, compiled = milp
        return fastlp.value_at(compiled, batching.integer_point(m, g, N))
    return fastlp.solve(build_model(_fixed_data(data, g, N)))


def _seed_result(sc: Scenario, bounds, seed, milp_res, build_s: float, t_start: float, opts, *extras,
                 extra_notes=()):
    """The seed policy as the answer: the full MILP found nothing better by more than the gap
    (``milp_res.termination``: "optimal" or "infeasible" when that is proven)."""
    g, N, full, lp, lp_res = seed
    proved = milp_res.termination in ("infeasible", "optimal")
    status = "optimal" if proved else "time_limit"
    bound = lp_res.objective * (1 - sc.solver.gap) if proved else milp_res.bound
    solve = solvers.SolveResult(solver=milp_res.solver, version=milp_res.version, termination=status,
                                has_solution=True, objective=lp_res.objective, bound=bound,
                                gap=None if bound is None else max(0.0, 1 - bound / lp_res.objective),
                                wall_s=milp_res.wall_s, message=milp_res.message)
    note = ("certified: with the expert decisions free, nothing beats this policy (found by an easier MILP) by "
            "more than the gap" if proved else
            f"the solver stopped ({milp_res.termination}) before improving on or certifying this policy "
            f"(found by an easier MILP)")
    return _report(sc, full, bounds, g, N, lp, lp_res, solve, build_s, [note, *extra_notes], opts, t_start,
                   *extras)


def _with_decision(data: ModelData, m) -> ModelData:
    """``data`` with the decisions of the solved model ``m`` fixed: the attention mode (when it was a
    decision) and the expert roles (empty without expert decisions)."""
    from .families.attention import decided

    mode = decided(m)
    if mode is not None:
        data = replace(data, attention_mode=mode)
    if data.experts is None:
        return data
    blk = m.experts
    pick = lambda name: frozenset(i for i, v in getattr(blk, name).items()  # noqa: E731
                                  if v.value is not None and v.value > 0.5) if hasattr(blk, name) else frozenset()
    return ModelData(**{**data.__dict__, "expert_decision": Decision(pinned=pick("pinned"), cpu=pick("on_cpu"))})


def _batch_sizes(m) -> tuple[int, int]:
    return int(round(pyo.value(m.batching.gpu_batch_size))), int(round(pyo.value(m.batching.num_gpu_batches)))


def _apply_facts(m, data: ModelData, facts) -> None:
    """Add the cuts that exact re-checks proved: g values that never fit, N caps per g."""
    for fact in facts:
        if fact[0] == "forbid_g":
            batching.forbid_batch_size(m, fact[1])
        else:
            batching.cap_num_batches(m, fact[1], fact[2], data.N_hi)


def _certify(m, data: ModelData, sc: Scenario, opts, milp, best, first, facts, max_rounds: int = 50,
             trust_bound: bool = True):
    """Prove a repaired policy is within the gap, improving it if the solver finds better.

    The solver's objective is optimistic when its (g, N) was infeasible by tolerances;
    without a bound from the solver, ``objective * (1 - gap)`` still bounds the true
    optimum from below (the solver solved a relaxation of our problem to that gap).
    When that does not certify the repaired policy, the MILP is re-solved with a
    cutoff ``t <= t_repaired * (1 - gap)`` and cuts that the exact re-checks proved
    (a g that fits with no N, and for each g tried the N above which nothing fits;
    feasibility is monotone in g and N): infeasible means certified; a new (g, N) is
    repaired and kept if better. Returns the best (lp, result, g, N) and notes. With
    ``trust_bound`` False (an exact LP beat the solver's bound, so the bound is void) the
    re-solve always runs.
    """
    gap = sc.solver.gap
    lp, lp_res, g, N = best
    lower = milp.bound if milp.bound is not None else milp.objective * (1 - gap)
    if trust_bound and lp_res.objective * (1 - gap) <= lower * (1 + 1e-9):
        return lp, lp_res, g, N, data, [f"the repaired policy is within the gap of the solver's bound "
                                         f"({100 * (1 - lower / lp_res.objective):.4f}%)"]
    batching.exclude_batch_sizes(m, *first)
    _apply_facts(m, data, facts)
    m.batching.cutoff = pyo.Constraint(expr=m.objective.time_per_seq_s <= lp_res.objective * (1 - gap),
                                       doc="certification: strictly better than the repaired policy")
    for _ in range(max_rounds):
        r = solvers.solve(m, sc.solver.name, is_mip=True, **opts)
        if r.termination == "infeasible":
            return lp, lp_res, g, N, data, [f"certified by re-solving with a cutoff: nothing is better than "
                                            f"{sc.workload.gen_len / lp_res.objective:.6g} tokens/s by more than "
                                            f"the gap"]
        if not r.has_solution:
            break
        tried = _batch_sizes(m)
        batching.exclude_batch_sizes(m, *tried)
        tried_data = _with_decision(data, m)
        cand = _resolve_with_repair(tried_data, *tried, sc, opts)
        _apply_facts(m, data, cand[5])
        if cand[1].objective < lp_res.objective:
            lp, lp_res, g, N = cand[:4]
            data = tried_data
            m.batching.cutoff.set_value(m.objective.time_per_seq_s <= lp_res.objective * (1 - gap))
    raise SolverError(f"{sc.solver.name}: could not certify the policy within the gap: the solver's tolerances "
                      f"are too loose for this model (best found g={g}, N={N}, "
                      f"{sc.workload.gen_len / lp_res.objective:.6g} tokens/s); try a larger solver.mip_gap "
                      f"or another solver")


def _fixed_data(data: ModelData, g: int, N: int) -> ModelData:
    return data.fixed_at(g, N)


def _has_integers(m) -> bool:
    return any(not v.is_continuous() for v in m.component_data_objects(pyo.Var, active=True))


def _try_fixed(data: ModelData, g: int, N: int, sc: Scenario, opts):
    """The fixed-(g, N) LP and its result, or ``(None, result)`` when it has no optimal solution."""
    lp = build_model(_fixed_data(data, g, N))
    fits, res = _solve_and_check(lp, sc, opts)
    return (lp if fits else None), res


def _resolve_with_repair(data: ModelData, g: int, N: int, sc: Scenario, opts):
    """Re-solve the LP at the MILP's (g, N); if that is infeasible in exact arithmetic, repair.

    A binary expansion multiplies the solver's integrality and feasibility tolerances
    by up to 2^k (docs/model.md section 7), and some solvers (glpsol) do not let us tighten them,
    so the MILP may return an (g, N) that is infeasible by a hair. Feasibility is
    monotone in g and in N (every memory term grows with g and b), so bisection finds
    the largest g' <= g that fits with N_lo (when g itself does not), then the largest
    N' that fits with g'. The caller then checks that the repaired policy is still
    within the gap of the MILP's objective or bound.
    """
    lp, res = _try_fixed(data, g, N, sc, opts)
    if lp is not None:
        return lp, res, g, N, [], []

    def largest(lo: int, hi: int, fits) -> tuple[int, tuple] | None:
        """Largest x in [lo, hi) with fits(x) (monotone: true up to some x, false after), by bisection."""
        at_lo = fits(lo)
        if at_lo[0] is None:
            return None
        best = (lo, at_lo)
        while hi - lo > 1:  # invariant: lo fits, hi does not
            mid = (lo + hi) // 2
            cand = fits(mid)
            if cand[0] is not None:
                lo, best = mid, (mid, cand)
            else:
                hi = mid
        return best

    g2 = g
    if N > data.N_lo and _try_fixed(data, g, data.N_lo, sc, opts)[0] is None:
        found = largest(data.g_lo, g, lambda x: _try_fixed(data, x, data.N_lo, sc, opts))
        g2 = None if found is None else found[0]
    elif N == data.N_lo:
        found = largest(data.g_lo, g, lambda x: _try_fixed(data, x, data.N_lo, sc, opts))
        g2 = None if found is None else found[0]
    if g2 is not None:
        n_hi = N if g2 == g else min(data.N_hi, data.b_hi // g2) + 1
        found = largest(data.N_lo, n_hi, lambda x: _try_fixed(data, g2, x, sc, opts))
        if found is not None:
            best_n, (lp, res) = found
            note = (f"the solver's choice g={g}, N={N} does not fit in exact arithmetic (solver tolerances); "
                    f"repaired to g={g2}, N={best_n} (the largest that fit, by bisection)")
            facts = [("forbid_g", x) for x in range(g2 + 1, g + 1)] + [("cap_N", g2, best_n)]
            return lp, res, g2, best_n, [note], facts
    if _try_fixed(data, data.g_lo, data.N_lo, sc, opts)[0] is None:
        # nothing fits at the smallest (g, N) either: the scenario is infeasible (the MILP's answer fit only
        # within its tolerances); say what is short
        raise Infeasible(explain_infeasible(data))
    raise SolverError(f"{sc.solver.name}: the MILP's g={g}, N={N} is infeasible and no smaller (g, N) fits: "
                      f"the solver's tolerances are too loose for this model ({res.termination})")


def _solve_fixed(data: ModelData, g: int, N: int, sc: Scenario, opts):
    t0 = time.perf_counter()
    fixed_data = _fixed_data(data, g, N)
    lp = build_model(fixed_data)
    build_s = time.perf_counter() - t0
    res = solvers.solve(lp, sc.solver.name, is_mip=_has_integers(lp), **opts)
    if not res.has_solution or res.termination != "optimal":
        if res.termination == "infeasible":
            raise Infeasible([f"no placement fits at gpu_batch_size={g}, num_gpu_batches={N}: "
                              + "; ".join(explain_infeasible(data))])
        raise SolverError(f"fixed-(g={g}, N={N}) LP ended {res.termination} with {res.solver}")
    return lp, res, build_s


def _optimistic(milp, lp, gap: float) -> bool:
    """Whether the exact LP at the MILP's (g, N) is worse than the MILP's objective beyond the gap."""
    return lp.objective > milp.objective * (1 + max(gap, 1e-6) + 1e-7)


def _bound_beaten(milp, lp, gap: float) -> bool:
    """Whether the exact LP at the MILP's (g, N) is better than the MILP's own bound beyond the gap."""
    return milp.bound is not None and lp.objective < milp.bound * (1 - max(gap, 1e-6) - 1e-7)


def _better_next(data: ModelData, g: int, N: int, lp_res, sc: Scenario, opts, milp=None):
    """The exact policy at ``(g, N + 1)`` as ``(lp, result, g, N + 1)`` when it fits and is better than
    ``lp_res`` (the MILP's answer), else None.

    At an optimum, one more GPU batch either does not fit or is no better (beyond the gap). The
    binary expansion of N makes ``N = 2^k - 1`` a place where a solver misled by its tolerances
    stops: it pruned the whole subtree of bit ``k`` (HiGHS did, on about 1 in 200 models, answers
    up to 1.4e-3 worse). One exact LP checks it; a better neighbour voids the solver's claim.
    """
    value = _exact_value(data, g, N + 1, milp)   # the usual answer is "no": asked of HiGHS straight first
    if value is None or not value < lp_res.objective * (1 - 1e-9):
        return None
    lp, res = _try_fixed(data, g, N + 1, sc, opts)
    if lp is None or not res.objective < lp_res.objective * (1 - 1e-9):
        return None
    return lp, res, g, N + 1


def _check_agreement(milp, lp, gap: float, g: int, N: int) -> None:
    """The fixed-(g, N) LP must reproduce the MILP's objective within the gap (docs/model.md section 8.3)."""
    tol = max(gap, 1e-6) + 1e-7
    if lp.objective > milp.objective * (1 + tol):
        raise SolverError(f"fixed-(g={g}, N={N}) LP time {lp.objective:.9g} is worse than the MILP's "
                          f"{milp.objective:.9g} by more than the gap: the MILP's policy was not feasible")
    if milp.bound is not None and lp.objective < milp.bound * (1 - tol):
        raise SolverError(f"fixed-(g={g}, N={N}) LP time {lp.objective:.9g} beats the MILP's bound "
                          f"{milp.bound:.9g}: the MILP relaxation is wrong")


def _binding(bounds: SearchBounds, g: int, N: int) -> list[str]:
    """Search bounds the policy sits on: caps from memory or ``search.*`` (a bound the user fixed
    with ``policy.*`` is the policy, not a bound)."""
    out = []
    if g == bounds.g_hi and bounds.source["g_hi"] != "policy" and (bounds.g_lo != bounds.g_hi
                                                                    or bounds.source["g_hi"].startswith("search")):
        out.append(f"gpu_batch_size = {g} is at its upper bound ({bounds.source['g_hi']})")
    if N == bounds.N_hi and bounds.source["N_hi"] != "policy" and (bounds.N_lo != bounds.N_hi
                                                                    or bounds.source["N_hi"].startswith("search")):
        out.append(f"num_gpu_batches = {N} is at its upper bound ({bounds.source['N_hi']})")
    if g * N == bounds.b_hi:
        out.append(f"block size g*N = {g * N} is at its upper bound (memory)")
    return out


def integer_percents(data: ModelData, g: int, N: int, solver: str, opts):
    """FlexLLMGen's flags: six integer percents that fit, with the best throughput.

    First at the policy's own ``(g, N)``; when no integer percents fit there (the
    continuous optimum often fills a capacity exactly), at the largest ``N' < N``
    where some do (feasibility is monotone in N, so bisection finds it).
    Returns ``(N', percent, throughput)`` or ``(None, None, None)``.
    """
    found = _integer_percents_at(data, g, N, solver, opts)
    if found is not None:
        return (N, *found)
    lo, hi, best = data.N_lo, N, None
    first = _integer_percents_at(data, g, lo, solver, opts)
    if first is None:
        return None, None, None
    best = (lo, *first)
    while hi - lo > 1:  # invariant: lo has integer percents, hi has none
        mid = (lo + hi) // 2
        cand = _integer_percents_at(data, g, mid, solver, opts)
        if cand is None:
            hi = mid
        else:
            lo, best = mid, (mid, *cand)
    return best


def _integer_percents_at(data: ModelData, g: int, N: int, solver: str, opts):
    """Best integer percents at fixed ``(g, N)`` by a small MIP, re-checked exactly; None if none fit."""
    m = build_model(_fixed_data(data, g, N))
    m.integer_percent = blk = pyo.Block(doc="FlexLLMGen's integer percents")
    blk.percent = pyo.Var(m.TENSOR_KINDS, m.DEVICES, domain=pyo.Integers, bounds=(0, 100),
                          doc="Percent of a tensor kind on a device")
    blk.percents_sum_to_100 = pyo.Constraint(
        m.TENSOR_KINDS, rule=lambda b, k: sum(b.percent[k, d] for d in m.DEVICES) == 100,
        doc="sum_d percent[k, d] = 100")
    blk.fraction_is_percent = pyo.Constraint(
        m.placement.SEQ_KINDS, m.DEVICES,
        rule=lambda b, k, d: m.placement.fraction[k, d] == b.percent[k, d] / 100, doc="p = percent / 100")
    blk.weights_fraction_is_percent = pyo.Constraint(
        m.DEVICES, rule=lambda b, d: m.placement.weights_fraction[d] == b.percent["weights", d] / 100,
        doc="p[weights, d] = percent / 100")
    r = solvers.solve(m, solver, is_mip=True, **{**opts, "mip_gap": 1e-6})
    if not r.has_solution:
        return None
    pct = {(k, d): int(round(pyo.value(blk.percent[k, d]))) for k in TENSOR_KINDS for d in DEVICES}
    six = tuple(x for k in TENSOR_KINDS for x in (pct[(k, "gpu")], pct[(k, "cpu")]))
    p = fractions_from_percent(six)
    point, bad = at_point(data, g, N, p, solver, opts)
    if bad:
        return None
    return six, evaluation(point, data.fixed_at(g, N), g, N).throughput_tokens_per_s


def capping_limits(data: ModelData, g: int, N: int, sc: Scenario, opts) -> list[str]:
    """The limits that decide the batch sizes: one more GPU batch ``(g, N+1)`` (or ``(g+1, N)``) does
    not fit, and would if that limit alone were lifted. An LP dual cannot see these (at the chosen
    ``(g, N)`` the limit may have slack); they are what the integer choice ran into."""
    out = []
    for g2, N2 in ((g, N + 1), (g + 1, N)):
        if g2 > data.g_hi or N2 > data.N_hi:
            continue   # beyond the search bounds: reported as a binding bound instead
        m = build_model(data.fixed_at(g2, N2))
        if _fixed_fits(m, sc, opts):
            continue
        by_field: dict[str, list] = {}
        for lim in limits(m):
            by_field.setdefault(lim.field, []).append(lim)
        for fld, group in by_field.items():
            for lim in group:
                lim.constraint.deactivate()
            if _fixed_fits(m, sc, opts):
                what = f"{group[0].group} ({'one more GPU batch' if N2 > N else 'a larger GPU batch size'} "\
                       f"would break it)"
                if what not in out and not any(o.startswith(group[0].group) for o in out):
                    out.append(what)
            for lim in group:
                lim.constraint.activate()
    return out


def _fixed_fits(m, sc: Scenario, opts) -> bool:
    return _solve_and_check(m, sc, opts)[0]


def _solve_and_check(m, sc: Scenario, opts):
    """Solve a fixed model; ``(fits, result)``: optimal, and its cleaned, completed point breaks no row
    (the one fit tolerance)."""
    res = solvers.solve(m, sc.solver.name, is_mip=_has_integers(m), **opts)
    if not (res.has_solution and res.termination == "optimal"):
        return False, res
    clean_point(m)
    complete(m)
    return not check(m), res


def _field_range(path: str) -> tuple[float | None, float | None]:
    """The validator's (lowest positive, highest) accepted value of a dotted scenario field."""
    import dataclasses as dc
    import typing

    from . import scenario as scn

    cls, meta = scn.Scenario, None
    for part in path.split("."):
        hints = typing.get_type_hints(cls)
        fld = {f.name: f for f in dc.fields(cls)}[part]
        meta, tp = fld.metadata, hints[part]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        cls = inner[0]
    lo = meta.get("gt") if meta.get("gt") is not None else meta.get("ge")
    hi = meta.get("le") if meta.get("le") is not None else meta.get("lt")
    if path.startswith("hardware.memory_gib."):
        lo = scn.MEMORY_MIN_GIB
    return lo, hi


def _relaxed_fits(sc: Scenario, overrides: dict) -> bool:
    """Whether the scenario with ``overrides`` has any feasible policy (a quick MILP, gap 1e-2)."""
    from .errors import InputError
    from .scenario import override

    try:
        data, _bounds = model_data(override(sc, overrides))
    except (Infeasible, InputError):
        return False
    m = build_model(data)
    try:
        r = solvers.solve(m, "highs", time_limit_s=60, mip_gap=1e-2,
                          is_mip=not (data.g_lo == data.g_hi and data.N_lo == data.N_hi and data.experts is None))
    except SolverError:
        return False
    return r.has_solution


def explain_infeasible(data: ModelData) -> list[str]:
    """Say which limit is short and by how much: relax each family's limits in turn.

    Every limit a family registered (:mod:`model.limits`: memory of each device, the block
    latency limit, ...) names the scenario field that relaxes it. For each such field alone, the
    field is set to the largest value the validator accepts; if that restores feasibility, the
    least value that works is found by bisection (feasibility is monotone in it) to 1%, and the
    hint is kept within the validator's range.
    """
    sc = data.scenario
    m = build_model(data)
    groups: dict[str, object] = {}
    # requirements (a latency limit) before resources (memory): a requirement that cannot be met is the news
    for lim in sorted(limits(m), key=lambda lim: lim.family == "capacity"):
        groups.setdefault(lim.field, lim)
    lines = []
    for fld, lim in groups.items():
        have = field_value(sc, fld)
        lo_ok, hi_ok = _field_range(fld)
        if hi_ok is None or not _relaxed_fits(sc, {fld: hi_ok}):
            continue
        lo, hi = (have if have else 0.0), float(hi_ok)   # lo does not fit, hi does
        while hi - lo > 0.01 * hi:
            mid = (lo * hi) ** 0.5 if lo > 0 else max(hi / 64, lo_ok or 0.0)
            if mid <= lo:
                break
            if _relaxed_fits(sc, {fld: mid}):
                hi = mid
            else:
                lo = mid
        have_text = "none" if have is None else f"{have:g} {lim.unit}"
        lines.append(f"{lim.group} is short ({fld}): nothing fits with {have_text}; it would with about "
                     f"{hi:.4g} {lim.unit}" + (f" ({hi - have:+.4g} {lim.unit}, alone)" if have is not None else
                                               " (alone)"))
    return lines or ["no single limit is short: no policy satisfies the memory capacities"
                     + (" and the other limits" if len(groups) > 3 else "") + " together"]
