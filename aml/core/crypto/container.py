"""The sealed container, format v1 (specified byte by byte in docs/format.md).

    magic "AMLSEAL" | version 0x01 | u32 header_len | header (canonical JSON)
    | u16 wrapped_len | wrapped data key (HPKE) | commitment (32) | u64 payload_len
    | chunks (AES-256-GCM, STREAM nonces) | Ed25519 signature (64)

A fresh 32-byte data key per file is wrapped to the recipient with HPKE (RFC 9180, Base mode,
X25519 / HKDF-SHA256 / AES-256-GCM) with the header's hash in `info`. The payload key and a key
commitment are derived from the data key with HKDF salted with the header's hash. The payload
(an 8-byte length prefix, the data, optional zero padding) is encrypted in chunks whose nonce is
a counter and a last-chunk flag, so truncation, reordering and extension fail. The sender signs
the header and a SHA-256 of everything after it. Files are streamed chunk by chunk through
reused buffers: sealing or opening a 1 GiB file holds about two chunks in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import io
import json
import mmap
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aml.core.crypto.padding import padme
from aml.core.errors import (
    BadInputError, ExpiredError, FormatError, ReplayError, SignatureError, TamperedError,
    TrailingDataError, TruncatedError, WrongRecipientError,
)

FORMAT_VERSION = 1
MAGIC = b"AMLSEAL"  # followed by one version byte
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 << 20
MAX_HEADER_LEN = 64 << 10
TAG_LEN = 16
COMMITMENT_LEN = 32
SIGNATURE_LEN = 64
LENGTH_PREFIX_LEN = 8
WRAPPED_KEY_LEN = 80  # HPKE X25519 enc (32) + AES-256-GCM of the 32-byte data key (48)
KINDS = ("batch", "alerts")
ENCLAVE = "enclave"

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
WRAP_LABEL = b"aml-seal/1 wrap\x00"
PAYLOAD_KEY_LABEL = b"aml-seal/1 payload key"
COMMITMENT_LABEL = b"aml-seal/1 key commitment"
SIGNATURE_LABEL = b"aml-seal/1 signature\x00"

_PARTY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BATCH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MAX_INT = (1 << 63) - 1

_u16, _u32, _u64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")


# --- header ------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Header:
    """The cleartext, signed header. The operator sees every field (by design)."""

    format_version: int = FORMAT_VERSION
    kind: str  # "batch" | "alerts"
    sender: str  # bank id, or "enclave"
    recipient: str  # "enclave", or bank id
    batch_id: str
    sequence: int
    created: int  # unix seconds
    expires: int  # unix seconds
    schema_version: int
    row_count: int
    recipient_key_id: str
    sender_key_id: str
    provenance: dict = field(default_factory=dict)
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        problem = _header_problem(dataclasses.asdict(self))
        if problem:
            raise BadInputError(f"invalid header: {problem}")

    def to_bytes(self) -> bytes:
        return canonical_json(dataclasses.asdict(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Header":
        try:
            doc = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise FormatError("header is not valid UTF-8 JSON") from None
        if not isinstance(doc, dict):
            raise FormatError("header is not a JSON object")
        problem = _header_problem(doc)
        if problem:
            raise FormatError(f"header is malformed: {problem}")
        if canonical_json(doc) != bytes(data):  # one byte string per header: no parser differentials
            raise FormatError("header is not canonical JSON (sorted keys, no whitespace, no duplicates)")
        return cls(**doc)


_HEADER_TYPES: dict[str, type] = {
    "format_version": int, "kind": str, "sender": str, "recipient": str, "batch_id": str,
    "sequence": int, "created": int, "expires": int, "schema_version": int, "row_count": int,
    "recipient_key_id": str, "sender_key_id": str, "provenance": dict, "chunk_size": int,
}


def _header_problem(doc: dict) -> str | None:
    """The first thing wrong with a header dict, or None. No field values in messages."""
    missing = sorted(set(_HEADER_TYPES) - set(doc))
    extra = sorted(set(doc) - set(_HEADER_TYPES))
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if extra:
        return f"unknown field(s) {', '.join(repr(e)[:40] for e in extra[:3])}"
    for name, typ in _HEADER_TYPES.items():
        value = doc[name]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            return f"field {name} must be {typ.__name__}"
        if typ is int and not 0 <= value <= _MAX_INT:
            return f"field {name} is out of range"
    if doc["format_version"] != FORMAT_VERSION:
        return f"format_version must be {FORMAT_VERSION}"
    if doc["kind"] not in KINDS:
        return "kind must be 'batch' or 'alerts'"
    for name in ("sender", "recipient"):
        if not _PARTY_RE.match(doc[name]):
            return f"field {name} is not a valid party id"
    if not _BATCH_ID_RE.match(doc["batch_id"]):
        return "batch_id must be 1-128 letters, digits, '.', '_' or '-'"
    for name in ("recipient_key_id", "sender_key_id"):
        if len(doc[name]) > 64:
            return f"field {name} is too long"
    if not MIN_CHUNK_SIZE <= doc["chunk_size"] <= MAX_CHUNK_SIZE:
        return f"chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
    try:
        size = len(canonical_json(doc))
    except (TypeError, ValueError):
        return "provenance must be plain JSON (no NaN, bytes or objects)"
    if size > MAX_HEADER_LEN:
        return f"header is longer than {MAX_HEADER_LEN} bytes"
    return None


def canonical_json(obj) -> bytes:
    """Sorted keys, no whitespace, ASCII only: one byte string per value, so hashes agree."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def check_sequence(header: Header, last_accepted: int | None) -> None:
    """TUF's rule: never accept a sequence number at or below the last accepted one."""
    if last_accepted is not None and header.sequence <= last_accepted:
        raise ReplayError(
            f"sequence {header.sequence} is not above the last accepted {last_accepted}",
            batch_id=header.batch_id,
        )


