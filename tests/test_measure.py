"""The enclave measurement: deterministic, covers exactly the image inputs."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aml
from aml.enclave.measure import measure_tree, measurement_inputs, measurement_of_inputs
from aml.errors import BadInputError

PROJECT_ROOT = Path(aml.__file__).resolve().parents[1]
_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "*.egg-info", "__pycache__", "sample_data", "demo_out", "benchmarks",
    ".pytest_cache", ".hypothesis", "*.parquet",
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the real project tree, with a docs/ and tests/ entry to edit."""
    root = tmp_path / "proj"
    shutil.copytree(PROJECT_ROOT, root, ignore=_IGNORE, symlinks=False)
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "extra.md").write_text("notes\n")
    (root / "tests").mkdir(exist_ok=True)
    (root / "tests" / "test_extra.py").write_text("def test_x():\n    pass\n")
    return root


def _a_py_file(root: Path) -> Path:
    return root / "aml" / "errors.py"


def test_copy_of_tree_measures_the_same(tree: Path):
    assert measure_tree(tree) == measure_tree(tree)
    other = tree.parent / "copy2"
    shutil.copytree(tree, other)
    assert measure_tree(other) == measure_tree(tree)
    assert len(measure_tree(tree)) == 64 and int(measure_tree(tree), 16) >= 0


def test_one_byte_change_in_source_changes_measurement(tree: Path):
    before = measure_tree(tree)
    p = _a_py_file(tree)
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))
    assert measure_tree(tree) != before


def test_renamed_source_file_changes_measurement(tree: Path):
    before = measure_tree(tree)
    p = _a_py_file(tree)
    p.rename(p.with_name("errors_renamed.py"))
    assert measure_tree(tree) != before


def test_new_source_file_in_flows_changes_measurement(tree: Path):
    before = measure_tree(tree)
    (tree / "flows" / "extra_flow.py").write_text("X = 1\n")
    assert measure_tree(tree) != before


def test_toml_under_aml_is_measured(tree: Path):
    cfg = tree / "aml" / "detect" / "default_config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("[detect]\nthreshold = 0.5\n")
    before = measure_tree(tree)
    cfg.write_text("[detect]\nthreshold = 0.6\n")
    assert measure_tree(tree) != before


@pytest.mark.parametrize("rel", ["pyproject.toml", "constraints.txt",
                                 "enclave_image/Dockerfile", "enclave_image/requirements.lock"])
def test_image_definition_files_are_measured(tree: Path, rel: str):
    p = tree / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if not p.exists():
        p.write_text("# placeholder\n")
    before = measure_tree(tree)
    p.write_bytes(p.read_bytes() + b"\n")
    assert measure_tree(tree) != before


def test_missing_fixed_input_is_recorded_as_absent_not_ignored(tree: Path):
    lock = tree / "enclave_image" / "requirements.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_bytes(b"")
    with_empty = measure_tree(tree)
    lock.unlink()
    absent = measure_tree(tree)
    assert absent != with_empty
    assert ("enclave_image/requirements.lock", None) in measurement_inputs(tree)


@pytest.mark.parametrize("rel", ["docs/extra.md", "tests/test_extra.py", "README.md",
                                 "aml/__pycache__/errors.cpython-311.pyc",
                                 "sample_data/x.csv", "aml/tests/test_inner.py",
                                 "enclave_image/README.md"])
def test_docs_tests_and_caches_do_not_change_measurement(tree: Path, rel: str):
    before = measure_tree(tree)
    p = tree / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes((p.read_bytes() if p.exists() else b"") + b"\nedited\n")
    assert measure_tree(tree) == before


def test_independent_of_filesystem_creation_order(tmp_path: Path, tree: Path):
    files = [(path, (tree / path).read_bytes()) for path, digest in measurement_inputs(tree)
             if digest is not None]
    rng = random.Random(7)
    results = set()
    for i in range(3):
        rng.shuffle(files)
        root = tmp_path / f"shuffled{i}"
        for rel, data in files:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        results.add(measure_tree(root))
    assert results == {measure_tree(tree)}


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), st.one_of(st.none(), st.text(
    "0123456789abcdef", min_size=64, max_size=64)), min_size=1, max_size=8), st.randoms())
def test_encoding_is_order_independent_and_injective_on_paths(entries, rnd):
    items = list(entries.items())
    shuffled = items[:]
    rnd.shuffle(shuffled)
    assert measurement_of_inputs(items) == measurement_of_inputs(shuffled)
    first_path = items[0][0]
    renamed = [(p + "x" if p == first_path else p, d) for p, d in items]
    if len({p for p, _ in renamed}) == len(renamed):
        assert measurement_of_inputs(renamed) != measurement_of_inputs(items)


def test_not_a_project_tree_is_bad_input(tmp_path: Path):
    with pytest.raises(BadInputError, match="not an enclave-aml project tree"):
        measure_tree(tmp_path)
    (tmp_path / "pyproject.toml").write_text("")
    with pytest.raises(BadInputError):
        measure_tree(tmp_path)


def test_cli_prints_the_measurement(tree: Path):
    out = subprocess.run([sys.executable, "-m", "aml.cli", "enclave", "measure", str(tree)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == measure_tree(tree)
    bad = subprocess.run([sys.executable, "-m", "aml.cli", "enclave", "measure",
                          str(tree / "docs")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not an enclave-aml project tree" in bad.stderr
