"""The hyper-protect verifier: IBM chain, se-signature, checksums, attestation-key statement."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.core.crypto.attestation import POLICY_FORMAT, membership_hash, verify_attestation
from aml.core.crypto.hyperprotect import (
    HyperProtectVerifier, attestation_key_from_b64, build_document, new_attestation_key, parse_checksums,
)
from aml.core.errors import AttestationError

NOW = dt.datetime.now(dt.timezone.utc)
DAY = dt.timedelta(days=1)


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _usage(signer: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(("content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
                           "encipher_only", "decipher_only"), False)
    return x509.KeyUsage(digital_signature=signer, key_cert_sign=not signer, crl_sign=not signer, **flags)


def _cert(subject_key, cn, issuer_key=None, issuer_cert=None, ca=True, not_before=NOW - DAY,
          not_after=NOW + 365 * DAY, key_usage="default", extra=()):
    """A certificate; by default a CA gets keyCertSign and a non-CA (the signer) digitalSignature."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer = issuer_cert.subject if issuer_cert is not None else subject
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if key_usage == "default":
        key_usage = _usage(signer=not ca)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key or subject_key, hashes.SHA256())


def _pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


ROOT_KEY, INTER_KEY, SIGNER_KEY = _key(), _key(), _key()
ROOT = _cert(ROOT_KEY, "Test IBM Root")
INTER = _cert(INTER_KEY, "Test IBM Intermediate", ROOT_KEY, ROOT)
SIGNER = _cert(SIGNER_KEY, "Test HPCR attestation", INTER_KEY, INTER, ca=False)
WORKLOAD_HASH = hashlib.sha256(b"hyper-protect-basic.workload").hexdigest()
ENV_HASH = hashlib.sha256(b"hyper-protect-basic.env").hexdigest()
MEASUREMENT = hashlib.sha256(b"tree").hexdigest()


def _record(workload=WORKLOAD_HASH, env=ENV_HASH, extra="") -> str:
    h = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
    return (f"26.1.0\nMachine Type/Plant/Serial: 3931/02/8A018\n{h('base')} baseimage\n"
            f"{h('root')} root.tar.gz\n{h('ud')} cidata/user-data\n{workload} contract:workload\n"
            f"{env} contract:env\n{extra}")


def _ibm_sign(record: str, key=SIGNER_KEY) -> bytes:
    return key.sign(record.encode(), PKCS1v15(), hashes.SHA256())


class World:
    """One good deployment: a document, its policy and the keys that made them."""

    def __init__(self):
        self.att_key = Ed25519PrivateKey.generate()
        self.enclave_x = os.urandom(32)
        self.enclave_ed = os.urandom(32)
        members = {b: {"x25519": os.urandom(32).hex(), "ed25519": os.urandom(32).hex()} for b in ("bank-a", "bank-b")}
        self.statement = {
            "measurement": MEASUREMENT, "enclave_x25519": self.enclave_x.hex(),
            "enclave_ed25519": self.enclave_ed.hex(), "members": members,
            "membership_hash": membership_hash(members), "config_hash": "cc" * 32, "issued": 1_700_000_000,
        }
        self.record = _record()
        self.document = build_document(self.statement, self.att_key, self.record, _ibm_sign(self.record),
                                       [_pem(SIGNER), _pem(INTER)])
        self.policy = {
            "format": POLICY_FORMAT, "verifier": "hyper-protect", "allowed_measurements": [MEASUREMENT],
            "membership_hash": self.statement["membership_hash"],
            "trust": {
                "root_ca_pem": _pem(ROOT),
                "signer_subject": "CN=Test HPCR attestation",
                "attestation_public_key": self.att_key.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex(),
                "expected_checksums": {"contract:workload": WORKLOAD_HASH, "contract:env": ENV_HASH},
            },
        }

    def verify(self, document=None, policy=None):
        doc = self.document if document is None else document
        return HyperProtectVerifier().verify(doc, self.policy if policy is None else policy,
                                             json.dumps(doc).encode())


@pytest.fixture
def world() -> World:
    return World()


def test_good_attestation_is_accepted_and_returns_the_bound_keys(world: World):
    enclave = world.verify()
    assert enclave.verifier == "hyper-protect" and enclave.simulated is False
    assert enclave.measurement == MEASUREMENT
    assert enclave.x25519_public == world.enclave_x and enclave.ed25519_public == world.enclave_ed
    assert set(enclave.members) == {"bank-a", "bank-b"}


