"""Expert-aware policies: routing skew, experts pinned on the GPU, experts computed on the CPU.

The core model moves every routed expert of a layer in every step, as the reference
does. Three switches (scenario section ``experts:``, README "Expert-aware policies")
refine that, each decided jointly with the batch sizes and the placement:

``expert_traffic: expected``
    In a decode step a layer moves only the experts that at least one of the block's
    ``b`` tokens routes to: expert ``e`` with probability ``mu_e(b) = 1 - (1 - q_e)^b``,
    ``q_e`` its per-token routing probability. Prefill moves those routed by ``b*s``
    tokens (``mu_e(b*s)``, all of them in practice).
``pin_experts``
    A binary decision per (layer, expert): keep that expert's weights resident on the
    GPU. A pinned expert never moves; GPU home memory holds it.
``cpu_experts``
    A binary decision per (layer, expert): compute it on the CPU in decode (Fiddler's
    trade), its weights resident in CPU memory. Per decode step it costs
    ``mu_e(b) * F / R_gemv + (b*q_e - mu_e(b)) * F / R_gemm`` seconds of CPU time (the
    first routed token is a GEMV that streams the expert's weights from DRAM, each
    further token a small-GEMM's worth of FLOPs; ``F`` = the expert's FLOPs per token),
    added to the layer's compute (serially, as the core adds CPU attention); the GPU
    no longer computes it (its FLOPs leave the GPU compute at the GPU's peak rate:
    exact when the GEMMs are compute-bound, an over-estimate of the remaining GPU time
    when memory-bound), and each routed token's hidden state crosses PCIe both ways.
    In prefill, where an expert sees ``b*s*q_e`` tokens, a CPU expert is copied to the
    GPU from its CPU home like the streamed weights (Fiddler does the same for large
    inputs).

Everything else is the core's: the weights that are neither pinned nor on the CPU
(the layer's dense part and its streamed experts) are placed by the weights fractions
``p[weights, d]``, homed on the GPU, CPU and disk in those shares.

How a decision changes the accounting is one rule, applied to every quantity a
layer's weights appear in: a quantity's per-block coefficient ``o_d`` of the weights
fraction on device ``d`` refers to one layer's weights (times and working buffers of
that layer's group) or to all layers' weights (home memory), so expert ``e``'s share
of it is ``f * o_d`` with ``f = W_e / W_layer`` (or ``count * W_e / W_all``). A pinned
expert leaves the placed pool (``-f * o_d`` for every d) and counts as weights with
fraction 1 on the GPU (``+f * o_gpu``); a CPU expert likewise on the CPU, except in
decode times and buffers, where it does not move at all. With expected traffic, a
streamed expert's decode terms are scaled by ``mu_e(b)``. :func:`specialize` applies
this with the decision and ``b`` known (the result is an ordinary
:class:`~model.terms.Accounting`, evaluated and re-solved like any other); the Pyomo
family :mod:`model.families.experts` applies the same rule with decision variables.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from .scenario import Scenario
from .terms import Accounting, ExpertGroup, LayerGroup, MemoryTerms, Quantity

TERA = 1e12
# mu_e(b) = 1 - r^b is taken as 1 once r^b is below this (the expected-traffic one-hot stops there).
EXPECTED_TRAFFIC_TOL = 1e-9
# ... but never beyond this block size (one binary per block size up to it).
MAX_EXACT_BLOCK_SIZE = 2048


@dataclass(frozen=True)
class ExpertSetup:
    """Which expert-aware features are on, and the CPU rates they need (FLOP/s, GiB/s)."""

    traffic: str = "all"                 # all | expected
    pin: bool = False
    cpu: bool = False
    cpu_gemv_flops: float = 0.0
    cpu_gemm_flops: float = 0.0
    cpu_to_gpu_gib_per_s: float = 1.0
    gpu_to_cpu_gib_per_s: float = 1.0

    @property
    def active(self) -> bool:
        """Whether the model needs the experts family (anything beyond the core)."""
        return self.traffic == "expected" or self.pin or self.cpu

    @property
    def has_decisions(self) -> bool:
        return self.pin or self.cpu

    @classmethod
    def from_scenario(cls, sc: Scenario) -> "ExpertSetup":
        ex, hw = sc.experts, sc.hardware
        return cls(traffic=ex.expert_traffic, pin=ex.pin_experts, cpu=ex.cpu_experts,
                   cpu_gemv_flops=(hw.tflops.cpu_gemv or 0.0) * TERA,
                   cpu_gemm_flops=(hw.tflops.cpu_gemm or 0.0) * TERA,
                   cpu_to_gpu_gib_per_s=hw.bandwidth_gib_per_s.cpu_to_gpu,
                   gpu_to_cpu_gib_per_s=hw.bandwidth_gib_per_s.gpu_to_cpu_hidden)


@dataclass(frozen=True)
class Decision:
    """Experts pinned on the GPU and experts computed on the CPU: (layer group, expert) pairs."""

    pinned: frozenset = field(default_factory=frozenset)
    cpu: frozenset = field(default_factory=frozenset)

    def status(self, group: str, e: int) -> str:
        if (group, e) in self.pinned:
            return "pinned"
        return "cpu" if (group, e) in self.cpu else "streamed"


def moved_probability(q: float, tokens: float) -> float:
    """``mu = 1 - (1 - q)^tokens``: the chance that at least one of ``tokens`` tokens routes to the expert."""
    if q >= 1.0:
        return 1.0
    return -math.expm1(tokens * math.log1p(-q)) if q > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Where an expert's weights appear, and its share of each coefficient


@dataclass(frozen=True)
class Attached:
    """One quantity a group's expert weights appear in, and how to scale its block coefficients."""

    quantity: Quantity
    kind: str            # "time" | "home" | "working"
    phase: str | None    # prefill | decode (None: the disk's home)
    component: str | None
    scale_per_gib: float  # expert share = scale_per_gib * W_e (GiB) * o_d
    device: str | None = None   # memory: whose memory


