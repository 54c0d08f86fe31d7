"""Scenario files: YAML validated once, at the edge, into frozen dataclasses.

A scenario has six sections (see README "Scenario format"):

    model     architecture numbers and the accounting mode
    workload  prompt and generation length
    hardware  capacities (GiB), alphas, link bandwidths (GiB/s), FLOP rates (TFLOP/s)
    policy    optional: any of gpu_batch_size, num_gpu_batches, percent to fix
    search    optional caps on the batch-size search (default: derived from memory)
    solver    solver name and options

Everything downstream receives plain, checked data. Units are in the names:
GiB = 2**30 bytes, TFLOP/s = 1e12 FLOP/s.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import InputError
from .inputs import SCENARIO_MAX_BYTES, load_yaml
from .schema import build, rule

DEVICE_NAMES = ("gpu", "cpu", "disk")

# Sanity ranges: far beyond any real machine or model, but small enough that the
# model's coefficients stay representable (a 1e300 GiB memory is a typo, not a plan).
MEMORY_MAX_GIB = 1e5            # 100 TiB per device
MEMORY_MIN_GIB = 1 / 1024       # 1 MiB: a capacity is 0 (absent) or at least this
BANDWIDTH_RANGE = (1e-2, 1e4)   # GiB/s: 10 MiB/s (slower than any PCIe or NVMe link) .. 10 TiB/s
TFLOPS_RANGE = (1e-3, 1e5)      # TFLOP/s: 1 GFLOP/s .. 100 PFLOP/s
LENGTH_MAX = 10**6              # tokens
ARCH_MAX = 10**7                # any other architecture number (widths, heads, vocabulary)
# Counts that the MILP's size grows with (every MoE layer and expert can become rows and columns).
# Measured with model.optimize.build_for on the shared 2-core development machine (noisy):
# 1024 MoE layers x 256 experts build in ~3 s, 1024 x 1024 in ~13 s; with pinned or CPU experts
# (a decision per layer and expert) 1024 x 8 in ~7 s, 128 x 64 in ~15 s. Real models sit far
# below: Mixtral 32 x 8, DeepSeek-V2-Lite 26 x 64, DeepSeek-V3 58 x 256, Qwen3-235B 94 x 128.
LAYERS_MAX = 1024               # transformer layers (hf_config's num_hidden_layers, n_layers too)
EXPERTS_MAX = 1024              # routed experts per MoE layer
MOE_CELLS_MAX = 262_144         # MoE layers x routed experts (1024 x 256: ~3 s to build)
DECISION_CELLS_MAX = 8_192      # the same with experts.pin_experts or cpu_experts (1024 x 8: ~7 s)


@dataclass(frozen=True)
class Compression:
    """Group-wise weight quantization (FlexLLMGen's --compress-weight)."""

    bits: int = field(default=4, metadata=rule(ge=1, le=16))
    group_size: int = field(default=64, metadata=rule(ge=1, le=ARCH_MAX))


@dataclass(frozen=True)
class ModelSpec:
    """Transformer architecture (Mixtral-8x7B by default) and how bytes/FLOPs are counted."""

    name: str = "Mixtral-8x7B"
    accounting: Literal["exact", "flexllmgen"] = "exact"
    hf_config: str | None = None   # a Hugging Face config.json; replaces the architecture numbers below
    num_layers: int = field(default=32, metadata=rule(ge=1, le=LAYERS_MAX, doc="transformer layers l"))
    hidden_size: int = field(default=4096, metadata=rule(ge=1, le=ARCH_MAX, doc="h1"))
    intermediate_size: int = field(default=14336, metadata=rule(ge=1, le=ARCH_MAX, doc="expert MLP width h2"))
    num_attention_heads: int = field(default=32, metadata=rule(ge=1, le=ARCH_MAX, doc="nh"))
    num_key_value_heads: int = field(default=8, metadata=rule(ge=1, le=ARCH_MAX, doc="nkv (GQA)"))
    head_dim: int = field(default=128, metadata=rule(ge=1, le=ARCH_MAX, doc="hd"))
    num_experts: int = field(default=8, metadata=rule(ge=1, le=EXPERTS_MAX, doc="E"))
    num_experts_per_token: int = field(default=2, metadata=rule(ge=1, le=EXPERTS_MAX, doc="top-k"))
    vocab_size: int = field(default=32000, metadata=rule(ge=1, le=ARCH_MAX))
    routing_probabilities: list[float] | None = field(
        default=None, metadata=rule(ge=0.0, le=1.0, doc="per-token probability of each expert; default uniform k/E")
    )
    compress_weights: Compression | None = None   # true = 4-bit, group 64 (FlexLLMGen's default)


@dataclass(frozen=True)
class Workload:
    prompt_len: int = field(default=512, metadata=rule(ge=1, le=LENGTH_MAX, doc="s, tokens"))
    gen_len: int = field(default=32, metadata=rule(ge=1, le=LENGTH_MAX, doc="n, generated tokens per sequence"))


@dataclass(frozen=True)
class PerDevice:
    gpu: float = field(metadata=rule(ge=0))
    cpu: float = field(metadata=rule(ge=0))
    disk: float = field(metadata=rule(ge=0))


@dataclass(frozen=True)
class Memory:
    """Capacities in GiB. The GPU must have some; CPU or disk may be 0 (absent)."""

    gpu: float = field(metadata=rule(gt=0, le=MEMORY_MAX_GIB))
    cpu: float = field(metadata=rule(ge=0, le=MEMORY_MAX_GIB))
    disk: float = field(metadata=rule(ge=0, le=MEMORY_MAX_GIB))


@dataclass(frozen=True)
class Alpha:
    """Fraction of each capacity a policy may use (the reference's alpha relaxation)."""

    gpu: float = field(default=0.8, metadata=rule(gt=0, le=10))
    cpu: float = field(default=0.9, metadata=rule(gt=0, le=10))
    disk: float = field(default=0.8, metadata=rule(gt=0, le=10))


@dataclass(frozen=True)
class Bandwidth:
    """Link rates in GiB/s (reference names in brackets)."""

    cpu_to_gpu: float = field(metadata=rule(ge=BANDWIDTH_RANGE[0], le=BANDWIDTH_RANGE[1], doc="[ctog_bdw]"))
    gpu_to_cpu_cache: float = field(metadata=rule(ge=BANDWIDTH_RANGE[0], le=BANDWIDTH_RANGE[1], doc="[gtoc_bdw_cache]"))
    gpu_to_cpu_hidden: float = field(metadata=rule(ge=BANDWIDTH_RANGE[0], le=BANDWIDTH_RANGE[1], doc="[gtoc_bdw_hidden]"))
    disk_to_cpu: float = field(metadata=rule(ge=BANDWIDTH_RANGE[0], le=BANDWIDTH_RANGE[1], doc="[dtoc_bdw]"))
    cpu_to_disk_cache_prefill: float = field(metadata=rule(ge=BANDWIDTH_RANGE[0], le=BANDWIDTH_RANGE[1], doc="[ctod_bdw_cache_p]"))
    cpu_to_disk_hidden_prefill: float = field(metadata=rule(ge=BANDWIDTH_RANGE[0], le=BANDWIDTH_RANGE[1], doc="[ctod_bdw_hidden_p]"))
    cpu_to_disk_decode: float = field(metadata=rule(ge=BANDWIDTH_RANGE[0], le=BANDWIDTH_RANGE[1], doc="[ctod_bdw_g]"))


@dataclass(frozen=True)
class Compute:
    """Effective FLOP rates in TFLOP/s (reference names in brackets)."""

    gpu_matmul_prefill: float = field(metadata=rule(ge=TFLOPS_RANGE[0], le=TFLOPS_RANGE[1], doc="[mm_flops_p]"))
    gpu_matmul_decode: float = field(metadata=rule(ge=TFLOPS_RANGE[0], le=TFLOPS_RANGE[1], doc="[mm_flops_g]"))
    gpu_bmm_prefill: float = field(metadata=rule(ge=TFLOPS_RANGE[0], le=TFLOPS_RANGE[1], doc="[bmm_flops_p]"))
    gpu_bmm_decode: float = field(metadata=rule(ge=TFLOPS_RANGE[0], le=TFLOPS_RANGE[1], doc="[bmm_flops_g]"))
    cpu: float = field(metadata=rule(ge=TFLOPS_RANGE[0], le=TFLOPS_RANGE[1], doc="[cpu_flops]"))
    # CPU-computed experts (experts.cpu_experts): a GEMV for the first token routed to an
    # expert (memory-bound: the expert's weights stream from CPU DRAM once), a small GEMM
    # rate for each further token. Optional; required only when CPU experts are enabled.
    cpu_gemv: float | None = field(default=None, metadata=rule(
        ge=TFLOPS_RANGE[0], le=TFLOPS_RANGE[1], doc="CPU FLOP rate of an expert for one token (GEMV)"))
    cpu_gemm: float | None = field(default=None, metadata=rule(
        ge=TFLOPS_RANGE[0], le=TFLOPS_RANGE[1], doc="CPU FLOP rate of an expert per extra token (small GEMM)"))


@dataclass(frozen=True)
class CpuEfficiency:
    """CPU attention efficiency max(0.1, 1 + c1*A*B - c2*A - c3*B), A = log2(64/g)+, B = log2(4096/h1)+."""

    c1: float = field(default=0.0168, metadata=rule(ge=-10, le=10))
    c2: float = field(default=0.0328, metadata=rule(ge=-10, le=10))
    c3: float = field(default=0.0621, metadata=rule(ge=-10, le=10))


@dataclass(frozen=True)
class MemoryBandwidth:
    """Memory bandwidth of each device's DRAM in GiB/s (exact accounting: decode attention is memory-bound)."""

    gpu: float = field(metadata=rule(ge=BANDWIDTH_RANGE[0], le=BANDWIDTH_RANGE[1]))
    cpu: float = field(metadata=rule(ge=BANDWIDTH_RANGE[0], le=BANDWIDTH_RANGE[1]))


@dataclass(frozen=True)
class Hardware:
    name: str = "unnamed"
    preset: str | None = None            # model/presets/hardware/<preset>.yaml, overridden by what follows
    source: str | None = None            # where the numbers come from (fitted / datasheet)
    host_link: str | None = None         # e.g. "PCIe 4.0 x16" (informational)
    memory_gib: Memory = field(default=None)  # type: ignore[assignment]
    alpha: Alpha = field(default_factory=Alpha)
    bandwidth_gib_per_s: Bandwidth = field(default=None)  # type: ignore[assignment]
    tflops: Compute = field(default=None)  # type: ignore[assignment]
    cpu_efficiency: CpuEfficiency = field(default_factory=CpuEfficiency)
    memory_bandwidth_gib_per_s: MemoryBandwidth | None = None


@dataclass(frozen=True)
class Experts:
    """Expert-aware policies (README "Expert-aware policies"). The defaults are the core model.

    Routing: uniform ``top_k / E`` per expert (or ``model.routing_probabilities`` in every
    layer) unless ``routing_probabilities`` (one row per MoE layer) or ``routing_trace``
    (a CSV or JSONL file of per-token choices, scenarios/traces/README.md) is given.
    """

    expert_traffic: Literal["all", "expected"] = "all"   # decode moves every expert, or the routed ones
    pin_experts: bool = False      # may keep chosen (layer, expert) weights resident on the GPU
    cpu_experts: bool = False      # may compute chosen (layer, expert) on the CPU in decode
    routing_probabilities: list[list[float]] | None = field(
        default=None, metadata=rule(ge=0.0, le=1.0, doc="per MoE layer, per expert: per-token probability"))
    routing_trace: str | None = None


@dataclass(frozen=True)
class Policy:
    """A partial or complete policy to fix; what is left out is optimized."""

    gpu_batch_size: int | None = field(default=None, metadata=rule(ge=1, le=10**9))
    num_gpu_batches: int | None = field(default=None, metadata=rule(ge=1, le=10**9))
    percent: list[float] | None = field(
        default=None, metadata=rule(ge=0, le=100, doc="wg wc cg cc hg hc, as FlexLLMGen's --percent")
    )
    # where decode attends the off-GPU KV cache (model.attention): cpu (FlexGen --cpu-cache-compute),
    # gpu (copied to the GPU each step, FlexGen's default) or auto (the faster of the two)
    attention: Literal["cpu", "gpu", "auto"] = "auto"


@dataclass(frozen=True)
class Search:
    """Optional caps on the integer search. Without them the bounds come from memory."""

    max_gpu_batch_size: int | None = field(default=None, metadata=rule(ge=1, le=10**9))
    max_num_gpu_batches: int | None = field(default=None, metadata=rule(ge=1, le=10**9))


@dataclass(frozen=True)
class SolverOptions:
    name: str = "highs"
    time_limit_s: float = field(default=300.0, metadata=rule(gt=0, le=1e7))
    mip_gap: float | None = field(default=None, metadata=rule(ge=0, lt=1))
    threads: int | None = field(default=None, metadata=rule(ge=1, le=4096))
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The solver's name as the adapters know it (``model.solvers.SOLVERS``): no case, no spaces."""
        return self.name.strip().lower()

    @property
    def gap(self) -> float:
        """``mip_gap``, or by default the solver's own (:data:`DEFAULT_MIP_GAP`)."""
        return self.mip_gap if self.mip_gap is not None else DEFAULT_MIP_GAP.get(self.key, 1e-4)


# The relative MIP gap when solver.mip_gap is not given. HiGHS: 1e-6, so that the answer is
# optimal to 1e-6 (never below a heuristic's by more) at a few percent more solve time (README
# "Solve speed"). The others keep 1e-4: CBC at 1e-6 returned policies 1e-4 below the optimum
# (t4_reference, dbrx) that its tolerances then "certified".
DEFAULT_MIP_GAP = {"highs": 1e-6}


# ---- sections extended by the constraint families' own keys (model.keys) ----------------------
def _extended(cls, section: str):
    """``cls`` with the fields that registered families declare for ``section`` (``KEYS``)."""
    from .families import FAMILIES

    keys = [k for fam in FAMILIES for k in getattr(fam, "KEYS", ()) if k.section == section]
    if not keys:
        return cls
    fields = [(k.name, k.type, field(default=k.default, metadata={**rule(**k.rule), "doc": k.doc, "key": k}))
              for k in keys]
    return dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,), frozen=True,
                                      namespace={"__doc__": cls.__doc__, "__module__": __name__})


