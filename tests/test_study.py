"""Studies (``python -m runners.sweep`` with study files): axes, where: filters, the SQLite store,
resume, export, and the Dask cluster paths.

The fast tests run their few points in this process (``--jobs 1``) on scenarios/a100_16g.yaml at
prompt lengths where a point solves in well under a second. The end-to-end tests (SIGINT then
SIGKILL then resume with ``--jobs 2``; a real ``dask scheduler`` with two ``dask worker``
processes; an unreachable scheduler) are marked slow.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from model import load_scenario
from runners import sweep as sw
from runners.study import execute, spec
from runners.study.plots import pareto_front
from runners.study.store import Store

REPO = Path(__file__).resolve().parents[1]
SCEN = REPO / "scenarios"
A100 = SCEN / "a100_16g.yaml"
PRESETS = REPO / "model" / "presets" / "hardware"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def run_quiet(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = sw.run(argv)
    return code, out.getvalue(), err.getvalue()


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --------------------------------------------------------------------------- study files
def test_axes_scenario_files_presets_and_where(tmp_path):
    """3 vary axes, a scenario-file axis (relative to the study file) and a preset axis; where: keeps
    only cpu >= 2 x gpu... counted by hand."""
    sub = tmp_path / "studies"
    sub.mkdir()
    f = write(sub / "s.yaml", f"""
scenario: [{os.path.relpath(A100, sub)}, {os.path.relpath(SCEN / 't4_reference.yaml', sub)}]
preset: [t4, l4]
vary:
  - field: hardware.memory_gib.cpu
    values: [16, 32, 64]
  - field: hardware.memory_gib.gpu
    values: [16, 24]
  - field: workload.gen_len
    range: {{start: 8, stop: 16, step: 8}}
where:
  - hardware.memory_gib.cpu >= 20
  - hardware.memory_gib.cpu >= hardware.memory_gib.gpu
