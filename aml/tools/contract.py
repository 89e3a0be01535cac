"""The IBM Hyper Protect contract: encrypt its sections, sign them, write the deployable file.

A contract has two sections. ``workload`` says what runs (the compose file, with the enclave
image pinned by digest); ``env`` says how it runs here (logging, volume seeds, the consortium
membership and the attestation key, see docs/deploy.md). Each section is encrypted to the
per-image IBM encryption certificate so only the Secure Execution guest can read it, and the
pair is signed (``envWorkloadSignature``) so the guest refuses a workload paired with a
different env, or the other way round.

Encrypted section format, as IBM documents it and its reference tooling (ibm-hyper-protect/
contract-go ``common/encrypt``) produces it, rebuilt here with ``cryptography`` primitives::

    hyper-protect-basic.<base64 RSA(password)>.<base64 openssl-enc blob>

* password: random; we use base64 of 32 random bytes (44 printable ASCII bytes). IBM's shell
  recipe feeds the password to ``openssl enc -pass``, which stops at a newline or NUL byte, so a
  printable password decrypts identically under every reading of that recipe.
* RSA(password): ``openssl pkeyutl -encrypt -certin -pkeyopt rsa_padding_mode:pkcs1``, i.e.
  RSAES-PKCS1-v1_5 with the certificate's public key. (OAEP would be the better primitive, but
  the guest's decrypter expects PKCS#1 v1.5; the decryption happens inside the guest, where no
  padding oracle is exposed.)
* openssl-enc blob: ``openssl enc -aes-256-cbc -pbkdf2`` defaults: ``b"Salted__"`` + 8-byte salt
  + AES-256-CBC/PKCS#7 ciphertext, key and IV = PBKDF2-HMAC-SHA256(password, salt, 10000
  iterations, 48 bytes) split 32/16.

``envWorkloadSignature`` = base64 RSA-PKCS#1-v1.5-SHA256 signature over the encrypted workload
string followed by the encrypted env string (``openssl dgst -sha256 -sign``); the matching
public key goes into the env section as ``signingKey`` before it is encrypted.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from aml.core.errors import BadInputError, SignatureError, TamperedError

PREFIX = "hyper-protect-basic"
OPENSSL_SALT_MAGIC = b"Salted__"
PBKDF2_ITERATIONS = 10_000  # openssl enc -pbkdf2 default
PLACEHOLDER = "REPLACE_ME"
DIGEST_PINNED_IMAGE = re.compile(r"^\S+@sha256:[0-9a-f]{64}$")


# --- section encryption --------------------------------------------------------------------
def _key_iv(password: bytes, salt: bytes) -> tuple[bytes, bytes]:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=48, salt=salt, iterations=PBKDF2_ITERATIONS)
    material = kdf.derive(password)
    return material[:32], material[32:]


def _rsa_public_from_pem(pem: bytes) -> rsa.RSAPublicKey:
    """Accepts an X.509 certificate (IBM's encryption certificate) or a bare public key."""
    try:
        key = x509.load_pem_x509_certificate(pem).public_key()
    except ValueError:
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise BadInputError("encryption certificate is not a PEM certificate or public key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadInputError("encryption certificate does not hold an RSA public key")
    return key


def encrypt_section(plaintext: bytes, encryption_cert_pem: bytes) -> str:
    """Encrypt one contract section to the Hyper Protect encryption certificate."""
    public_key = _rsa_public_from_pem(encryption_cert_pem)
    password = base64.b64encode(os.urandom(32))
    wrapped = public_key.encrypt(password, PKCS1v15())
    salt = os.urandom(8)
    key, iv = _key_iv(password, salt)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    blob = OPENSSL_SALT_MAGIC + salt + encryptor.update(padded) + encryptor.finalize()
    return f"{PREFIX}.{base64.b64encode(wrapped).decode()}.{base64.b64encode(blob).decode()}"


def decrypt_section(token: str, private_key_pem: bytes) -> bytes:
    """Inverse of `encrypt_section`, for tests and for auditors holding their own test key.
    (Production contracts are decrypted only inside the Secure Execution guest.)"""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise BadInputError(f"not a {PREFIX}.<password>.<data> string")
    private_key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise BadInputError("decryption key is not an RSA private key")
    try:
        password = private_key.decrypt(base64.b64decode(parts[1], validate=True), PKCS1v15())
        blob = base64.b64decode(parts[2], validate=True)
    except ValueError as exc:
        raise TamperedError("contract section does not decrypt with this key") from exc
    if not blob.startswith(OPENSSL_SALT_MAGIC) or len(blob) < 32 or (len(blob) - 16) % 16:
        raise TamperedError("contract section data is not an openssl 'Salted__' blob")
    # openssl's -pass reads up to the first newline / NUL: honour that for foreign passwords
    password = password.split(b"\n", 1)[0].split(b"\0", 1)[0]
    key, iv = _key_iv(password, blob[8:16])
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(blob[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise TamperedError("contract section padding is wrong (altered data or wrong key)") from exc


# --- signing ---------------------------------------------------------------------------------
def _signing_private_key(signing_key_pem: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(signing_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise BadInputError("signing key is not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BadInputError("signing key must be an RSA private key (Hyper Protect requires RSA)")
    return key


def signing_public_pem(signing_key_pem: bytes) -> str:
    """The ``signingKey`` value for the env section: the signing key's public half, PEM."""
    public = _signing_private_key(signing_key_pem).public_key()
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def sign_contract(workload_enc: str, env_enc: str, signing_key_pem: bytes) -> str:
    """``envWorkloadSignature``: base64 RSA-SHA256 (PKCS#1 v1.5) over workload + env."""
    key = _signing_private_key(signing_key_pem)
    signature = key.sign((workload_enc + env_enc).encode("ascii"), PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode()


def verify_contract_signature(workload_enc: str, env_enc: str, signature_b64: str,
                              public_key_pem: bytes) -> None:
    """What the guest checks at boot; raises SignatureError when the pair was not signed."""
    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadInputError("contract signing key is not an RSA public key")
    try:
        key.verify(base64.b64decode(signature_b64), (workload_enc + env_enc).encode("ascii"),
                   PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("envWorkloadSignature does not match the workload and env sections") from exc


# --- building the contract from the template --------------------------------------------------
def compose_archive(compose_yaml: str) -> str:
    """Base64 of a reproducible tar.gz holding docker-compose.yml (what ``compose.archive``
    takes). Fixed mtime, owner and mode, so the same compose file gives the same workload hash."""
    data = compose_yaml.encode()
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("docker-compose.yml")
        info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
        tar.addfile(info, io.BytesIO(data))
    gz_buf = io.BytesIO()
    with gzip.GzipFile(fileobj=gz_buf, mode="wb", mtime=0) as gz:
        gz.write(tar_buf.getvalue())
    return base64.b64encode(gz_buf.getvalue()).decode()


def _check_compose(compose: dict) -> list[str]:
    """Every service image pinned by digest; returns the image references."""
    services = compose.get("services") if isinstance(compose, dict) else None
    if not isinstance(services, dict) or not services:
        raise BadInputError("compose_file has no services")
    images = []
    for name, service in services.items():
        image = str((service or {}).get("image", ""))
        if not DIGEST_PINNED_IMAGE.match(image) or ":latest" in image:
            raise BadInputError(f"compose service {name!r}: image must be pinned as NAME@sha256:<64 hex>")
        images.append(image)
    return images


def _unfilled(node, path: str = "") -> list[str]:
    """Paths of the template values (not comments) that still hold a placeholder."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _unfilled(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _unfilled(v, f"{path}[{i}]")]
    return [path] if PLACEHOLDER in str(node) else []


def build_contract(template_text: str, encryption_cert_pem: bytes,
                   signing_key_pem: bytes) -> tuple[str, dict]:
    """Fill, encrypt and sign a contract template. Returns (contract YAML, hashes) where hashes
    holds the sha256 of each encrypted section: the values banks pin in their policy as
    ``trust.expected_checksums`` (``contract:workload`` / ``contract:env``)."""
    import yaml  # PyYAML: already installed with Prefect; only this operator command needs it

    try:
        doc = yaml.safe_load(template_text)
    except yaml.YAMLError as exc:
        raise BadInputError(f"template is not valid YAML ({type(exc).__name__})") from exc
    if not isinstance(doc, dict):
        raise BadInputError("template must be a YAML mapping with workload and env sections")
    unfilled = _unfilled(doc)
    if unfilled:
        raise BadInputError(f"template still has {PLACEHOLDER} values at {', '.join(unfilled[:5])}: fill them in first")
    workload, env = doc.get("workload"), doc.get("env")
    if not isinstance(workload, dict) or workload.get("type") != "workload":
        raise BadInputError("template section 'workload' must be a mapping with type: workload")
    if not isinstance(env, dict) or env.get("type") != "env":
        raise BadInputError("template section 'env' must be a mapping with type: env")
    compose_text = doc.get("compose_file")
    if compose_text is not None:
        images = _check_compose(yaml.safe_load(compose_text))
        workload = dict(workload)
        workload["compose"] = {"archive": compose_archive(compose_text)}
    else:
        images = []
    if "compose" not in workload and "play" not in workload:
        raise BadInputError("workload needs compose_file (or a compose/play section)")

    env = dict(env)
    env["signingKey"] = signing_public_pem(signing_key_pem)
    workload_text = yaml.safe_dump(workload, sort_keys=True, default_flow_style=False)
    env_text = yaml.safe_dump(env, sort_keys=True, default_flow_style=False)
    workload_enc = encrypt_section(workload_text.encode(), encryption_cert_pem)
    env_enc = encrypt_section(env_text.encode(), encryption_cert_pem)
    contract = {
        "workload": workload_enc,
        "env": env_enc,
        "envWorkloadSignature": sign_contract(workload_enc, env_enc, signing_key_pem),
    }
    if doc.get("attestationPublicKey"):
        contract["attestationPublicKey"] = doc["attestationPublicKey"]
    hashes_ = {
        "contract:workload": hashlib.sha256(workload_enc.encode()).hexdigest(),
        "contract:env": hashlib.sha256(env_enc.encode()).hexdigest(),
        "workload_plaintext_sha256": hashlib.sha256(workload_text.encode()).hexdigest(),
        "env_plaintext_sha256": hashlib.sha256(env_text.encode()).hexdigest(),
        "images": images,
    }
    return yaml.safe_dump(contract, sort_keys=False, width=1 << 30), hashes_


def contract_command(args: argparse.Namespace) -> int:
    """``aml enclave contract``: writes OUT (the contract, user-data) and OUT.hashes.json."""
    def read(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise BadInputError(f"cannot read {what} {path}: {exc.strerror}") from exc

    template = read(args.template, "template").decode("utf-8", errors="strict")
    contract, hashes_ = build_contract(template, read(args.encryption_cert, "encryption certificate"),
                                       read(args.signing_key, "signing key"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(contract)
    hashes_path = out.with_name(out.name + ".hashes.json")
    hashes_path.write_text(json.dumps(hashes_, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out} and {hashes_path}")
    print(f"contract:workload {hashes_['contract:workload']}")
    print(f"contract:env {hashes_['contract:env']}")
    return 0
