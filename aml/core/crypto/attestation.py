"""Attestation: what a bank checks before it seals anything to the enclave.

An attestation document binds the enclave's public keys to the measurement of the code it
runs, the consortium membership and the detection configuration. Verifiers for different
platforms sit behind one interface (`AttestationVerifier`); the bank's pinned policy names
which verifier it accepts.

Document layout (JSON, ``attestation.json``)::

    {"format": "aml-attestation/1",
     "verifier": "simulated" | "hyper-protect",
     "statement": {measurement, enclave_x25519, enclave_ed25519, members, membership_hash,
                   config_hash, issued, ...},
     "evidence": {... verifier-specific ...}}

Policy layout (JSON, ``policy.json``, pinned by each bank)::

    {"format": "aml-policy/1", "verifier": "...", "allowed_measurements": [hex, ...],
     "membership_hash": hex, "trust": {... verifier-specific anchors ...}}
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aml.core.crypto.container import canonical_json
from aml.core.errors import AttestationError, BadInputError, ConfigError

ATTESTATION_FORMAT = "aml-attestation/1"
POLICY_FORMAT = "aml-policy/1"


@dataclass(frozen=True)
class AttestedEnclave:
    """What a verified attestation tells a bank. Only ever built by a verifier."""

    verifier: str  # "simulated" | "hyper-protect"
    simulated: bool  # True: development only, NOT confidential
    measurement: str  # hex digest of the enclave image inputs (aml enclave measure)
    x25519_public: bytes  # raw 32 bytes: banks seal batches to this key
    ed25519_public: bytes  # raw 32 bytes: the enclave signs alert files with this key
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # bank -> {"x25519": hex, "ed25519": hex}
    membership_hash: str = ""
    config_hash: str = ""
    document_hash: str = ""  # sha256 hex of the attestation file's bytes


class AttestationVerifier(Protocol):
    """One platform's verifier. ``verify`` raises `aml.core.errors.AttestationError` with a
    message that says which check failed; it never returns a half-checked result."""

    name: str

    def verify(self, document: dict, policy: dict, document_bytes: bytes) -> AttestedEnclave: ...


# --- shared helpers ------------------------------------------------------------------------

SIMULATED_STATEMENT_LABEL = b"aml-attestation/1 simulated statement\x00"
SIMULATED_WARNING = "SIMULATED attestation - development only, not confidential"

# name -> "module:Class"; imported only when a policy asks for it.
VERIFIERS: dict[str, str] = {
    "simulated": "aml.core.crypto.attestation:SimulatedVerifier",
    "hyper-protect": "aml.core.crypto.hyperprotect:HyperProtectVerifier",
}


def membership_hash(members: dict) -> str:
    """sha256 hex of the canonical JSON of {bank: {"x25519": hex, "ed25519": hex}}."""
    return hashlib.sha256(canonical_json(members)).hexdigest()


def _short(hex_value: object) -> str:
    return str(hex_value)[:16] + "..." if isinstance(hex_value, str) and len(hex_value) > 16 else str(hex_value)


def _clip(value: object, limit: int = 80) -> str:
    """A document value for an error message: whole when hash-sized, cut when not."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _raw32(value: object, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise AttestationError(f"attestation field {what} must be 32 bytes of hex")
    return raw


def check_members(statement: dict) -> dict[str, dict[str, str]]:
    """The statement's member table, shape-checked, with its hash recomputed and compared."""
    members = statement.get("members")
    if not isinstance(members, dict) or not members:
        raise AttestationError("attestation lists no member banks")
    for bank, keys in members.items():
        if not isinstance(keys, dict) or set(keys) != {"x25519", "ed25519"}:
            raise AttestationError(f"attestation member '{_short(bank)}' must have exactly x25519 and ed25519 keys")
        _raw32(keys["x25519"], f"members.{bank}.x25519")
        _raw32(keys["ed25519"], f"members.{bank}.ed25519")
    actual = membership_hash(members)
    if statement.get("membership_hash") != actual:
        raise AttestationError("attestation membership_hash does not match its member list")
    return members


def check_policy_pins(statement: dict, policy: dict) -> None:
    """The checks every verifier shares: measurement allowed, membership as pinned."""
    measurement = statement.get("measurement")
    allowed = policy.get("allowed_measurements") or []
    if measurement not in allowed:
        raise AttestationError(
            f"attested measurement {_clip(measurement)} is not allowed by the policy "
            f"(pinned: {', '.join(map(_clip, allowed)) or 'none'})"
        )
    pinned = policy.get("membership_hash")
    if statement.get("membership_hash") != pinned:
        raise AttestationError(
            f"attested membership hash {_clip(statement.get('membership_hash'))} "
            f"does not match the pinned {_clip(pinned)}"
        )


def attested_enclave(verifier: str, simulated: bool, statement: dict, document_bytes: bytes) -> AttestedEnclave:
    return AttestedEnclave(
        verifier=verifier,
        simulated=simulated,
        measurement=statement["measurement"],
        x25519_public=_raw32(statement.get("enclave_x25519"), "enclave_x25519"),
        ed25519_public=_raw32(statement.get("enclave_ed25519"), "enclave_ed25519"),
        members=check_members(statement),
        membership_hash=statement["membership_hash"],
        config_hash=str(statement.get("config_hash", "")),
        document_hash=hashlib.sha256(document_bytes).hexdigest(),
    )


