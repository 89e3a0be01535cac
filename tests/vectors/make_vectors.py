"""Produce the frozen container test vectors in tests/vectors/container/ (run ONCE, then commit).

    PYTHONPATH=. python tests/vectors/make_vectors.py [--force]

Like age's test kit: a handful of valid and invalid sealed files with the outcome a correct
format-v1 reader must give each (`ok` plus the payload's SHA-256, or the error code), read by
tests/test_vectors.py. The files are produced by today's code and then never regenerated: a
format change that stays self-consistent (sealer and opener changed together) makes the frozen
files fail. Keys are derived from fixed labels (test keys, published on purpose); HPKE's
ephemeral key and the data key are random, so a rerun makes different bytes with the same
outcomes - which is why the files, not this script, are the reference.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from aml.core.crypto.container import ENCLAVE, Header, open_bytes, seal_bytes, table_to_parquet
from aml.core.crypto.keys import BankKeyPair, raw_private
from aml.core.errors import AmlError
from attacks.cases import flip_bit, layout, replace_header, resign

OUT = Path(__file__).resolve().parent / "container"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z: the clock the test opens every vector at


def fixed_pair(label: str, bank: str | None) -> BankKeyPair:
    seed = lambda part: hashlib.sha256(f"aml test vector key {label} {part}".encode()).digest()  # noqa: E731
    return BankKeyPair(X25519PrivateKey.from_private_bytes(seed("x25519")),
                       Ed25519PrivateKey.from_private_bytes(seed("ed25519")), bank)


KEYS = {"B01": fixed_pair("B01", "B01"), "B02": fixed_pair("B02", "B02"), ENCLAVE: fixed_pair("enclave", None)}


def header(sender="B01", recipient=ENCLAVE, **over) -> Header:
    fields = dict(kind="batch" if sender != ENCLAVE else "alerts", sender=sender, recipient=recipient,
                  batch_id=f"vec{over.pop('n', 0):04d}", sequence=7, created=NOW - 3600, expires=NOW + 86_400,
                  schema_version=1, row_count=0, recipient_key_id=KEYS[recipient].key_id,
                  sender_key_id=KEYS[sender].key_id, provenance={}, chunk_size=64)
    fields.update(over)
    return Header(**fields)


def sealed(payload: bytes, pad: bool = False, signer: str | None = None, **over) -> bytes:
    h = header(**over)
    return seal_bytes(payload, h, KEYS[h.recipient].public, KEYS[signer or h.sender], pad=pad)


def with_header_json(data: bytes, edit) -> bytes:
    lay = layout(data)
    doc = json.loads(data[lay.header[0]:lay.header[1]])
    return replace_header(data, edit(doc))


def main(force: bool) -> int:
    if (OUT / "manifest.json").exists() and not force:
        print(f"{OUT}/manifest.json exists: the vectors are frozen (pass --force to replace them)", file=sys.stderr)
        return 1
    import pyarrow as pa

    from aml.core.schema import TRANSACTION_SCHEMA

    payload = bytes(range(256)) * 3 + b"tail"  # 772 bytes: 13 chunks of 64
    rows = pa.Table.from_pylist([
        dict(txn_id=f"v{i}", timestamp=NOW * 1_000_000, src_bank="B01", src_account=f"A{i}", dst_bank="B02",
             dst_account="C1", amount=10.0 + i, currency="USD", amount_received=10.0 + i,
             receiving_currency="USD", payment_format="Wire", label=None) for i in range(3)],
        schema=TRANSACTION_SCHEMA)
    parquet = table_to_parquet(rows, TRANSACTION_SCHEMA)
    base = sealed(payload)
    lay = layout(base)
    b01 = KEYS["B01"]

    vectors: dict[str, tuple[bytes, str, str, str]] = {}  # name -> (file bytes, opened by, note, payload)

    def add(name: str, data: bytes, note: str, opened_by: str = ENCLAVE) -> None:
        vectors[name] = (data, opened_by, note)

    add("ok_multichunk", base, "13 chunks of 64 bytes, last one short")
    add("ok_empty", sealed(b"", n=1), "empty payload: one chunk holding only the length prefix")
    add("ok_exact_chunks", sealed(bytes(120), n=2), "8-byte prefix + 120 bytes = exactly 2 chunks of 64")
    add("ok_default_chunk", sealed(payload, n=3, chunk_size=1 << 20), "one chunk, default chunk size")
    add("ok_batch_parquet", sealed(parquet, n=4, row_count=3, chunk_size=1 << 20),
        "a real batch: Parquet of 3 rows in TRANSACTION_SCHEMA")
    add("ok_alerts_padded", sealed(payload, pad=True, n=5, sender=ENCLAVE, recipient="B01"),
        "an alert file from the enclave to B01, Padme-padded", opened_by="B01")
    add("ok_provenance", sealed(payload, n=6, provenance={"run_id": "r1", "batches": ["a", "b"]}),
        "a header with a provenance object")
    add("bad_magic", b"AMLSEAX" + base[7:], "magic changed")
    add("bad_version", base[:7] + b"\x02" + base[8:], "format version byte 2")
    seq_at = base.index(b'"sequence":7', lay.header[0]) + len(b'"sequence":')
    add("header_flip", flip_bit(base, seq_at), "sequence 7 -> 6 by one bit in the header, not re-signed")
    add("header_flip_invalid_json", flip_bit(base, lay.header[0]), "the header's opening brace altered")
    add("header_not_canonical", resign(with_header_json(base, lambda d: json.dumps(d, sort_keys=True).encode()), b01),
        "the same header with whitespace, re-signed")
    add("header_unknown_field", resign(with_header_json(
        base, lambda d: json.dumps(dict(d, extra=1), sort_keys=True, separators=(",", ":")).encode()), b01),
        "a field the format does not define, re-signed")
    add("header_changed_resigned", resign(with_header_json(
        base, lambda d: json.dumps(dict(d, sequence=8), sort_keys=True, separators=(",", ":")).encode()), b01),
        "sequence changed and re-signed by the sender: the wrapped key is bound to the header")
    add("wrapped_key_flip_resigned", resign(flip_bit(base, lay.wrapped[0] + 40), b01), "wrapped key altered, re-signed")
    add("commitment_flip_resigned", resign(flip_bit(base, lay.commitment[0]), b01), "key commitment altered, re-signed")
    add("chunk_flip", flip_bit(base, lay.chunks[3][0] + 1), "one bit in chunk 3, not re-signed")
    add("chunk_flip_resigned", resign(flip_bit(base, lay.chunks[3][0] + 1), b01), "one bit in chunk 3, re-signed")
    parts = [base[a:b] for a, b in lay.chunks]
    swapped = base[:lay.chunks[0][0]] + parts[1] + parts[0] + b"".join(parts[2:]) + base[lay.signature[0]:]
    add("chunks_swapped_resigned", resign(swapped, b01), "chunks 0 and 1 swapped, re-signed")
    short = (base[:lay.payload_len_at] + struct.pack(">Q", lay.chunk_size * (len(parts) - 1))
             + base[lay.payload_len_at + 8:lay.chunks[0][0]] + b"".join(parts[:-1]) + base[lay.signature[0]:])
    add("last_chunk_dropped_resigned", resign(short, b01), "final chunk dropped, payload_len fixed, re-signed")
    add("truncated", base[:-100], "cut inside the last chunk")
    add("trailing_byte", base + b"\x00", "one byte after the signature")
    add("signed_by_other_bank", resign(sealed(payload, n=7), KEYS["B02"]), "claims B01, signed with B02's key")
    add("wrong_recipient", sealed(payload, n=8, recipient="B02"), "sealed to B02, opened as the enclave")
    add("expired", sealed(payload, n=9, created=NOW - 7200, expires=NOW - 1), "expired a second before NOW")

    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": "aml-test-vectors/1", "now": NOW,
        "about": "format-v1 sealed files and the outcome a reader must give; see tests/vectors/make_vectors.py",
        "keys": {name: {"x25519_private": raw_private(k.x25519).hex(), "ed25519_private": raw_private(k.ed25519).hex(),
                        "key_id": k.key_id} for name, k in KEYS.items()},
        "vectors": [],
    }
    for name, (data, opened_by, note) in vectors.items():
        suffix = ".amlb" if opened_by == ENCLAVE else ".amla"
        (OUT / f"{name}{suffix}").write_bytes(data)
        try:
            got_header, got = open_bytes(data, KEYS[opened_by], KEYS["B01" if opened_by == ENCLAVE else ENCLAVE].public,
                                         opened_by, now=NOW)
            outcome = {"expected": "ok", "payload_sha256": hashlib.sha256(got).hexdigest(), "payload_len": len(got),
                       "batch_id": got_header.batch_id}
        except AmlError as exc:
            outcome = {"expected": exc.code}
        if name.startswith("ok_") != (outcome["expected"] == "ok"):
            raise SystemExit(f"vector {name}: unexpected outcome {outcome['expected']}")
        manifest["vectors"].append({"file": f"{name}{suffix}", "opened_by": opened_by, "note": note, **outcome})
        print(f"{name:32} {outcome['expected']}")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main("--force" in sys.argv[1:]))
