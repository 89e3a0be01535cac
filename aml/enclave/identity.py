"""The enclave's identity and key custody (simulated attestation).

`aml enclave init` creates, under ENCLAVE_DIR:

    authority/authority.key  development attestation authority (Ed25519), mode 0600
    keys/enclave.key         the enclave's X25519 + Ed25519 keys and a 32-byte storage key, 0600
    members/<bank>.pub       the member banks' public keys
    attestation.json         statement (measurement, enclave keys, members, config hash) + evidence
    policy.json              the policy a bank pins: verifier, allowed measurements, membership, trust

In production the enclave generates its keys inside the TEE and they never leave it; the
platform (e.g. Hyper Protect) signs the evidence. Here both are files on disk: this is a
development stand-in and every output says so.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import aml
from aml.core.crypto import container
from aml.core.crypto.attestation import (
    ATTESTATION_FORMAT, POLICY_FORMAT, SIMULATED_WARNING, membership_hash, sign_simulated_statement,
)
from aml.core.crypto.keys import (
    PublicKeys, check_bank_id, keypair_from_json, load_public, raw_private, raw_public,
    read_private_json, write_private_json,
)
from aml.core.errors import BadInputError, FormatError, KeyFileError

ENCLAVE_KEY_FORMAT = "aml-enclave-key/1"
AUTHORITY_KEY_FORMAT = "aml-authority-key/1"
ALERT_LIFETIME_SECONDS = 30 * 24 * 3600  # a bank may open alerts days after a run


def project_root() -> Path:
    return Path(aml.__file__).resolve().parents[1]


@dataclass(frozen=True, eq=False)
class EnclaveKeys:
    """The enclave's private keys. Loaded only inside the enclave worker."""

    x25519: X25519PrivateKey
    ed25519: Ed25519PrivateKey
    storage_key: bytes = field(repr=False)  # seals the enclave's own history at rest

    @property
    def public(self) -> PublicKeys:
        return PublicKeys(self.x25519.public_key(), self.ed25519.public_key(), container.ENCLAVE)

    @property
    def key_id(self) -> str:
        return self.public.key_id


def _paths(enclave_dir: Path) -> dict[str, Path]:
    d = Path(enclave_dir)
    return {
        "authority": d / "authority" / "authority.key",
        "keys": d / "keys" / "enclave.key",
        "members": d / "members",
        "attestation": d / "attestation.json",
        "policy": d / "policy.json",
    }


def _config_hash() -> str:
    import hashlib

    path = project_root() / "aml" / "detect" / "default_config.toml"
    return hashlib.sha256(path.read_bytes() if path.is_file() else b"").hexdigest()


