"""Frozen container test vectors (tests/vectors/container/, made once by tests/vectors/make_vectors.py).

Every file must still give the outcome recorded when it was made: `ok` with the same payload, or
the same error code. A change to the format that keeps sealer and opener consistent with each
other passes every round-trip test but fails here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from aml.core.crypto.container import ENCLAVE, open_bytes, parquet_to_table, read_header
from aml.core.crypto.keys import BankKeyPair
from aml.core.errors import AmlError
from aml.core.schema import TRANSACTION_SCHEMA

DIR = Path(__file__).resolve().parent / "vectors" / "container"
MANIFEST = json.loads((DIR / "manifest.json").read_text())
KEYS = {name: BankKeyPair(X25519PrivateKey.from_private_bytes(bytes.fromhex(k["x25519_private"])),
                          Ed25519PrivateKey.from_private_bytes(bytes.fromhex(k["ed25519_private"])),
                          None if name == ENCLAVE else name)
        for name, k in MANIFEST["keys"].items()}


def test_manifest_covers_every_file_and_both_outcomes():
    files = {v["file"] for v in MANIFEST["vectors"]}
    assert files == {p.name for p in DIR.iterdir() if p.name != "manifest.json"}
    outcomes = [v["expected"] for v in MANIFEST["vectors"]]
    assert outcomes.count("ok") >= 5 and len(set(outcomes) - {"ok"}) >= 7
    assert sum(p.stat().st_size for p in DIR.iterdir()) < 200_000
    assert all(KEYS[name].key_id == k["key_id"] for name, k in MANIFEST["keys"].items())


@pytest.mark.parametrize("vector", MANIFEST["vectors"], ids=lambda v: v["file"])
def test_vector_gives_its_recorded_outcome(vector):
    data = (DIR / vector["file"]).read_bytes()
    reader = vector["opened_by"]
    sender = KEYS["B01" if reader == ENCLAVE else ENCLAVE].public
    try:
        header, payload = open_bytes(data, KEYS[reader], sender, reader, now=MANIFEST["now"])
        got = "ok"
    except AmlError as exc:
        got = exc.code
    assert got == vector["expected"], vector["note"]
    if got == "ok":
        assert header.batch_id == vector["batch_id"] and header == read_header(data)
        assert len(payload) == vector["payload_len"]
        assert hashlib.sha256(payload).hexdigest() == vector["payload_sha256"]
        if header.row_count:  # the real batch: its Parquet payload still decodes to the rows
            assert parquet_to_table(payload, TRANSACTION_SCHEMA).num_rows == header.row_count == 3
