"""Hyper Protect contract: section encryption (openssl-compatible), signing, template checks."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

import aml
from aml.tools.contract import (
    build_contract, compose_archive, decrypt_section, encrypt_section, sign_contract,
    signing_public_pem, verify_contract_signature,
)
from aml.core.errors import BadInputError, SignatureError, TamperedError

TEMPLATE = Path(aml.__file__).resolve().parents[1] / "enclave_image" / "contract.template.yaml"
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")


def _rsa_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _self_signed(key) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test hpcr encryption")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


ENC_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ENC_KEY_PEM = _rsa_pem(ENC_KEY)
ENC_CERT_PEM = _self_signed(ENC_KEY)
SIGN_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SIGN_KEY_PEM = _rsa_pem(SIGN_KEY)


def filled_template(image_digest: str = "ab" * 32) -> str:
    text = TEMPLATE.read_text()
    text = text.replace("REPLACE_ME_IMAGE_DIGEST", image_digest)
    return re.sub(r"REPLACE_ME\w*", "filled-value-0123456789", text)


# --- encryption --------------------------------------------------------------------------------
def test_roundtrip_and_format():
    token = encrypt_section(b"type: workload\n", ENC_CERT_PEM)
    prefix, wrapped, data = token.split(".")
    assert prefix == "hyper-protect-basic"
    assert len(base64.b64decode(wrapped)) == 256  # one RSA-2048 block
    blob = base64.b64decode(data)
    assert blob[:8] == b"Salted__" and (len(blob) - 16) % 16 == 0
    assert decrypt_section(token, ENC_KEY_PEM) == b"type: workload\n"


def test_each_encryption_uses_a_fresh_password_and_salt():
    a, b = encrypt_section(b"same", ENC_CERT_PEM), encrypt_section(b"same", ENC_CERT_PEM)
    assert a != b and a.split(".")[2] != b.split(".")[2]


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=600))
def test_roundtrip_property(plaintext):
    assert decrypt_section(encrypt_section(plaintext, ENC_CERT_PEM), ENC_KEY_PEM) == plaintext


def test_bare_public_key_is_accepted_as_encryption_key():
    pub = ENC_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    assert decrypt_section(encrypt_section(b"x", pub), ENC_KEY_PEM) == b"x"


def test_non_rsa_certificate_is_refused():
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(BadInputError, match="RSA"):
        encrypt_section(b"x", _self_signed(ec_key))
    with pytest.raises(BadInputError):
        encrypt_section(b"x", b"not a pem")


def test_wrong_key_or_altered_data_does_not_decrypt():
    token = encrypt_section(b"type: env\nsecret: 1\n" * 4, ENC_CERT_PEM)
    other = _rsa_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(TamperedError):
        decrypt_section(token, other)
    prefix, wrapped, data = token.split(".")
    blob = bytearray(base64.b64decode(data))
    blob[-1] ^= 0xFF  # last block -> padding check fails
    altered = ".".join([prefix, wrapped, base64.b64encode(bytes(blob)).decode()])
    with pytest.raises(TamperedError):
        decrypt_section(altered, ENC_KEY_PEM)
    with pytest.raises(BadInputError):
        decrypt_section("hyper-protect-basic.only-two", ENC_KEY_PEM)


@needs_openssl
def test_openssl_decrypts_what_we_encrypt(tmp_path: Path):
    """Decrypt with IBM's documented openssl recipe: pkeyutl for the password, enc for the data."""
    plaintext = b"type: workload\ncompose:\n  archive: abc\n"
    _, wrapped, data = encrypt_section(plaintext, ENC_CERT_PEM).split(".")
    (tmp_path / "key.pem").write_bytes(ENC_KEY_PEM)
    (tmp_path / "pw.enc").write_bytes(base64.b64decode(wrapped))
    (tmp_path / "data.enc").write_bytes(base64.b64decode(data))
    password = subprocess.run([OPENSSL, "pkeyutl", "-decrypt", "-inkey", tmp_path / "key.pem",
                               "-in", tmp_path / "pw.enc"], capture_output=True, check=True).stdout
    out = subprocess.run([OPENSSL, "enc", "-d", "-aes-256-cbc", "-pbkdf2", "-pass", "stdin",
                          "-in", tmp_path / "data.enc"], input=password, capture_output=True,
                         check=True).stdout
    assert out == plaintext


@needs_openssl
def test_we_decrypt_what_openssl_encrypts(tmp_path: Path):
    """The reverse direction: IBM's tooling (openssl rand/pkeyutl/enc) produced the section."""
    password = base64.b64encode(b"\x01" * 32)
    (tmp_path / "cert.pem").write_bytes(ENC_CERT_PEM)
    wrapped = subprocess.run([OPENSSL, "pkeyutl", "-encrypt", "-certin", "-inkey", tmp_path / "cert.pem",
                              "-pkeyopt", "rsa_padding_mode:pkcs1"], input=password,
                             capture_output=True, check=True).stdout
    data = subprocess.run([OPENSSL, "enc", "-aes-256-cbc", "-pbkdf2", "-pass", "stdin"],
                          input=password + b"\n" + b"env-section-bytes", capture_output=True,
                          check=True).stdout
    # openssl read the password line and encrypted the rest of stdin
    token = f"hyper-protect-basic.{base64.b64encode(wrapped).decode()}.{base64.b64encode(data).decode()}"
    assert decrypt_section(token, ENC_KEY_PEM) == b"env-section-bytes"


