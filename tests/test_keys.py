import json
import os
import stat

import pytest

from aml.core.crypto.keys import BankKeyPair, PublicKeys, load_keypair, load_public, write_keypair
from aml.core.errors import BadInputError, KeyFileError


def test_write_and_load_round_trip(tmp_path):
    key_path, pub_path = write_keypair("B01", tmp_path)
    assert (key_path.name, pub_path.name) == ("B01.key", "B01.pub")
    pair, pub = load_keypair(key_path), load_public(pub_path)
    assert pair.public == pub
    assert pair.bank == pub.bank == "B01"
    assert len(pub.key_id) == 16 and int(pub.key_id, 16) >= 0
    assert not list(tmp_path.glob("*.tmp"))


def test_private_key_is_created_0600(tmp_path):
    old = os.umask(0)  # even a permissive umask must not loosen the key file
    try:
        key_path, pub_path = write_keypair("B01", tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) & 0o044  # public file is readable


def test_refuses_to_overwrite(tmp_path):
    key_path, _ = write_keypair("B01", tmp_path)
    before = key_path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        write_keypair("B01", tmp_path)
    assert key_path.read_bytes() == before


def test_loose_permissions_are_refused_like_openssh(tmp_path):
    key_path, _ = write_keypair("B01", tmp_path)
    key_path.chmod(0o644)
    with pytest.raises(KeyFileError) as exc:
        load_keypair(key_path)
    assert "permissions 0644" in str(exc.value) and "too open" in str(exc.value)
    assert exc.value.exit_code == 2


def test_group_readable_is_refused_too(tmp_path):
    key_path, _ = write_keypair("B01", tmp_path)
    key_path.chmod(0o640)
    with pytest.raises(KeyFileError, match="0640"):
        load_keypair(key_path)


@pytest.mark.parametrize("bank", ["", "../x", "a b", "enclave", "x" * 65, ".hidden"])
def test_bad_bank_ids_are_refused(tmp_path, bank):
    with pytest.raises(BadInputError):
        write_keypair(bank, tmp_path)


def test_malformed_and_mismatched_files(tmp_path):
    key_path, pub_path = write_keypair("B01", tmp_path)
    doc = json.loads(pub_path.read_text())
    doc["x25519"] = BankKeyPair.generate().public.x25519_raw.hex()  # key_id no longer matches
    pub_path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="key_id"):
        load_public(pub_path)
    pub_path.write_text("not json")
    with pytest.raises(KeyFileError, match="not valid JSON"):
        load_public(pub_path)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_keypair(tmp_path / "missing.key")
    with pytest.raises(KeyFileError, match="not an aml-private-key"):
        load_keypair(_private_copy(tmp_path, {"format": "other"}))


def _private_copy(tmp_path, doc):
    path = tmp_path / "other.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    return path


def test_key_id_depends_on_both_keys():
    a, b = BankKeyPair.generate(), BankKeyPair.generate()
    mixed = PublicKeys(a.public.x25519, b.public.ed25519)
    ids = {a.key_id, b.key_id, mixed.key_id}
    assert len(ids) == 3
