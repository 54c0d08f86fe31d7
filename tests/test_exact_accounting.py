"""accounting: exact, checked against hand calculations from the architecture (docs/model.md section 3)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from model import InputError, evaluate_policy, load_scenario, optimize, override
from model.accounting import build_accounting

GIB = 2**30
h1, h2, nh, nkv, hd, L, E, k, V = 4096, 14336, 32, 8, 128, 32, 8, 2, 32000
KV = nkv * hd
ATTN = 2 * h1 * nh * hd + 2 * h1 * KV            # q, o and k, v matrices
EXPERT = 3 * h1 * h2                              # gate, up, down
ROUTER = h1 * E
VECTORS = 2 * h1                                  # two RMSNorm weights per layer


def mixtral(**over):
    base = {"model.accounting": "exact", "hardware.memory_bandwidth_gib_per_s": {"gpu": 1500.0, "cpu": 100.0}}
    base.update(over)
    return load_scenario(ROOT / "scenarios" / "t4_reference.yaml", base)


def test_mixtral_weights_exact_vs_reference():
    """86.25 GiB (reference: attention counted as bytes, no x2) vs 86.50 GiB in layers + 0.49 GiB
    embeddings, final norm and LM head (exact, fp16)."""
    ref = build_accounting(mixtral(**{"model.accounting": "flexllmgen"}))
    ex = build_accounting(mixtral())
    wi_ref = 4 * h1**2 + 2 * h1 * KV + 2 * (h1 * E + E * 3 * h1 * h2) + 2 * h1
    assert ref.weights_gib == pytest.approx(L * wi_ref / GIB, rel=1e-12)
    layer = 2 * (ATTN + E * EXPERT + ROUTER + VECTORS)
    assert ex.weights_gib == pytest.approx(L * layer / GIB, rel=1e-12)
    assert ex.gpu_resident_gib == pytest.approx(2 * (2 * V * h1 + h1) / GIB, rel=1e-12)
    assert round(ref.weights_gib, 2) == 86.25 and round(ex.weights_gib, 2) == 86.50
    assert round(ex.gpu_resident_gib, 2) == 0.49


def test_compressed_weights_are_4_5_bits_for_matrices_only():
    """4-bit, group 64, fp16 scale and minimum per group: 4 + 32/64 = 4.5 bits per matrix weight;
    norms stay fp16. The reference divides its byte count by 4."""
    ex = build_accounting(mixtral(**{"model.compress_weights": True}))
    per_layer = (ATTN + E * EXPERT + ROUTER) * 4.5 / 8 + VECTORS * 2
    assert ex.weights_gib == pytest.approx(L * per_layer / GIB, rel=1e-12)
    ref = build_accounting(mixtral(**{"model.accounting": "flexllmgen", "model.compress_weights": True}))
    assert ref.weights_gib == pytest.approx(86.252197265625 / 4, rel=1e-12)


def test_exact_fixed_policy_times_by_hand():
    """Everything on the GPU (g=8, N=2): only compute remains. By hand, per layer:
      prefill per sequence: 4*s^2*nh*hd / bmm_p + max(s*F/peak, read(g*s)/(g*hbm))
      decode step per sequence: max(F/peak, read(g)/(g*hbm)) + max(ctx*KVb/hbm, ctx*4*nh*hd/bmm_p)
    with F = 2*(attention + router + k experts) FLOPs per token, read(t) the fp16 bytes of
    attention + router + the experts picked by t tokens (uniform: 8*(1 - (3/4)^t)), and the LM
    head (2*h1*V FLOPs, h1*V*2 bytes) once per token on the same roofline."""
    s, n, g, N = 512, 32, 8, 2
    sc = mixtral(**{"workload.prompt_len": s, "workload.gen_len": n,
                    "hardware.memory_gib": {"gpu": 300, "cpu": 10, "disk": 0}})
    res = evaluate_policy(sc, g, N, [100, 0, 100, 0, 100, 0])
    assert res.status == "evaluated", res.infeasible_reasons
    peak, bmm_p, hbm = 21.24e12, 9.97e12, 1500.0 * GIB   # T4 matmul rates; the hbm we set
    F = 2 * (ATTN + ROUTER + k * EXPERT)

    def read(t):
        return 2 * (ATTN + ROUTER + EXPERT * E * (1 - (1 - k / E) ** t))

    b, ctx, kv_bytes = g * N, s + n / 2, 2 * 2 * KV
    pre = 4 * s * s * nh * hd / bmm_p + max(s * F / peak, read(g * s) / (g * hbm))
    dec = max(F / peak, read(g) / (g * hbm)) + max(ctx * kv_bytes / hbm, ctx * 4 * nh * hd / bmm_p)
    head = max(2 * h1 * V / peak, 2 * h1 * V / (g * hbm))
    total = b * (L * pre + head + (n - 1) * (L * dec + head))
    ev = res.evaluation
    assert ev.total_s == pytest.approx(total, rel=1e-12)
    assert ev.throughput_tokens_per_s == pytest.approx(n * b / total, rel=1e-12)
    moe = next(gt for gt in ev.groups if gt.name == "moe")
    assert moe.layer_time_s["decode"]["ctog"] == 0.0 and moe.layer_time_s["decode"]["comp"] == \
        pytest.approx(b * dec, rel=1e-12)
    # KV cache home: (s+n) tokens x 32 layers x 2 (k, v) x 1024 x 2 bytes per sequence
    cache_gib = b * (s + n) * L * 2 * KV * 2 / GIB
    weights_gib = L * 2 * (ATTN + E * EXPERT + ROUTER + VECTORS) / GIB
    resident = 2 * (2 * V * h1 + h1) / GIB
    home = res.evaluation.home_memory_gib[("gpu", "decode")]
    assert home == pytest.approx(weights_gib + cache_gib + resident + b * 2 * h1 / GIB, rel=1e-12)


def test_larger_micro_batches_pay_in_exact_accounting():
    """The GEMM roofline makes small micro-batches memory-bound: g=1 re-reads the experts for each
    sequence, so the optimum uses g > 1 (it would be g=1 if GEMM time did not depend on g)."""
    res = optimize(load_scenario(ROOT / "scenarios" / "mixtral-8x7b.yaml"))
    assert res.gpu_batch_size > 8


def test_layer_groups_are_reported_for_deepseek():
    out = subprocess.run([sys.executable, "-m", "runners.solve", "scenarios/deepseek-moe-16b.yaml", "--json"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    groups = {g["name"]: g["count"] for g in data["time_s"]["layer_groups"]}
    assert groups == {"dense": 1, "moe": 27, "lm_head": 1}
    m = data["model"]
    assert m["layers"] == {"dense": 1, "moe": 27}
    assert m["total_parameters"] == pytest.approx(16.4e9, rel=0.01)
    # 2 (k, v) x 16 heads x 128 x 2 bytes x 28 layers
    assert m["kv_cache_bytes_per_token"] == 2 * 2 * 16 * 128 * 28


def test_model_block_for_mixtral():
    res = optimize(load_scenario(ROOT / "scenarios" / "mixtral-8x7b.yaml"))
    mi = res.model_info
    assert mi["total_parameters"] == pytest.approx(46.7e9, rel=0.001)
    assert mi["active_parameters_per_token"] == pytest.approx(12.9e9, rel=0.005)
    assert mi["weights_gib"] == pytest.approx(86.50, abs=0.005)
    assert mi["kv_cache_bytes_per_token"] == 2 * 2 * KV * L


def test_exact_accounting_needs_memory_bandwidth(t4):
    with pytest.raises(InputError) as exc:
        override(t4, {"model.accounting": "exact", "hardware.memory_bandwidth_gib_per_s": None})
    assert exc.value.field == "hardware.memory_bandwidth_gib_per_s"


def test_reference_accounting_refuses_hf_config():
    sc = load_scenario(ROOT / "scenarios" / "mixtral-8x7b.yaml", {"model.accounting": "flexllmgen"})
    with pytest.raises(InputError) as exc:
        optimize(sc)
    assert exc.value.field == "model.accounting"


def test_hf_config_with_explicit_architecture_numbers_is_bad_input():
    with pytest.raises(InputError, match="not allowed together with model.hf_config"):
        load_scenario(ROOT / "scenarios" / "mixtral-8x7b.yaml", {"model.hidden_size": 1024})


def test_every_model_scenario_solves():
    for name in ("mistral-7b", "qwen1.5-moe-a2.7b", "olmoe-1b-7b"):
        res = optimize(load_scenario(ROOT / "scenarios" / f"{name}.yaml"))
        assert res.status == "optimal" and res.throughput_tokens_per_s > 0
