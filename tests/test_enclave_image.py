"""Static checks of the enclave image definition: pinned, hash-locked, non-root, measured."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

import aml
from aml.core.measure import FIXED_INPUTS, SOURCE_GLOBS

ROOT = Path(aml.__file__).resolve().parents[1]
IMAGE = ROOT / "enclave_image"
DOCKERFILE = (IMAGE / "Dockerfile").read_text()
LOCK = (IMAGE / "requirements.lock").read_text()
# Pinned in constraints.txt for tests and benchmarks only; never installed in the enclave image.
TEST_ONLY = {"pytest", "hypothesis", "pytest-xdist", "execnet", "iniconfig", "snapml"}
# The analyst's side (pyproject extra `bank`: aml report, aml export goaml) runs at the bank only.
TEST_ONLY |= {"matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver", "pillow", "pyparsing",
              "xmlschema", "elementpath"}
TEST_ONLY |= {"import-linter", "grimp"}  # the import contracts, checked in CI


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


INSTR = _instructions(DOCKERFILE)


def _lock_requirements() -> dict[str, tuple[str, list[str]]]:
    reqs = {}
    for block in re.sub(r"\\\n\s*", " ", LOCK).splitlines():
        block = block.split("#", 1)[0].strip()
        if not block:
            continue
        spec = block.split()[0]
        assert "==" in spec, f"lock line not pinned with ==: {spec}"
        name, version = spec.split("==", 1)
        reqs[_norm(name)] = (version, re.findall(r"--hash=sha256:([0-9a-f]+)", block))
    return reqs


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    return pins


def test_every_base_image_is_pinned_by_digest():
    froms = [args for word, args in INSTR if word == "FROM"]
    assert froms
    for args in froms:
        image = args.split()[0]
        assert re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", image), image


def test_no_latest_tag_anywhere():
    assert not re.search(r"latest", DOCKERFILE, re.I)
    assert not re.search(r":latest\b", (IMAGE / "contract.template.yaml").read_text())


def test_dependencies_installed_only_from_the_hash_pinned_lock():
    pip_runs = [args for word, args in INSTR if word == "RUN" and "pip install" in args]
    assert pip_runs
    for args in pip_runs:
        assert "--require-hashes" in args and "--no-deps" in args
        assert "-r enclave_image/requirements.lock" in args


def test_every_lock_entry_is_pinned_with_hashes():
    reqs = _lock_requirements()
    assert len(reqs) > 50
    for name, (version, digests) in reqs.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), (name, version)
        assert digests, f"{name} has no --hash=sha256"
        assert all(len(d) == 64 for d in digests), name


def test_lock_versions_match_constraints_and_hold_no_test_tools():
    reqs, pins = _lock_requirements(), _constraints()
    for name, (version, _) in reqs.items():
        assert name in pins, f"{name} is in the lock but not in constraints.txt"
        assert pins[name] == version, f"{name}: lock {version} != constraints {pins[name]}"
    assert not TEST_ONLY & set(reqs)
    runtime = set(pins) - TEST_ONLY
    assert runtime <= set(reqs), f"missing from the lock: {sorted(runtime - set(reqs))}"


def test_lock_covers_the_project_dependencies():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {_norm(re.split(r"[<>=!~\[; ]", d, 1)[0]) for d in deps}
    assert names <= set(_lock_requirements())


def test_runs_as_a_non_root_user():
    users = [args for word, args in INSTR if word == "USER"]
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # and nothing after the last USER switches back
    last_user = max(i for i, (w, _) in enumerate(INSTR) if w == "USER")
    assert all(w != "USER" for w, _ in INSTR[last_user + 1:])


def test_shells_and_package_managers_are_removed():
    removal = " ".join(args for word, args in INSTR if word == "RUN")
    for tool in ("pip uninstall", "/usr/bin/apt", "/usr/bin/dpkg", "/bin/sh", "/usr/bin/bash"):
        assert tool in removal, tool


def test_entrypoint_is_the_projects_importable_module():
    entry = [args for word, args in INSTR if word == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = json.loads(entry[0])  # exec form: no shell in the image to run a string form
    assert argv[:2] == ["python", "-m"]
    module = importlib.import_module(argv[2])
    assert argv[2].startswith("aml.") and callable(getattr(module, "main"))


def test_everything_copied_into_the_image_is_measured():
    measured_dirs = {d for d, _ in SOURCE_GLOBS}
    for args in (a for w, a in INSTR if w == "COPY"):
        sources = [s for s in args.split() if not s.startswith("--")][:-1]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY source {src} missing"
            assert src in FIXED_INPUTS or src in measured_dirs, f"{src} is not measured"


def test_image_copies_exactly_the_measured_packages():
    """Not the whole of aml/: bank-side code and tools never reach the image."""
    copied = {s for a in (a for w, a in INSTR if w == "COPY")
              for s in [s for s in a.split() if not s.startswith("--")][:-1]}
    assert {d for d, _ in SOURCE_GLOBS} <= copied
    assert not {"aml", "aml/bank", "aml/tools", "aml/cli.py"} & copied


def test_build_context_excludes_unmeasured_files():
    ignore = (IMAGE / "Dockerfile.dockerignore").read_text()
    lines = [l.strip() for l in ignore.splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "**"  # deny by default, allow the measured inputs only
    for pattern in ("**/__pycache__", "**/tests", "**/docs", "**/sample_data"):
        assert pattern in lines
