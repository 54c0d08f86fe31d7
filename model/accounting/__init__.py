"""Accounting modes: how bytes and FLOPs are counted. Each returns a :class:`~model.terms.Accounting`.

``exact`` (the default) follows the architecture; ``flexllmgen`` reproduces the
original script, quirks included (docs/model.md section 3).
"""

from __future__ import annotations

from dataclasses import replace

from ..architecture import (Architecture, from_model_spec, kv_cache_elements_per_token_per_layer, moe_layer_indices,
                            parameter_counts, routing, with_layer_routing)
from ..scenario import Scenario
from ..terms import Accounting
from . import exact, flexllmgen


def architecture_of(scenario: Scenario) -> Architecture:
    """The scenario's architecture: its ``hf_config`` if given, else its explicit numbers."""
    spec = scenario.model
    if spec.hf_config is not None:
        from ..hf_config import from_hf_config

        arch = from_hf_config(spec.hf_config, name=spec.name if spec.name != "Mixtral-8x7B" else None)
        if spec.routing_probabilities is not None:
            from dataclasses import replace

            moe = arch.moe_group
            if moe is None or len(spec.routing_probabilities) != moe.mlp.num_experts:
                from ..errors import InputError

                raise InputError("model.routing_probabilities", list(spec.routing_probabilities),
                                 f"needs one entry per routed expert of the config "
                                 f"({0 if moe is None else moe.mlp.num_experts})")
            arch = replace(arch, routing_probabilities=tuple(spec.routing_probabilities))
        return arch
    return from_model_spec(spec)


def build_accounting(scenario: Scenario) -> Accounting:
    """The accounting of ``scenario``, in its attention mode (``policy.attention``; ``auto``: the
    CPU-attention base, whose ``gpu_attention_delta`` gives the other mode, model.attention)."""
    from ..attention import apply_attention

    return apply_attention(_build_base(scenario), "gpu" if scenario.policy.attention == "gpu" else "cpu")


def _build_base(scenario: Scenario) -> Accounting:
    """The accounting of ``scenario.model.accounting`` for this scenario (CPU attention).

    With per-layer routing that differs between layers, or with experts pinned or
    computed on the CPU (decisions per layer), every MoE layer is its own layer group.
    """
    from ..experts import ExpertSetup, routing_rows, split_layers

    split = ExpertSetup.from_scenario(scenario).has_decisions
    if scenario.model.accounting == "flexllmgen":
        if scenario.model.hf_config is not None:
            from ..errors import InputError

            raise InputError("model.accounting", "flexllmgen",
                             "the reference accounting knows only Mixtral's explicit numbers; "
                             "use accounting: exact with model.hf_config")
        acc = flexllmgen.build(scenario)
        m = scenario.model
        if m.num_experts <= 1:
            _no_routing_for_dense(scenario)
            return acc
        rows = routing_rows(scenario, m.num_layers, m.num_experts, m.num_experts_per_token, acc.routing_probability)
        if split or len(set(rows)) > 1:
            return split_layers(acc, rows)
        return replace(acc, expert_groups=tuple(replace(eg, routing=rows[0]) for eg in acc.expert_groups))
    arch = architecture_of(scenario)
    layers = moe_layer_indices(arch)
    if layers:
        moe = arch.moe_group
        rows = routing_rows(scenario, len(layers), moe.mlp.num_experts, moe.mlp.top_k, routing(arch, moe.mlp, moe))
        arch = with_layer_routing(arch, rows, split=split or len(set(rows)) > 1)
    else:
        _no_routing_for_dense(scenario)
    return exact.build(scenario, arch)


def _no_routing_for_dense(scenario: Scenario) -> None:
    """A routing trace or rows given for a model without MoE layers would be silently unused."""
    from ..errors import InputError

    ex = scenario.experts
    if ex.routing_trace is not None:
        raise InputError("experts.routing_trace", ex.routing_trace,
                         "the model has no MoE layers: a routing trace does not apply")
    if ex.routing_probabilities is not None:
        raise InputError("experts.routing_probabilities", f"{len(ex.routing_probabilities)} rows",
                         "the model has no MoE layers: routing rows do not apply")


def model_info(scenario: Scenario, acc: Accounting) -> dict:
    """What was modeled: name, parameters (total, active per token), weights GiB, KV bytes per token."""
    arch = architecture_of(scenario)
    counts = parameter_counts(arch)
    return {
        "name": arch.name,
        "model_type": arch.model_type,
        "accounting": acc.mode,
        "total_parameters": counts.total,
        "active_parameters_per_token": counts.active_per_token,
        "weights_gib": acc.weights_gib,
        "gpu_resident_gib": acc.gpu_resident_gib,
        "kv_cache_bytes_per_token": 2 * kv_cache_elements_per_token_per_layer(arch) * arch.num_layers,
        "layers": {g.name: g.count for g in arch.groups},
        "source": arch.source,
    }
