"""python -m runners.sweep SWEEP.yaml: the optimal policy over a grid of one or two scenario parameters.

A sweep file names a base scenario and the parameters to vary::

    name: gpu_memory                     # optional; default: the file's name without .yaml
    base: ../a100_16g.yaml               # relative to the sweep file
    vary:                                # one or two parameters (two: every combination)
      - field: hardware.memory_gib.gpu   # any dotted scenario field
        values: [8, 12, 16, 24, 32]
      - field: workload.prompt_len
        range: {start: 128, stop: 4096, num: 6, scale: log}    # or {start, stop, step}
    overrides: {workload.gen_len: 64}    # optional: dotted fields set at every point
    solver: {time_limit_s: 60}           # optional: solver settings at every point

``range`` is ``{start, stop, step}`` (stop included when the steps land on it) or
``{start, stop, num, scale: linear|log}`` (``num`` points from start to stop, both
included). On an integer field (``workload.prompt_len``) the values are rounded and
duplicates dropped. Each point is ``load_scenario(base, {**overrides, **solver,
field: value})``, the same path as ``runners.solve``'s flags (so a point reproduces
``python -m runners.solve BASE --gpu-mem 24``), and is solved with ``model.optimize``.

The sweep file is validated like a scenario file: an unknown key, a field path that
is not a scenario field, a wrong type or an empty ``values`` list is one line naming
the key and the value, exit status 2, no traceback. A point whose scenario is invalid
(e.g. ``hardware.memory_gib.gpu: 0``) is a bad sweep only when every point is invalid;
otherwise that point is recorded with status ``error`` and the message, and the sweep
goes on. So are solver failures (``error``) and scenarios where nothing fits
(``infeasible``, with the reason).

Outputs, in ``--out DIR`` (default ``./sweep_out/<name>``):

* ``points.csv``: one row per point: the varied fields (named by their dotted path),
  ``status`` (optimal, time_limit, evaluated, infeasible, error),
  ``throughput_tokens_per_s``, ``gpu_batch_size``, ``num_gpu_batches``, the nine
  placement fractions ``weights_gpu`` .. ``activations_disk``, the peaks
  ``gpu_prefill_gib``, ``gpu_decode_gib``, ``cpu_prefill_gib``, ``cpu_decode_gib``,
  ``disk_gib``, ``solve_s`` (the MILP's wall time) and ``message`` (the infeasibility
  reasons, the error, or the solver's notes);
* ``sweep.png`` (one parameter): throughput, then ``g`` and ``N`` (log scale), then
  the placement of the weights and of the KV cache on GPU / CPU / disk as stacked
  areas, against the parameter; infeasible and failed points are marked;
* ``heatmap.png`` (two parameters): throughput over the grid, infeasible cells grey.

``--plot-to FILE.png`` writes the plot there as well (the README's images are made
so). A short table goes to stdout; a progress bar to stderr when it is a terminal or
``--progress`` is given.

Points run in parallel in ``--jobs`` processes (default: the number of CPUs;
``--jobs 1`` runs them in this process). HiGHS's thread pool is per process; set
``solver: {threads: 1}`` when the jobs fill the machine.

Warm starts: none. Neighbouring points are solved from scratch. HiGHS itself accepts
a MIP start (``Highs.setSolution``), but the interface this project drives it through,
Pyomo's ``pyomo.contrib.solver`` ``highs`` (Pyomo 6.10), has no warm-start option and
passes none on; and fixing or bounding ``g`` and ``N`` near the neighbour's would change
the problem, not hint at it. Each point is therefore an independent, globally optimal
solve, which is also what lets the points run in parallel.

Exit status: 0 the sweep ran and wrote its outputs (some points may be infeasible or
errors); 1 every point failed with a solver error; 2 bad input (the sweep file, its
base scenario, or flags).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import math
import os
import re
import sys
import time
import types
import typing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model import Infeasible, InputError, Scenario, SolverError, load_scenario, optimize
from model import solvers
from model.scenario import SolverOptions, load_raw
from runners.cli import OneLineParser, add_debug_flag, main_guard
from model.terms import DEVICES, TENSOR_KINDS

FRACTION_COLUMNS = tuple(f"{kind}_{dev}" for kind in TENSOR_KINDS for dev in DEVICES)
PEAK_COLUMNS = {
    "gpu_prefill_gib": ("gpu", "prefill"),
    "gpu_decode_gib": ("gpu", "decode"),
    "cpu_prefill_gib": ("cpu", "prefill"),
    "cpu_decode_gib": ("cpu", "decode"),
    "disk_gib": ("disk", None),
}
RESULT_COLUMNS = ("status", "throughput_tokens_per_s", "gpu_batch_size", "num_gpu_batches",
                  *FRACTION_COLUMNS, *PEAK_COLUMNS, "solve_s", "message")

SWEEP_KEYS = ("name", "base", "vary", "overrides", "solver")
VARY_KEYS = ("field", "values", "range")
RANGE_KEYS = ("start", "stop", "step", "num", "scale")
MAX_VALUES = 10_000            # per parameter: more is a typo (a step of 1e-9), not a plan
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Param:
    """One varied field and its values, in order."""

    field: str
    values: tuple
    is_int: bool = False
    log_scale: bool | None = None      # True: from ``scale: log``; None: let the plot decide


@dataclass(frozen=True)
class Sweep:
    name: str
    path: Path
    base: Path
    params: tuple[Param, ...]
    overrides: dict = field(default_factory=dict)   # ``overrides`` and ``solver.*``, applied at every point

    def points(self) -> list[tuple]:
        """Every combination of the parameters' values (the first parameter varies slowest)."""
        return list(itertools.product(*(p.values for p in self.params)))

    def point_overrides(self, values: tuple) -> dict:
        return {**self.overrides, **{p.field: v for p, v in zip(self.params, values)}}


