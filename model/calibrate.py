"""Measured runs as data, and hardware constants fitted to them (README "Predictions against real runs").

A measurements CSV holds one real run per row: the scenario it ran on (a YAML path relative
to the CSV), the workload, the fixed policy, the attention mode and the measured throughput,
with the source of the number. ``#`` lines are comments. :func:`read_measurements` checks
every cell (a bad one raises :class:`~model.errors.InputError` naming the row and column);
:func:`predict` evaluates a row's policy with given hardware constants; :func:`fit` fits
constants by least squares on ``log(predicted / measured)`` (``scipy.optimize.least_squares``)
with bounds and a pull toward the starting values (a log-normal prior on each constant), so
that a handful of rows cannot drive a constant to an absurd value; :func:`leave_one_out`
refits without each row in turn and predicts it.

The constants are named by their keys under ``hardware:`` (``bandwidth_gib_per_s.cpu_to_gpu``,
``tflops.cpu``, ...). Only rates are fitted (they are positive, so they are fitted in log
space); memory capacities and alphas are the scenario's, and do not change what fits.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from .errors import Infeasible, InputError
from .inputs import CSV_MAX_BYTES, read_text
from .optimize import evaluate_policy
from .scenario import (BANDWIDTH_RANGE, TFLOPS_RANGE, Bandwidth, Compute, MemoryBandwidth, Policy,
                       Scenario, load_scenario, override)

COLUMNS = ("scenario", "prompt_len", "gen_len", "gpu_batch_size", "num_gpu_batches", "percent", "attention",
           "measured_tokens_per_s", "source")
ATTENTION_MODES = ("cpu", "gpu")

# The sections of `hardware:` whose numbers are rates that a fit may change, with the schema's range.
FITTABLE_SECTIONS = {
    "bandwidth_gib_per_s": (Bandwidth, BANDWIDTH_RANGE),
    "tflops": (Compute, TFLOPS_RANGE),
    "memory_bandwidth_gib_per_s": (MemoryBandwidth, BANDWIDTH_RANGE),
}

# The default fit set: the rates that set the time of an offloaded prefill and decode when the
# weights and KV cache stream from CPU memory (the published runs' policies): the host link
# (weights, and the KV cache copied for GPU attention), the GPU's matmul rate, the CPU's
# attention rate, and what bounds a decode step on the GPU: its memory bandwidth under
# `accounting: exact` (decode GEMMs and attention are memory-bound rooflines there), the fitted
# decode rates under `accounting: flexllmgen` (which has no memory bandwidth).
DEFAULT_FIT = {
    "exact": ("bandwidth_gib_per_s.cpu_to_gpu", "tflops.gpu_matmul_prefill", "tflops.cpu",
              "memory_bandwidth_gib_per_s.gpu"),
    "flexllmgen": ("bandwidth_gib_per_s.cpu_to_gpu", "tflops.gpu_matmul_prefill", "tflops.cpu",
                   "tflops.gpu_matmul_decode", "tflops.gpu_bmm_decode"),
}

BOUND_FACTOR = 10.0      # a fitted constant stays within [start / 10, start x 10] (and the schema's range)
PRIOR_FACTOR = 2.0       # the pull toward the start: a factor of 2 either way is one standard deviation
NOISE = 0.05             # a measurement's relative spread (one standard deviation of log(measured))
POORLY_DETERMINED = 0.7  # warn when the rows shrink a constant's spread by less than 30% of the prior's


@dataclass(frozen=True)
class Measurement:
    """One measured run (one CSV row)."""

    row: int                    # 1-based data row (comments and the header not counted)
    line: int                   # line of the CSV file
    scenario_path: Path
    prompt_len: int
    gen_len: int
    gpu_batch_size: int
    num_gpu_batches: int
    percent: tuple[int, ...]
    attention: str
    measured_tokens_per_s: float
    source: str
    scenario: Scenario = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    @property
    def label(self) -> str:
        return f"row {self.row}"


def _where(csv_name: str, row: int | str, column: str) -> str:
    return f"{csv_name} {'row ' if isinstance(row, int) else ''}{row}, column {column}"


def _int_cell(text: str, where: str, lo: int = 1) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise InputError(where, text, "expected an integer") from None
    if value < lo:
        raise InputError(where, value, f"must be >= {lo}")
    return value


def attention_supported() -> bool:
    """Whether this model places attention (``policy.attention``); without it every row is
    predicted with attention on the CPU, where the KV cache lives."""
    return any(f.name == "attention" for f in dataclasses.fields(Policy))


# the scenario key each row cell overrides, for naming the cell in an error
OVERRIDE_COLUMNS = {"workload.prompt_len": "prompt_len", "workload.gen_len": "gen_len",
                    "policy.gpu_batch_size": "gpu_batch_size", "policy.num_gpu_batches": "num_gpu_batches",
                    "policy.percent": "percent", "policy.attention": "attention"}


def row_overrides(m: Measurement) -> dict[str, Any]:
    out: dict[str, Any] = {
        "workload.prompt_len": m.prompt_len, "workload.gen_len": m.gen_len,
        "policy.gpu_batch_size": m.gpu_batch_size, "policy.num_gpu_batches": m.num_gpu_batches,
        "policy.percent": list(m.percent),
    }
    if attention_supported():
        out["policy.attention"] = m.attention
    return out


def read_measurements(path: str | Path) -> list[Measurement]:
    """The rows of a measurements CSV, each with its scenario loaded (policy and workload set)."""
    path = Path(path)
    name = path.name
    text = read_text(path, "measurements", CSV_MAX_BYTES)
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(name, str(path), "no header and no rows (an empty measurements file)")
    try:
        records = list(csv.reader(io.StringIO("\n".join(ln for _, ln in lines)), strict=True))
    except csv.Error as exc:
        raise InputError(name, str(path), f"not valid CSV ({exc})") from None
    if len(records) != len(lines):   # a quoted field spanning lines
        raise InputError(name, str(path), "a quoted cell spans lines; one row per line")
    header = [h.strip() for h in records[0]]
    for col in COLUMNS:
        if col not in header:
            raise InputError(_where(name, "header (line %d)" % lines[0][0], col), None,
                             f"required column is missing (columns: {', '.join(COLUMNS)})")
    dup = [h for h in header if header.count(h) > 1]
    if dup:
        raise InputError(_where(name, f"header (line {lines[0][0]})", dup[0]), dup[0], "column given twice")
    if len(records) == 1:
        raise InputError(name, str(path), "a header but no measurement rows")
    out = []
    for r, ((lineno, _), rec) in enumerate(zip(lines[1:], records[1:]), start=1):
        if len(rec) != len(header):
            raise InputError(f"{name} row {r} (line {lineno})", len(rec), f"has {len(rec)} cells, the header {len(header)}")
        cell = {h: v.strip() for h, v in zip(header, rec)}
        out.append(_row(path, name, r, lineno, cell))
    return out


def _row(path: Path, name: str, r: int, lineno: int, cell: dict[str, str]) -> Measurement:
    w = lambda col: _where(name, r, col)   # noqa: E731
    if not cell["scenario"]:
        raise InputError(w("scenario"), "", "empty: the path of a scenario YAML, relative to the CSV")
    scenario_path = (path.parent / cell["scenario"]).expanduser()
    prompt_len = _int_cell(cell["prompt_len"], w("prompt_len"))
    gen_len = _int_cell(cell["gen_len"], w("gen_len"))
    g = _int_cell(cell["gpu_batch_size"], w("gpu_batch_size"))
    n = _int_cell(cell["num_gpu_batches"], w("num_gpu_batches"))
    parts = cell["percent"].split()
    if len(parts) != 6:
        raise InputError(w("percent"), cell["percent"], "expected six integers separated by spaces "
                                                        "(weights, cache, activations on GPU and CPU)")
    percent = tuple(_int_cell(p, w("percent"), lo=0) for p in parts)
    if any(p > 100 for p in percent):
        raise InputError(w("percent"), cell["percent"], "each percent must be within 0..100")
    attention = cell["attention"].lower()
    if attention not in ATTENTION_MODES:
        raise InputError(w("attention"), cell["attention"], "expected cpu or gpu")
    try:
        measured = float(cell["measured_tokens_per_s"])
    except ValueError:
        raise InputError(w("measured_tokens_per_s"), cell["measured_tokens_per_s"], "expected a number") from None
    if not math.isfinite(measured) or measured <= 0:
        raise InputError(w("measured_tokens_per_s"), cell["measured_tokens_per_s"], "must be a positive number")
    m = Measurement(row=r, line=lineno, scenario_path=scenario_path, prompt_len=prompt_len, gen_len=gen_len,
                    gpu_batch_size=g, num_gpu_batches=n, percent=percent, attention=attention,
                    measured_tokens_per_s=measured, source=cell["source"])
    try:
        sc = load_scenario(scenario_path, row_overrides(m))
    except InputError as exc:
        column = OVERRIDE_COLUMNS.get(exc.field)
        if column is not None:   # the row's own cell (a policy the scenario rules out)
            raise InputError(w(column), cell[column], exc.problem) from None
        if exc.field == "scenario" and exc.value == str(scenario_path):   # the file itself
            raise InputError(w("scenario"), cell["scenario"], exc.problem) from None
        raise InputError(w("scenario"), cell["scenario"], f"{exc.field} = {exc.value!s:.80}: {exc.problem}") from None
    return dataclasses.replace(m, scenario=sc)


# --------------------------------------------------------------------------- constants


def constant_keys() -> list[str]:
    """Every fittable key, ``section.name``."""
    return [f"{sec}.{f.name}" for sec, (cls, _) in FITTABLE_SECTIONS.items() for f in dataclasses.fields(cls)]


def constant_value(sc: Scenario, key: str) -> float | None:
    section, name = key.split(".", 1)
    node = getattr(sc.hardware, section, None)
    return None if node is None else getattr(node, name, None)


def default_fit(sc: Scenario) -> list[str]:
    return list(DEFAULT_FIT[sc.model.accounting])


def check_fit_keys(keys: list[str], sc: Scenario, flag: str = "--fit") -> None:
    known = constant_keys()
    if not keys:
        raise InputError(flag, "", "name at least one constant")
    for key in keys:
        if key not in known:
            raise InputError(flag, key, f"unknown constant (fittable: {', '.join(known)})")
        if constant_value(sc, key) is None:
            raise InputError(flag, key, "the rows' scenario has no value for it to start from")
    if len(set(keys)) != len(keys):
        raise InputError(flag, ",".join(keys), "a constant named twice")


def bounds_for(key: str, start: float) -> tuple[float, float]:
    lo_s, hi_s = FITTABLE_SECTIONS[key.split(".", 1)[0]][1]
    return max(start / BOUND_FACTOR, lo_s), min(start * BOUND_FACTOR, hi_s)


def machine_of(rows: list[Measurement], csv_name: str) -> None:
    """All rows must describe one machine: the same preset and the same rates (exit 2 otherwise)."""
    first = rows[0].scenario.hardware
    for m in rows[1:]:
        hw = m.scenario.hardware
        if hw.preset != first.preset:
            raise InputError(_where(csv_name, m.row, "scenario"), str(m.scenario_path.name),
                             f"hardware.preset {hw.preset!s:.80} differs from row 1's {first.preset!s:.80}: "
                             "all rows of one file describe one machine (one preset comes out)")
        for key in constant_keys():
            a, b = constant_value(rows[0].scenario, key), constant_value(m.scenario, key)
            if a != b:
                raise InputError(_where(csv_name, m.row, "scenario"), str(m.scenario_path.name),
                                 f"hardware.{key} = {b} differs from row 1's {a}: all rows of one file "
                                 "describe one machine")


# --------------------------------------------------------------------------- prediction


def predict(m: Measurement, constants: dict[str, float] | None = None):
    """The model's :class:`~model.optimize.Result` for row ``m`` with ``constants`` (hardware keys) set."""
    sc = m.scenario if not constants else override(m.scenario, {f"hardware.{k}": v for k, v in constants.items()})
    return evaluate_policy(sc, m.gpu_batch_size, m.num_gpu_batches, list(m.percent))