""")
    st = sw.load_sweep(f)
    assert [p.field for p in st.params] == ["scenario", "preset", "hardware.memory_gib.cpu",
                                           "hardware.memory_gib.gpu", "workload.gen_len"]
    assert st.params[4].values == (8, 16)
    assert [c.text for c in st.where] == ["hardware.memory_gib.cpu >= 20", "hardware.memory_gib.cpu >= hardware.memory_gib.gpu"]
    prep = spec.prepare(st)
    # per (scenario, preset, gen): cpu 16 fails the first; cpu 32: gpu 16, 24 pass; cpu 64: both: 4 of 6
    assert len(prep.values) == 2 * 2 * 2 * 4
    assert prep.skipped == 2 * 2 * 2 * 2
    assert all(v[2] >= 20 and v[2] >= v[3] for v in prep.values)
    # the preset axis: the preset's numbers (read here from its file) over the scenario's hardware;
    # what the preset leaves out (disk, alphas) stays the scenario's; vary applies on top
    l4 = yaml.safe_load((PRESETS / "l4.yaml").read_text())
    i = next(k for k, v in enumerate(prep.values) if v[1] == "l4" and "a100" in v[0])
    sc = prep.scenarios[i]
    assert sc.hardware.name == l4["name"]
    assert sc.hardware.bandwidth_gib_per_s.cpu_to_gpu == l4["bandwidth_gib_per_s"]["cpu_to_gpu"]
    assert sc.hardware.tflops.gpu_matmul_prefill == l4["tflops"]["gpu_matmul_prefill"]
    assert sc.hardware.memory_gib.cpu == prep.values[i][2] and sc.hardware.memory_gib.gpu == prep.values[i][3]
    assert sc.hardware.memory_gib.disk == 1500 and sc.hardware.alpha.gpu == 0.8   # a100_16g.yaml's
    # the scenario axis picks the file: the t4_reference file's model name and its workload
    j = next(k for k, v in enumerate(prep.values) if "t4_reference" in v[0])
    assert prep.scenarios[j].name == "t4_reference"


def test_where_is_not_eval(tmp_path, capsys):
    f = write(tmp_path / "s.yaml", f"base: {A100}\nvary: [{{field: workload.gen_len, values: [8]}}]\n"
                                   "where: [\"__import__('os').getpid() > 1\"]\n")
    code, _out, err = run_quiet([str(f), "--jobs", "1", "--out", str(tmp_path / "o")])
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: where[0]")
    assert not (tmp_path / "o").exists()


VARY = "vary:\n  - field: workload.gen_len\n    values: [8, 16]\n"
BAD = {
    "unknown_axis": (f"base: {A100}\nvary:\n  - field: workload.gen_lenn\n    values: [8]\n", "vary[0].field"),
    "empty_values": (f"base: {A100}\nvary:\n  - field: workload.gen_len\n    values: []\n", "vary[0].values"),
    "where_unknown_field": (f"base: {A100}\n{VARY}where: [hardware.memory_gib.cpuu >= 1]\n", "where[0]"),
    "where_not_numeric": (f"base: {A100}\n{VARY}where: [model.name >= 1]\n", "where[0]"),
    "where_two_numbers": (f"base: {A100}\n{VARY}where: ['1 < 2']\n", "where[0]"),
    "where_no_operator": (f"base: {A100}\n{VARY}where: [workload.gen_len]\n", "where[0]"),
    "where_filters_all": (f"base: {A100}\n{VARY}where: [workload.gen_len > 100]\n", "where"),
    "scenario_missing": (f"scenario: [{A100}, nosuch.yaml]\n{VARY}", "scenario[1]"),
    "scenario_and_base": (f"base: {A100}\nscenario: [{A100}]\n{VARY}", "scenario"),
    "scenario_empty": (f"scenario: []\n{VARY}", "scenario"),
    "unknown_preset": (f"base: {A100}\npreset: [t4, nosuch]\n{VARY}", "preset[1]"),
    "preset_twice": (f"base: {A100}\npreset: [t4, t4]\n{VARY}", "preset[1]"),
    "unknown_output": (f"base: {A100}\n{VARY}outputs: [sensitivity, plots]\n", "outputs"),
    "axis_twice": (f"base: {A100}\nvary: [{{field: workload.gen_len, values: [8]}}, "
                   f"{{field: workload.gen_len, values: [16]}}]\n", "vary[1].field"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_study_file(case, tmp_path):
    text, name = BAD[case]
    f = write(tmp_path / f"{case}.yaml", text)
    code, out, err = run_quiet([str(f), "--jobs", "1", "--out", str(tmp_path / "o"), "--no-plot"])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {name} "), err
    assert out == "" and not (tmp_path / "o").exists()


def test_unwritable_output_folder(tmp_path):
    f = write(tmp_path / "s.yaml", f"base: {A100}\n{VARY}")
    blocker = write(tmp_path / "a_file", "not a folder")
    code, _out, err = run_quiet([str(f), "--jobs", "1", "--out", str(blocker / "sub"), "--no-plot"])
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --out = "), err


def test_color_by_must_be_an_axis(tmp_path):
    f = write(tmp_path / "s.yaml", f"base: {A100}\n{VARY}")
    code, _out, err = run_quiet([str(f), "--jobs", "1", "--out", str(tmp_path / "o"), "--color-by", "workload.prompt_len"])
    assert code == 2 and err.startswith("error: --color-by = 'workload.prompt_len'") and err.count("\n") == 1


# --------------------------------------------------------------------------- keys
def test_key_survives_axis_reordering_and_changes_with_inputs(tmp_path):
    a = write(tmp_path / "a.yaml", f"base: {A100}\nvary:\n  - {{field: workload.gen_len, values: [8, 16]}}\n"
                                   f"  - {{field: hardware.memory_gib.cpu, values: [100, 200]}}\n")
    b = write(tmp_path / "b.yaml", f"base: {A100}\nvary:\n  - {{field: hardware.memory_gib.cpu, values: [200, 100]}}\n"
                                   f"  - {{field: workload.gen_len, values: [16, 8]}}\n")
    ka, kb = spec.prepare(sw.load_sweep(a)), spec.prepare(sw.load_sweep(b))
    by_a = {(v[0], v[1]): k for v, k in zip(ka.values, ka.keys)}
    by_b = {(v[1], v[0]): k for v, k in zip(kb.values, kb.keys)}
    assert by_a == by_b and len(set(by_a.values())) == 4
    # a changed base scenario (one constant differs) is a new key for every point
    base2 = write(tmp_path / "base2.yaml", A100.read_text().replace("cpu_to_gpu: 26.19", "cpu_to_gpu: 26.2"))
    c = write(tmp_path / "c.yaml", a.read_text().replace(str(A100), str(base2)))
    assert not set(spec.prepare(sw.load_sweep(c)).keys) & set(ka.keys)
    # the base file reformatted (a comment) resolves to the same scenario: the same keys
    base3 = write(tmp_path / "base3.yaml", "# a comment\n" + A100.read_text())
    d = write(tmp_path / "d.yaml", a.read_text().replace(str(A100), str(base3)))
    assert spec.prepare(sw.load_sweep(d)).keys == ka.keys
    # asking for per-point extras is another result: new keys
    e = write(tmp_path / "e.yaml", a.read_text() + "outputs: [sensitivity]\n")
    assert not set(spec.prepare(sw.load_sweep(e)).keys) & set(ka.keys)
    # another program version: new keys
    assert not set(spec.prepare(sw.load_sweep(a), version="0.0.0+other").keys) & set(ka.keys)


def test_key_covers_referenced_files(tmp_path):
    """A scenario's hf_config is an input: the same path with other bytes is another key."""
    models = tmp_path / "models"
    models.mkdir()
    cfg = json.loads((SCEN / "models" / "mixtral-8x7b.json").read_text())
    (models / "mixtral-8x7b.json").write_text(json.dumps(cfg))
    write(tmp_path / "m.yaml", (SCEN / "mixtral-8x7b.yaml").read_text())
    f = write(tmp_path / "s.yaml", f"base: m.yaml\n{VARY}")
    k1 = spec.prepare(sw.load_sweep(f)).keys
    (models / "mixtral-8x7b.json").write_text(json.dumps(cfg, indent=1))   # same numbers, other bytes
    k2 = spec.prepare(sw.load_sweep(f)).keys
    assert len(set(k1)) == 2 and not set(k1) & set(k2)