def attached(acc: Accounting, group: ExpertGroup) -> Iterator[Attached]:
    """Every quantity in which ``group``'s expert weights appear (times, buffers, home memory)."""
    layers = {g.name: g for g in acc.groups}
    lg: LayerGroup = layers[group.name]
    per_layer = 1.0 / group.layer_weights_gib
    for (ph, c), q in lg.time.items():
        if q.block:
            yield Attached(q, "time", ph, c, per_layer)
    count = len(group.layers)
    for (dev, ph), mt in acc.memory.items():
        if mt.home.block:
            yield Attached(mt.home, "home", ph, None, count / acc.weights_gib, dev)
        w = mt.working.get(group.name)
        if w is not None and w.block:
            yield Attached(w, "working", ph, None, per_layer, dev)


def kept_home(status: str, item: Attached) -> str | None:
    """Where a kept (pinned or CPU) expert counts as weights in this quantity; None: nowhere."""
    if status == "pinned":
        return "gpu"
    if item.kind == "home" or item.phase == "prefill":
        return "cpu"
    return None   # a CPU expert in decode does not move


def cpu_expert_seconds(acc: Accounting, setup: ExpertSetup, q: float):
    """Per layer and decode step of a CPU expert: (per-block seconds per moved expert, per-sequence seconds).

    Time = mu * F * (1/R_gemv - 1/R_gemm) + b * q * F / R_gemm with ``F`` two FLOPs per weight of
    the expert; the GPU saves what its compute terms counted for the expert: ``q F_gpu / R_gpu`` per
    sequence (``F_gpu / R_gpu`` where the accounting runs every expert for every token, as the
    reference does with its two-matmul ``F_gpu = 4 h1 h2``).
    """
    F = acc.expert_flops_per_token
    per_moved = F * (1.0 / setup.cpu_gemv_flops - 1.0 / setup.cpu_gemm_flops)
    gpu_saved = (1.0 if acc.experts_every_token else q) * acc.expert_gpu_flops_per_token / acc.expert_gpu_flops
    per_seq = q * F / setup.cpu_gemm_flops - gpu_saved
    return per_moved, per_seq


