"""Bank key pairs and key files.

A party (bank or enclave) holds two key pairs: X25519 (others seal files *to* it) and Ed25519
(it signs the files it seals). Key files are small JSON documents with hex-encoded raw keys:

    ID.pub  {"format": "aml-public-key/1", "bank": ID, "x25519": hex, "ed25519": hex, "key_id": hex}
    ID.key  {"format": "aml-private-key/1", "bank": ID, "x25519": hex, "ed25519": hex, "key_id": hex}

Private key files are written unencrypted with mode 0600 (created with that mode, never
chmod-ed afterwards) and refused on load when group or others can read them, as OpenSSH does.
Why not a passphrase: `cryptography`'s PKCS8 `BestAvailableEncryption` derives its key with
PBKDF2 at only 2048 iterations, which adds little against an offline guesser while suggesting
safety; file permissions, disk encryption or an HSM/KMS are the honest protections.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from aml.core.errors import BadInputError, KeyFileError

PUBLIC_FORMAT = "aml-public-key/1"
PRIVATE_FORMAT = "aml-private-key/1"
KEY_ID_LABEL = b"aml-key-id/1\x00"
# Bank ids end up in file names and headers: keep them to a safe, boring alphabet.
BANK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED_IDS = frozenset({"enclave"})


def check_bank_id(bank_id: str) -> str:
    if not isinstance(bank_id, str) or not BANK_ID_RE.match(bank_id):
        raise BadInputError(
            "bank id must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if bank_id in RESERVED_IDS:
        raise BadInputError(f"bank id '{bank_id}' is reserved")
    return bank_id


def raw_public(key) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def raw_private(key) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def key_id(x25519_raw: bytes, ed25519_raw: bytes) -> str:
    """Fingerprint of a party's two public keys: 16 hex chars of a labelled SHA-256."""
    return hashlib.sha256(KEY_ID_LABEL + x25519_raw + ed25519_raw).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class PublicKeys:
    x25519: X25519PublicKey
    ed25519: Ed25519PublicKey
    bank: str | None = None

    @classmethod
    def from_raw(cls, x25519: bytes, ed25519: bytes, bank: str | None = None) -> "PublicKeys":
        try:
            return cls(X25519PublicKey.from_public_bytes(x25519), Ed25519PublicKey.from_public_bytes(ed25519), bank)
        except ValueError as exc:
            raise KeyFileError("public key is not a valid 32-byte X25519/Ed25519 key") from exc

    @property
    def x25519_raw(self) -> bytes:
        return raw_public(self.x25519)

    @property
    def ed25519_raw(self) -> bytes:
        return raw_public(self.ed25519)

    @property
    def key_id(self) -> str:
        return key_id(self.x25519_raw, self.ed25519_raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKeys):
            return NotImplemented
        return (self.x25519_raw, self.ed25519_raw) == (other.x25519_raw, other.ed25519_raw)

    def __hash__(self) -> int:
        return hash((self.x25519_raw, self.ed25519_raw))

    def to_json(self) -> dict:
        return {
            "format": PUBLIC_FORMAT, "bank": self.bank, "x25519": self.x25519_raw.hex(),
            "ed25519": self.ed25519_raw.hex(), "key_id": self.key_id,
        }


@dataclass(frozen=True, eq=False)
class BankKeyPair:
    x25519: X25519PrivateKey
    ed25519: Ed25519PrivateKey
    bank: str | None = None

    @classmethod
    def generate(cls, bank: str | None = None) -> "BankKeyPair":
        return cls(X25519PrivateKey.generate(), Ed25519PrivateKey.generate(), bank)

    @property
    def public(self) -> PublicKeys:
        return PublicKeys(self.x25519.public_key(), self.ed25519.public_key(), self.bank)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def to_json(self) -> dict:
        return {
            "format": PRIVATE_FORMAT, "bank": self.bank, "x25519": raw_private(self.x25519).hex(),
            "ed25519": raw_private(self.ed25519).hex(), "key_id": self.key_id,
        }


# --- private files: created 0600, refused when looser --------------------------------------

def write_private_json(path: Path, doc: dict) -> Path:
    """Create `path` holding `doc` with mode 0600 from the first byte; never overwrite.

    Written to a 0600 temporary file, then hard-linked into place (fails if `path` exists),
    so a crash never leaves a half-written key under the final name.
    """
    path = Path(path)
    if path.exists():
        raise KeyFileError(f"'{path}' already exists; refusing to overwrite a private key")
    tmp = path.with_name(path.name + ".tmp")
    data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"'{tmp}' exists (an interrupted earlier write?); remove it and retry") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        raise KeyFileError(f"'{path}' already exists; refusing to overwrite a private key") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_private_json(path: Path, expected_format: str) -> dict:
    """Read a private JSON key file, refusing it when group or others can access it."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"private key file '{path}' does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read private key file '{path}' ({exc.strerror})") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"permissions {mode:04o} for '{path}' are too open; private key files must not be "
            "accessible by others (chmod 600)"
        )
    return _read_json(path, expected_format, "private key")


def _read_json(path: Path, expected_format: str, what: str) -> dict:
    try:
        doc = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise KeyFileError(f"{what} file '{path}' does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} file '{path}' ({exc.strerror})") from None
    except ValueError:
        raise KeyFileError(f"{what} file '{path}' is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != expected_format:
        raise KeyFileError(f"'{path}' is not an {expected_format} {what} file")
    return doc


def _hex32(doc: dict, field: str, path: Path) -> bytes:
    value = doc.get(field)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise KeyFileError(f"'{path}': field '{field}' must be 64 hex characters")
    return raw


def _check_key_id(doc: dict, actual: str, path: Path) -> None:
    if doc.get("key_id") not in (None, actual):
        raise KeyFileError(f"'{path}': key_id {doc.get('key_id')} does not match its keys ({actual})")


# --- the public API ----------------------------------------------------------------------

def write_keypair(bank_id: str, out_dir: Path) -> tuple[Path, Path]:
    """Generate a bank's key pairs; write OUT/ID.key (0600) and OUT/ID.pub."""
    check_bank_id(bank_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out_dir / f"{bank_id}.key", out_dir / f"{bank_id}.pub"
    if pub_path.exists():
        raise KeyFileError(f"'{pub_path}' already exists; refusing to replace a bank's keys")
    pair = BankKeyPair.generate(bank_id)
    write_private_json(key_path, pair.to_json())
    tmp = pub_path.with_name(pub_path.name + ".tmp")
    tmp.write_text(json.dumps(pair.public.to_json(), indent=1, sort_keys=True) + "\n")
    os.replace(tmp, pub_path)
    return key_path, pub_path


def keypair_from_json(doc: dict, path: Path) -> BankKeyPair:
    x = X25519PrivateKey.from_private_bytes(_hex32(doc, "x25519", path))
    e = Ed25519PrivateKey.from_private_bytes(_hex32(doc, "ed25519", path))
    pair = BankKeyPair(x, e, doc.get("bank"))
    _check_key_id(doc, pair.key_id, path)
    return pair


def load_keypair(path: Path) -> BankKeyPair:
    path = Path(path)
    return keypair_from_json(read_private_json(path, PRIVATE_FORMAT), path)


def load_public(path: Path) -> PublicKeys:
    path = Path(path)
    doc = _read_json(path, PUBLIC_FORMAT, "public key")
    pub = PublicKeys.from_raw(_hex32(doc, "x25519", path), _hex32(doc, "ed25519", path), doc.get("bank"))
    _check_key_id(doc, pub.key_id, path)
    return pub
