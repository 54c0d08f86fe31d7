"""Hardware presets (model/presets/hardware/*.yaml) through the real scenario loader.

Each preset is deep-merged under a scenario's ``hardware:`` section, the scenario's own
keys winning. These tests load every shipped preset, check that each number says where it
comes from, that the T4 preset is the reference's fitted constants verbatim, and that the
datasheet estimates order the way the datasheets do.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from model.errors import InputError
from model.scenario import PRESET_DIR, from_dict, hardware_presets, load_scenario

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = ["a100_40g_pcie", "a100_80g_pcie", "a10g", "h100_pcie", "l4", "rtx4090", "t4"]
TOP_KEYS = {"name", "source", "host_link", "memory_gib", "memory_bandwidth_gib_per_s",
            "bandwidth_gib_per_s", "tflops", "cpu_efficiency"}
BANDWIDTH_KEYS = {"cpu_to_gpu", "gpu_to_cpu_cache", "gpu_to_cpu_hidden", "disk_to_cpu",
                  "cpu_to_disk_cache_prefill", "cpu_to_disk_hidden_prefill", "cpu_to_disk_decode"}
TFLOPS_KEYS = {"gpu_matmul_prefill", "gpu_matmul_decode", "gpu_bmm_prefill", "gpu_bmm_decode", "cpu",
               "cpu_gemv", "cpu_gemm"}

# The reference's fitted T4 constants (mixtral_cost_model.py; scenarios/t4_reference.yaml).
T4_BANDWIDTH = {"cpu_to_gpu": 12.89, "gpu_to_cpu_cache": 0.97, "gpu_to_cpu_hidden": 4.82,
                "disk_to_cpu": 0.473, "cpu_to_disk_cache_prefill": 0.746,
                "cpu_to_disk_hidden_prefill": 2.015, "cpu_to_disk_decode": 2.015}
T4_TFLOPS = {"gpu_matmul_prefill": 21.24, "gpu_matmul_decode": 4.3, "gpu_bmm_prefill": 9.97,
             "gpu_bmm_decode": 0.079, "cpu": 0.0123}
T4_CPU_EFFICIENCY = {"c1": 0.0168, "c2": 0.0328, "c3": 0.0621}


def scenario_dict(preset: str, accounting: str = "flexllmgen", **hardware) -> dict:
    """A minimal scenario on ``preset``: the host's CPU memory and disk, the GPU from the preset."""
    hw = {"preset": preset, "memory_gib": {"cpu": 200, "disk": 1500}}
    hw.update(hardware)
    return {"model": {"accounting": accounting},
            "workload": {"prompt_len": 512, "gen_len": 32},
            "hardware": hw}


def load(preset: str, **hardware):
    return from_dict(scenario_dict(preset, **hardware)).hardware


