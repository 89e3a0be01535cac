"""The enclave work area: the only place decrypted rows ever touch a disk.

Each run gets ENCLAVE_DIR/work/<run_id> (mode 0700). It is removed when the run ends, whether
it succeeded or failed; a run killed outright (SIGKILL, power loss) leaves it behind, so every
run first removes whatever earlier runs left. Callers hold the run lock (`aml.operator.ledger.run_lock`),
so no other run can be using those directories.

The outside (flow) process only creates and deletes these directories; it never reads files in
them except sealed alert files and the encrypted history, which are ciphertext.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

WORK_DIR_NAME = "work"


def work_root(enclave_dir: Path) -> Path:
    return Path(enclave_dir) / WORK_DIR_NAME


def remove_stale_work_areas(enclave_dir: Path) -> int:
    """Remove every work area an interrupted run left behind; returns how many."""
    root = work_root(enclave_dir)
    if not root.is_dir():
        return 0
    removed = 0
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


@contextmanager
def work_area(enclave_dir: Path, run_id: str) -> Iterator[Path]:
    """Create a fresh work area for `run_id` and remove it when the block ends."""
    root = work_root(enclave_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = root / run_id
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
