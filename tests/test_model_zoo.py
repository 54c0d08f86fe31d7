"""Models from ``config.json`` (scenarios/models/*.json through model.hf_config).

For each shipped config the parameter count is written out by hand below, from the
published architecture numbers (not from model.architecture's counting functions),
and compared with ``parameter_counts(arch)``; both are then checked against the
totals the model authors publish (within 1%) and the active parameters per token
(within 3%).

Active-parameter conventions (every count here includes the input embedding, the
LM head and the final norm unless said otherwise; ``ParameterCounts.active_per_token``
does the same):

* Mixtral-8x7B 12.9 B, Mixtral-8x22B 39 B, Qwen1.5-MoE 2.7 B, DeepSeek-MoE-16B 2.8 B,
  DBRX 36 B, OLMoE 1.3 B, Phi-3.5-MoE 6.6 B: published with both vocab matrices
  counted (without them they would be 4-20% lower: e.g. Qwen 2.07 B, OLMoE 1.08 B).
* DeepSeek-V2-Lite 2.4 B: counts only one of the two vocab x hidden matrices (the
  input embedding is a lookup, not a matmul). With both it is 2.66 B (+11%), with
  neither 2.24 B (-7%); with one, 2.45 B (+2%).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.architecture import kv_cache_elements_per_token_per_layer, parameter_counts
from model.errors import InputError
from model.hf_config import SUPPORTED_MODEL_TYPES, from_hf_config

MODELS = Path(__file__).resolve().parents[1] / "scenarios" / "models"
B = 1e9


def arch(model: str):
    return from_hf_config(MODELS / f"{model}.json")


# --------------------------------------------------------------------------- hand counts
# Each returns (total, active per token), all parameters in elements.


def hand_mixtral_8x7b():
    h, vocab, layers, nh, nkv, hd, ff, E, k = 4096, 32000, 32, 32, 8, 128, 14336, 8, 2
    attn = h * (nh * hd) * 2 + h * (nkv * hd) * 2            # q, o + k, v
    expert = 3 * h * ff                                      # w1, w2, w3
    router = h * E
    norms = 2 * h                                            # two RMSNorms
    emb = vocab * h * 2 + h                                  # embed_tokens, lm_head, final norm
    total = emb + layers * (attn + E * expert + router + norms)
    active = emb + layers * (attn + k * expert + router + norms)
    return total, active


def hand_mixtral_8x22b():
    h, vocab, layers, nh, nkv, hd, ff, E, k = 6144, 32000, 56, 48, 8, 128, 16384, 8, 2
    attn = h * (nh * hd) * 2 + h * (nkv * hd) * 2
    expert = 3 * h * ff
    router = h * E
    norms = 2 * h
    emb = vocab * h * 2 + h
    total = emb + layers * (attn + E * expert + router + norms)
    active = emb + layers * (attn + k * expert + router + norms)
    return total, active


def hand_qwen15_moe():
    h, vocab, layers, nh, hd = 2048, 151936, 24, 16, 128
    E, k, ff, shared_ff = 60, 4, 1408, 5632
    attn = 4 * h * (nh * hd) + 3 * (nh * hd)                 # q, k, v, o (MHA) + q, k, v biases
    expert = 3 * h * ff
    shared = 3 * h * shared_ff + h                           # shared expert + sigmoid gate h x 1
    router = h * E
    norms = 2 * h
    emb = vocab * h * 2 + h
    total = emb + layers * (attn + E * expert + shared + router + norms)
    active = emb + layers * (attn + k * expert + shared + router + norms)
    return total, active


def hand_deepseek_moe_16b():
    h, vocab, layers, nh, hd = 2048, 102400, 28, 16, 128
    dense_ff, ff, E, k, n_shared = 10944, 1408, 64, 6, 2
    attn = 4 * h * (nh * hd)
    norms = 2 * h
    dense_layer = attn + 3 * h * dense_ff + norms            # layer 0
    expert = 3 * h * ff
    moe_fixed = attn + n_shared * expert + h * E + norms     # shared experts, router
    emb = vocab * h * 2 + h
    total = emb + dense_layer + (layers - 1) * (moe_fixed + E * expert)
    active = emb + dense_layer + (layers - 1) * (moe_fixed + k * expert)
    return total, active


def hand_deepseek_v2_lite():
    h, vocab, layers, nh = 2048, 102400, 27, 16
    kv_rank, nope, rope, v_dim = 512, 128, 64, 128
    dense_ff, ff, E, k, n_shared = 10944, 1408, 64, 6, 2
    q_proj = h * nh * (nope + rope)                          # q_lora_rank null: one q projection
    kv_a = h * (kv_rank + rope) + kv_rank                    # kv_a_proj_with_mqa + kv_a_layernorm
    kv_b = kv_rank * nh * (nope + v_dim)
    o_proj = nh * v_dim * h
    attn = q_proj + kv_a + kv_b + o_proj
    norms = 2 * h
    dense_layer = attn + 3 * h * dense_ff + norms
    expert = 3 * h * ff
    moe_fixed = attn + n_shared * expert + h * E + norms
    emb = vocab * h * 2 + h
    total = emb + dense_layer + (layers - 1) * (moe_fixed + E * expert)
    active = emb + dense_layer + (layers - 1) * (moe_fixed + k * expert)
    return total, active


def hand_dbrx():
    h, vocab, layers, nh, nkv, hd, ff, E, k = 6144, 100352, 40, 48, 8, 128, 10752, 16, 4
    attn = h * (nh + 2 * nkv) * hd + h * h                   # fused Wqkv, out_proj; no biases
    expert = 3 * h * ff                                      # w1, v1, w2 (GLU)
    router = h * E
    norms = 2 * h                                            # LayerNorm(bias=False): weight only
    emb = vocab * h * 2 + h                                  # wte, lm_head, norm_f (weight only)
    total = emb + layers * (attn + E * expert + router + norms)
    active = emb + layers * (attn + k * expert + router + norms)
    return total, active


def hand_olmoe():
    h, vocab, layers, nh, hd, ff, E, k = 2048, 50304, 16, 16, 128, 1024, 64, 8
    attn = 4 * h * (nh * hd) + (nh * hd) + (nh * hd)         # q, k, v, o + q_norm, k_norm
    expert = 3 * h * ff
    router = h * E
    norms = 2 * h
    emb = vocab * h * 2 + h
    total = emb + layers * (attn + E * expert + router + norms)
    active = emb + layers * (attn + k * expert + router + norms)
    return total, active


def hand_phi35_moe():
    h, vocab, layers, nh, nkv, hd, ff, E, k = 4096, 32064, 32, 32, 8, 128, 6400, 16, 2
    attn = h * (nh * hd) * 2 + h * (nkv * hd) * 2            # q, o + k, v
    attn += (nh * hd) + 2 * (nkv * hd) + h                   # attention_bias: q, k, v and o biases
    expert = 3 * h * ff
    router = h * E
    norms = 2 * (2 * h)                                      # two LayerNorms, weight + bias
    emb = vocab * h * 2 + vocab + 2 * h                      # embed, lm_head + its bias, final LayerNorm
    total = emb + layers * (attn + E * expert + router + norms)
    active = emb + layers * (attn + k * expert + router + norms)
    return total, active


def hand_mistral_7b():
    h, vocab, layers, nh, nkv, hd, ff = 4096, 32000, 32, 32, 8, 128, 14336
    attn = h * (nh * hd) * 2 + h * (nkv * hd) * 2
    mlp = 3 * h * ff
    norms = 2 * h
    emb = vocab * h * 2 + h
    total = emb + layers * (attn + mlp + norms)
    return total, total


HAND = {
    "mixtral-8x7b": hand_mixtral_8x7b,
    "mixtral-8x22b": hand_mixtral_8x22b,
    "qwen1.5-moe-a2.7b": hand_qwen15_moe,
    "deepseek-moe-16b": hand_deepseek_moe_16b,
    "deepseek-v2-lite": hand_deepseek_v2_lite,
    "dbrx": hand_dbrx,
    "olmoe-1b-7b": hand_olmoe,
    "phi-3.5-moe": hand_phi35_moe,
    "mistral-7b": hand_mistral_7b,
}

# published total, published active (None: dense), vocab matrices counted in the published active
PUBLISHED = {
    "mixtral-8x7b": (46.7 * B, 12.9 * B, 2),
    "mixtral-8x22b": (141 * B, 39 * B, 2),
    "qwen1.5-moe-a2.7b": (14.3 * B, 2.7 * B, 2),
    "deepseek-moe-16b": (16.4 * B, 2.8 * B, 2),
    "deepseek-v2-lite": (15.7 * B, 2.4 * B, 1),
    "dbrx": (132 * B, 36 * B, 2),
    "olmoe-1b-7b": (6.9 * B, 1.3 * B, 2),
    "phi-3.5-moe": (41.9 * B, 6.6 * B, 2),
    "mistral-7b": (7.24 * B, None, 2),
}

VOCAB_HIDDEN = {  # one vocab x hidden matrix, for the conventions above
    "mixtral-8x7b": 32000 * 4096, "mixtral-8x22b": 32000 * 6144, "qwen1.5-moe-a2.7b": 151936 * 2048,
    "deepseek-moe-16b": 102400 * 2048, "deepseek-v2-lite": 102400 * 2048, "dbrx": 100352 * 6144,
    "olmoe-1b-7b": 50304 * 2048, "phi-3.5-moe": 32064 * 4096, "mistral-7b": 32000 * 4096,
}

def models_marked():
    """Every model (DBRX's bias-free LayerNorm and Phi-3.5-MoE's LM-head bias are counted since the
    Architecture gained norm_bias and lm_head_bias)."""
    return list(HAND)


def test_every_shipped_config_has_a_hand_count():
    assert sorted(p.stem for p in MODELS.glob("*.json")) == sorted(HAND)


@pytest.mark.parametrize("model", models_marked())
def test_total_by_hand(model):
    assert parameter_counts(arch(model)).total == HAND[model]()[0]


@pytest.mark.parametrize("model", models_marked())
def test_active_by_hand(model):
    assert parameter_counts(arch(model)).active_per_token == HAND[model]()[1]


@pytest.mark.parametrize("model", list(HAND))
def test_total_against_published(model):
    published = PUBLISHED[model][0]
    hand = HAND[model]()[0]
    computed = parameter_counts(arch(model)).total
    assert hand == pytest.approx(published, rel=0.01)
    assert computed == pytest.approx(published, rel=0.01)


@pytest.mark.parametrize("model", [m for m in HAND if PUBLISHED[m][1] is not None])
def test_active_against_published(model):
    _, published, vocab_matrices = PUBLISHED[model]
    drop = (2 - vocab_matrices) * VOCAB_HIDDEN[model]
    hand = HAND[model]()[1] - drop
    computed = parameter_counts(arch(model)).active_per_token - drop
    assert hand == pytest.approx(published, rel=0.03)
    assert computed == pytest.approx(published, rel=0.03)


def test_deepseek_v2_lite_published_active_is_not_both_vocab_matrices():
    """The one-matrix convention is the only one within 3% of DeepSeek's 2.4 B."""
    active = parameter_counts(arch("deepseek-v2-lite")).active_per_token
    assert active / (2.4 * B) > 1.10
    assert (active - 2 * VOCAB_HIDDEN["deepseek-v2-lite"]) / (2.4 * B) < 0.94


