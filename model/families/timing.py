"""Timing: transfers overlap with compute, per layer (DESIGN.md section 1), per sequence.

    T_prefill = max(ctog + dtoc, gtoc + ctod, comp)
    T_decode  = ctog + max(gtoc, dtoc, ctod, comp)

Each max is an epigraph variable bounded below by every term.
"""

from __future__ import annotations

import pyomo.environ as pyo

from ..terms import DECODE_OVERLAPPED, PREFILL_GROUPS


def add(m, data) -> None:
    m.timing = blk = pyo.Block(doc="Per-layer prefill and decode time of each layer group, per sequence")
    t = m.cost.layer_time_per_seq_us
    blk.PREFILL_CHAINS = pyo.Set(initialize=list(PREFILL_GROUPS), ordered=True,
                                 doc="Serial chains that overlap in prefill")
    blk.DECODE_OVERLAPPED = pyo.Set(initialize=DECODE_OVERLAPPED, within=m.COMPONENTS, ordered=True,
                                    doc="Decode components that overlap after CPU->GPU")
    blk.prefill_layer_us = pyo.Var(m.LAYER_GROUPS, within=pyo.NonNegativeReals,
                                  doc="Prefill microseconds per layer of the group, divided by b")
    blk.decode_overlap_us = pyo.Var(m.LAYER_GROUPS, within=pyo.NonNegativeReals,
                                   doc="Overlapped part of a decode step per layer of the group, divided by b")

    @blk.Constraint(m.LAYER_GROUPS, blk.PREFILL_CHAINS, doc="Prefill layer time covers every serial chain")
    def prefill_layer_covers_chain(blk, grp, chain):
        """T_prefill[grp] >= sum of the chain's components"""
        return blk.prefill_layer_us[grp] >= sum(t[grp, "prefill", c] for c in PREFILL_GROUPS[chain])

    @blk.Constraint(m.LAYER_GROUPS, blk.DECODE_OVERLAPPED, doc="Decode overlap covers every overlapped component")
    def decode_overlap_covers_component(blk, grp, c):
        """max(gtoc, dtoc, ctod, comp) >= component"""
        return blk.decode_overlap_us[grp] >= t[grp, "decode", c]

    @blk.Expression(m.LAYER_GROUPS, doc="Decode step microseconds per layer of the group, divided by b")
    def decode_layer_us(blk, grp):
        return t[grp, "decode", "ctog"] + blk.decode_overlap_us[grp]