def check_fits(rows: list[Measurement], csv_name: str) -> None:
    """Raise :class:`Infeasible` naming each row whose policy does not fit its scenario, and the resource."""
    bad = []
    for m in rows:
        res = predict(m)
        if res.status == "infeasible":
            bad += [f"{csv_name} row {m.row} (gen {m.gen_len}, g {m.gpu_batch_size}, N {m.num_gpu_batches}): {why}"
                    for why in res.infeasible_reasons]
    if bad:
        raise Infeasible(bad)


def predicted_tokens_per_s(m: Measurement, constants: dict[str, float] | None = None) -> float:
    return float(predict(m, constants).evaluation.throughput_tokens_per_s)


# --------------------------------------------------------------------------- the fit


@dataclass
class Fit:
    keys: list[str]
    start: dict[str, float]
    after: dict[str, float]
    bounds: dict[str, tuple[float, float]]
    prior_sd: float                    # log units
    noise: float                       # a measurement's relative spread used
    posterior_sd: dict[str, float]     # log units
    singular_values: list[float]       # of the rows' Jacobian d log(pred) / d log(constant)
    at_bound: list[str]
    cost: float
    nfev: int
    message: str

    def poorly_determined(self) -> list[str]:
        return [k for k in self.keys if self.posterior_sd[k] > POORLY_DETERMINED * self.prior_sd]

    def warnings(self) -> list[str]:
        out = []
        for k in self.poorly_determined():
            out.append(f"{k} is poorly determined by the rows: its spread after the fit is x/{math.exp(self.posterior_sd[k]):.2f} "
                       f"against x/{math.exp(self.prior_sd):.2f} before (the rows shrink it by "
                       f"{100 * (1 - self.posterior_sd[k] / self.prior_sd):.0f}%): its value is set mostly by the pull "
                       "toward its start, not by the rows; add rows that it limits, or leave it out of --fit")
        for k in self.at_bound:
            lo, hi = self.bounds[k]
            out.append(f"{k} = {self.after[k]:.6g} stopped at its bound [{lo:.6g}, {hi:.6g}] ({BOUND_FACTOR:g}x either "
                       "way of its start): the model likely lacks a term the rows need")
        return out