def test_dense_model_is_all_active():
    a = arch("mistral-7b")
    c = parameter_counts(a)
    assert a.moe_group is None
    assert [(g.name, g.count, g.mlp.kind) for g in a.groups] == [("dense", 32, "dense")]
    assert c.total == c.active_per_token


KV_BY_HAND = {
    "mixtral-8x7b": 2 * 8 * 128,          # K and V, 8 KV heads of 128
    "mixtral-8x22b": 2 * 8 * 128,
    "qwen1.5-moe-a2.7b": 2 * 16 * 128,    # MHA
    "deepseek-moe-16b": 2 * 16 * 128,     # MHA
    "deepseek-v2-lite": 512 + 64,         # MLA: the latent plus the shared rope key
    "dbrx": 2 * 8 * 128,
    "olmoe-1b-7b": 2 * 16 * 128,
    "phi-3.5-moe": 2 * 8 * 128,
    "mistral-7b": 2 * 8 * 128,
}


@pytest.mark.parametrize("model", list(KV_BY_HAND))
def test_kv_cache_elements_per_token_per_layer(model):
    assert kv_cache_elements_per_token_per_layer(arch(model)) == KV_BY_HAND[model]


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("model,layers", [("deepseek-moe-16b", 28), ("deepseek-v2-lite", 27)])
def test_deepseek_has_a_dense_group_and_a_moe_group(model, layers):
    a = arch(model)
    assert [(g.name, g.count) for g in a.groups] == [("dense", 1), ("moe", layers - 1)]
    dense, moe = a.groups
    assert dense.mlp.kind == "dense" and dense.mlp.intermediate_size == 10944
    assert (moe.mlp.num_experts, moe.mlp.top_k, moe.mlp.intermediate_size) == (64, 6, 1408)
    assert moe.mlp.shared_intermediate_size == 2 * 1408
    assert not moe.mlp.shared_expert_gate
    assert a.moe_group is moe