# --------------------------------------------------------------------------- the sweep file
def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SweepInputError(InputError):
    """A bad sweep file: ``field`` is the sweep file's key (``vary[0].values``)."""


def _unwrap(tp):
    """``X | None`` -> ``X``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else tp
    return tp


def field_type(dotted: Any, where: str):
    """The annotation of a dotted scenario field (``int``, ``float``, a section, ...).

    Raises :class:`SweepInputError` naming ``where`` when the path is not a field of
    the scenario schema. Below a free-form mapping (``solver.options``) any key is
    allowed and the type is unknown (``None``).
    """
    if not isinstance(dotted, str) or not dotted.strip():
        raise SweepInputError(where, dotted, "expected a dotted scenario field, e.g. hardware.memory_gib.gpu")
    parts = dotted.split(".")
    tp: Any = Scenario
    for i, part in enumerate(parts):
        tp = _unwrap(tp)
        here = ".".join(parts[:i]) or "the scenario"
        if typing.get_origin(tp) is dict:
            return None
        if not dataclasses.is_dataclass(tp):
            raise SweepInputError(where, dotted, f"{here} is a value, not a section: it has no field {part!r}")
        names = [f.name for f in dataclasses.fields(tp)]
        if part not in names:
            raise SweepInputError(where, dotted, f"unknown field {part!r} in {here} (allowed: {', '.join(names)})")
        tp = typing.get_type_hints(tp)[part]
    return _unwrap(tp)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mapping(raw: Any, where: str, allowed: tuple[str, ...]) -> dict:
    if not isinstance(raw, dict):
        raise SweepInputError(where, raw, f"expected a mapping with keys {', '.join(allowed)}")
    for key in raw:
        if key not in allowed:
            name = f"{where}.{key}" if where else str(key)
            raise SweepInputError(name, raw[key], f"unknown key (allowed: {', '.join(allowed)})")
    return raw


def _round_int(x: float) -> int:
    return int(math.floor(x + 0.5))


def _dedupe(values: list) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def expand_range(spec: Any, where: str, is_int: bool) -> tuple[list, bool]:
    """The values of ``range: {start, stop, step}`` or ``{start, stop, num, scale}``, and whether log."""
    spec = _mapping(spec, where, RANGE_KEYS)
    for key in ("start", "stop"):
        if key not in spec:
            raise SweepInputError(f"{where}.{key}", None, "required key is missing")
        if not _is_number(spec[key]):
            raise SweepInputError(f"{where}.{key}", spec[key], "expected a finite number")
    start, stop = spec["start"], spec["stop"]
    if ("step" in spec) == ("num" in spec):
        raise SweepInputError(where, spec, "give either step or num (with scale), not both nor neither")
    log = False
    if "step" in spec:
        step = spec["step"]
        if "scale" in spec:
            raise SweepInputError(f"{where}.scale", spec["scale"], "goes with num, not with step")
        if not _is_number(step) or step == 0:
            raise SweepInputError(f"{where}.step", step, "expected a non-zero number")
        if (stop - start) / step < 0:
            raise SweepInputError(f"{where}.step", step, f"goes away from stop ({stop}) from start ({start})")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        if n > MAX_VALUES:
            raise SweepInputError(f"{where}.step", step, f"gives {n} values (at most {MAX_VALUES})")
        values = [start + i * step for i in range(n)]
    else:
        num, scale = spec["num"], spec.get("scale", "linear")
        if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= MAX_VALUES:
            raise SweepInputError(f"{where}.num", num, f"expected an integer from 1 to {MAX_VALUES}")
        if scale not in ("linear", "log"):
            raise SweepInputError(f"{where}.scale", scale, "must be 'linear' or 'log'")
        log = scale == "log"
        if log and not (start > 0 and stop > 0):
            raise SweepInputError(where, spec, "scale: log needs start > 0 and stop > 0")
        if num == 1:
            values = [start]
        elif log:
            values = [start * (stop / start) ** (i / (num - 1)) for i in range(num)]
        else:
            values = [start + (stop - start) * i / (num - 1) for i in range(num)]
        values[-1] = stop if num > 1 else values[-1]
    if is_int:
        values = [_round_int(v) for v in values]
    else:
        values = [float(f"{v:.12g}") for v in values]   # 0.30000000000000004 -> 0.3
    return _dedupe(values), log


def _param(raw: Any, where: str) -> Param:
    raw = _mapping(raw, where, VARY_KEYS)
    if "field" not in raw:
        raise SweepInputError(f"{where}.field", None, "required key is missing")
    dotted = raw["field"]
    tp = field_type(dotted, f"{where}.field")
    is_int = tp is int
    if ("values" in raw) == ("range" in raw):
        raise SweepInputError(where, dotted, "give either values or range, not both nor neither")
    log = None
    if "values" in raw:
        values = raw["values"]
        if not isinstance(values, list) or not values:
            raise SweepInputError(f"{where}.values", values, f"expected a non-empty list of values for {dotted}")
        seen = []
        for v in values:
            if v in seen:
                raise SweepInputError(f"{where}.values", values, f"{_short(v)} is given twice")
            seen.append(v)
    else:
        if not (is_int or tp is float or tp is None):
            raise SweepInputError(f"{where}.range", raw["range"], f"{dotted} is not a number field; give values")
        values, log = expand_range(raw["range"], f"{where}.range", is_int)
        log = log or None
    return Param(field=dotted, values=tuple(values), is_int=is_int, log_scale=log)


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file (not its points: see :func:`prepare`)."""
    path = Path(path)
    try:
        raw = load_raw(path)
    except InputError as exc:  # file missing, unreadable, malformed YAML, duplicate key
        raise SweepInputError("sweep", str(path), exc.problem) from None
    raw = _mapping(raw, "", SWEEP_KEYS)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SweepInputError("name", name, "expected a name of letters, digits, '_', '-' or '.'")
    if "base" not in raw:
        raise SweepInputError("base", None, "required key is missing (the scenario file to vary)")
    base = raw["base"]
    if not isinstance(base, str) or not base.strip():
        raise SweepInputError("base", base, "expected a scenario file path (relative to the sweep file)")
    base_path = (Path(base) if Path(base).is_absolute() else path.resolve().parent / base).resolve()
    if not base_path.exists():   # a FIFO or device exists: the input layer names what it is
        raise SweepInputError("base", base, f"scenario file not found ({base_path})")
    vary = raw.get("vary")
    if not isinstance(vary, list) or not 1 <= len(vary) <= 2:
        raise SweepInputError("vary", vary, "expected a list of one or two {field, values | range} entries")
    params = tuple(_param(entry, f"vary[{i}]") for i, entry in enumerate(vary))
    if len(params) == 2 and params[0].field == params[1].field:
        raise SweepInputError("vary[1].field", params[1].field, "is varied twice")
    common: dict[str, Any] = {}
    overrides = raw.get("overrides")
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, dict):
        raise SweepInputError("overrides", overrides, "expected a mapping of dotted scenario fields to values")
    for key, value in overrides.items():
        try:
            field_type(key, f"overrides.{key}")
        except SweepInputError as exc:
            raise SweepInputError(exc.field, value, exc.problem) from None
        common[key] = value
    solver = raw.get("solver")
    solver = {} if solver is None else solver
    solver_keys = tuple(f.name for f in dataclasses.fields(SolverOptions))
    for key, value in _mapping(solver, "solver", solver_keys).items():
        common[f"solver.{key}"] = value
    return Sweep(name=name, path=path, base=base_path, params=params, overrides=common)


