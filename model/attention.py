"""Where decode attends the KV cache held off the GPU: ``policy.attention: cpu | gpu | auto``.

FlexGen's MoE fork has two modes (docs/fidelity_notes.md (a), (b)):

* ``cpu`` (``--cpu-cache-compute``): the CPU- and disk-held cache is attended on the CPU, where
  it lives; only GPU-held cache is attended on the GPU. This is the accountings' base model.
* ``gpu`` (FlexGen's default): in every decode step each layer copies its off-GPU K/V to the
  GPU and attends there. Prefill attention is on the GPU in both modes.

Each accounting stores what ``gpu`` adds as :class:`~model.terms.AttentionDelta`
(``Accounting.gpu_attention_delta``): per layer group a time delta per (phase, component),
per (device, phase) a memory delta, all in the :class:`~model.terms.Quantity` shape. So
``apply_attention(acc, "gpu")`` is ``acc + delta`` term by term, and a MILP can write
``base + a * delta`` with one binary ``a``.

``auto`` (the default) lets the MILP decide with one binary (:mod:`model.families.attention`);
a fully fixed policy with ``auto`` is evaluated in each mode by :func:`best_of_modes`, which
returns the faster result (what the optimizer would choose at that policy).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .errors import Infeasible
from .terms import Accounting, AttentionDelta, LayerGroup, MemoryTerms, Quantity

MODES = ("cpu", "gpu")              # what an accounting applies
POLICY_MODES = MODES + ("auto",)    # what a scenario may ask for
MODE_NAMES = {"cpu": "CPU (--cpu-cache-compute)", "gpu": "GPU (off-GPU KV cache copied to the GPU each step)"}


def delta_for(table: dict, group: str):
    """The delta entry of ``group``; a group split per layer (``name.7``) uses its parent's."""
    if group in table:
        return table[group]
    parent = group.rsplit(".", 1)[0]
    return table.get(parent) if parent != group else None


def time_delta(acc: Accounting, group: str) -> dict[tuple[str, str], Quantity]:
    """What ``gpu`` adds to layer group ``group``'s time quantities, by (phase, component) (may be empty)."""
    delta = acc.gpu_attention_delta
    return (delta_for(delta.time, group) or {}) if delta is not None else {}


def memory_delta(acc: Accounting, key: tuple, group: str) -> Quantity | None:
    """What ``gpu`` adds to memory ``key`` = (device, phase) while ``group`` runs (None: nothing):
    the delta of the peak case ``home + working[group]`` (a MILP family: ``case + a * this``)."""
    delta = acc.gpu_attention_delta
    dm = delta.memory.get(key) if delta is not None else None
    if dm is None:
        return None
    extra = delta_for(dm.working, group)
    return dm.home if extra is None else dm.home.plus(extra)


def apply_attention(acc: Accounting, mode: str) -> Accounting:
    """``acc`` (the CPU-attention accounting) in attention mode ``mode``: a new Accounting.

    ``cpu`` returns ``acc`` itself marked ``cpu``; ``gpu`` adds ``acc.gpu_attention_delta``
    to every time and memory quantity it names. ``acc`` is not changed.
    """
    if mode not in MODES:
        raise ValueError(f"attention mode {mode!r}: expected one of {MODES}")
    if acc.attention != "cpu":
        raise ValueError(f"apply_attention needs the CPU-attention (base) accounting, got {acc.attention!r}")
    if mode == "cpu":
        return acc
    delta: AttentionDelta | None = acc.gpu_attention_delta
    if delta is None:
        raise ValueError(f"the {acc.mode} accounting has no GPU-attention terms")
    groups = []
    for lg in acc.groups:
        dt = delta_for(delta.time, lg.name) or {}
        groups.append(LayerGroup(lg.name, lg.count,
                                 {key: (q.plus(dt[key]) if key in dt else q) for key, q in lg.time.items()}))
    memory = {}
    for key, mt in acc.memory.items():
        dm = delta.memory.get(key)
        if dm is None:
            memory[key] = mt
            continue
        working = {}
        for name, q in mt.working.items():
            extra = delta_for(dm.working, name)
            working[name] = q.plus(extra) if extra is not None else q
        memory[key] = MemoryTerms(home=mt.home.plus(dm.home), working=working)
    return replace(acc, groups=tuple(groups), memory=memory, attention="gpu")


def with_mode(sc, mode: str):
    """``sc`` with ``policy.attention`` set to ``mode`` (no other change)."""
    return replace(sc, policy=replace(sc.policy, attention=mode))


def _speed(res) -> float:
    """Throughput of a result that fits, else -1 (so any fitting result wins)."""
    if res.status == "infeasible" or res.throughput_tokens_per_s is None:
        return -1.0
    return res.throughput_tokens_per_s


def best_of_modes(run: Callable, sc, *args, **kwargs):
    """``run(sc_mode, ...)`` for ``cpu`` and ``gpu``; the faster result (ties: ``gpu``).

    A tie means no cache is off the GPU, so nothing would run on the CPU: ``gpu`` (FlexGen's
    default, no ``--cpu-cache-compute``) is reported. When neither fits, an evaluation returns
    the ``cpu`` result (status ``infeasible``), and an optimization raises :class:`Infeasible`
    with both modes' reasons (a reason of both once). The returned result records
    both modes' throughputs in ``attention_throughputs``.
    """
    results, failures = {}, {}
    for mode in MODES:
        try:
            results[mode] = run(with_mode(sc, mode), *args, **kwargs)
        except Infeasible as exc:
            failures[mode] = exc
    if not results:
        cpu, gpu = failures["cpu"].reasons, failures["gpu"].reasons
        # a reason of both modes (the weights fit nowhere) once; the others name their mode
        raise Infeasible([r for r in cpu if r in gpu] + [f"cpu attention: {r}" for r in cpu if r not in gpu]
                         + [f"gpu attention: {r}" for r in gpu if r not in cpu])
    # the faster; a tie (no cache off the GPU) -> gpu; nothing fits -> cpu (the base model's reasons)
    best = max(results.values(), key=lambda r: (_speed(r), (r.accounting.attention == "gpu") == (_speed(r) >= 0)))
    best.attention_requested = "auto"
    best.attention_throughputs = {mode: (_speed(results[mode]) if mode in results and _speed(results[mode]) >= 0
                                         else None) for mode in MODES}
    return best
