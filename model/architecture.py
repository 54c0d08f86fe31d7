"""Model architectures, normalized: what ``accounting: exact`` counts bytes and FLOPs from.

An :class:`Architecture` comes from the scenario's explicit numbers (Mixtral-style,
:func:`from_model_spec`) or from a Hugging Face ``config.json``
(:func:`model.hf_config.from_hf_config`). Layers that differ (DeepSeek-MoE's dense first
layer) are separate :class:`LayerGroup` s, never averaged.

Parameter counts here are element counts (multiply by bytes per parameter for
bytes). Conventions, stated once:

* attention: q and o are ``h1 x (nh*hd)``, k and v ``h1 x (nkv*hd)``; optional biases;
  optional q/k RMS norms (OLMoE). MLA (DeepSeek-V2) has its own projections.
* MLP: gated (SwiGLU: gate, up, down) has 3 matrices, plain has 2.
* MoE: a router ``h1 x E``; top-k routed experts per token; shared experts are
  always active (their total width is ``shared_intermediate_size``); Qwen2-MoE adds
  a scalar gate ``h1 x 1`` on the shared expert.
* norms: two per layer and one final; RMSNorm has a weight, LayerNorm weight and bias
  (weight only where ``norm_bias`` is false: DBRX).
* embeddings ``vocab x h1``, and an LM head of the same size unless tied (plus a bias
  of ``vocab`` where ``lm_head_bias``: Phi-3.5-MoE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Attention:
    kind: Literal["gqa", "mla"]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    # multi-head latent attention (DeepSeek-V2): the KV cache holds the latent
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0


@dataclass(frozen=True)
class Mlp:
    kind: Literal["dense", "moe"]
    intermediate_size: int                 # dense width, or the width of one routed expert
    num_experts: int = 0                   # routed experts (0 for dense)
    top_k: int = 0
    shared_intermediate_size: int = 0      # total width of the always-active shared expert(s)
    shared_expert_gate: bool = False       # Qwen2-MoE: sigmoid gate h1 x 1 on the shared expert
    gated: bool = True                     # SwiGLU-style: 3 matrices; else 2
    bias: bool = False                     # biases on the MLP matrices


@dataclass(frozen=True)
class LayerGroup:
    name: str
    count: int
    mlp: Mlp
    routing: tuple[float, ...] | None = None   # this group's per-token expert probabilities (default: the model's)


@dataclass(frozen=True)
class Architecture:
    name: str
    model_type: str
    hidden_size: int
    vocab_size: int
    attention: Attention
    groups: tuple[LayerGroup, ...]
    tie_word_embeddings: bool = False
    norm: Literal["rms", "layer"] = "rms"
    routing_probabilities: tuple[float, ...] | None = None   # per routed expert; default uniform
    source: str = ""                                          # where the numbers came from
    norm_bias: bool = True          # a LayerNorm's bias (DBRX: LayerNorm(bias=False)); RMSNorm never has one
    lm_head_bias: bool = False      # a bias of vocab_size on the LM head (Phi-3.5-MoE: lm_head_bias)

    @property
    def num_layers(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def moe_group(self) -> LayerGroup | None:
        """The (first) group of MoE layers, or None for a dense model."""
        return next((g for g in self.groups if g.mlp.kind == "moe"), None)


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    active_per_token: int
    embeddings: int          # input embeddings + LM head (+ final norm)
    per_layer: dict[str, int] = field(default_factory=dict)          # group -> all parameters of one layer
    per_layer_active: dict[str, int] = field(default_factory=dict)   # group -> used by one token


def norm_params(arch: Architecture) -> int:
    """One norm over the hidden size."""
    return arch.hidden_size * (2 if arch.norm == "layer" and arch.norm_bias else 1)


def attention_params(arch: Architecture) -> int:
    """Parameters of one attention block (projections, biases, q/k norms)."""
    a, h1 = arch.attention, arch.hidden_size
    if a.kind == "mla":
        qk_head = a.qk_nope_head_dim + a.qk_rope_head_dim
        if a.q_lora_rank:
            q = h1 * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * a.num_heads * qk_head
        else:
            q = h1 * a.num_heads * qk_head
        kv_a = h1 * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank  # + kv_a_layernorm
        kv_b = a.kv_lora_rank * a.num_heads * (a.qk_nope_head_dim + a.v_head_dim)
        o = a.num_heads * a.v_head_dim * h1
        return q + kv_a + kv_b + o
    q_out, kv_out = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    n = h1 * q_out * 2 + h1 * kv_out * 2
    if a.qkv_bias:
        n += q_out + 2 * kv_out
    if a.o_bias:
        n += h1
    if a.qk_norm:
        n += q_out + kv_out
    return n


def mlp_matrix_params(h1: int, width: int, gated: bool, bias: bool) -> int:
    """One MLP of the given width: 3 (gated) or 2 matrices, optional biases."""
    n = (3 if gated else 2) * h1 * width
    if bias:
        n += (2 * width if gated else width) + h1
    return n


def expert_params(arch: Architecture, mlp: Mlp) -> int:
    """One routed expert."""
    return mlp_matrix_params(arch.hidden_size, mlp.intermediate_size, mlp.gated, mlp.bias)


def router_params(arch: Architecture, mlp: Mlp) -> int:
    return arch.hidden_size * mlp.num_experts if mlp.kind == "moe" else 0


def dense_mlp_params(arch: Architecture, mlp: Mlp) -> int:
    """The always-active part of a layer's MLP: the dense MLP, or the shared experts (+ gate) and router."""
    h1 = arch.hidden_size
    if mlp.kind == "dense":
        return mlp_matrix_params(h1, mlp.intermediate_size, mlp.gated, mlp.bias)
    n = router_params(arch, mlp)
    if mlp.shared_intermediate_size:
        n += mlp_matrix_params(h1, mlp.shared_intermediate_size, mlp.gated, mlp.bias)
    if mlp.shared_expert_gate:
        n += h1
    return n


