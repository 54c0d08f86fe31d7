"""Solve-speed benchmark (``python -m runners.bench --reference161``): the core MILP over the 161
scenarios that the original script searched, and ``t4_reference`` itself.

``scenarios/reference/reference_scenarios.csv`` holds the inputs of the 161 (prompt, generation,
memories and alphas), each applied to the constants of ``scenarios/t4_reference.yaml``. For each
variant (``--variant NAME:KEY=VALUE,...``: scenario overrides, e.g. ``gap4:solver.mip_gap=1e-4``;
default: the scenario's own settings) every scenario is solved once, variants interleaved over
the same scenarios so that a loaded machine slows all of them alike. Printed per variant: the
solver's wall time (median, 90th percentile, slowest), the whole ``optimize()`` median, the
count of ``time_limit`` answers, and the largest relative throughput shortfall against the best
answer of any variant for the same scenario. With ``--repeats R``, ``t4_reference`` is also
solved R times (solver median) and ``python -m runners.solve scenarios/t4_reference.yaml`` run
R times as a subprocess (wall median). ``--csv FILE`` writes one row per scenario and variant.
``--seeds K`` solves every scenario (and ``t4_reference``'s solver runs) once per HiGHS
``random_seed`` 0..K-1: a scenario's time is then its mean over the seeds and its answer the worst
of them, so that a change to the formulation is measured apart from the luck of one
branch-and-bound path (one seed's time on one scenario varies by up to 1.5x).
Timings are reported, never asserted: machines here are shared and noisy.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from model import load_scenario, optimize, override
from model.errors import Infeasible, InputError, SolverError
from model.inputs import CSV_MAX_BYTES, read_text
from runners.cli import say

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_CSV = ROOT / "scenarios" / "reference" / "reference_scenarios.csv"
BASE_SCENARIO = ROOT / "scenarios" / "t4_reference.yaml"
# CSV column -> scenario field (the 161's inputs; everything else is t4_reference's)
COLUMNS = {
    "prompt_len": ("workload.prompt_len", int),
    "gen_len": ("workload.gen_len", int),
    "gpu_gib": ("hardware.memory_gib.gpu", float),
    "cpu_gib": ("hardware.memory_gib.cpu", float),
    "disk_gib": ("hardware.memory_gib.disk", float),
    "alpha_gpu": ("hardware.alpha.gpu", float),
    "alpha_cpu": ("hardware.alpha.cpu", float),
    "alpha_disk": ("hardware.alpha.disk", float),
}


def reference_rows(path: str | Path = REFERENCE_CSV) -> list[tuple[str, dict]]:
    """``(id, overrides)`` for every row of the reference CSV (raises :class:`InputError`)."""
    text = read_text(path, "reference_csv", CSV_MAX_BYTES)
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("id", *COLUMNS) if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError("reference_csv", str(path), f"missing column {missing[0]}")
    rows = []
    for line, row in enumerate(reader, start=2):
        sets = {}
        for col, (key, kind) in COLUMNS.items():
            try:
                sets[key] = kind(row[col])
            except (TypeError, ValueError):
                raise InputError(f"reference_csv line {line} {col}", row[col], f"not a {kind.__name__}") from None
        rows.append((row["id"], sets))
    return rows


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME:KEY=VALUE,KEY=VALUE`` (values as YAML) -> (name, overrides); ``NAME`` alone: no overrides."""
    name, _, rest = text.partition(":")
    sets = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise InputError("--variant", text, "expected NAME:KEY=VALUE,...")
        try:
            sets[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError("--variant", text, f"the value of {key} is not valid YAML") from None
    if not name:
        raise InputError("--variant", text, "the variant needs a name before ':'")
    return name, sets


def _pct(values, q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def _solve(sc) -> dict:
    t0 = time.perf_counter()
    try:
        res = optimize(sc)
    except (Infeasible, SolverError) as exc:
        if isinstance(exc, SolverError):
            say(f"error: {exc}")
        return {"status": "infeasible" if isinstance(exc, Infeasible) else "error", "solver_s": None, "total_s": time.perf_counter() - t0,
                "tokens_per_s": None, "g": None, "N": None}
    return {"status": res.status, "solver_s": res.solve.wall_s, "total_s": res.total_s,
            "tokens_per_s": res.throughput_tokens_per_s, "g": res.gpu_batch_size, "N": res.num_gpu_batches}


def _seed_sets(seeds: int) -> list[dict]:
    """The scenario overrides of each seed run: none for one seed (the solver's default)."""
    if seeds < 1:
        raise InputError("--seeds", seeds, "needs at least 1")
    return [{}] if seeds == 1 else [{"solver.options.random_seed": k} for k in range(seeds)]


def _over_seeds(runs: list[dict]) -> dict:
    """One scenario's runs under every seed: the mean times, the worst answer (the lowest throughput)."""
    if len(runs) == 1:
        return runs[0]
    worst = min(runs, key=lambda r: math.inf if r["tokens_per_s"] is None else r["tokens_per_s"])
    solver = [r["solver_s"] for r in runs]
    return {**worst, "solver_s": None if None in solver else statistics.mean(solver),
            "total_s": statistics.mean(r["total_s"] for r in runs), "runs": runs}


def reference161(variants: list[tuple[str, dict]], repeats: int = 0, limit: int | None = None,
                 csv_out: str | None = None, progress: bool = True, seeds: int = 1) -> int:
    base = load_scenario(BASE_SCENARIO)
    seed_sets = _seed_sets(seeds)
    rows = reference_rows()[:limit] if limit else reference_rows()
    variants = variants or [("default", {})]
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for i, (rid, sets) in enumerate(rows):
        for name, extra in variants:   # interleaved: each scenario under every variant in turn
            runs = []
            for seed_set in seed_sets:
                run = _solve(override(base, {**sets, **extra, **seed_set}))
                run["seed"] = seed_set.get("solver.options.random_seed", "")
                runs.append(run)
            r = _over_seeds(runs)
            r["id"] = rid
            results[name].append(r)
        if progress:
            say(f"{i + 1}/{len(rows)} " + " ".join(
                f"{name} {results[name][-1]['solver_s'] or 0:.2f}s" for name, _ in variants))
    best = {}
    for name, _ in variants:
        for r in results[name]:
            for run in r.get("runs", [r]):   # the best answer of any variant and seed
                if run["tokens_per_s"] is not None:
                    best[r["id"]] = max(best.get(r["id"], 0.0), run["tokens_per_s"])
    print(f"{len(rows)} reference scenarios (t4_reference constants); seconds, this machine"
          + (f"; each the mean over HiGHS random seeds 0..{seeds - 1}, answers the worst seed's" if seeds > 1 else ""))
    print(f"{'variant':<16} {'solved':>6} {'infeas':>6} {'errors':>6} {'limit':>5} {'solver med':>10} {'p90':>7} {'max':>7} "
          f"{'optimize med':>12} {'sum solver':>10} {'worst vs best':>13}")
    for name, _ in variants:
        rs = results[name]
        solved = [r for r in rs if r["solver_s"] is not None]
        times = [r["solver_s"] for r in solved] or [0.0]
        worst = max((1 - r["tokens_per_s"] / best[r["id"]] for r in solved), default=0.0)
        print(f"{name:<16} {len(solved):6d} {sum(r['status'] == 'infeasible' for r in rs):6d} "
              f"{sum(r['status'] == 'error' for r in rs):6d} "
              f"{sum(r['status'] == 'time_limit' for r in rs):5d} {statistics.median(times):10.3f} "
              f"{_pct(times, 0.9):7.3f} {max(times):7.3f} "
              f"{statistics.median(r['total_s'] for r in rs):12.3f} {sum(times):10.1f} {worst:13.2e}")
    if csv_out:
        with open(csv_out, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["variant", "id", "seed", "status", "tokens_per_s", "g", "N", "solver_s", "optimize_s"])
            for name, _ in variants:
                for r in results[name]:
                    for run in r.get("runs", [r]):
                        w.writerow([name, r["id"], run.get("seed", ""), run["status"], run["tokens_per_s"], run["g"],
                                    run["N"], run["solver_s"], run["total_s"]])
    if repeats:
        t4_figures(variants, repeats, seeds)
    return 0


def t4_figures(variants: list[tuple[str, dict]], repeats: int, seeds: int = 1) -> None:
    """t4_reference: solver median (over ``repeats`` runs of each seed) and ``python -m runners.solve``
    wall median of ``repeats`` runs (the solver's default seed)."""
    base = load_scenario(BASE_SCENARIO)
    seed_sets = _seed_sets(seeds)
    solver = {name: [] for name, _ in variants}
    command = {name: [] for name, _ in variants}
    tput = {}
    for _ in range(repeats):
        for name, extra in variants:
            for seed_set in seed_sets:
                res = optimize(override(base, {**extra, **seed_set}))
                solver[name].append(res.solve.wall_s)
            tput[name] = (res.throughput_tokens_per_s, res.gpu_batch_size, res.num_gpu_batches)
            flags = [f"--set={k}={v}" for k, v in extra.items()]
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "runners.solve", str(BASE_SCENARIO), *flags],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
            command[name].append(time.perf_counter() - t0)
            if done.returncode != 0:
                say(f"runners.solve exited {done.returncode}: {done.stderr.decode(errors='replace')[:200]}")
    print(f"t4_reference, median of {repeats}" + (f" x {seeds} seeds (solver)" if seeds > 1 else ""))
    print(f"{'variant':<16} {'solver s':>9} {'command s':>10} {'tokens/s':>10} {'g':>4} {'N':>5}")
    for name, _ in variants:
        t, g, N = tput[name]
        print(f"{name:<16} {statistics.median(solver[name]):9.3f} {statistics.median(command[name]):10.3f} "
              f"{t:10.6f} {g:4d} {N:5d}")
