"""``python -m runners.sweep``: sweep files, points.csv, plots, bad input, and a monotone optimum.

The sweeps here are tiny (scenarios/a100_16g.yaml, a few points each); the shipped
GPU-memory sweep (9 points) runs once, for monotonicity: more GPU memory never
lowers the optimal throughput (a larger capacity only relaxes the constraints),
within the 1e-4 MIP gap.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model import Infeasible, load_scenario, optimize
from runners import sweep as sw

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "scenarios" / "a100_16g.yaml"
SWEEPS = REPO / "scenarios" / "sweeps"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIP_GAP = 1e-4

FRACTIONS = [f"{k}_{d}" for k in ("weights", "cache", "activations") for d in ("gpu", "cpu", "disk")]
PEAKS = ["gpu_prefill_gib", "gpu_decode_gib", "cpu_prefill_gib", "cpu_decode_gib", "disk_gib"]
RESULT_COLUMNS = ["status", "throughput_tokens_per_s", "gpu_batch_size", "num_gpu_batches",
                  *FRACTIONS, *PEAKS, "block_time_s", "solve_s", "message"]

GPU_FIELD = "hardware.memory_gib.gpu"
TINY_GPU_VALUES = [4, 0, 16, 24]     # 4 GiB: nothing fits; 0 GiB: an invalid scenario; 16, 24: optimal


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "runners.sweep", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    return write(d / "tiny.yaml", f"base: {BASE}\nvary:\n  - field: {GPU_FIELD}\n"
                                  f"    values: {TINY_GPU_VALUES}\n")


@pytest.fixture(scope="module")
def tiny_jobs1(tiny, tmp_path_factory):
    """The tiny sweep in this process (--jobs 1), with the progress bar forced on."""
    out = tmp_path_factory.mktemp("tiny_jobs1")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = sw.run([str(tiny), "--jobs", "1", "--out", str(out), "--progress"])
    return code, stdout.getvalue(), stderr.getvalue(), out


@pytest.fixture(scope="module")
def tiny_jobs2(tiny, tmp_path_factory):
    """The tiny sweep from the command line, in two worker processes."""
    out = tmp_path_factory.mktemp("tiny_jobs2")
    return run_cli(tiny, "--jobs", "2", "--out", out), out


@pytest.fixture(scope="module")
def independent() -> dict:
    """model.optimize on each tiny point's scenario, computed here, without the sweep."""
    out = {}
    for v in (4, 16, 24):
        try:
            out[v] = optimize(load_scenario(BASE, {GPU_FIELD: v}))
        except Infeasible as exc:
            out[v] = exc
    return out


# --------------------------------------------------------------------------- points.csv
@pytest.mark.parametrize("which", ["jobs1", "jobs2"])
def test_tiny_sweep_csv(which, tiny_jobs1, tiny_jobs2, independent):
    if which == "jobs1":
        code, stdout, stderr, out = tiny_jobs1
    else:
        proc, out = tiny_jobs2
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    assert code == 0, stdout + stderr
    assert "Traceback" not in stdout + stderr
    columns, rows = read_csv(out / "points.csv")
    assert columns == [GPU_FIELD, *RESULT_COLUMNS]
    assert len(rows) == len(TINY_GPU_VALUES)
    assert [float(r[GPU_FIELD]) for r in rows] == TINY_GPU_VALUES
    by_gpu = {float(r[GPU_FIELD]): r for r in rows}

    # infeasible: recorded with the reason, and the sweep still exits 0
    assert isinstance(independent[4], Infeasible)
    assert by_gpu[4]["status"] == "infeasible"
    assert "GPU memory" in by_gpu[4]["message"]
    assert by_gpu[4]["throughput_tokens_per_s"] == ""
    # an invalid point's scenario is an "error" row naming the field; the others still run
    assert by_gpu[0]["status"] == "error"
    assert GPU_FIELD in by_gpu[0]["message"]

    for v in (16, 24):
        row, res = by_gpu[v], independent[v]
        assert row["status"] == "optimal"
        assert math.isclose(float(row["throughput_tokens_per_s"]), res.throughput_tokens_per_s, rel_tol=1e-9)
        assert (int(row["gpu_batch_size"]), int(row["num_gpu_batches"])) == (res.gpu_batch_size,
                                                                             res.num_gpu_batches)
        for kind in ("weights", "cache", "activations"):
            fr = [float(row[f"{kind}_{d}"]) for d in ("gpu", "cpu", "disk")]
            assert math.isclose(sum(fr), 1.0, abs_tol=1e-9)
            assert fr == pytest.approx([res.fractions[(kind, d)] for d in ("gpu", "cpu", "disk")], abs=1e-9)
        peaks = res.evaluation.peak_memory_gib
        assert float(row["gpu_prefill_gib"]) == pytest.approx(peaks[("gpu", "prefill")], rel=1e-9)
        assert float(row["disk_gib"]) == pytest.approx(peaks[("disk", None)], rel=1e-9)
        assert float(row["gpu_prefill_gib"]) <= 0.8 * v * (1 + 1e-7)
        assert float(row["solve_s"]) > 0
        assert float(row["block_time_s"]) == pytest.approx(res.evaluation.total_s, rel=1e-9)

    png = out / "sweep.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE, "no plot: matplotlib is a dependency"
    # the table on stdout: one line per point, with status and g
    assert "infeasible" in stdout and "optimal" in stdout
    assert any(line.split()[:3] == ["16", "optimal", str(independent[16].gpu_batch_size)]
               for line in stdout.splitlines())


