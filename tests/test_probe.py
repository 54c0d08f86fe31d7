"""runners.probe: the written preset's structure, units and provenance; bad input; cleanup.

Timings are never asserted (the machine is shared): the tests check that every number is
commented with where it came from, that the measured values are the measurements in their
units (the GEMM's marginal rate and the attention fit are recomputed here from the raw seconds
and rates, by an independent least-squares fit), that a scenario using the file gets those
values, and that nothing is left in the disk folder, also after SIGINT / SIGTERM.
The GPU test runs only where torch sees a CUDA GPU; elsewhere it is skipped, never faked.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from model import load_scenario, optimize
from model.report import to_json, to_text
from runners import probe as P
from runners.cli import guarded

# One pytest-xdist worker runs this module (its module fixture runs a quick probe): paid once, not per worker.
pytestmark = pytest.mark.xdist_group("test_probe")

BASE = "a100_40g_pcie"
BASE_FILE = ROOT / "model" / "presets" / "hardware" / f"{BASE}.yaml"
MIXTRAL = json.loads((ROOT / "scenarios" / "models" / "mixtral-8x7b.json").read_text())
CPU_DISK_KEYS = {"memory_bandwidth_gib_per_s.cpu", "tflops.cpu", "tflops.cpu_gemv", "tflops.cpu_gemm",
                 "cpu_efficiency.c2", "bandwidth_gib_per_s.disk_to_cpu",
                 "bandwidth_gib_per_s.cpu_to_disk_cache_prefill", "bandwidth_gib_per_s.cpu_to_disk_hidden_prefill",
                 "bandwidth_gib_per_s.cpu_to_disk_decode"}
GPU_KEYS = {"memory_gib.gpu", "memory_bandwidth_gib_per_s.gpu", "bandwidth_gib_per_s.cpu_to_gpu",
            "bandwidth_gib_per_s.gpu_to_cpu_cache", "bandwidth_gib_per_s.gpu_to_cpu_hidden",
            "tflops.gpu_matmul_prefill", "tflops.gpu_matmul_decode", "tflops.gpu_bmm_prefill", "tflops.gpu_bmm_decode"}


def has_cuda() -> bool:
    return not isinstance(P.cuda_device(), str)


def run_probe(*args, timeout=120, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "runners.probe", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """One ``--quick`` run, as a user runs it: (process, preset text, --json object, disk folder)."""
    tmp = tmp_path_factory.mktemp("probe")
    disk = tmp / "disk"
    disk.mkdir()
    out = tmp / "host.yaml"
    proc = run_probe("--quick", "--base-preset", BASE, "--disk-path", disk, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    return proc, out.read_text(), json.loads(proc.stdout), disk


def value_lines(text: str) -> dict[str, tuple[float, str]]:
    """``section.key`` -> (value, comment) of every indented ``key: value  # comment`` line."""
    out, section = {}, None
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if not line.startswith(" "):
            section = line.split(":")[0]
            continue
        body, _, comment = line.partition("#")
        key, _, val = body.strip().partition(":")
        out[f"{section}.{key}"] = (float(val), comment.strip())
    return out


def test_quick_run_writes_a_commented_preset_and_leaves_nothing(probed):
    proc, text, obj, disk = probed
    assert list(disk.iterdir()) == []                       # the disk file was removed
    assert obj["preset_file"].endswith("host.yaml")
    for m in obj["measurements"]:                           # a progress line per measurement
        assert f"probe: {m['label']}:" in proc.stderr
    vals = value_lines(text)
    assert vals, text
    for key, (_v, comment) in vals.items():
        assert comment.startswith("MEASURED:") or comment == f"from base preset {BASE}: not measured", (key, comment)


def test_provenance_measured_and_base_keys(probed):
    _proc, text, obj, _disk = probed
    vals = value_lines(text)
    measured = {k for k, (_v, c) in vals.items() if c.startswith("MEASURED")}
    gpu_measured = obj["gpu"]["gpu_name"] is not None
    assert CPU_DISK_KEYS <= measured
    if gpu_measured:
        assert GPU_KEYS <= measured
    else:   # every GPU number is the base preset's, unchanged
        base = yaml.safe_load(BASE_FILE.read_text())
        assert not (GPU_KEYS & measured)
        for key in GPU_KEYS:
            section, k = key.split(".")
            assert vals[key][0] == pytest.approx(base[section][k], rel=5e-4), key
        assert "GPU: none here" in text
    raw = yaml.safe_load(text)
    assert "runners.probe" in raw["source"] and (gpu_measured or f"from base preset {BASE}" in raw["source"])
    # the header states the date, the host's CPU model, cores and memory, and the BLAS threads
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    assert f"on {today}" in text or f"on {(dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)):%Y-%m-%d}" in text
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    if cpu_model:
        assert f"Host: {cpu_model};" in text
    assert f"; {os.cpu_count()} cores" in text
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert f"{round(mem_gib, 2)} GiB memory" in text
    assert "threads" in text and "BLAS" in text