def raw_text(name: str) -> str:
    return (PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8")


def raw_yaml(name: str) -> dict:
    return yaml.safe_load(raw_text(name))


def header(name: str) -> str:
    """The leading comment block of a preset file."""
    lines = []
    for line in raw_text(name).splitlines():
        if not line.startswith("#") and line.strip():
            break
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the set

def test_hardware_presets_lists_exactly_the_shipped_files():
    assert hardware_presets() == EXPECTED
    assert sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) == EXPECTED
    # nothing else lying in the folder (a .yml would be silently ignored by the loader)
    assert sorted(p.name for p in PRESET_DIR.iterdir() if not p.name.startswith(".")) == \
        sorted(f"{n}.yaml" for n in EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_preset_loads_with_both_accountings(name):
    hw = load(name)
    assert hw.preset == name
    assert hw.memory_gib.cpu == 200 and hw.memory_gib.disk == 1500     # the scenario's
    assert hw.memory_gib.gpu == raw_yaml(name)["memory_gib"]["gpu"]     # the preset's
    assert hw.memory_bandwidth_gib_per_s is not None
    # `exact` accounting needs memory bandwidths: the preset must supply them
    sc = from_dict(scenario_dict(name, accounting="exact"))
    assert sc.hardware.memory_bandwidth_gib_per_s == hw.memory_bandwidth_gib_per_s


@pytest.mark.parametrize("name", EXPECTED)
def test_preset_has_exactly_the_hardware_keys(name):
    raw = raw_yaml(name)
    assert set(raw) == TOP_KEYS
    assert set(raw["memory_gib"]) == {"gpu"}          # CPU memory and disk are the scenario's
    assert set(raw["memory_bandwidth_gib_per_s"]) == {"gpu", "cpu"}
    assert set(raw["bandwidth_gib_per_s"]) == BANDWIDTH_KEYS
    assert set(raw["tflops"]) == TFLOPS_KEYS
    assert set(raw["cpu_efficiency"]) == {"c1", "c2", "c3"}
    assert "preset" not in raw and "alpha" not in raw
    for key in ("name", "source", "host_link"):
        assert isinstance(raw[key], str) and raw[key].strip() and "\n" not in raw[key]
    assert re.fullmatch(r"PCIe [345]\.0 x16", raw["host_link"])


# ---------------------------------------------------------------------------- provenance

@pytest.mark.parametrize("name", EXPECTED)
def test_header_and_source_say_fitted_or_datasheet_estimate(name):
    head = header(name).lower()
    source = raw_yaml(name)["source"].lower()
    if name == "t4":
        assert "fitted" in head and source.startswith("fitted")
        assert "not a datasheet estimate" in head
    else:
        assert "datasheet estimate" in head and source.startswith("datasheet estimate")
        assert "not fitted" in head
        # the method is stated: efficiencies of the T4 fit, memory-bound decode, the disk, the CPU
        for words in ("efficienc", "memory-bound", "980 pro", "host is unknown"):
            assert words in head, words


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@pytest.mark.parametrize("name", EXPECTED)
def test_every_numeric_line_has_a_comment(name):
    uncommented, numeric = [], 0
    for i, line in enumerate(raw_text(name).splitlines(), 1):
        if line.lstrip().startswith("#") or ":" not in line:
            continue
        code, _, comment = line.partition("#")
        value = code.split(":", 1)[1].strip()
        if _NUMBER.fullmatch(value) or (value.startswith("{") and re.search(r"\d", value)):
            numeric += 1
            if not comment.strip():
                uncommented.append(f"line {i}: {line}")
    assert numeric == 1 + 2 + 7 + 7 + 3          # memory_gib.gpu, memory bandwidths, links, FLOPs (+ CPU experts), c1..c3
    assert not uncommented, "numbers without a source comment:\n" + "\n".join(uncommented)


# ---------------------------------------------------------------------------- T4: the fit

def test_t4_preset_reproduces_the_reference_constants_exactly():
    hw = load("t4")
    assert hw.memory_gib.gpu == 16
    assert {k: getattr(hw.bandwidth_gib_per_s, k) for k in T4_BANDWIDTH} == T4_BANDWIDTH
    assert {k: getattr(hw.tflops, k) for k in T4_TFLOPS} == T4_TFLOPS
    assert {k: getattr(hw.cpu_efficiency, k) for k in T4_CPU_EFFICIENCY} == T4_CPU_EFFICIENCY
    assert hw.host_link == "PCIe 3.0 x16"


def test_t4_preset_equals_the_reference_scenario_hardware():
    ref = load_scenario(ROOT / "scenarios" / "t4_reference.yaml").hardware
    hw = load("t4")
    assert hw.bandwidth_gib_per_s == ref.bandwidth_gib_per_s
    assert hw.tflops == ref.tflops
    assert hw.cpu_efficiency == ref.cpu_efficiency
    assert hw.memory_gib == ref.memory_gib
    assert hw.alpha == ref.alpha


@pytest.mark.parametrize("name", EXPECTED)
def test_cpu_side_is_the_reference_fit_everywhere(name):
    """The host CPU is unknown for the estimates: the reference's CPU rate and coefficients stay."""
    hw = load(name)
    assert hw.tflops.cpu == T4_TFLOPS["cpu"]
    assert {k: getattr(hw.cpu_efficiency, k) for k in T4_CPU_EFFICIENCY} == T4_CPU_EFFICIENCY


# ---------------------------------------------------------------------------- estimates

def test_estimates_follow_the_stated_method():
    """Recompute every estimate from the T4 fit and the datasheet peaks named in the files."""
    gib = 2**30
    t4_pcie = 15.75e9 / gib
    peaks = {  # FP16 tensor dense TFLOPS, GPU memory GB/s, PCIe GB/s per direction
        "l4": (121, 300, 32), "a10g": (70, 600, 32), "rtx4090": (165.2, 1008, 32),
        "a100_40g_pcie": (312, 1555, 32), "a100_80g_pcie": (312, 1935, 32), "h100_pcie": (756, 2000, 64),
    }
    for name, (tf, mem_gbs, pcie_gbs) in peaks.items():
        hw = load(name)
        link = pcie_gbs * 1e9 / gib
        want_bw = {
            "cpu_to_gpu": 12.89 / t4_pcie * link,
            "gpu_to_cpu_cache": 0.97 / t4_pcie * link,
            "gpu_to_cpu_hidden": 4.82 / t4_pcie * link,
            "disk_to_cpu": 3.5e9 / gib,
            "cpu_to_disk_cache_prefill": 2.55e9 / gib,
            "cpu_to_disk_hidden_prefill": 2.55e9 / gib,
            "cpu_to_disk_decode": 2.55e9 / gib,
        }
        want_tf = {
            "gpu_matmul_prefill": 21.24 / 65 * tf,
            "gpu_bmm_prefill": 9.97 / 65 * tf,
            "gpu_matmul_decode": 4.3 * mem_gbs / 320,
            "gpu_bmm_decode": 0.079 * mem_gbs / 320,
        }
        for k, v in want_bw.items():
            assert getattr(hw.bandwidth_gib_per_s, k) == pytest.approx(v, rel=1e-3), (name, k)
        for k, v in want_tf.items():
            assert getattr(hw.tflops, k) == pytest.approx(v, rel=1e-3), (name, k)
        assert hw.memory_bandwidth_gib_per_s.gpu == pytest.approx(mem_gbs * 1e9 / gib, rel=1e-3), name


def test_a100_presets_agree_with_the_a100_16g_scenario():
    """a100_16g.yaml derived the same link and prefill numbers by hand (rounded to 3 digits)."""
    ref = load_scenario(ROOT / "scenarios" / "a100_16g.yaml").hardware
    for name in ("a100_40g_pcie", "a100_80g_pcie"):
        hw = load(name)
        for k in BANDWIDTH_KEYS:
            assert getattr(hw.bandwidth_gib_per_s, k) == pytest.approx(getattr(ref.bandwidth_gib_per_s, k), rel=3e-3)
        for k in ("gpu_matmul_prefill", "gpu_bmm_prefill", "cpu"):
            assert getattr(hw.tflops, k) == pytest.approx(getattr(ref.tflops, k), rel=3e-3)


def test_orderings_follow_the_datasheets():
    hw = {n: load(n) for n in EXPECTED}
    ctog = {n: h.bandwidth_gib_per_s.cpu_to_gpu for n, h in hw.items()}
    mm_p = {n: h.tflops.gpu_matmul_prefill for n, h in hw.items()}
    gmem = {n: h.memory_bandwidth_gib_per_s.gpu for n, h in hw.items()}
    # PCIe 5 > 4 > 3
    assert ctog["h100_pcie"] > ctog["a100_80g_pcie"] == ctog["a100_40g_pcie"] > ctog["t4"]
    # FP16 tensor peaks 756 > 312 > 121 > 65
    assert mm_p["h100_pcie"] > mm_p["a100_80g_pcie"] == mm_p["a100_40g_pcie"] > mm_p["l4"] > mm_p["t4"]
    # GPU memory bandwidth 2000 > 1935 > 1555 > 1008 > 600 > 320 > 300 GB/s
    assert gmem["h100_pcie"] > gmem["a100_80g_pcie"] > gmem["a100_40g_pcie"] > gmem["rtx4090"] \
        > gmem["a10g"] > gmem["t4"] > gmem["l4"]
    # memory-bound decode rates follow memory bandwidth, not FLOPs
    mm_g = {n: h.tflops.gpu_matmul_decode for n, h in hw.items()}
    assert sorted(mm_g, key=mm_g.get) == sorted(gmem, key=gmem.get)
    # capacities
    cap = {n: h.memory_gib.gpu for n, h in hw.items()}
    assert cap == {"t4": 16, "l4": 24, "a10g": 24, "rtx4090": 24,
                   "a100_40g_pcie": 40, "a100_80g_pcie": 80, "h100_pcie": 80}
    # an effective rate never exceeds the peak it was derived from
    for n, h in hw.items():
        assert h.bandwidth_gib_per_s.gpu_to_cpu_cache < h.bandwidth_gib_per_s.gpu_to_cpu_hidden \
            < h.bandwidth_gib_per_s.cpu_to_gpu, n
        assert h.tflops.gpu_bmm_decode < h.tflops.gpu_matmul_decode < h.tflops.gpu_matmul_prefill, n


# ---------------------------------------------------------------------------- merging

def test_scenario_keys_override_the_preset():
    hw = load("h100_pcie", tflops={"cpu": 0.05}, memory_gib={"gpu": 16, "cpu": 200, "disk": 1500},
              bandwidth_gib_per_s={"disk_to_cpu": 1.0}, name="capped H100")
    base = load("h100_pcie")
    assert hw.tflops.cpu == 0.05
    assert hw.memory_gib.gpu == 16
    assert hw.bandwidth_gib_per_s.disk_to_cpu == 1.0
    assert hw.name == "capped H100"
    # sibling keys of an overridden one still come from the preset (deep merge)
    assert hw.tflops.gpu_matmul_prefill == base.tflops.gpu_matmul_prefill
    assert hw.bandwidth_gib_per_s.cpu_to_gpu == base.bandwidth_gib_per_s.cpu_to_gpu
    assert hw.source == base.source


def test_override_through_load_scenario_dotted_paths(tmp_path):
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump(scenario_dict("l4")), encoding="utf-8")
    sc = load_scenario(path, {"hardware.tflops.cpu": 0.05})
    assert sc.hardware.tflops.cpu == 0.05
    assert sc.hardware.tflops.gpu_matmul_prefill == load("l4").tflops.gpu_matmul_prefill


def test_unknown_preset_is_an_input_error():
    with pytest.raises(InputError, match="unknown preset"):
        from_dict(scenario_dict("v100"))


@pytest.mark.parametrize("name", EXPECTED)
def test_cpu_expert_rates_follow_their_stated_derivation(name):
    """GEMV: half the host's DRAM bandwidth over fp16 weights (2 FLOP per 2 bytes), as each file says."""
    raw = raw_yaml(name)
    host_bytes_per_s = raw["memory_bandwidth_gib_per_s"]["cpu"] * 2**30
    assert raw["tflops"]["cpu_gemv"] == pytest.approx(0.5 * host_bytes_per_s / 1e12, rel=0.01)
    assert raw["tflops"]["cpu_gemv"] <= raw["tflops"]["cpu_gemm"]
