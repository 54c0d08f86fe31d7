"""Instances whose optimum is worked out by hand from the reference formulas (docs/model.md 3.2)."""

from __future__ import annotations

import math

import pytest

import reference_lp as ref
from conftest import t4_with
from model import optimize

GIB = 2**30
h1, h2, nh, kv, l, E = 4096, 14336, 32, 1024, 32, 8
WI = 4 * h1**2 + 2 * h1 * kv + 2 * (h1 * E + E * 3 * h1 * h2) + 2 * h1  # weight bytes per layer


def test_everything_on_gpu_is_optimal_when_it_fits():
    """80 GiB GPU with alpha 1.2 holds everything: all transfer terms vanish and only compute is left.

    Offloading anything can only add time (a serial CPU->GPU transfer in decode, or
    CPU attention at 0.0123*eff < 0.079 TFLOP/s), so the optimum is the all-GPU
    policy, whose time per sequence does not depend on g or N:
        t = l*comp_p/b + (n-1)*l*comp_g/b
    """
    s, n = 512, 128
    res = optimize(t4_with(s, n, 80, 128, 0, alpha=1.2))
    comp_p = (8 * s * h1**2 + 4 * s * h1 * kv + s * h1 * E + E * 4 * s * h1 * h2) / 21.24e12 \
        + 4 * s**2 * h1 / 9.97e12
    comp_g = (8 * h1**2 + 4 * h1 * kv + h1 * E + E * 4 * h1 * h2) / 4.3e12 + 4 * (s + n / 2) * h1 / 0.079e12
    expected = n / (l * comp_p + (n - 1) * l * comp_g)
    assert expected == pytest.approx(32.129564, abs=5e-7)  # the reference row agrees
    assert res.throughput_tokens_per_s == pytest.approx(expected, rel=1e-6)
    for kind in ("weights", "cache", "activations"):
        assert res.fractions[(kind, "gpu")] == pytest.approx(1.0, abs=1e-6)


def test_everything_on_cpu_with_fixed_g_takes_the_largest_block_that_fits():
    """Weights, cache and activations pinned to the CPU, g = 8 fixed: only N is free.

    Every time term is a/b + c per sequence (weights move once per block), so the
    time per sequence falls with b and the best N is the largest the CPU holds:
      prefill: W*l + wi + b*(2*s*h1 + 4*s*kv*l) + 2*s*h1*g            <= 0.9 * 200 GiB
      decode:  W*l + b*(2*h1 + 4*(s+n)*kv*l) + g*(2*nh*(s+n) + 2*h1)   <= 0.9 * 200 GiB
    (the GPU holds only buffers, independent of N; the disk holds nothing).
    """
    s, n, g = 512, 32, 8
    usable = 0.9 * 200 * GIB
    b_pre = (usable - WI * l - WI - 2 * s * h1 * g) / (2 * s * h1 + 4 * s * kv * l)
    b_dec = (usable - WI * l - g * (2 * nh * (s + n) + 2 * h1)) / (2 * h1 + 4 * (s + n) * kv * l)
    N_star = math.floor(min(b_pre, b_dec) / g)
    sc = t4_with(s, n, 16, 200, 1500, **{"policy.gpu_batch_size": g, "policy.percent": [0, 100, 0, 100, 0, 100]})
    res = optimize(sc)
    assert res.gpu_batch_size == g
    assert res.num_gpu_batches == N_star
    frac = dict(wg=0, wc=1, cg=0, cc=1, hg=0, hc=1)
    cap, alpha = (16, 200, 1500), ref.DEFAULT_ALPHA
    at_star = ref.evaluate(s, n, g, N_star, frac, cap, alpha)
    assert at_star["feasible"] and not ref.evaluate(s, n, g, N_star + 1, frac, cap, alpha)["feasible"]
    assert res.throughput_tokens_per_s == pytest.approx(at_star["throughput"], rel=1e-9)
    # and it really is better than the block one micro-batch smaller
    assert at_star["throughput"] > ref.evaluate(s, n, g, N_star - 1, frac, cap, alpha)["throughput"]