def _member_keys(members_dir: Path) -> dict[str, PublicKeys]:
    members_dir = Path(members_dir)
    if not members_dir.is_dir():
        raise BadInputError(f"members directory '{members_dir}' does not exist")
    members: dict[str, PublicKeys] = {}
    for pub_path in sorted(members_dir.glob("*.pub")):
        bank = check_bank_id(pub_path.stem)
        pub = load_public(pub_path)
        if pub.bank not in (None, bank):
            raise KeyFileError(f"'{pub_path}' holds the key of bank '{pub.bank}', not '{bank}'")
        members[bank] = PublicKeys(pub.x25519, pub.ed25519, bank)
    if not members:
        raise BadInputError(f"no member public keys (*.pub) in '{members_dir}'")
    return members


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def init_enclave(enclave_dir: Path, members_dir: Path, force: bool = False) -> dict:
    """Create the enclave's keys, member list, simulated attestation and policy.

    Refuses an already initialised directory unless `force` (which rotates every key: banks
    must then re-verify and re-pin)."""
    from aml.core.measure import measure_tree

    paths = _paths(enclave_dir)
    existing = [p for k, p in paths.items() if k != "members" and p.exists()]
    if existing and not force:
        raise BadInputError(
            f"'{enclave_dir}' is already initialised; refusing to rotate the enclave keys (use --force to start over)"
        )
    members = _member_keys(members_dir)
    if force:
        for p in existing + sorted(paths["members"].glob("*.pub")):
            p.unlink()
    for sub in ("authority", "keys"):
        (Path(enclave_dir) / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    paths["members"].mkdir(parents=True, exist_ok=True)

    authority = Ed25519PrivateKey.generate()
    write_private_json(paths["authority"], {"format": AUTHORITY_KEY_FORMAT, "ed25519": raw_private(authority).hex()})
    keys = EnclaveKeys(X25519PrivateKey.generate(), Ed25519PrivateKey.generate(), os.urandom(32))
    write_private_json(paths["keys"], {
        "format": ENCLAVE_KEY_FORMAT, "bank": container.ENCLAVE, "x25519": raw_private(keys.x25519).hex(),
        "ed25519": raw_private(keys.ed25519).hex(), "storage_key": keys.storage_key.hex(), "key_id": keys.key_id,
    })
    for bank, pub in members.items():
        _write_json(paths["members"] / f"{bank}.pub", pub.to_json())

    member_table = {bank: {"x25519": p.x25519_raw.hex(), "ed25519": p.ed25519_raw.hex()} for bank, p in members.items()}
    statement = {
        "measurement": measure_tree(project_root()),
        "enclave_x25519": raw_public(keys.x25519.public_key()).hex(),
        "enclave_ed25519": raw_public(keys.ed25519.public_key()).hex(),
        "enclave_key_id": keys.key_id,
        "members": member_table,
        "membership_hash": membership_hash(member_table),
        "config_hash": _config_hash(),
        "issued": int(time.time()),
        "simulated": True,
        "warning": SIMULATED_WARNING,
    }
    evidence = sign_simulated_statement(statement, authority)
    _write_json(paths["attestation"], {
        "format": ATTESTATION_FORMAT, "verifier": "simulated", "statement": statement, "evidence": evidence,
    })
    from aml.enclave.state import init_state

    # The enclave's sealed state starts here, bound to this key and this membership: at run
    # time the enclave uses the attested member table and refuses key files that differ.
    init_state(enclave_dir, keys.storage_key, keys.key_id, statement["membership_hash"])
    _write_json(paths["policy"], {
        "format": POLICY_FORMAT, "verifier": "simulated", "allowed_measurements": [statement["measurement"]],
        "membership_hash": statement["membership_hash"], "trust": {"authority_public": evidence["authority_public"]},
    })
    return {
        "WARNING": SIMULATED_WARNING,
        "measurement": statement["measurement"],
        "enclave key id": keys.key_id,
        "members": ", ".join(f"{b} ({p.key_id})" for b, p in members.items()),
        "membership hash": statement["membership_hash"],
        "attestation": str(paths["attestation"]),
        "policy": str(paths["policy"]),
    }


def load_enclave_keys(enclave_dir: Path) -> EnclaveKeys:
    """The enclave's private keys (call only inside the enclave worker)."""
    path = _paths(enclave_dir)["keys"]
    doc = read_private_json(path, ENCLAVE_KEY_FORMAT)
    pair = keypair_from_json(doc, path)
    try:
        storage_key = bytes.fromhex(doc.get("storage_key", ""))
    except (TypeError, ValueError):
        storage_key = b""
    if len(storage_key) != 32:
        raise KeyFileError(f"'{path}': storage_key must be 64 hex characters")
    return EnclaveKeys(pair.x25519, pair.ed25519, storage_key)


def load_members(enclave_dir: Path) -> dict[str, PublicKeys]:
    """bank id -> public keys, from ENCLAVE_DIR/members/*.pub. Untrusted files: inside the
    enclave the member table is the attested one (`aml.enclave.state.attested_members`)."""
    return _member_keys(_paths(enclave_dir)["members"])


# --- sealing helpers for the flow (run inside the enclave worker) -------------------------

def seal_alerts(table, bank: str, bank_public: PublicKeys, enclave_keys: EnclaveKeys, run_id: str,
                sequence: int, provenance: dict, now: int | None = None, pad_to: int = 0) -> bytes:
    """One bank's alerts (ALERT_SCHEMA) as a padded, sealed "alerts" file from the enclave.

    The cleartext header's row_count is always 0 for alert files: the operator sees headers,
    and the number of alerts a bank received is exactly what padding is meant to hide.
    `pad_to`: plaintext length to pad to (see aml/enclave/alert_files.py: one size per run)."""
    from aml.core.schema import ALERT_SCHEMA, SCHEMA_VERSION

    created = int(time.time()) if now is None else now
    header = container.Header(
        kind="alerts", sender=container.ENCLAVE, recipient=bank, batch_id=run_id, sequence=sequence,
        created=created, expires=created + ALERT_LIFETIME_SECONDS, schema_version=SCHEMA_VERSION,
        row_count=0, recipient_key_id=bank_public.key_id, sender_key_id=enclave_keys.key_id,
        provenance=dict(provenance),
    )
    payload = container.table_to_parquet(table, ALERT_SCHEMA)
    return container.seal_bytes(payload, header, bank_public, enclave_keys, pad=True, pad_to=pad_to)


def open_batch(path_or_bytes, enclave_keys: EnclaveKeys, sender_public: PublicKeys, now: int | None = None,
               limits=None):
    """Verify and decrypt one bank's sealed batch: (Header, pa.Table in TRANSACTION_SCHEMA).
    The payload is checked against `limits` (`PayloadLimits`, default: the config's) before it
    is decoded. Replay (sequence) checks stay with the caller's ledger: see `container.check_sequence`."""
    from aml.enclave.payload import PayloadLimits, read_batch_payload
    from aml.core.errors import SignatureError
    from aml.core.schema import TRANSACTION_SCHEMA

    claimed = container.read_header(path_or_bytes)
    if claimed.sender_key_id != sender_public.key_id:
        raise SignatureError("the header's sender_key_id is not the member's attested key id",
                             batch_id=claimed.batch_id)
    header, payload = container.open_bytes(path_or_bytes, enclave_keys, sender_public, container.ENCLAVE, now=now)
    if header.kind != "batch":
        raise FormatError(f"expected a batch file, got kind '{header.kind}'", batch_id=header.batch_id)
    table = read_batch_payload(payload, TRANSACTION_SCHEMA, header.row_count,
                               limits or PayloadLimits.from_config(), batch_id=header.batch_id)
    return header, table
