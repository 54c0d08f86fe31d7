"""Marginal values from the LP duals agree with finite differences of the fixed-(g, N) LP."""

from __future__ import annotations

import pytest

from conftest import ROOT
from model import load_scenario, optimize, override

SCENARIOS = ["t4_reference", "a100_16g", "mixtral-8x7b"]


def _tput_at(sc, g, N, changes):
    fixed = override(sc, {"policy.gpu_batch_size": g, "policy.num_gpu_batches": N, **changes})
    return optimize(fixed).throughput_tokens_per_s


def _check(sc, res, field, base, marginal):
    """The dual's marginal value lies between the one-sided finite differences (an LP's value is
    piecewise linear; at a breakpoint the dual is one of its subgradients)."""
    g, N = res.gpu_batch_size, res.num_gpu_batches
    h = max(1e-4 * base, 1e-6)
    t0 = res.throughput_tokens_per_s
    up = (_tput_at(sc, g, N, {field: base + h}) - t0) / h
    down = (t0 - _tput_at(sc, g, N, {field: base - h})) / h
    lo, hi = min(up, down), max(up, down)
    tol = 2e-3 * max(abs(lo), abs(hi), abs(marginal)) + 1e-9
    assert lo - tol <= marginal <= hi + tol, (field, marginal, down, up)


@pytest.mark.parametrize("name", SCENARIOS)
def test_memory_marginals_match_finite_differences(name):
    sc = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
    res = optimize(sc)
    for dev, value in res.sensitivity.tokens_per_s_per_gib.items():
        base = getattr(sc.hardware.memory_gib, dev)
        if base == 0:
            continue
        _check(sc, res, f"hardware.memory_gib.{dev}", base, value)


@pytest.mark.parametrize("name", SCENARIOS)
def test_link_marginals_match_finite_differences(name):
    sc = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
    res = optimize(sc)
    links = res.sensitivity.tokens_per_s_per_gib_per_s
    assert any(v > 0 for v in links.values())  # something limits every policy here
    for path, value in links.items():
        section, key = path.split(".")
        base = getattr(getattr(sc.hardware, section), key)
        _check(sc, res, f"hardware.{path}", base, value)


def test_binding_constraints_name_the_limits(t4):
    res = optimize(t4)
    names = res.sensitivity.binding
    # the reference example fills the GPU in prefill (12.8 of 12.8 GiB) and is compute-bound in prefill
    assert "GPU memory (prefill)" in names                  # plain words, from the capacity family's limit
    assert "prefill layer time set by compute (layers)" in names   # from the timing family's label
    assert res.sensitivity.tokens_per_s_per_gib["gpu"] > 0


def test_subtle_infeasibility_says_which_memory_is_short_and_by_how_much(t4):
    """g = 39 passes the quick bounds (they use each term's minimum separately) but nothing fits
    on the GPU with 16 GiB; the explanation bisects the GPU capacity that would make it fit."""
    from model import Infeasible
    from model.optimize import optimize as opt

    with pytest.raises(Infeasible) as exc:
        opt(override(t4, {"policy.gpu_batch_size": 39}))
    (line,) = exc.value.reasons
    assert line.startswith("GPU memory is short")
    needed = float(line.split("about ")[1].split(" GiB")[0])
    assert 16 < needed < 16.5
    # and the bisected capacity really is enough (to its 1%), while 16 GiB is not
    ok = opt(override(t4, {"policy.gpu_batch_size": 39, "hardware.memory_gib.gpu": needed * 1.01}))
    assert ok.gpu_batch_size == 39
