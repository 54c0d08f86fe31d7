"""An :class:`~model.architecture.Architecture` from a Hugging Face ``config.json``.

Supported ``model_type`` s and what is read from each (field names as in the
published configs)::

    mixtral      num_local_experts, num_experts_per_tok; SwiGLU experts, RMSNorm
    qwen2_moe    num_experts, num_experts_per_tok, moe_intermediate_size,
                 shared_expert_intermediate_size (+ sigmoid shared_expert_gate),
                 decoder_sparse_step, mlp_only_layers; q/k/v biases
    deepseek     first_k_dense_replace dense layers (intermediate_size), then MoE
                 layers every moe_layer_freq: n_routed_experts of moe_intermediate_size,
                 n_shared_experts shared experts (total width n_shared * moe_intermediate_size)
    deepseek_v2  as deepseek, with multi-head latent attention (kv_lora_rank,
                 qk_nope_head_dim, qk_rope_head_dim, v_head_dim, q_lora_rank or null)
    dbrx         d_model, n_heads, n_layers, attn_config.kv_n_heads,
                 ffn_config.{moe_num_experts, moe_top_k, ffn_hidden_size}; GLU experts,
                 LayerNorm without bias
    olmoe        num_experts, num_experts_per_tok; q/k RMSNorms
    phimoe       num_local_experts, num_experts_per_tok; LayerNorm with bias,
                 attention_bias (q, k, v and o), lm_head_bias
    llama        dense: one group, Mlp(kind="dense"); attention_bias, mlp_bias
    mistral      dense, as llama

Layers that differ become separate :class:`LayerGroup` s -- ``"dense"`` and
``"moe"`` in the order their first layer appears -- never averaged. Layer groups
carry counts, not positions: interleaved layers (``decoder_sparse_step: 2``)
become one group of each kind.

``head_dim`` is the config's ``head_dim`` where given, else hidden / heads. For MLA
the attention's ``num_kv_heads`` is ``num_heads`` and ``head_dim`` the q/k head
width ``qk_nope_head_dim + qk_rope_head_dim`` (the counts use the MLA fields).

Fields that Hugging Face treats as optional take its defaults (``num_key_value_heads``
absent or null: multi-head attention, except Mixtral and PhiMoE whose config classes
default to 8, so there it is required; biases off; ``tie_word_embeddings`` false;
``first_k_dense_replace`` 0; ``moe_layer_freq`` and ``decoder_sparse_step`` 1).
Everything else that shapes the parameter count is required.

Errors are :class:`~model.errors.InputError` s naming the field: ``model.hf_config``
for an unreadable file, ``model.hf_config.<key>`` (dotted for DBRX's nested keys) for
a missing or invalid value.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from .architecture import Architecture, Attention, LayerGroup, Mlp
from .errors import InputError
from .inputs import CONFIG_MAX_BYTES, load_json
from .scenario import ARCH_MAX, EXPERTS_MAX, LAYERS_MAX

FIELD = "model.hf_config"
_MISSING = object()
# The scenario's bounds (model/scenario.py) for the same numbers: what the MILP grows with.
_MAXIMUM = {key: LAYERS_MAX for key in ("num_hidden_layers", "n_layers", "first_k_dense_replace", "moe_layer_freq",
                                        "decoder_sparse_step")}
_MAXIMUM.update({key: EXPERTS_MAX for key in ("num_local_experts", "num_experts", "n_routed_experts",
                                              "ffn_config.moe_num_experts", "num_experts_per_tok",
                                              "ffn_config.moe_top_k", "n_shared_experts")})


# --------------------------------------------------------------------------- reading


def _load(path: Path) -> dict:
    p = path / "config.json" if path.is_dir() else path
    cfg = load_json(p, FIELD, CONFIG_MAX_BYTES)
    if not isinstance(cfg, dict):
        raise InputError(FIELD, str(path), "config.json must hold a JSON object")
    return cfg


class _Config:
    """Typed access to the raw mapping; every error names ``model.hf_config.<key>``."""

    def __init__(self, raw: dict):
        self.raw = raw

    def _lookup(self, key: str) -> Any:
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def _missing(self, key: str) -> InputError:
        return InputError(f"{FIELD}.{key}", None, "required field is missing from config.json")

    def int(self, key: str, default: Any = _MISSING, minimum: int = 1, maximum: int | None = None) -> int:
        """An integer in ``minimum..maximum``; the maximum is the scenario's own bound for the same
        number (``LAYERS_MAX`` for layer counts, ``EXPERTS_MAX`` for expert counts, else ``ARCH_MAX``)."""
        v = self._lookup(key)
        if v is _MISSING or (v is None and default is not _MISSING):
            if default is _MISSING:
                raise self._missing(key)
            return default
        top = maximum if maximum is not None else _MAXIMUM.get(key, ARCH_MAX)
        if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= top:
            raise InputError(f"{FIELD}.{key}", v, f"must be an integer in {minimum}..{top}")
        return v

    def opt_int(self, key: str) -> int | None:
        """An integer that may be absent or null (DeepSeek-V2's ``q_lora_rank``)."""
        v = self._lookup(key)
        if v is _MISSING or v is None:
            return None
        return self.int(key)

    def bool(self, key: str, default: bool = False) -> bool:
        v = self._lookup(key)
        if v is _MISSING or v is None:
            return default
        if not isinstance(v, bool):
            raise InputError(f"{FIELD}.{key}", v, "must be true or false")
        return v

    def int_list(self, key: str) -> list[int]:
        v = self._lookup(key)
        if v is _MISSING or v is None:
            return []
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
            raise InputError(f"{FIELD}.{key}", v, "must be a list of layer indices")
        return v


# --------------------------------------------------------------------------- building blocks


def _gqa(c: _Config, heads_key: str, hidden: int, kv_key: str | None, kv_required: bool,
         qkv_bias: bool = False, o_bias: bool = False, qk_norm: bool = False) -> Attention:
    nh = c.int(heads_key)
    if kv_key is None:
        nkv = nh
    elif kv_required:
        nkv = c.int(kv_key)
    else:
        nkv = c.int(kv_key, default=nh)
    if nh % nkv:
        raise InputError(f"{FIELD}.{kv_key}", nkv, f"must divide the number of attention heads ({nh})")
    hd = c.int("head_dim", default=None)
    if hd is None:
        if hidden % nh:
            raise InputError(f"{FIELD}.{heads_key}", nh,
                             f"must divide the hidden size ({hidden}) when head_dim is not given")
        hd = hidden // nh
    return Attention(kind="gqa", num_heads=nh, num_kv_heads=nkv, head_dim=hd,
                     qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=qk_norm)


def _check_top_k(c: _Config, key: str, top_k: int, experts: int) -> None:
    if top_k > experts:
        raise InputError(f"{FIELD}.{key}", top_k, f"must not exceed the number of routed experts ({experts})")


def _groups(num_layers: int, mlp_of: Callable[[int], Mlp]) -> tuple[LayerGroup, ...]:
    """One group per distinct MLP, named by its kind, in the order its first layer appears."""
    counts: dict[Mlp, int] = {}
    for i in range(num_layers):
        m = mlp_of(i)
        counts[m] = counts.get(m, 0) + 1
    seen: dict[str, int] = {}
    groups = []
    for m, n in counts.items():
        k = seen[m.kind] = seen.get(m.kind, 0) + 1
        groups.append(LayerGroup(name=m.kind if k == 1 else f"{m.kind}{k}", count=n, mlp=m))
    return tuple(groups)


# --------------------------------------------------------------------------- per model_type


def _uniform_moe(c: _Config, experts_key: str, kv_required: bool, **attention) -> dict:
    """Every layer alike: GQA attention and ``experts_key`` SwiGLU experts of ``intermediate_size``."""
    h1 = c.int("hidden_size")
    E, k = c.int(experts_key), c.int("num_experts_per_tok")
    _check_top_k(c, "num_experts_per_tok", k, E)
    mlp = Mlp(kind="moe", intermediate_size=c.int("intermediate_size"), num_experts=E, top_k=k)
    return dict(hidden_size=h1, vocab_size=c.int("vocab_size"),
                attention=_gqa(c, "num_attention_heads", h1, "num_key_value_heads", kv_required=kv_required,
                               **attention),
                groups=(LayerGroup("moe", c.int("num_hidden_layers"), mlp),))


def _mixtral(c: _Config) -> dict:
    return _uniform_moe(c, "num_local_experts", kv_required=True)


def _dense(c: _Config) -> dict:
    h1 = c.int("hidden_size")
    bias = c.bool("attention_bias")
    mlp = Mlp(kind="dense", intermediate_size=c.int("intermediate_size"), bias=c.bool("mlp_bias"))
    return dict(hidden_size=h1, vocab_size=c.int("vocab_size"),
                attention=_gqa(c, "num_attention_heads", h1, "num_key_value_heads", kv_required=False,
                               qkv_bias=bias, o_bias=bias),
                groups=(LayerGroup("dense", c.int("num_hidden_layers"), mlp),))


def _qwen2_moe(c: _Config) -> dict:
    h1, L = c.int("hidden_size"), c.int("num_hidden_layers")
    E = c.int("num_experts", minimum=0)
    step = c.int("decoder_sparse_step", default=1)
    mlp_only = set(c.int_list("mlp_only_layers"))
    shared = c.int("shared_expert_intermediate_size", minimum=0) if E else 0
    moe = None
    if E:
        k = c.int("num_experts_per_tok")
        _check_top_k(c, "num_experts_per_tok", k, E)
        moe = Mlp(kind="moe", intermediate_size=c.int("moe_intermediate_size"), num_experts=E, top_k=k,
                  shared_intermediate_size=shared, shared_expert_gate=shared > 0)
    dense = Mlp(kind="dense", intermediate_size=c.int("intermediate_size"))

    def mlp_of(i: int) -> Mlp:
        # transformers' Qwen2MoeDecoderLayer: MoE unless listed in mlp_only_layers, every step-th layer
        if moe is not None and i not in mlp_only and (i + 1) % step == 0:
            return moe
        return dense

    return dict(hidden_size=h1, vocab_size=c.int("vocab_size"),
                attention=_gqa(c, "num_attention_heads", h1, "num_key_value_heads", kv_required=False,
                               qkv_bias=True),
                groups=_groups(L, mlp_of))


def _deepseek_groups(c: _Config, L: int) -> tuple[LayerGroup, ...]:
    E = c.int("n_routed_experts", minimum=0)
    first_dense = c.int("first_k_dense_replace", default=0, minimum=0)
    freq = c.int("moe_layer_freq", default=1)
    dense = Mlp(kind="dense", intermediate_size=c.int("intermediate_size"))
    moe = None
    if E:
        k = c.int("num_experts_per_tok")
        _check_top_k(c, "num_experts_per_tok", k, E)
        width = c.int("moe_intermediate_size")
        n_shared = c.int("n_shared_experts", default=0, minimum=0)
        moe = Mlp(kind="moe", intermediate_size=width, num_experts=E, top_k=k,
                  shared_intermediate_size=n_shared * width)

    def mlp_of(i: int) -> Mlp:
        # DeepseekDecoderLayer: MoE for layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0
        if moe is not None and i >= first_dense and i % freq == 0:
            return moe
        return dense

    return _groups(L, mlp_of)


def _deepseek(c: _Config) -> dict:
    h1 = c.int("hidden_size")
    bias = c.bool("attention_bias")
    return dict(hidden_size=h1, vocab_size=c.int("vocab_size"),
                attention=_gqa(c, "num_attention_heads", h1, "num_key_value_heads", kv_required=False,
                               qkv_bias=bias, o_bias=bias),
                groups=_deepseek_groups(c, c.int("num_hidden_layers")))


def _deepseek_v2(c: _Config) -> dict:
    h1 = c.int("hidden_size")
    if c.bool("attention_bias"):
        raise InputError(f"{FIELD}.attention_bias", True,
                         "biases on multi-head latent attention are not supported")
    nh = c.int("num_attention_heads")
    nope, rope = c.int("qk_nope_head_dim"), c.int("qk_rope_head_dim")
    att = Attention(kind="mla", num_heads=nh, num_kv_heads=nh, head_dim=nope + rope,
                    q_lora_rank=c.opt_int("q_lora_rank"), kv_lora_rank=c.int("kv_lora_rank"),
                    qk_nope_head_dim=nope, qk_rope_head_dim=rope, v_head_dim=c.int("v_head_dim"))
    return dict(hidden_size=h1, vocab_size=c.int("vocab_size"), attention=att,
                groups=_deepseek_groups(c, c.int("num_hidden_layers")))


def _dbrx(c: _Config) -> dict:
    h1 = c.int("d_model")
    E, k = c.int("ffn_config.moe_num_experts"), c.int("ffn_config.moe_top_k")
    _check_top_k(c, "ffn_config.moe_top_k", k, E)
    mlp = Mlp(kind="moe", intermediate_size=c.int("ffn_config.ffn_hidden_size"), num_experts=E, top_k=k)
    # fused Wqkv (h1 -> (nh + 2*nkv)*hd) holds exactly the q, k, v parameters; no biases
    return dict(hidden_size=h1, vocab_size=c.int("vocab_size"),
                attention=_gqa(c, "n_heads", h1, "attn_config.kv_n_heads", kv_required=True),
                groups=(LayerGroup("moe", c.int("n_layers"), mlp),),
                norm="layer", _norm_bias=False)


def _olmoe(c: _Config) -> dict:
    bias = c.bool("attention_bias")
    return _uniform_moe(c, "num_experts", kv_required=False, qkv_bias=bias, o_bias=bias, qk_norm=True)


def _phimoe(c: _Config) -> dict:
    bias = c.bool("attention_bias")
    return dict(_uniform_moe(c, "num_local_experts", kv_required=True, qkv_bias=bias, o_bias=bias),
                norm="layer", _lm_head_bias=c.bool("lm_head_bias"))


_BUILDERS: dict[str, Callable[[_Config], dict]] = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "deepseek": _deepseek,
    "deepseek_v2": _deepseek_v2,
    "dbrx": _dbrx,
    "olmoe": _olmoe,
    "phimoe": _phimoe,
    "llama": _dense,
    "mistral": _dense,
}

