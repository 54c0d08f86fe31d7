"""Constraint families, in the order the builder adds them (:data:`FAMILIES`).

Each family is one module with ``add(m, data)``, which adds one named Block to the model
``m``; a family may use the components of the families before it. Optionally a module also
declares

* ``KEYS``: the scenario keys it reads (:class:`model.keys.Key`), validated like every other
  key, echoed in the JSON, and turned into command-line flags where they name one;
* limits (:func:`model.limits.limit`): constraints that a scenario value bounds (a memory, a
  latency), which the evaluator, the infeasibility explanation and the sensitivity report name
  in plain words;
* labels (:func:`model.limits.label`) of its other constraints, for "Limits" in the report.

To add a family, write its module here and add it to :data:`FAMILIES`: nothing else needs an
edit (README "Adding a constraint family"; docs/model.md).
"""

from . import batching, capacity, cost, experts, fixed_policy, latency, objective, placement, timing

FAMILIES = (
    placement,      # p[k, d] and p[weights, d] / b
    batching,       # g, N, 1/b, 1/N, p/N, eff(g) p: exact integer linearization
    fixed_policy,   # fractions the user pinned
    experts,        # experts pinned on the GPU / computed on the CPU, expected traffic: term contributions
    cost,           # per-sequence time and memory: the accounting plus every family's contributions
    capacity,       # home + working memory <= alpha * capacity
    timing,         # overlap of transfers and compute
    objective,      # minimize time per sequence
    latency,        # block time (every request's latency) <= workload.max_block_time_s
)
