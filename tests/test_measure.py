"""The enclave measurement: deterministic, covers exactly the image inputs."""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aml
from aml.core.measure import measure_tree, measurement_inputs, measurement_of_inputs
from aml.core.errors import BadInputError

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
    return root / "aml" / "core" / "errors.py"


def test_copy_of_tree_measures_the_same(tree: Path):
    assert measure_tree(tree) == measure_tree(tree)
    other = tree.parent / "copy2"
    shutil.copytree(tree, other)
    assert measure_tree(other) == measure_tree(tree)
    value = measure_tree(tree)
    assert len(value) == 64 and set(value) <= set("0123456789abcdef")
    # Recomputable by an auditor from the documented encoding alone.
    import json
    body = json.dumps([[path, digest] for path, digest in measurement_inputs(tree)], separators=(",", ":"))
    assert value == hashlib.sha256(b"enclave-aml/measurement/v1\n" + body.encode()).hexdigest()


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
    cfg = tree / "aml" / "enclave" / "detect" / "default_config.toml"
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
                                 "aml/tools/synth/original.py", "aml/bank/seal.py", "aml/cli.py",
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


# --- end to end: a policy pinned to an older measurement makes `aml seal` refuse ------------------
def _aml(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aml.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_seal_refuses_a_policy_pinned_to_an_older_measurement(tmp_path: Path):
    import json

    keys, enclave, inbox = tmp_path / "keys", tmp_path / "enclave", tmp_path / "inbox"
    for bank in ("bank-a", "bank-b"):
        assert _aml("keygen", "--bank", bank, "--out", str(keys), cwd=tmp_path).returncode == 0
    init = _aml("enclave", "init", "--dir", str(enclave), "--members", str(keys), cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    current = json.loads((enclave / "attestation.json").read_text())["statement"]["measurement"]
    assert f"measurement: {current}" in init.stdout  # init reports the value measured from the tree

    batch = tmp_path / "batch.csv"
    batch.write_text(
        "txn_id,timestamp,src_bank,src_account,dst_bank,dst_account,amount,currency,"
        "amount_received,receiving_currency,payment_format,label\n"
        "t1,2026-01-01T00:00:00Z,bank-a,A1,bank-b,B1,100.0,USD,100.0,USD,Wire,\n")
    policy_path = tmp_path / "bank-a" / "policy.json"  # the bank's pinned copy
    policy_path.parent.mkdir()
    policy_path.write_bytes((enclave / "policy.json").read_bytes())
    seal_args = ("seal", "--bank", "bank-a", "--key", str(keys / "bank-a.key"),
                 "--attestation", str(enclave / "attestation.json"), "--policy", str(policy_path),
                 "--allow-simulated", str(batch), "--out", str(inbox))
    ok = _aml(*seal_args, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr  # the freshly pinned policy accepts

    old = hashlib.sha256(b"the tree as it was last release").hexdigest()
    policy = json.loads(policy_path.read_text())
    policy["allowed_measurements"] = [old]
    policy_path.write_text(json.dumps(policy))
    refused = _aml(*seal_args, cwd=tmp_path)
    assert refused.returncode == 3
    assert current in refused.stderr and old in refused.stderr
    assert len(refused.stderr.strip().splitlines()) <= 2  # the refusal line (+ simulated warning at most)
    assert len(list(inbox.glob("*.amlb"))) == 1  # nothing new was sealed


def test_cli_inputs_lists_every_measured_file_then_the_value(tree: Path):
    out = subprocess.run([sys.executable, "-m", "aml.cli", "enclave", "measure", "--inputs", str(tree)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[-1] == measure_tree(tree)
    listed = [line.split("  ", 1) for line in out[:-1]]
    assert [(p, None if d.strip() == "absent" else d.strip()) for d, p in listed] == measurement_inputs(tree)
