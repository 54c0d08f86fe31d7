"""python -m runners.sweep STUDY.yaml: the optimal policy over a design space of scenarios.

A sweep file names a base scenario and the parameters to vary::

    name: gpu_memory                     # optional; default: the file's name without .yaml
    base: ../a100_16g.yaml               # relative to the sweep file
    vary:                                # any number of parameters (every combination)
      - field: hardware.memory_gib.gpu   # any dotted scenario field
        values: [8, 12, 16, 24, 32]
      - field: workload.prompt_len
        range: {start: 128, stop: 4096, num: 6, scale: log}    # or {start, stop, step}
    overrides: {workload.gen_len: 64}    # optional: dotted fields set at every point
    solver: {time_limit_s: 60}           # optional: solver settings at every point

A study file adds axes over scenario files (``scenario: [a.yaml, b.yaml]`` instead of
``base:``) and hardware presets (``preset: [t4, l4]``), ``where:`` filters and per-point
``outputs:``; see :mod:`runners.study.spec` for the format.

``range`` is ``{start, stop, step}`` (stop included when the steps land on it) or
``{start, stop, num, scale: linear|log}`` (``num`` points from start to stop, both
included). On an integer field (``workload.prompt_len``) the values are rounded and
duplicates dropped. Each point is its base scenario with ``{**overrides, **solver,
field: value}`` applied, the same path as ``runners.solve``'s flags (so a point reproduces
``python -m runners.solve BASE --gpu-mem 24``), and is solved with ``model.optimize``
(without sensitivity and integer percents unless ``outputs:`` asks for them).

The study file is validated like a scenario file: an unknown key, a field path that
is not a scenario field, a wrong type, an empty ``values`` list or a ``where:`` on an
unknown field is one line naming the key and the value, exit status 2, no traceback. A
point whose scenario is invalid (e.g. ``hardware.memory_gib.gpu: 0``) is a bad study only
when every point is invalid; otherwise that point is recorded with status ``error`` and
the message, and the study goes on. So are solver failures (``error``) and scenarios where
nothing fits (``infeasible``, with the reason).

Outputs, in ``--out DIR`` (default ``./sweep_out/<name>``):

* ``study.sqlite``: every finished point, committed as it finishes (:mod:`runners.study.store`);
  running the same command again reuses them and solves only the rest;
* ``points.csv``: exported from the database at the end (or by ``--export`` at any time):
  one row per point: the axes (named by their dotted path, ``scenario``, ``preset``),
  ``status`` (optimal, time_limit, evaluated, infeasible, error),
  ``throughput_tokens_per_s``, ``gpu_batch_size``, ``num_gpu_batches``, the nine
  placement fractions ``weights_gpu`` .. ``activations_disk``, the peaks
  ``gpu_prefill_gib``, ``gpu_decode_gib``, ``cpu_prefill_gib``, ``cpu_decode_gib``,
  ``disk_gib``, ``block_time_s`` (prefill + decode of one block), ``solve_s`` (the MILP's
  wall time) and ``message`` (the infeasibility reasons, the error, or the solver's notes),
  then the columns that ``outputs:`` asked for;
* ``sweep.png`` (one axis): throughput, then ``g`` and ``N`` (log scale), then
  the placement of the weights and of the KV cache on GPU / CPU / disk as stacked
  areas, against the parameter; infeasible and failed points are marked;
* ``heatmap.png`` (two axes): throughput over the grid, infeasible cells grey;
* ``pareto.png``: throughput against block time, one dot per point with a policy,
  coloured by ``--color-by`` (default: the first axis), with the Pareto front.

``--plot-to FILE.png`` writes the line plot or heatmap there as well (the pareto plot
for three or more axes); the README's images are made so. A table goes to stdout (every
point for up to 100 points; the best policy per scenario file and preset always);
a progress bar (tqdm: rate and time left) to stderr when it is a terminal or ``--progress``
is given.

Points run on Dask (:mod:`runners.study.execute`): by default an embedded LocalCluster of
``--jobs`` single-threaded worker processes (default: the number of CPUs; ``--jobs 1``
runs them in this process, without Dask), or ``--scheduler tcp://HOST:8786``, an existing
cluster. HiGHS's thread pool is per process; set ``solver: {threads: 1}`` when the jobs
fill the machine.

Warm starts: none. Neighbouring points are solved from scratch. HiGHS itself accepts
a MIP start (``Highs.setSolution``), but the interface this project drives it through,
Pyomo's ``pyomo.contrib.solver`` ``highs`` (Pyomo 6.10), has no warm-start option and
passes none on; and fixing or bounding ``g`` and ``N`` near the neighbour's would change
the problem, not hint at it. Each point is therefore an independent, globally optimal
solve, which is also what lets the points run in parallel.

Exit status: 0 the study ran and wrote its outputs (some points may be infeasible or
errors); 1 every point failed with a solver error; 2 bad input (the study file, its
base scenario, flags, an unreachable scheduler, an unwritable output folder, a database
another process is writing, a worker of another program version); 130 / 143 stopped by
SIGINT / SIGTERM (the finished points are kept).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

from model import InputError
from runners.cli import OneLineParser, add_debug_flag, input_error_line, main_guard, say
from runners.study import execute
from runners.study.execute import (FRACTION_COLUMNS, PEAK_COLUMNS, RESULT_COLUMNS,  # noqa: F401 - API
                                   empty_row as _empty_row, solve_point)
from runners.study.plots import (_cell, _fmt_value, plot_one, plot_pareto, plot_two)  # noqa: F401
from runners.study.spec import (MAX_VALUES, Param, Prepared, Sweep, SweepInputError,  # noqa: F401
                                _is_number, _short, expand_range, field_type, load_sweep, prepare)
from runners.study.store import DB_NAME, Store

TABLE_MAX_POINTS = 100      # the per-point table on stdout; larger studies: the summary and points.csv


# --------------------------------------------------------------------------- outputs
def extra_columns(rows: dict[int, dict]) -> list[str]:
    """Columns beyond RESULT_COLUMNS that some row has (``outputs:``), in first-seen order."""
    seen: dict[str, None] = {}
    for r in rows.values():
        for k in r:
            if k not in RESULT_COLUMNS and not k.startswith("_"):
                seen.setdefault(k)
    return list(seen)


def write_csv(path: Path, sweep: Sweep, values: list[tuple], rows: dict[int, dict]) -> None:
    extra = extra_columns(rows)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([p.field for p in sweep.params] + list(RESULT_COLUMNS) + extra)
        for i, vals in enumerate(values):
            w.writerow([_cell(v) for v in vals] + [_cell(rows[i].get(c)) for c in (*RESULT_COLUMNS, *extra)])


def table(sweep: Sweep, values: list[tuple], rows: dict[int, dict], note_width: int = 70) -> str:
    """A short text table: the varied values, status, g, N, tokens/s, solve s and a note."""
    heads = [p.field for p in sweep.params] + ["status", "g", "N", "tokens/s", "solve s", "note"]
    lines = []
    for i, vals in enumerate(values):
        r = rows[i]
        note = r["message"] or ""
        note = note if len(note) <= note_width else note[: note_width - 3] + "..."
        lines.append([_fmt_value(v) for v in vals] + [
            r["status"], _cell(r["gpu_batch_size"]), _cell(r["num_gpu_batches"]),
            "" if r["throughput_tokens_per_s"] is None else f"{r['throughput_tokens_per_s']:.4f}",
            "" if r["solve_s"] is None else f"{r['solve_s']:.2f}", note])
    widths = [max(len(h), *(len(line[k]) for line in lines)) for k, h in enumerate(heads)]
    left = {len(sweep.params), len(heads) - 1}      # status and note left-aligned, numbers right-aligned

    def fmt(cells):
        return "  ".join(c.ljust(w) if k in left else c.rjust(w)
                         for k, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([fmt(heads)] + [fmt(line) for line in lines])


def best_table(sweep: Sweep, values: list[tuple], rows: dict[int, dict]) -> str:
    """The best policy per scenario file and preset (one line for the whole study without those axes)."""
    groups = sweep.group_axes
    others = [k for k in range(len(sweep.params)) if k not in groups]
    best: dict[tuple, tuple] = {}
    count: dict[tuple, list[int]] = {}
    for i, vals in enumerate(values):
        key = tuple(vals[k] for k in groups)
        r = rows[i]
        c = count.setdefault(key, [0, 0])
        c[0] += 1
        thr = r.get("throughput_tokens_per_s")
        if thr is None:
            continue
        c[1] += 1
        if key not in best or thr > best[key][0]:
            best[key] = (thr, i)
    heads = [sweep.params[k].field for k in groups] or ["study"]
    heads += ["points", "with policy", "best tokens/s", "g", "N", "block s", "at"]
    lines = []
    for key, (n, feasible) in count.items():
        cells = [_fmt_value(v) for v in key] or [sweep.name]
        cells += [str(n), str(feasible)]
        if key in best:
            thr, i = best[key]
            r = rows[i]
            at = ", ".join(f"{sweep.params[k].field}={_fmt_value(values[i][k])}" for k in others)
            cells += [f"{thr:.4f}", _cell(r.get("gpu_batch_size")), _cell(r.get("num_gpu_batches")),
                      "" if r.get("block_time_s") is None else f"{r['block_time_s']:.1f}", at]
        else:
            cells += ["-", "", "", "", "no policy"]
        lines.append(cells)
    widths = [max(len(h), *(len(line[k]) for line in lines)) for k, h in enumerate(heads)]

    n_names = len(heads) - 7                           # the group columns, left-aligned like "at"

    def fmt(cells):
        return "  ".join(c.ljust(w) if k < n_names or k == len(heads) - 1 else c.rjust(w)
                         for k, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([fmt(heads)] + [fmt(line) for line in lines])


def plot(sweep: Sweep, values: list[tuple], rows: dict[int, dict], path: Path) -> None:
    (plot_one if len(sweep.params) == 1 else plot_two)(sweep, values, rows, path)


def _axis_index(sweep: Sweep, name: str | None) -> int:
    if name is None:
        return 0
    names = [p.field for p in sweep.params]
    if name not in names:
        raise InputError("--color-by", name, f"not an axis of this study (axes: {', '.join(names)})")
    return names.index(name)


def write_outputs(sweep: Sweep, values: list[tuple], rows: dict[int, dict], out: Path, args,
                  color_by: int) -> list[Path]:
    """points.csv and the plots, from the finished points (``values``/``rows`` index the same points)."""
    written = [out / "points.csv"]
    try:
        write_csv(written[0], sweep, values, rows)
    except OSError as exc:
        raise InputError("--out", str(out), f"cannot write ({exc.strerror or exc})") from None
    if args.no_plot or not values:
        return written
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        say("warning: matplotlib is not installed (pip install matplotlib): no plot written")
        return written
    n_axes = len(sweep.params)
    jobs: list[tuple] = []
    if n_axes <= 2:
        main_plot = out / ("sweep.png" if n_axes == 1 else "heatmap.png")
        jobs.append((plot, main_plot))
        if args.plot_to:
            jobs.append((plot, Path(args.plot_to)))
    jobs.append(("pareto", out / "pareto.png"))
    if args.plot_to and n_axes > 2:
        jobs.append(("pareto", Path(args.plot_to)))
    for fn, target in jobs:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if fn == "pareto":
                if not plot_pareto(sweep, values, rows, target, color_by):
                    continue
            else:
                fn(sweep, values, rows, target)
        except OSError as exc:
            raise InputError("--plot-to" if args.plot_to and target == Path(args.plot_to) else "--out",
                             str(target), f"cannot write ({exc.strerror or exc})") from None
        written.append(target)
    return written


# --------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m runners.sweep",
                      description="Solve a study (a scenario over any number of parameters, scenario files "
                                  "and presets); keep the results in SQLite; write a CSV and plots.",
                      epilog="Exit status: 0 the study ran (points may be infeasible), 1 every point failed "
                             "with a solver error, 2 bad input, 130/143 interrupted/terminated (finished "
                             "points are kept; run the same command again to go on).")
    p.add_argument("sweep", help="study or sweep YAML file, e.g. scenarios/sweeps/gpu_memory.yaml")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes of the embedded Dask cluster (default: the number of CPUs; "
                        "1: in this process, without Dask)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the points on this Dask scheduler (e.g. tcp://HOST:8786) instead of an "
                        "embedded cluster; --jobs is then ignored")
    p.add_argument("--out", metavar="DIR", help="output folder: study.sqlite, points.csv, plots "
                                                "(default: ./sweep_out/<study name>)")
    p.add_argument("--export", action="store_true",
                   help="solve nothing: write points.csv and the plots from the finished points in "
                        "DIR/study.sqlite (also while the study runs)")
    p.add_argument("--plot-to", metavar="FILE.png", help="also write the plot to this file (the line plot or "
                                                         "heatmap; the pareto plot for three or more axes)")
    p.add_argument("--color-by", metavar="AXIS",
                   help="the axis that colours the pareto plot (a varied field, scenario or preset; "
                        "default: the first axis)")
    p.add_argument("--no-plot", action="store_true", help="write no plot (points.csv and the table only)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    add_debug_flag(p)
    return p


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if jobs < 1:
        say(f"error: --jobs = {jobs}: must be >= 1")
        return 2
    if args.plot_to and Path(args.plot_to).suffix.lower() != ".png":
        say(f"error: --plot-to = {args.plot_to!r}: the file name must end in .png")
        return 2
    if args.scheduler is not None and not args.scheduler.strip():
        say("error: --scheduler = '': expected a scheduler address, e.g. tcp://HOST:8786")
        return 2
    try:
        return _run(args, jobs)
    except InputError as exc:
        say(input_error_line(exc))
        return 2


def _run(args, jobs: int) -> int:
    t0 = time.perf_counter()
    sweep = load_sweep(args.sweep)
    color_by = _axis_index(sweep, args.color_by)
    prepared = prepare(sweep)
    out = Path(args.out) if args.out else Path.cwd() / "sweep_out" / sweep.name
    values, keys = prepared.values, prepared.keys
    if args.export:
        with Store(out, RESULT_COLUMNS, write=False) as store:
            found = store.rows(keys)
        done = [i for i in range(len(values)) if keys[i] in found]
        dvalues = [values[i] for i in done]
        drows = {k: found[keys[i]] for k, i in enumerate(done)}
        written = write_outputs(sweep, dvalues, drows, out, args, color_by)
        print(f"sweep {sweep.name}: exported {len(done)} of {len(values)} points from {out / DB_NAME}")
        if drows:
            print(best_table(sweep, dvalues, drows))
        print("wrote " + ", ".join(str(p) for p in written))
        return 0

    if args.scheduler is not None:
        execute.check_scheduler(args.scheduler)     # before the output folder is made
    store = Store(out, RESULT_COLUMNS, write=True)
    progress = None
    fresh_input_errors: list[str] = []
    try:
        execute.remove_stale_scratch(out)
        finished = store.keys()
        reused = len({keys[i] for i in range(len(values)) if keys[i] in finished})
        for i, message in prepared.invalid.items():
            if keys[i] not in finished:
                store.put(keys[i], sweep.name, _axes(sweep, values[i]), _empty_row("error", message),
                          prepared.version)
                finished.add(keys[i])
        todo, queued = [], set()
        for i in sorted(prepared.scenarios):
            if keys[i] not in finished and keys[i] not in queued:   # equal points are solved once
                todo.append(i)
                queued.add(keys[i])
        if reused:
            say(f"sweep {sweep.name}: reusing {reused} finished points from {out / DB_NAME}; "
                f"{len(todo)} to solve")
        from tqdm import tqdm

        n_unique = len(set(keys))
        progress = tqdm(total=n_unique, initial=n_unique - len(todo), unit="point", file=sys.stderr,
                        disable=not (args.progress or sys.stderr.isatty()), dynamic_ncols=True,
                        smoothing=0.05, desc=sweep.name)

        def on_result(i: int, row: dict) -> None:
            if row.get("_input_error"):
                fresh_input_errors.append(row["message"])
            store.put(keys[i], sweep.name, _axes(sweep, values[i]), row, prepared.version)
            progress.update()

        workers = 1
        if todo:
            if args.scheduler is None and jobs == 1:
                execute.run_local(todo, prepared.scenarios, sweep.outputs, on_result)
            else:
                n = min(jobs, len(todo))
                with execute.dask_client(args.scheduler, n, out) as client:
                    workers = execute.check_workers(client, prepared.version, args.scheduler)
                    execute.run_dask(client, todo, prepared.scenarios, sweep.outputs, prepared.version,
                                     on_result, args.scheduler, window=2 * workers + 2,
                                     ship_files=args.scheduler is not None)
        found = store.rows(keys)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, execute.Terminated)):   # the finished points are kept: say so,
            # on the front door's one line ("interrupted: ..." / "terminated: ...")
            raise type(exc)(f"sweep {sweep.name} stopped; {store.count()} points are in {out / DB_NAME}; "
                            "run the same command again to go on") from None
        raise
    finally:
        if progress is not None:
            progress.close()
        store.close()
    rows = {i: found[keys[i]] for i in range(len(values))}
    n_bad = len(prepared.invalid) + len(fresh_input_errors)
    if not reused and n_bad == len(values) and fresh_input_errors:
        say(f"error: {fresh_input_errors[0]} (at every point of the sweep)")
        return 2
    written = write_outputs(sweep, values, rows, out, args, color_by)
    counts: dict[str, int] = {}
    for r in rows.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    where = f", {prepared.skipped} skipped by where:" if prepared.skipped else ""
    base = f"{len(sweep.bases)} scenario files" if sweep.bases else f"base {sweep.base.name}"
    place = (f"scheduler {args.scheduler}" if args.scheduler else
             f"{workers} job{'s' if workers > 1 else ''}")
    print(f"sweep {sweep.name}: {len(values)} points ({summary}){where}, {base}, {place}, "
          f"{reused} reused, {time.perf_counter() - t0:.1f} s")
    if len(values) <= TABLE_MAX_POINTS:
        print(table(sweep, values, rows))
    print(best_table(sweep, values, rows))
    print("wrote " + ", ".join(str(p) for p in written))
    if all(r["status"] == "error" for r in rows.values()):
        return 1
    return 0


def _axes(sweep: Sweep, values: tuple) -> dict:
    return {p.field: v for p, v in zip(sweep.params, values)}


def main(argv: list[str] | None = None) -> None:
    main_guard(run, argv)


if __name__ == "__main__":
    main()