# --------------------------------------------------------------------------- points
def _empty_row(status: str, message: str = "") -> dict:
    row = {col: None for col in RESULT_COLUMNS}
    row.update(status=status, message=message)
    return row


def _input_message(exc: InputError) -> str:
    return f"{exc.field} = {_short(exc.value)}: {exc.problem}"


def solve_point(sc: Scenario) -> dict:
    """Optimize one point's scenario; never raises (the sweep goes on). A worker's task."""
    try:
        res = optimize(sc)
    except Infeasible as exc:
        return _empty_row("infeasible", "; ".join(exc.reasons))
    except InputError as exc:
        row = _empty_row("error", _input_message(exc))
        row["_input_error"] = True
        return row
    except SolverError as exc:
        return _empty_row("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - one point's crash is recorded; the sweep goes on
        return _empty_row("error", f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}")
    row = _empty_row(res.status)
    if res.status == "infeasible":
        row["message"] = "; ".join(res.infeasible_reasons)
        return row
    ev = res.evaluation
    row.update(throughput_tokens_per_s=ev.throughput_tokens_per_s, gpu_batch_size=res.gpu_batch_size,
               num_gpu_batches=res.num_gpu_batches, solve_s=res.solve.wall_s if res.solve else None)
    for kind in TENSOR_KINDS:
        for dev in DEVICES:
            row[f"{kind}_{dev}"] = res.fractions[(kind, dev)]
    for col, key in PEAK_COLUMNS.items():
        row[col] = ev.peak_memory_gib[key]
    notes = list(res.notes)
    if res.status == "time_limit" and res.solve and res.solve.gap is not None:
        notes.insert(0, f"stopped at the time limit with gap {100 * res.solve.gap:.4f}%")
    row["message"] = "; ".join(notes)
    return row


@dataclass
class Prepared:
    """The points of a sweep: their values, and a scenario or the row that says why not."""

    values: list[tuple]
    scenarios: dict[int, Scenario]
    rows: dict[int, dict]


def prepare(sweep: Sweep) -> Prepared:
    """Build every point's scenario. Raises :class:`InputError` when every point is invalid."""
    points = sweep.points()
    scenarios, rows, first = {}, {}, None
    checked: dict[tuple, InputError | None] = {}
    for i, values in enumerate(points):
        try:
            sc = load_scenario(sweep.base, sweep.point_overrides(values))
            key = (sc.solver.name, json.dumps(sc.solver.options, sort_keys=True, default=str))
            if key not in checked:  # unknown or missing solver, bad HiGHS option: fail here, not per worker
                try:
                    solvers.check_options(sc.solver.name, sc.solver.options)
                    checked[key] = None
                except InputError as exc:
                    checked[key] = exc
            if checked[key] is not None:
                raise checked[key]
            scenarios[i] = sc
        except InputError as exc:
            first = first or exc
            rows[i] = _empty_row("error", _input_message(exc))
    if not scenarios:
        raise InputError(first.field, first.value, f"{first.problem} (at every point of the sweep)")
    return Prepared(values=points, scenarios=scenarios, rows=rows)


def progress_line(done: int, total: int, elapsed_s: float, width: int = 20) -> str:
    """``[=====     ] 12/40 points, 3.1 s``."""
    filled = int(round(width * done / total)) if total else width
    return f"[{'=' * filled}{' ' * (width - filled)}] {done}/{total} points, {elapsed_s:.1f} s"


class Progress:
    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled, self.stream = total, enabled, stream or sys.stderr
        self.t0 = time.perf_counter()
        self.done = 0
        self.show()

    def show(self) -> None:
        if self.enabled:
            self.stream.write("\r" + progress_line(self.done, self.total, time.perf_counter() - self.t0))
            self.stream.flush()

    def step(self) -> None:
        self.done += 1
        self.show()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _worker_context():
    """Workers start from a fresh process, never a fork of this one.

    HiGHS keeps a global thread pool per process: a process forked after this one ran
    HiGHS (an earlier ``--jobs 1`` sweep, a test) inherits the pool's state but not
    its threads, and its solves spin forever. The forkserver is a clean process that
    imports ``model`` (Pyomo) once, so workers start quickly. As with any
    ``multiprocessing`` start method but fork, a script that calls :func:`run` with
    ``--jobs`` > 1 needs the ``if __name__ == "__main__":`` guard.
    """
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["model"])
        return ctx
    return multiprocessing.get_context("spawn")