def test_deepseek_moe_16b_per_layer_by_hand():
    h = 2048
    attn = 4 * h * h
    per = parameter_counts(arch("deepseek-moe-16b")).per_layer
    assert per["dense"] == attn + 3 * h * 10944 + 2 * h
    assert per["moe"] == attn + 64 * 3 * h * 1408 + 3 * h * 2816 + h * 64 + 2 * h


def test_deepseek_v2_lite_is_mla():
    a = arch("deepseek-v2-lite").attention
    assert a.kind == "mla" and a.q_lora_rank is None
    assert (a.num_heads, a.kv_lora_rank, a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim) == (16, 512, 128, 64, 128)


def test_qwen_has_qkv_bias_and_a_gated_shared_expert():
    a = arch("qwen1.5-moe-a2.7b")
    assert a.attention.qkv_bias and not a.attention.o_bias
    (g,) = a.groups
    assert g.mlp.shared_intermediate_size == 5632 and g.mlp.shared_expert_gate
    assert (g.mlp.num_experts, g.mlp.top_k, g.mlp.intermediate_size) == (60, 4, 1408)


def test_per_model_conventions():
    assert arch("olmoe-1b-7b").attention.qk_norm
    phi = arch("phi-3.5-moe")
    assert phi.norm == "layer" and phi.attention.qkv_bias and phi.attention.o_bias
    dbrx = arch("dbrx")
    assert dbrx.norm == "layer" and not dbrx.attention.qkv_bias
    assert (dbrx.hidden_size, dbrx.attention.num_heads, dbrx.attention.num_kv_heads, dbrx.num_layers) == (6144, 48, 8, 40)
    assert not any(arch(m).tie_word_embeddings for m in HAND)


