"""The study's plots: the sweep's line plot (one axis) and heatmap (two axes), unchanged, and a
throughput-versus-block-time scatter with its Pareto front, coloured by an axis.

Figures are drawn on the Agg canvas without pyplot (no global backend state).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from model.terms import DEVICES

from .spec import Param, Sweep, _is_number


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if _is_number(v) else _cell(v)


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




PARETO_REL_TOL = 1e-4     # the scenarios' default mip_gap


def pareto_front(points: list[tuple[float, float]], rel_tol: float = 0.0) -> list[int]:
    """Indexes of the points no other point beats on both counts (lower block time, higher
    throughput), ordered by block time. Ties: the first of equal points is kept. With
    ``rel_tol`` a point must beat the throughput before it by more than that fraction (the
    plot uses the default MIP gap, 1e-4: closer optima are not told apart by the solver)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best * (1 + rel_tol) if best > 0 else points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(sweep: Sweep, values: list[tuple], rows: dict[int, dict], path: Path, color_by: int = 0) -> bool:
    """Throughput against block time (the latency of a block of ``g * N`` sequences), one dot per
    feasible point, coloured by axis ``color_by``; the Pareto front drawn as a step line.
    Returns False (and writes nothing) when no point has a policy."""
    import numpy as np
    from matplotlib import colormaps

    pts, keep = [], []
    for i in range(len(values)):
        r = rows[i]
        if r.get("throughput_tokens_per_s") is not None and r.get("block_time_s") is not None:
            pts.append((float(r["block_time_s"]), float(r["throughput_tokens_per_s"])))
            keep.append(i)
    if not pts:
        return False
    param = sweep.params[color_by]
    cvals = [values[i][color_by] for i in keep]
    fig = _canvas((9, 6))
    ax = fig.subplots()
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    if _numeric(param) and len(set(param.values)) > 8:
        c = np.array([float(v) for v in cvals])
        sc = ax.scatter(x, y, c=c, cmap="viridis", s=18, alpha=0.8, lw=0,
                        norm="log" if _use_log(param) else None)
        cb = fig.colorbar(sc, ax=ax, label=param.field)
        from matplotlib.ticker import FuncFormatter

        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        cb.ax.yaxis.set_major_formatter(plain)
        cb.ax.yaxis.set_minor_formatter(plain)
    else:
        levels = list(param.values)
        if _numeric(param):
            levels = sorted(levels)
        cmap = colormaps["tab10" if len(levels) <= 10 else "tab20"]
        for k, level in enumerate(levels):
            mask = np.array([v == level for v in cvals])
            if mask.any():
                ax.scatter(x[mask], y[mask], s=22, alpha=0.85, lw=0, color=cmap(k % cmap.N),
                           label=f"{param.field} = {_fmt_value(level)}")
        ax.legend(loc="best", fontsize=8, title=None)
    front = pareto_front(pts, rel_tol=PARETO_REL_TOL)
    fx, fy = x[front], y[front]
    ax.step(fx, fy, where="post", color="black", lw=1.3, label="Pareto front")
    ax.plot(fx, fy, "o", mfc="none", mec="black", ms=8, mew=1.2)
    if len(x) > 1 and x.max() / max(x.min(), 1e-12) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("block time (s): prefill + decode of one block of g x N sequences")
    ax.set_ylabel("throughput (generated tokens/s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"study {sweep.name}: {len(pts)} points with a policy, {len(front)} on the Pareto front\n"
                 f"colour: {param.field}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    return True
