"""python -m runners.bench --fidelity: the model's predictions against the shipped measurements.

For each measurements CSV (default: every ``scenarios/measurements/*.csv``) it prints, per row,
the measured tokens/s and three predictions, each with its relative error:

* **shipped**: the row's scenario as shipped (its preset's constants, nothing fitted);
* **leave-one-out**: the default constants of ``runners.calibrate`` fitted to every *other*
  row of the file, then used to predict this one;
* **held out**: fitted to the rows of the fit generation lengths only (default 32 and 128,
  both attention modes), predicting the other lengths: the check that calibrating on two
  generation lengths predicts the rest (rows of the fit lengths show ``fit``).

and the median and worst absolute error of each column, as a Markdown table (the README's
fidelity table is this output). A row whose policy the model's memory accounting rejects is
predicted all the same and marked ``*`` (it did run: the accounting is what is wrong there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.errors import InputError
from model.calibrate import (attention_supported, calibrate, default_fit, fit, machine_of, predict,
                             predicted_tokens_per_s, read_measurements, relative_error, rounded)

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ROOT / "scenarios" / "measurements"


def parse_gen_lens(text: str) -> tuple[int, ...]:
    try:
        gens = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise InputError("--fit-gen-lens", text, "expected comma-separated generation lengths, e.g. 32,128") from None
    if not gens or min(gens) < 1:
        raise InputError("--fit-gen-lens", text, "generation lengths must be >= 1")
    return gens


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:+.1f}%"


def _stats(errs: list[float]) -> tuple[str, str]:
    if not errs:
        return "", ""
    a = [abs(e) for e in errs]
    return f"{100 * float(np.median(a)):.1f}%", f"{100 * max(a):.1f}%"


def fidelity(path: Path, fit_gens: tuple[int, ...]) -> dict:
    """Every row of ``path`` with its measured, shipped, leave-one-out and held-out predictions."""
    rows = read_measurements(path)
    machine_of(rows, path.name)
    keys = default_fit(rows[0].scenario)
    cal = calibrate(rows, keys, loo=True)
    fit_rows = [m for m in rows if m.gen_len in fit_gens]
    held = None
    if fit_rows and len(fit_rows) < len(rows):
        f = fit(fit_rows, keys)
        held = {k: rounded(v) for k, v in f.after.items()}
    out = []
    for i, m in enumerate(rows):
        held_pred = None if held is None or m.gen_len in fit_gens else predicted_tokens_per_s(m, held)
        out.append({"row": m, "fits": predict(m).status != "infeasible",
                    "shipped": cal.before_tokens_per_s[i], "loo": cal.loo_tokens_per_s[i],
                    "held_out": held_pred, "is_fit_row": m.gen_len in fit_gens})
    return {"path": path, "keys": keys, "rows": out, "held_constants": held, "all_constants": cal.constants}


def fidelity_table(paths: list[Path], fit_gens: tuple[int, ...]) -> int:
    paths = paths or sorted(MEASUREMENTS.glob("*.csv"))
    fits = ",".join(map(str, fit_gens))
    if not attention_supported():
        print("(this model has no attention placement yet: rows measured with attention on the GPU are predicted "
              "with attention on the CPU)\n")
    for path in paths:
        res = fidelity(path, fit_gens)
        print(f"**{path.name}** (default fit set: {', '.join(f'`{k}`' for k in res['keys'])})\n")
        print(f"| gen | attention | g | N | measured tokens/s | shipped preset | error | leave-one-out | error "
              f"| fit on gen {fits} | error |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        e_ship, e_loo, e_held = [], [], []
        for r in res["rows"]:
            m = r["row"]
            meas = m.measured_tokens_per_s
            es, el = relative_error(r["shipped"], meas), relative_error(r["loo"], meas)
            e_ship.append(es)
            e_loo.append(el)
            if r["held_out"] is not None:
                eh = relative_error(r["held_out"], meas)
                e_held.append(eh)
                held, held_err = f"{r['held_out']:.2f}", _pct(eh)
            else:
                held, held_err = ("fit", "") if r["is_fit_row"] else ("", "")
            mark = "" if r["fits"] else "\\*"
            print(f"| {m.gen_len} | {m.attention} | {m.gpu_batch_size} | {m.num_gpu_batches} | {meas:g} "
                  f"| {r['shipped']:.2f}{mark} | {_pct(es)} | {r['loo']:.2f} | {_pct(el)} | {held} | {held_err} |")
        for label, idx in (("median abs error", 0), ("worst abs error", 1)):
            print(f"| {label} | | | | | | {_stats(e_ship)[idx]} | | {_stats(e_loo)[idx]} | | {_stats(e_held)[idx]} |")
        print()
        if not all(r["fits"] for r in res["rows"]):
            print("\\* the model's memory accounting rejects this policy (it ran: the accounting is what is wrong).\n")
        if res["held_constants"]:
            print(f"Constants fitted on gen {fits}: " + ", ".join(f"`{k}` {v:g}" for k, v in res["held_constants"].items()))
            print()
    return 0
