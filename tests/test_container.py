"""Format v1: round trips and every tampering class. Offsets come from docs/format.md, not
from the implementation, so these tests also check the spec."""

import hashlib
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml.core.crypto.container import (
    Header, check_sequence, open_bytes, open_file, read_header, seal_bytes, seal_file, verify_sender,
)
from aml.core.crypto.keys import BankKeyPair
from aml.core.crypto.padding import padme
from aml.core.errors import (
    AmlError, BadInputError, ExpiredError, FormatError, ReplayError, SignatureError, TamperedError,
    TrailingDataError, TruncatedError, VerificationError, WrongRecipientError,
)

NOW = 1_750_000_000
BANK = BankKeyPair.generate("B01")
OTHER_BANK = BankKeyPair.generate("B02")
ENCLAVE = BankKeyPair.generate()


def header(**overrides) -> Header:
    fields = dict(
        kind="batch", sender="B01", recipient="enclave", batch_id="0123abcd", sequence=5, created=NOW,
        expires=NOW + 3600, schema_version=1, row_count=3, recipient_key_id=ENCLAVE.key_id,
        sender_key_id=BANK.key_id, chunk_size=64,
    )
    fields.update(overrides)
    return Header(**fields)


def seal(payload: bytes = bytes(range(256)) * 2, pad=False, **overrides) -> bytes:
    return seal_bytes(payload, header(**overrides), ENCLAVE.public, BANK, pad=pad)


def unseal(data: bytes, **kw):
    kw.setdefault("now", NOW)
    return open_bytes(data, ENCLAVE, BANK.public, "enclave", **kw)


# --- the layout from docs/format.md ------------------------------------------------------

