"""``accounting: flexllmgen``: the original ``mixtral_cost_model.py`` formulas, quirks included.

Restated in DESIGN.md section 3a and checked there against the original script's
outputs. Quirks kept on purpose (DESIGN.md section 3): attention weights counted
as elements-as-bytes, all experts' weights and FLOPs, MHA-sized (``h1``) decode
cache buffers, expert working memory in elements, and the fitted CPU attention
efficiency. ``compress_weights`` divides weight bytes by 4, as the reference does.

Every byte count is converted to GiB (``/ 2**30``) and every time to seconds
here, so the optimization model sees coefficients of a sane size.
"""

from __future__ import annotations

import math

from ..scenario import Scenario
from ..terms import (COMPONENTS, DEVICES, MEMORY_KEYS, PHASES, Accounting, AttentionDelta, ExpertGroup, LayerGroup,
                     MemoryTerms, Quantity)

GIB = float(2**30)
TERA = 1e12
# The reference streams disk weights in decode at 95% of the disk->CPU rate.
DECODE_DISK_WEIGHT_EFFICIENCY = 0.95
GROUP = "layers"  # the reference's layers are all alike


def cpu_attention_efficiency(g: int, h1: int, c1: float, c2: float, c3: float) -> float:
    """Reciprocal of the reference's CPU rate factor: 1 / max(0.1, 1 + c1*A*B - c2*A - c3*B)."""
    a = max(0.0, math.log2(64 / g))
    b = max(0.0, math.log2(4096 / h1))
    return 1.0 / max(0.1, 1 + c1 * a * b - c2 * a - c3 * b)


