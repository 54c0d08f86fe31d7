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


def test_readme_constraint_family_example_is_the_shipped_latency_family():
    """The 'Adding a constraint family' example is the code of model/families/latency.py (after its
    docstring), so the worked example cannot drift from what runs; the family's figures are checked in
    tests/test_latency.py and its one-line registration in tests/test_family_extension.py."""
    block = [b for b in _python_blocks() if "def add(m, data)" in b][0]
    shipped = (ROOT / "model" / "families" / "latency.py").read_text()
    body = shipped.split('"""', 2)[2]      # after the module docstring
    def code(text):
        return [line.rstrip() for line in text.splitlines() if line.strip() and not line.startswith(("from __future__",))]
    readme_code = [line for line in code(block) if not line.startswith(('"""', 'request', "import pyomo"))]
    shipped_code = [line for line in code(body) if not line.startswith("import pyomo")]
    assert readme_code == shipped_code
