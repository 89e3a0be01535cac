import hashlib
import json
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aml.core.crypto import attestation as att
from aml.core.crypto.attestation import VERIFIERS, load_policy, membership_hash, verify_attestation
from aml.core.crypto.keys import BankKeyPair, write_keypair
from aml.enclave import identity
from aml.enclave.identity import init_enclave, load_enclave_keys, load_members
from aml.core.errors import AttestationError, BadInputError, ConfigError, KeyFileError


@pytest.fixture()
def enclave(tmp_path, monkeypatch):
    monkeypatch.setattr("aml.core.measure.measure_tree", lambda root: "ab" * 32)
    keys = tmp_path / "keys"
    for bank in ("B01", "B02"):
        write_keypair(bank, keys)
    info = init_enclave(tmp_path / "enc", keys)
    return tmp_path / "enc", info


def paths(enc):
    return enc / "attestation.json", enc / "policy.json"


def edit(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def authority(enc):
    doc = json.loads((enc / "authority" / "authority.key").read_text())
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(doc["ed25519"]))


def resign_statement(enc, key=None):
    def change(doc):
        doc["evidence"] = att.sign_simulated_statement(doc["statement"], key or authority(enc))
    edit(enc / "attestation.json", change)


def test_init_and_verify(enclave):
    enc, info = enclave
    assert info["WARNING"].startswith("SIMULATED")
    result = verify_attestation(*paths(enc))
    keys = load_enclave_keys(enc)
    assert result.simulated and result.verifier == "simulated"
    assert result.measurement == "ab" * 32 == info["measurement"]
    assert result.x25519_public == keys.public.x25519_raw
    assert result.ed25519_public == keys.public.ed25519_raw
    assert set(result.members) == {"B01", "B02"} == set(load_members(enc))
    assert result.document_hash == hashlib.sha256((enc / "attestation.json").read_bytes()).hexdigest()
    assert len(keys.storage_key) == 32
    statement = json.loads((enc / "attestation.json").read_text())["statement"]
    assert statement["simulated"] is True and "SIMULATED" in statement["warning"]
    assert statement["membership_hash"] == membership_hash(statement["members"])
    for private in (enc / "keys" / "enclave.key", enc / "authority" / "authority.key"):
        assert private.stat().st_mode & 0o077 == 0


def test_measurement_outside_policy_names_both(enclave):
    enc, _ = enclave
    edit(enc / "policy.json", lambda p: p.update(allowed_measurements=["cd" * 32]))
    with pytest.raises(AttestationError) as exc:
        verify_attestation(*paths(enc))
    assert "ab" * 32 in str(exc.value) and "cd" * 32 in str(exc.value)
    assert exc.value.exit_code == 3


def test_membership_outside_policy(enclave):
    enc, _ = enclave
    intruder = BankKeyPair.generate().public

    def add_member(doc):
        doc["statement"]["members"]["EVIL"] = {"x25519": intruder.x25519_raw.hex(), "ed25519": intruder.ed25519_raw.hex()}
        doc["statement"]["membership_hash"] = membership_hash(doc["statement"]["members"])
    edit(enc / "attestation.json", add_member)
    with pytest.raises(AttestationError, match="signature does not verify"):
        verify_attestation(*paths(enc))
    resign_statement(enc)  # even the authority cannot add a member the bank did not pin
    with pytest.raises(AttestationError, match="membership hash .* does not match the pinned"):
        verify_attestation(*paths(enc))


def test_member_list_not_matching_its_hash(enclave):
    enc, _ = enclave
    edit(enc / "attestation.json", lambda d: d["statement"]["members"].pop("B02"))
    resign_statement(enc)
    with pytest.raises(AttestationError, match="membership_hash does not match its member list"):
        verify_attestation(*paths(enc))


def test_wrong_authority(enclave):
    enc, _ = enclave
    resign_statement(enc, Ed25519PrivateKey.generate())
    with pytest.raises(AttestationError, match="signed by authority .* the policy trusts"):
        verify_attestation(*paths(enc))


def test_forged_signature_with_pinned_authority_key(enclave):
    enc, _ = enclave
    edit(enc / "attestation.json", lambda d: d["statement"].update(enclave_x25519="11" * 32))
    with pytest.raises(AttestationError, match="signature does not verify"):
        verify_attestation(*paths(enc))


def test_simulated_flag_cannot_be_dropped(enclave):
    enc, _ = enclave
    edit(enc / "attestation.json", lambda d: d["statement"].update(simulated=False))
    resign_statement(enc)
    with pytest.raises(AttestationError, match="simulated: true"):
        verify_attestation(*paths(enc))


def test_verifier_must_match_policy(enclave):
    enc, _ = enclave
    edit(enc / "policy.json", lambda p: p.update(verifier="hyper-protect"))
    with pytest.raises(AttestationError, match="policy requires 'hyper-protect'"):
        verify_attestation(*paths(enc))
    edit(enc / "policy.json", lambda p: p.update(verifier="nope"))
    edit(enc / "attestation.json", lambda d: d.update(verifier="nope"))
    with pytest.raises(AttestationError, match="unknown attestation verifier"):
        verify_attestation(*paths(enc))


def test_malformed_inputs(enclave, tmp_path):
    enc, _ = enclave
    with pytest.raises(BadInputError, match="does not exist"):
        verify_attestation(tmp_path / "none.json", enc / "policy.json")
    (tmp_path / "p.json").write_text("{")
    with pytest.raises(ConfigError):
        load_policy(tmp_path / "p.json")
    (tmp_path / "p.json").write_text(json.dumps({"format": "aml-policy/1", "verifier": "simulated"}))
    with pytest.raises(ConfigError, match="allowed_measurements"):
        load_policy(tmp_path / "p.json")
    (enc / "attestation.json").write_text("[]")
    with pytest.raises(AttestationError):
        verify_attestation(*paths(enc))


def test_init_refuses_existing_dir_and_force_rotates(enclave):
    enc, info = enclave
    keys_dir = enc.parent / "keys"
    with pytest.raises(BadInputError, match="already initialised"):
        init_enclave(enc, keys_dir)
    assert load_enclave_keys(enc).key_id == info["enclave key id"]
    new = init_enclave(enc, keys_dir, force=True)
    assert new["enclave key id"] != info["enclave key id"]
    assert verify_attestation(*paths(enc)).ed25519_public == load_enclave_keys(enc).public.ed25519_raw


def test_init_needs_members(tmp_path, monkeypatch):
    monkeypatch.setattr("aml.core.measure.measure_tree", lambda root: "ab" * 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no member public keys"):
        init_enclave(tmp_path / "enc", tmp_path / "empty")


def test_loose_enclave_key_refused(enclave):
    enc, _ = enclave
    (enc / "keys" / "enclave.key").chmod(0o644)
    with pytest.raises(KeyFileError, match="too open"):
        load_enclave_keys(enc)


def test_real_measurement_is_the_project_tree(tmp_path):
    from aml.core.measure import measure_tree

    write_keypair("B01", tmp_path / "keys")
    info = init_enclave(tmp_path / "enc", tmp_path / "keys")
    assert info["measurement"] == measure_tree(identity.project_root())


def test_hyper_protect_is_registered_and_imported_lazily():
    assert VERIFIERS["hyper-protect"] == "aml.core.crypto.hyperprotect:HyperProtectVerifier"
    code = "import sys, aml.core.crypto.attestation; print('aml.core.crypto.hyperprotect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
