"""Attention: where decode attends the KV cache held off the GPU, as one binary decision
(``policy.attention: auto``; docs/model.md section 5.9.3).

The accounting is the CPU-attention model (FlexGen's ``--cpu-cache-compute``) and carries
what GPU attention adds, ``delta`` (:class:`model.terms.AttentionDelta`: the off-GPU cache
copied to the GPU every decode step and attended there, the GPU buffer it needs, the CPU
attention it removes; :mod:`model.attention`). With a binary ``a`` (1: attend on the GPU)
every ledger entry the delta names gets

    w = a * L,   L = delta / b   (linear in the model's variables, us or MiB per sequence)

linearized by the shared McCormick bounds on the aggregate (``L`` in ``[L_lo, L_hi]`` from the
variables' bounds):

    w <= L_hi a,   w >= L_lo a,   w <= L - L_lo (1 - a),   w >= L - L_hi (1 - a)

exact at ``a`` in {0, 1} (``a = 0``: ``w = 0``; ``a = 1``: ``w = L``). With ``policy.attention``
``cpu`` or ``gpu``, or once the mode is decided (the fixed-(g, N) re-solve), the accounting
already is that mode's and this family adds nothing.
"""

from __future__ import annotations

import pyomo.environ as pyo
from pyomo.contrib.fbbt.fbbt import compute_bounds_on_expr

from ..attention import delta_for
from .cost import MIB_PER_GIB, US_PER_S, contribute, per_sequence


def active(data) -> bool:
    """Whether the attention mode is a decision of this model (auto, undecided, a delta to decide on)."""
    acc = data.accounting
    return (data.setting("policy.attention") == "auto" and data.attention_mode is None
            and acc.attention == "cpu" and acc.gpu_attention_delta is not None)


def add(m, data) -> None:
    m.attention = blk = pyo.Block(doc="Where decode attends the off-GPU KV cache: a binary (policy.attention: auto)")
    if not active(data):
        return
    delta = data.accounting.gpu_attention_delta
    blk.attend_on_gpu = pyo.Var(domain=pyo.Binary,
                                doc="a = 1: the off-GPU KV cache is copied to the GPU and attended there each decode step")
    terms = {}   # ledger key -> expression L (ledger units)
    for grp in m.LAYER_GROUPS:
        for (ph, c), q in (delta_for(delta.time, grp) or {}).items():
            terms[("time", grp, ph, c)] = US_PER_S * per_sequence(m, q)
    for (dev, ph), mt in delta.memory.items():
        key = ("disk",) if dev == "disk" else ("home", dev, ph)
        if mt.home.block or not mt.home.sequence.is_zero() or not mt.home.microbatch.is_zero() or mt.home.const:
            terms[key] = MIB_PER_GIB * per_sequence(m, mt.home)
        for grp in m.LAYER_GROUPS:
            w = delta_for(mt.working, grp)
            if w is not None:
                terms[("working", dev, ph, grp)] = MIB_PER_GIB * per_sequence(m, w)
    keys = sorted(terms, key=str)
    blk.TERMS = pyo.Set(initialize=range(len(keys)), ordered=True,
                        doc="Ledger entries GPU attention changes (their keys: term_key)")
    blk.term_key = dict(enumerate(keys))
    blk.gpu_delta = pyo.Expression(blk.TERMS, rule=lambda b, i: terms[keys[i]],
                                   doc="L: what GPU attention adds to a ledger entry (us or MiB per sequence)")
    bounds = {}
    for i in blk.TERMS:
        lo, hi = compute_bounds_on_expr(blk.gpu_delta[i].expr)
        if lo is None or hi is None:
            raise ValueError(f"attention: the delta of {keys[i]} is unbounded (a variable without bounds)")
        bounds[i] = (min(lo, 0.0), max(hi, 0.0))
    blk.term_change = pyo.Var(blk.TERMS, bounds=lambda b, i: bounds[i],
                              doc="w = a * L: the change GPU attention makes to a ledger entry, if chosen")
    a = blk.attend_on_gpu

    @blk.Constraint(blk.TERMS, doc="w <= L_hi a")
    def change_below_when_chosen(blk, i):
        return blk.term_change[i] <= bounds[i][1] * a

    @blk.Constraint(blk.TERMS, doc="w >= L_lo a")
    def change_above_when_chosen(blk, i):
        return blk.term_change[i] >= bounds[i][0] * a

    @blk.Constraint(blk.TERMS, doc="w <= L - L_lo (1 - a)")
    def change_below_delta(blk, i):
        return blk.term_change[i] <= blk.gpu_delta[i] - bounds[i][0] * (1 - a)

    @blk.Constraint(blk.TERMS, doc="w >= L - L_hi (1 - a)")
    def change_above_delta(blk, i):
        return blk.term_change[i] >= blk.gpu_delta[i] - bounds[i][1] * (1 - a)

    for i, key in enumerate(keys):
        contribute(m, key, blk.term_change[i])


def decided(m) -> str | None:
    """The mode a solved model chose (None when the mode was not a decision)."""
    blk = getattr(m, "attention", None)
    if blk is None or not hasattr(blk, "attend_on_gpu"):
        return None
    return "gpu" if (blk.attend_on_gpu.value or 0.0) > 0.5 else "cpu"
