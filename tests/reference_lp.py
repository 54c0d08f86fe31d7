"""Independent reference model of the FlexGen-style offloading cost/memory
accounting for Mixtral on a T4, used to cross-check the product MILP.

Written only from the reference formulas (per-layer byte / FLOP accounting).
Units inside: bytes and FLOPs are converted to GiB (2**30 bytes) and seconds,
so every quantity handed to the LP is O(1e-3 .. 1e4).

Public API
----------
evaluate(s, n, g, N, fractions, cap_gib, alpha, arch, hw)   -> dict
solve_fixed_lp(s, n, g, N, cap_gib, alpha, arch, hw)        -> dict | None
enumerate_best(s, n, cap_gib, alpha, g_max, N_max, arch, hw)
    -> (best_throughput, best_g, best_N, n_feasible_pairs)
"""
import math

import numpy as np
from scipy.optimize import linprog

MIXTRAL = dict(h1=4096, h2=14336, nh=32, nkv=8, hd=128, l=32, E=8)
T4 = dict(
    # bandwidths, GiB/s
    ctog_bdw=12.89, gtoc_bdw_cache=0.97, gtoc_bdw_hidden=4.82, dtoc_bdw=0.473,
    ctod_bdw_cache_p=0.746, ctod_bdw_hidden_p=2.015, ctod_bdw_g=2.015,
    # compute rates, TFLOP/s
    mm_flops_p=21.24, mm_flops_g=4.3, bmm_flops_p=9.97, bmm_flops_g=0.079,
    cpu_flops=0.0123,
    # CPU attention efficiency model
    c1=0.0168, c2=0.0328, c3=0.0621,
)
DEFAULT_ALPHA = dict(gpu=0.8, cpu=0.9, disk=0.8)

GB = 2.0 ** 30
TFLOP = 1e12
_VARS = ("wg", "wc", "wn", "cg", "cc", "cn", "hg", "hc", "hn")
_PRE = ("ctog_p", "gtoc_p", "dtoc_p", "ctod_p", "comp_p")
_GEN = ("gtoc_g", "dtoc_g", "ctod_g", "comp_g")
_PEAKS = ("gpu_prefill", "gpu_decode", "cpu_prefill", "cpu_decode", "disk")
_DEV = dict(gpu_prefill="gpu", gpu_decode="gpu", cpu_prefill="cpu",
            cpu_decode="cpu", disk="disk")
_CAPIDX = dict(gpu=0, cpu=1, disk=2)


def _weight_bytes(arch):
    h1, h2, E = arch["h1"], arch["h2"], arch["E"]
    kv = arch["nkv"] * arch["hd"]
    return 4 * h1**2 + 2 * h1 * kv + 2 * (h1 * E + E * 3 * h1 * h2) + 2 * h1


def _cpu_rate(g, arch, hw):
    """CPU attention FLOP/s as a function of the GPU batch size g."""
    A = max(0.0, math.log2(64.0 / g))
    B = max(0.0, math.log2(4096.0 / arch["h1"]))
    eff = max(0.1, 1 + hw["c1"] * A * B - hw["c2"] * A - hw["c3"] * B)
    return hw["cpu_flops"] * TFLOP * eff


