"""Timing: transfers overlap with compute, per layer, per sequence (docs/model.md section 5.7).

    T_prefill = max(ctog + dtoc, gtoc + ctod, comp)
    T_decode  = ctog + max(gtoc, dtoc, ctod, comp)

Each max is an epigraph variable bounded below by every *chain* (a sum of ledger
components). The chains are data (:data:`PREFILL_CHAINS`, :data:`DECODE_OVERLAPPED`), and
every chain, this family's or another family's (:func:`bound_layer_time`), is recorded on the
block, so the evaluator, the report's formula, the bottleneck and "Limits" all read the same
list: a family that adds a chain (e.g. a shared PCIe link: ``ctog + gtoc``) is honoured
everywhere without further edits.
"""

from __future__ import annotations

import pyomo.environ as pyo

from ..limits import completion, label
from ..terms import COMPONENT_NAMES

# The overlap rule, as data: prefill layer time covers each serial chain; a decode step is
# ctog (serial) plus the largest of the overlapped components.
PREFILL_CHAINS = {"ctog+dtoc": ("ctog", "dtoc"), "gtoc+ctod": ("gtoc", "ctod"), "comp": ("comp",)}
DECODE_SERIAL = ("ctog",)
DECODE_OVERLAPPED = ("gtoc", "dtoc", "ctod", "comp")
EPIGRAPH = {"prefill": "prefill_layer_us", "decode": "decode_overlap_us"}


def chain_words(components) -> str:
    """``CPU->GPU transfer + disk->CPU transfer`` for ``("ctog", "dtoc")``."""
    return " + ".join(COMPONENT_NAMES.get(c, c) for c in components)


def add(m, data) -> None:
    m.timing = blk = pyo.Block(doc="Per-layer prefill and decode time of each layer group, per sequence")
    t = m.cost.layer_time_per_seq_us
    blk.prefill_layer_us = pyo.Var(m.LAYER_GROUPS, within=pyo.NonNegativeReals,
                                   doc="Prefill microseconds per layer of the group, divided by b")
    blk.decode_overlap_us = pyo.Var(m.LAYER_GROUPS, within=pyo.NonNegativeReals,
                                    doc="Overlapped part of a decode step per layer of the group, divided by b")
    # (phase) -> list of (name, words, components or None, function grp -> expression)
    blk.chains = {"prefill": [], "decode": []}
    blk.PREFILL_CHAINS = pyo.Set(initialize=list(PREFILL_CHAINS), ordered=True,
                                 doc="Serial chains that overlap in prefill")
    blk.DECODE_OVERLAPPED = pyo.Set(initialize=DECODE_OVERLAPPED, within=m.COMPONENTS, ordered=True,
                                    doc="Decode components that overlap after CPU->GPU")

    @blk.Constraint(m.LAYER_GROUPS, blk.PREFILL_CHAINS, doc="Prefill layer time covers every serial chain")
    def prefill_layer_covers_chain(blk, grp, chain):
        """T_prefill[grp] >= sum of the chain's components"""
        return blk.prefill_layer_us[grp] >= sum(t[grp, "prefill", c] for c in PREFILL_CHAINS[chain])

    @blk.Constraint(m.LAYER_GROUPS, blk.DECODE_OVERLAPPED, doc="Decode overlap covers every overlapped component")
    def decode_overlap_covers_component(blk, grp, c):
        """max(gtoc, dtoc, ctod, comp) >= component"""
        return blk.decode_overlap_us[grp] >= t[grp, "decode", c]

    for name, comps in PREFILL_CHAINS.items():
        blk.chains["prefill"].append((name, chain_words(comps), comps,
                                      lambda grp, comps=comps: sum(t[grp, "prefill", c] for c in comps)))
    for c in DECODE_OVERLAPPED:
        blk.chains["decode"].append((c, COMPONENT_NAMES[c], (c,), lambda grp, c=c: t[grp, "decode", c]))

    @blk.Expression(m.LAYER_GROUPS, doc="Decode step microseconds per layer of the group, divided by b")
    def decode_layer_us(blk, grp):
        """T_decode = ctog + max(overlapped)"""
        return sum(t[grp, "decode", c] for c in DECODE_SERIAL) + blk.decode_overlap_us[grp]

    label(m, blk.prefill_layer_covers_chain,
          lambda grp, chain: f"prefill layer time set by {chain_words(PREFILL_CHAINS[chain])} ({grp})")
    label(m, blk.decode_overlap_covers_component,
          lambda grp, c: f"decode step set by {COMPONENT_NAMES[c]} ({grp})")
    completion(m, _fill_epigraphs, blk)


def bound_layer_time(m, phase: str, name: str, words: str, expr_of_group, components=None) -> None:
    """Another family's chain: ``T_phase[grp] >= expr_of_group(grp)`` for every layer group.

    ``expr_of_group(grp)`` is in the ledger's units (us per sequence); ``words`` names the chain in
    the report ("CPU->GPU + GPU->CPU transfer (one PCIe link)"). Adds the rows to the timing block as
    ``<name>_bounds_<phase>`` and records the chain, so the evaluator, the bottleneck, the report's
    formula and "Limits" include it.
    """
    blk = m.timing
    var = getattr(blk, EPIGRAPH[phase])
    con = pyo.Constraint(m.LAYER_GROUPS, rule=lambda b, grp: var[grp] >= expr_of_group(grp),
                         doc=f"{phase} layer time covers {words}")
    blk.add_component(f"{name}_bounds_{phase}", con)
    blk.chains[phase].append((name, words, components, expr_of_group))
    label(m, con, lambda grp: f"{phase} layer time set by {words} ({grp})")


def chain_values(m, grp: str, phase: str) -> dict[str, float]:
    """Every chain's value (us per sequence) at the model's current point."""
    return {name: pyo.value(fn(grp)) for name, _words, _comps, fn in m.timing.chains[phase]}


def _fill_epigraphs(m) -> None:
    """At a fixed policy each epigraph variable is the largest of its chains."""
    blk = m.timing
    for grp in m.LAYER_GROUPS:
        for phase, var in EPIGRAPH.items():
            vals = chain_values(m, grp, phase)
            getattr(blk, var)[grp].set_value(max(vals.values()) if vals else 0.0, skip_validation=True)


def formula(m) -> dict[str, str]:
    """The overlap rule per phase as this model has it (every family's chains), for the report."""
    chains = m.timing.chains
    return {"prefill": "max(" + ", ".join(name for name, *_ in chains["prefill"]) + ")",
            "decode": " + ".join(DECODE_SERIAL) + " + max(" + ", ".join(name for name, *_ in chains["decode"]) + ")"}