def test_name_and_source():
    a = arch("mixtral-8x7b")
    assert (a.name, a.source, a.model_type) == ("mixtral-8x7b", "mixtral-8x7b.json", "mixtral")
    assert from_hf_config(MODELS / "mixtral-8x7b.json", name="M").name == "M"


def write(tmp_path, cfg, name="config.json"):
    p = tmp_path / name
    p.write_text(json.dumps(cfg) if not isinstance(cfg, str) else cfg)
    return p


def base(model):
    return json.loads((MODELS / f"{model}.json").read_text())


def test_name_or_path_and_folder(tmp_path):
    cfg = base("mistral-7b") | {"_name_or_path": "mistralai/Mistral-7B-v0.1"}
    write(tmp_path, cfg)
    a = from_hf_config(tmp_path)          # a folder holding config.json
    assert (a.name, a.source) == ("mistralai/Mistral-7B-v0.1", "config.json")


def test_qwen_sparse_step_and_mlp_only_layers(tmp_path):
    cfg = base("qwen1.5-moe-a2.7b") | {"decoder_sparse_step": 2, "mlp_only_layers": [1, 2]}
    a = from_hf_config(write(tmp_path, cfg))
    # MoE where (i+1) % 2 == 0 and i not in {1, 2}: i = 3, 5, ..., 23 -> 11 layers
    assert [(g.name, g.count) for g in a.groups] == [("dense", 13), ("moe", 11)]
    assert a.groups[0].mlp.intermediate_size == 5632


