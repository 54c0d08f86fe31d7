"""The expert-aware switches from the command line and in the JSON output (issue: expert-aware policies).

    --expert-traffic all|expected, --pin-experts / --no-pin-experts,
    --cpu-experts / --no-cpu-experts, --routing FILE
    JSON: policy.pinned_experts, policy.cpu_experts ([layer, expert] lists),
          model.expected_experts_moved_per_layer (at the chosen block size), experts (the switches)
"""

from __future__ import annotations

import copy
import json

import yaml

from conftest import describe, run_cli
from experts_tiny import BASE, MIB


def _scenario(tmp_path, **experts):
    d = copy.deepcopy(BASE)
    d["hardware"]["memory_gib"] = {"gpu": 9 * MIB, "cpu": 64 * MIB, "disk": 0}
    d["search"] = {"max_gpu_batch_size": 2, "max_num_gpu_batches": 6}
    d["experts"].update(experts)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _json(proc):
    assert proc.returncode == 0, describe(proc)
    return json.loads(proc.stdout)


def test_json_has_the_expert_fields_and_flags_override_the_file(tmp_path):
    path = _scenario(tmp_path, pin_experts=True)
    out = _json(run_cli(path, "--json", "--cpu-experts", "--expert-traffic", "expected"))
    assert out["experts"]["pin_experts"] is True and out["experts"]["cpu_experts"] is True
    assert out["experts"]["expert_traffic"] == "expected"
    pol = out["policy"]
    for key in ("pinned_experts", "cpu_experts"):
        assert all(isinstance(p, list) and len(p) == 2 and 0 <= p[0] < 3 and 0 <= p[1] < 3 for p in pol[key])
    assert not {tuple(p) for p in pol["pinned_experts"]} & {tuple(p) for p in pol["cpu_experts"]}
    moved = out["model"]["expected_experts_moved_per_layer"]
    assert out["model"]["moe_layers"] == [0, 1, 2] and len(moved) == 3
    # the expected number at the chosen block size, from the routing rows in the file, by hand
    b = pol["block_size"]
    rows = BASE["experts"]["routing_probabilities"]
    kept = {tuple(p) for p in pol["pinned_experts"] + pol["cpu_experts"]}
    for layer in range(3):
        want = sum(1 - (1 - q) ** b for e, q in enumerate(rows[layer]) if (layer, e) not in kept)
        assert abs(moved[layer] - want) < 1e-12

    off = _json(run_cli(path, "--json", "--no-pin-experts"))
    assert off["experts"]["pin_experts"] is False and off["policy"]["pinned_experts"] == []
    assert off["model"]["expected_experts_moved_per_layer"] == [3.0, 3.0, 3.0]   # traffic "all": every expert


def test_routing_trace_from_the_command_line(tmp_path):
    """A JSONL trace: layer 0 always picks expert 0, layers 1 and 2 expert 2 (top-1), so with
    expected traffic only those move: 1 expert per layer at any block size."""
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps({"experts": [[0], [2], [2]]}) + "\n" for _ in range(5)))
    path = _scenario(tmp_path)
    out = _json(run_cli(path, "--json", "--routing", trace, "--expert-traffic", "expected"))
    assert out["experts"]["routing"].startswith("trace ") and out["experts"]["routing"].endswith("trace.jsonl")
    assert out["model"]["expected_experts_moved_per_layer"] == [1.0, 1.0, 1.0]


def test_text_report_names_the_experts(tmp_path):
    path = _scenario(tmp_path, pin_experts=True, expert_traffic="expected")
    proc = run_cli(path)
    assert proc.returncode == 0, describe(proc)
    assert "Experts     traffic expected, pinning on, CPU experts off" in proc.stdout
    assert "pinned on the GPU:" in proc.stdout


def test_cpu_experts_without_cpu_rates_is_bad_input(tmp_path):
    d = copy.deepcopy(BASE)
    del d["hardware"]["tflops"]["cpu_gemv"]
    del d["hardware"]["tflops"]["cpu_gemm"]
    path = tmp_path / "norates.yaml"
    path.write_text(yaml.safe_dump(d))
    proc = run_cli(path, "--cpu-experts")
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "hardware.tflops.cpu_gemv" in lines[0] and "Traceback" not in proc.stderr
    assert run_cli(path).returncode == 0          # without CPU experts the rates are not needed