def test_program_version():
    v = spec.program_version()
    pkg, digest = v.rsplit("+", 1)
    assert len(digest) == 16 and int(digest, 16) >= 0
    with pytest.raises(execute.VersionMismatch, match="another|program version"):
        execute.solve_task(load_scenario(A100), (), "0.0.0+0000000000000000")


# --------------------------------------------------------------------------- the store
def test_store_wal_and_second_writer_refused(tmp_path):
    out = tmp_path / "o"
    with Store(out, sw.RESULT_COLUMNS) as store:
        assert store.journal_mode == "wal"
        row = execute.empty_row("infeasible", "nothing fits")
        store.put("k1", "s", {"a": 1}, row, "v")
        store.put("k1", "s", {"a": 1}, row, "v")                 # the same key again: still one row
        assert store.count() == 1
        # another writer (here a second open file of the lock, as another process would have) is refused
        f = write(tmp_path / "s.yaml", f"base: {A100}\n{VARY}")
        code, _o, err = run_quiet([str(f), "--jobs", "1", "--out", str(out), "--no-plot"])
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: --out = ") and f"pid {os.getpid()}" in err
        # a reader is not refused while the writer holds the database
        assert Store(out, sw.RESULT_COLUMNS, write=False).rows() == {"k1": row}
    # the lock goes with the writer
    with Store(out, sw.RESULT_COLUMNS) as store:
        assert store.keys() == {"k1"}


# --------------------------------------------------------------------------- resume
SMALL = f"""name: small
base: {A100}
vary:
  - field: workload.prompt_len
    values: [2048, 4096]
  - field: hardware.memory_gib.gpu
    values: [4, 16, 24]
"""


class Stop(Exception):
    pass


