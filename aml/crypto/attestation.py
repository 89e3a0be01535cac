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

from dataclasses import dataclass, field
from typing import Protocol

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
    """One platform's verifier. ``verify`` raises `aml.errors.AttestationError` with a
    message that says which check failed; it never returns a half-checked result."""

    name: str

    def verify(self, document: dict, policy: dict, document_bytes: bytes) -> AttestedEnclave: ...