def hidden_transfer_seconds(acc: Accounting, setup: ExpertSetup, q: float) -> tuple[float, float]:
    """Per sequence, layer and decode step: (CPU->GPU, GPU->CPU) seconds of a CPU expert's tokens."""
    hid = acc.hidden_gib_per_token
    return q * hid / setup.cpu_to_gpu_gib_per_s, q * hid / setup.gpu_to_cpu_gib_per_s


# ---------------------------------------------------------------------------------------------
# The accounting with a decision applied (b known)


def specialize(acc: Accounting, setup: ExpertSetup, decision: Decision, b: int) -> Accounting:
    """``acc`` with ``decision`` applied at block size ``b``: an ordinary accounting (see module doc)."""
    if not setup.active:
        return acc
    out = copy.deepcopy(acc)
    # home memory is shared by every group: read each coefficient before any group changes it
    items_of = {group.name: list(attached(out, group)) for group in out.expert_groups}
    original = {id(it.quantity): dict(it.quantity.block) for items in items_of.values() for it in items}
    for group in out.expert_groups:
        lg = next(g for g in out.groups if g.name == group.name)
        items = items_of[group.name]
        for e, (w_e, q) in enumerate(zip(group.expert_weights_gib, group.routing)):
            status = decision.status(group.name, e)
            for it in items:
                o = original[id(it.quantity)]
                f = it.scale_per_gib * w_e
                Q = it.quantity
                if status == "streamed":
                    if it.kind == "time" and setup.traffic == "expected":
                        tokens = b * (acc.prompt_len if it.phase == "prefill" else 1)
                        keep = moved_probability(q, tokens)
                        for d, c in o.items():
                            Q.block[d] -= f * c * (1.0 - keep)
                    continue
                for d, c in o.items():
                    Q.block[d] -= f * c
                home = kept_home(status, it)
                if home is not None:
                    Q.const += f * o.get(home, 0.0)
            if status == "cpu":
                mu = moved_probability(q, b) if setup.traffic == "expected" else 1.0
                per_moved, per_seq = cpu_expert_seconds(out, setup, q)
                comp = lg.time["decode", "comp"]
                comp.const += mu * per_moved
                comp.sequence.const += per_seq
                to_gpu, to_cpu = hidden_transfer_seconds(out, setup, q)
                lg.time["decode", "ctog"].sequence.const += to_gpu
                lg.time["decode", "gtoc"].sequence.const += to_cpu
    return out


def exact_block_sizes(acc: Accounting, b_lo: int, b_hi: int) -> tuple[list[int], bool, bool]:
    """Block sizes at which expected traffic differs from "all experts move": ``(sizes, flat, capped)``.

    ``sizes`` are ``b_lo..B*`` where ``B*`` is the first block size at which every expert with
    ``0 < q < 1`` moves with probability within :data:`EXPECTED_TRAFFIC_TOL` of 1 (capped at
    :data:`MAX_EXACT_BLOCK_SIZE`); ``flat`` says whether block sizes above ``B*`` are possible
    (there ``mu = 1`` is used, exact to the tolerance unless ``capped``).
    """
    qs = [q for eg in acc.expert_groups for q in eg.routing if 0.0 < q < 1.0]
    if not qs:
        return [], b_hi > b_lo, False
    need = max(math.ceil(math.log(EXPECTED_TRAFFIC_TOL) / math.log1p(-q)) for q in qs)
    capped = need > MAX_EXACT_BLOCK_SIZE
    top = min(need, MAX_EXACT_BLOCK_SIZE, b_hi)
    return list(range(b_lo, top + 1)), b_hi > top, capped and b_hi > MAX_EXACT_BLOCK_SIZE


def expected_experts_moved(acc: Accounting, setup: ExpertSetup, decision: Decision, b: int) -> dict[int, float]:
    """Per MoE layer: experts whose weights move in a decode step of block size ``b`` (expected number).

    Streamed experts only (pinned and CPU experts never move in decode); with
    ``expert_traffic: all`` every streamed expert counts as moving.
    """
    out = {}
    for group in acc.expert_groups:
        n = sum(moved_probability(q, b) if setup.traffic == "expected" else 1.0
                for e, q in enumerate(group.routing) if decision.status(group.name, e) == "streamed")
        for layer in group.layers:
            out[layer] = n
    return out


