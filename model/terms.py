"""The cost model as data: every time and memory quantity in one linear shape.

Every quantity ``Q`` of the cost model (a per-layer time in seconds, or memory in
GiB) is, for block size ``b = g*N``, GPU batch size ``g`` and placement fractions ``p``,

    Q(b, g, p) = const                                # per block, whatever the placement
               + block(p_weights)                     # per block: weights on each device
               + b * sequence(p)                      # per sequence (KV cache, hidden states)
               + g * microbatch(p)                    # per micro-batch (working buffers)
               + b * eff(g) * cpu_attention(p)        # CPU attention whose rate depends on g

``block`` is linear in the weights fractions; the other three are affine in the cache
and activation fractions. Keeping weights out of the per-sequence terms, and cache
and activations out of the per-block term, is what makes the per-sequence MILP exact
(DESIGN.md section 2): divided by ``b`` every term is linear in the model's variables.

Layers come in groups of identical layers (:class:`LayerGroup`), each with its own
per-layer times. Memory per device and phase is ``home + max over groups of that
group's working buffers`` (:class:`MemoryTerms`): one layer is in flight at a time.
The accounting modules produce these forms; the Pyomo families turn them into
constraints, and :func:`evaluate` computes them directly for a fixed policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

DEVICES = ("gpu", "cpu", "disk")
TENSOR_KINDS = ("weights", "cache", "activations")
PHASES = ("prefill", "decode")
COMPONENTS = ("ctog", "gtoc", "dtoc", "ctod", "comp")
COMPONENT_NAMES = {
    "ctog": "CPU->GPU transfer",
    "gtoc": "GPU->CPU transfer",
    "dtoc": "disk->CPU transfer",
    "ctod": "CPU->disk transfer",
    "comp": "compute",
}
# Memory peaks: (device, phase); the disk holds only home bytes, the same in both phases.
MEMORY_KEYS = (("gpu", "prefill"), ("gpu", "decode"), ("cpu", "prefill"), ("cpu", "decode"), ("disk", None))
# Non-weight fractions: the ones that scale with the number of sequences.
SEQ_KINDS = ("cache", "activations")

Fractions = Mapping[tuple[str, str], float]  # (kind, device) -> fraction in [0, 1]


@dataclass
class Affine:
    """``const + sum coef[(kind, device)] * p[kind, device]`` over cache/activation fractions."""

    const: float = 0.0
    coef: dict[tuple[str, str], float] = field(default_factory=dict)

    def add(self, amount: float, kind: str, *devices: str) -> "Affine":
        """Add ``amount`` times each listed fraction of ``kind``."""
        if kind not in SEQ_KINDS:
            raise ValueError(f"per-sequence terms take cache/activations fractions, not {kind}")
        for d in devices:
            self.coef[(kind, d)] = self.coef.get((kind, d), 0.0) + amount
        return self

    def value(self, p: Fractions) -> float:
        return self.const + sum(c * p[key] for key, c in self.coef.items())

    def is_zero(self) -> bool:
        return self.const == 0.0 and all(c == 0.0 for c in self.coef.values())

    def plus(self, other: "Affine", scale: float = 1.0) -> "Affine":
        out = Affine(self.const + scale * other.const, dict(self.coef))
        for key, c in other.coef.items():
            out.coef[key] = out.coef.get(key, 0.0) + scale * c
        return out


_PARTS = ("sequence", "microbatch", "cpu_attention")


@dataclass
class Quantity:
    """One cost-model quantity in the shape documented in the module docstring."""

    const: float = 0.0
    block: dict[str, float] = field(default_factory=dict)  # weights device -> GiB or seconds per block
    sequence: Affine = field(default_factory=Affine)
    microbatch: Affine = field(default_factory=Affine)
    cpu_attention: Affine = field(default_factory=Affine)
    # b * f(g) for each f: per-sequence terms that depend on the GPU batch size alone
    per_batch_size: tuple[Callable[[int], float], ...] = ()

    def weights(self, amount: float, *devices: str) -> "Quantity":
        """Add ``amount`` times each listed weights fraction (per block)."""
        for d in devices:
            self.block[d] = self.block.get(d, 0.0) + amount
        return self

    def parts(self, b: int, g: int, efficiency: float, p: Fractions) -> dict[str, float]:
        """The value split into per-block, per-sequence, per-micro-batch and CPU-attention parts."""
        return {
            "block": self.const + sum(c * p[("weights", d)] for d, c in self.block.items()),
            "sequence": b * self.sequence.value(p),
            "microbatch": g * self.microbatch.value(p),
            "cpu_attention": b * efficiency * self.cpu_attention.value(p),
            "batch_size": b * sum(f(g) for f in self.per_batch_size),
        }

    def value(self, b: int, g: int, efficiency: float, p: Fractions) -> float:
        return sum(self.parts(b, g, efficiency, p).values())

    def plus(self, other: "Quantity", scale: float = 1.0) -> "Quantity":
        """``self + scale * other``."""
        scaled = other.per_batch_size if scale == 1.0 else tuple(
            (lambda g, f=f: scale * f(g)) for f in other.per_batch_size)
        out = Quantity(const=self.const + scale * other.const, block=dict(self.block),
                       per_batch_size=self.per_batch_size + scaled)
        for d, c in other.block.items():
            out.block[d] = out.block.get(d, 0.0) + scale * c
        for part in _PARTS:
            setattr(out, part, getattr(self, part).plus(getattr(other, part), scale))
        return out

    def scaled(self, scale: float) -> "Quantity":
        return Quantity().plus(self, scale)


@dataclass
class MemoryTerms:
    """Memory of one device in one phase: home bytes plus the working buffers of the layer in flight."""

    home: Quantity = field(default_factory=Quantity)
    working: dict[str, Quantity] = field(default_factory=dict)  # layer group -> buffers while it runs

    def cases(self) -> list[tuple[str, Quantity]]:
        """``home + working[group]`` for each group (the peak is the largest)."""
        if not self.working:
            return [("", self.home)]
        return [(name, self.home.plus(w)) for name, w in self.working.items()]


@dataclass
class LayerGroup:
    """``count`` identical layers and the per-layer time of each phase and component (seconds)."""

    name: str
    count: int
    time: dict[tuple[str, str], Quantity]


@dataclass(frozen=True)
class ExpertGroup:
    """The routed experts of one layer group of MoE layers (one group per layer when split).

    ``layer_weights_gib`` is one layer's weights (dense part + every expert): the amount
    that the group's per-layer ``block`` coefficients refer to (``model.experts`` scales
    them by ``W_e / layer_weights_gib`` to get one expert's share).
    """

    name: str                                 # the layer group (LayerGroup.name)
    layers: tuple[int, ...]                   # transformer layer indices (0-based)
    routing: tuple[float, ...]                # q_e: per-token probability that the router picks e
    expert_weights_gib: tuple[float, ...]     # W_e of one layer
    layer_weights_gib: float


@dataclass
class AttentionDelta:
    """What attending the off-GPU KV cache on the GPU adds to the CPU-attention accounting.

    ``time[group][(phase, component)]`` and ``memory[(device, phase)].home`` /
    ``.working[group]`` are quantities in the shape above; the GPU-attention accounting is
    ``base + delta`` term by term (:func:`model.attention.apply_attention`), so a MILP can
    write ``base + a * delta`` with a binary ``a``. A group absent from a map adds nothing.
    """

    time: dict[str, dict[tuple[str, str], Quantity]] = field(default_factory=dict)
    memory: dict[tuple[str, str | None], MemoryTerms] = field(default_factory=dict)


@dataclass
class Accounting:
    """Everything the optimization model needs, as plain numbers (GiB, seconds).

    ``groups`` hold per-layer times; ``memory[(device, phase)]`` home and working
    memory (phase ``None`` for the disk). ``efficiency(g)`` multiplies the CPU
    attention terms. ``expert_weights_gib`` and ``routing_probability`` describe
    the routed experts of one MoE layer (a dense model has one "expert", its MLP),
    and ``dense_weights_gib`` the rest of that layer.
    """

    mode: str
    gen_len: int
    groups: tuple[LayerGroup, ...]
    memory: dict[tuple[str, str | None], MemoryTerms]
    weights_gib: float                       # every weight byte the placement must hold
    dense_weights_gib: float
    expert_weights_gib: tuple[float, ...]
    routing_probability: tuple[float, ...]
    efficiency: Callable[[int], float]
    allowed: dict[tuple[str, str], bool]
    gpu_resident_gib: float = 0.0            # kept on the GPU outside the placement (embeddings, head)
    notes: tuple[str, ...] = ()
    # --- what expert-aware policies need (model.experts) ---------------------------------
    prompt_len: int = 1
    expert_groups: tuple[ExpertGroup, ...] = ()
    expert_flops_per_token: float = 0.0      # FLOPs to run one routed expert for one token (2 per weight)
    expert_gpu_flops_per_token: float = 0.0  # what the GPU compute terms count for one expert and token
    expert_gpu_flops: float = 1.0            # FLOP/s at which the GPU runs them (decode)
    experts_every_token: bool = False        # the accounting runs every expert for every token (flexllmgen)
    hidden_gib_per_token: float = 0.0        # one token's hidden state (fp16), sent to a CPU expert and back
    # --- attention placement (model.attention) ----------------------------------------------
    attention: str = "cpu"                   # where the off-GPU KV cache is attended in decode: cpu | gpu
    gpu_attention_delta: AttentionDelta | None = None   # gpu = this accounting (cpu) + the delta

    @property
    def num_layers(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def main_group(self) -> LayerGroup:
        """The group with the most layers (its per-layer times are the ones shown first)."""
        return max(self.groups, key=lambda g: g.count)

    @property
    def layer_weights_gib(self) -> float:
        return self.dense_weights_gib + sum(self.expert_weights_gib)

    @property
    def total_weights_gib(self) -> float:
        return self.weights_gib

    def time_quantities(self):
        return [q for grp in self.groups for q in grp.time.values()]

    def memory_quantities(self):
        return [q for mt in self.memory.values() for _name, q in mt.cases()]

    def efficiency_varies(self, g_lo: int, g_hi: int) -> bool:
        """Whether the CPU-attention terms exist and ``efficiency`` changes over ``g_lo..g_hi``."""
        if all(q.cpu_attention.is_zero() for q in self.time_quantities()):
            return False
        first = self.efficiency(g_lo)
        return any(self.efficiency(g) != first for g in range(g_lo, g_hi + 1))

    def batch_size_functions(self) -> list[Callable[[int], float]]:
        """Every per-batch-size function of the time quantities (memory has none)."""
        return [f for q in self.time_quantities() for f in q.per_batch_size]

    def depends_on_batch_size(self, g_lo: int, g_hi: int) -> bool:
        """Whether some term changes with g over ``g_lo..g_hi`` (beyond g and b themselves)."""
        if self.efficiency_varies(g_lo, g_hi):
            return True
        return any(f(g) != f(g_lo) for f in self.batch_size_functions() for g in range(g_lo, g_hi + 1))

    def flat_from(self, g_lo: int, g_hi: int) -> int:
        """The smallest g0 >= g_lo from which every g-dependent term is constant up to g_hi."""
        funcs = self.batch_size_functions() + [self.efficiency]
        g0 = g_hi
        while g0 > g_lo and all(f(g0 - 1) == f(g_hi) for f in funcs):
            g0 -= 1
        return g0


@dataclass
class GroupTimes:
    name: str
    count: int
    layer_time_s: dict[str, dict[str, float]]   # phase -> component -> seconds per layer
    prefill_layer_s: float
    decode_layer_s: float
    bottleneck: dict[str, str]


@dataclass
class Evaluation:
    """A fixed policy's predicted times (seconds) and peaks (GiB)."""

    groups: list[GroupTimes]
    prefill_total_s: float
    decode_total_s: float
    total_s: float
    throughput_tokens_per_s: float
    peak_memory_gib: dict[tuple[str, str | None], float]
    home_memory_gib: dict[tuple[str, str | None], float]

    @property
    def main(self) -> GroupTimes:
        return max(self.groups, key=lambda g: g.count)

    @property
    def layer_time_s(self) -> dict[str, dict[str, float]]:
        return self.main.layer_time_s

    @property
    def prefill_layer_s(self) -> float:
        return self.main.prefill_layer_s

    @property
    def decode_layer_s(self) -> float:
        return self.main.decode_layer_s

    @property
    def bottleneck(self) -> dict[str, str]:
        return self.main.bottleneck