def test_resume_reuses_finished_points(tmp_path, monkeypatch):
    """Stopped after 3 points; the rerun solves only the other 3 and says it reused 3; the CSV is a
    clean run's."""
    f = write(tmp_path / "small.yaml", SMALL)
    clean = tmp_path / "clean"
    code, out, _err = run_quiet([str(f), "--jobs", "1", "--out", str(clean), "--no-plot"])
    assert code == 0, out
    real = execute.solve_point
    calls = []

    def stopping(sc, outputs=()):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(sc)
        return real(sc, outputs)

    monkeypatch.setattr(execute, "solve_point", stopping)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        run_quiet([str(f), "--jobs", "1", "--out", str(part), "--no-plot"])
    assert sqlite3.connect(part / "study.sqlite").execute("SELECT COUNT(*) FROM points").fetchone() == (3,)
    # --export at this point: the 3 finished points only
    code, out, _err = run_quiet([str(f), "--out", str(part), "--export", "--no-plot"])
    assert code == 0 and "exported 3 of 6 points" in out
    assert len(read_csv(part / "points.csv")) == 3
    calls.clear()
    monkeypatch.setattr(execute, "solve_point", lambda sc, outputs=(): (calls.append(sc), real(sc, outputs))[1])
    code, out, err = run_quiet([str(f), "--jobs", "1", "--out", str(part), "--no-plot"])
    assert code == 0
    assert len(calls) == 3
    assert "reusing 3 finished points" in err and ", 3 reused," in out
    want, got = read_csv(clean / "points.csv"), read_csv(part / "points.csv")
    assert len(got) == 6
    for w, g in zip(want, got):
        assert (g["workload.prompt_len"], g["hardware.memory_gib.gpu"], g["status"]) == \
               (w["workload.prompt_len"], w["hardware.memory_gib.gpu"], w["status"])
        if w["throughput_tokens_per_s"]:
            assert math.isclose(float(g["throughput_tokens_per_s"]), float(w["throughput_tokens_per_s"]), rel_tol=1e-6)
    with sqlite3.connect(part / "study.sqlite") as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM points").fetchone() == (6, 6)
    # 4 GiB of GPU memory holds nothing: infeasible (the 2 points), recorded with the reason
    assert [r["status"] for r in got if r["hardware.memory_gib.gpu"] == "4"] == ["infeasible", "infeasible"]


# --------------------------------------------------------------------------- summaries
def test_pareto_front_by_hand():
    #        block s, tokens/s
    pts = [(10, 5), (20, 4), (30, 9), (5, 1), (30, 9), (40, 9), (50, 12)]
    # by block time: (5,1) front; (10,5) front; (20,4) no; (30,9) front (first of the tie); (40,9) no; (50,12) front
    assert pareto_front(pts) == [3, 0, 2, 6]
    # within a relative tolerance a higher throughput does not count: 9.0005 is not > 9 x 1.0001
    assert pareto_front([(1, 9), (2, 9.0005), (3, 9.01)], rel_tol=1e-4) == [0, 2]
    assert pareto_front([(1, 9), (2, 9.0005), (3, 9.01)]) == [0, 1, 2]


def test_best_table_per_scenario():
    st = spec.Sweep(name="t", path=Path("t.yaml"), base=A100,
                    params=(spec.Param("scenario", ("a.yaml", "b.yaml")), spec.Param("workload.gen_len", (8, 16))))
    values = [("a.yaml", 8), ("a.yaml", 16), ("b.yaml", 8), ("b.yaml", 16)]

    def row(thr, g=None):
        r = execute.empty_row("optimal" if thr else "infeasible")
        r.update(throughput_tokens_per_s=thr, gpu_batch_size=g, num_gpu_batches=g, block_time_s=1.0 if thr else None)
        return r
    rows = {0: row(2.0, 3), 1: row(5.0, 7), 2: row(None), 3: row(None)}
    lines = sw.best_table(st, values, rows).splitlines()
    assert lines[0].split()[:2] == ["scenario", "points"]
    a = lines[1].split()
    assert a[:6] == ["a.yaml", "2", "2", "5.0000", "7", "7"] and a[-1] == "workload.gen_len=16"
    assert lines[2].split()[:4] == ["b.yaml", "2", "0", "-"] and "no policy" in lines[2]