# --- signing -------------------------------------------------------------------------------------
def test_signature_covers_workload_then_env():
    w, e = encrypt_section(b"w", ENC_CERT_PEM), encrypt_section(b"e", ENC_CERT_PEM)
    sig = sign_contract(w, e, SIGN_KEY_PEM)
    pub = signing_public_pem(SIGN_KEY_PEM).encode()
    verify_contract_signature(w, e, sig, pub)
    other_env = encrypt_section(b"e", ENC_CERT_PEM)
    with pytest.raises(SignatureError):
        verify_contract_signature(w, other_env, sig, pub)  # env swapped for another
    with pytest.raises(SignatureError):
        verify_contract_signature(e, w, sig, pub)  # order matters


@needs_openssl
def test_openssl_verifies_our_signature(tmp_path: Path):
    w, e = "hyper-protect-basic.AAAA.BBBB", "hyper-protect-basic.CCCC.DDDD"
    (tmp_path / "sig").write_bytes(base64.b64decode(sign_contract(w, e, SIGN_KEY_PEM)))
    (tmp_path / "pub.pem").write_text(signing_public_pem(SIGN_KEY_PEM))
    (tmp_path / "data").write_text(w + e)
    out = subprocess.run([OPENSSL, "dgst", "-sha256", "-verify", tmp_path / "pub.pem", "-signature",
                          tmp_path / "sig", tmp_path / "data"], capture_output=True, text=True)
    assert out.returncode == 0 and "Verified OK" in out.stdout


def test_signing_key_must_be_rsa():
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(BadInputError, match="RSA"):
        sign_contract("a", "b", ec_pem)


# --- the template and the contract ---------------------------------------------------------------
def test_unfilled_template_is_refused():
    with pytest.raises(BadInputError, match="REPLACE_ME"):
        build_contract(TEMPLATE.read_text(), ENC_CERT_PEM, SIGN_KEY_PEM)


@pytest.mark.parametrize("image", ["registry/enclave-aml:latest", "registry/enclave-aml:1.0",
                                   "registry/enclave-aml@sha256:abc"])
def test_image_not_pinned_by_digest_is_refused(image):
    text = filled_template().replace("filled-value-0123456789/enclave-aml@sha256:" + "ab" * 32, image)
    assert image in text
    with pytest.raises(BadInputError, match="pinned"):
        build_contract(text, ENC_CERT_PEM, SIGN_KEY_PEM)


def test_built_contract_decrypts_signs_and_hashes():
    contract_text, hashes_ = build_contract(filled_template(), ENC_CERT_PEM, SIGN_KEY_PEM)
    contract = yaml.safe_load(contract_text)
    assert set(contract) == {"workload", "env", "envWorkloadSignature"}
    assert "REPLACE_ME" not in contract_text and "filled-value" not in contract_text  # all encrypted
    env = yaml.safe_load(decrypt_section(contract["env"], ENC_KEY_PEM))
    workload = yaml.safe_load(decrypt_section(contract["workload"], ENC_KEY_PEM))
    assert env["type"] == "env" and workload["type"] == "workload"
    assert env["signingKey"] == signing_public_pem(SIGN_KEY_PEM)
    verify_contract_signature(contract["workload"], contract["env"], contract["envWorkloadSignature"],
                              env["signingKey"].encode())
    assert hashes_["contract:workload"] == hashlib.sha256(contract["workload"].encode()).hexdigest()
    assert hashes_["contract:env"] == hashlib.sha256(contract["env"].encode()).hexdigest()
    # the compose archive inside the workload carries the digest-pinned image
    archive = base64.b64decode(workload["compose"]["archive"])
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        compose = yaml.safe_load(tar.extractfile("docker-compose.yml").read())
    assert compose["services"]["enclave"]["image"].endswith("@sha256:" + "ab" * 32)
    assert hashes_["images"] == [compose["services"]["enclave"]["image"]]


def test_compose_archive_is_reproducible():
    text = "services:\n  a:\n    image: r/x@sha256:" + "0" * 64 + "\n"
    assert compose_archive(text) == compose_archive(text)
    assert compose_archive(text) != compose_archive(text + "# changed\n")


def test_cli_writes_contract_and_hashes(tmp_path: Path):
    (tmp_path / "t.yaml").write_text(filled_template())
    (tmp_path / "enc.crt").write_bytes(ENC_CERT_PEM)
    (tmp_path / "sign.key").write_bytes(SIGN_KEY_PEM)
    cmd = [sys.executable, "-m", "aml.cli", "enclave", "contract", "--template", str(tmp_path / "t.yaml"),
           "--encryption-cert", str(tmp_path / "enc.crt"), "--signing-key", str(tmp_path / "sign.key"),
           "--out", str(tmp_path / "user-data.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    contract = yaml.safe_load((tmp_path / "user-data.yaml").read_text())
    assert contract["workload"].startswith("hyper-protect-basic.")
    hashes_ = yaml.safe_load((tmp_path / "user-data.yaml.hashes.json").read_text())
    assert hashes_["contract:env"] == hashlib.sha256(contract["env"].encode()).hexdigest()
    assert f"contract:env {hashes_['contract:env']}" in out.stdout

    (tmp_path / "t.yaml").write_text(TEMPLATE.read_text())
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 2 and "REPLACE_ME" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
