"""`aml keygen`: create a bank's key pairs (runs at the bank; imports no Prefect)."""

from __future__ import annotations

from pathlib import Path

from aml.core.crypto.keys import write_keypair


def keygen(bank: str, out: Path) -> tuple[Path, Path]:
    """Write OUT/<bank>.key (private, 0600) and OUT/<bank>.pub; refuses to overwrite."""
    return write_keypair(bank, Path(out))