# --------------------------------------------------------------------------- slow: processes, signals, Dask
# 2 x 4 x 3 x 3 = 72 points; STUDY_KILL_BIG=1: 2 x 4 x 6 x 5 = 240 points (the issue's >= 200; ~4x longer)
KILL_BIG = os.environ.get("STUDY_KILL_BIG", "") == "1"


def kill_study(tmp_path: Path) -> Path:
    """3 axes over 2 scenario files (a100_16g at 16 and at 20 GiB of GPU memory), long prompts (fast points)."""
    write(tmp_path / "a100_20g.yaml", A100.read_text().replace("gpu: 16, cpu: 200", "gpu: 20, cpu: 200"))
    write(tmp_path / "a100_16g.yaml", A100.read_text())
    gens = [8, 16, 24, 32, 48, 64] if KILL_BIG else [16, 32, 64]
    cpus = [120, 160, 200, 240, 280] if KILL_BIG else [150, 200, 250]
    prompts = [1024, 2048, 3072, 4096]
    return write(tmp_path / "kill.yaml", f"""name: kill
scenario: [a100_16g.yaml, a100_20g.yaml]
vary:
  - {{field: workload.prompt_len, values: {prompts}}}
  - {{field: workload.gen_len, values: {gens}}}
  - {{field: hardware.memory_gib.cpu, values: {cpus}}}
""")


