"""The cost model as data: every time and memory quantity in one linear shape.

Every quantity ``Q`` of the cost model (a per-layer time in seconds, or a peak
memory in GiB) is, for block size ``b = g*N``, GPU batch size ``g`` and placement
fractions ``p``,

    Q(b, g, p) = W * block(p_weights)                 # per block (weights)
               + b * sequence(p)                      # per sequence (KV cache, hidden states)
               + g * microbatch(p)                    # per micro-batch (working buffers)
               + b * eff(g) * cpu_attention(p)        # CPU attention, rate depends on g

where ``W`` is the weight size of one layer in GiB, ``block`` holds multipliers of
``W`` for each weights device, and the other three are affine in the cache and
activation fractions. The accounting modules produce these forms; the Pyomo
families turn them into constraints (divided by ``b``: see ``families/batching``),
and :func:`evaluate` computes them directly for a fixed policy. Keeping weights
out of the per-sequence terms and cache/activations out of the per-block term is
what makes the per-sequence MILP exact (DESIGN.md section 2).
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
        """Add ``amount`` times each listed fraction of ``kind`` (no devices: to the constant)."""
        if kind not in SEQ_KINDS:
            raise ValueError(f"per-sequence terms take cache/activations fractions, not {kind}")
        for d in devices:
            self.coef[(kind, d)] = self.coef.get((kind, d), 0.0) + amount
        return self

    def value(self, p: Fractions) -> float:
        return self.const + sum(c * p[key] for key, c in self.coef.items())

    def is_zero(self) -> bool:
        return self.const == 0.0 and all(c == 0.0 for c in self.coef.values())


@dataclass
class Quantity:
    """One cost-model quantity in the four-part shape documented in the module docstring."""

    block: dict[str, float] = field(default_factory=dict)  # weights device -> multiple of W
    sequence: Affine = field(default_factory=Affine)
    microbatch: Affine = field(default_factory=Affine)
    cpu_attention: Affine = field(default_factory=Affine)

    def weights(self, amount: float, *devices: str) -> "Quantity":
        for d in devices:
            self.block[d] = self.block.get(d, 0.0) + amount
        return self

    def parts(self, layer_weights: float, b: int, g: int, efficiency: float, p: Fractions) -> dict[str, float]:
        """The value split into its per-block, per-sequence, per-micro-batch and CPU-attention parts."""
        return {
            "block": layer_weights * sum(c * p[("weights", d)] for d, c in self.block.items()),
            "sequence": b * self.sequence.value(p),
            "microbatch": g * self.microbatch.value(p),
            "cpu_attention": b * efficiency * self.cpu_attention.value(p),
        }

    def value(self, layer_weights: float, b: int, g: int, efficiency: float, p: Fractions) -> float:
        return sum(self.parts(layer_weights, b, g, efficiency, p).values())


@dataclass
class Accounting:
    """Everything the optimization model needs, as plain numbers (GiB, seconds).

    ``time[(phase, component)]`` is seconds per layer; ``memory[(device, phase)]``
    is GiB (phase ``None`` for the disk). ``efficiency(g)`` multiplies the CPU
    attention terms. ``dense_weights_gib`` and ``expert_weights_gib[e]`` add up to
    ``W``, the weights of one layer.
    """

    mode: str
    num_layers: int
    gen_len: int
    dense_weights_gib: float
    expert_weights_gib: tuple[float, ...]
    routing_probability: tuple[float, ...]
    time: dict[tuple[str, str], Quantity]
    memory: dict[tuple[str, str | None], Quantity]
    efficiency: Callable[[int], float]
    allowed: dict[tuple[str, str], bool]
    notes: tuple[str, ...] = ()

    @property
    def layer_weights_gib(self) -> float:
        return self.dense_weights_gib + sum(self.expert_weights_gib)

    @property
    def total_weights_gib(self) -> float:
        return self.num_layers * self.layer_weights_gib

    def efficiency_varies(self, g_lo: int, g_hi: int) -> bool:
        """Whether the CPU-attention terms exist and ``efficiency`` changes over ``g_lo..g_hi``."""
        if all(q.cpu_attention.is_zero() for q in self.time.values()):
            return False
        first = self.efficiency(g_lo)
        return any(self.efficiency(g) != first for g in range(g_lo, g_hi + 1))


@dataclass
class Evaluation:
    """A fixed policy's predicted times (seconds) and peaks (GiB)."""

    layer_time_s: dict[str, dict[str, float]]  # phase -> component -> seconds per layer
    prefill_layer_s: float
    decode_layer_s: float
    prefill_total_s: float
    decode_total_s: float
    total_s: float
    throughput_tokens_per_s: float
    peak_memory_gib: dict[tuple[str, str | None], float]
    bottleneck: dict[str, str]


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
        name = max(PREFILL_GROUPS, key=lambda k: sum(t[c] for c in PREFILL_GROUPS[k]))
        return name
    return max(DECODE_OVERLAPPED, key=lambda c: t[c])


def evaluate(acc: Accounting, g: int, N: int, p: Fractions) -> Evaluation:
    """Times, throughput and peaks of the policy ``(g, N, p)``, straight from the formulas."""
    b = g * N
    eff = acc.efficiency(g)
    W = acc.layer_weights_gib
    layer = {ph: {c: acc.time[(ph, c)].value(W, b, g, eff, p) for c in COMPONENTS} for ph in PHASES}
    t_pre = prefill_layer_time(layer["prefill"])
    t_dec = decode_layer_time(layer["decode"])
    l, n = acc.num_layers, acc.gen_len
    pre_total = l * t_pre
    dec_total = (n - 1) * l * t_dec
    total = pre_total + dec_total
    peaks = {key: q.value(W, b, g, eff, p) for key, q in acc.memory.items()}
    return Evaluation(
        layer_time_s=layer,
        prefill_layer_s=t_pre,
        decode_layer_s=t_dec,
        prefill_total_s=pre_total,
        decode_total_s=dec_total,
        total_s=total,
        throughput_tokens_per_s=n * b / total,
        peak_memory_gib=peaks,
        bottleneck={ph: _bottleneck(ph, layer[ph]) for ph in PHASES},
    )


def fractions_from_percent(percent) -> dict[tuple[str, str], float]:
    """FlexLLMGen's six percents (wg wc cg cc hg hc) as fractions, the disk taking the rest."""
    out = {}
    for i, kind in enumerate(TENSOR_KINDS):
        on_gpu, on_cpu = percent[2 * i] / 100.0, percent[2 * i + 1] / 100.0
        out[(kind, "gpu")] = on_gpu
        out[(kind, "cpu")] = on_cpu
        out[(kind, "disk")] = max(0.0, 1.0 - on_gpu - on_cpu)
    return out
