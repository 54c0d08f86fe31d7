"""python -m runners.calibrate MEASUREMENTS.csv --out FILE.yaml: fit hardware constants to measured runs.

Each row of the CSV is a real run (README "Predictions against real runs"): its scenario,
workload, fixed policy, attention mode and measured tokens/s. The constants named by
``--fit`` (keys under ``hardware:``; a default set otherwise) are fitted so that the model's
throughput of each row's policy matches the measurement: least squares on
log(predicted / measured) (scipy.optimize.least_squares), each constant bounded to 10x either
way of its start and pulled toward it, so that a few rows cannot drive it to an absurd value.

It prints per row the measured, predicted-before, predicted-after and leave-one-out
tokens/s, the constants before and after, and a warning for each constant the rows leave
poorly determined; writes FILE.yaml as a hardware preset (``hardware: {preset: FILE.yaml}``
in a scenario uses it) and FILE.png, predicted against measured, beside it.

Exit status: 0 written; 1 a row's policy does not fit its scenario (the row and the resource
are named) or the work failed; 2 bad input (one line naming the row and column, or the flag).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import tempfile
from pathlib import Path

from model.calibrate import (BOUND_FACTOR, DEFAULT_FIT, NOISE, PRIOR_FACTOR, attention_supported, calibrate,
                             check_fit_keys, check_fits, default_fit, describe_rows, machine_of, preset_text,
                             predict, read_measurements, relative_error, today)
from model.errors import InputError
from runners.cli import OneLineParser, add_debug_flag, main_guard, say


def _parser() -> OneLineParser:
    ap = OneLineParser(prog="python -m runners.calibrate", description=__doc__.split("\n")[0])
    ap.add_argument("measurements", metavar="MEASUREMENTS.csv",
                    help="measured runs, one per row (columns: README 'Predictions against real runs')")
    ap.add_argument("--out", required=True, metavar="FILE.yaml",
                    help="write the calibrated hardware preset here, and the predicted-vs-measured plot "
                         "beside it as FILE.png")
    ap.add_argument("--fit", default=None, metavar="KEY,...",
                    help="comma-separated constants to fit, as keys under hardware: (e.g. "
                         "bandwidth_gib_per_s.cpu_to_gpu,tflops.cpu); default: "
                         + "; ".join(f"{acc} accounting: {','.join(keys)}" for acc, keys in
                                     DEFAULT_FIT.items()))
    ap.add_argument("--prior-factor", type=float, default=PRIOR_FACTOR, metavar="X",
                    help="the pull toward the starting values: a constant X times (or 1/X times) its start "
                         "costs as much as one measurement off by the noise (default: %(default)s)")
    ap.add_argument("--noise", type=float, default=NOISE, metavar="X",
                    help="a measurement's relative spread, one standard deviation (default: %(default)s)")
    ap.add_argument("--no-loo", action="store_true",
                    help="skip the leave-one-out predictions (one more fit per row)")
    ap.add_argument("--allow-infeasible", action="store_true",
                    help="fit rows whose policy the model's memory accounting rejects (they did run, so the "
                         "accounting is what is wrong) instead of exiting 1; each is named in a warning")
    ap.add_argument("--json", action="store_true", help="print one JSON object (rows, constants, warnings) instead of tables")
    add_debug_flag(ap)
    return ap


def _check_out(out: str) -> tuple[Path, Path]:
    p = Path(out).expanduser()
    if p.suffix not in (".yaml", ".yml"):
        raise InputError("--out", out, "must name a .yaml (or .yml) file: the plot goes beside it as .png")
    if not p.parent.is_dir():
        raise InputError("--out", out, "its folder does not exist")
    if p.exists() and not p.is_file():
        raise InputError("--out", out, "exists and is not a regular file")
    return p, p.with_suffix(".png")


def _write_atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, renamed over ``path`` (removed on failure)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def plot(cal, png: Path, title: str) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meas = [m.measured_tokens_per_s for m in cal.rows]
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    lo = min(meas + cal.before_tokens_per_s + cal.after_tokens_per_s) * 0.8
    hi = max(meas + cal.before_tokens_per_s + cal.after_tokens_per_s) * 1.25
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, label="predicted = measured")
    ax.fill_between([lo, hi], [lo * 0.85, hi * 0.85], [lo * 1.15, hi * 1.15], color="gray", alpha=0.12,
                    label="within 15%")
    ax.scatter(meas, cal.before_tokens_per_s, marker="o", facecolors="none", edgecolors="tab:red",
               label="before (starting constants)")
    ax.scatter(meas, cal.after_tokens_per_s, marker="o", color="tab:blue", label="after the fit")
    if cal.loo_tokens_per_s is not None:
        ax.scatter(meas, cal.loo_tokens_per_s, marker="x", color="tab:green", label="leave-one-out")
    for m, y in zip(cal.rows, cal.after_tokens_per_s):
        ax.annotate(f"{m.gen_len}/{m.attention}", (m.measured_tokens_per_s, y), textcoords="offset points",
                    xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured tokens/s")
    ax.set_ylabel("predicted tokens/s")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    try:
        _write_atomic(png, lambda fh: fig.savefig(fh, format="png", dpi=120))
    finally:
        plt.close(fig)


def report(cal, csv_path: Path, out: Path, png: Path, warnings: list[str]) -> dict:
    rows = []
    for i, m in enumerate(cal.rows):
        r = {"row": m.row, "line": m.line, "scenario": str(m.scenario_path), "prompt_len": m.prompt_len,
             "gen_len": m.gen_len, "gpu_batch_size": m.gpu_batch_size, "num_gpu_batches": m.num_gpu_batches,
             "percent": list(m.percent), "attention": m.attention,
             "measured_tokens_per_s": m.measured_tokens_per_s,
             "predicted_before_tokens_per_s": cal.before_tokens_per_s[i],
             "predicted_tokens_per_s": cal.after_tokens_per_s[i],
             "leave_one_out_tokens_per_s": cal.loo_tokens_per_s[i] if cal.loo_tokens_per_s else None,
             "error_before": relative_error(cal.before_tokens_per_s[i], m.measured_tokens_per_s),
             "error_after": relative_error(cal.after_tokens_per_s[i], m.measured_tokens_per_s),
             "error_leave_one_out": (relative_error(cal.loo_tokens_per_s[i], m.measured_tokens_per_s)
                                     if cal.loo_tokens_per_s else None),
             "source": m.source}
        rows.append(r)
    f = cal.fit
    poor = set(f.poorly_determined())
    constants = {k: {"before": f.start[k], "after": f.after[k], "change": f.after[k] / f.start[k] - 1,
                     "lower_bound": f.bounds[k][0], "upper_bound": f.bounds[k][1],
                     "spread_factor_before": math.exp(f.prior_sd), "spread_factor_after": math.exp(f.posterior_sd[k]),
                     "poorly_determined": k in poor, "at_bound": k in f.at_bound} for k in f.keys}
    return {"measurements": str(csv_path), "preset_file": str(out), "plot_file": str(png), "date": today(),
            "rows": rows, "constants": constants, "summary": cal.summary(),
            "fit": {"keys": f.keys, "prior_factor": math.exp(f.prior_sd), "noise": f.noise, "bound_factor": BOUND_FACTOR,
                    "evaluations": f.nfev, "cost": f.cost, "message": f.message,
                    "singular_values": f.singular_values},
            "warnings": warnings}


def print_text(rep: dict) -> None:
    print(f"Calibration of {rep['measurements']}: {len(rep['rows'])} rows")
    print(f"{'row':>4} {'gen':>5} {'g':>4} {'N':>5} {'percent':<18} {'attn':<4} {'measured':>9} {'before':>9} "
          f"{'after':>9} {'left out':>9}   {'err before':>10} {'after':>7} {'left out':>8}")
    for r in rep["rows"]:
        loo, loo_err = r["leave_one_out_tokens_per_s"], r["error_leave_one_out"]
        loo_text = "" if loo is None else f"{loo:9.3f}"
        loo_err_text = "" if loo_err is None else f"{100 * loo_err:+7.1f}%"
        print(f"{r['row']:>4} {r['gen_len']:>5} {r['gpu_batch_size']:>4} {r['num_gpu_batches']:>5} "
              f"{' '.join(map(str, r['percent'])):<18} {r['attention']:<4} {r['measured_tokens_per_s']:9.3f} "
              f"{r['predicted_before_tokens_per_s']:9.3f} {r['predicted_tokens_per_s']:9.3f} {loo_text:>9}   "
              f"{100 * r['error_before']:+9.1f}% {100 * r['error_after']:+6.1f}% {loo_err_text:>8}")
    s = rep["summary"]
    for stat, label in (("median_abs_rel_error", "median |error|"), ("worst_abs_rel_error", "worst |error|")):
        loo = s.get("leave_one_out")
        print(f"{label:<16} before {100 * s['before'][stat]:.1f}%, after {100 * s['after'][stat]:.1f}%"
              + (f", left out {100 * loo[stat]:.1f}%" if loo else ""))
    print()
    print(f"{'constant':<36} {'before':>10} {'after':>10} {'change':>8}  spread before -> after")
    for k, c in rep["constants"].items():
        flag = "  POORLY DETERMINED" if c["poorly_determined"] else ""
        flag += "  AT BOUND" if c["at_bound"] else ""
        print(f"{k:<36} {c['before']:10.5g} {c['after']:10.5g} {100 * c['change']:+7.1f}%  "
              f"x/{c['spread_factor_before']:.2f} -> x/{c['spread_factor_after']:.2f}{flag}")
    print()
    print(f"wrote {rep['preset_file']} (a hardware preset: hardware: {{preset: {Path(rep['preset_file']).name}}} "
          f"in a scenario beside it) and {rep['plot_file']}")


def run(argv=None) -> int:
    args = _parser().parse_args(argv)
    for flag, value in (("--prior-factor", args.prior_factor), ("--noise", args.noise)):
        if not math.isfinite(value) or value <= (1.0 if flag == "--prior-factor" else 0.0):
            raise InputError(flag, value, "must be > 1" if flag == "--prior-factor" else "must be > 0")
    out, png = _check_out(args.out)
    csv_path = Path(args.measurements)
    rows = read_measurements(csv_path)
    machine_of(rows, csv_path.name)
    sc = rows[0].scenario
    keys = [k.strip() for k in args.fit.split(",")] if args.fit is not None else default_fit(sc)
    check_fit_keys(keys, sc)
    warnings = [f"{csv_path.name} row {m.row} has an empty source: say where the measurement was published or "
                "how it was taken" for m in rows if not m.source]
    if not attention_supported() and any(m.attention == "gpu" for m in rows):
        warnings.append("this model has no attention placement (policy.attention) yet: rows measured with "
                        "attention on the GPU are predicted with attention on the CPU")
    if args.allow_infeasible:
        for m in rows:
            res = predict(m)
            for why in (res.infeasible_reasons or []) if res.status == "infeasible" else []:
                warnings.append(f"{csv_path.name} row {m.row} does not fit its scenario, fitted anyway: {why}")
    else:
        check_fits(rows, csv_path.name)
    cal = calibrate(rows, keys, loo=not args.no_loo, prior_factor=args.prior_factor, noise=args.noise)
    warnings += cal.fit.warnings()
    command = "python -m runners.calibrate " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    text = preset_text(cal, csv_path.name, out, command, today())
    _write_atomic(out, lambda fh: fh.write(text.encode("utf-8")))
    summ = cal.summary()
    plot(cal, png, f"{csv_path.name}: {describe_rows(rows)}\nmedian |error| before "
                   f"{100 * summ['before']['median_abs_rel_error']:.1f}%, after {100 * summ['after']['median_abs_rel_error']:.1f}%")
    rep = report(cal, csv_path, out, png, warnings)
    for w in warnings:
        say(f"warning: {w}")
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print_text(rep)
    return 0


def main(argv=None) -> None:
    main_guard(run, argv)


if __name__ == "__main__":
    main()