# --- the simulated verifier ----------------------------------------------------------------

class SimulatedVerifier:
    """Development stand-in for a TEE: a local "authority" Ed25519 key signs the statement.

    It proves only that whoever holds the authority key vouched for the statement - no
    hardware isolates the enclave, so it is NOT confidential. Every result says simulated=True.
    """

    name = "simulated"

    def verify(self, document: dict, policy: dict, document_bytes: bytes) -> AttestedEnclave:
        statement, evidence = document.get("statement"), document.get("evidence")
        if not isinstance(statement, dict) or not isinstance(evidence, dict):
            raise AttestationError("attestation needs a statement and evidence object")
        trust = policy.get("trust") if isinstance(policy.get("trust"), dict) else {}
        pinned_authority = trust.get("authority_public")
        authority = evidence.get("authority_public")
        if authority != pinned_authority:
            raise AttestationError(
                f"attestation is signed by authority {_short(authority)}, the policy trusts {_short(pinned_authority)}"
            )
        signature = evidence.get("signature")
        try:
            sig = bytes.fromhex(signature) if isinstance(signature, str) else b""
            Ed25519PublicKey.from_public_bytes(_raw32(authority, "evidence.authority_public")).verify(
                sig, SIMULATED_STATEMENT_LABEL + canonical_json(statement)
            )
        except (InvalidSignature, ValueError):
            raise AttestationError("attestation signature does not verify against the trusted authority") from None
        if statement.get("simulated") is not True:
            raise AttestationError("a simulated attestation must say simulated: true")
        check_members(statement)
        check_policy_pins(statement, policy)
        return attested_enclave(self.name, True, statement, document_bytes)


def sign_simulated_statement(statement: dict, authority_private) -> dict:
    """The `evidence` object for a simulated statement (used by `aml enclave init`)."""
    from aml.core.crypto.keys import raw_public

    return {
        "authority_public": raw_public(authority_private.public_key()).hex(),
        "signature": authority_private.sign(SIMULATED_STATEMENT_LABEL + canonical_json(statement)).hex(),
    }


# --- registry and entry point --------------------------------------------------------------

def get_verifier(name: str) -> AttestationVerifier:
    target = VERIFIERS.get(name) if isinstance(name, str) else None
    if target is None:
        raise AttestationError(f"unknown attestation verifier '{_short(name)}' (known: {', '.join(VERIFIERS)})")
    module_name, _, class_name = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)()
    except (ImportError, AttributeError) as exc:
        raise AttestationError(f"attestation verifier '{name}' is not available ({type(exc).__name__})") from None


def _read_json(path: Path, what: str, error) -> tuple[dict, bytes]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{what} file '{path}' does not exist") from None
    except OSError as exc:
        raise BadInputError(f"cannot read {what} file '{path}' ({exc.strerror})") from None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise error(f"{what} file '{path}' is not valid JSON") from None
    if not isinstance(doc, dict):
        raise error(f"{what} file '{path}' is not a JSON object")
    return doc, data


def load_policy(path: Path) -> dict:
    """A bank's pinned policy, shape-checked (ConfigError: it is the bank's own input)."""
    policy, _ = _read_json(path, "policy", ConfigError)
    if policy.get("format") != POLICY_FORMAT:
        raise ConfigError(f"policy '{path}' is not an {POLICY_FORMAT} document")
    if not isinstance(policy.get("verifier"), str):
        raise ConfigError(f"policy '{path}' names no verifier")
    allowed = policy.get("allowed_measurements")
    if not isinstance(allowed, list) or not allowed or not all(isinstance(m, str) for m in allowed):
        raise ConfigError(f"policy '{path}' needs a non-empty list allowed_measurements")
    if not isinstance(policy.get("membership_hash"), str):
        raise ConfigError(f"policy '{path}' needs a membership_hash")
    if not isinstance(policy.get("trust"), dict):
        raise ConfigError(f"policy '{path}' needs a trust object")
    return policy


def verify_attestation(attestation_path: Path, policy_path: Path) -> AttestedEnclave:
    """Verify `attestation.json` against the pinned policy with the verifier the policy names."""
    policy = load_policy(policy_path)
    document, data = _read_json(attestation_path, "attestation", AttestationError)
    if document.get("format") != ATTESTATION_FORMAT:
        raise AttestationError(f"attestation is not an {ATTESTATION_FORMAT} document")
    if document.get("verifier") != policy["verifier"]:
        raise AttestationError(
            f"attestation is for verifier '{_short(document.get('verifier'))}', "
            f"the policy requires '{policy['verifier']}'"
        )
    result = get_verifier(policy["verifier"]).verify(document, policy, data)
    if result.verifier != policy["verifier"]:
        raise AttestationError("verifier returned a result for a different platform")
    return replace(result, document_hash=hashlib.sha256(data).hexdigest())
