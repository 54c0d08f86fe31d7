"""python -m runners.solve SCENARIO.yaml [flags]: the throughput-optimal policy, or one policy evaluated.

Flags override the scenario file (the original script's flags). Fixing all of
--gpu-batch-size, --num-gpu-batches and --percent evaluates that policy; fixing
some optimizes the rest.

Exit status: 0 a policy was found or evaluated; 1 infeasible, or no policy
(solver failure, time limit without one); 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyomo.environ as pyo

from model import Infeasible, InputError, SolverError, evaluate_policy, load_scenario, optimize
from model.optimize import build_for
from model.report import to_json, to_text

# flag -> scenario field it overrides
FLAG_FIELDS = {
    "prompt_len": ("--prompt-len", "workload.prompt_len"),
    "gen_len": ("--gen-len", "workload.gen_len"),
    "gpu_mem": ("--gpu-mem", "hardware.memory_gib.gpu"),
    "cpu_mem": ("--cpu-mem", "hardware.memory_gib.cpu"),
    "nvme_mem": ("--nvme-mem", "hardware.memory_gib.disk"),
    "gpu_batch_size": ("--gpu-batch-size", "policy.gpu_batch_size"),
    "num_gpu_batches": ("--num-gpu-batches", "policy.num_gpu_batches"),
    "percent": ("--percent", "policy.percent"),
    "alpha_g": ("--alpha-g", "hardware.alpha.gpu"),
    "alpha_c": ("--alpha-c", "hardware.alpha.cpu"),
    "alpha_n": ("--alpha-n", "hardware.alpha.disk"),
    "solver": ("--solver", "solver.name"),
    "time_limit": ("--time-limit", "solver.time_limit_s"),
    "mip_gap": ("--mip-gap", "solver.mip_gap"),
    "threads": ("--threads", "solver.threads"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        self.exit(2, f"error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m runners.solve",
                description="Find the throughput-optimal offloading policy for a MoE model (or evaluate one).",
                epilog="Memory sizes are GiB (2^30 bytes). Exit status: 0 policy found or evaluated, "
                       "1 infeasible or no policy, 2 bad input.")
    p.add_argument("scenario", help="scenario YAML file, e.g. scenarios/a100_16g.yaml")
    g = p.add_argument_group("workload and hardware overrides")
    g.add_argument("--prompt-len", type=int, metavar="N", help="prompt length s (tokens)")
    g.add_argument("--gen-len", type=int, metavar="N", help="generation length n (tokens)")
    g.add_argument("--gpu-mem", type=float, metavar="GIB", help="GPU memory, GiB")
    g.add_argument("--cpu-mem", type=float, metavar="GIB", help="CPU memory, GiB")
    g.add_argument("--nvme-mem", type=float, metavar="GIB", help="disk (NVMe) capacity, GiB")
    g.add_argument("--alpha-g", type=float, metavar="X", help="usable share of GPU memory (default 0.8)")
    g.add_argument("--alpha-c", type=float, metavar="X", help="usable share of CPU memory (default 0.9)")
    g.add_argument("--alpha-n", type=float, metavar="X", help="usable share of disk (default 0.8)")
    g.add_argument("--compress-w", action="store_true", help="4-bit weight compression (reference: bytes / 4)")
    g = p.add_argument_group("policy (fix any part; all three evaluate that policy)")
    g.add_argument("--gpu-batch-size", type=int, metavar="N", help="fix the GPU batch size g")
    g.add_argument("--num-gpu-batches", type=int, metavar="N", help="fix the number of GPU batches N")
    g.add_argument("--percent", type=float, nargs=6, metavar=("WG", "WC", "CG", "CC", "HG", "HC"),
                   help="fix placement percents as FlexLLMGen's --percent (disk takes the rest)")
    g = p.add_argument_group("solver")
    g.add_argument("--solver", metavar="NAME", help="MIP solver (default: highs)")
    g.add_argument("--time-limit", type=float, metavar="S", help="solver time limit, seconds")
    g.add_argument("--mip-gap", type=float, metavar="X", help="relative MIP gap (default 1e-4)")
    g.add_argument("--threads", type=int, metavar="N", help="solver threads")
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    g.add_argument("--write-model", metavar="FILE", type=str,
                   help="write the MILP to FILE.lp or FILE.mps (readable names) and exit without solving")
    return p


def overrides_from(args) -> dict:
    out = {}
    for attr, (_flag, field) in FLAG_FIELDS.items():
        value = getattr(args, attr)
        if value is not None:
            out[field] = list(value) if isinstance(value, list) else value
    if args.compress_w:
        out["model.compress_weights"] = True
    return out


def _flag_for(field: str) -> str:
    for flag, fld in FLAG_FIELDS.values():
        if field.startswith(fld):
            return f"{flag} ({field})"
    return field


def write_model(sc, path: str) -> int:
    """Write the MILP that optimize() would solve, with symbolic names, as LP or MPS."""
    fmt = {".lp": "lp", ".mps": "mps"}.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError("--write-model", path, "the file name must end in .lp or .mps")
    m = build_for(sc)
    try:
        m.write(path, io_options={"symbolic_solver_labels": True})
    except OSError as exc:
        raise InputError("--write-model", path, f"cannot write ({exc.strerror or exc})") from None
    nvars = sum(1 for _ in m.component_data_objects(pyo.Var, active=True))
    ncons = sum(1 for _ in m.component_data_objects(pyo.Constraint, active=True))
    print(f"wrote {path}: {ncons} constraints, {nvars} variables ({fmt.upper()}, symbolic names)")
    return 0


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = overrides_from(args)
    try:
        sc = load_scenario(args.scenario, overrides)
        if args.write_model:
            return write_model(sc, args.write_model)
        pol = sc.policy
        if pol.gpu_batch_size and pol.num_gpu_batches and pol.percent is not None:
            res = evaluate_policy(sc, pol.gpu_batch_size, pol.num_gpu_batches, pol.percent)
        else:
            res = optimize(sc)
    except InputError as exc:
        field = _flag_for(exc.field) if exc.field in overrides or any(
            exc.field.startswith(f) for f in overrides) else exc.field
        print(f"error: {field} = {exc.value!r}: {exc.problem}", file=sys.stderr)
        return 2
    except Infeasible as exc:
        if args.json:
            print(json.dumps({"status": "infeasible", "infeasible": exc.reasons}))
        for reason in exc.reasons:
            print(f"infeasible: {reason}", file=sys.stderr)
        return 1
    except SolverError as exc:
        if args.json:
            print(json.dumps({"status": "error", "error": str(exc)}))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(to_json(res), indent=2))
    else:
        print(to_text(res))
    if res.status == "infeasible":
        for reason in res.infeasible_reasons:
            print(f"infeasible: {reason}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    try:
        code = run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