def decision_pairs(acc: Accounting, pairs) -> list[list[int]]:
    """(group, expert) pairs as sorted ``[layer, expert]`` lists (every layer of the group)."""
    layers = {g.name: g.layers for g in acc.expert_groups}
    return sorted([layer, e] for grp, e in pairs for layer in layers[grp])


# ---------------------------------------------------------------------------------------------
# Routing per MoE layer and splitting layers


def routing_rows(sc: Scenario, num_moe_layers: int, num_experts: int, top_k: int,
                 default: tuple[float, ...]) -> list[tuple[float, ...]]:
    """Per-MoE-layer routing probabilities: the scenario's rows, a trace's counts, or ``default`` everywhere."""
    from .errors import InputError
    from .scenario import DECISION_CELLS_MAX, MOE_CELLS_MAX

    ex = sc.experts
    cells = num_moe_layers * num_experts
    if cells > MOE_CELLS_MAX:
        raise InputError("model.num_experts", num_experts,
                         f"{num_moe_layers} MoE layers x {num_experts} experts = {cells:,} exceeds the "
                         f"{MOE_CELLS_MAX:,} this program models (the MILP would take minutes to build)")
    if (ex.pin_experts or ex.cpu_experts) and cells > DECISION_CELLS_MAX:
        flag = "experts.pin_experts" if ex.pin_experts else "experts.cpu_experts"
        raise InputError(flag, True, f"a decision per MoE layer and expert: {num_moe_layers} x {num_experts} = "
                                     f"{cells:,} exceeds the {DECISION_CELLS_MAX:,} this program models "
                                     f"(the MILP would take minutes to build)")
    if ex.routing_trace is not None:
        from .routing import load_trace

        return [tuple(r) for r in load_trace(ex.routing_trace, num_moe_layers, num_experts, top_k,
                                             field="experts.routing_trace")]
    if ex.routing_probabilities is not None:
        rows = [tuple(r) for r in ex.routing_probabilities]
        if len(rows) != num_moe_layers:
            raise InputError("experts.routing_probabilities", f"{len(rows)} rows",
                             f"needs one row per MoE layer ({num_moe_layers})")
        for i, row in enumerate(rows):
            if len(row) != num_experts:
                raise InputError(f"experts.routing_probabilities[{i}]", list(row),
                                 f"needs one entry per routed expert ({num_experts})")
            if not math.isclose(sum(row), top_k, rel_tol=1e-6, abs_tol=1e-9):
                raise InputError(f"experts.routing_probabilities[{i}]", list(row),
                                 f"must sum to the number of experts per token ({top_k}), sums to {sum(row):g}")
        return rows
    return [tuple(default)] * num_moe_layers


def split_layers(acc: Accounting, rows) -> Accounting:
    """One layer group per MoE layer (count 1), each with its routing row (accountings without an architecture)."""
    groups, memory = [], {key: MemoryTerms(home=mt.home, working={}) for key, mt in acc.memory.items()}
    expert_groups, i = [], 0
    by_name = {g.name: g for g in acc.expert_groups}
    for lg in acc.groups:
        eg = by_name.get(lg.name)
        if eg is None:
            groups.append(lg)
            for key, mt in acc.memory.items():
                if lg.name in mt.working:
                    memory[key].working[lg.name] = mt.working[lg.name]
            continue
        for layer in eg.layers:
            name = f"{lg.name}.{layer}"
            groups.append(LayerGroup(name, 1, copy.deepcopy(lg.time)))
            for key, mt in acc.memory.items():
                if lg.name in mt.working:
                    memory[key].working[name] = copy.deepcopy(mt.working[lg.name])
            expert_groups.append(replace(eg, name=name, layers=(layer,), routing=tuple(rows[i])))
            i += 1
    return replace(acc, groups=tuple(groups), memory=memory, expert_groups=tuple(expert_groups))