ModelSpec = _extended(ModelSpec, "model")
Workload = _extended(Workload, "workload")
Hardware = _extended(Hardware, "hardware")
Policy = _extended(Policy, "policy")
Search = _extended(Search, "search")
Experts = _extended(Experts, "experts")
SolverOptions = _extended(SolverOptions, "solver")


@dataclass(frozen=True)
class Scenario:
    name: str = "scenario"
    model: ModelSpec = field(default_factory=ModelSpec)
    workload: Workload = field(default_factory=Workload)
    hardware: Hardware = field(default=None)  # type: ignore[assignment]
    policy: Policy = field(default_factory=Policy)
    search: Search = field(default_factory=Search)
    experts: Experts = field(default_factory=Experts)
    solver: SolverOptions = field(default_factory=SolverOptions)


def from_dict(raw: Any, base_dir: Path | None = None) -> Scenario:
    """Validate a parsed scenario mapping (the YAML document) into a :class:`Scenario`.

    ``base_dir`` is where relative paths in it (a preset file) are resolved: the scenario
    file's folder (default: the working directory).
    """
    if not isinstance(raw, dict):
        raise InputError("scenario", raw, "the file must hold a mapping with model/workload/hardware sections")
    raw = _expand_shorthands(raw, base_dir)
    hw = raw.get("hardware")
    if not isinstance(hw, dict):
        raise InputError("hardware", hw, "required section is missing or not a mapping")
    for section in ("memory_gib", "bandwidth_gib_per_s", "tflops"):
        if section not in hw:
            raise InputError(f"hardware.{section}", None, "required section is missing")
    scenario = build(Scenario, raw, "")
    _check_cross_fields(scenario)
    return scenario


