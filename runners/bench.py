"""python -m runners.bench: MILP build + solve time against exhaustive enumeration.

For each scenario (default: every shipped one) and solver it reports the median
over ``--repeats`` runs of model build time, MILP solve time and the whole
``optimize()`` (LP re-solve, repair and integer FlexLLMGen percents included),
the MILP time relative to HiGHS, and, once per scenario, the time of exhaustively
solving the fixed-(g, N) LP over the same search bounds (``model.enumerate``)
with its ratio to build + MILP. Both must find the
same optimum; a disagreement beyond the MIP gap is printed as an error.
Speed is reported, never asserted: machines here are shared and noisy.

``--experts`` instead solves the expert-aware variants of the README table
(reference assumptions, expected traffic, a skewed routing trace, pinning, CPU
experts, everything) for each scenario at generation lengths 32 and 256, and
prints throughput, the policy chosen and the solve time of each; the default run (no
scenarios, no ``--set``) adds the memory-bound T4 host of the README's second table, and a
last line counts the rows that ended optimal, with the median and slowest whole row.

``--reference161`` instead times the core MILP over the original script's 161 scenarios and
``t4_reference`` (``runners/bench_speed.py``; ``--variant`` compares settings in the same run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from model import InputError, load_scenario, optimize, override
from model.inputs import parse_yaml
from model.solvers import SOLVERS
from model.enumerate import enumerate_policies
from model.optimize import model_data
from runners.cli import OneLineParser, add_debug_flag, main_guard

ROOT = Path(__file__).resolve().parents[1]


def optimize_once(sc):
    """One full optimize() run: (build s, MILP solve s, total s, result)."""
    res = optimize(sc)
    return res.build_s, res.solve.wall_s, res.total_s, res


TRACE = ROOT / "scenarios" / "traces" / "mixtral_skewed.jsonl"
# (label, experts section): the README "Expert-aware policies" table, one row each
EXPERT_VARIANTS = [
    ("reference assumptions", {}),
    ("expected traffic", {"expert_traffic": "expected"}),
    ("expected + skewed trace", {"expert_traffic": "expected", "routing_trace": str(TRACE)}),
    ("pinning + expected + trace", {"pin_experts": True, "expert_traffic": "expected", "routing_trace": str(TRACE)}),
    ("CPU experts", {"cpu_experts": True}),
    ("all + trace", {"pin_experts": True, "cpu_experts": True, "expert_traffic": "expected",
                     "routing_trace": str(TRACE)}),
]


# The memory-bound T4 host of the README's second expert table: 100 GiB of CPU memory, no disk,
# prompts of 4,096 tokens, generation 256. Only 11 sequences' KV cache fits there, so the expert
# features matter most (CPU experts: 2.7x); the default ``--experts`` run includes it.
MEMORY_BOUND_HOST = ("t4_host100_4k", ROOT / "scenarios" / "t4_reference.yaml",
                     {"hardware.memory_gib.cpu": 100, "hardware.memory_gib.disk": 0, "workload.prompt_len": 4096},
                     (256,))


DEFAULT_GEN_LENS = "32,256"


def experts_table(paths, gen_lens, time_limit: float, only=None, sets=None, extra_cases=()) -> int:
    """Throughput and policy of each expert-aware variant (README table), then the number of rows
    that ended optimal and the median and slowest whole row (issue 13's measures).

    ``extra_cases``: ``(label, scenario path, overrides, generation lengths)`` run after ``paths``."""
    cases = [(path.stem, path, dict(sets or {}), gen_lens) for path in paths] + list(extra_cases)
    bases = [load_scenario(path) for _label, path, _sets, _lens in cases]   # bad input before any output
    print(f"{'scenario':<14} {'n':>4} {'variant':<31} {'tokens/s':>9} {'vs ref':>7} {'g':>4} {'N':>5} "
          f"{'pinned':>6} {'CPU':>4} {'moved/layer':>11} {'status':<10} {'solve s':>8} {'total s':>8}")
    rows = []
    for (label_, _path, case_sets, lens), base in zip(cases, bases):
        for n in lens:
            ref = None
            if only and EXPERT_VARIANTS[0][0] not in only:   # the ratios are against the reference assumptions
                ref = optimize(override(base, {**case_sets, "workload.gen_len": n,
                                               "solver.time_limit_s": time_limit})).throughput_tokens_per_s
            for label, experts in EXPERT_VARIANTS:
                if only and label not in only:
                    continue
                sc = override(base, {**case_sets, "workload.gen_len": n, "solver.time_limit_s": time_limit,
                                     **{f"experts.{k}": v for k, v in experts.items()}})
                res = optimize(sc)
                tput = res.throughput_tokens_per_s
                ref = tput if ref is None else ref
                moved = res.expected_experts_moved_per_layer or {}
                mv = (f"{min(moved.values()):.2f}" if moved and max(moved.values()) - min(moved.values()) < 5e-3
                      else f"{min(moved.values()):.2f}-{max(moved.values()):.2f}" if moved else "")
                rows.append((res.status, res.total_s))
                print(f"{label_:<14} {n:4d} {label:<31} {tput:9.4f} {tput / ref:6.3f}x {res.gpu_batch_size:4d} "
                      f"{res.num_gpu_batches:5d} {len(res.pinned_experts):6d} {len(res.cpu_experts):4d} {mv:>11} "
                      f"{res.status:<10} {res.solve.wall_s:8.2f} {res.total_s:8.2f}", flush=True)
    if rows:
        totals = [t for _s, t in rows]
        optimal = sum(s == "optimal" for s, _t in rows)
        print(f"{len(rows)} rows: {optimal} optimal, {len(rows) - optimal} not; whole row median "
              f"{statistics.median(totals):.2f} s, slowest {max(totals):.2f} s")
    return 0


def _items(text: str, flag: str) -> list[str]:
    """A comma-separated list flag: no empty entries, none given twice."""
    items = [x.strip() for x in text.split(",")]
    if not text.strip() or any(not x for x in items):
        raise InputError(flag, text, "expected a comma-separated list without empty entries")
    dup = next((x for x in items if items.count(x) > 1), None)
    if dup is not None:
        raise InputError(flag, text, f"{dup!r} is given twice")
    return items


def _gen_lens(text: str) -> list[int]:
    from model.scenario import LENGTH_MAX

    out = []
    for x in _items(text, "--gen-lens"):
        if not x.isdigit() or not 1 <= int(x[:9]) <= LENGTH_MAX or len(x) > 9:
            raise InputError("--gen-lens", text, f"{x!r} is not a generation length in 1..{LENGTH_MAX}")
        out.append(int(x))
    return out


def check_args(args) -> None:
    """Bad flags are bad input (exit 2) before any work starts."""
    if args.repeats < 1 or args.repeats > 1000:
        raise InputError("--repeats", args.repeats, "must be in 1..1000")
    if not (0 < args.time_limit <= 1e7):   # also NaN
        raise InputError("--time-limit", args.time_limit, "must be > 0 and <= 1e7 seconds")
    if args.solvers is not None:
        for name in _items(args.solvers, "--solvers"):
            if name.lower() not in SOLVERS:
                raise InputError("--solvers", args.solvers, f"unknown solver {name!r} (known: {', '.join(sorted(SOLVERS))})")
    if args.variants is not None:
        known = [label for label, _ in EXPERT_VARIANTS]
        for label in _items(args.variants, "--variants"):
            if label not in known:
                raise InputError("--variants", args.variants, f"unknown variant {label!r} (known: {'; '.join(known)})")
        if not args.experts:
            raise InputError("--variants", args.variants, "applies only with --experts")
    _gen_lens(args.gen_lens)
    if args.enumerate not in ("all", ""):
        _items(args.enumerate, "--enumerate")


def main(argv=None) -> int:
    ap = OneLineParser(prog="python -m runners.bench", description=__doc__.split("\n")[0])
    ap.add_argument("scenarios", nargs="*", help="scenario files (default: scenarios/*.yaml)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per scenario and solver (median reported)")
    ap.add_argument("--no-enumeration", action="store_true", help="skip the exhaustive enumeration")
    ap.add_argument("--enumerate", default="", metavar="NAMES",
                    help="comma-separated scenario names to enumerate exhaustively, or 'all' (default: none). "
                         "Every fixed (g, N) model is built and solved (the same rows as the MILP, model.enumerate): "
                         "t4_reference and a100_16g have ~80,000 each, about 10 minutes apiece here")
    ap.add_argument("--solvers", default=None,
                    help="comma-separated solvers to time, e.g. highs,cbc,glpk,scip (default: the scenario's own)")
    ap.add_argument("--experts", action="store_true",
                    help="the expert-aware variants of the README table instead (default scenarios: "
                         "t4_reference, a100_16g; generation lengths 32 and 256)")
    ap.add_argument("--gen-lens", default=DEFAULT_GEN_LENS,
                    help="--experts: generation lengths (default: %(default)s; the default run, without "
                         "scenarios or --set, ends with the memory-bound T4 host: 100 GiB CPU memory, no "
                         "disk, prompt 4096, generation 256)")
    ap.add_argument("--time-limit", type=float, default=600.0,
                    help="--experts: solver time limit per variant, s (default: %(default)s)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="--experts: a scenario override, e.g. hardware.memory_gib.cpu=100 (repeatable)")
    ap.add_argument("--variants", default=None,
                    help="--experts: comma-separated variant labels to run (default: all)")
    ap.add_argument("--probe", action="store_true",
                    help="instead: runners.probe's CPU memory bandwidth and GEMM figures next to a direct numpy "
                         "copy and matmul timed in the same run, as ratios (runners/bench_probe.py)")
    ap.add_argument("--fidelity", action="store_true",
                    help="the README's fidelity table instead: each shipped measurement (the positional "
                         "arguments are measurements CSVs; default scenarios/measurements/*.csv) against the "
                         "model's prediction, shipped and calibrated (runners/bench_fidelity.py)")
    ap.add_argument("--fit-gen-lens", default="32,128",
                    help="--fidelity: the generation lengths the held-out check fits on (default: %(default)s)")
    ap.add_argument("--reference161", action="store_true",
                    help="instead: the core MILP over the 161 scenarios of scenarios/reference/ (solver median, "
                         "90th percentile, slowest; optimize() median) and, with --repeats, t4_reference's solver "
                         "and whole-command medians (runners/bench_speed.py)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="--reference161: a variant to compare, scenario overrides after the name, e.g. "
                         "gap4:solver.mip_gap=1e-4 (repeatable; interleaved over the same scenarios; "
                         "default: the scenario's own settings)")
    ap.add_argument("--limit", type=int, default=None, metavar="K",
                    help="--reference161: only the first K scenarios")
    ap.add_argument("--seeds", type=int, default=1, metavar="K",
                    help="--reference161: solve each scenario once per HiGHS random_seed 0..K-1 and report its "
                         "mean time and worst answer (default 1: the solver's default seed only)")
    ap.add_argument("--csv", default=None, metavar="FILE",
                    help="--reference161: write one row per scenario and variant (status, tokens/s, g, N, seconds)")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    if args.reference161:
        from runners.bench_speed import parse_variant, reference161
        repeats = args.repeats if "--repeats" in (sys.argv[1:] if argv is None else argv) else 0
        return reference161([parse_variant(v) for v in args.variant], repeats, args.limit, args.csv,
                            seeds=args.seeds)
    if args.probe:
        from runners.bench_probe import probe_table
        return probe_table()
    if args.fidelity:
        from runners.bench_fidelity import fidelity_table, parse_gen_lens
        return fidelity_table([Path(p) for p in args.scenarios], parse_gen_lens(args.fit_gen_lens))
    check_args(args)
    if args.experts:
        paths = [Path(p) for p in args.scenarios] or [ROOT / "scenarios" / "t4_reference.yaml",
                                                      ROOT / "scenarios" / "a100_16g.yaml"]
        only = set(_items(args.variants, "--variants")) if args.variants is not None else None
        sets = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise InputError("--set", item, "expected KEY=VALUE, e.g. hardware.memory_gib.cpu=100")
            sets[key.strip()] = parse_yaml(value, item, "--set")   # bounded, one-line errors
        default_run = not args.scenarios and not sets and args.gen_lens == DEFAULT_GEN_LENS
        return experts_table(paths, _gen_lens(args.gen_lens), args.time_limit, only, sets,
                             [MEMORY_BOUND_HOST] if default_run else [])
    paths = [Path(p) for p in args.scenarios] or sorted((ROOT / "scenarios").glob("*.yaml"))
    names = _items(args.solvers, "--solvers") if args.solvers is not None else [None]
    bases = [load_scenario(path) for path in paths]   # bad input before any output
    print(f"{'scenario':<16} {'solver':<7} {'build s':>8} {'MILP s':>8} {'total s':>8} {'vs highs':>8} "
          f"{'tokens/s':>10} {'g':>4} {'N':>6} {'enum s':>8} {'LPs':>7} {'enum/(build+MILP)':>17}")
    status = 0
    for path, base in zip(paths, bases):
        highs_solve = None
        for name in names:
            sc = base if name is None else override(base, {"solver.name": name})
            runs = [optimize_once(sc) for _ in range(args.repeats)]
            build = statistics.median(r[0] for r in runs)
            solve = statistics.median(r[1] for r in runs)
            total = statistics.median(r[2] for r in runs)
            res = runs[0][3]
            if res.solve.solver == "highs":
                highs_solve = solve
            vs = f"{solve / highs_solve:7.2f}x" if highs_solve else f"{'':8}"
            enum = ""
            wanted = args.enumerate == "all" or path.stem in args.enumerate.split(",")
            if not args.no_enumeration and wanted and name in (None, names[0]):
                data, bd = model_data(res.scenario)   # the attention mode that optimize() chose
                e = enumerate_policies(data, prune=True)
                enum = f" {e.seconds:8.2f} {e.lps_solved:7d} {e.seconds / (build + solve):16.1f}x"
                tput = res.throughput_tokens_per_s
                if e.best_throughput is None or tput < e.best_throughput * (1 - sc.solver.gap) - 1e-9 \
                        or tput > e.best_throughput * (1 + 1e-7):
                    print(f"ERROR {path.stem}: enumeration best {e.best_throughput} at g={e.best_g}, N={e.best_N} "
                          f"vs MILP {tput} at g={res.gpu_batch_size}, N={res.num_gpu_batches}", file=sys.stderr)
                    status = 1
            print(f"{path.stem:<16} {res.solve.solver:<7} {build:8.3f} {solve:8.3f} {total:8.3f} {vs} "
                  f"{res.throughput_tokens_per_s:10.4f} {res.gpu_batch_size:4d} {res.num_gpu_batches:6d}{enum}",
                  flush=True)
    return status


if __name__ == "__main__":
    main_guard(main)