def layout(data: bytes) -> dict:
    (header_len,) = struct.unpack(">I", data[8:12])
    at = 12 + header_len
    (wrapped_len,) = struct.unpack(">H", data[at : at + 2])
    commitment = at + 2 + wrapped_len
    (payload_len,) = struct.unpack(">Q", data[commitment + 32 : commitment + 40])
    chunk_size = read_header(data).chunk_size
    n = max(1, -(-payload_len // chunk_size))
    chunks, pos = [], commitment + 40
    for i in range(n):
        size = (chunk_size if i < n - 1 else payload_len - chunk_size * (n - 1)) + 16
        chunks.append((pos, pos + size))
        pos += size
    return dict(header=(12, at), body_start=at, wrapped=(at + 2, commitment), commitment=(commitment, commitment + 32),
                payload_len_at=commitment + 32, chunks=chunks, signature=(pos, pos + 64))


def resign(data: bytes, signer=BANK) -> bytes:
    """Recompute the signature the way the spec says, as a sender (or a thief of its key) would."""
    lay = layout(data)
    body = hashlib.sha256(data[lay["body_start"] : lay["signature"][0]]).digest()
    start, end = lay["header"]
    sig = signer.ed25519.sign(b"aml-seal/1 signature\x00" + data[start:end] + body)
    return data[: lay["signature"][0]] + sig


def flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


# --- round trips ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 7, 8, 47, 48, 56, 63, 64, 65, 1000])
@pytest.mark.parametrize("pad", [False, True])
def test_round_trip_bytes(size, pad):
    payload = os.urandom(size)
    sealed = seal(payload, pad=pad)
    got_header, got = unseal(sealed)
    assert got == payload
    assert got_header == header()
    assert verify_sender(sealed, BANK.public, "enclave") == header()
    assert read_header(sealed) == header()


def test_many_chunks_file_round_trip(tmp_path):
    payload = os.urandom(50_000)
    src, dst, back = tmp_path / "in.bin", tmp_path / "out.amlb", tmp_path / "back.bin"
    src.write_bytes(payload)
    seal_file(src, dst, header(chunk_size=100), ENCLAVE.public, BANK)
    assert len(layout(dst.read_bytes())["chunks"]) > 500
    open_file(dst, back, ENCLAVE, BANK.public, "enclave", now=NOW)
    assert back.read_bytes() == payload
    assert open_bytes(dst, ENCLAVE, BANK.public, "enclave", now=NOW)[1] == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "in.bin", "out.amlb"]


def test_seal_is_randomised():
    assert seal() != seal()  # fresh data key and HPKE ephemeral every time


def test_padding_hides_length_within_a_bucket():
    one_chunk = 1 << 20
    overhead = len(seal(b"", chunk_size=one_chunk)) - 8  # everything but the payload after its prefix
    sizes = {len(seal(os.urandom(n), pad=True, chunk_size=one_chunk)) for n in (1000, 1005, 1016)}
    assert sizes == {overhead + padme(8 + 1016)} == {overhead + 1024}
    assert len(seal(os.urandom(1000), chunk_size=one_chunk)) == overhead + 8 + 1000


@settings(max_examples=100)
@given(st.integers(min_value=0, max_value=1 << 40))
def test_padme_bounds(n):
    p = padme(n)
    assert n <= p <= n + n // 8 + 1 and padme(p) == p


# --- every tampering class ---------------------------------------------------------------

def test_flipped_header_bit():
    sealed = seal()
    at = sealed.index(b"0123abcd")  # a byte inside the batch_id: still valid JSON
    with pytest.raises(SignatureError, match="signature"):
        unseal(flip(sealed, at))
    with pytest.raises(TamperedError, match="wrapped key"):  # the header is bound into the key wrap
        unseal(resign(flip(sealed, at)))


def test_flipped_wrapped_key_bit():
    sealed = seal()
    at = layout(sealed)["wrapped"][0] + 40
    with pytest.raises(SignatureError):
        unseal(flip(sealed, at))
    with pytest.raises(TamperedError, match="wrapped key"):
        unseal(resign(flip(sealed, at)))


def test_flipped_commitment_bit():
    sealed = seal()
    at = layout(sealed)["commitment"][0]
    with pytest.raises(TamperedError, match="key commitment"):
        unseal(resign(flip(sealed, at)))


@pytest.mark.parametrize("index", [0, 3, -1])
def test_flipped_chunk_bit(index):
    sealed = seal()
    chunks = layout(sealed)["chunks"]
    assert len(chunks) >= 5
    start, end = chunks[index]
    number = index % len(chunks)
    with pytest.raises(SignatureError):
        unseal(flip(sealed, start + 5))
    with pytest.raises(TamperedError, match=f"chunk {number} failed authentication"):
        unseal(resign(flip(sealed, start + 5)))
    with pytest.raises(TamperedError, match=f"chunk {number}"):
        unseal(resign(flip(sealed, end - 1)))  # in the tag


def test_flipped_signature_bit():
    sealed = seal()
    with pytest.raises(SignatureError, match="signature does not verify"):
        unseal(flip(sealed, len(sealed) - 10))
    with pytest.raises(SignatureError):
        verify_sender(flip(sealed, len(sealed) - 10), BANK.public)


@pytest.mark.parametrize("cut", [1, 64, 65, 200])
def test_truncated_file(cut):
    sealed = seal()
    with pytest.raises(TruncatedError, match="truncated"):
        unseal(sealed[:-cut])
    with pytest.raises(TruncatedError):
        verify_sender(sealed[:-cut], BANK.public)


def test_truncated_inside_the_header():
    sealed = seal()
    for cut in (10, 30, layout(sealed)["wrapped"][0] + 3):
        with pytest.raises(TruncatedError):
            read_header(sealed[:cut])


def _drop_last_chunk(sealed: bytes) -> bytes:
    """Cut the last chunk cleanly, fix the length field and re-sign: a careful truncation."""
    lay = layout(sealed)
    start, _ = lay["chunks"][-1]
    chunk_size = read_header(sealed).chunk_size
    cut = bytearray(sealed[:start])
    cut[lay["payload_len_at"] : lay["payload_len_at"] + 8] = struct.pack(">Q", chunk_size * (len(lay["chunks"]) - 1))
    return resign(bytes(cut) + bytes(64))


def test_dropping_last_chunk_is_caught_by_the_last_chunk_flag():
    """STREAM: the last chunk was cut cleanly (it held only padding); chunk n-2 now stands last,
    but it was not sealed with the last-chunk flag."""
    sealed = seal(os.urandom(1000), pad=True, chunk_size=16)  # 8 + 1000 -> padded to 1024
    n = len(layout(sealed)["chunks"])
    with pytest.raises(TamperedError, match=f"chunk {n - 2} failed authentication"):
        unseal(_drop_last_chunk(sealed))


def test_dropping_last_chunk_of_data_is_caught():
    with pytest.raises(TamperedError, match="truncated"):
        unseal(_drop_last_chunk(seal()))


def test_reordered_chunks():
    sealed = seal()
    (a0, a1), (b0, b1) = layout(sealed)["chunks"][1:3]
    swapped = sealed[:a0] + sealed[b0:b1] + sealed[a0:a1] + sealed[b1:]
    with pytest.raises(SignatureError):
        unseal(swapped)
    with pytest.raises(TamperedError, match="chunk 1 failed authentication"):
        unseal(resign(swapped))


def test_appended_bytes():
    with pytest.raises(TrailingDataError, match="3 unexpected bytes"):
        unseal(seal() + b"abc")
    with pytest.raises(TrailingDataError):
        verify_sender(seal() + b"\x00", BANK.public)


def test_header_swapped_between_files():
    a, b = seal(batch_id="aaaa"), seal(batch_id="bbbb", sequence=6)
    la, lb = layout(a), layout(b)
    mixed = a[: la["header"][1]] + b[lb["header"][1] :]
    with pytest.raises(SignatureError):
        unseal(mixed)
    with pytest.raises(TamperedError):
        unseal(resign(mixed))


def test_wrong_recipient_name():
    with pytest.raises(WrongRecipientError, match="sealed for 'enclave', not for 'B02'"):
        open_bytes(seal(), ENCLAVE, BANK.public, "B02", now=NOW)
    with pytest.raises(WrongRecipientError):
        verify_sender(seal(), BANK.public, expected_recipient="B02")


def test_wrong_recipient_key():
    other = BankKeyPair.generate()
    with pytest.raises(WrongRecipientError, match="sealed to key"):
        open_bytes(seal(), other, BANK.public, "enclave", now=NOW)
    with pytest.raises(TamperedError, match="another key"):  # a bare key cannot compare key ids
        open_bytes(seal(), other.x25519, BANK.public, "enclave", now=NOW)


def test_expired():
    sealed = seal()
    assert unseal(sealed, now=NOW + 3600)[1]
    with pytest.raises(ExpiredError, match="expired"):
        unseal(sealed, now=NOW + 3601)
    assert unseal(sealed, now=NOW + 10**6, check_expiry=False)[1]


def test_sequence_must_increase():
    check_sequence(header(sequence=5), None)
    check_sequence(header(sequence=5), 4)
    with pytest.raises(ReplayError, match="sequence 4 is not above the last accepted 5"):
        check_sequence(header(sequence=4), 5)
    with pytest.raises(ReplayError):
        check_sequence(header(sequence=5), 5)


def test_forged_and_other_bank_signatures():
    forged = seal_bytes(b"data", header(sender_key_id=OTHER_BANK.key_id), ENCLAVE.public, OTHER_BANK)
    with pytest.raises(SignatureError, match="'B01' claimed"):  # B02 pretending to be B01
        open_bytes(forged, ENCLAVE, BANK.public, "enclave", now=NOW)
    with pytest.raises(SignatureError):
        verify_sender(resign(seal(), OTHER_BANK), BANK.public)


def test_bad_magic_and_version():
    sealed = seal()
    with pytest.raises(FormatError, match="bad magic"):
        read_header(b"PK\x03\x04" + sealed[4:])
    with pytest.raises(FormatError, match="version 2"):
        read_header(sealed[:7] + b"\x02" + sealed[8:])
    with pytest.raises(FormatError):
        read_header(b"")


def test_header_checks_on_construction_and_keys():
    with pytest.raises(BadInputError, match="kind"):
        header(kind="other")
    with pytest.raises(BadInputError, match="chunk_size"):
        header(chunk_size=1)
    with pytest.raises(BadInputError, match="sender_key_id"):
        seal_bytes(b"", header(sender_key_id="0" * 16), ENCLAVE.public, BANK)
    with pytest.raises(BadInputError, match="recipient_key_id"):
        seal_bytes(b"", header(), OTHER_BANK.public, BANK)


def test_errors_name_no_payload():
    secret = b"ACCOUNT-4711-SECRET"
    sealed = seal(secret * 10)
    for bad in (flip(sealed, layout(sealed)["chunks"][2][0]), sealed + b"x", sealed[:-1]):
        try:
            unseal(resign(bad) if len(bad) == len(sealed) else bad)
        except VerificationError as exc:
            assert "4711" not in str(exc)
        else:
            pytest.fail("tampered file opened")


# --- fuzzing: only aml.core.errors, never a successful open of a changed file ------------------

VALID = seal(bytes(range(200)))


VALID_HEADER_END = layout(VALID)["header"][1]


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=600).map(lambda b: b"AMLSEAL\x01" + b),  # past the magic
    st.binary(max_size=600).map(lambda b: VALID[:VALID_HEADER_END] + b),  # a valid header, random rest
))
def test_random_bytes_raise_only_aml_errors(data):
    for call in (lambda: read_header(data), lambda: verify_sender(data, BANK.public), lambda: unseal(data)):
        with pytest.raises(AmlError):
            call()


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(VALID) - 1), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, len(VALID) - 1), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, len(VALID)), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, len(VALID) - 1), st.just(0)),
)