def fit(rows: list[Measurement], keys: list[str], start: dict[str, float] | None = None,
        prior_factor: float = PRIOR_FACTOR, noise: float = NOISE) -> Fit:
    """Least squares on log(predicted / measured) / noise, plus log(constant / start) / log(prior_factor)."""
    start = start or {k: constant_value(rows[0].scenario, k) for k in keys}
    x0 = np.array([math.log(start[k]) for k in keys])
    lo = np.array([math.log(bounds_for(k, start[k])[0]) for k in keys])
    hi = np.array([math.log(bounds_for(k, start[k])[1]) for k in keys])
    prior_sd = math.log(prior_factor)
    measured = np.array([m.measured_tokens_per_s for m in rows])

    def residuals(x):
        consts = {k: float(math.exp(v)) for k, v in zip(keys, x)}
        pred = np.array([predicted_tokens_per_s(m, consts) for m in rows])
        return np.concatenate([np.log(pred / measured) / noise, (x - x0) / prior_sd])

    res = least_squares(residuals, x0, bounds=(lo, hi), method="trf", diff_step=1e-4, x_scale=1.0,
                        xtol=1e-10, ftol=1e-10, gtol=1e-10, max_nfev=200 * (len(keys) + 1))
    jac = np.asarray(res.jac)
    try:
        cov = np.linalg.inv(jac.T @ jac)
        post = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        post = np.full(len(keys), prior_sd)
    data_jac = jac[: len(rows)] * noise   # d log(pred) / d log(constant)
    sv = np.linalg.svd(data_jac, compute_uv=False).tolist() if data_jac.size else []
    after = {k: float(math.exp(v)) for k, v in zip(keys, res.x)}
    at_bound = [k for k, v, a, b in zip(keys, res.x, lo, hi) if min(v - a, b - v) < 1e-6]
    return Fit(keys=list(keys), start=dict(start), after=after,
               bounds={k: bounds_for(k, start[k]) for k in keys}, prior_sd=prior_sd, noise=noise,
               posterior_sd={k: float(s) for k, s in zip(keys, post)}, singular_values=sv,
               at_bound=at_bound, cost=float(res.cost), nfev=int(res.nfev), message=str(res.message))