def run_points(prepared: Prepared, jobs: int, progress: Progress) -> dict[int, dict]:
    """Solve the valid points, in this process (``jobs == 1``) or in a process pool."""
    rows = dict(prepared.rows)
    todo = sorted(prepared.scenarios)
    for _ in prepared.rows:
        progress.step()
    if jobs == 1 or len(todo) == 1:
        for i in todo:
            rows[i] = solve_point(prepared.scenarios[i])
            progress.step()
        return rows
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=_worker_context()) as pool:
        futures = {pool.submit(solve_point, prepared.scenarios[i]): i for i in todo}
        try:
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    rows[i] = fut.result()
                except Exception as exc:  # noqa: BLE001 - a worker died (e.g. out of memory)
                    rows[i] = _empty_row("error", f"worker failed: {exc.__class__.__name__}: {exc}")
                progress.step()
        except BaseException:
            # Ctrl-C, SIGTERM (runners.cli.Terminated): stop the workers now, or leaving the
            # ``with`` would wait for their solves (minutes). Python 3.11's pool has no public
            # way to do it: terminate its processes (``_processes``), then shut it down.
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                try:
                    proc.terminate()
                except Exception:  # noqa: BLE001 - already gone
                    pass
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return rows


# --------------------------------------------------------------------------- outputs
def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def write_csv(path: Path, sweep: Sweep, values: list[tuple], rows: dict[int, dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([p.field for p in sweep.params] + list(RESULT_COLUMNS))
        for i, vals in enumerate(values):
            w.writerow([_cell(v) for v in vals] + [_cell(rows[i][c]) for c in RESULT_COLUMNS])


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if _is_number(v) else _cell(v)


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


# --------------------------------------------------------------------------- plots
STATUS_MARKS = {"infeasible": ("x", "tab:red", "infeasible"), "error": ("X", "tab:orange", "error")}
DEVICE_COLORS = {"gpu": "#4c9a2a", "cpu": "#3b75af", "disk": "#a0a0a0"}


def _numeric(param: Param) -> bool:
    return all(_is_number(v) for v in param.values)


def _use_log(param: Param) -> bool:
    """Log x axis: asked for (``scale: log``), or positive values spaced more evenly in log than linearly."""
    if param.log_scale is not None:
        return param.log_scale
    vals = sorted(float(v) for v in param.values)
    if len(vals) < 3 or vals[0] <= 0 or vals[-1] / vals[0] < 8:
        return False

    def spread(xs):
        d = [b - a for a, b in zip(xs, xs[1:])]
        mean = sum(d) / len(d)
        return (sum((x - mean) ** 2 for x in d) / len(d)) ** 0.5 / mean if mean > 0 else math.inf
    return spread([math.log(v) for v in vals]) < spread(vals)


def _canvas(figsize):
    """A figure on the Agg canvas, without pyplot (no global backend state, safe in worker processes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _title(sweep: Sweep) -> str:
    return f"sweep {sweep.name}: base {sweep.base.name}"


def plot_one(sweep: Sweep, values: list[tuple], rows: dict[int, dict], path: Path) -> None:
    """Throughput; g and N; weights and cache placement (stacked) against the one parameter."""
    import numpy as np
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    param = sweep.params[0]
    n = len(values)
    numeric = _numeric(param)
    x = np.array([float(v[0]) for v in values]) if numeric else np.arange(n, dtype=float)
    order = np.argsort(x, kind="stable")
    x = x[order]
    rs = [rows[int(i)] for i in order]
    labels = [_fmt_value(values[int(i)][0]) for i in order]

    def col(name):
        return np.array([np.nan if r[name] is None else float(r[name]) for r in rs])

    thr = col("throughput_tokens_per_s")
    fig = _canvas((8.5, 11))
    axes = fig.subplots(4, 1, sharex=True, gridspec_kw={"height_ratios": [1.3, 1.0, 0.8, 0.8], "hspace": 0.12})
    ax_t, ax_g, ax_w, ax_c = axes
    fig.suptitle(f"{_title(sweep)}; vary {param.field}", fontsize=12, y=0.985)

    ax_t.plot(x, thr, "o-", color="tab:blue", label="optimal policy")
    ax_t.set_ylabel("throughput\n(generated tokens/s)")
    ax_t.set_ylim(bottom=0, top=(np.nanmax(thr) * 1.12) if np.isfinite(thr).any() else 1)
    for i, r in enumerate(rs):
        if np.isfinite(thr[i]):
            ax_t.annotate(f"{thr[i]:.3g}", (x[i], thr[i]), textcoords="offset points", xytext=(0, 7),
                          ha="center", fontsize=8)
    for status, (marker, color, label) in STATUS_MARKS.items():
        xs = [x[i] for i, r in enumerate(rs) if r["status"] == status]
        if xs:
            ax_t.plot(xs, [0] * len(xs), marker, color=color, ms=11, mew=2.5, ls="none", clip_on=False,
                      label=label, zorder=5)
            for ax in axes:
                for xv in xs:
                    ax.axvline(xv, color=color, ls=":", lw=1.2, alpha=0.8)
    ax_t.legend(loc="best", fontsize=9)

    g, big_n = col("gpu_batch_size"), col("num_gpu_batches")
    ax_g.plot(x, g, "o-", color="tab:purple", label="g (GPU batch size)")
    ax_g.set_ylabel("g (GPU batch size)", color="tab:purple")
    ax_g.tick_params(axis="y", colors="tab:purple")
    ax_g.set_ylim(bottom=0, top=(np.nanmax(g) * 1.4 + 1) if np.isfinite(g).any() else 1)   # room for the legend
    ax_n = ax_g.twinx()
    ax_n.plot(x, big_n, "s--", color="tab:brown", label="N (GPU batches, log scale)")
    ax_n.set_yscale("log")
    if np.isfinite(big_n).any():
        ax_n.set_ylim(np.nanmin(big_n) / 1.5, np.nanmax(big_n) * 4)
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    ax_n.yaxis.set_major_formatter(plain)
    ax_n.yaxis.set_minor_formatter(FuncFormatter(
        lambda v, _pos: f"{v:g}" if f"{v:g}"[0] in "25" else ""))   # label 2, 5, 20, 50, ... between decades
    ax_n.set_ylabel("N (GPU batches, log scale)", color="tab:brown")
    ax_n.tick_params(axis="y", which="both", colors="tab:brown")
    h1, l1 = ax_g.get_legend_handles_labels()
    h2, l2 = ax_n.get_legend_handles_labels()
    ax_g.legend(h1 + h2, l1 + l2, loc="upper center", ncol=2, fontsize=9)

    for ax, kind in ((ax_w, "weights"), (ax_c, "cache")):
        bottom = np.zeros(n)
        for dev in DEVICES:
            frac = 100 * col(f"{kind}_{dev}")
            ax.fill_between(x, bottom, bottom + frac, color=DEVICE_COLORS[dev], alpha=0.85,
                            label=dev.upper() if dev != "disk" else "disk", lw=0)
            bottom = bottom + frac
        ax.set_ylim(0, 100)
        ax.set_ylabel(f"{kind} on\n(% of {'weights' if kind == 'weights' else 'KV cache'})")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)

    ax_c.set_xlabel(param.field)
    if numeric and _use_log(param):
        ax_c.set_xscale("log")
    if len(x) <= 16 or not numeric:
        ax_c.xaxis.set_major_locator(FixedLocator(list(x)))
        ax_c.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _nearest_label(v, x, labels)))
        ax_c.xaxis.set_minor_locator(NullLocator())
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.subplots_adjust(left=0.12, right=0.84, top=0.95, bottom=0.06)
    fig.savefig(path)


def _nearest_label(v: float, xs, labels) -> str:
    k = min(range(len(xs)), key=lambda i: abs(xs[i] - v))
    return labels[k]


def plot_two(sweep: Sweep, values: list[tuple], rows: dict[int, dict], path: Path) -> None:
    """Heatmap of throughput over the grid (grey: infeasible or error), axis values labelled."""
    import numpy as np
    from matplotlib import colormaps

    p0, p1 = sweep.params
    v0, v1 = list(p0.values), list(p1.values)
    if _numeric(p0):
        v0 = sorted(v0)
    if _numeric(p1):
        v1 = sorted(v1)
    z = np.full((len(v1), len(v0)), np.nan)
    status = np.full((len(v1), len(v0)), "", dtype=object)
    gn = np.full((len(v1), len(v0)), "", dtype=object)
    for i, (a, b) in enumerate(values):
        r = rows[i]
        ix, iy = v0.index(a), v1.index(b)
        status[iy, ix] = r["status"]
        if r["throughput_tokens_per_s"] is not None:
            z[iy, ix] = r["throughput_tokens_per_s"]
            gn[iy, ix] = f"g={r['gpu_batch_size']} N={r['num_gpu_batches']}"
    w = min(16.0, max(6.5, 1.0 * len(v0) + 3))
    h = min(12.0, max(4.5, 0.6 * len(v1) + 2.5))
    fig = _canvas((w, h))
    ax = fig.subplots()
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(z), origin="lower", aspect="auto", cmap=cmap)
    fig.colorbar(im, ax=ax, label="throughput (generated tokens/s)")
    ax.set_xticks(range(len(v0)), [_fmt_value(v) for v in v0])
    ax.set_yticks(range(len(v1)), [_fmt_value(v) for v in v1])
    ax.set_xlabel(p0.field)
    ax.set_ylabel(p1.field)
    ax.set_title(f"{_title(sweep)}\nthroughput; grey: no policy", fontsize=11)
    if z.size <= 400:
        finite = z[np.isfinite(z)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0, 1)
        for iy in range(len(v1)):
            for ix in range(len(v0)):
                if np.isfinite(z[iy, ix]):
                    level = (z[iy, ix] - lo) / (hi - lo) if hi > lo else 0.5
                    color = "black" if level > 0.6 else "white"
                    text = f"{z[iy, ix]:.3g}" + (f"\n{gn[iy, ix]}" if z.size <= 100 else "")
                else:
                    color, text = "black", status[iy, ix] or "-"
                ax.text(ix, iy, text, ha="center", va="center", fontsize=8, color=color)
    fig.tight_layout()
    fig.savefig(path)


def plot(sweep: Sweep, values: list[tuple], rows: dict[int, dict], path: Path) -> None:
    (plot_one if len(sweep.params) == 1 else plot_two)(sweep, values, rows, path)


# --------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m runners.sweep",
                description="Solve a scenario over a grid of one or two parameters; write a CSV and plots.",
                epilog="Exit status: 0 the sweep ran (points may be infeasible), 1 every point failed "
                       "with a solver error, 2 bad input.")
    p.add_argument("sweep", help="sweep YAML file, e.g. scenarios/sweeps/gpu_memory.yaml")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="parallel processes (default: the number of CPUs; 1: in this process)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: ./sweep_out/<sweep name>)")
    p.add_argument("--plot-to", metavar="FILE.png", help="also write the plot to this file")
    p.add_argument("--no-plot", action="store_true", help="write no plot (points.csv and the table only)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    add_debug_flag(p)
    return p


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if jobs < 1:
        print(f"error: --jobs = {jobs}: must be >= 1", file=sys.stderr)
        return 2
    if args.plot_to and Path(args.plot_to).suffix.lower() != ".png":
        print(f"error: --plot-to = {args.plot_to!r}: the file name must end in .png", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        sweep = load_sweep(args.sweep)
        prepared = prepare(sweep)
    except InputError as exc:
        print(f"error: {exc.field} = {_short(exc.value)}: {exc.problem}", file=sys.stderr)
        return 2
    total = len(prepared.values)
    progress = Progress(total, enabled=args.progress or sys.stderr.isatty())
    try:
        rows = run_points(prepared, jobs, progress)
    finally:
        progress.close()
    if all(r.get("_input_error") or i in prepared.rows for i, r in rows.items()):
        first = rows[min(rows)]["message"]
        print(f"error: {first} (at every point of the sweep)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path.cwd() / "sweep_out" / sweep.name
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = [out / "points.csv"]
        write_csv(written[0], sweep, prepared.values, rows)
    except OSError as exc:
        print(f"error: --out = {str(out)!r}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("warning: matplotlib is not installed (pip install matplotlib): no plot written", file=sys.stderr)
        else:
            targets = [out / ("sweep.png" if len(sweep.params) == 1 else "heatmap.png")]
            if args.plot_to:
                targets.append(Path(args.plot_to))
            for target in targets:
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    plot(sweep, prepared.values, rows, target)
                except OSError as exc:
                    print(f"error: cannot write {target} ({exc.strerror or exc})", file=sys.stderr)
                    return 2
                written.append(target)
    counts: dict[str, int] = {}
    for r in rows.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    workers = 1 if jobs == 1 else min(jobs, len(prepared.scenarios))
    print(f"sweep {sweep.name}: {total} points ({summary}), base {sweep.base.name}, "
          f"{workers} job{'s' if workers > 1 else ''}, {time.perf_counter() - t0:.1f} s")
    print(table(sweep, prepared.values, rows))
    print("wrote " + ", ".join(str(p) for p in written))
    if all(r["status"] == "error" for r in rows.values()):
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    main_guard(run, argv)


if __name__ == "__main__":
    main()
