"""optimize(hint=(g, N)): a known policy as HiGHS's objective bound changes no answer.

The reference answer is t4_reference's optimum, 11.134803 tokens/s at g=30, N=63 (README,
published with the reference script's constants); the a100_16g answers are compared with the
same scenario solved without a hint.
"""

from __future__ import annotations

import importlib

import pytest

from conftest import ROOT
from model import load_scenario, optimize, override

optimize_mod = importlib.import_module("model.optimize")


@pytest.fixture(scope="module")
def t4():
    return load_scenario(ROOT / "scenarios" / "t4_reference.yaml")


@pytest.mark.parametrize("hint", [(30, 63), (30, 62), (20, 40), (1, 1), (10_000, 1), (40, 10_000)])
def test_any_hint_gives_the_reference_optimum(t4, hint):
    """The optimum itself, a neighbour, far points, and hints outside the search bounds."""
    res = optimize(t4, sensitivity=False, integer_percents=False, hint=hint)
    assert res.status == "optimal"
    assert res.throughput_tokens_per_s == pytest.approx(11.134803, rel=1e-6)
    assert (res.gpu_batch_size, res.num_gpu_batches) == (30, 63)


def test_hint_bound_is_the_exact_lp_at_the_hint(t4):
    """The bound is the fixed LP's time per sequence at the hint, raised by the slack; None where
    the hint does not apply."""
    data, _b = optimize_mod.model_data(t4)
    plain = optimize(override(t4, {"policy.gpu_batch_size": 30, "policy.num_gpu_batches": 62}),
                     sensitivity=False, integer_percents=False)
    t_hint = t4.workload.gen_len / plain.throughput_tokens_per_s   # seconds per sequence
    bound = optimize_mod._hint_bound(data, t4, (30, 62))
    assert bound == pytest.approx(t_hint * (1 + optimize_mod.HINT_BOUND_SLACK), rel=1e-9)
    assert optimize_mod._hint_bound(data, t4, None) is None
    assert optimize_mod._hint_bound(data, t4, (10_000, 1)) is None                 # g above its bound
    assert optimize_mod._hint_bound(data, override(t4, {"solver.name": "cbc"}), (30, 62)) is None
    assert optimize_mod._hint_bound(data, override(t4, {"solver.name": " HiGHS"}), (30, 62)) == bound


def test_a_bound_below_the_optimum_is_thrown_away(t4, monkeypatch):
    """HiGHS given an objective bound below the optimum returns a worse policy as 'optimal'; the run
    must notice (answer above the bound) and solve again without it."""
    monkeypatch.setattr(optimize_mod, "_hint_bound", lambda data, sc, hint, milp=None: 2.0)   # optimum: 2.874 s/seq
    res = optimize(t4, sensitivity=False, integer_percents=False, hint=(30, 63))
    assert res.status == "optimal"
    assert res.throughput_tokens_per_s == pytest.approx(11.134803, rel=1e-6)


@pytest.mark.parametrize("prompt,cpu_gib", [(1000, 60), (1500, 250), (1900, 280), (3100, 40)])
def test_previous_point_as_hint_matches_a_cold_solve(prompt, cpu_gib):
    """As in a study: the optimum of the previous point (prompt - 100) hints the next one."""
    base = load_scenario(ROOT / "scenarios" / "a100_16g.yaml")
    prev = optimize(override(base, {"workload.prompt_len": prompt - 100, "hardware.memory_gib.cpu": cpu_gib}),
                    sensitivity=False, integer_percents=False)
    sc = override(base, {"workload.prompt_len": prompt, "hardware.memory_gib.cpu": cpu_gib})
    cold = optimize(sc, sensitivity=False, integer_percents=False)
    warm = optimize(sc, sensitivity=False, integer_percents=False,
                    hint=(prev.gpu_batch_size, prev.num_gpu_batches))
    assert warm.status == cold.status == "optimal"
    assert warm.throughput_tokens_per_s == pytest.approx(cold.throughput_tokens_per_s, rel=1e-6)
