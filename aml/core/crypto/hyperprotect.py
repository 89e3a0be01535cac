"""The `hyper-protect` attestation verifier (IBM Hyper Protect / Confidential Computing Container
Runtime on IBM Z Secure Execution).

What IBM's evidence proves: at boot the guest writes an attestation record ``se-checksums.txt``
(lines ``<sha256 hex> <name>``: the base image, the root partition, the cloud-init data and each
contract section, ``contract:workload`` and ``contract:env``) and signs it (``se-signature.bin``,
RSA-SHA256 PKCS#1 v1.5) with a per-image attestation key whose certificate chains to an IBM root.
The record carries no nonce and no runtime key, so it cannot by itself vouch for keys the
enclave generates after boot.

How we bind the enclave's runtime keys (see docs/deploy.md for the reasoning and the limits):
the contract author generates an Ed25519 *attestation key* for one deployment and puts its
private half into the encrypted, signed ``env`` section; its public half goes into every bank's
policy together with the expected ``contract:workload`` and ``contract:env`` checksums. Only a
guest booted with exactly that env (and, through ``envWorkloadSignature``, exactly that
workload) can read the key. The measured workload generates its X25519/Ed25519 keys at first
boot and signs the statement {measurement, enclave keys, members, config hash, sha256 of the
record} with the attestation key.

Document evidence::

    {"se_checksums": text, "se_signature": base64, "cert_chain": [PEM leaf, PEM intermediate, ...],
     "statement_signature": hex Ed25519 over STATEMENT_LABEL + canonical JSON of the statement}

Policy ``trust``::

    {"root_ca_pem": PEM, "signer_subject": RFC 4514 subject of IBM's attestation signing certificate,
     "attestation_public_key": hex Ed25519,
     "expected_checksums": {"contract:workload": hex, "contract:env": hex, ...more names optional}}
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re

from cryptography import x509
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15

from aml.core.crypto.attestation import AttestedEnclave, attested_enclave, check_members, check_policy_pins
from aml.core.crypto.container import canonical_json
from aml.core.errors import AttestationError

NAME = "hyper-protect"
STATEMENT_LABEL = b"aml-attestation/1 hyper-protect statement\x00"
REQUIRED_CHECKSUMS = ("contract:workload", "contract:env")
MAX_INTERMEDIATES = 4  # IBM's chain: root -> intermediate -> attestation certificate
_CHECKSUM_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+(\S.*?)\s*$")


# --- the evidence -----------------------------------------------------------------------------
def parse_checksums(text: str) -> dict[str, str]:
    """``se-checksums.txt`` -> {name: sha256 hex}. Other lines (the record's version and machine
    header) are signed but carry nothing we check. A name listed twice is refused: which of the
    two would count is exactly what an attacker would like to choose."""
    checksums: dict[str, str] = {}
    for line in text.splitlines():
        match = _CHECKSUM_LINE.match(line.strip())
        if not match:
            continue
        digest, name = match.group(1).lower(), match.group(2)
        if name in checksums:
            raise AttestationError(f"se-checksums lists '{name}' more than once")
        checksums[name] = digest
    return checksums


def _load_chain(pems: object) -> list[x509.Certificate]:
    if isinstance(pems, str):
        pems = [pems]
    if not isinstance(pems, list) or not pems or not all(isinstance(p, str) for p in pems):
        raise AttestationError("evidence.cert_chain must be a list of PEM certificates (signer first)")
    chain: list[x509.Certificate] = []
    for pem in pems:
        try:
            chain.extend(x509.load_pem_x509_certificates(pem.encode()))
        except ValueError:
            raise AttestationError("evidence.cert_chain holds something that is not a PEM certificate") from None
    return chain


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(names[0].value)[:80] if names else cert.subject.rfc4514_string()[:80]


def _signer_key_usage(policy, cert: x509.Certificate, usage: x509.KeyUsage) -> None:
    """The attestation signing certificate signs records: digitalSignature, and it is no CA."""
    if not usage.digital_signature:
        raise ValueError("the attestation signing certificate's key usage lacks digitalSignature")
    if usage.key_cert_sign:
        raise ValueError("the attestation signing certificate may not sign certificates (keyCertSign)")


def _signer_not_ca(policy, cert: x509.Certificate, constraints: x509.BasicConstraints | None) -> None:
    if constraints is not None and constraints.ca:
        raise ValueError("the attestation signing certificate is a CA certificate")


# IBM's attestation certificates are not TLS certificates (no SAN, no EKU), so the WebPKI
# defaults do not fit; path building, signatures, validity dates, CA-ness of every issuer and
# path length stay with the library. What we require of the signer instead: key usage
# digitalSignature (not keyCertSign), not a CA; its subject is pinned by the policy.
_CA_POLICY = ExtensionPolicy.permit_all().require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
_SIGNER_POLICY = (ExtensionPolicy.permit_all()
                  .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _signer_key_usage)
                  .may_be_present(x509.BasicConstraints, Criticality.AGNOSTIC, _signer_not_ca))


def _why_invalid(exc: VerificationError, certs: list[x509.Certificate], now: dt.datetime) -> str:
    """The library's reason, with the certificate named when it is a validity-date failure."""
    for cert in certs:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return (f"certificate '{_cn(cert)}' is valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                    f"{cert.not_valid_after_utc:%Y-%m-%d}, not now")
    return " ".join(str(exc).split("(encountered", 1)[0].split())[:200]


def pinned_signer_subject(trust: dict) -> x509.Name:
    subject = trust.get("signer_subject")
    try:
        name = x509.Name.from_rfc4514_string(subject) if isinstance(subject, str) and subject else None
    except ValueError:
        name = None
    if name is None:
        raise AttestationError("policy trust.signer_subject must name the attestation signing certificate's "
                               "subject (RFC 4514, e.g. 'CN=...,O=International Business Machines Corporation')")
    return name


def verify_chain(chain: list[x509.Certificate], root: x509.Certificate, now: dt.datetime,
                 signer_subject: x509.Name) -> x509.Certificate:
    """Signer (chain[0]) -> intermediates -> the pinned root, by cryptography's X.509 path
    validation; then the signer's subject against the pinned one. Returns the signer."""
    root_der = root.public_bytes(serialization.Encoding.DER)
    path = [c for c in chain if c.public_bytes(serialization.Encoding.DER) != root_der]  # root optional
    if not path:
        raise AttestationError("certificate chain holds no attestation signing certificate")
    verifier = (PolicyBuilder().store(Store([root])).time(now).max_chain_depth(MAX_INTERMEDIATES)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_SIGNER_POLICY)
                .build_client_verifier())
    try:
        verifier.verify(path[0], path[1:])
    except VerificationError as exc:
        raise AttestationError(f"certificate chain does not verify to the pinned root "
                               f"'{_cn(root)}': {_why_invalid(exc, [*path, root], now)}") from None
    signer = path[0]
    if signer.subject != signer_subject:
        raise AttestationError(f"attestation signing certificate subject '{signer.subject.rfc4514_string()[:160]}' "
                               f"is not the pinned '{signer_subject.rfc4514_string()[:160]}'")
    return signer