def test_progress_bar(tiny_jobs1):
    """tqdm's bar on stderr: the count of points and a rate."""
    stderr = tiny_jobs1[2]
    assert f"{len(TINY_GPU_VALUES)}/{len(TINY_GPU_VALUES)} [" in stderr
    assert "point/s" in stderr


def test_jobs_agree(tiny_jobs1, tiny_jobs2):
    _c, rows1 = read_csv(tiny_jobs1[3] / "points.csv")
    _c, rows2 = read_csv(tiny_jobs2[1] / "points.csv")
    strip = ("solve_s",)  # wall time differs
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows1] == \
           [{k: v for k, v in r.items() if k not in strip} for r in rows2]


# --------------------------------------------------------------------------- two parameters
def test_two_parameter_heatmap(tmp_path):
    f = write(tmp_path / "grid.yaml", f"""
name: cpu_disk
base: {BASE}
vary:
  - field: hardware.memory_gib.cpu
    values: [10, 200]
  - field: hardware.memory_gib.disk
    values: [0, 1500]
""")
    out = tmp_path / "out"
    code = sw.run([str(f), "--jobs", "2", "--out", str(out), "--plot-to", str(tmp_path / "img" / "grid.png")])
    assert code == 0
    columns, rows = read_csv(out / "points.csv")
    assert columns[:2] == ["hardware.memory_gib.cpu", "hardware.memory_gib.disk"]
    assert len(rows) == 4
    status = {(float(r["hardware.memory_gib.cpu"]), float(r["hardware.memory_gib.disk"])): r for r in rows}
    # 10 GiB CPU and no disk: the 86 GiB of weights fit nowhere
    assert status[(10, 0)]["status"] == "infeasible"
    assert "weights" in status[(10, 0)]["message"]
    assert all(status[k]["status"] == "optimal" for k in [(10, 1500), (200, 0), (200, 1500)])
    for png in (out / "heatmap.png", tmp_path / "img" / "grid.png"):
        assert png.read_bytes()[:8] == PNG_SIGNATURE, "no heatmap: matplotlib is a dependency"


