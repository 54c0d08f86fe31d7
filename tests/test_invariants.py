"""Invariants of every solved policy, on shipped and varied scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest

import reference_lp as ref
from conftest import ROOT, t4_with
from model import evaluate_policy, load_scenario, optimize

T4_CASES = [
    (512, 32, (16, 200, 1500), None),
    (1024, 256, (24, 64, 1500), None),
    (128, 8, (24, 64, 1500), None),
    (256, 64, (40, 128, 0), None),
    (512, 1, (16, 200, 1500), None),
    (1024, 32, (12, 256, 1500), 0.9),
]


def check_invariants(res):
    sc = res.scenario
    g, N = res.gpu_batch_size, res.num_gpu_batches
    assert isinstance(g, int) and isinstance(N, int) and g >= 1 and N >= 1
    for kind in ("weights", "cache", "activations"):
        vals = [res.fractions[(kind, d)] for d in ("gpu", "cpu", "disk")]
        assert all(0.0 <= v <= 1.0 for v in vals)
        assert sum(vals) == pytest.approx(1.0, abs=1e-12)
    assert res.fractions[("activations", "disk")] == 0.0
    ev = res.evaluation
    usable = res.usable_gib
    for (dev, _phase), peak in ev.peak_memory_gib.items():
        assert peak <= usable[dev] * (1 + 1e-7) + 1e-9, (dev, peak, usable[dev])
    assert ev.total_s == pytest.approx(ev.prefill_total_s + ev.decode_total_s, rel=1e-12)
    assert ev.throughput_tokens_per_s == pytest.approx(sc.workload.gen_len * g * N / ev.total_s, rel=1e-12)
    # the optimum lies inside the search bounds
    b = res.bounds
    assert b.g_lo <= g <= b.g_hi and b.N_lo <= N <= b.N_hi and g * N <= b.b_hi
    # the FlexLLMGen percents are integers that fit, and lose only what rounding costs
    pct = res.flexllmgen_percent
    assert pct is not None and all(isinstance(x, int) and 0 <= x <= 100 for x in pct)
    N_flags = res.flexllmgen_num_gpu_batches
    assert 1 <= N_flags <= N
    again = evaluate_policy(sc, g, N_flags, pct)
    assert again.status == "evaluated", again.infeasible_reasons
    assert again.throughput_tokens_per_s == pytest.approx(res.flexllmgen_throughput, rel=1e-12)
    if N_flags == N:  # at the same (g, N), integer percents cannot beat the continuous optimum
        assert res.flexllmgen_throughput <= ev.throughput_tokens_per_s * (1 + 1e-9)
    else:  # lowered only because nothing integer fits at N
        assert evaluate_policy(sc, g, N_flags + 1, pct).status == "infeasible"


@pytest.mark.parametrize("case", T4_CASES, ids=[f"s{c[0]}-n{c[1]}-{'/'.join(map(str, c[2]))}" for c in T4_CASES])
def test_solved_policy_invariants_and_independent_evaluation(case):
    s, n, cap, a = case
    res = optimize(t4_with(s, n, *cap, alpha=a))
    assert res.status == "optimal"
    check_invariants(res)
    alpha = {"gpu": a, "cpu": a, "disk": a} if a else ref.DEFAULT_ALPHA
    f = {key: res.fractions[kd] for key, kd in
         dict(wg=("weights", "gpu"), wc=("weights", "cpu"), cg=("cache", "gpu"), cc=("cache", "cpu"),
              hg=("activations", "gpu"), hc=("activations", "cpu")).items()}
    other = ref.evaluate(s, n, res.gpu_batch_size, res.num_gpu_batches, f, cap, alpha)
    assert other["throughput"] == pytest.approx(res.throughput_tokens_per_s, rel=1e-9)
    assert other["prefill_total_s"] == pytest.approx(res.evaluation.prefill_total_s, rel=1e-9)


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.yaml")), ids=lambda p: Path(p).stem)
def test_shipped_scenarios_solve_with_invariants(path):
    res = optimize(load_scenario(path))
    assert res.status == "optimal"
    check_invariants(res)


def test_large_N_optimum_is_reached():
    """Optima with g = 1 and N in the thousands exist (issue 2: s=1024, n=256, 24/64/1500 GiB: N > 7000)."""
    res = optimize(t4_with(1024, 256, 24, 64, 1500))
    assert res.gpu_batch_size == 1 and res.num_gpu_batches > 7000


def test_reference_example_global_optimum(t4):
    """Issue 2: the global optimum of the reference example is about 11.1348 tokens/s at g=30, N=63,
    above the original grid search's 11.1290 at g=32, N=58."""
    res = optimize(t4)
    assert res.throughput_tokens_per_s == pytest.approx(11.1348, abs=5e-5)
    assert (res.gpu_batch_size, res.num_gpu_batches) == (30, 63)
    assert res.throughput_tokens_per_s > 11.1290


@pytest.mark.parametrize("fix", [
    {"policy.gpu_batch_size": 16},
    {"policy.num_gpu_batches": 40},
    {"policy.percent": [0, 100, 0, 80, 0, 100]},
    {"policy.gpu_batch_size": 24, "policy.percent": [0, 90, 5, 70, 10, 90]},
])
def test_partially_fixed_policy_is_respected_and_no_better_than_free(fix, t4):
    free = optimize(t4)
    res = optimize(t4_with(512, 32, 16, 200, 1500, **fix))
    check_invariants(res)
    if "policy.gpu_batch_size" in fix:
        assert res.gpu_batch_size == fix["policy.gpu_batch_size"]
        assert res.bounds.g_lo == res.bounds.g_hi == res.gpu_batch_size
    if "policy.num_gpu_batches" in fix:
        assert res.num_gpu_batches == fix["policy.num_gpu_batches"]
    if "policy.percent" in fix:
        p = fix["policy.percent"]
        got = [res.fractions[k] * 100 for k in [("weights", "gpu"), ("weights", "cpu"), ("cache", "gpu"),
                                                 ("cache", "cpu"), ("activations", "gpu"), ("activations", "cpu")]]
        assert got == pytest.approx(p, abs=1e-6)
        assert list(res.flexllmgen_percent) == p
    assert res.throughput_tokens_per_s <= free.throughput_tokens_per_s * (1 + 1e-4)


def test_user_search_cap_is_reported_as_binding():
    res = optimize(t4_with(512, 32, 16, 200, 1500, **{"search.max_gpu_batch_size": 8}))
    assert res.gpu_batch_size == 8
    assert any("search.max_gpu_batch_size" in line for line in res.binding_bounds)
