"""Attention placement (policy.attention, model/attention.py, docs/fidelity_notes.md).

* the GPU-attention delta of a tiny model, byte by byte and second by second, from the
  derivation in docs/fidelity_notes.md (a) (FlexGen's MoE fork without --cpu-cache-compute),
  computed here by hand, not by the accounting code;
* the 16 published FlexGen runs (MoE-Lightning artifact, T4 and L4, both modes) fit their
  machine's scenario;
* ``cpu`` is the base accounting itself; the reference numbers stay (t4_reference pins cpu);
* ``auto`` returns the faster mode, in evaluation and in optimization (against exhaustive
  enumeration over (g, N, attention));
* the flag, the JSON and the printed FlexGen command.
"""

from __future__ import annotations

import copy
import json
import math
import shlex
from pathlib import Path

import pytest

from conftest import ROOT
from model import load_scenario, optimize
from model.accounting import build_accounting
from model.attention import apply_attention, with_mode
from model.enumerate import enumerate_policies
from model.errors import Infeasible, InputError
from model.optimize import evaluate_policy, model_data
from model.scenario import from_dict
from model.evaluation import evaluate_accounting as evaluate
from model.terms import fractions_from_percent
from runners import solve

GIB = 2.0**30
MACHINES = ROOT / "scenarios" / "machines"

# ---------------------------------------------------------------------------------------------
# a tiny exact-accounting model, by hand
#   h1 = 256, nh = 4, nkv = 2, hd = 64 (GQA ratio r = 2), s = 128, n = 64
#   K+V bytes per token and layer:      kv  = 2 * nkv * hd * 2 B = 512 B
#   GQA-expanded K+V per token:         2 * nh * hd * 2 B = 1024 B
#   mean decode context s + n/2 = 160;  full context s + n = 192
#   attention FLOPs per context token:  4 * nh * hd = 1024 (scores and values)
H1, NH, NKV, HD, S, N_GEN = 256, 4, 2, 64, 128, 64
KV = 2 * NKV * HD * 2
CTX, FULL = S + N_GEN / 2, S + N_GEN
TINY = {
    "name": "tiny_exact",
    "model": {"name": "tiny", "accounting": "exact", "num_layers": 2, "hidden_size": H1, "intermediate_size": 512,
              "num_attention_heads": NH, "num_key_value_heads": NKV, "head_dim": HD, "num_experts": 3,
              "num_experts_per_token": 1, "vocab_size": 1000},
    "workload": {"prompt_len": S, "gen_len": N_GEN},
    "hardware": {
        "name": "tiny", "memory_gib": {"gpu": 1, "cpu": 4, "disk": 4},
        "bandwidth_gib_per_s": {"cpu_to_gpu": 2.0, "gpu_to_cpu_cache": 1.0, "gpu_to_cpu_hidden": 1.0,
                                "disk_to_cpu": 0.5, "cpu_to_disk_cache_prefill": 0.5,
                                "cpu_to_disk_hidden_prefill": 0.5, "cpu_to_disk_decode": 0.5},
        "tflops": {"gpu_matmul_prefill": 10.0, "gpu_matmul_decode": 1.0, "gpu_bmm_prefill": 10.0,
                   "gpu_bmm_decode": 0.1, "cpu": 0.1},
        "memory_bandwidth_gib_per_s": {"gpu": 100.0, "cpu": 10.0},
    },
}
# hand roofline per sequence and layer: GPU max(160*512 B / 100 GiB/s, 160*1024 / 10 TFLOP/s);
# CPU max(160*512 B / 10 GiB/s, 160*1024 / 0.1 TFLOP/s): both memory-bound here
GPU_ATTN_S = max(CTX * KV / GIB / 100.0, CTX * 1024 / 10e12)
CPU_ATTN_S = max(CTX * KV / GIB / 10.0, CTX * 1024 / 0.1e12)
# cache 0% GPU, 75% CPU, 25% disk; weights and activations on the CPU
P = fractions_from_percent((0, 100, 0, 75, 0, 100))
G, NB = 4, 3


def tiny(**policy):
    raw = copy.deepcopy(TINY)
    raw["policy"] = policy
    return from_dict(raw)


def test_cpu_mode_is_the_base_accounting():
    acc = build_accounting(tiny(attention="cpu"))
    assert acc.attention == "cpu" and apply_attention(acc, "cpu") is acc
    # auto builds the same (CPU-attention) accounting, with the delta for the other mode
    auto = build_accounting(tiny())
    assert evaluate(auto, G, NB, P).throughput_tokens_per_s == evaluate(acc, G, NB, P).throughput_tokens_per_s
    assert auto.gpu_attention_delta is not None