# --------------------------------------------------------------------------- bad sweep files
VARY_OK = "vary:\n  - field: workload.prompt_len\n    values: [128, 256]\n"
BAD = {
    "unknown_top_key": (f"base: {BASE}\n{VARY_OK}varyy: 3\n", "varyy"),
    "unknown_vary_key": (f"base: {BASE}\nvary:\n  - field: workload.prompt_len\n    valuez: [128]\n",
                         "vary[0].valuez"),
    "bad_field_path": (f"base: {BASE}\nvary:\n  - field: hardware.memory_gib.gpuu\n    values: [8, 16]\n",
                       "hardware.memory_gib.gpuu"),
    "empty_values": (f"base: {BASE}\nvary:\n  - field: workload.prompt_len\n    values: []\n",
                     "vary[0].values"),
    "values_not_a_list": (f"base: {BASE}\nvary:\n  - field: workload.prompt_len\n    values: 128\n",
                          "vary[0].values"),
    "every_point_invalid": (f"base: {BASE}\nvary:\n  - field: workload.prompt_len\n    values: [-1, 0]\n",
                            "workload.prompt_len"),
    "range_wrong_type": (f"base: {BASE}\nvary:\n  - field: workload.prompt_len\n"
                         f"    range: {{start: 128, stop: big, num: 3}}\n", "vary[0].range.stop"),
    "range_step_and_num": (f"base: {BASE}\nvary:\n  - field: workload.prompt_len\n"
                           f"    range: {{start: 1, stop: 3, step: 1, num: 3}}\n", "vary[0].range"),
    "no_parameters": (f"base: {BASE}\nvary: []\n", "vary"),
    "missing_base": (VARY_OK, "base"),
    "base_not_found": ("base: no_such.yaml\n" + VARY_OK, "base"),
    "unknown_override": (f"base: {BASE}\n{VARY_OK}overrides: {{workload.prompt_lenn: 3}}\n",
                         "workload.prompt_lenn"),
    "unknown_solver_key": (f"base: {BASE}\n{VARY_OK}solver: {{gap: 0.1}}\n", "solver.gap"),
    "unknown_solver": (f"base: {BASE}\n{VARY_OK}solver: {{name: nosuch}}\n", "solver.name"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_file(case, tmp_path, capsys):
    text, names = BAD[case]
    f = write(tmp_path / f"{case}.yaml", text)
    code = sw.run([str(f), "--jobs", "1", "--out", str(tmp_path / "out"), "--no-plot"])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert names in lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_sweep_file_command_line(tmp_path):
    """From the command line: exit 2, one line naming the field, no traceback."""
    f = write(tmp_path / "bad.yaml", BAD["bad_field_path"][0])
    proc = run_cli(f)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "vary[0].field" in proc.stderr and "gpuu" in proc.stderr
    assert proc.stdout == ""


def test_bad_flags(tiny, capsys):
    assert sw.run([str(tiny), "--jobs", "0"]) == 2
    assert sw.run([str(tiny), "--plot-to", "plot.jpg"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "--jobs" in err[0] and "--plot-to" in err[1]


# --------------------------------------------------------------------------- ranges
def test_ranges():
    assert sw.expand_range({"start": 128, "stop": 4096, "num": 6, "scale": "log"}, "r", True) == \
        ([128, 256, 512, 1024, 2048, 4096], True)
    # integer fields: rounded, duplicates dropped
    assert sw.expand_range({"start": 1, "stop": 3, "num": 7}, "r", True) == ([1, 2, 3], False)
    assert sw.expand_range({"start": 8, "stop": 80, "step": 8}, "r", True)[0] == list(range(8, 81, 8))
    assert sw.expand_range({"start": 0, "stop": 0.3, "step": 0.1}, "r", False)[0] == [0.0, 0.1, 0.2, 0.3]
    assert sw.expand_range({"start": 10, "stop": 1, "step": -4.5}, "r", False)[0] == [10.0, 5.5, 1.0]
    assert sw.expand_range({"start": 2, "stop": 5, "num": 1}, "r", False)[0] == [2.0]
    with pytest.raises(sw.InputError, match="scale"):
        sw.expand_range({"start": 0, "stop": 5, "num": 3, "scale": "log"}, "r", False)


def test_shipped_sweeps_load():
    pl = sw.load_sweep(SWEEPS / "prompt_length.yaml")
    assert pl.base == BASE and pl.params[0].field == "workload.prompt_len"
    assert pl.params[0].values == (128, 256, 512, 1024, 2048, 4096)
    gm = sw.load_sweep(SWEEPS / "gpu_memory.yaml")
    assert gm.params[0].field == GPU_FIELD
    assert min(gm.params[0].values) == 8 and max(gm.params[0].values) == 80


# --------------------------------------------------------------------------- monotone in GPU memory
def test_gpu_memory_sweep_is_monotone(tmp_path, capsys):
    out = tmp_path / "gm"
    assert sw.run([str(SWEEPS / "gpu_memory.yaml"), "--jobs", "2", "--out", str(out), "--no-plot"]) == 0
    _cols, rows = read_csv(out / "points.csv")
    feasible = sorted((float(r[GPU_FIELD]), float(r["throughput_tokens_per_s"]))
                      for r in rows if r["status"] == "optimal")
    assert len(feasible) >= 8
    for (m1, t1), (m2, t2) in zip(feasible, feasible[1:]):
        assert t2 >= t1 * (1 - MIP_GAP), f"{m2} GiB gives {t2} tokens/s < {t1} at {m1} GiB"
    assert feasible[-1][1] > feasible[0][1]
