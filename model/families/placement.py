"""Placement: where each tensor kind lives (docs/model.md section 1.1, ``p[k, d]``).

Cache and activation fractions are ordinary variables in [0, 1]. Weights enter the
per-sequence model only divided by the block size, as ``weights_per_seq[d] =
p[weights, d] / b`` (docs/model.md section 4.1); their sum-to-one constraint needs
``1/b`` and so lives in the batching family. With the batch sizes fixed (the LP
re-solve), the weights fraction itself is the variable: values of order ``1/b``
would sit at the scale of a solver's absolute tolerances.
"""

from __future__ import annotations

import pyomo.environ as pyo

from ..terms import SEQ_KINDS


def add(m, data) -> None:
    m.placement = blk = pyo.Block(doc="Placement of weights, KV cache and activations on GPU/CPU/disk")
    blk.SEQ_KINDS = pyo.Set(initialize=SEQ_KINDS, within=m.TENSOR_KINDS, ordered=True,
                            doc="Tensor kinds whose bytes grow with the number of sequences")
    blk.fraction = pyo.Var(blk.SEQ_KINDS, m.DEVICES, bounds=(0, 1),
                           doc="Fraction of a tensor kind homed on a device, p[k, d]")
    if data.fixed_batch is None:
        blk.weights_per_seq = pyo.Var(m.DEVICES, bounds=(0, 1),
                                      doc="Weights fraction on a device divided by block size, p[weights, d] / b")
    else:  # b is fixed: keep the fraction itself as the variable (well scaled), and divide by b
        g, N = data.fixed_batch
        blk.weights_fraction = pyo.Var(m.DEVICES, bounds=(0, 1), doc="Fraction of the weights on a device")
        blk.weights_per_seq = pyo.Expression(m.DEVICES, rule=lambda b, d: b.weights_fraction[d] / (g * N),
                                             doc="p[weights, d] / b with b fixed")

    @blk.Constraint(blk.SEQ_KINDS, doc="Each cache/activation fraction triple sums to one")
    def fractions_sum_to_one(blk, k):
        """sum_d p[k, d] = 1"""
        return sum(blk.fraction[k, d] for d in m.DEVICES) == 1

    @blk.Constraint(blk.SEQ_KINDS, m.DEVICES, doc="Devices a tensor kind may not use hold none of it")
    def only_allowed_devices(blk, k, d):
        """p[k, d] = 0 where the accounting forbids the device (activations never on disk)"""
        if data.accounting.allowed[(k, d)]:
            return pyo.Constraint.Skip
        return blk.fraction[k, d] == 0

    @blk.Constraint(m.DEVICES, doc="Devices that may not hold weights hold none")
    def weights_only_on_allowed_devices(blk, d):
        """p[weights, d] / b = 0 where weights are not allowed"""
        if data.accounting.allowed[("weights", d)]:
            return pyo.Constraint.Skip
        return blk.weights_per_seq[d] == 0