def leave_one_out(rows: list[Measurement], keys: list[str], start: dict[str, float] | None = None,
                  **kw) -> list[float]:
    """Each row's prediction by the constants fitted to all the other rows."""
    out = []
    for i, m in enumerate(rows):
        f = fit(rows[:i] + rows[i + 1:], keys, start, **kw)
        out.append(predicted_tokens_per_s(m, f.after))
    return out


def relative_error(predicted: float, measured: float) -> float:
    return predicted / measured - 1.0


def error_summary(predicted: list[float], measured: list[float]) -> dict[str, float]:
    errs = [abs(relative_error(p, m)) for p, m in zip(predicted, measured)]
    return {"median_abs_rel_error": float(np.median(errs)), "worst_abs_rel_error": float(max(errs))}


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).date().isoformat()


SIGNIFICANT = 6   # digits a fitted constant is written (and predicted) with


def rounded(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT}g}")


@dataclass
class Calibration:
    """A fit over rows, and every row's prediction before, after and left out of it."""

    rows: list[Measurement]
    fit: Fit
    before_tokens_per_s: list[float]
    after_tokens_per_s: list[float]
    loo_tokens_per_s: list[float] | None

    @property
    def constants(self) -> dict[str, float]:
        return self.fit.after

    def summary(self) -> dict[str, dict[str, float]]:
        meas = [m.measured_tokens_per_s for m in self.rows]
        out = {"before": error_summary(self.before_tokens_per_s, meas),
               "after": error_summary(self.after_tokens_per_s, meas)}
        if self.loo_tokens_per_s is not None:
            out["leave_one_out"] = error_summary(self.loo_tokens_per_s, meas)
        return out


