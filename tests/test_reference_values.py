"""Fixed-policy evaluations reproduce the original script's outputs (values quoted in issue 2)."""

from __future__ import annotations

import pytest

from conftest import t4_with
from model import evaluate_policy
from model.optimize import optimize
from model.errors import Infeasible

# s, n, gpu/cpu/nvme GiB, alpha, g, N, percent, tokens/s, prefill s, decode s,
# GPU peak prefill/decode, CPU peak prefill/decode, disk GiB   (computed by mixtral_cost_model.py)
ROWS = [
    (512, 32, (16, 200, 1500), None, 32, 58, (0, 63, 1, 99, 0, 100), 11.117593, 2931.9874, 2410.1761,
     (12.7484, 6.6391), (179.2493, 177.3691), 31.9133),
    (512, 32, (16, 200, 1500), None, 1, 1, (0, 100, 0, 100, 0, 100), 0.148511, 6.7011, 208.7711,
     (5.5822, 5.3911), (89.0179, 86.3187), 0.0),
    (512, 32, (16, 200, 1500), None, 32, 8, (0, 50, 0, 80, 0, 100), 2.153816, 404.4121, 3399.0694,
     (11.5159, 5.4013), (59.7465, 58.1036), 46.5261),
    (1024, 256, (40, 64, 1500), 1.2, 8, 1, (30, 30, 50, 25, 100, 0), 0.097512, 77.6245, 20924.8194,
     (33.5868, 30.4334), (28.0124, 27.2865), 34.8134),
    (512, 128, (80, 128, 0), 1.2, 4, 1, (100, 0, 100, 0, 100, 0), 32.129564, 6.3189, 9.6165,
     (87.3303, 86.6443), (0.0, 0.0002), 0.0),
]


@pytest.mark.parametrize("row", ROWS, ids=[f"s{r[0]}-n{r[1]}-g{r[4]}-N{r[5]}" for r in ROWS])
def test_fixed_policy_matches_reference(row):
    s, n, mem, alpha, g, N, pct, tput, pre, dec, gpu_pk, cpu_pk, disk = row
    res = evaluate_policy(t4_with(s, n, *mem, alpha=alpha), g, N, pct)
    ev = res.evaluation
    assert res.status == "evaluated"
    assert ev.throughput_tokens_per_s == pytest.approx(tput, abs=5.1e-7)  # quoted to 6 decimals
    assert ev.prefill_total_s == pytest.approx(pre, abs=5.1e-5)  # quoted to 4 decimals
    assert ev.decode_total_s == pytest.approx(dec, abs=5.1e-5)
    pk = ev.peak_memory_gib
    assert (pk[("gpu", "prefill")], pk[("gpu", "decode")]) == pytest.approx(gpu_pk, abs=5.1e-5)
    assert (pk[("cpu", "prefill")], pk[("cpu", "decode")]) == pytest.approx(cpu_pk, abs=5.1e-5)
    assert pk[("disk", None)] == pytest.approx(disk, abs=5.1e-5)


def test_readme_example_is_infeasible_on_gpu_memory():
    """20% of 86.25 GiB of weights does not fit in 0.8 x 16 GiB (the original README's example)."""
    res = evaluate_policy(t4_with(512, 32, 16, 200, 1500), 16, 2, (20, 80, 0, 100, 0, 100))
    assert res.status == "infeasible"
    assert res.infeasible_reasons and all(r.startswith("GPU memory") for r in res.infeasible_reasons)
    # 20% of the 86.252 GiB of weights already exceeds the 12.8 GiB usable on the GPU.
    assert 0.2 * res.accounting.total_weights_gib > 12.8


def test_optimize_refuses_infeasible_fixed_policy():
    sc = t4_with(512, 32, 16, 200, 1500, **{"policy.gpu_batch_size": 16, "policy.num_gpu_batches": 2,
                                           "policy.percent": [20, 80, 0, 100, 0, 100]})
    with pytest.raises(Infeasible, match="GPU memory"):
        optimize(sc)


def test_reference_weight_total():
    """The reference counts 86.25 GiB of fp16 weights for Mixtral-8x7B (docs/model.md section 3)."""
    res = evaluate_policy(t4_with(512, 32, 16, 200, 1500), 1, 1, (0, 100, 0, 100, 0, 100))
    # wi = 4*h1^2 + 2*h1*kv + 2*(h1*E + E*3*h1*h2) + 2*h1 bytes per layer, 32 layers
    h1, h2, kv, E = 4096, 14336, 1024, 8
    wi = 4 * h1**2 + 2 * h1 * kv + 2 * (h1 * E + E * 3 * h1 * h2) + 2 * h1
    assert res.accounting.total_weights_gib == pytest.approx(32 * wi / 2**30, rel=1e-12)
    assert res.accounting.total_weights_gib == pytest.approx(86.25, abs=0.005)