def _hex32(value: object, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise AttestationError(f"{what} must be 32 bytes of hex")
    return raw


# --- the verifier ---------------------------------------------------------------------------------
class HyperProtectVerifier:
    """Verifies IBM Hyper Protect evidence plus the attestation-key statement (module docstring)."""

    name = NAME

    def __init__(self, now: dt.datetime | None = None):
        self._now = now  # fixed clock for tests; None = current time

    def verify(self, document: dict, policy: dict, document_bytes: bytes) -> AttestedEnclave:
        now = self._now or dt.datetime.now(dt.timezone.utc)
        statement, evidence = document.get("statement"), document.get("evidence")
        if not isinstance(statement, dict) or not isinstance(evidence, dict):
            raise AttestationError("attestation needs a statement and evidence object")
        trust = policy.get("trust") if isinstance(policy.get("trust"), dict) else {}
        expected = trust.get("expected_checksums")
        if not isinstance(expected, dict) or any(k not in expected for k in REQUIRED_CHECKSUMS):
            raise AttestationError(
                "policy trust.expected_checksums must pin contract:workload and contract:env")
        try:
            root = x509.load_pem_x509_certificate(str(trust.get("root_ca_pem", "")).encode())
        except ValueError:
            raise AttestationError("policy trust.root_ca_pem is not a PEM certificate") from None
        attestation_key = _hex32(trust.get("attestation_public_key"), "policy trust.attestation_public_key")
        signer_subject = pinned_signer_subject(trust)

        # 1. IBM's certificate chain up to the pinned root, ending in the pinned signer.
        signer = verify_chain(_load_chain(evidence.get("cert_chain")), root, now, signer_subject)

        # 2. IBM's signature over the attestation record.
        record = evidence.get("se_checksums")
        if not isinstance(record, str) or not record:
            raise AttestationError("evidence.se_checksums (the attestation record text) is missing")
        try:
            signature = base64.b64decode(str(evidence.get("se_signature", "")), validate=True)
        except (binascii.Error, ValueError):
            raise AttestationError("evidence.se_signature is not base64") from None
        signer_key = signer.public_key()
        if not isinstance(signer_key, rsa.RSAPublicKey):
            raise AttestationError("attestation signing certificate does not hold an RSA key")
        try:
            signer_key.verify(signature, record.encode("utf-8"), PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise AttestationError(
                "se-signature does not verify over se-checksums with the attestation signing certificate") from None

        # 3. The record lists the workload and env we expect (image digest, membership, key).
        checksums = parse_checksums(record)
        for name, want in sorted(expected.items()):
            got = checksums.get(name)
            if got is None:
                raise AttestationError(f"se-checksums has no '{name}' entry (the policy pins {want})")
            if got != str(want).lower():
                raise AttestationError(f"se-checksums {name} is {got}, the policy expects {want}")

        # 4. The statement comes from the guest holding the env section's attestation key,
        #    and names this very record.
        if statement.get("se_checksums_sha256") != hashlib.sha256(record.encode("utf-8")).hexdigest():
            raise AttestationError("statement se_checksums_sha256 does not match the attestation record")
        try:
            sig = bytes.fromhex(str(evidence.get("statement_signature", "")))
            Ed25519PublicKey.from_public_bytes(attestation_key).verify(
                sig, STATEMENT_LABEL + canonical_json(statement))
        except (InvalidSignature, ValueError):
            raise AttestationError(
                "statement signature does not verify with the pinned attestation public key") from None
        if statement.get("simulated") is not False:
            raise AttestationError("a hyper-protect statement must say simulated: false")

        # 5. The pins every verifier shares: measurement and membership.
        check_members(statement)
        check_policy_pins(statement, policy)
        return attested_enclave(self.name, False, statement, document_bytes)


# --- producing the document (inside the guest) and the keys (contract author) -----------------------
def new_attestation_key() -> tuple[str, str]:
    """(base64 raw private key for env.AML_ATTESTATION_SIGNING_KEY, hex public key for policies)."""
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode(), public.hex()


def attestation_key_from_b64(value: str) -> Ed25519PrivateKey:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (binascii.Error, ValueError):
        raise AttestationError("AML_ATTESTATION_SIGNING_KEY is not base64 of a 32-byte Ed25519 key") from None


def build_document(statement: dict, attestation_key: Ed25519PrivateKey, se_checksums: str,
                   se_signature: bytes, cert_chain_pems: list[str]) -> dict:
    """The ``hyper-protect`` attestation.json for a statement made inside the guest."""
    from aml.core.crypto.attestation import ATTESTATION_FORMAT

    statement = dict(statement, simulated=False,
                     se_checksums_sha256=hashlib.sha256(se_checksums.encode("utf-8")).hexdigest())
    statement.pop("warning", None)
    return {
        "format": ATTESTATION_FORMAT,
        "verifier": NAME,
        "statement": statement,
        "evidence": {
            "se_checksums": se_checksums,
            "se_signature": base64.b64encode(se_signature).decode(),
            "cert_chain": list(cert_chain_pems),
            "statement_signature": attestation_key.sign(STATEMENT_LABEL + canonical_json(statement)).hex(),
        },
    }