def build(sc: Scenario) -> Accounting:
    m, w, hw = sc.model, sc.workload, sc.hardware
    s, n = w.prompt_len, w.gen_len
    h1, h2, nh, E, l = m.hidden_size, m.intermediate_size, m.num_attention_heads, m.num_experts, m.num_layers
    kv = m.num_key_value_heads * m.head_dim
    bw, fl = hw.bandwidth_gib_per_s, hw.tflops

    shrink = 4.0 if m.compress_weights else 1.0
    # wi = 4*h1^2 + 2*h1*kv + 2*(h1*E + E*3*h1*h2) + 2*h1 bytes per layer.
    dense_bytes = 4 * h1**2 + 2 * h1 * kv + 2 * h1 * E + 2 * h1
    expert_bytes = 2 * 3 * h1 * h2
    if m.routing_probabilities is None:
        routing = tuple(m.num_experts_per_token / E for _ in range(E))
    else:
        routing = tuple(m.routing_probabilities)

    def gib(nbytes: float) -> float:
        return nbytes / GIB

    off_gpu = ("cpu", "disk")
    W = gib(dense_bytes + E * expert_bytes) / shrink  # one layer's weights (wi), GiB
    T: dict[tuple[str, str], Quantity] = {(ph, c): Quantity() for ph in PHASES for c in COMPONENTS}

    # ---- prefill, per layer -------------------------------------------------
    T["prefill", "ctog"].weights(W / bw.cpu_to_gpu, *off_gpu)
    T["prefill", "ctog"].sequence.add(gib(2 * s * h1) / bw.cpu_to_gpu, "activations", *off_gpu)
    T["prefill", "gtoc"].sequence.add(gib(4 * (s + 1) * kv) / bw.gpu_to_cpu_cache, "cache", *off_gpu)
    T["prefill", "gtoc"].sequence.add(gib(2 * s * h1) / bw.gpu_to_cpu_hidden, "activations", *off_gpu)
    T["prefill", "dtoc"].weights(W / bw.disk_to_cpu, "disk")
    T["prefill", "dtoc"].sequence.add(gib(2 * s * h1) / bw.disk_to_cpu, "activations", "disk")
    T["prefill", "ctod"].sequence.add(gib(4 * (s + 1) * kv) / bw.cpu_to_disk_cache_prefill, "cache", "disk")
    T["prefill", "ctod"].sequence.add(gib(2 * s * h1) / bw.cpu_to_disk_hidden_prefill, "activations", "disk")
    T["prefill", "comp"].sequence.const = (
        (8 * s * h1**2 + 4 * s * h1 * kv + s * h1 * E + E * 4 * s * h1 * h2) / (fl.gpu_matmul_prefill * TERA)
        + 4 * s**2 * h1 / (fl.gpu_bmm_prefill * TERA)
    )

    # ---- decode, one step, per layer ---------------------------------------
    T["decode", "ctog"].weights(W / bw.cpu_to_gpu, *off_gpu)
    T["decode", "ctog"].sequence.add(gib(2 * h1) / bw.cpu_to_gpu, "activations", *off_gpu)
    T["decode", "gtoc"].sequence.add(gib(2 * h1) / bw.gpu_to_cpu_hidden, "activations", *off_gpu)
    T["decode", "dtoc"].sequence.add(gib(4 * (s + n / 2) * kv) / bw.disk_to_cpu, "cache", "disk")
    T["decode", "dtoc"].sequence.add(gib(2 * h1) / bw.disk_to_cpu, "activations", "disk")
    T["decode", "dtoc"].weights(W / (DECODE_DISK_WEIGHT_EFFICIENCY * bw.disk_to_cpu), "disk")
    T["decode", "ctod"].sequence.add(gib(4 * kv) / bw.cpu_to_disk_decode, "cache", "disk")
    T["decode", "ctod"].sequence.add(gib(2 * h1) / bw.cpu_to_disk_decode, "activations", "disk")
    comp = T["decode", "comp"]
    comp.sequence.const = (8 * h1**2 + 4 * h1 * kv + h1 * E + E * 4 * h1 * h2) / (fl.gpu_matmul_decode * TERA)
    comp.sequence.add(4 * (s + n / 2) * h1 / (fl.gpu_bmm_decode * TERA), "cache", "gpu")
    comp.cpu_attention.add(4 * (s + n / 2) * h1 / (fl.cpu * TERA), "cache", *off_gpu)

    # ---- GPU attention (model.attention): the off-GPU cache is copied to the GPU each decode step
    # (the reference's cache bytes, 4*kv per token, over cpu_to_gpu) and attended there at the
    # reference's GPU rate instead of its CPU rate (docs/fidelity_notes.md (a)); prefill unchanged.
    delta = AttentionDelta(time={GROUP: {("decode", "ctog"): Quantity(), ("decode", "comp"): Quantity()}})
    dt = delta.time[GROUP]
    dt["decode", "ctog"].sequence.add(gib(4 * (s + n / 2) * kv) / bw.cpu_to_gpu, "cache", *off_gpu)
    dt["decode", "comp"].sequence.add(4 * (s + n / 2) * h1 / (fl.gpu_bmm_decode * TERA), "cache", *off_gpu)
    dt["decode", "comp"].cpu_attention.add(-4 * (s + n / 2) * h1 / (fl.cpu * TERA), "cache", *off_gpu)

    # ---- memory (GiB): home + working (DESIGN.md 3a) ------------------------
    M = {key: MemoryTerms(working={GROUP: Quantity()}) for key in MEMORY_KEYS}
    for phase, act_bytes in (("prefill", 2 * s * h1), ("decode", 2 * h1)):
        home = M["gpu", phase].home                                      # gpu_home
        home.weights(l * W, "gpu")
        home.sequence.add(gib(act_bytes), "activations", "gpu")
        home.sequence.add(gib(4 * (s + n) * kv * l), "cache", "gpu")
    work = M["gpu", "prefill"].working[GROUP]                            # gpu_work_p
    work.weights(2 * W, *off_gpu)                                        # 2*wi*(1-wg)
    work.microbatch.add(gib(2 * s * h1), "activations", *off_gpu)        # 2*s*h1*g*(1-hg)
    work.microbatch.const = gib(
        (8 * s * h1 + 2 * s * h1 + 2 * nh * s**2 + 2 * s * h1 + 4 * s * h1)   # attention intermediates
        + s * E + E * (2 * s * h1 + 2 * s * h2)                              # expert intermediates
    )
    work = M["gpu", "decode"].working[GROUP]                             # gpu_work_g
    work.weights(2 * W, *off_gpu)
    work.microbatch.add(gib(2 * h1), "activations", *off_gpu)
    work.microbatch.add(gib(4 * (s + n) * h1 + (2 * h1 + 2 * (s + n) * h1 + 2 * nh * (s + n))
                            + (2 * (s + n) * h1 + 2 * h1)), "cache", "gpu")
    work.microbatch.const = gib(8 * h1 + 4 * h1 + E + E * (2 * h1 + 2 * h2))
    # GPU attention: the reference's own decode buffers of GPU-held cache, for the off-GPU cache too
    gpu_cache_buffers = gib(4 * (s + n) * h1 + (2 * h1 + 2 * (s + n) * h1 + 2 * nh * (s + n))
                            + (2 * (s + n) * h1 + 2 * h1))
    gw = Quantity()
    gw.microbatch.add(gpu_cache_buffers, "cache", *off_gpu)
    delta.memory[("gpu", "decode")] = MemoryTerms(working={GROUP: gw})
    home = M["cpu", "prefill"].home                                      # cpu_home_p
    home.weights(l * W, "cpu")
    home.sequence.add(gib(2 * s * h1), "activations", "cpu")
    home.sequence.add(gib(4 * s * kv * l), "cache", "cpu")
    work = M["cpu", "prefill"].working[GROUP]                            # cpu_work_p
    work.weights(W, *off_gpu)                                            # wi*(1-wg)
    work.microbatch.add(gib(2 * s * h1), "activations", *off_gpu)
    home = M["cpu", "decode"].home                                       # cpu_home_g
    home.weights(l * W, "cpu")
    home.sequence.add(gib(2 * h1), "activations", "cpu")
    home.sequence.add(gib(4 * (s + n) * kv * l), "cache", "cpu")
    work = M["cpu", "decode"].working[GROUP]                             # cpu_work_g
    work.weights(W, "disk")                                              # wi*wn
    work.microbatch.add(gib(4 * h1), "activations", "disk")
    work.microbatch.add(gib(8 * (s + n) * kv), "cache", "disk")
    work.microbatch.const = gib(2 * nh * (s + n) + 2 * h1)
    home = M["disk", None].home                                          # disk
    home.weights(l * W, "disk")
    home.sequence.add(gib(2 * s * h1), "activations", "disk")
    home.sequence.add(gib(4 * (s + n) * kv * l), "cache", "disk")
    del M["disk", None].working[GROUP]

    eff = hw.cpu_efficiency
    allowed = {(k, d): True for k in ("weights", "cache", "activations") for d in DEVICES}
    allowed["activations", "disk"] = False  # the reference never puts activations on disk

    return Accounting(
        mode="flexllmgen",
        gen_len=n,
        groups=(LayerGroup(GROUP, l, T),),
        memory=M,
        weights_gib=l * W,
        dense_weights_gib=gib(dense_bytes) / shrink,
        expert_weights_gib=tuple(gib(expert_bytes) / shrink for _ in range(E)),
        routing_probability=routing,
        efficiency=lambda g: cpu_attention_efficiency(g, h1, eff.c1, eff.c2, eff.c3),
        allowed=allowed,
        notes=("flexllmgen accounting: the original script's byte/FLOP counts (DESIGN.md section 3)",),
        prompt_len=s,
        expert_groups=(ExpertGroup(name=GROUP, layers=tuple(range(l)), routing=routing,
                                   expert_weights_gib=tuple(gib(expert_bytes) / shrink for _ in range(E)),
                                   layer_weights_gib=W),),
        expert_flops_per_token=2 * 3 * h1 * h2,   # on the CPU: 2 FLOPs per weight of its 3 matrices
        expert_gpu_flops_per_token=4 * h1 * h2,   # the reference's GPU count: 2 matmuls of h1 x h2
        expert_gpu_flops=fl.gpu_matmul_decode * TERA,
        experts_every_token=True,                 # the reference runs every expert for every token
        hidden_gib_per_token=gib(2 * h1),
        gpu_attention_delta=delta,
    )