def calibrate(rows: list[Measurement], keys: list[str], *, loo: bool = True, prior_factor: float = PRIOR_FACTOR,
              noise: float = NOISE) -> Calibration:
    """Fit ``keys`` to ``rows`` (constants rounded to :data:`SIGNIFICANT` digits, as written), and
    predict each row before, after and (``loo``) by a fit to the other rows."""
    f = fit(rows, keys, prior_factor=prior_factor, noise=noise)
    f.after = {k: rounded(v) for k, v in f.after.items()}
    before = [predicted_tokens_per_s(m) for m in rows]
    after = [predicted_tokens_per_s(m, f.after) for m in rows]
    left = None
    if loo and len(rows) > 1:
        left = leave_one_out(rows, keys, prior_factor=prior_factor, noise=noise)
    return Calibration(rows=rows, fit=f, before_tokens_per_s=before, after_tokens_per_s=after, loo_tokens_per_s=left)


def describe_rows(rows: list[Measurement]) -> str:
    """``rows 1-8 (gen 32, 64; attention cpu, gpu)``: what a fit saw, for a preset's comments."""
    nums = [m.row for m in rows]
    span = (f"rows {nums[0]}-{nums[-1]}" if nums == list(range(nums[0], nums[-1] + 1)) and len(nums) > 1
            else "rows " + ", ".join(map(str, nums)) if len(nums) > 1 else f"row {nums[0]}")
    gens = ", ".join(str(g) for g in sorted({m.gen_len for m in rows}))
    modes = ", ".join(sorted({m.attention for m in rows}))
    return f"{span} (gen {gens}; attention {modes})"