# --- key handling ------------------------------------------------------------------------

def _x25519_public(key) -> X25519PublicKey:
    if isinstance(key, X25519PublicKey):
        return key
    if isinstance(key, (bytes, bytearray)) and len(key) == 32:
        return X25519PublicKey.from_public_bytes(bytes(key))
    if isinstance(getattr(key, "x25519", None), X25519PublicKey):  # PublicKeys
        return key.x25519
    raise BadInputError("recipient key must be an X25519 public key (object, 32 raw bytes or PublicKeys)")


def _ed25519_public(key) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, (bytes, bytearray)) and len(key) == 32:
        return Ed25519PublicKey.from_public_bytes(bytes(key))
    if isinstance(getattr(key, "ed25519", None), Ed25519PublicKey):  # PublicKeys
        return key.ed25519
    raise BadInputError("sender key must be an Ed25519 public key (object, 32 raw bytes or PublicKeys)")


def _ed25519_private(key) -> Ed25519PrivateKey:
    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(getattr(key, "ed25519", None), Ed25519PrivateKey):  # BankKeyPair, EnclaveKeys
        return key.ed25519
    raise BadInputError("sender must be an Ed25519 private key or a key pair holding one")


def _x25519_private(key) -> X25519PrivateKey:
    if isinstance(key, X25519PrivateKey):
        return key
    if isinstance(getattr(key, "x25519", None), X25519PrivateKey):
        return key.x25519
    raise BadInputError("recipient key must be an X25519 private key or a key pair holding one")


