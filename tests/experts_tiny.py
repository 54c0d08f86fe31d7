"""A tiny Mixtral-style scenario (flexllmgen accounting) for the expert-aware tests.

Hand numbers (flexllmgen accounting, docs/model.md section 3.2), h1 = 256, h2 = 512, E experts:

    one expert          W_e = 2 * 3 * h1 * h2 bytes = 786,432 bytes = 0.000732421875 GiB
    on the CPU          F   = 2 FLOPs per weight = 6 * h1 * h2 = 786,432 FLOPs per token
    on the GPU          F_gpu = 4 * h1 * h2 = 524,288 (the reference counts two matmuls, for every token)
    hidden state        2 * h1 = 512 bytes per token
"""

from __future__ import annotations

import copy

from model.scenario import from_dict

MIB = 1 / 1024
H1, H2 = 256, 512
W_EXPERT_GIB = 2 * 3 * H1 * H2 / 2**30
F_EXPERT = 6 * H1 * H2
F_EXPERT_GPU = 4 * H1 * H2
HIDDEN_GIB = 2 * H1 / 2**30

BASE = {
    "name": "tiny",
    "model": {"name": "tiny", "accounting": "flexllmgen", "num_layers": 3, "hidden_size": H1,
              "intermediate_size": H2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
              "num_experts": 3, "num_experts_per_token": 1, "vocab_size": 1000},
    "workload": {"prompt_len": 128, "gen_len": 64},
    "hardware": {
        "name": "tiny",
        "memory_gib": {"gpu": 8 * MIB, "cpu": 64 * MIB, "disk": 0},
        "bandwidth_gib_per_s": {"cpu_to_gpu": 1.0, "gpu_to_cpu_cache": 1.0, "gpu_to_cpu_hidden": 2.0,
                                "disk_to_cpu": 0.5, "cpu_to_disk_cache_prefill": 0.5,
                                "cpu_to_disk_hidden_prefill": 0.5, "cpu_to_disk_decode": 0.5},
        "tflops": {"gpu_matmul_prefill": 1.0, "gpu_matmul_decode": 0.5, "gpu_bmm_prefill": 0.5,
                   "gpu_bmm_decode": 0.1, "cpu": 0.01, "cpu_gemv": 0.002, "cpu_gemm": 0.02},
    },
    "experts": {"routing_probabilities": [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]},
}


def tiny(**overrides):
    """The tiny scenario with ``section__key=value`` overrides (``experts__pin_experts=True``)."""
    d = copy.deepcopy(BASE)
    for key, value in overrides.items():
        node = d
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return from_dict(d)
