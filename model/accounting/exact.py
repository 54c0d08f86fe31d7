"""``accounting: exact``: bytes and FLOPs that follow the architecture (DESIGN.md section 3).

Item by item against the reference (``flexllmgen``), for each layer group:

* weights: attention q/o ``h1 x nh*hd`` and k/v ``h1 x nkv*hd`` (GQA) or MLA's
  projections, two norms, router, every routed expert, shared experts, biases;
  fp16 (2 bytes), or group-wise quantized matrices (``bits/8 + 4/group_size`` bytes:
  an fp16 scale and minimum per group; 1-D tensors stay fp16, as in FlexLLMGen);
* matmul FLOPs per token: 2 per weight used: attention projections, router, the
  top-k routed experts (3 matrices gated, 2 plain), shared experts or the dense MLP;
* KV cache per token and layer: ``2 * nkv * hd`` elements (MLA: the latent and its
  rope key), in home memory, in every transfer and in every working buffer;
* prefill attention FLOPs ``4 * s^2 * nh * hd`` per sequence and layer (no causal
  halving, like FlexLLMGen's dense attention);
* GEMMs per micro-batch on a roofline: ``max(g*F/peak, bytes read/GPU memory bandwidth)``
  where a micro-batch reads attention and dense weights in full and each routed expert
  that at least one of its tokens picks (``sum_e 1 - (1 - q_e)^t`` for ``t`` tokens), with
  ``peak = gpu_matmul_prefill``: this replaces the fitted ``gpu_matmul_decode`` rate and is
  what makes a larger GPU batch size pay (the reference gets that only from its CPU
  attention efficiency);
* decode attention is memory-bound: on the GPU the roofline
  ``max(KV bytes / GPU memory bandwidth, FLOPs / gpu_bmm_prefill)``, on the CPU
  ``max(KV bytes / CPU memory bandwidth, FLOPs / cpu)``; no fitted efficiency ``eff(g)``;
* working memory: attention intermediates with GQA-sized K/V and ``nh*(s+n)``
  scores, expert intermediates for the ``k*g*s`` routed token-slots (plus shared
  experts), fp16 bytes throughout; with compression, a dequantization buffer for the
  largest weight matrix group in fp16;
* embeddings and LM head: **kept resident on the GPU** (assumption: they are small
  beside the MoE layers -- 0.49 GiB for Mixtral -- and FlexLLMGen-style runtimes pin
  them); the LM head's matmul (``2*h1*vocab`` FLOPs per generated token, and per
  sequence for the last prompt token) is its own one-layer group ``lm_head``.

Kept from the reference on purpose: the overlap structure (DESIGN.md section 1),
all routed experts' weights moving in every layer (expert-aware traffic is a
separate feature), activations never on disk, the CPU weight-staging buffer
(``W*(1-wg)`` in prefill), and the decode disk read of weights at 95% of the disk rate.

Weight staging on the GPU is ``W*(1-wg)``, one layer, where the reference counts two
(current + prefetched layer): FlexGen's MoE fork runs attention and MoE as separate
sub-layers (``sep_layer=True``, its default and the artifact's setting) and prefetches
only the next sub-layer, so at most an attention and a MoE sub-layer (one layer's
weights) are staged at once (docs/fidelity_notes.md (c)).

``gpu_attention_delta`` (:mod:`model.attention`): FlexGen without ``--cpu-cache-compute``
copies the off-GPU KV cache to the GPU in every decode step and attends there
(docs/fidelity_notes.md (a)); the delta adds those bytes, buffers and times to this
(CPU-attention) accounting.
"""

from __future__ import annotations

from ..architecture import (Architecture, LayerGroup as ArchGroup, attention_params, dense_mlp_params,
                            expert_params, kv_cache_elements_per_token_per_layer, layer_dense_params,
                            mlp_matrix_params, norm_params, parameter_counts, routing)
from ..scenario import Scenario
from ..terms import (COMPONENTS, DEVICES, MEMORY_KEYS, PHASES, Accounting, AttentionDelta, ExpertGroup, LayerGroup,
                     MemoryTerms, Quantity)
from .flexllmgen import DECODE_DISK_WEIGHT_EFFICIENCY

GIB = float(2**30)
TERA = 1e12
FP16 = 2
HEAD_GROUP = "lm_head"


def gib(nbytes: float) -> float:
    return nbytes / GIB


