"""python -m runners.bench: MILP build + solve time against exhaustive enumeration.

For each scenario (default: every shipped one) and solver it reports the median
over ``--repeats`` runs of model build time, MILP solve time and the whole
``optimize()`` (LP re-solve, repair and integer FlexLLMGen percents included),
the MILP time relative to HiGHS, and, once per scenario, the time of exhaustively
solving the fixed-(g, N) LP over the same search bounds (``model.enumerate``)
with its ratio to build + MILP. Both must find the
same optimum; a disagreement beyond the MIP gap is printed as an error.
Speed is reported, never asserted: machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from model import load_scenario, optimize, override
from model.enumerate import enumerate_policies
from model.optimize import model_data

ROOT = Path(__file__).resolve().parents[1]


def optimize_once(sc):
    """One full optimize() run: (build s, MILP solve s, total s, result)."""
    res = optimize(sc)
    return res.build_s, res.solve.wall_s, res.total_s, res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runners.bench", description=__doc__.split("\n")[0])
    ap.add_argument("scenarios", nargs="*", help="scenario files (default: scenarios/*.yaml)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per scenario and solver (median reported)")
    ap.add_argument("--no-enumeration", action="store_true", help="skip the exhaustive enumeration")
    ap.add_argument("--enumerate", default="t4_reference,a100_16g", metavar="NAMES",
                    help="comma-separated scenario names to enumerate exhaustively (each takes ~40 s: "
                         "~80,000 LPs), or 'all' (default: %(default)s)")
    ap.add_argument("--solvers", default=None,
                    help="comma-separated solvers to time, e.g. highs,cbc,glpk,scip (default: the scenario's own)")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.scenarios] or sorted((ROOT / "scenarios").glob("*.yaml"))
    names = args.solvers.split(",") if args.solvers else [None]
    print(f"{'scenario':<16} {'solver':<7} {'build s':>8} {'MILP s':>8} {'total s':>8} {'vs highs':>8} "
          f"{'tokens/s':>10} {'g':>4} {'N':>6} {'enum s':>8} {'LPs':>7} {'enum/(build+MILP)':>17}")
    status = 0
    for path in paths:
        base = load_scenario(path)
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
                data, bd = model_data(sc)
                e = enumerate_policies(data.accounting, data.capacity_gib, data.alpha, bd.g_lo, bd.g_hi, bd.N_lo,
                                       bd.N_hi, bd.b_hi, data.fixed_fractions)
                enum = f" {e.seconds:8.2f} {e.lps_solved:7d} {e.seconds / (build + solve):16.1f}x"
                tput = res.throughput_tokens_per_s
                if e.best_throughput is None or tput < e.best_throughput * (1 - sc.solver.mip_gap) - 1e-9 \
                        or tput > e.best_throughput * (1 + 1e-7):
                    print(f"ERROR {path.stem}: enumeration best {e.best_throughput} at g={e.best_g}, N={e.best_N} "
                          f"vs MILP {tput} at g={res.gpu_batch_size}, N={res.num_gpu_batches}", file=sys.stderr)
                    status = 1
            print(f"{path.stem:<16} {res.solve.solver:<7} {build:8.3f} {solve:8.3f} {total:8.3f} {vs} "
                  f"{res.throughput_tokens_per_s:10.4f} {res.gpu_batch_size:4d} {res.num_gpu_batches:6d}{enum}",
                  flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