def test_through_verify_attestation_and_the_registry(world: World, tmp_path: Path):
    (tmp_path / "attestation.json").write_text(json.dumps(world.document))
    (tmp_path / "policy.json").write_text(json.dumps(world.policy))
    enclave = verify_attestation(tmp_path / "attestation.json", tmp_path / "policy.json")
    assert enclave.verifier == "hyper-protect" and enclave.x25519_public == world.enclave_x
    assert enclave.document_hash == hashlib.sha256((tmp_path / "attestation.json").read_bytes()).hexdigest()


def test_root_may_be_included_in_the_chain(world: World):
    world.document["evidence"]["cert_chain"].append(_pem(ROOT))
    assert world.verify().measurement == MEASUREMENT


def test_tampered_checksum_line_is_rejected(world: World):
    doc = copy.deepcopy(world.document)
    doc["evidence"]["se_checksums"] = doc["evidence"]["se_checksums"].replace(ENV_HASH, "0" * 64)
    with pytest.raises(AttestationError, match="se-signature does not verify"):
        world.verify(doc)


def test_wrong_root_is_rejected(world: World):
    policy = copy.deepcopy(world.policy)
    policy["trust"]["root_ca_pem"] = _pem(_cert(_key(), "Some Other Root"))
    with pytest.raises(AttestationError, match="does not verify to the pinned root 'Some Other Root'"):
        world.verify(policy=policy)


def test_expired_signer_certificate_is_rejected(world: World):
    expired = _cert(SIGNER_KEY, "Old HPCR attestation", INTER_KEY, INTER, ca=False,
                    not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    world.document["evidence"]["cert_chain"][0] = _pem(expired)
    with pytest.raises(AttestationError, match="certificate 'Old HPCR attestation' is valid .* not now"):
        world.verify()


def test_expired_root_is_rejected(world: World):
    old_root = _cert(ROOT_KEY, "Test IBM Root", not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    policy = copy.deepcopy(world.policy)
    policy["trust"]["root_ca_pem"] = _pem(old_root)
    with pytest.raises(AttestationError, match="certificate 'Test IBM Root' is valid .* not now"):
        world.verify(policy=policy)


def test_intermediate_that_is_not_a_ca_is_rejected(world: World):
    fake_inter = _cert(INTER_KEY, "Test IBM Intermediate", ROOT_KEY, ROOT, ca=False)
    world.document["evidence"]["cert_chain"][1] = _pem(fake_inter)
    with pytest.raises(AttestationError, match="basicConstraints.cA must be asserted"):
        world.verify()


def test_signer_certificate_issued_by_someone_else_is_rejected(world: World):
    rogue_key = _key()
    rogue = _cert(SIGNER_KEY, "Test HPCR attestation", rogue_key, _cert(rogue_key, "Rogue CA"), ca=False)
    world.document["evidence"]["cert_chain"][0] = _pem(rogue)
    with pytest.raises(AttestationError, match="does not verify to the pinned root"):
        world.verify()


# --- issue 14, finding 8: any certificate under the pinned root used to be accepted as the signer ---
def _signed_by(world: World, cert, key) -> dict:
    """The genuine record, signed with `key`, presented with `cert` as the signing certificate."""
    return build_document(world.statement, world.att_key, world.record, _ibm_sign(world.record, key),
                          [_pem(cert), _pem(INTER)])


def test_a_tls_server_certificate_under_the_pinned_root_is_not_the_signer(world: World):
    key = _key()
    server = _cert(key, "www.attacker.example", INTER_KEY, INTER, ca=False, extra=(
        x509.SubjectAlternativeName([x509.DNSName("www.attacker.example")]),
        x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH])))
    with pytest.raises(AttestationError, match="subject 'CN=www.attacker.example' is not the pinned"):
        world.verify(_signed_by(world, server, key))


@pytest.mark.parametrize("case", ["no_key_usage", "key_cert_sign", "is_a_ca"])
def test_signer_key_usage_is_pinned(world: World, case: str):
    """Even with the pinned subject: the signer must be a digitalSignature end-entity certificate."""
    key = _key()
    if case == "no_key_usage":
        cert = _cert(key, "Test HPCR attestation", INTER_KEY, INTER, ca=False, key_usage=None)
        match = "missing required extension"
    elif case == "key_cert_sign":
        cert = _cert(key, "Test HPCR attestation", INTER_KEY, INTER, ca=False, key_usage=_usage(signer=False))
        match = "lacks digitalSignature"
    else:
        cert = _cert(key, "Test HPCR attestation", INTER_KEY, INTER, ca=True, key_usage=_usage(signer=True))
        match = "is a CA certificate"
    with pytest.raises(AttestationError, match=match):
        world.verify(_signed_by(world, cert, key))


def test_the_root_itself_is_not_a_signer(world: World):
    doc = build_document(world.statement, world.att_key, world.record, _ibm_sign(world.record, ROOT_KEY), [_pem(ROOT)])
    with pytest.raises(AttestationError, match="no attestation signing certificate"):
        world.verify(doc)