def mutate(data: bytes, op) -> bytes:
    kind, at, value = op
    if not data:
        return bytes([value])
    at = min(at, len(data) - 1)  # earlier ops may have shortened the file
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ value]) + data[at + 1 :]
    if kind == "cut":
        return data[:at]
    if kind == "insert":
        return data[:at] + bytes([value]) + data[at:]
    return data[:at] + data[at + 1 :]


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=3), st.booleans())
def test_mutated_files_never_open(ops, resigned):
    data = VALID
    for op in ops:
        data = mutate(data, op)
    if resigned:  # what a sender (or a thief of its key) could do: still rejected
        try:
            data = resign(data)
        except Exception:
            pass  # too broken to re-sign: fine, the untouched mutation is tested
    if data == VALID:
        return
    try:
        read_header(data)
        verify_sender(data, BANK.public)
    except AmlError:
        pass
    with pytest.raises(AmlError):
        unseal(data)


def _with_header_bytes(sealed: bytes, new_header: bytes) -> bytes:
    start, end = layout(sealed)["header"]
    return sealed[:8] + struct.pack(">I", len(new_header)) + new_header + sealed[end:]


@pytest.mark.parametrize("rewrite", [
    lambda raw: raw.replace(b",", b", "),  # whitespace
    lambda raw: raw.replace(b'"batch_id":"0123abcd"', b'"batch_id":"0123abcd","batch_id":"ffff"'),  # duplicate key
])
def test_non_canonical_header_is_refused(rewrite):
    """Two parsers must never disagree on a header: only the canonical encoding is accepted."""
    sealed = seal()
    start, end = layout(sealed)["header"]
    changed = _with_header_bytes(sealed, rewrite(sealed[start:end]))
    with pytest.raises(FormatError, match="canonical"):
        read_header(changed)


