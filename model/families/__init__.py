"""Constraint families, in the order the builder adds them (:data:`FAMILY_NAMES`).

Each family is one module with ``add(m, data)``, which adds one named Block to the model
``m``; a family may use the components of the families before it. Optionally a module also
declares

* ``KEYS``: the scenario keys it reads (:class:`model.keys.Key`), validated like every other
  key, echoed in the JSON, and turned into command-line flags where they name one;
* limits (:func:`model.limits.limit`): constraints that a scenario value bounds (a memory, a
  latency), which the evaluator, the infeasibility explanation and the sensitivity report name
  in plain words;
* labels (:func:`model.limits.label`) of its other constraints, for "Limits" in the report;
* contributions to the cost ledger (:func:`model.families.cost.contribute`, before ``cost``) and
  chains of the overlap rule (:func:`model.families.timing.bound_layer_time`, after ``timing``).

To add a family, write its module here and add its name to :data:`FAMILY_NAMES` (the one
registration line): nothing else needs an edit (README "Adding a constraint family";
docs/model.md section 5.9).
"""

from importlib import import_module

FAMILY_NAMES = (
    "placement",      # p[k, d] and p[weights, d] / b
    "batching",       # g, N, 1/b, 1/N, p/N, eff(g) p: exact integer linearization
    "fixed_policy",   # fractions the user pinned
    "experts",        # experts pinned on the GPU / computed on the CPU, expected traffic: ledger contributions
    "attention",      # CPU or GPU attention over the off-GPU KV cache, a binary (policy.attention: auto)
    "cost",           # per-sequence time and memory: the accounting plus every family's contributions
    "capacity",       # home + working memory <= alpha * capacity
    "timing",         # overlap of transfers and compute
    "objective",      # minimize time per sequence
    "latency",        # block time (every request's latency) <= workload.max_block_time_s
)

FAMILIES = tuple(import_module(f"{__name__}.{name}") for name in FAMILY_NAMES)