def preset_text(cal: Calibration, csv_name: str, out_path: Path, command: str, date: str) -> str:
    """A hardware preset YAML with the fitted constants, each commented with what it was fitted to."""
    sc = cal.rows[0].scenario
    hw = sc.hardware
    what = describe_rows(cal.rows)
    f = cal.fit
    summ = cal.summary()

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    lines = [
        f"# Hardware preset calibrated on {date} (UTC) by `{command}`:",
        f"# the constants below were fitted to the measured runs of {csv_name}, {what}",
        "# (each row's source is in its `source` column), by least squares on log(predicted / measured)",
        f"# with each constant pulled toward its start (a factor of {math.exp(f.prior_sd):g} either way is one standard",
        f"# deviation; a measurement's spread is taken as {100 * f.noise:g}%) and bounded to {BOUND_FACTOR:g}x either way.",
        f"# Median |error| of the rows: {pct(summ['before']['median_abs_rel_error'])} before, "
        f"{pct(summ['after']['median_abs_rel_error'])} after"
        + (f", {pct(summ['leave_one_out']['median_abs_rel_error'])} left out of the fit (leave-one-out)"
           if "leave_one_out" in summ else "") + ".",
        f"# Worst: {pct(summ['before']['worst_abs_rel_error'])} before, {pct(summ['after']['worst_abs_rel_error'])} after"
        + (f", {pct(summ['leave_one_out']['worst_abs_rel_error'])} leave-one-out" if "leave_one_out" in summ else "") + ".",
    ]
    base = hw.preset
    if base is not None:
        lines.append("# Everything not listed here comes from the base preset named by `preset:`.")
    else:
        lines.append("# The rows' scenario named no preset: its rates are copied here; only those marked fitted were.")
    name = f"{hw.name}, calibrated to {csv_name}"
    lines += [f"name: {_yaml_str(name)}",
              f"source: {_yaml_str(f'calibrated {date} to {csv_name} {what} by runners.calibrate' + (f'; base preset {base}' if base else ''))}"]
    if base is not None:
        from .scenario import is_preset_path
        ref = base
        if is_preset_path(base):
            try:
                ref = str(Path(base).resolve().relative_to(out_path.resolve().parent))
            except ValueError:
                ref = str(Path(base).resolve())
        lines.append(f"preset: {_yaml_str(ref)}")
    elif hw.host_link:
        lines.append(f"host_link: {_yaml_str(hw.host_link)}")
    sections = list(FITTABLE_SECTIONS)
    for section in sections:
        node = getattr(hw, section, None)
        if node is None:
            continue
        keys = [fl.name for fl in dataclasses.fields(node) if getattr(node, fl.name) is not None]
        shown = [k for k in keys if f"{section}.{k}" in f.after or base is None]
        if not shown:
            continue
        lines.append(f"{section}:")
        for k in shown:
            key = f"{section}.{k}"
            if key in f.after:
                note = (f"fitted {date} to {csv_name} {what}; start {f.start[key]:.{SIGNIFICANT}g}"
                        f" ({100 * (f.after[key] / f.start[key] - 1):+.1f}%)")
                if key in f.poorly_determined():
                    note += (f"; POORLY DETERMINED by these rows (spread x/{math.exp(f.posterior_sd[key]):.2f}): "
                             "set mostly by the pull toward its start")
                if key in f.at_bound:
                    note += "; stopped at its bound"
                lines.append(f"  {k}: {f.after[key]:.{SIGNIFICANT}g}   # {note}")
            else:
                lines.append(f"  {k}: {getattr(node, k)!r}   # not fitted: the rows' scenario's value")
    if base is None:
        ce = hw.cpu_efficiency
        lines.append("cpu_efficiency:   # not fitted: the rows' scenario's values")
        lines += [f"  {k}: {getattr(ce, k)!r}" for k in ("c1", "c2", "c3")]
    return "\n".join(lines) + "\n"


def _yaml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