def test_units_and_mapping_recomputed(probed):
    """Each preset number is its measurement in the key's unit; the GEMM's marginal rate and the
    attention fit are recomputed from the raw figures (scipy least squares, not the probe's)."""
    from scipy.optimize import least_squares

    _proc, text, obj, _disk = probed
    vals = value_lines(text)
    by_key = {k: m for m in obj["measurements"] for k in m["keys"]}
    for key, m in by_key.items():
        if key in ("memory_gib.gpu", "alpha.gpu"):
            continue
        unit = "TFLOP/s" if key.startswith("tflops.") else "GiB/s"
        assert m["unit"] == unit, key
        assert vals[key][0] == pytest.approx(m["value"], rel=1e-3), key
    # tflops.cpu_gemm: (T-1) tokens' FLOPs over time(T) - time(1), at Mixtral's expert shape
    h1, h2 = MIXTRAL["hidden_size"], MIXTRAL["intermediate_size"]
    g = by_key["tflops.cpu_gemm"]["extra"]
    T = g["tokens"]
    assert "float" in by_key["tflops.cpu_gemm"]["label"] and f"({T} x {h1}) @ ({h1} x {h2})" in \
        by_key["tflops.cpu_gemm"]["how"]
    n = g["matrices"]                   # a pass cycles through n matrices
    assert n * h1 * h2 * 4 >= 256 * 2**20    # float32, at least the quick streaming size (beyond the caches)
    assert vals["tflops.cpu_gemm"][0] == pytest.approx(
        (T - 1) * n * 2 * h1 * h2 / (g["seconds_T"] - g["seconds_1"]) / 1e12, rel=1e-3)
    v = by_key["tflops.cpu_gemv"]["extra"]
    assert vals["tflops.cpu_gemv"][0] == pytest.approx(n * 2 * h1 * h2 / v["seconds_1"] / 1e12, rel=1e-3)
    # tflops.cpu and c2: rate(g) = r0 * (1 - c2 * log2(64/g)) at h1 = 4096 (B = 0), from the measured rates
    att = [m for m in obj["measurements"] if m["label"].startswith("CPU decode attention")]
    assert len({m["extra"]["g"] for m in att}) >= 2
    A = [max(0.0, math.log2(64 / m["extra"]["g"])) for m in att]
    y = [m["value"] for m in att]
    sol = least_squares(lambda p: [p[0] * (1 - p[1] * a) - yy for a, yy in zip(A, y)], x0=[y[0], 0.0])
    assert vals["tflops.cpu"][0] == pytest.approx(sol.x[0], rel=2e-3)
    assert vals["cpu_efficiency.c2"][0] == pytest.approx(sol.x[1], rel=2e-3, abs=1e-5)
    # the decode attention's FLOPs are the accounting's 4 * ctx * nh * hd per sequence
    assert "context 528" in att[0]["how"]
    # disk: the file was at least the quick size (or what free space allowed) and its method is named
    d = by_key["bandwidth_gib_per_s.disk_to_cpu"]
    assert d["extra"]["file_bytes"] >= 64 * 2**20
    assert ("O_DIRECT" in d["how"]) == d["extra"]["direct_io"]


def test_a_scenario_solves_with_the_preset_and_names_it(probed, tmp_path):
    _proc, text, _obj, _disk = probed
    (tmp_path / "host.yaml").write_text(text)
    (tmp_path / "sc.yaml").write_text(
        "name: probed\n"
        f"model: {{hf_config: {ROOT / 'scenarios' / 'models' / 'mixtral-8x7b.json'}, accounting: exact}}\n"
        "workload: {prompt_len: 512, gen_len: 32}\n"
        "hardware: {preset: host.yaml, memory_gib: {gpu: 16, cpu: 200, disk: 1500}}\n")
    sc = load_scenario(tmp_path / "sc.yaml")
    vals = value_lines(text)
    hw = sc.hardware
    assert hw.memory_bandwidth_gib_per_s.cpu == vals["memory_bandwidth_gib_per_s.cpu"][0]
    assert hw.tflops.cpu == vals["tflops.cpu"][0]
    assert hw.tflops.cpu_gemv == vals["tflops.cpu_gemv"][0]
    assert hw.tflops.cpu_gemm == vals["tflops.cpu_gemm"][0]
    assert hw.bandwidth_gib_per_s.disk_to_cpu == vals["bandwidth_gib_per_s.disk_to_cpu"][0]
    assert hw.bandwidth_gib_per_s.cpu_to_disk_decode == vals["bandwidth_gib_per_s.cpu_to_disk_decode"][0]
    assert hw.cpu_efficiency.c2 == vals["cpu_efficiency.c2"][0]
    assert hw.preset.endswith("host.yaml")
    res = optimize(sc)
    assert res.status == "optimal" and res.throughput_tokens_per_s > 0
    js = to_json(res)["hardware"]
    assert js["preset"].endswith("host.yaml") and "runners.probe" in js["source"]
    assert f"; preset {hw.preset}" in to_text(res)


