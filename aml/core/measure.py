"""The enclave measurement: one hex digest of exactly the inputs that define the enclave image.

The image is built from the Dockerfile, the hash-pinned lock, the project metadata and the
part of the project's source that the image runs (`aml/__init__.py` and `IMAGE_PACKAGES`:
shared core, enclave, operator flow), so those - and only those - are measured. Bank-side code (`aml/bank`) and tools
(`aml/tools`: synth, evaluate, demo, contract builder) never reach the image, so editing them keeps
the measurement. Banks pin this value in their
policy; the attestation reports it. Docs, tests and sample data do not change what runs in the
enclave, so editing them keeps the measurement.

Encoding (version 1), so an auditor can recompute it with any tool::

    sha256( b"enclave-aml/measurement/v1\\n" + canonical JSON of
            [[relative posix path, sha256 hex of the file's bytes | null if absent], ...] )

sorted by path. The fixed inputs are always listed: a missing one is recorded as ``null``
rather than skipped, so deleting e.g. the lock file changes the value.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from aml.core.errors import BadInputError
from aml.core.crypto.digest import sha256_file

MEASUREMENT_LABEL = b"enclave-aml/measurement/v1\n"

# Always recorded, present or not.
FIXED_INPUTS = (
    "enclave_image/Dockerfile",
    "enclave_image/Dockerfile.dockerignore",  # decides what the COPY steps can see
    "enclave_image/requirements.lock",
    "pyproject.toml",
    "constraints.txt",
    "aml/__init__.py",
)
# The packages the image copies and runs (the Dockerfile's COPY steps name exactly these).
# Everything else under aml/ (bank, tools, cli) is never in the image and never measured.
IMAGE_PACKAGES = ("aml/core", "aml/enclave", "aml/operator", "flows")
# (directory, glob) pairs: the image's source and package data (detection's TOML).
SOURCE_GLOBS = tuple((package, pattern) for package in IMAGE_PACKAGES for pattern in ("*.py", "*.toml"))
# Directory names that never reach the image's behaviour.
EXCLUDED_DIRS = frozenset({"__pycache__", "tests", "docs", "sample_data"})


def _excluded(rel: Path) -> bool:
    return any(part in EXCLUDED_DIRS or part.startswith(".") for part in rel.parts)




def measurement_inputs(root: Path) -> list[tuple[str, str | None]]:
    """The measured (relative posix path, sha256 hex or None when absent) pairs, sorted by path."""
    root = Path(root)
    if not (root / "pyproject.toml").is_file() or not (root / "aml").is_dir():
        raise BadInputError(
            f"{root} is not an enclave-aml project tree (needs pyproject.toml and aml/)"
        )
    entries: dict[str, str | None] = {}
    for rel in FIXED_INPUTS:
        p = root / rel
        entries[rel] = sha256_file(p) if p.is_file() else None
    for directory, pattern in SOURCE_GLOBS:
        base = root / directory
        if not base.is_dir():
            continue
        for p in base.rglob(pattern):
            rel = p.relative_to(root)
            if p.is_file() and not _excluded(rel):
                entries[rel.as_posix()] = sha256_file(p)
    return sorted(entries.items())


def measurement_of_inputs(inputs: list[tuple[str, str | None]]) -> str:
    """The measurement of an explicit input list (what `measure_tree` hashes)."""
    body = json.dumps([[path, digest] for path, digest in sorted(inputs)],
                      separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(MEASUREMENT_LABEL + body.encode("ascii")).hexdigest()


def measure_tree(root: Path) -> str:
    """Hex sha256 measurement of the project tree at ``root`` (see the module docstring)."""
    return measurement_of_inputs(measurement_inputs(Path(root)))
