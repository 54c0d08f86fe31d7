"""Build the Pyomo model: Sets, expert Params, then every constraint family in order.

To add a constraint family, write ``model/families/<name>.py`` with
``add(m, data)`` that adds one named Block, and add it to
:data:`model.families.FAMILIES` (the one registration line).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyomo.environ as pyo

from .experts import Decision, ExpertSetup
from .families import FAMILIES
from .limits import registry
from .terms import COMPONENTS, DEVICES, PHASES, TENSOR_KINDS, Accounting


@dataclass(frozen=True)
class ModelData:
    """Plain data for one build: the accounting, capacities and search bounds."""

    accounting: Accounting
    capacity_gib: dict[str, float]
    alpha: dict[str, float]
    g_lo: int
    g_hi: int
    N_lo: int
    N_hi: int
    b_hi: int
    fixed_batch: tuple[int, int] | None = None           # (g, N): build the fixed-batch LP
    fixed_fractions: dict[tuple[str, str], float] | None = None
    name: str = "moe_offload_policy"
    experts: ExpertSetup | None = None                   # expert-aware features (None: the core model)
    expert_decision: Decision | None = None              # fixed: the accounting is specialized instead
    scenario: object = None                              # the validated Scenario: families read their KEYS here
    attention_mode: str | None = None                    # decided (auto) attention mode: the accounting applies it
    b_lo: int = 1                                        # smallest block size b = g*N searched (u <= 1/b_lo)

    @property
    def b_min(self) -> int:
        """The smallest block size ``b = g*N`` the search allows: ``max(b_lo, g_lo * N_lo)``."""
        return max(self.b_lo, self.g_lo * self.N_lo)

    @property
    def has_expert_decisions(self) -> bool:
        """Whether the expert family decides something (pinning or CPU experts), not only traffic."""
        return self.experts is not None and self.experts.has_decisions

    def setting(self, path: str):
        """A scenario value by its dotted path (a family's own key), or None without a scenario."""
        from .scenario import field_value

        return field_value(self.scenario, path)

    def fixed_at(self, g: int, N: int) -> "ModelData":
        """The data of the fixed-(g, N) model. With a fixed expert decision, the accounting is
        specialized to it at ``b = g*N`` (an ordinary LP); without one, the expert family keeps
        its binaries (a small MILP)."""
        from dataclasses import replace

        acc, experts = self.accounting, self.experts
        if self.attention_mode == "gpu" and acc.attention == "cpu":
            from .attention import apply_attention

            acc = apply_attention(acc, "gpu")
        if self.expert_decision is not None:
            from .experts import specialize

            acc = specialize(acc, self.experts, self.expert_decision, g * N)
            experts = None
        return replace(self, accounting=acc, experts=experts, expert_decision=None, fixed_batch=(g, N),
                       g_lo=g, g_hi=g, N_lo=N, N_hi=N)


def build_model(data: ModelData) -> pyo.ConcreteModel:
    """A ConcreteModel whose optimum is the throughput-optimal policy within ``data``'s bounds."""
    acc = data.accounting
    m = pyo.ConcreteModel(name=data.name)
    m.DEVICES = pyo.Set(initialize=DEVICES, ordered=True, doc="Where tensors live: gpu, cpu, disk")
    m.TENSOR_KINDS = pyo.Set(initialize=TENSOR_KINDS, ordered=True, doc="weights, cache, activations")
    m.PHASES = pyo.Set(initialize=PHASES, ordered=True, doc="prefill, decode")
    m.COMPONENTS = pyo.Set(initialize=COMPONENTS, ordered=True,
                           doc="Per-layer time components: ctog, gtoc, dtoc, ctod, comp")
    m.LAYER_GROUPS = pyo.Set(initialize=[g.name for g in acc.groups], ordered=True,
                             doc="Groups of identical layers (e.g. dense first layers, MoE layers)")
    m.layer_count = pyo.Param(m.LAYER_GROUPS, initialize={g.name: g.count for g in acc.groups},
                              doc="Number of layers in the group")
    m.EXPERTS = pyo.RangeSet(0, len(acc.expert_weights_gib) - 1, doc="Routed experts of one MoE layer")
    m.expert_weights_gib = pyo.Param(m.EXPERTS, initialize=dict(enumerate(acc.expert_weights_gib)),
                                     doc="Weights of one expert in one layer, GiB")
    layer_rows = {layer: eg.routing for eg in acc.expert_groups for layer in eg.layers}
    m.LAYERS = pyo.Set(initialize=sorted(layer_rows), ordered=True, doc="MoE layers (transformer layer indices)")
    m.routing_probability = pyo.Param(
        m.LAYERS, m.EXPERTS, initialize={(layer, e): q for layer, row in layer_rows.items() for e, q in enumerate(row)},
        doc="q[l, e]: per-token probability that layer l's router picks expert e")
    m.dense_weights_gib = pyo.Param(initialize=acc.dense_weights_gib,
                                    doc="Non-expert weights of one layer (attention, router, norms), GiB")
    m.layer_weights_gib = pyo.Expression(
        expr=m.dense_weights_gib + sum(m.expert_weights_gib[e] for e in m.EXPERTS),
        doc="Weights of one MoE layer (dense part + every expert), GiB")
    m.placement_allowed = pyo.Param(m.TENSOR_KINDS, m.DEVICES, initialize=acc.allowed, within=pyo.Boolean,
                                    doc="Whether a tensor kind may live on a device")
    registry(m)["data"] = data
    for family in FAMILIES:
        family.add(m, data)
    return m
