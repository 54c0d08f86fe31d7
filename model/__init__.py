"""MoE offloading policy solver: the FlexGen cost model as one exact Pyomo MILP.

Public API::

    from model import load_scenario, optimize, evaluate_policy
    sc = load_scenario("scenarios/t4_reference.yaml", {"workload.gen_len": 64})
    res = optimize(sc)                       # throughput-optimal policy
    ev = evaluate_policy(sc, 32, 58, [0, 63, 1, 99, 0, 100])   # one fixed policy
"""

from .errors import Infeasible, InputError, SolverError
from .optimize import Result, evaluate_policy, optimize
from .scenario import Scenario, from_dict, load_scenario, override

__all__ = [
    "Infeasible", "InputError", "SolverError", "Result", "Scenario",
    "evaluate_policy", "optimize", "from_dict", "load_scenario", "override",
]