def _terms(s, n, g, N, f, arch, hw):
    """All per-layer time terms (s) and memory peaks (GiB).

    `f` maps all nine fractions (wn, cn, hn included) to values; each output
    is affine in `f`, which solve_fixed_lp exploits to extract LP rows.
    """
    h1, h2, nh, E = arch["h1"], arch["h2"], arch["nh"], arch["E"]
    kv, l = arch["nkv"] * arch["hd"], arch["l"]
    wi, b = _weight_bytes(arch), g * N
    wg, wc, wn = f["wg"], f["wc"], f["wn"]
    cg, cc, cn = f["cg"], f["cc"], f["cn"]
    hg, hc, hn = f["hg"], f["hc"], f["hn"]
    bw = {k: hw[k] * GB for k in hw if "bdw" in k}
    fl = {k: hw[k] * TFLOP for k in hw if "flops" in k}
    t = {}
    # ---- prefill (one layer)
    t["ctog_p"] = (wi * (wc + wn) + 2 * s * h1 * b * (hc + hn)) / bw["ctog_bdw"]
    t["gtoc_p"] = (4 * (s + 1) * kv * b * (cc + cn) / bw["gtoc_bdw_cache"]
                   + 2 * s * h1 * b * (hc + hn) / bw["gtoc_bdw_hidden"])
    t["dtoc_p"] = (wi * wn + 2 * s * h1 * b * hn) / bw["dtoc_bdw"]
    t["ctod_p"] = (4 * (s + 1) * kv * b * cn / bw["ctod_bdw_cache_p"]
                   + 2 * s * h1 * b * hn / bw["ctod_bdw_hidden_p"])
    t["comp_p"] = (b * (8 * s * h1**2 + 4 * s * h1 * kv + s * h1 * E
                        + E * 4 * s * h1 * h2) / fl["mm_flops_p"]
                   + 4 * b * s**2 * h1 / fl["bmm_flops_p"])
    # ---- decode (one token, one layer)
    ctx = s + n / 2
    t["ctog_g"] = (wi * (wc + wn) + 2 * h1 * b * (hc + hn)) / bw["ctog_bdw"]
    t["gtoc_g"] = 2 * h1 * b * (hc + hn) / bw["gtoc_bdw_hidden"]
    t["dtoc_g"] = ((4 * b * ctx * kv * cn + 2 * h1 * b * hn) / bw["dtoc_bdw"]
                   + wi * wn / (0.95 * bw["dtoc_bdw"]))
    t["ctod_g"] = (4 * b * kv * cn + 2 * h1 * b * hn) / bw["ctod_bdw_g"]
    t["comp_g"] = (b * (8 * h1**2 + 4 * h1 * kv + h1 * E + E * 4 * h1 * h2)
                   / fl["mm_flops_g"]
                   + 4 * b * ctx * h1 * cg / fl["bmm_flops_g"]
                   + 4 * b * ctx * h1 * (cc + cn) / _cpu_rate(g, arch, hw))
    # ---- memory (bytes -> GiB)
    sn = s + n
    gpu_home_p = wi * l * wg + 2 * s * h1 * b * hg + 4 * sn * kv * b * l * cg
    gpu_work_p = (2 * wi * (1 - wg) + 2 * s * h1 * g * (1 - hg)
                  + g * (8 * s * h1 + 2 * s * h1 + 2 * nh * s**2 + 2 * s * h1
                         + 4 * s * h1)
                  + g * s * E + E * (2 * g * s * h1 + 2 * g * s * h2))
    gpu_home_g = wi * l * wg + 2 * h1 * b * hg + 4 * sn * kv * b * l * cg
    gpu_work_g = (2 * wi * (1 - wg) + 2 * h1 * g * (1 - hg) + 4 * g * sn * h1 * cg
                  + 8 * g * h1 + g * (2 * h1 + 2 * sn * h1 + 2 * nh * sn) * cg
                  + g * (2 * sn * h1 + 2 * h1) * cg + 4 * g * h1
                  + g * E + E * (2 * g * h1 + 2 * g * h2))
    cpu_home_p = wi * l * wc + 2 * s * h1 * b * hc + 4 * s * kv * b * l * cc
    cpu_work_p = wi * (1 - wg) + 2 * s * h1 * g * (1 - hg)
    cpu_home_g = wi * l * wc + 2 * h1 * b * hc + 4 * sn * kv * b * l * cc
    cpu_work_g = (wi * wn + 4 * h1 * g * hn + 8 * sn * kv * g * cn
                  + 2 * nh * sn * g + 2 * h1 * g)
    disk = wi * l * wn + 2 * s * h1 * b * hn + 4 * sn * kv * b * l * cn
    t["gpu_prefill"] = (gpu_home_p + gpu_work_p) / GB
    t["gpu_decode"] = (gpu_home_g + gpu_work_g) / GB
    t["cpu_prefill"] = (cpu_home_p + cpu_work_p) / GB
    t["cpu_decode"] = (cpu_home_g + cpu_work_g) / GB
    t["disk"] = disk / GB
    return t


def _full_fractions(fr):
    f = {k: float(fr[k]) for k in ("wg", "wc", "cg", "cc", "hg", "hc")}
    f["wn"] = 1.0 - f["wg"] - f["wc"]
    f["cn"] = 1.0 - f["cg"] - f["cc"]
    f["hn"] = 1.0 - f["hg"] - f["hc"]
    return f


def evaluate(s, n, g, N, fractions, cap_gib, alpha, arch=MIXTRAL, hw=T4):
    """Throughput, phase totals, memory peaks (GiB) and feasibility of a policy.

    fractions: dict with wg, wc, cg, cc, hg, hc (the *n parts are 1 - rest).
    cap_gib: (gpu, cpu, disk) capacities in GiB; alpha: dict gpu/cpu/disk.
    """
    t = _terms(s, n, g, N, _full_fractions(fractions), arch, hw)
    l, b = arch["l"], g * N
    t_pre = max(t["ctog_p"] + t["dtoc_p"], t["gtoc_p"] + t["ctod_p"], t["comp_p"])
    t_gen = t["ctog_g"] + max(t[k] for k in _GEN)
    pre_total, dec_total = l * t_pre, (n - 1) * l * t_gen
    out = dict(throughput=n * b / (pre_total + dec_total),
               prefill_total_s=pre_total, decode_total_s=dec_total)
    feasible = True
    for k in _PEAKS:
        out[k] = t[k]
        lim = alpha[_DEV[k]] * cap_gib[_CAPIDX[_DEV[k]]]
        feasible &= t[k] <= lim * (1 + 1e-9)
    out["feasible"] = bool(feasible)
    return out