@pytest.mark.parametrize("value", [None, "", "not a name", 42])
def test_policy_must_pin_the_signer_subject(world: World, value):
    policy = copy.deepcopy(world.policy)
    if value is None:
        del policy["trust"]["signer_subject"]
    else:
        policy["trust"]["signer_subject"] = value
    with pytest.raises(AttestationError, match="signer_subject"):
        world.verify(policy=policy)


def test_wrong_workload_hash_is_rejected_naming_both_values(world: World):
    policy = copy.deepcopy(world.policy)
    other = hashlib.sha256(b"older workload").hexdigest()
    policy["trust"]["expected_checksums"]["contract:workload"] = other
    with pytest.raises(AttestationError, match="contract:workload") as err:
        world.verify(policy=policy)
    assert WORKLOAD_HASH in str(err.value) and other in str(err.value)


def test_missing_env_entry_is_rejected(world: World):
    record = _record().replace(f"{ENV_HASH} contract:env\n", "")
    doc = build_document(world.statement, world.att_key, record, _ibm_sign(record), [_pem(SIGNER), _pem(INTER)])
    with pytest.raises(AttestationError, match="no 'contract:env' entry"):
        world.verify(doc)


def test_duplicate_entry_is_rejected(world: World):
    record = _record(extra=f"{'1' * 64} contract:workload\n")
    doc = build_document(world.statement, world.att_key, record, _ibm_sign(record), [_pem(SIGNER), _pem(INTER)])
    with pytest.raises(AttestationError, match="more than once"):
        world.verify(doc)


def test_bad_se_signature_is_rejected(world: World):
    world.document["evidence"]["se_signature"] = base64.b64encode(_ibm_sign(world.record, _key())).decode()
    with pytest.raises(AttestationError, match="se-signature does not verify"):
        world.verify()
    world.document["evidence"]["se_signature"] = "not base64!"
    with pytest.raises(AttestationError, match="not base64"):
        world.verify()


def test_swapped_enclave_key_breaks_the_statement_signature(world: World):
    world.document["statement"]["enclave_x25519"] = os.urandom(32).hex()
    with pytest.raises(AttestationError, match="statement signature does not verify"):
        world.verify()


def test_statement_signed_by_another_attestation_key_is_rejected(world: World):
    doc = build_document(world.statement, Ed25519PrivateKey.generate(), world.record,
                         _ibm_sign(world.record), [_pem(SIGNER), _pem(INTER)])
    with pytest.raises(AttestationError, match="pinned attestation public key"):
        world.verify(doc)


def test_statement_moved_onto_another_record_is_rejected(world: World):
    """A genuine record of another boot (same contract) cannot carry this statement."""
    other_record = _record(extra="reboot\n")
    world.document["evidence"]["se_checksums"] = other_record
    world.document["evidence"]["se_signature"] = base64.b64encode(_ibm_sign(other_record)).decode()
    with pytest.raises(AttestationError, match="se_checksums_sha256"):
        world.verify()


def test_measurement_not_in_policy_is_rejected_naming_both(world: World):
    policy = copy.deepcopy(world.policy)
    old = hashlib.sha256(b"old tree").hexdigest()
    policy["allowed_measurements"] = [old]
    with pytest.raises(AttestationError) as err:
        world.verify(policy=policy)
    assert MEASUREMENT in str(err.value) and old in str(err.value)


def test_policy_must_pin_contract_hashes_and_key(world: World):
    policy = copy.deepcopy(world.policy)
    del policy["trust"]["expected_checksums"]["contract:env"]
    with pytest.raises(AttestationError, match="expected_checksums"):
        world.verify(policy=policy)
    policy = copy.deepcopy(world.policy)
    policy["trust"]["attestation_public_key"] = "abcd"
    with pytest.raises(AttestationError, match="attestation_public_key"):
        world.verify(policy=policy)


def test_simulated_statement_is_refused(world: World):
    doc = build_document(world.statement, world.att_key, world.record, _ibm_sign(world.record),
                         [_pem(SIGNER), _pem(INTER)])
    doc["statement"]["simulated"] = True
    from aml.core.crypto.container import canonical_json
    from aml.core.crypto.hyperprotect import STATEMENT_LABEL
    doc["evidence"]["statement_signature"] = world.att_key.sign(
        STATEMENT_LABEL + canonical_json(doc["statement"])).hex()
    with pytest.raises(AttestationError, match="simulated: false"):
        world.verify(doc)


