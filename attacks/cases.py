"""The catalogue of attacks on sealed batches: pure generators, no I/O, no Prefect.

Each generator takes a genuine sealed file (bytes) and returns `Case`s: a mutated file plus the
error codes a correct verifier may answer with. Offsets come from the format v1 layout
(docs/format.md), computed here independently of `aml.core.crypto.container`, so the suite also
checks the implementation against the spec.

Two attackers are modelled:
- an outsider or the operator, who can change any byte but holds no key: every change must
  fail the sender's signature, or the framing checks that run before it;
- a key holder who re-signs what it changed (a bank, or a thief of a bank's signing key): the
  inner layers (HPKE-wrapped key bound to the header, key commitment, STREAM chunk nonces)
  must still catch it (`tampered`).
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from dataclasses import dataclass, field

from aml.core.crypto.container import SIGNATURE_LABEL

MAGIC_LEN = 7  # b"AMLSEAL"
FIXED_LEN = MAGIC_LEN + 1 + 4  # magic, version byte, u32 header_len
WRAPPED_LEN = 80
COMMITMENT_LEN = 32
TAG_LEN = 16
SIGNATURE_LEN = 64
MIN_CHUNK, MAX_CHUNK = 16, 64 << 20

# What a correct verifier may answer for a change to each header field, given that framing
# (format, truncated, trailing_data) is checked before the signature, and the signature before
# everything the flow looks up from the header (membership, sequence, expiry).
SIGNED_FIELD = frozenset({"bad_signature"})


@dataclass(frozen=True)
class Case:
    """One attack: the mutated sealed file and the codes that count as a correct rejection."""

    cls: str  # attack class, e.g. "bitflip_header"
    name: str  # unique within the class
    data: bytes
    expected: frozenset[str]  # acceptable error codes
    note: str = ""
    meta: dict = field(default_factory=dict, compare=False)


# --- the layout of format v1 -------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    header: tuple[int, int]  # header JSON bytes [start, end)
    header_len_at: int
    wrapped_len_at: int
    wrapped: tuple[int, int]
    commitment: tuple[int, int]
    payload_len_at: int
    payload_len: int
    chunk_size: int
    chunks: tuple[tuple[int, int], ...]  # each chunk's ciphertext + tag
    signature: tuple[int, int]

    @property
    def body_start(self) -> int:
        return self.wrapped_len_at


def stream_len(payload_len: int, chunk_size: int) -> int:
    n = max(1, -(-payload_len // chunk_size))
    return payload_len + n * TAG_LEN


def layout(data: bytes) -> Layout:
    """Byte offsets of every part of a well-formed sealed file."""
    (header_len,) = struct.unpack(">I", data[MAGIC_LEN + 1 : FIXED_LEN])
    start, end = FIXED_LEN, FIXED_LEN + header_len
    header = json.loads(data[start:end])
    (wrapped_len,) = struct.unpack(">H", data[end : end + 2])
    wrapped = (end + 2, end + 2 + wrapped_len)
    commitment = (wrapped[1], wrapped[1] + COMMITMENT_LEN)
    (payload_len,) = struct.unpack(">Q", data[commitment[1] : commitment[1] + 8])
    chunk_size = header["chunk_size"]
    n = max(1, -(-payload_len // chunk_size))
    chunks, pos = [], commitment[1] + 8
    for i in range(n):
        size = (chunk_size if i < n - 1 else payload_len - chunk_size * (n - 1)) + TAG_LEN
        chunks.append((pos, pos + size))
        pos += size
    return Layout((start, end), MAGIC_LEN + 1, end, wrapped, commitment, commitment[1], payload_len,
                  chunk_size, tuple(chunks), (pos, pos + SIGNATURE_LEN))


def header_doc(data: bytes) -> dict:
    lay = layout(data)
    return json.loads(data[lay.header[0] : lay.header[1]])


# --- primitive mutations -----------------------------------------------------------------

def flip_bit(data: bytes, at: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[at] ^= 1 << bit
    return bytes(out)


def resign(data: bytes, signer) -> bytes:
    """Recompute the signature as the spec defines it (a key holder re-signing its change).
    `signer` is a key pair with an `ed25519` private key. The file must still frame correctly."""
    lay = layout(data)
    body = hashlib.sha256(data[lay.body_start : lay.signature[0]]).digest()
    header = data[lay.header[0] : lay.header[1]]
    signature = signer.ed25519.sign(SIGNATURE_LABEL + header + body)
    return data[: lay.signature[0]] + signature + data[lay.signature[1] :]


def replace_header(data: bytes, new_header: bytes) -> bytes:
    """The same body under another header bytes (header_len fixed up)."""
    lay = layout(data)
    return (data[:MAGIC_LEN + 1] + struct.pack(">I", len(new_header)) + new_header
            + data[lay.header[1] :])


# --- bit flips in the header -------------------------------------------------------------

_ID_CHARS = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_DIGITS = set(b"0123456789")


def _value_span(header: bytes, name: str) -> tuple[int, int]:
    """[start, end) of the JSON value of `name` in canonical header bytes (strings: inside the
    quotes; numbers: the digits). Canonical JSON has no whitespace, and field names are unique."""
    key = b'"' + name.encode() + b'":'
    at = header.index(key) + len(key)
    if header[at : at + 1] == b'"':
        return at + 1, header.index(b'"', at + 1)
    end = at
    while end < len(header) and header[end] in _DIGITS:
        end += 1
    return at, end


def _one_bit_variant(header: bytes, span: tuple[int, int], allowed: set[int]) -> tuple[int, int] | None:
    """The first (position, bit) in span whose flip keeps the byte in `allowed` and the JSON
    parseable (no leading zero in numbers)."""
    for pos in range(span[1] - 1, span[0] - 1, -1):  # last characters first: smallest change
        for bit in range(7):
            new = header[pos] ^ (1 << bit)
            if new not in allowed:
                continue
            candidate = bytearray(header)
            candidate[pos] = new
            try:
                json.loads(bytes(candidate))
            except ValueError:
                continue
            return pos, bit
    return None


def header_field_flips(sealed: bytes, members: set[str]) -> list[Case]:
    """For every header field, one bit flip that keeps the header well-formed JSON.

    Expected codes follow from the spec, not from the implementation: format for values the
    spec forbids (version, kind, chunk size out of range); truncated / trailing_data when the
    chunk size changes the stream length; otherwise the signature (bad_signature), or
    not_a_member when the sender becomes a name outside the membership.
    """
    lay = layout(sealed)
    header = sealed[lay.header[0] : lay.header[1]]
    doc = json.loads(header)
    cases = []
    for name, value in doc.items():
        if isinstance(value, dict):  # provenance: flip a byte of "{}" into something else
            continue
        span = _value_span(header, name)
        allowed = _DIGITS if isinstance(value, int) else _ID_CHARS
        found = _one_bit_variant(header, span, allowed)
        if found is None:
            continue
        pos, bit = found
        new_header = bytearray(header)
        new_header[pos] ^= 1 << bit
        new_value = json.loads(bytes(new_header))[name]
        expected = _expected_for_field(name, new_value, doc, lay, members)
        mutated = flip_bit(sealed, lay.header[0] + pos, bit)
        cases.append(Case("bitflip_header", f"field:{name}", mutated, expected,
                          note=f"{name}: {value!r} -> {new_value!r}"))
    return cases


def _expected_for_field(name: str, new_value, doc: dict, lay: Layout, members: set[str]) -> frozenset[str]:
    if name in ("format_version", "kind"):
        return frozenset({"format"})
    if name == "chunk_size":
        if not MIN_CHUNK <= new_value <= MAX_CHUNK:
            return frozenset({"format"})
        old = stream_len(lay.payload_len, doc["chunk_size"])
        new = stream_len(lay.payload_len, new_value)
        if new > old:
            return frozenset({"truncated"})
        if new < old:
            return frozenset({"trailing_data"})
        return SIGNED_FIELD
    if name == "sender" and new_value not in members:
        # an unknown sender is refused on the header alone, or its signature fails
        return frozenset({"not_a_member", "bad_signature"})
    return SIGNED_FIELD


def header_random_flips(sealed: bytes, rng: random.Random, n: int) -> list[Case]:
    """Random single-bit flips in the header bytes: the JSON may break (format) or still parse
    into a header whose framing differs (format, truncated, trailing_data) or whose signature
    fails (bad_signature); a sender renamed outside the membership may be refused as such."""
    lay = layout(sealed)
    out = []
    for i in range(n):
        pos = rng.randrange(*lay.header)
        bit = rng.randrange(8)
        out.append(Case("bitflip_header", f"random:{pos}.{bit}", flip_bit(sealed, pos, bit),
                        frozenset({"format", "truncated", "trailing_data", "bad_signature", "not_a_member"})))
    return out


def framing_flips(sealed: bytes) -> list[Case]:
    """Flips in the fixed framing: magic, version, the length fields."""
    lay = layout(sealed)
    out = [
        Case("bitflip_framing", "magic", flip_bit(sealed, 0), frozenset({"format"})),
        Case("bitflip_framing", "version", flip_bit(sealed, MAGIC_LEN), frozenset({"format"})),
        # header_len: the JSON ends elsewhere, or the length leaves the allowed range
        Case("bitflip_framing", "header_len", flip_bit(sealed, lay.header_len_at + 3),
             frozenset({"format", "truncated"})),
        Case("bitflip_framing", "header_len_high", flip_bit(sealed, lay.header_len_at, 7),
             frozenset({"format"})),
        Case("bitflip_framing", "wrapped_len", flip_bit(sealed, lay.wrapped_len_at + 1), frozenset({"format"})),
    ]
    # payload_len: a small change moves the expected end of file
    for bit in (0, 3):
        new_len = lay.payload_len ^ (1 << bit)
        delta = stream_len(new_len, lay.chunk_size) - stream_len(lay.payload_len, lay.chunk_size)
        code = "truncated" if delta > 0 else "trailing_data"
        at = lay.payload_len_at + 7  # lowest byte, big-endian
        out.append(Case("bitflip_framing", f"payload_len.bit{bit}", flip_bit(sealed, at, bit), frozenset({code})))
    out.append(Case("bitflip_framing", "payload_len_high", flip_bit(sealed, lay.payload_len_at, 6),
                    frozenset({"format"})))
    return out


def region_flips(sealed: bytes, rng: random.Random, n: int, signer=None) -> list[Case]:
    """Random flips in the wrapped key, the commitment, each chunk and the signature.

    Without `signer` (outsider): bad_signature. With `signer` (a key holder re-signs): the
    wrapped key and commitment fail as `tampered`, so do chunks; a re-signed signature flip
    is meaningless and skipped."""
    lay = layout(sealed)
    regions = {"wrapped_key": lay.wrapped, "commitment": lay.commitment, "signature": lay.signature}
    for i, chunk in enumerate(lay.chunks):
        regions[f"chunk{i}"] = chunk
    out = []
    for region, (start, end) in regions.items():
        if signer is not None and region == "signature":
            continue
        for _ in range(n):
            pos, bit = rng.randrange(start, end), rng.randrange(8)
            data = flip_bit(sealed, pos, bit)
            if signer is None:
                out.append(Case("bitflip_body", f"{region}@{pos}.{bit}", data, SIGNED_FIELD))
            else:
                out.append(Case("resigned_tamper", f"{region}@{pos}.{bit}", resign(data, signer),
                                frozenset({"tampered"})))
    return out


# --- truncation, extension, reordering, splicing ----------------------------------------

def truncations(sealed: bytes, rng: random.Random, n: int) -> list[Case]:
    """Cut at the part boundaries and at random points. Below the magic it is not a sealed file."""
    lay = layout(sealed)
    cuts = {0, 3, MAGIC_LEN, FIXED_LEN - 1, lay.header[0] + 5, lay.header[1], lay.wrapped[0] + 10,
            lay.commitment[1], lay.chunks[-1][0], lay.chunks[-1][1] - 1, lay.signature[0],
            len(sealed) - 1}
    cuts |= {rng.randrange(0, len(sealed)) for _ in range(n)}
    return [Case("truncation", f"cut@{cut}", sealed[:cut],
                 frozenset({"format"}) if cut < MAGIC_LEN else frozenset({"truncated"}))
            for cut in sorted(cuts)]


def extensions(sealed: bytes, rng: random.Random) -> list[Case]:
    """Bytes appended after the signature: a second signature, zeros, a whole second file."""
    tails = {"one_byte": b"\x00", "zeros_16": bytes(16), "random_64": rng.randbytes(64),
             "another_copy": sealed}
    return [Case("append", name, sealed + tail, frozenset({"trailing_data"})) for name, tail in tails.items()]


def chunk_reorders(sealed: bytes, signer=None) -> list[Case]:
    """Swap chunks, move the last chunk first, drop the last chunk (fixing payload_len so the
    frame still parses). Outsider: bad_signature; key holder re-signing: tampered."""
    lay = layout(sealed)
    if len(lay.chunks) < 3:
        raise ValueError("chunk reordering needs a file with at least three chunks")
    parts = [sealed[a:b] for a, b in lay.chunks]
    head, tail = sealed[: lay.chunks[0][0]], sealed[lay.signature[0] :]
    variants = {
        "swap_0_1": [parts[1], parts[0], *parts[2:]],
        "swap_mid": [parts[0], parts[2], parts[1], *parts[3:]],
        "last_first": [parts[-1], *parts[:-1]] if len(parts[-1]) == len(parts[0]) else None,
        "duplicate_first": [parts[0], parts[0], *parts[2:]],
    }
    out = []
    for name, order in variants.items():
        if order is None:
            continue
        data = head + b"".join(order) + tail
        out.append(_signed_or_resigned("chunk_reorder", name, data, signer))
    # drop the final chunk and shorten payload_len to match: the new last chunk lacks the
    # last-chunk flag in its nonce
    new_len = lay.chunk_size * (len(parts) - 1)
    head_short = head[: lay.payload_len_at] + struct.pack(">Q", new_len)
    data = head_short + b"".join(parts[:-1]) + tail
    out.append(_signed_or_resigned("chunk_reorder", "drop_last", data, signer))
    return out


def _signed_or_resigned(cls: str, name: str, data: bytes, signer) -> Case:
    if signer is None:
        return Case(cls, name, data, SIGNED_FIELD)
    return Case(cls, f"{name}+resigned", resign(data, signer), frozenset({"tampered"}))


def header_swaps(a: bytes, b: bytes, signer=None) -> list[Case]:
    """Header of file `a` over the body of file `b` (both from the same sender). The wrapped
    key is bound to the header's hash, so even re-signed it fails (tampered)."""
    la = layout(a)
    swapped = replace_header(b, a[la.header[0] : la.header[1]])
    out = [Case("header_swap", "a_header_b_body", swapped, SIGNED_FIELD)]
    if signer is not None:
        out.append(Case("header_swap", "a_header_b_body+resigned", resign(swapped, signer),
                        frozenset({"tampered"})))
    return out