def _default_sigint() -> None:
    """In the child: SIGINT as a terminal sends it (a shell's background job starts with it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runners.sweep", *map(str, args)], cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint, **kw)


def points_in(db: Path) -> int:
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as c:
        try:
            return c.execute("SELECT COUNT(*) FROM points").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def wait_for_points(proc: subprocess.Popen, db: Path, n: int, timeout_s: float = 600) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        have = points_in(db)
        if have >= n:
            return have
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} points after {timeout_s} s")


def descendants(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def gone(procs, timeout_s: float = 20) -> bool:
    import psutil

    _gone, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_sigint_then_sigkill_then_resume(tmp_path):
    f = kill_study(tmp_path)
    clean, out = tmp_path / "clean", tmp_path / "out"
    proc = start([f, "--jobs", "2", "--out", clean, "--no-plot"])
    o, e = proc.communicate(timeout=1200)
    assert proc.returncode == 0, e
    want = read_csv(clean / "points.csv")
    n = len(want)
    assert n == 2 * len(set(r["workload.prompt_len"] for r in want)) * len(set(r["workload.gen_len"] for r in want)) \
        * len(set(r["hardware.memory_gib.cpu"] for r in want))

    # 1: SIGINT partway
    proc = start([f, "--jobs", "2", "--out", out, "--no-plot"])
    wait_for_points(proc, out / "study.sqlite", n // 4)
    kids = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    o, e = proc.communicate(timeout=120)
    assert proc.returncode == 130, e
    last = e.strip().splitlines()[-1]   # the front door's one line, with the study's note that points are kept
    assert last.startswith("interrupted: sweep ") and "run the same command again" in last and "Traceback" not in e
    assert gone(kids), "worker processes of the embedded cluster outlived the study"
    assert not list(out.glob(".dask-scratch-*"))
    first = points_in(out / "study.sqlite")
    assert n // 4 <= first < n

    # 2: SIGKILL partway (nothing runs in the study's process after that)
    proc = start([f, "--jobs", "2", "--out", out, "--no-plot"])
    wait_for_points(proc, out / "study.sqlite", first + 1)
    other = start([f, "--jobs", "1", "--out", out, "--no-plot"])     # a second writer meanwhile: refused
    o2, e2 = other.communicate(timeout=120)
    assert other.returncode == 2 and e2.count("\n") == 1 and f"(pid {proc.pid})" in e2, e2
    wait_for_points(proc, out / "study.sqlite", first + n // 4)
    kids = descendants(proc.pid)
    proc.kill()
    proc.communicate(timeout=60)
    assert gone(kids), "worker processes outlived a SIGKILLed study"
    second = points_in(out / "study.sqlite")
    assert first < second < n

    # 3: to the end; it says what it reused, and leaves no scratch folder (not even the killed run's)
    proc = start([f, "--jobs", "2", "--out", out, "--no-plot"])
    o, e = proc.communicate(timeout=1200)
    assert proc.returncode == 0, e
    assert f"reusing {second} finished points" in e and f", {second} reused," in o
    assert not list(out.glob(".dask-scratch-*"))
    got = read_csv(out / "points.csv")
    axes = ("scenario", "workload.prompt_len", "workload.gen_len", "hardware.memory_gib.cpu")
    assert [tuple(r[a] for a in axes) for r in got] == [tuple(r[a] for a in axes) for r in want]
    for w, g in zip(want, got):
        assert g["status"] == w["status"]
        if w["throughput_tokens_per_s"]:
            assert math.isclose(float(g["throughput_tokens_per_s"]), float(w["throughput_tokens_per_s"]), rel_tol=1e-6)
    with contextlib.closing(sqlite3.connect(out / "study.sqlite")) as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM points").fetchone() == (n, n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_external_dask_scheduler_and_two_workers(tmp_path):
    """The same study on `dask scheduler` + 2 `dask worker` processes gives the embedded cluster's results."""
    import shutil

    dask_cli = shutil.which("dask") or pytest.skip("the dask command is not installed")
    f = write(tmp_path / "s.yaml", SMALL)
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = dict(cli_env(), DASK_TEMPORARY_DIRECTORY=str(tmp_path))   # the scheduler's scratch: not /tmp
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        for k in range(2):
            procs.append(subprocess.Popen([dask_cli, "worker", addr, "--nthreads", "1", "--no-dashboard",
                                           "--local-directory", str(tmp_path / f"w{k}")], cwd=REPO, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(addr, timeout=60) as c:
            c.wait_for_workers(2, timeout=120)
        ext = start([f, "--scheduler", addr, "--out", tmp_path / "ext", "--no-plot"])
        o, e = ext.communicate(timeout=600)
        assert ext.returncode == 0, e
        assert f"scheduler {addr}" in o
        emb = start([f, "--jobs", "2", "--out", tmp_path / "emb", "--no-plot"])
        o2, e2 = emb.communicate(timeout=600)
        assert emb.returncode == 0, e2
        a, b = read_csv(tmp_path / "ext" / "points.csv"), read_csv(tmp_path / "emb" / "points.csv")
        assert len(a) == len(b) == 6
        for x, y in zip(a, b):
            assert (x["workload.prompt_len"], x["hardware.memory_gib.gpu"], x["status"]) == \
                   (y["workload.prompt_len"], y["hardware.memory_gib.gpu"], y["status"])
            if x["throughput_tokens_per_s"]:
                assert math.isclose(float(x["throughput_tokens_per_s"]), float(y["throughput_tokens_per_s"]),
                                    rel_tol=1e-6)
    finally:
        _stop(procs)
    assert all(p.poll() is not None for p in procs)


@pytest.mark.slow
def test_unreachable_scheduler(tmp_path):
    f = write(tmp_path / "s.yaml", f"base: {A100}\n{VARY}")
    t0 = time.monotonic()
    proc = start([f, "--scheduler", f"tcp://127.0.0.1:{free_port()}", "--out", tmp_path / "o"])
    o, e = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 10 + 15          # 10 s to connect, plus start-up and loading
    assert proc.returncode == 2, e
    assert e.count("\n") == 1 and e.startswith("error: --scheduler = ") and "10 s" in e
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_server_that_is_not_a_dask_scheduler(tmp_path):
    """A TCP server that answers with garbage: exit 2, one line, within the 10 s."""
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve():
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            conn.sendall(b"\xff" * 64 + b"HTTP/1.1 200 OK\r\n\r\n")
            time.sleep(15)
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    f = write(tmp_path / "s.yaml", f"base: {A100}\n{VARY}")
    t0 = time.monotonic()
    proc = start([f, "--scheduler", f"tcp://127.0.0.1:{port}", "--out", tmp_path / "o"])
    o, e = proc.communicate(timeout=60)
    srv.close()
    assert proc.returncode == 2, e
    assert e.count("\n") == 1 and e.startswith("error: --scheduler = "), e
    assert time.monotonic() - t0 < 10 + 15


def test_shipped_files_replace_paths(tmp_path):
    """A worker of a --scheduler study gets the hf_config's bytes, not its path: the scenario it solves
    names a copy in the worker's folder, with the same bytes, and the architecture reads the same."""
    from model.hf_config import from_hf_config

    sc = load_scenario(SCEN / "mixtral-8x7b.yaml")
    refs = execute.referenced_files(sc)
    assert list(refs) == ["model.hf_config"]
    files = {k: execute.read_file(k, p) for k, p in refs.items()}
    moved = execute.materialize(sc, files, tmp_path / "worker")
    new = Path(moved.model.hf_config)
    assert new.parent.parent == tmp_path / "worker" / "moe-study-files" and new.name == "mixtral-8x7b.json"
    assert new.read_bytes() == Path(sc.model.hf_config).read_bytes()
    assert from_hf_config(new) == from_hf_config(sc.model.hf_config)
    assert moved.hardware == sc.hardware and moved.workload == sc.workload


@pytest.mark.slow
def test_worker_of_another_version_is_refused(tmp_path):
    """A `dask worker` running a copy of the program whose model/ differs by one comment: exit 2, one line."""
    import shutil

    dask_cli = shutil.which("dask") or pytest.skip("the dask command is not installed")
    copy = tmp_path / "other"
    shutil.copytree(REPO / "model", copy / "model", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "runners", copy / "runners", ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "model" / "errors.py").open("a") as fh:
        fh.write("\n# another version\n")
    f = write(tmp_path / "s.yaml", f"base: {A100}\n{VARY}")
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    other_env = dict(os.environ, PYTHONPATH=str(copy), DASK_TEMPORARY_DIRECTORY=str(tmp_path))
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              cwd=tmp_path, env=other_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([dask_cli, "worker", addr, "--nthreads", "1", "--no-dashboard",
                                       "--local-directory", str(tmp_path / "w")], cwd=tmp_path, env=other_env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(addr, timeout=60) as c:
            c.wait_for_workers(1, timeout=120)
        proc = start([f, "--scheduler", addr, "--out", tmp_path / "o"])
        o, e = proc.communicate(timeout=300)
        assert proc.returncode == 2, e
        assert e.count("\n") == 1 and e.startswith(f"error: --scheduler = '{addr}'") and "program version" in e
    finally:
        _stop(procs)


@pytest.mark.slow
def test_lost_worker_is_retried_and_a_point_that_crashes_twice_is_an_error(tmp_path):
    """On the embedded cluster: a point whose worker dies once is solved on the retry; a point that
    kills its worker every time comes back as `error` (KilledWorker), and the others are unaffected."""
    scs = {i: load_scenario(A100, {"workload.prompt_len": p}) for i, p in enumerate([2048, 3072, 4096])}
    marker = tmp_path / "crashed_once"

    def task(sc, outputs, version, files=None):
        import os as _os

        if sc.workload.prompt_len == 3072:
            _os._exit(3)                                   # every time
        if sc.workload.prompt_len == 2048 and not marker.exists():
            marker.write_text("x")
            _os._exit(3)                                   # the first time only
        return execute.solve_task(sc, outputs, version, files)

    rows = {}
    version = spec.program_version()
    with execute.dask_client(None, 2, tmp_path) as client:
        execute.run_dask(client, [0, 1, 2], scs, frozenset(), version, rows.__setitem__, None, window=4, task=task)
    assert marker.exists()
    assert rows[0]["status"] == "optimal" and rows[2]["status"] == "optimal"
    assert rows[1]["status"] == "error" and "crashed twice" in rows[1]["message"]
    assert not list(tmp_path.glob(".dask-scratch-*"))


def _stop(procs) -> None:
    """Terminate the scheduler and worker processes a test started (last first), killing any that linger."""
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