def test_attestation_key_helpers_roundtrip():
    private_b64, public_hex = new_attestation_key()
    key = attestation_key_from_b64(private_b64)
    assert key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw).hex() == public_hex
    with pytest.raises(AttestationError):
        attestation_key_from_b64("not-a-key")


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z:/._-]{1,20}", fullmatch=True),
                       st.binary(min_size=1, max_size=8).map(lambda b: hashlib.sha256(b).hexdigest()),
                       max_size=8))
def test_parse_checksums_reads_back_what_was_written(entries):
    text = "26.1.0\nheader line\n" + "".join(f"{d} {n}\n" for n, d in entries.items())
    assert parse_checksums(text) == entries


# --- the image's entry point produces what the verifier accepts ---------------------------------
def _boot_dirs(tmp_path: Path, world: World):
    from aml.core.crypto.keys import load_public, write_keypair

    root, hp = tmp_path / "data", tmp_path / "hyperprotect"
    members_dir = root / "inbox" / "members"
    members_dir.mkdir(parents=True)
    hp.mkdir()
    key_ids = {}
    for bank in ("bank-a", "bank-b"):
        _, pub = write_keypair(bank, tmp_path / "bankkeys")
        (members_dir / f"{bank}.pub").write_bytes(pub.read_bytes())
        key_ids[bank] = load_public(pub).key_id
    (hp / "se-checksums.txt").write_text(world.record)
    (hp / "se-signature.bin").write_bytes(_ibm_sign(world.record))
    (root / "inbox" / "hyperprotect-chain.pem").write_text(_pem(SIGNER) + _pem(INTER))
    private_b64 = base64.b64encode(world.att_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())).decode()
    env = {"AML_MEMBERS": json.dumps(key_ids), "AML_ATTESTATION_SIGNING_KEY": private_b64}
    return root, hp, env


def test_entrypoint_prepare_publishes_a_verifiable_attestation(tmp_path: Path, world: World):
    from aml.enclave.entrypoint import prepare
    from aml.enclave.identity import load_enclave_keys, project_root
    from aml.core.measure import measure_tree

    root, hp, env = _boot_dirs(tmp_path, world)
    published = prepare(root, hp, env)
    document = json.loads(published.read_text())
    policy = copy.deepcopy(world.policy)
    policy["allowed_measurements"] = [measure_tree(project_root())]
    policy["membership_hash"] = document["statement"]["membership_hash"]
    enclave = HyperProtectVerifier().verify(document, policy, published.read_bytes())
    keys = load_enclave_keys(root / "enclave")
    assert enclave.x25519_public == keys.public.x25519_raw and enclave.simulated is False
    # a second boot keeps the keys and re-binds them to the (new) record
    again = json.loads(prepare(root, hp, env).read_text())
    assert again["statement"]["enclave_x25519"] == document["statement"]["enclave_x25519"]


def test_entrypoint_refuses_members_other_than_the_contracts(tmp_path: Path, world: World):
    from aml.enclave.entrypoint import prepare
    from aml.core.errors import MembershipError

    root, hp, env = _boot_dirs(tmp_path, world)
    env["AML_MEMBERS"] = json.dumps({"bank-a": "00" * 8, "bank-b": "11" * 8})
    with pytest.raises(MembershipError, match="differs from the contract"):
        prepare(root, hp, env)
    (root / "inbox" / "members" / "bank-b.pub").unlink()
    env["AML_MEMBERS"] = json.dumps({"bank-a": "00" * 8, "bank-b": "11" * 8})
    with pytest.raises(MembershipError, match="missing"):
        prepare(root, hp, env)


def test_entrypoint_refuses_a_simulated_start_when_a_signing_key_is_set(tmp_path: Path, world: World):
    from aml.enclave.entrypoint import prepare

    root, hp, env = _boot_dirs(tmp_path, world)
    (hp / "se-signature.bin").unlink()
    with pytest.raises(AttestationError, match="se-signature.bin"):
        prepare(root, hp, env)


def test_entrypoint_keeps_the_attestation_key_out_of_child_processes(monkeypatch):
    """Issue 14, finding 11: the key is read once at start-up; the Prefect server, the enclave
    workers and anything else started later must not inherit it."""
    import subprocess
    import sys

    from aml.enclave.entrypoint import take_settings

    monkeypatch.setenv("AML_ATTESTATION_SIGNING_KEY", "secret-b64")
    monkeypatch.setenv("AML_CRON", "0 3 * * *")
    settings = take_settings()
    assert settings["AML_ATTESTATION_SIGNING_KEY"] == "secret-b64" and settings["AML_CRON"] == "0 3 * * *"
    assert "AML_ATTESTATION_SIGNING_KEY" not in os.environ and os.environ["AML_CRON"] == "0 3 * * *"
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('AML_ATTESTATION_SIGNING_KEY'))"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "None"