def vector_params(arch: Architecture, group: ArchGroup) -> int:
    """1-D parameters of one layer (norms, biases): never quantized."""
    a, h1, mlp = arch.attention, arch.hidden_size, group.mlp
    n = 2 * norm_params(arch)
    if a.kind == "mla":
        n += a.kv_lora_rank + (a.q_lora_rank or 0)
    else:
        q_out, kv_out = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
        n += (q_out + 2 * kv_out if a.qkv_bias else 0) + (h1 if a.o_bias else 0)
        n += (q_out + kv_out) if a.qk_norm else 0
    if mlp.bias:
        per = (2 * mlp.intermediate_size if mlp.gated else mlp.intermediate_size) + h1
        n += per * mlp.num_experts if mlp.kind == "moe" else per
        if mlp.kind == "moe" and mlp.shared_intermediate_size:
            n += (2 if mlp.gated else 1) * mlp.shared_intermediate_size + h1
    return n


def weight_bytes_per_element(sc: Scenario) -> float:
    cw = sc.model.compress_weights
    return FP16 if cw is None else cw.bits / 8 + 2 * FP16 / cw.group_size


def _attention_dims(arch: Architecture):
    """(q width, K+V width materialized in prefill, score FLOPs per query-key pair, decode FLOPs per context token)."""
    a = arch.attention
    if a.kind == "mla":
        qk = a.qk_nope_head_dim + a.qk_rope_head_dim
        q_out = a.num_heads * qk
        kv_full = a.num_heads * (qk + a.v_head_dim)
        pair_flops = 2 * a.num_heads * qk + 2 * a.num_heads * a.v_head_dim
        decode_flops = 2 * a.num_heads * (a.kv_lora_rank + a.qk_rope_head_dim) + 2 * a.num_heads * a.kv_lora_rank
        return q_out, kv_full, pair_flops, decode_flops
    q_out = a.num_heads * a.head_dim
    kv_full = 2 * a.num_kv_heads * a.head_dim
    return q_out, kv_full, 4 * q_out, 4 * q_out


def _mlp_active_matrix_params(arch: Architecture, group: ArchGroup) -> int:
    """Matrix parameters one token multiplies in the MLP: router, top-k experts, shared or dense MLP."""
    mlp, h1 = group.mlp, arch.hidden_size
    if mlp.kind == "dense":
        return mlp_matrix_params(h1, mlp.intermediate_size, mlp.gated, False)
    n = h1 * mlp.num_experts + mlp.top_k * mlp_matrix_params(h1, mlp.intermediate_size, mlp.gated, False)
    if mlp.shared_intermediate_size:
        n += mlp_matrix_params(h1, mlp.shared_intermediate_size, mlp.gated, False)
    return n + (h1 if mlp.shared_expert_gate else 0)


def _mlp_slot_elements(arch: Architecture, group: ArchGroup) -> int:
    """Intermediate elements per token in the MLP: router logits, routed slots, shared/dense MLP."""
    mlp, h1 = group.mlp, arch.hidden_size
    width = 2 if mlp.gated else 1
    if mlp.kind == "dense":
        return 2 * h1 + width * mlp.intermediate_size
    n = mlp.num_experts + mlp.top_k * (2 * h1 + width * mlp.intermediate_size)
    if mlp.shared_intermediate_size:
        n += 2 * h1 + width * mlp.shared_intermediate_size
    return n


def _largest_matrix_group(arch: Architecture, group: ArchGroup) -> int:
    """Elements of the largest unit dequantized at once: the attention block, one expert, or the dense MLP."""
    mlp = group.mlp
    units = [attention_params(arch)]
    if mlp.kind == "moe":
        units.append(expert_params(arch, mlp))
    units.append(dense_mlp_params(arch, mlp))
    return max(units)


def _weights_read(arch: Architecture, group: ArchGroup):
    """Bytes of fp16 weight matrices a layer reads from GPU memory for ``t`` tokens.

    Attention and the always-active MLP parts are read in full; a routed expert is
    read if at least one of the ``t`` tokens picks it: ``sum_e 1 - (1 - q_e)^t``
    experts in expectation (DESIGN.md section 3).
    """
    mlp, h1 = group.mlp, arch.hidden_size
    fixed = FP16 * (attention_params(arch) + _mlp_active_matrix_params(arch, group)
                    - (mlp.top_k * mlp_matrix_params(h1, mlp.intermediate_size, mlp.gated, False)
                       if mlp.kind == "moe" else 0))
    if mlp.kind != "moe":
        return lambda t: fixed
    one = FP16 * mlp_matrix_params(h1, mlp.intermediate_size, mlp.gated, False)
    q = routing(arch, mlp, group)
    return lambda t: fixed + one * sum(1.0 - (1.0 - qe) ** t for qe in q)


