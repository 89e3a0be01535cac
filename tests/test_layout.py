"""The trust boundary in the folders: import contracts (pyproject's [tool.importlinter])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, capture_output=True, text=True)


def test_import_contracts_hold():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("module, line, broken", [
    ("aml/bank/_probe.py", "import aml.operator.ledger\n", "The bank side never imports"),
    ("aml/bank/_probe.py", "from aml.enclave import merge\n", "The bank side never imports"),
    ("flows/_probe.py", "from aml.enclave.detect import graph\n", "never imports detection"),
    ("aml/enclave/_probe.py", "from aml.tools import synth\n", "never imports what it does not ship"),
    ("aml/core/_probe.py", "from aml.enclave import state\n", "The shared core depends on no other part"),
])
def test_a_boundary_crossing_import_breaks_a_contract(tmp_path: Path, module: str, line: str, broken: str):
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("aml", "flows"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    (tree / module).write_text(line)
    out = subprocess.run([LINT, "--no-cache"], cwd=tree, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)})
    assert out.returncode != 0
    assert f"{broken}" in out.stdout and "BROKEN" in out.stdout
