"""`aml seal`: verify the enclave's attestation, then seal one transaction batch to it.

Runs at the bank. Imports no Prefect. The order matters: nothing is encrypted to a key until
the attestation behind that key has verified against the bank's pinned policy.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

from aml.core.crypto.attestation import AttestedEnclave, verify_attestation
from aml.core.crypto.container import ENCLAVE, Header, seal_file, table_to_parquet
from aml.core.crypto.keys import BankKeyPair, PublicKeys, check_bank_id, load_keypair
from aml.core.errors import AttestationError, BadInputError, ConfigError, KeyFileError, MembershipError

SEALED_FORMAT = "aml-sealed/1"


def check_pinned_policy(attestation: Path, policy: Path | None) -> Path:
    """The bank's own pinned policy: required, and never the copy in the attestation's folder.

    The operator publishes attestation.json and policy.json side by side; an operator who ran its
    own `aml enclave init` publishes a policy that trusts its own key. A policy the bank pinned
    (copied and reviewed once, kept in its own folder) is what makes the attestation check mean
    anything, so the operator's folder is refused even when the two files are identical today."""
    if policy is None:
        raise ConfigError("--policy is required: pass the bank's own pinned copy of the policy "
                          "(see docs/bank-guide.md, 'Pin the policy')")
    policy, attestation = Path(policy), Path(attestation)
    # resolve(): a symlink from the bank's folder into the operator's folder is refused too.
    if policy.resolve().parent == attestation.resolve().parent:
        raise ConfigError(f"policy '{policy}' sits in the attestation's own folder (the operator's copy); "
                          "copy it once into a bank-local folder, review it, and pass that copy with --policy")
    return policy


def verified_enclave(attestation: Path, policy: Path | None, allow_simulated: bool = False) -> AttestedEnclave:
    """The attestation verified against the bank's pinned policy; simulated only when allowed."""
    enclave = verify_attestation(Path(attestation), check_pinned_policy(attestation, policy))
    if enclave.simulated:
        if not allow_simulated:
            raise AttestationError("the attestation is SIMULATED (development only, not confidential); "
                                   "pass --allow-simulated to accept it for a test or demo consortium")
        print("aml: WARNING: SIMULATED attestation accepted (--allow-simulated) - development only, "
              "NOT confidential: the operator can read everything sealed to it", file=sys.stderr)
    return enclave


def load_member_key(bank: str, key: Path, enclave: AttestedEnclave) -> BankKeyPair:
    """The bank's key pair, checked to be the one the attested membership lists for `bank`."""
    check_bank_id(bank)
    pair = load_keypair(Path(key))
    if pair.bank not in (None, bank):
        raise KeyFileError(f"key file '{key}' belongs to bank '{pair.bank}', not '{bank}'")
    listed = enclave.members.get(bank)
    if listed is None:
        raise MembershipError(f"bank '{bank}' is not in the attested membership")
    expected = PublicKeys.from_raw(bytes.fromhex(listed["x25519"]), bytes.fromhex(listed["ed25519"]))
    if expected != pair.public:
        raise MembershipError(
            f"the attested membership lists key {expected.key_id} for '{bank}', but '{key}' holds {pair.key_id}"
        )
    return pair


def _sequence_path(key: Path, bank: str) -> Path:
    return Path(key).parent / f"{bank}.seq"


def latest_batch_path(key: Path, bank: str) -> Path:
    """Beside the key: the bank's latest sealed batch (id, sequence, enclave key), which `aml open`
    looks for in the alert files' provenance."""
    return Path(key).parent / f"{bank}.sealed.json"


def read_state(path: Path, fmt: str) -> dict | None:
    """A bank-side state file (JSON object with "format": fmt), or None when there is none yet."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise BadInputError(f"state file '{path}' is unreadable or not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise BadInputError(f"state file '{path}' is not an {fmt} document")
    return doc


def _last_sequence(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    if not text.isdigit():
        raise BadInputError(f"sequence file '{path}' does not hold a number")
    return int(text)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_batch(file: Path, bank: str):
    """The file's good rows (TRANSACTION_SCHEMA); quarantined rows are counted on stderr."""
    from aml.core.schema import read_validated

    result = read_validated(Path(file), bank_id=bank)
    if result.counts:
        detail = ", ".join(f"{reason}={n}" for reason, n in sorted(result.counts.items()))
        print(f"aml: {sum(result.counts.values())} rows not sealed ({detail})", file=sys.stderr)
        if result.good.num_rows == 0:
            raise BadInputError("no valid rows to seal")
    return result.good


def seal(bank: str, key: Path, attestation: Path, file: Path, inbox: Path, *, policy: Path,
         allow_simulated: bool = False, sequence: int | None = None, expires_hours: float = 72.0) -> Path:
    """Seal FILE to the attested enclave as INBOX/<bank>-<sequence:08d>-<batch_id>.amlb."""
    from aml.core.schema import SCHEMA_VERSION, TRANSACTION_SCHEMA

    if not expires_hours > 0:
        raise BadInputError("--expires-hours must be positive")
    enclave = verified_enclave(attestation, policy, allow_simulated)
    pair = load_member_key(bank, key, enclave)
    seq_path = _sequence_path(key, bank)
    last = _last_sequence(seq_path)
    if sequence is None:
        sequence = last + 1
    elif sequence < 1:
        raise BadInputError("--sequence must be at least 1")
    elif sequence <= last:
        print(f"aml: warning: sequence {sequence} is not above the last sealed {last}; "
              "the enclave rejects it unless it never accepted the higher ones", file=sys.stderr)

    table = _read_batch(Path(file), bank)
    enclave_keys = PublicKeys.from_raw(enclave.x25519_public, enclave.ed25519_public, ENCLAVE)
    now = int(time.time())
    header = Header(
        kind="batch", sender=bank, recipient=ENCLAVE, batch_id=uuid.uuid4().hex, sequence=sequence,
        created=now, expires=now + int(expires_hours * 3600), schema_version=SCHEMA_VERSION,
        row_count=table.num_rows, recipient_key_id=enclave_keys.key_id, sender_key_id=pair.key_id,
        provenance={},
    )
    inbox = Path(inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    out = inbox / f"{bank}-{sequence:08d}-{header.batch_id}.amlb"
    seal_file(table_to_parquet(table, TRANSACTION_SCHEMA), out, header, enclave_keys, pair)
    if sequence > last:
        write_atomically(seq_path, f"{sequence}\n".encode())
        record = {"format": SEALED_FORMAT, "bank": bank, "sequence": sequence, "batch_id": header.batch_id,
                  "created": now, "enclave_key_id": enclave_keys.key_id}
        write_atomically(latest_batch_path(key, bank), (json.dumps(record, sort_keys=True) + "\n").encode())
    return out