def _derive(data_key: bytes, header_hash: bytes) -> tuple[bytes, bytes]:
    """(payload key, key commitment), both bound to the header through the HKDF salt."""
    def hkdf(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=header_hash, info=info).derive(data_key)
    return hkdf(PAYLOAD_KEY_LABEL), hkdf(COMMITMENT_LABEL)


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def chunk_count(payload_len: int, chunk_size: int) -> int:
    return max(1, -(-payload_len // chunk_size))


def stream_length(payload_len: int, chunk_size: int) -> int:
    return payload_len + TAG_LEN * chunk_count(payload_len, chunk_size)


def payload_length(data_len: int, pad: bool, pad_to: int = 0) -> int:
    """Plaintext length: the 8-byte length prefix, the data, and Padmé padding if asked, then
    zero padding up to `pad_to` bytes (alert files: every member's file of a run one size)."""
    length = LENGTH_PREFIX_LEN + data_len
    return max(padme(length) if pad else length, pad_to)


def sealed_length(header: Header, payload_len: int) -> int:
    """Size in bytes of the sealed file with this header and plaintext length (docs/format.md)."""
    return (len(MAGIC) + 1 + 4 + len(header.to_bytes()) + 2 + WRAPPED_KEY_LEN + COMMITMENT_LEN
            + LENGTH_PREFIX_LEN + stream_length(payload_len, header.chunk_size) + SIGNATURE_LEN)


# --- sealing -----------------------------------------------------------------------------

class _Plaintext:
    """The payload stream: u64 data length, the data (pulled with `read_into`), zero padding."""

    def __init__(self, read_into: Callable[[memoryview], int], data_len: int):
        self._prefix = _u64.pack(data_len)
        self._read_into = read_into
        self._data_left = data_len
        self._pos = 0

    def fill(self, view: memoryview) -> None:
        n = len(view)
        at = 0
        if self._pos < LENGTH_PREFIX_LEN:
            take = min(n, LENGTH_PREFIX_LEN - self._pos)
            view[:take] = self._prefix[self._pos : self._pos + take]
            at = take
        while at < n and self._data_left > 0:
            got = self._read_into(view[at : at + min(n - at, self._data_left)])
            if not got:
                raise BadInputError("input file shrank while it was being sealed")
            at += got
            self._data_left -= got
        if at < n:  # padding
            view[at:n] = bytes(n - at)
        self._pos += n


def _seal_stream(read_into, data_len: int, header: Header, recipient_x25519_public, sender, pad: bool,
                 write: Callable[[bytes | memoryview], object], pad_to: int = 0) -> None:
    if not isinstance(header, Header):
        raise BadInputError("header must be an aml.core.crypto.container.Header")
    recipient = _x25519_public(recipient_x25519_public)
    signer = _ed25519_private(sender)
    # Catch a mislabelled header early when the caller gave us whole key pairs.
    if hasattr(recipient_x25519_public, "key_id") and recipient_x25519_public.key_id != header.recipient_key_id:
        raise BadInputError("header recipient_key_id does not match the recipient key")
    if hasattr(sender, "key_id") and sender.key_id != header.sender_key_id:
        raise BadInputError("header sender_key_id does not match the signing key")

    chunk_size = header.chunk_size
    payload_len = payload_length(data_len, pad, pad_to)
    header_bytes = header.to_bytes()
    header_hash = hashlib.sha256(header_bytes).digest()
    data_key = os.urandom(32)
    wrapped = SUITE.encrypt(data_key, recipient, info=WRAP_LABEL + header_hash)
    payload_key, commitment = _derive(data_key, header_hash)

    write(MAGIC + bytes([FORMAT_VERSION]) + _u32.pack(len(header_bytes)) + header_bytes)
    body = hashlib.sha256()

    def emit(part) -> None:
        body.update(part)
        write(part)

    emit(_u16.pack(len(wrapped)) + wrapped + commitment + _u64.pack(payload_len))
    aead = AESGCM(payload_key)
    source = _Plaintext(read_into, data_len)
    n = chunk_count(payload_len, chunk_size)
    plain = memoryview(bytearray(min(chunk_size, payload_len)))
    cipher = memoryview(bytearray(len(plain) + TAG_LEN))
    for i in range(n):
        size = chunk_size if i < n - 1 else payload_len - chunk_size * (n - 1)
        source.fill(plain[:size])
        aead.encrypt_into(_nonce(i, i == n - 1), plain[:size], None, cipher[: size + TAG_LEN])
        emit(cipher[: size + TAG_LEN])
    write(signer.sign(SIGNATURE_LABEL + header_bytes + body.digest()))


def _memory_reader(view: memoryview) -> Callable[[memoryview], int]:
    pos = 0

    def read_into(buf: memoryview) -> int:
        nonlocal pos
        n = min(len(buf), len(view) - pos)
        buf[:n] = view[pos : pos + n]
        pos += n
        return n

    return read_into


def seal_bytes(payload: bytes, header: Header, recipient_x25519_public, sender, pad: bool = False,
               pad_to: int = 0) -> bytes:
    """Seal `payload` to the recipient's X25519 key, signed by `sender` (a key pair or an
    Ed25519 private key). `pad=True` pads to a Padmé bucket (alert files); `pad_to` pads the
    plaintext (length prefix included) further, to at least that many bytes."""
    view = memoryview(payload).cast("B")
    out = io.BytesIO()  # getvalue() hands over its buffer without a copy
    _seal_stream(_memory_reader(view), len(view), header, recipient_x25519_public, sender, pad, out.write,
                 pad_to)
    return out.getvalue()


def seal_file(src, dst: Path, header: Header, recipient_x25519_public, sender, pad: bool = False) -> Path:
    """Seal `src` (a file path, or bytes already in memory) into the file `dst`, streamed
    chunk by chunk; `dst` appears (atomically renamed from `dst.tmp`) only when complete."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        with open(tmp, "wb") as fout:
            if isinstance(src, (bytes, bytearray, memoryview)):
                view = memoryview(src).cast("B")
                _seal_stream(_memory_reader(view), len(view), header, recipient_x25519_public, sender, pad,
                             fout.write)
            else:
                with open(src, "rb") as fin:
                    data_len = os.fstat(fin.fileno()).st_size
                    _seal_stream(fin.readinto, data_len, header, recipient_x25519_public, sender, pad, fout.write)
                    if fin.read(1):
                        raise BadInputError("input file grew while it was being sealed")
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except FileNotFoundError as exc:
        raise BadInputError(f"cannot seal: '{exc.filename}' does not exist") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dst


# --- parsing -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Frame:
    header: Header
    header_bytes: bytes
    wrapped: bytes
    commitment: bytes
    payload_len: int
    body_start: int  # first byte after the header (the u16 wrapped_len)
    stream_start: int  # first chunk
    stream_len: int
    data: object  # bytes-like: the whole file (memoryview of bytes or of an mmap)

    @property
    def signature(self) -> bytes:
        end = self.stream_start + self.stream_len
        return bytes(self.data[end : end + SIGNATURE_LEN])

    def body(self) -> memoryview:
        return self.data[self.body_start : self.stream_start + self.stream_len]


@contextlib.contextmanager
def _source(path_or_bytes) -> Iterator[memoryview]:
    """The sealed file's bytes: given bytes as they are, a path memory-mapped read-only."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        yield memoryview(path_or_bytes).cast("B")
        return
    try:
        f = open(Path(path_or_bytes), "rb")
    except FileNotFoundError:
        raise BadInputError(f"sealed file '{path_or_bytes}' does not exist") from None
    except IsADirectoryError:
        raise BadInputError(f"'{path_or_bytes}' is a directory, not a sealed file") from None
    except OSError as exc:
        raise BadInputError(f"cannot read sealed file '{path_or_bytes}' ({exc.strerror})") from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            yield memoryview(b"")
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if hasattr(m, "madvise"):  # read front to back, twice: let the kernel read ahead
                m.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(m)
            try:
                yield view
            finally:
                view.release()


def _parse(data: memoryview) -> _Frame:
    size = len(data)
    if size < len(MAGIC) or bytes(data[: len(MAGIC)]) != MAGIC:
        raise FormatError("not a sealed file (bad magic)")
    fixed = len(MAGIC) + 1 + 4
    if size < fixed:
        raise TruncatedError("file is truncated inside the header length")
    version = data[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise FormatError(f"unsupported format version {version} (this reader knows {FORMAT_VERSION})")
    (header_len,) = _u32.unpack(data[len(MAGIC) + 1 : fixed])
    if not 0 < header_len <= MAX_HEADER_LEN:
        raise FormatError(f"header length {header_len} is out of range")
    if size < fixed + header_len + 2:
        raise TruncatedError("file is truncated inside the header")
    header_bytes = bytes(data[fixed : fixed + header_len])
    header = Header.from_bytes(header_bytes)
    at = fixed + header_len
    (wrapped_len,) = _u16.unpack(data[at : at + 2])
    if wrapped_len != 80:  # X25519 enc (32) + AES-256-GCM(32-byte key) (48)
        raise FormatError(f"wrapped key length {wrapped_len} is not 80")
    after_keys = at + 2 + wrapped_len + COMMITMENT_LEN + 8
    if size < after_keys:
        raise TruncatedError("file is truncated inside the wrapped key")
    wrapped = bytes(data[at + 2 : at + 2 + wrapped_len])
    commitment = bytes(data[at + 2 + wrapped_len : after_keys - 8])
    (payload_len,) = _u64.unpack(data[after_keys - 8 : after_keys])
    if not LENGTH_PREFIX_LEN <= payload_len <= _MAX_INT // 2:
        raise FormatError("payload length is out of range")
    stream_len = stream_length(payload_len, header.chunk_size)
    expected = after_keys + stream_len + SIGNATURE_LEN
    if size < expected:
        raise TruncatedError(f"file is truncated ({expected - size} bytes missing)")
    if size > expected:
        raise TrailingDataError(f"{size - expected} unexpected bytes after the signature")
    return _Frame(header, header_bytes, wrapped, commitment, payload_len, at, after_keys, stream_len, data)


def _check_signature(frame: _Frame, sender_ed25519_public) -> None:
    public = _ed25519_public(sender_ed25519_public)
    digest = hashlib.sha256(frame.body()).digest()
    try:
        public.verify(frame.signature, SIGNATURE_LABEL + frame.header_bytes + digest)
    except InvalidSignature:
        raise SignatureError(
            f"signature does not verify: the file was altered or is not signed by the "
            f"expected sender ('{frame.header.sender}' claimed)",
            batch_id=frame.header.batch_id,
        ) from None


def _check_recipient(header: Header, expected_recipient: str | None) -> None:
    if expected_recipient is not None and header.recipient != expected_recipient:
        raise WrongRecipientError(
            f"file is sealed for '{header.recipient}', not for '{expected_recipient}'", batch_id=header.batch_id
        )


def read_header(path_or_bytes) -> Header:
    """The header of a sealed file, parsed and checked for shape only: no keys, no signature."""
    with _source(path_or_bytes) as data:
        return _parse(data).header


def verify_sender(path_or_bytes, sender_ed25519_public, expected_recipient: str | None = None) -> Header:
    """Check the sender's signature over the header and the ciphertext, without decrypting.
    Needs no secret: the operator side runs it before anything reaches the enclave."""
    with _source(path_or_bytes) as data:
        frame = _parse(data)
        _check_signature(frame, sender_ed25519_public)
        _check_recipient(frame.header, expected_recipient)
        return frame.header


def _unlock(frame: _Frame, recipient_x25519_private, expected_recipient: str, now: int | None,
            check_expiry: bool) -> AESGCM:
    """Every check short of the chunks; returns the payload AEAD."""
    header = frame.header
    _check_recipient(header, expected_recipient)
    own_id = getattr(recipient_x25519_private, "key_id", None)
    if own_id is not None and own_id != header.recipient_key_id:
        raise WrongRecipientError(
            f"file is sealed to key {header.recipient_key_id}, not to this key {own_id}", batch_id=header.batch_id
        )
    if check_expiry:
        now = int(time.time()) if now is None else now
        if now > header.expires:
            raise ExpiredError(
                f"file expired at {_iso(header.expires)} (now {_iso(now)})", batch_id=header.batch_id
            )
    header_hash = hashlib.sha256(frame.header_bytes).digest()
    try:
        data_key = SUITE.decrypt(frame.wrapped, _x25519_private(recipient_x25519_private),
                                 info=WRAP_LABEL + header_hash)
    except (InvalidTag, ValueError):
        raise TamperedError(
            "wrapped key failed authentication (header or wrapped key tampered, or sealed to another key)",
            batch_id=header.batch_id,
        ) from None
    if len(data_key) != 32:
        raise FormatError("wrapped data key is not 32 bytes", batch_id=header.batch_id)
    payload_key, commitment = _derive(data_key, header_hash)
    if not hmac.compare_digest(commitment, frame.commitment):
        raise TamperedError("key commitment does not match (tampered)", batch_id=header.batch_id)
    return AESGCM(payload_key)


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _decrypt_chunks(frame: _Frame, aead: AESGCM, sink: Callable[[memoryview], None]) -> None:
    """Decrypt every chunk in order, handing each plaintext to `sink` (a reused buffer)."""
    cs, total = frame.header.chunk_size, frame.payload_len
    n = chunk_count(total, cs)
    buf = memoryview(bytearray(min(cs, total)))
    at = frame.stream_start
    for i in range(n):
        size = cs if i < n - 1 else total - cs * (n - 1)
        try:
            aead.decrypt_into(_nonce(i, i == n - 1), frame.data[at : at + size + TAG_LEN], None, buf[:size])
        except InvalidTag:
            raise TamperedError(
                f"chunk {i} failed authentication (tampered, reordered or truncated)",
                batch_id=frame.header.batch_id,
            ) from None
        sink(buf[:size])
        at += size + TAG_LEN


class _Unpadder:
    """Strips the length prefix and checks the padding is zeros, streaming."""

    def __init__(self, payload_len: int, write: Callable[[memoryview], object], batch_id: str):
        self._payload_len = payload_len
        self._write = write
        self._batch_id = batch_id
        self._pos = 0
        self._data_end: int | None = None

    def __call__(self, chunk: memoryview) -> None:
        start, end = self._pos, self._pos + len(chunk)
        self._pos = end
        if self._data_end is None:  # chunk 0 holds the whole prefix (chunk_size >= 16)
            (data_len,) = _u64.unpack(chunk[:LENGTH_PREFIX_LEN])
            if data_len > self._payload_len - LENGTH_PREFIX_LEN:  # the frame's length was cut
                raise TamperedError(
                    "payload is shorter than its authenticated length (truncated)", batch_id=self._batch_id
                )
            self._data_end = LENGTH_PREFIX_LEN + data_len
            chunk, start = chunk[LENGTH_PREFIX_LEN:], LENGTH_PREFIX_LEN
        keep = max(0, min(end, self._data_end) - start)
        if keep:
            self._write(chunk[:keep])
        padding = chunk[keep:]
        if len(padding) and bytes(padding).count(0) != len(padding):
            raise FormatError("padding is not zeros", batch_id=self._batch_id)


def open_bytes(path_or_bytes, recipient_x25519_private, sender_ed25519_public, expected_recipient: str,
               now: int | None = None, check_expiry: bool = True) -> tuple[Header, bytes]:
    """Verify and decrypt a sealed file: signature, recipient, expiry, wrapped key, key
    commitment, then every chunk. Returns (header, payload)."""
    with _source(path_or_bytes) as data:
        frame = _parse(data)
        _check_signature(frame, sender_ed25519_public)
        aead = _unlock(frame, recipient_x25519_private, expected_recipient, now, check_expiry)
        out = io.BytesIO()
        _decrypt_chunks(frame, aead, _Unpadder(frame.payload_len, out.write, frame.header.batch_id))
        return frame.header, out.getvalue()


def open_file(src: Path, dst: Path, recipient_x25519_private, sender_ed25519_public, expected_recipient: str,
              now: int | None = None, check_expiry: bool = True) -> Header:
    """`open_bytes` streamed file to file; `dst` appears only when every check passed."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    with _source(src) as data:
        frame = _parse(data)
        _check_signature(frame, sender_ed25519_public)
        aead = _unlock(frame, recipient_x25519_private, expected_recipient, now, check_expiry)
        try:
            with open(tmp, "wb") as fout:
                _decrypt_chunks(frame, aead, _Unpadder(frame.payload_len, fout.write, frame.header.batch_id))
            os.replace(tmp, dst)
        except FileNotFoundError:
            raise BadInputError(f"output directory '{dst.parent}' does not exist") from None
        finally:
            tmp.unlink(missing_ok=True)
        return frame.header


# --- payload encoding (part of format v1: payloads are Parquet of the kind's schema) -------

def table_to_parquet(table, schema) -> bytes:
    """A pyarrow table as Parquet bytes, cast to `schema` (the payload of batch/alerts files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    # No column statistics: nothing reads them (the payload is read whole), and they cost ~20 %
    # of the writing time.
    pq.write_table(table.select(schema.names).cast(schema), sink, compression="zstd", write_statistics=False)
    return sink.getvalue().to_pybytes()


def parquet_to_table(payload: bytes, schema):
    """Parse a decrypted payload as Parquet with exactly `schema`'s columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(payload))
        return table.select(schema.names).cast(schema)
    except (pa.ArrowException, KeyError, ValueError) as exc:
        raise FormatError(f"payload is not Parquet with the expected columns ({type(exc).__name__})") from None