def test_gpu_attention_delta_by_hand():
    cpu = build_accounting(tiny(attention="cpu"))
    gpu = build_accounting(tiny(attention="gpu"))
    assert gpu.attention == "gpu"
    b = G * NB
    ec, eg = evaluate(cpu, G, NB, P), evaluate(gpu, G, NB, P)
    tc = {t.name: t.layer_time_s for t in ec.groups}
    tg = {t.name: t.layer_time_s for t in eg.groups}
    off = 1.0                                   # all of the cache is off the GPU (75% CPU + 25% disk)
    # decode, per layer and step: every sequence's K/V over the mean context cross CPU->GPU ...
    assert tg["moe"]["decode"]["ctog"] - tc["moe"]["decode"]["ctog"] == pytest.approx(
        b * CTX * KV / GIB / 2.0 * off, rel=1e-12)
    # ... and are attended at the GPU's rate instead of the CPU's
    assert tg["moe"]["decode"]["comp"] - tc["moe"]["decode"]["comp"] == pytest.approx(
        b * (GPU_ATTN_S - CPU_ATTN_S) * off, rel=1e-12)
    for c in ("gtoc", "dtoc", "ctod"):          # the disk part still goes disk->CPU first, as before
        assert tg["moe"]["decode"][c] == tc["moe"]["decode"][c]
    assert tg["moe"]["prefill"] == tc["moe"]["prefill"]       # prefill attention: GPU in both modes
    assert tg["lm_head"] == tc["lm_head"]
    # GPU decode buffers per sequence of the micro-batch: loaded K/V of the current and the
    # prefetched micro-batch (2 * 192 * 512 B), GQA copies (192 * 1024 B), scores (2 * nh * 192 B)
    per_seq_gpu = 2 * FULL * KV + FULL * 1024 + 2 * NH * FULL
    assert eg.peak_memory_gib["gpu", "decode"] - ec.peak_memory_gib["gpu", "decode"] == pytest.approx(
        G * per_seq_gpu * off / GIB, rel=1e-12)
    # CPU decode: a pinned relay copy of the CPU-held K/V (75%), no CPU attention scores
    per_seq_cpu = FULL * KV * 0.75 - 2 * NH * FULL * off
    assert eg.peak_memory_gib["cpu", "decode"] - ec.peak_memory_gib["cpu", "decode"] == pytest.approx(
        G * per_seq_cpu / GIB, rel=1e-12)
    for key in (("gpu", "prefill"), ("cpu", "prefill"), ("disk", None)):
        assert eg.peak_memory_gib[key] == ec.peak_memory_gib[key]


def test_gpu_attention_delta_of_the_reference_accounting_by_hand(t4):
    """accounting: flexllmgen (t4_reference: s = 512, n = 32, h1 = 4096, nkv*hd = 1024, nh = 32).

    Per sequence and layer in decode, for the off-GPU cache: 4 * (s + n/2) * 1024 bytes over
    ctog_bdw 12.89 GiB/s; attention FLOPs 4 * (s + n/2) * h1 at bmm_flops_g 0.079 TFLOP/s instead
    of cpu_flops 0.0123 TFLOP/s times the CPU efficiency 1 / max(0.1, 1 - c2 * log2(64/g))
    (B = log2(4096/h1) = 0); GPU decode buffers: the reference's own GPU-cache buffers,
    8 * (s+n) * h1 + 4 * h1 + 2 * nh * (s+n) bytes per sequence of the micro-batch.
    """
    g, N = 30, 63
    pct = (0, 100, 0, 70, 0, 100)            # cache 70% CPU, 30% disk
    p = fractions_from_percent(pct)
    cpu = build_accounting(t4)
    gpu = build_accounting(with_mode(t4, "gpu"))
    ec, eg = evaluate(cpu, g, N, p), evaluate(gpu, g, N, p)
    b, ctx, full = g * N, 512 + 16, 512 + 32
    eff = 1 / max(0.1, 1 - 0.0328 * math.log2(64 / g))
    dc, dg = ec.groups[0].layer_time_s["decode"], eg.groups[0].layer_time_s["decode"]
    assert dg["ctog"] - dc["ctog"] == pytest.approx(b * 4 * ctx * 1024 / GIB / 12.89, rel=1e-12)
    flops = 4 * ctx * 4096
    assert dg["comp"] - dc["comp"] == pytest.approx(b * (flops / 0.079e12 - eff * flops / 0.0123e12), rel=1e-12)
    per_seq = 8 * full * 4096 + 4 * 4096 + 2 * 32 * full
    assert eg.peak_memory_gib["gpu", "decode"] - ec.peak_memory_gib["gpu", "decode"] == pytest.approx(
        g * per_seq / GIB, rel=1e-12)
    assert eg.groups[0].layer_time_s["prefill"] == ec.groups[0].layer_time_s["prefill"]