def test_deepseek_moe_layer_freq(tmp_path):
    cfg = base("deepseek-moe-16b") | {"first_k_dense_replace": 3, "moe_layer_freq": 2}
    a = from_hf_config(write(tmp_path, cfg))
    # MoE where i >= 3 and i % 2 == 0: 4, 6, ..., 26 -> 12 layers
    assert [(g.name, g.count) for g in a.groups] == [("dense", 16), ("moe", 12)]


def test_llama_dense_with_tied_embeddings_and_biases(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "vocab_size": 100, "tie_word_embeddings": True,
           "attention_bias": True, "mlp_bias": True}
    a = from_hf_config(write(tmp_path, cfg))
    h, ff, v = 64, 128, 100
    attn = 4 * h * h + 4 * h                                 # MHA (no num_key_value_heads) + 4 biases
    mlp = 3 * h * ff + 2 * ff + h
    assert parameter_counts(a).total == v * h + h + 2 * (attn + mlp + 2 * h)


def test_deepseek_v2_with_q_lora(tmp_path):
    cfg = base("deepseek-v2-lite") | {"q_lora_rank": 1536}
    a = from_hf_config(write(tmp_path, cfg))
    assert a.attention.q_lora_rank == 1536


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as e:
        from_hf_config(tmp_path / "nope.json")
    assert e.value.field == "model.hf_config" and e.value.value == str(tmp_path / "nope.json")


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]"])
def test_bad_json(tmp_path, text):
    with pytest.raises(InputError) as e:
        from_hf_config(write(tmp_path, text))
    assert e.value.field == "model.hf_config"


def test_unknown_model_type(tmp_path):
    with pytest.raises(InputError) as e:
        from_hf_config(write(tmp_path, base("mixtral-8x7b") | {"model_type": "gpt2"}))
    assert e.value.field == "model.hf_config.model_type" and e.value.value == "gpt2"
    assert "unsupported" in e.value.problem and all(t in e.value.problem for t in SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("model,key", [
    ("mixtral-8x7b", "model_type"),
    ("mixtral-8x7b", "num_local_experts"),
    ("mixtral-8x7b", "num_key_value_heads"),
    ("qwen1.5-moe-a2.7b", "shared_expert_intermediate_size"),
    ("deepseek-moe-16b", "n_routed_experts"),
    ("deepseek-v2-lite", "kv_lora_rank"),
    ("olmoe-1b-7b", "num_experts_per_tok"),
    ("phi-3.5-moe", "hidden_size"),
    ("mistral-7b", "vocab_size"),
    ("dbrx", "ffn_config.moe_top_k"),
    ("dbrx", "attn_config"),
])
def test_missing_field(tmp_path, model, key):
    cfg = base(model)
    node, *path = key.split(".")
    if path:
        del cfg[node][path[0]]
    else:
        del cfg[node]
    with pytest.raises(InputError) as e:
        from_hf_config(write(tmp_path, cfg))
    field = key if key != "attn_config" else "attn_config.kv_n_heads"
    assert e.value.field == f"model.hf_config.{field}" and e.value.value is None
    assert "missing" in e.value.problem


@pytest.mark.parametrize("key,value", [("hidden_size", "4096"), ("num_hidden_layers", 0),
                                       ("num_experts_per_tok", 9), ("tie_word_embeddings", "no"),
                                       ("num_key_value_heads", 7)])
def test_bad_value(tmp_path, key, value):
    with pytest.raises(InputError) as e:
        from_hf_config(write(tmp_path, base("mixtral-8x7b") | {key: value}))
    assert e.value.field == f"model.hf_config.{key}" and e.value.value == value