def solve_fixed_lp(s, n, g, N, cap_gib, alpha, arch=MIXTRAL, hw=T4):
    """Best fractions for fixed integer (g, N) by an LP; None if infeasible.

    Variables: x = (wg, wc, wn, cg, cc, cn, hg, hc, hn) with hn fixed to 0,
    plus epigraph vars tp >= each prefill max() arm and tq >= each decode
    max() arm.  Objective: T = l*tp + (n-1)*l*(ctog_g(x) + tq)  [seconds].
    Rows are extracted exactly from the affine _terms() (constant part at
    x = 0, coefficient k = value at unit vector e_k minus constant).
    """
    nv = len(_VARS)
    zero = dict.fromkeys(_VARS, 0.0)
    c0 = _terms(s, n, g, N, zero, arch, hw)
    coef = {k: np.zeros(nv) for k in c0}
    for j, v in enumerate(_VARS):
        tj = _terms(s, n, g, N, dict(zero, **{v: 1.0}), arch, hw)
        for k in c0:
            coef[k][j] = tj[k] - c0[k]

    def row(keys, epi):  # sum(keys)(x) - epigraph <= 0   (epi: 0 -> tp, 1 -> tq)
        a = np.zeros(nv + 2)
        a[:nv] = sum(coef[k] for k in keys)
        a[nv + epi] = -1.0
        return a, -sum(c0[k] for k in keys)

    A, ub = [], []
    for keys, epi in ([("ctog_p", "dtoc_p"), 0], [("gtoc_p", "ctod_p"), 0],
                      [("comp_p",), 0]) + tuple([(k,), 1] for k in _GEN):
        a, r = row(keys, epi)
        A.append(a), ub.append(r)
    for k in _PEAKS:
        a = np.zeros(nv + 2)
        a[:nv] = coef[k]
        A.append(a)
        ub.append(alpha[_DEV[k]] * cap_gib[_CAPIDX[_DEV[k]]] - c0[k])
    A_eq = np.zeros((3, nv + 2))
    for i in range(3):
        A_eq[i, 3 * i:3 * i + 3] = 1.0
    l = arch["l"]
    cost = np.zeros(nv + 2)
    cost[:nv] = (n - 1) * l * coef["ctog_g"]
    cost[nv], cost[nv + 1] = l, (n - 1) * l
    const = (n - 1) * l * c0["ctog_g"]
    bounds = [(0, 1)] * nv + [(0, None), (0, None)]
    bounds[_VARS.index("hn")] = (0, 0)
    res = linprog(cost, A_ub=np.array(A), b_ub=np.array(ub), A_eq=A_eq,
                  b_eq=np.ones(3), bounds=bounds, method="highs",
                  options=dict(primal_feasibility_tolerance=1e-10,
                               dual_feasibility_tolerance=1e-10))
    if res.status == 2:  # infeasible
        return None
    if res.status != 0:
        raise RuntimeError(f"linprog failed for g={g}, N={N}: {res.message}")
    x = np.clip(res.x[:nv], 0.0, 1.0) + 0.0  # +0.0 drops -0.0
    fr = {v: float(x[j]) for j, v in enumerate(_VARS)
          if v in ("wg", "wc", "cg", "cc", "hg", "hc")}
    ev = evaluate(s, n, g, N, fr, cap_gib, alpha, arch, hw)
    T_lp = res.fun + const
    T_ev = ev["prefill_total_s"] + ev["decode_total_s"]
    assert abs(T_ev - T_lp) <= 1e-7 * T_lp, (T_ev, T_lp)
    return dict(throughput=ev["throughput"], fractions=fr, total_s=T_ev)


def enumerate_best(s, n, cap_gib, alpha, g_max, N_max, arch=MIXTRAL, hw=T4):
    """Exhaustive search over g in 1..g_max, N in 1..N_max (no early exit).

    Returns (best_throughput, best_g, best_N, n_feasible_pairs); the best
    entries are (0.0, None, None) when no pair is feasible.
    """
    best, bg, bN, count = 0.0, None, None, 0
    for g in range(1, g_max + 1):
        for N in range(1, N_max + 1):
            r = solve_fixed_lp(s, n, g, N, cap_gib, alpha, arch, hw)
            if r is None:
                continue
            count += 1
            if r["throughput"] > best:
                best, bg, bN = r["throughput"], g, N
    return best, bg, bN, count
