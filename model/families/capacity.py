"""Capacity: home + working memory within alpha * capacity, per device and phase.

Divided by the block size b, ``mem(b, g, p) <= alpha_d * C_d`` reads
``mem / b <= alpha_d * C_d * u`` with ``u = 1/b`` (in MiB inside the model). Every row is a
limit (:func:`model.limits.limit`) relaxed by ``hardware.memory_gib.<device>``.
"""

from __future__ import annotations

import pyomo.environ as pyo

from ..limits import completion, limit, registry
from .cost import MIB_PER_GIB

_LABEL = {"gpu": "GPU", "cpu": "CPU", "disk": "disk"}


def add(m, data) -> None:
    m.capacity = blk = pyo.Block(doc="Memory capacity per device and phase")
    blk.capacity_gib = pyo.Param(m.DEVICES, initialize=data.capacity_gib, doc="Capacity C_d in GiB")
    blk.alpha = pyo.Param(m.DEVICES, initialize=data.alpha, doc="Usable share alpha_d of the capacity")
    u, cost = m.batching.per_block, m.cost
    for dev, lab in (("gpu", "GPU"), ("cpu", "CPU")):
        working = getattr(cost, f"{dev}_working_per_seq_mib")
        home = getattr(cost, f"{dev}_home_per_seq_mib")
        peak = pyo.Var(m.PHASES, within=pyo.NonNegativeReals,
                       doc=f"{lab} working buffers of the largest layer in flight, divided by b, MiB")
        blk.add_component(f"{dev}_working_peak_per_seq_mib", peak)
        blk.add_component(f"{dev}_working_peak_covers_group", pyo.Constraint(
            m.PHASES, m.LAYER_GROUPS, rule=lambda b, ph, grp, peak=peak, working=working:
            peak[ph] >= working[ph, grp],
            doc=f"{lab} working peak >= the buffers of every layer group (one layer runs at a time)"))
        rows = pyo.Constraint(
            m.PHASES, rule=lambda b, ph, dev=dev, home=home, peak=peak:
            home[ph] + peak[ph] <= MIB_PER_GIB * b.alpha[dev] * b.capacity_gib[dev] * u,
            doc=f"{lab} home + working memory within alpha * capacity: (home + work) / b <= alpha C u")
        blk.add_component(f"{dev}_memory_within_capacity", rows)
        for ph in m.PHASES:
            _memory_limit(m, data, dev, ph, rows[ph], home[ph], lambda m, working=working, ph=ph: max(
                pyo.value(working[ph, grp]) for grp in m.LAYER_GROUPS))

    @blk.Constraint(doc="Disk memory within alpha_disk * C_disk")
    def disk_memory_within_capacity(blk):
        """disk_mem / b <= alpha_disk C_disk u"""
        return cost.disk_memory_per_seq_mib <= MIB_PER_GIB * blk.alpha["disk"] * blk.capacity_gib["disk"] * u

    _memory_limit(m, data, "disk", None, blk.disk_memory_within_capacity, cost.disk_memory_per_seq_mib,
                  lambda m: 0.0)
    completion(m, _fill_peaks, blk)


def _gib(m, per_seq_mib) -> float:
    """Per-sequence MiB at the current point -> GiB for the whole block."""
    return per_seq_mib / pyo.value(m.batching.per_block) / MIB_PER_GIB


def _memory_limit(m, data, dev, phase, row, home, working_peak) -> None:
    where = f"{_LABEL[dev]} memory" + (f" ({phase})" if phase else "")
    cap, alpha = data.capacity_gib[dev], data.alpha[dev]

    def needed(m):
        return _gib(m, pyo.value(home) + working_peak(m))

    def detail(m):
        parts = _parts(m, dev, phase)
        return (f"weights {parts['weights']:.4f}, KV cache + activations {parts['sequence']:.4f}, "
                f"working buffers {_gib(m, working_peak(m)):.4f}")

    limit(m, family="capacity", name=f"{dev}_memory[{phase or 'all'}]", label=where, group=f"{_LABEL[dev]} memory",
          field=f"hardware.memory_gib.{dev}", unit="GiB", constraint=row, needed=needed,
          allowed=lambda m: alpha * cap, detail=detail,
          allowed_text=lambda m: f"usable {alpha:g} x {cap:g} = {alpha * cap:.4f} GiB")


def _parts(m, dev, phase) -> dict[str, float]:
    """Home memory split into resident weights and the rest (KV cache, activations), GiB."""
    data = registry(m)["data"]
    acc = data.accounting
    mt = acc.memory[dev, phase]
    b = 1.0 / pyo.value(m.batching.per_block)
    w = {d: pyo.value(m.placement.weights_per_seq[d]) * b for d in m.DEVICES}
    weights = mt.home.const + sum(c * w[d] for d, c in mt.home.block.items())
    total = _gib(m, pyo.value(getattr(m.cost, f"{dev}_home_per_seq_mib")[phase] if dev != "disk"
                              else m.cost.disk_memory_per_seq_mib))
    return {"weights": weights, "sequence": total - weights}


def _fill_peaks(m) -> None:
    """At a fixed policy each working peak is the largest group's buffers."""
    for dev in ("gpu", "cpu"):
        peak = getattr(m.capacity, f"{dev}_working_peak_per_seq_mib")
        working = getattr(m.cost, f"{dev}_working_per_seq_mib")
        for ph in m.PHASES:
            peak[ph].set_value(max(pyo.value(working[ph, grp]) for grp in m.LAYER_GROUPS), skip_validation=True)