def prefill_layer_time(t: Mapping[str, float]) -> float:
    """T_prefill = max(ctog + dtoc, gtoc + ctod, comp)   (DESIGN.md section 1)."""
    return max(t["ctog"] + t["dtoc"], t["gtoc"] + t["ctod"], t["comp"])


def decode_layer_time(t: Mapping[str, float]) -> float:
    """T_decode = ctog + max(gtoc, dtoc, ctod, comp)   (DESIGN.md section 1)."""
    return t["ctog"] + max(t["gtoc"], t["dtoc"], t["ctod"], t["comp"])


PREFILL_GROUPS = {"ctog+dtoc": ("ctog", "dtoc"), "gtoc+ctod": ("gtoc", "ctod"), "comp": ("comp",)}
DECODE_OVERLAPPED = ("gtoc", "dtoc", "ctod", "comp")


def _bottleneck(phase: str, t: Mapping[str, float]) -> str:
    if phase == "prefill":
        return max(PREFILL_GROUPS, key=lambda k: sum(t[c] for c in PREFILL_GROUPS[k]))
    return max(DECODE_OVERLAPPED, key=lambda c: t[c])


def evaluate(acc: Accounting, g: int, N: int, p: Fractions) -> Evaluation:
    """Times, throughput and peaks of the policy ``(g, N, p)``, straight from the formulas."""
    b = g * N
    eff = acc.efficiency(g)
    groups = []
    for grp in acc.groups:
        layer = {ph: {c: grp.time[(ph, c)].value(b, g, eff, p) for c in COMPONENTS} for ph in PHASES}
        groups.append(GroupTimes(grp.name, grp.count, layer, prefill_layer_time(layer["prefill"]),
                                 decode_layer_time(layer["decode"]),
                                 {ph: _bottleneck(ph, layer[ph]) for ph in PHASES}))
    n = acc.gen_len
    pre_total = sum(gt.count * gt.prefill_layer_s for gt in groups)
    dec_total = (n - 1) * sum(gt.count * gt.decode_layer_s for gt in groups)
    total = pre_total + dec_total
    peaks = {key: max(q.value(b, g, eff, p) for _name, q in mt.cases()) for key, mt in acc.memory.items()}
    homes = {key: mt.home.value(b, g, eff, p) for key, mt in acc.memory.items()}
    return Evaluation(groups=groups, prefill_total_s=pre_total, decode_total_s=dec_total, total_s=total,
                      throughput_tokens_per_s=n * b / total, peak_memory_gib=peaks, home_memory_gib=homes)


def fractions_from_percent(percent) -> dict[tuple[str, str], float]:
    """FlexLLMGen's six percents (wg wc cg cc hg hc) as fractions, the disk taking the rest."""
    out = {}
    for i, kind in enumerate(TENSOR_KINDS):
        on_gpu, on_cpu = percent[2 * i] / 100.0, percent[2 * i + 1] / 100.0
        out[(kind, "gpu")] = on_gpu
        out[(kind, "cpu")] = on_cpu
        out[(kind, "disk")] = max(0.0, 1.0 - on_gpu - on_cpu)
    return out