def test_helpers_give_base_plus_delta_for_split_layer_groups():
    """time_delta / memory_delta (for a MILP family's base + a * delta) match apply_attention,
    also when every MoE layer is its own group (routing rows per layer)."""
    from model.attention import memory_delta, time_delta

    sc = from_dict({**copy.deepcopy(TINY), "experts": {"routing_probabilities": [[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]}})
    base = build_accounting(sc)
    gpu = apply_attention(base, "gpu")
    assert {g.name for g in base.groups} == {"moe.0", "moe.1", "lm_head"}
    for lb, lg in zip(base.groups, gpu.groups):
        for key, q in lb.time.items():
            d = time_delta(base, lb.name).get(key)
            want = q.plus(d) if d is not None else q
            assert want.value(G * NB, G, 1.0, P) == pytest.approx(lg.time[key].value(G * NB, G, 1.0, P), rel=1e-12)
        assert bool(time_delta(base, lb.name)) == (lb.name != "lm_head")
    for key, mt in base.memory.items():
        for name, case in mt.cases():
            d = memory_delta(base, key, name)
            want = case.plus(d) if d is not None else case
            got = dict(gpu.memory[key].cases())[name]
            assert want.value(G * NB, G, 1.0, P) == pytest.approx(got.value(G * NB, G, 1.0, P), rel=1e-12)


def test_gpu_attention_adds_nothing_when_the_cache_is_on_the_gpu():
    p = fractions_from_percent((0, 100, 100, 0, 0, 100))
    cpu, gpu = build_accounting(tiny(attention="cpu")), build_accounting(tiny(attention="gpu"))
    a, b = evaluate(cpu, G, NB, p), evaluate(gpu, G, NB, p)
    assert a.throughput_tokens_per_s == b.throughput_tokens_per_s
    assert a.peak_memory_gib == b.peak_memory_gib


def test_gpu_weight_staging_is_one_layer():
    """Prefill GPU working memory holds one layer's streamed weights (the fork's sep_layer prefetch)."""
    # one layer's fp16 parameters: q, o (2*256*256), k, v (2*256*128), router 256*3,
    # 3 experts of 3*256*512, two norms 2*256
    layer_bytes = 2 * (2 * 256 * 256 + 2 * 256 * 128 + 256 * 3 + 3 * 3 * 256 * 512 + 2 * 256)
    acc = build_accounting(tiny(attention="cpu"))
    for phase in ("prefill", "decode"):
        block = acc.memory["gpu", phase].working["moe"].block
        assert block == {"cpu": pytest.approx(layer_bytes / GIB, rel=1e-12),
                         "disk": pytest.approx(layer_bytes / GIB, rel=1e-12)}


# ---------------------------------------------------------------------------------------------
# the 16 published runs (caoshiyi/artifacts asplos25, run_script_mtbench_{t4,l4}_7b.sh)

PUBLISHED = [  # machine scenario, gen, g, N, percent
    ("t4_s1", 32, 32, 40, (7, 93, 0, 100, 0, 100)),
    ("t4_s1", 64, 16, 78, (8, 92, 0, 100, 0, 100)),
    ("t4_s1", 128, 8, 139, (8, 92, 0, 100, 0, 100)),
    ("t4_s1", 256, 8, 113, (8, 92, 0, 100, 0, 100)),
    ("l4_s2", 32, 64, 21, (12, 88, 0, 100, 0, 100)),
    ("l4_s2", 64, 64, 20, (12, 88, 0, 100, 0, 100)),
    ("l4_s2", 128, 64, 18, (12, 88, 0, 100, 0, 100)),
    ("l4_s2", 256, 32, 30, (14, 86, 0, 100, 0, 100)),
]


def machine(name, gen, mode):
    sc = load_scenario(MACHINES / f"{name}.yaml", {"workload.gen_len": gen})
    return with_mode(sc, mode)


def test_machine_scenarios_are_what_the_issue_states():
    for name, gpu, preset in (("t4_s1", 16, "t4"), ("l4_s2", 24, "l4")):
        sc = load_scenario(MACHINES / f"{name}.yaml")
        assert sc.model.accounting == "exact" and sc.model.hf_config.endswith("mixtral-8x7b.json")
        assert sc.hardware.preset == preset and sc.workload.prompt_len == 418
        assert (sc.hardware.memory_gib.gpu, sc.hardware.memory_gib.cpu, sc.hardware.memory_gib.disk) == (gpu, 192, 0)
        assert sc.policy.attention == "auto"


@pytest.mark.parametrize("mode", ["cpu", "gpu"])
@pytest.mark.parametrize("row", PUBLISHED, ids=[f"{r[0]}-gen{r[1]}" for r in PUBLISHED])
def test_published_policies_fit_their_machine(row, mode):
    name, gen, g, N, pct = row
    res = evaluate_policy(machine(name, gen, mode), g, N, pct)
    assert res.status == "evaluated", res.infeasible_reasons
    assert res.attention == mode


# ---------------------------------------------------------------------------------------------
# reference numbers, auto


def test_reference_scenarios_pin_cpu_attention_and_keep_their_numbers(t4):
    assert t4.policy.attention == "cpu"
    assert load_scenario(ROOT / "scenarios" / "a100_16g.yaml").policy.attention == "cpu"
    res = optimize(t4, sensitivity=False)
    assert (res.gpu_batch_size, res.num_gpu_batches) == (30, 63)
    assert res.throughput_tokens_per_s == pytest.approx(11.134803, abs=5e-7)
    assert res.attention == "cpu"


def _link(cpu_to_gpu, cpu_memory, **policy):
    """The tiny model with another PCIe rate and CPU memory bandwidth (GiB/s)."""
    raw = copy.deepcopy(TINY)
    raw["hardware"]["bandwidth_gib_per_s"]["cpu_to_gpu"] = cpu_to_gpu
    raw["hardware"]["memory_bandwidth_gib_per_s"]["cpu"] = cpu_memory
    raw["policy"] = policy
    return from_dict(raw)


def _fast_link(**policy):
    """Copying the cache at 50 GiB/s beats reading it at 0.5 GiB/s on the CPU."""
    return _link(50.0, 0.5, **policy)


def _slow_link(**policy):
    """Copying the cache at 0.01 GiB/s loses to reading it at 100 GiB/s on the CPU."""
    return _link(0.01, 100.0, **policy)


@pytest.mark.parametrize("make, winner", [(_fast_link, "gpu"), (_slow_link, "cpu")])
def test_auto_evaluation_returns_the_faster_mode(make, winner):
    pct = (0, 100, 0, 75, 0, 100)
    both = {m: evaluate_policy(make(attention=m), G, NB, pct).throughput_tokens_per_s for m in ("cpu", "gpu")}
    assert max(both, key=both.get) == winner           # the two instances really differ
    res = evaluate_policy(make(), G, NB, pct)
    assert res.attention == winner and res.attention_requested == "auto"
    assert res.throughput_tokens_per_s == both[winner]
    assert res.attention_throughputs == both


def test_auto_when_nothing_fits():
    """Neither mode fits: evaluation reports the cpu result; optimization names the reason once."""
    pct = (0, 100, 0, 75, 0, 100)
    raw = copy.deepcopy(TINY)
    raw["hardware"]["memory_gib"]["gpu"] = 0.002      # 2 MiB: less than one layer's staged weights (2.6 MB)
    res = evaluate_policy(from_dict(raw), G, NB, pct)
    assert res.status == "infeasible" and res.attention == "cpu"
    assert res.attention_throughputs == {"cpu": None, "gpu": None}
    raw["hardware"]["memory_gib"] = {"gpu": 0.002, "cpu": 0.002, "disk": 0}   # 5.3 MB of weights fit nowhere
    with pytest.raises(Infeasible) as exc:
        optimize(from_dict(raw), sensitivity=False)
    reasons = exc.value.reasons
    assert sum(r.startswith("weights") for r in reasons) == 1        # the same in both modes: once
    assert any(r.startswith("gpu attention: GPU memory (decode)") for r in reasons)   # gpu needs more there


def _small_t4(mode, cpu_to_gpu):
    """t4_reference with small memories (exhaustive enumeration stays cheap), a PCIe rate and a mode."""
    return load_scenario(ROOT / "scenarios" / "t4_reference.yaml",
                         {"workload.prompt_len": 512, "workload.gen_len": 32,
                          "hardware.memory_gib": {"gpu": 16, "cpu": 100, "disk": 20}, "policy.attention": mode,
                          "search.max_gpu_batch_size": 6, "search.max_num_gpu_batches": 30,
                          "hardware.bandwidth_gib_per_s.cpu_to_gpu": cpu_to_gpu})


@pytest.mark.parametrize("cpu_to_gpu, winner", [(40.0, "gpu"), (4.0, "cpu")])
def test_auto_optimum_equals_enumeration_over_g_n_and_attention(cpu_to_gpu, winner):
    best = {}
    for mode in ("cpu", "gpu"):
        data, bd = model_data(_small_t4(mode, cpu_to_gpu))
        assert data.accounting.attention == mode
        e = enumerate_policies(data, prune=True)
        best[mode] = e.best_throughput
    assert max(best, key=best.get) == winner          # the two instances really differ
    res = optimize(_small_t4("auto", cpu_to_gpu), sensitivity=False, integer_percents=False)
    gap = res.scenario.solver.gap
    assert res.attention == winner
    assert best[winner] * (1 - gap - 1e-7) <= res.throughput_tokens_per_s <= best[winner] * (1 + 1e-7)


# ---------------------------------------------------------------------------------------------
# the key, the flag, the JSON, the FlexGen command

T4_S1 = str(MACHINES / "t4_s1.yaml")
T4_RUN = ["--gpu-batch-size", "32", "--num-gpu-batches", "40", "--percent", "7", "93", "0", "100", "0", "100"]


def run(capsys, *argv):
    code = solve.run([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("mode", ["cpu", "gpu"])
def test_flag_json_and_flexgen_command(capsys, mode):
    code, out, _ = run(capsys, T4_S1, *T4_RUN, "--attention", mode, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["policy"]["attention"] == mode and doc["policy"]["attention_requested"] == mode
    code, out, _ = run(capsys, T4_S1, *T4_RUN, "--attention", mode, "--flexllmgen")
    assert code == 0
    argv = shlex.split(out)
    assert argv[:3] == ["python", "-m", "flexgen.flex_moe"]
    assert ("--cpu-cache-compute" in argv) == (mode == "cpu")
    code, out, _ = run(capsys, T4_S1, *T4_RUN, "--attention", mode)
    assert code == 0
    assert f"attention          {mode.upper()}" in out


def test_auto_json_names_the_chosen_mode_and_both_throughputs(capsys):
    code, out, _ = run(capsys, T4_S1, *T4_RUN, "--json")
    assert code == 0
    pol = json.loads(out)["policy"]
    tput = pol["attention_tokens_per_s"]
    assert pol["attention_requested"] == "auto" and pol["attention"] in ("cpu", "gpu")
    assert tput[pol["attention"]] == max(tput.values())


def test_no_cpu_cache_compute_when_the_cache_is_on_the_gpu(capsys):
    """Nothing attends on the CPU; the fork would copy a GPU cache to the CPU with the flag."""
    code, out, _ = run(capsys, T4_S1, "--gpu-batch-size", "1", "--num-gpu-batches", "1", "--percent",
                       "7", "93", "100", "0", "0", "100", "--attention", "cpu", "--flexllmgen")
    assert code == 0 and "--cpu-cache-compute" not in out


def test_fork_command_uses_only_flags_of_its_parser(capsys):
    """Every flag printed is one of flexgen/flex_moe.py add_parser_arguments (fork a80c8d1)."""
    fork_flags = {"--model", "--path", "--offload-dir", "--prompt-len", "--gen-len", "--cut-gen-len",
                  "--debug-mode", "--gpu-batch-size", "--num-gpu-batches", "--percent", "--sep-layer",
                  "--pin-weight", "--cpu-cache-compute", "--attn-sparsity", "--compress-weight",
                  "--compress-cache", "--log-file", "--no-log", "--verbose", "--overlap"}
    code, out, _ = run(capsys, T4_S1, *T4_RUN, "--attention", "cpu", "--flexllmgen")
    assert code == 0
    argv = shlex.split(out)
    printed = {a for a in argv[3:] if a.startswith("--")}
    assert printed <= fork_flags and "--model" in printed     # --model defaults to an OPT model there
    pct = argv[argv.index("--percent") + 1: argv.index("--percent") + 7]
    assert all(x.isdigit() for x in pct)                        # type=int in the fork's parser


def test_compressed_weights_have_no_fork_command(capsys):
    code, out, err = run(capsys, T4_S1, *T4_RUN, "--compress-w", "--flexllmgen")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "model.compress_weights" in err


def test_bad_attention_values_exit_2_with_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        solve.run([T4_S1, "--attention", "fpga"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--attention" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(T4_S1).read_text().replace("name: t4_s1", "name: bad\npolicy: {attention: fast}")
                   .replace("../models", str(ROOT / "scenarios" / "models")))
    with pytest.raises(InputError) as e:
        load_scenario(bad)
    assert e.value.field == "policy.attention"
    code, _out, err = run(capsys, bad)
    assert code == 2 and "policy.attention" in err and len(err.strip().splitlines()) == 1