SUPPORTED_MODEL_TYPES = tuple(_BUILDERS)

# Conventions that Architecture may not express yet: passed on only once it has the field.
_ARCH_FIELDS = {f.name for f in dataclasses.fields(Architecture)}


def from_hf_config(path: str | Path, name: str | None = None) -> Architecture:
    """Read a Hugging Face ``config.json`` (or a folder holding one) into an :class:`Architecture`.

    ``name`` defaults to the config's ``_name_or_path``, else the file's stem;
    ``source`` is the file's name.
    """
    path = Path(path)
    c = _Config(_load(path))
    mt = c.raw.get("model_type", _MISSING)
    if mt is _MISSING:
        raise InputError(f"{FIELD}.model_type", None, "required field is missing from config.json")
    if mt not in _BUILDERS:
        raise InputError(f"{FIELD}.model_type", mt, f"unsupported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    kw = _BUILDERS[mt](c)
    # LayerNorm without a bias (DBRX), a bias on the LM head (PhiMoE): see model/architecture.py
    norm_bias = kw.pop("_norm_bias", None)
    lm_head_bias = kw.pop("_lm_head_bias", None)
    if norm_bias is not None and "norm_bias" in _ARCH_FIELDS:
        kw["norm_bias"] = norm_bias
    if lm_head_bias is not None and "lm_head_bias" in _ARCH_FIELDS:
        kw["lm_head_bias"] = lm_head_bias
    nm = name or c.raw.get("_name_or_path") or (path.name if path.is_dir() else path.stem)
    source = (path / "config.json").name if path.is_dir() else path.name
    return Architecture(name=str(nm), model_type=mt, tie_word_embeddings=c.bool("tie_word_embeddings"),
                        source=source, **kw)


# --------------------------------------------------------------------------- shipped configs by id

MODELS_DIR = Path(__file__).resolve().parents[1] / "scenarios" / "models"


def shipped_models() -> dict[str, Path]:
    """Hugging Face repo id -> shipped config.json (``_source`` and its ``_aliases``: base and
    instruct variants of one architecture share a config)."""
    out: dict[str, Path] = {}
    for path in sorted(MODELS_DIR.glob("*.json")):
        try:
            cfg = _load(path)
        except InputError:
            continue
        ids = [cfg.get("_source")] + list(cfg.get("_aliases") or [])
        for model_id in ids:
            if isinstance(model_id, str) and model_id.strip():
                out[model_id.strip()] = path
    return out


def resolve_model(name: str, field: str = "--model") -> Path:
    """A ``--model`` value: a shipped model's Hugging Face id (case-insensitive) or a config.json path."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(field, name, "expected a Hugging Face model id or a path to a config.json")
    known = shipped_models()
    by_lower = {k.lower(): v for k, v in known.items()}
    if name.strip().lower() in by_lower:
        return by_lower[name.strip().lower()]
    p = Path(name).expanduser()
    if p.suffix.lower() == ".json" or p.is_dir() or p.exists():
        return p.resolve()
    raise InputError(field, name, "unknown model id (known: " + ", ".join(sorted(known)) + "; or give a config.json path)")
