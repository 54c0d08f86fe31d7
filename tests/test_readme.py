"""The README's Python API example runs as written, and its flags table matches the CLI."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def _python_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_api_example_runs():
    blocks = [b for b in _python_blocks() if "from model import" in b]
    assert blocks, "README has no API example"
    out = subprocess.run([sys.executable, "-c", blocks[0]], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0].split()
    assert first[0] == "optimal" and float(first[1]) > 0
    assert "evaluated 11.117593" in out.stdout


def test_readme_constraint_family_example_builds_and_binds(t4):
    """The 'Adding a constraint family' example is valid code that changes the answer when tight."""
    block = [b for b in _python_blocks() if "def add(m, data)" in b][0]
    ns: dict = {}
    exec(block, ns)
    from model import build
    from model.optimize import optimize

    free = optimize(t4)
    saved = list(build.FAMILIES)
    try:
        build.FAMILIES.insert(build.FAMILIES.index(build.cost.add) + 1, ns["add"])
        capped = optimize(t4)
    finally:
        build.FAMILIES[:] = saved
    ctog = capped.evaluation.layer_time_s["decode"]["ctog"]
    assert ctog <= 0.2 * (1 + 1e-6)
    assert free.evaluation.layer_time_s["decode"]["ctog"] > 0.2  # the cap really bites
    assert capped.throughput_tokens_per_s <= free.throughput_tokens_per_s