ARCHITECTURE_FIELDS = ("num_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                       "num_key_value_heads", "head_dim", "num_experts", "num_experts_per_token", "vocab_size")
PRESET_DIR = Path(__file__).resolve().parent / "presets" / "hardware"


def hardware_presets() -> list[str]:
    """Names of the shipped hardware presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _expand_shorthands(raw: dict, base_dir: Path | None = None) -> dict:
    """Before validation: merge a hardware preset, expand ``compress_weights: true``, check hf_config use."""
    raw = _deep_copy(raw)
    model = raw.get("model")
    if isinstance(model, dict):
        cw = model.get("compress_weights")
        if cw is True:
            model["compress_weights"] = {}
        elif cw is False:
            model["compress_weights"] = None
        if model.get("hf_config") is not None:
            clash = [k for k in ARCHITECTURE_FIELDS if k in model]
            if clash:
                raise InputError(f"model.{clash[0]}", model[clash[0]],
                                 "not allowed together with model.hf_config (the config file gives it)")
    hw = raw.get("hardware")
    if isinstance(hw, dict) and hw.get("preset") is not None:
        raw["hardware"] = _with_preset(hw, base_dir)
    return raw


def is_preset_path(name: str) -> bool:
    """A preset given as a file path (``cal.yaml``, ``../host.yaml``) rather than a shipped name."""
    return name.endswith((".yaml", ".yml")) or "/" in name or os.sep in name


def resolve_preset(name: Any, base_dir: Path | None, field: str = "hardware.preset") -> Path:
    """The YAML file of a preset: a shipped name (``t4``) or a path, relative to ``base_dir``."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(field, name, "expected a preset name or a path to a preset YAML file")
    if is_preset_path(name):
        p = Path(name).expanduser()
        if not p.is_absolute():
            p = (base_dir or Path.cwd()) / p
        return p
    if name not in hardware_presets():
        raise InputError(field, name, f"unknown preset (known: {', '.join(hardware_presets())}; "
                                      "or give a path to a preset YAML file, e.g. cal.yaml)")
    return PRESET_DIR / f"{name}.yaml"


MAX_PRESET_CHAIN = 4   # a preset file may itself name a base preset, this many levels deep


def _with_preset(hw: dict, base_dir: Path | None, depth: int = 0, seen: tuple = ()) -> dict:
    """``hw`` merged over the preset it names (recursively: a preset file may name its own base)."""
    name = hw["preset"]
    field = "hardware.preset" if depth == 0 else f"{seen[-1]}: preset"
    path = resolve_preset(name, base_dir, field)
    if str(path.resolve()) in seen or depth >= MAX_PRESET_CHAIN:
        raise InputError(field, name, f"presets name each other in a cycle or more than {MAX_PRESET_CHAIN} deep")
    preset = load_raw(path, field=field)
    if not isinstance(preset, dict):
        raise InputError(field, str(path), "a preset file must hold a mapping of hardware keys")
    if preset.get("preset") is not None:
        preset = _with_preset(preset, path.resolve().parent, depth + 1, seen + (str(path.resolve()),))
    merged = _merge(preset, hw)
    # the source of record: the file's path (shipped presets keep their name)
    merged["preset"] = str(path) if is_preset_path(name) else name
    return merged


def _merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, recursively for mappings."""
    out = _deep_copy(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else _deep_copy(v)
    return out


def _check_cross_fields(sc: Scenario) -> None:
    for dev in DEVICE_NAMES:
        cap = getattr(sc.hardware.memory_gib, dev)
        if 0 < cap < MEMORY_MIN_GIB:
            # A 128-byte disk made HiGHS return a policy 5x slower than the optimum as "optimal":
            # its capacity coefficient sat 1e9 below the others in the same row.
            raise InputError(f"hardware.memory_gib.{dev}", cap,
                             "must be 0 (no such memory) or at least 1 MiB (0.0009765625 GiB)")
    m = sc.model
    if m.accounting == "exact" and sc.hardware.memory_bandwidth_gib_per_s is None:
        raise InputError("hardware.memory_bandwidth_gib_per_s", None,
                         "required by accounting: exact (decode attention reads the KV cache at this rate); "
                         "give {gpu, cpu} in GiB/s, use a hardware.preset, or set accounting: flexllmgen")
    if m.num_experts_per_token > m.num_experts:
        raise InputError("model.num_experts_per_token", m.num_experts_per_token,
                         f"must be <= model.num_experts ({m.num_experts})")
    if m.num_key_value_heads > m.num_attention_heads:
        raise InputError("model.num_key_value_heads", m.num_key_value_heads,
                         f"must be <= model.num_attention_heads ({m.num_attention_heads})")
    if m.routing_probabilities is not None:
        q = m.routing_probabilities
        if len(q) != m.num_experts:
            raise InputError("model.routing_probabilities", list(q),
                             f"needs one entry per expert ({m.num_experts})")
        if not math.isclose(sum(q), m.num_experts_per_token, rel_tol=1e-6, abs_tol=1e-9):
            raise InputError("model.routing_probabilities", list(q),
                             f"must sum to num_experts_per_token ({m.num_experts_per_token}), sums to {sum(q):g}")
    _check_experts(sc)
    pct = sc.policy.percent
    if pct is not None:
        if len(pct) != 6:
            raise InputError("policy.percent", list(pct), "needs six numbers: wg wc cg cc hg hc")
        for kind, (a, b) in zip(("weights", "cache", "activations"), (pct[0:2], pct[2:4], pct[4:6])):
            if a + b > 100 + 1e-9:
                raise InputError("policy.percent", list(pct),
                                 f"{kind} gpu + cpu = {a:g} + {b:g} exceeds 100")
        if not math.isclose(pct[4] + pct[5], 100, abs_tol=1e-9):
            raise InputError("policy.percent", list(pct),
                             f"activations are never on disk: hg + hc must be 100, got {pct[4]:g} + {pct[5]:g}")
    srch, pol = sc.search, sc.policy
    if pol.gpu_batch_size and srch.max_gpu_batch_size and pol.gpu_batch_size > srch.max_gpu_batch_size:
        raise InputError("policy.gpu_batch_size", pol.gpu_batch_size,
                         f"exceeds search.max_gpu_batch_size ({srch.max_gpu_batch_size})")
    if pol.num_gpu_batches and srch.max_num_gpu_batches and pol.num_gpu_batches > srch.max_num_gpu_batches:
        raise InputError("policy.num_gpu_batches", pol.num_gpu_batches,
                         f"exceeds search.max_num_gpu_batches ({srch.max_num_gpu_batches})")


def _check_experts(sc: Scenario) -> None:
    ex, m = sc.experts, sc.model
    if ex.routing_probabilities is not None and ex.routing_trace is not None:
        raise InputError("experts.routing_trace", ex.routing_trace,
                         "give either experts.routing_probabilities or experts.routing_trace, not both")
    if ex.routing_probabilities is not None and m.hf_config is None:
        rows = ex.routing_probabilities
        for i, row in enumerate(rows):
            if len(row) != m.num_experts:
                raise InputError(f"experts.routing_probabilities[{i}]", list(row),
                                 f"needs one entry per expert ({m.num_experts})")
            if not math.isclose(sum(row), m.num_experts_per_token, rel_tol=1e-6, abs_tol=1e-9):
                raise InputError(f"experts.routing_probabilities[{i}]", list(row),
                                 f"must sum to num_experts_per_token ({m.num_experts_per_token}), "
                                 f"sums to {sum(row):g}")
    fl = sc.hardware.tflops
    if ex.cpu_experts:
        for name in ("cpu_gemv", "cpu_gemm"):
            if getattr(fl, name) is None:
                raise InputError(f"hardware.tflops.{name}", None,
                                 "required by experts.cpu_experts: the CPU's FLOP rate for an expert "
                                 "(TFLOP/s; see the presets in model/presets/hardware)")


def load_raw(path: str | Path, field: str = "scenario") -> dict:
    """Read a YAML scenario (or preset) file into a mapping, not yet validated, through the input
    layer (:mod:`model.inputs`: regular file, size cap, UTF-8, bounded aliases, no duplicate keys)."""
    raw = load_yaml(path, field, SCENARIO_MAX_BYTES)
    if raw is None:
        raise InputError(field, str(path), "file is empty")
    return raw


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """Return a copy of ``raw`` with dotted-path ``overrides`` set (``hardware.memory_gib.gpu``: 24)."""
    out = _deep_copy(raw)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise InputError(".".join(parts[: parts.index(part) + 1]), child, "expected a mapping")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(x):
    if isinstance(x, dict):
        return {k: _deep_copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deep_copy(v) for v in x]
    return x


# Fields that hold file paths. In a scenario file a relative path is relative to the file's
# folder; given as an override (a flag, ``--set``) it is relative to the working directory.
PATH_FIELDS = ("model.hf_config", "experts.routing_trace", "hardware.preset")


def _resolve_paths(raw: dict, base_dir: Path) -> None:
    """Make the relative paths in ``raw`` (a file's mapping) absolute against ``base_dir``, in place."""
    for dotted in PATH_FIELDS:
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        value = node.get(leaf)
        if not isinstance(value, str) or not value.strip():
            continue
        if dotted == "hardware.preset" and not is_preset_path(value):
            continue   # a shipped preset's name
        p = Path(value).expanduser()
        if not p.is_absolute():
            node[leaf] = str(base_dir / p)


def load_scenario(path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Load and validate a YAML scenario, with optional dotted-path overrides.

    Relative paths in the file (``model.hf_config``, ``experts.routing_trace``, a
    ``hardware.preset`` file) are resolved against the file's folder; relative paths in
    ``overrides`` against the working directory.
    """
    raw = load_raw(path)
    if not isinstance(raw, dict):
        return from_dict(raw)   # names the value
    _resolve_paths(raw, Path(path).resolve().parent)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return from_dict(raw)


def field_value(scenario, path: str):
    """The value of a dotted scenario field (``workload.max_block_time_s``), or None when absent."""
    node = scenario
    for part in path.split("."):
        node = getattr(node, part, None)
    return node


def to_dict(scenario: Scenario) -> dict:
    """The scenario as a plain mapping (lists, not tuples) that :func:`from_dict` accepts."""

    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    out = plain(dataclasses.asdict(scenario))
    if out["model"].get("hf_config") is not None:  # the config file gives these; they are unused defaults
        for key in ARCHITECTURE_FIELDS:
            out["model"].pop(key, None)
    return out


def override(scenario: Scenario, overrides: dict[str, Any]) -> Scenario:
    """A new, re-validated scenario with dotted-path overrides: ``{"workload.gen_len": 8}``."""
    return from_dict(apply_overrides(to_dict(scenario), overrides))
