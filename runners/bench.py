"""python -m runners.bench: MILP build + solve time against exhaustive enumeration.

For each scenario (default: every shipped one) it reports the median over
``--repeats`` runs of model build time and solve time (MILP plus the fixed-(g, N)
LP re-solve), and, once, the time of exhaustively solving the fixed-(g, N) LP over
the same search bounds (``model.enumerate``), with the ratio. Both must find the
same optimum; a disagreement beyond the MIP gap is printed as an error.
Speed is reported, never asserted: machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from model import load_scenario, solvers
from model.build import build_model
from model.enumerate import enumerate_policies
from model.optimize import model_data

ROOT = Path(__file__).resolve().parents[1]


def milp_once(sc):
    """(build seconds, solve seconds, throughput, g, N) for one MILP solve of ``sc``."""
    import pyomo.environ as pyo

    t0 = time.perf_counter()
    data, bd = model_data(sc)
    m = build_model(data)
    build_s = time.perf_counter() - t0
    r = solvers.solve(m, sc.solver.name, time_limit_s=sc.solver.time_limit_s, mip_gap=sc.solver.mip_gap,
                      threads=sc.solver.threads, options=sc.solver.options)
    g = int(round(pyo.value(m.batching.gpu_batch_size)))
    N = int(round(pyo.value(m.batching.num_gpu_batches)))
    return build_s, r.wall_s, sc.workload.gen_len / r.objective, g, N, r, (data, bd)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runners.bench", description=__doc__.split("\n")[0])
    ap.add_argument("scenarios", nargs="*", help="scenario files (default: scenarios/*.yaml)")
    ap.add_argument("--repeats", type=int, default=5, help="MILP runs per scenario (median reported)")
    ap.add_argument("--no-enumeration", action="store_true", help="skip the exhaustive enumeration")
    ap.add_argument("--solvers", default=None,
                    help="comma-separated solvers to time (default: the scenario's own)")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.scenarios] or sorted((ROOT / "scenarios").glob("*.yaml"))
    names = args.solvers.split(",") if args.solvers else [None]
    print(f"{'scenario':<16} {'solver':<8} {'build s':>8} {'solve s':>8} {'tokens/s':>10} {'g':>4} {'N':>6}"
          f" {'enum s':>8} {'LPs':>7} {'enum/milp':>9}")
    status = 0
    for path in paths:
        base = load_scenario(path)
        for name in names:
            sc = base if name is None else _with_solver(base, name)
            runs = [milp_once(sc) for _ in range(args.repeats)]
            build = statistics.median(r[0] for r in runs)
            solve = statistics.median(r[1] for r in runs)
            _, _, tput, g, N, res, (data, bd) = runs[0]
            enum = ""
            if not args.no_enumeration and name in (None, names[0]):
                e = enumerate_policies(data.accounting, data.capacity_gib, data.alpha, bd.g_lo, bd.g_hi, bd.N_lo,
                                       bd.N_hi, bd.b_hi, data.fixed_fractions)
                ratio = e.seconds / (build + solve)
                enum = f" {e.seconds:8.2f} {e.lps_solved:7d} {ratio:8.1f}x"
                if e.best_throughput is None or abs(e.best_throughput - tput) > sc.solver.mip_gap * e.best_throughput \
                        + 1e-9:
                    print(f"ERROR {path.stem}: enumeration best {e.best_throughput} at g={e.best_g}, N={e.best_N} "
                          f"vs MILP {tput} at g={g}, N={N}", file=sys.stderr)
                    status = 1
            print(f"{path.stem:<16} {res.solver:<8} {build:8.3f} {solve:8.3f} {tput:10.4f} {g:4d} {N:6d}{enum}",
                  flush=True)
    return status


def _with_solver(sc, name):
    from model.scenario import override

    return override(sc, {"solver.name": name})


if __name__ == "__main__":
    sys.exit(main())