def _gemm_roofline(flops_per_seq: float, read, peak: float, hbm: float):
    """Seconds per sequence of a layer's GEMMs run over a micro-batch of ``g`` sequences.

    Each micro-batch reads the weights it uses from GPU memory once and does
    ``g * flops_per_seq`` FLOPs: ``max(g * F / peak, read(g) / hbm) / g`` per sequence. Small
    micro-batches are memory-bound; that is what a larger GPU batch size buys.
    """
    return lambda g: max(flops_per_seq / peak, read(g) / (g * hbm))


def build(sc: Scenario, arch: Architecture) -> Accounting:
    w, hw = sc.workload, sc.hardware
    s, n = w.prompt_len, w.gen_len
    h1, nh, vocab = arch.hidden_size, arch.attention.num_heads, arch.vocab_size
    bw, fl, mbw = hw.bandwidth_gib_per_s, hw.tflops, hw.memory_bandwidth_gib_per_s
    bpe = weight_bytes_per_element(sc)
    kv_bytes = FP16 * kv_cache_elements_per_token_per_layer(arch)   # per token and layer
    q_out, kv_full, pair_flops, decode_ctx_flops = _attention_dims(arch)
    L = arch.num_layers
    off_gpu = ("cpu", "disk")
    peak = fl.gpu_matmul_prefill * TERA     # FLOP/s of a compute-bound GEMM
    hbm = mbw.gpu * GIB                     # bytes/s of GPU memory

    def layer_weight_gib(group: ArchGroup) -> float:
        vec = vector_params(arch, group)
        total = layer_dense_params(arch, group)
        if group.mlp.kind == "moe":
            total += group.mlp.num_experts * expert_params(arch, group.mlp)
        return gib((total - vec) * bpe + vec * FP16)

    weights = {g.name: layer_weight_gib(g) for g in arch.groups}
    emb_gib = gib(parameter_counts(arch).embeddings * FP16)   # resident on the GPU, fp16

    groups = []
    delta = AttentionDelta()
    for grp in arch.groups:
        W = weights[grp.name]
        mm_flops = 2 * (attention_params(arch) + _mlp_active_matrix_params(arch, grp))  # per token
        T = {(ph, c): Quantity() for ph in PHASES for c in COMPONENTS}
        # prefill
        T["prefill", "ctog"].weights(W / bw.cpu_to_gpu, *off_gpu)
        T["prefill", "ctog"].sequence.add(gib(FP16 * s * h1) / bw.cpu_to_gpu, "activations", *off_gpu)
        T["prefill", "gtoc"].sequence.add(gib(s * kv_bytes) / bw.gpu_to_cpu_cache, "cache", *off_gpu)
        T["prefill", "gtoc"].sequence.add(gib(FP16 * s * h1) / bw.gpu_to_cpu_hidden, "activations", *off_gpu)
        T["prefill", "dtoc"].weights(W / bw.disk_to_cpu, "disk")
        T["prefill", "ctod"].sequence.add(gib(s * kv_bytes) / bw.cpu_to_disk_cache_prefill, "cache", "disk")
        read = _weights_read(arch, grp)   # fp16 bytes of the layer's matrices read by t tokens
        T["prefill", "comp"].sequence.const = s * s * pair_flops / (fl.gpu_bmm_prefill * TERA)
        T["prefill", "comp"].per_batch_size = (_gemm_roofline(s * mm_flops, lambda g, r=read: r(g * s), peak, hbm),)
        # decode, one step
        ctx = s + n / 2  # average context length over the generation
        T["decode", "ctog"].weights(W / bw.cpu_to_gpu, *off_gpu)
        T["decode", "ctog"].sequence.add(gib(FP16 * h1) / bw.cpu_to_gpu, "activations", *off_gpu)
        T["decode", "gtoc"].sequence.add(gib(FP16 * h1) / bw.gpu_to_cpu_hidden, "activations", *off_gpu)
        T["decode", "dtoc"].sequence.add(gib(ctx * kv_bytes) / bw.disk_to_cpu, "cache", "disk")
        T["decode", "dtoc"].weights(W / (DECODE_DISK_WEIGHT_EFFICIENCY * bw.disk_to_cpu), "disk")
        T["decode", "ctod"].sequence.add(gib(kv_bytes) / bw.cpu_to_disk_decode, "cache", "disk")
        comp = T["decode", "comp"]
        comp.per_batch_size = (_gemm_roofline(mm_flops, read, peak, hbm),)
        gpu_attn = max(gib(ctx * kv_bytes) / mbw.gpu, ctx * decode_ctx_flops / (fl.gpu_bmm_prefill * TERA))
        cpu_attn = max(gib(ctx * kv_bytes) / mbw.cpu, ctx * decode_ctx_flops / (fl.cpu * TERA))
        comp.sequence.add(gpu_attn, "cache", "gpu")
        comp.sequence.add(cpu_attn, "cache", *off_gpu)
        groups.append(LayerGroup(grp.name, grp.count, T))
        # GPU attention (docs/fidelity_notes.md (a), path 0 of the fork's SelfAttention.load_cache):
        # the off-GPU K/V of the context cross CPU->GPU every step (a disk part first disk->CPU, as
        # above), and their attention runs at the GPU's rate instead of the CPU's. Prefill: unchanged.
        dt = delta.time[grp.name] = {("decode", "ctog"): Quantity(), ("decode", "comp"): Quantity()}
        dt["decode", "ctog"].sequence.add(gib(ctx * kv_bytes) / bw.cpu_to_gpu, "cache", *off_gpu)
        dt["decode", "comp"].sequence.add(gpu_attn - cpu_attn, "cache", *off_gpu)

    head = {(ph, c): Quantity() for ph in PHASES for c in COMPONENTS}
    head_roof = _gemm_roofline(2 * h1 * vocab, lambda t: FP16 * h1 * vocab, peak, hbm)  # last position only
    head["prefill", "comp"].per_batch_size = (head_roof,)
    head["decode", "comp"].per_batch_size = (head_roof,)
    groups.append(LayerGroup(HEAD_GROUP, 1, head))

    # ---- memory (GiB) ----------------------------------------------------------
    all_w = sum(g.count * weights[g.name] for g in arch.groups)
    M = {key: MemoryTerms() for key in MEMORY_KEYS}
    # GQA-expanded K+V bytes per token that the fork's mha_gen materializes (expand + reshape)
    expanded_kv = FP16 * (kv_full if arch.attention.kind == "mla" else 2 * q_out)
    dequant = 0.0
    if sc.model.compress_weights is not None:
        dequant = max(gib(FP16 * _largest_matrix_group(arch, g)) for g in arch.groups)
    for phase, act_tokens, cache_tokens_cpu in (("prefill", s, s), ("decode", 1, s + n)):
        home = M["gpu", phase].home
        home.const = emb_gib
        home.weights(all_w, "gpu")
        home.sequence.add(gib(FP16 * act_tokens * h1), "activations", "gpu")
        home.sequence.add(gib((s + n) * kv_bytes * L), "cache", "gpu")
        home = M["cpu", phase].home
        home.weights(all_w, "cpu")
        home.sequence.add(gib(FP16 * act_tokens * h1), "activations", "cpu")
        home.sequence.add(gib(cache_tokens_cpu * kv_bytes * L), "cache", "cpu")
        for grp in arch.groups:
            W = weights[grp.name]
            slots = _mlp_slot_elements(arch, grp)
            work = M["gpu", phase].working[grp.name] = Quantity(const=dequant)
            work.weights(W, *off_gpu)     # current + prefetched sub-layer: at most one layer (module doc)
            work.microbatch.add(gib(FP16 * act_tokens * h1), "activations", *off_gpu)
            cpu = M["cpu", phase].working[grp.name] = Quantity()
            if phase == "prefill":
                # input, q, k+v, scores, attention output, o-proj output + residual; MLP slots
                work.microbatch.const = gib(FP16 * (s * (3 * h1 + 2 * q_out + kv_full) + nh * s * s + s * slots))
                cpu.weights(W, *off_gpu)                         # staging of the streamed layer
                cpu.microbatch.add(gib(FP16 * s * h1), "activations", *off_gpu)
            else:
                work.microbatch.const = gib(FP16 * (3 * h1 + 2 * q_out + kv_full + slots))
                # K/V of the GPU-held cache and its scores
                work.microbatch.add(gib((s + n) * kv_bytes + FP16 * nh * (s + n)), "cache", "gpu")
                cpu.weights(W, "disk")                           # staging of disk weights
                cpu.microbatch.add(gib(2 * FP16 * h1), "activations", "disk")
                cpu.microbatch.add(gib(2 * (s + n) * kv_bytes), "cache", "disk")   # double-buffered disk KV
                cpu.microbatch.add(gib(FP16 * nh * (s + n)), "cache", *off_gpu)    # CPU attention scores
                cpu.microbatch.const = gib(FP16 * h1)
                # GPU attention, per sequence of the micro-batch: the loaded K/V of the current and of the
                # prefetched micro-batch (load_cache(i, j, k+1)), their GQA-expanded copies, the scores;
                # on the CPU the pinned relay copy of the CPU-held K/V (general_copy: src.pin_memory()),
                # and no CPU attention scores.
                gw = Quantity()
                gw.microbatch.add(gib(2 * (s + n) * kv_bytes + (s + n) * expanded_kv + FP16 * nh * (s + n)),
                                  "cache", *off_gpu)
                cw = Quantity()
                cw.microbatch.add(gib((s + n) * kv_bytes), "cache", "cpu")
                cw.microbatch.add(-gib(FP16 * nh * (s + n)), "cache", *off_gpu)
                delta.memory.setdefault(("gpu", phase), MemoryTerms()).working[grp.name] = gw
                delta.memory.setdefault(("cpu", phase), MemoryTerms()).working[grp.name] = cw
        work = M["gpu", phase].working[HEAD_GROUP] = Quantity(const=dequant)
        work.microbatch.const = gib(FP16 * (h1 + vocab))                     # hidden + logits
        M["cpu", phase].working[HEAD_GROUP] = Quantity()
    home = M["disk", None].home
    home.weights(all_w, "disk")
    home.sequence.add(gib((s + n) * kv_bytes * L), "cache", "disk")

    allowed = {(k, d): True for k in ("weights", "cache", "activations") for d in DEVICES}
    allowed["activations", "disk"] = False  # as the reference: activations never on disk
    moe = arch.moe_group
    if moe is not None:
        vec = vector_params(arch, moe)
        dense_w = gib((layer_dense_params(arch, moe) - vec) * bpe + vec * FP16)
        experts = tuple(gib(expert_params(arch, moe.mlp) * bpe) for _ in range(moe.mlp.num_experts))
        probs = routing(arch, moe.mlp, moe)
    else:  # a dense model is the one-expert case: its MLP is the "expert" every token uses
        g0 = arch.groups[0]
        mlp_w = gib(dense_mlp_params(arch, g0.mlp) * bpe)
        dense_w, experts, probs = weights[g0.name] - mlp_w, (mlp_w,), (1.0,)
    expert_groups, start = [], 0
    for grp in arch.groups:
        if grp.mlp.kind == "moe":
            expert_groups.append(ExpertGroup(
                name=grp.name, layers=tuple(range(start, start + grp.count)), routing=routing(arch, grp.mlp, grp),
                expert_weights_gib=tuple(gib(expert_params(arch, grp.mlp) * bpe) for _ in range(grp.mlp.num_experts)),
                layer_weights_gib=weights[grp.name]))
        start += grp.count
    return Accounting(
        mode="exact",
        gen_len=n,
        groups=tuple(groups),
        memory=M,
        weights_gib=all_w,
        dense_weights_gib=dense_w,
        expert_weights_gib=experts,
        routing_probability=probs,
        efficiency=lambda g: 1.0,
        allowed=allowed,
        gpu_resident_gib=emb_gib,
        notes=("exact accounting: embeddings and LM head resident on the GPU; all routed experts move "
               "in every layer; decode attention memory-bound (roofline)",),
        prompt_len=s,
        expert_groups=tuple(expert_groups),
        expert_flops_per_token=(2 * mlp_matrix_params(h1, moe.mlp.intermediate_size, moe.mlp.gated, False)
                                if moe is not None else 0.0),
        expert_gpu_flops_per_token=(2 * mlp_matrix_params(h1, moe.mlp.intermediate_size, moe.mlp.gated, False)
                                    if moe is not None else 0.0),
        expert_gpu_flops=peak,
        experts_every_token=False,
        hidden_gib_per_token=gib(FP16 * h1),
        gpu_attention_delta=delta,
    )