def layer_dense_params(arch: Architecture, group: LayerGroup) -> int:
    """Every parameter of one layer that is not a routed expert (attention, norms, dense/shared MLP, router)."""
    return attention_params(arch) + 2 * norm_params(arch) + dense_mlp_params(arch, group.mlp)


def embedding_params(arch: Architecture) -> int:
    """Input embeddings, LM head (unless tied) and the final norm."""
    emb = arch.vocab_size * arch.hidden_size
    head_bias = arch.vocab_size if arch.lm_head_bias else 0   # a tied head keeps its own bias
    return emb * (1 if arch.tie_word_embeddings else 2) + head_bias + norm_params(arch)


def parameter_counts(arch: Architecture) -> ParameterCounts:
    per_layer, active = {}, {}
    for g in arch.groups:
        dense = layer_dense_params(arch, g)
        if g.mlp.kind == "moe":
            e = expert_params(arch, g.mlp)
            per_layer[g.name] = dense + g.mlp.num_experts * e
            active[g.name] = dense + g.mlp.top_k * e
        else:
            per_layer[g.name] = active[g.name] = dense
    emb = embedding_params(arch)
    total = emb + sum(g.count * per_layer[g.name] for g in arch.groups)
    act = emb + sum(g.count * active[g.name] for g in arch.groups)
    return ParameterCounts(total=total, active_per_token=act, embeddings=emb, per_layer=per_layer,
                           per_layer_active=active)


def kv_cache_elements_per_token_per_layer(arch: Architecture) -> int:
    """Elements cached per token and layer: K and V (GQA), or the MLA latent plus its rope key."""
    a = arch.attention
    if a.kind == "mla":
        return a.kv_lora_rank + a.qk_rope_head_dim
    return 2 * a.num_kv_heads * a.head_dim


def routing(arch: Architecture, mlp: Mlp, group: LayerGroup | None = None) -> tuple[float, ...]:
    """Per-token probability that each routed expert is picked: the group's, the model's, or uniform k/E."""
    if group is not None and group.routing is not None:
        return group.routing
    if arch.routing_probabilities is not None:
        return arch.routing_probabilities
    return tuple(mlp.top_k / mlp.num_experts for _ in range(mlp.num_experts))


def moe_layer_indices(arch: Architecture) -> list[int]:
    """Transformer layer indices (0-based) of the MoE layers, in order."""
    out, start = [], 0
    for g in arch.groups:
        if g.mlp.kind == "moe":
            out.extend(range(start, start + g.count))
        start += g.count
    return out


def with_layer_routing(arch: Architecture, rows, split: bool) -> Architecture:
    """``arch`` with per-MoE-layer routing ``rows`` (one per MoE layer, in order).

    With ``split``, every MoE layer becomes its own group ``<group>.<layer index>`` (count 1):
    layers whose experts are pinned or computed on the CPU differ from each other. Without
    it, each MoE group must have one routing row for all its layers.
    """
    from dataclasses import replace

    groups, start, i = [], 0, 0
    for g in arch.groups:
        if g.mlp.kind != "moe":
            groups.append(g)
        elif split:
            groups.extend(replace(g, name=f"{g.name}.{start + j}", count=1, routing=tuple(rows[i + j]))
                          for j in range(g.count))
            i += g.count
        else:
            mine = {tuple(r) for r in rows[i:i + g.count]}
            if len(mine) != 1:
                raise ValueError("layers of one group with different routing need split=True")
            groups.append(replace(g, routing=tuple(rows[i])))
            i += g.count
        start += g.count
    return replace(arch, groups=tuple(groups))


def from_model_spec(spec) -> Architecture:
    """A uniform Mixtral-style architecture from a scenario's explicit ``model:`` numbers."""
    E, k = spec.num_experts, spec.num_experts_per_token
    mlp = Mlp(kind="moe" if E > 1 else "dense", intermediate_size=spec.intermediate_size,
              num_experts=E if E > 1 else 0, top_k=k if E > 1 else 0)
    return Architecture(
        name=spec.name, model_type="mixtral" if E > 1 else "llama", hidden_size=spec.hidden_size,
        vocab_size=spec.vocab_size,
        attention=Attention(kind="gqa", num_heads=spec.num_attention_heads,
                            num_kv_heads=spec.num_key_value_heads, head_dim=spec.head_dim),
        groups=(LayerGroup(name="moe" if E > 1 else "dense", count=spec.num_layers, mlp=mlp),),
        routing_probabilities=tuple(spec.routing_probabilities) if spec.routing_probabilities else None,
        source="scenario",
    )