def test_provenance_must_be_plain_json():
    with pytest.raises(BadInputError, match="provenance"):
        header(provenance={"x": b"bytes"})
    with pytest.raises(BadInputError, match="provenance"):
        header(provenance={"x": float("nan")})
    assert header(provenance={"inputs": [{"bank": "B01", "sha256": "00"}], "simulated": True}).provenance["simulated"]


def test_seal_file_from_memory(tmp_path):
    payload = os.urandom(3000)
    dst = seal_file(payload, tmp_path / "m.amlb", header(), ENCLAVE.public, BANK)
    assert unseal(dst)[1] == payload
    assert [p.name for p in tmp_path.iterdir()] == ["m.amlb"]


def test_seal_file_missing_source(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        seal_file(tmp_path / "none", tmp_path / "m.amlb", header(), ENCLAVE.public, BANK)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("where", ["chunk", "commitment", "tail"])
def test_tampered_files_on_disk_raise_cleanly(tmp_path, where):
    """Files are memory-mapped: failures deep in decryption must still unmap and raise the
    verification error, not a BufferError."""
    sealed = seal()
    lay = layout(sealed)
    at = {"chunk": lay["chunks"][2][0], "commitment": lay["commitment"][0]}.get(where)
    data = resign(flip(sealed, at)) if at is not None else sealed + b"x"
    path = tmp_path / "t.amlb"
    path.write_bytes(data)
    with pytest.raises(VerificationError):
        open_bytes(path, ENCLAVE, BANK.public, "enclave", now=NOW)
    with pytest.raises(VerificationError):
        open_file(path, tmp_path / "out.bin", ENCLAVE, BANK.public, "enclave", now=NOW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.amlb"]