def test_numbers_are_written_as_yaml_floats():
    """YAML 1.1 reads ``1e-05`` as a string: every written number must come back as the float."""
    for v in (1.234e-5, 0.0123, 0.5, 1.0, 12.89, 1448.0, 26190.0, -0.00421, 3.0e-3):
        back = yaml.safe_load(f"x: {P.fmt(v)}")["x"]
        assert isinstance(back, float) and back == pytest.approx(v, rel=5e-4)


@pytest.mark.parametrize("args, field", [
    (["--out", "/proc/probe-test.yaml", "--base-preset", "t4"], "--out"),           # unwritable
    (["--out", "{tmp}/no/such/folder/host.yaml", "--base-preset", "t4"], "--out"),
    (["--out", "{tmp}/host.txt", "--base-preset", "t4"], "--out"),
    (["--disk-path", "{tmp}/no-such-folder", "--base-preset", "t4"], "--disk-path"),
    (["--skip", "gpu,tape", "--base-preset", "t4"], "--skip"),
    (["--skip", "cpu,disk,gpu", "--base-preset", "t4"], "--skip"),
    (["--base-preset", "no_such_preset"], "--base-preset"),
    (["--base-preset", "t4", "--model", "{tmp}/missing.json"], "--model"),
])
def test_bad_input_exits_2_with_one_line(args, field, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = guarded(P.run, args + ["--disk-path", str(tmp_path)] * ("--disk-path" not in args))
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field} "), err
    assert list(tmp_path.iterdir()) == []          # nothing written, nothing left


@pytest.mark.skipif(has_cuda(), reason="this machine has a GPU: the probe measures it, no base preset needed")
def test_without_gpu_a_base_preset_is_required(tmp_path):
    proc = run_probe("--quick", "--disk-path", tmp_path, "--out", tmp_path / "host.yaml")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --base-preset") and "GPU" in lines[0].upper()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_disk_measurement_leaves_nothing(sig, code, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = tmp_path / "host.yaml"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "runners.probe", "--skip", "cpu,gpu", "--base-preset", BASE,
                          "--disk-path", str(disk), "--out", str(out)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(f.name.startswith(".runners-probe-") and "check" not in f.name for f in disk.iterdir()):
            assert p.poll() is None and time.monotonic() < deadline, "the disk file never appeared"
            time.sleep(0.02)
        time.sleep(0.3)                                 # inside the write / read loop
        p.send_signal(sig)
        _out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    assert "Traceback" not in err
    assert list(disk.iterdir()) == []
    assert not out.exists()


PCIE_GB_PER_S_PER_LANE = {"1.0": 0.25, "2.0": 0.5, "3.0": 0.985, "4.0": 1.969, "5.0": 3.938, "6.0": 7.563}


@pytest.mark.skipif(not has_cuda(), reason="no CUDA GPU (or no torch) here: the GPU section is skipped, not faked")
def test_gpu_host_to_device_within_pcie_limit():
    """Per-direction PCIe payload limit (PCI-SIG: 8 / 16 / 32 GT/s per lane with 128b/130b encoding)."""
    torch = P.cuda_device()
    link = P.pcie_link("max")           # the device's maximum link: an upper bound whatever was negotiated
    if link is None:
        pytest.skip("the GPU's PCIe link is not in sysfs (e.g. SXM / NVLink-C2C)")
    gen, width = link.split()[1], int(link.split("x")[-1])
    limit_gib = PCIE_GB_PER_S_PER_LANE[gen] * width * 1e9 / 2**30
    sh = P.model_shapes(__import__("model.hf_config", fromlist=["x"]).from_hf_config(P.DEFAULT_MODEL))
    ms, info = P.gpu_rates(torch, sh, P.QUICK)
    h2d = next(m for m in ms if m.keys == ("bandwidth_gib_per_s.cpu_to_gpu",))
    assert 0 < h2d.value <= limit_gib * 1.02, (h2d.value, limit_gib, link)
    alloc = next(m for m in ms if "alpha.gpu" in m.keys)
    assert 0 < alloc.extra["alpha"] <= 1.0
