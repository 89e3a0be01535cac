"""Issue 14, finding 4: a small sealed batch that decodes to hundreds of MiB (a decompression
bomb) is refused before it is decoded, with a reason, and the other banks' batches still run."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aml.core.crypto.container import ENCLAVE, Header, seal_bytes
from aml.core.crypto.keys import BankKeyPair
from aml.enclave.detect.config import DetectionConfig
from aml.enclave.payload import PayloadLimits, _PageWalk, read_batch_payload
from aml.core.errors import ConfigError, FormatError, TooLargeError
from aml.core.schema import TRANSACTION_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attacks.payloads import bomb_payloads, lie_about_sizes  # noqa: E402

T0 = 1_767_225_600_000_000  # 2026-01-01, in microseconds


def batch(n: int, **columns) -> pa.Table:
    cols = {"txn_id": pa.array([f"t{i}" for i in range(n)]),
            "timestamp": pa.array(np.full(n, T0), pa.timestamp("us", tz="UTC")),
            "src_bank": pa.array(["B01"] * n), "src_account": pa.array([f"a{i % 50}" for i in range(n)]),
            "dst_bank": pa.array(["B02"] * n), "dst_account": pa.array([f"b{i % 70}" for i in range(n)]),
            "amount": pa.array(np.arange(1, n + 1, dtype=np.float64)), "currency": pa.array(["USD"] * n),
            "amount_received": pa.nulls(n, pa.float64()), "receiving_currency": pa.nulls(n, pa.string()),
            "payment_format": pa.array(["Wire"] * n), "label": pa.nulls(n, pa.int8())}
    cols.update(columns)
    return pa.table(cols)


def parquet(table: pa.Table, **kw) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", store_schema=False, **kw)
    return sink.getvalue()


def dictionary_bomb(rows: int = 8192, width: int = 64 << 10) -> bytes:
    """`rows` rows whose src_account is one `width`-byte value, referenced through the
    dictionary: rows * width bytes once decoded (512 MiB by default) in a few dozen KiB."""
    one = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array(["A" * width]))
    return parquet(batch(rows, src_account=one))


def test_an_honest_batch_reads_as_before_and_the_page_walk_matches_the_footer():
    t = batch(5000)
    data = parquet(t, data_page_size=4096)  # many pages per column
    got = read_batch_payload(data, TRANSACTION_SCHEMA, 5000)
    assert got.schema == TRANSACTION_SCHEMA
    assert got.to_pylist() == t.cast(TRANSACTION_SCHEMA).to_pylist()
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(g).column(c)
            walk = _PageWalk(data, 10_000, None)
            walk.walk(chunk)
            # what the page headers say is what the footer declares, less the headers themselves
            assert 0 < chunk.total_uncompressed_size - walk.uncompressed < 64 * walk.pages


def test_a_512_MiB_dictionary_bomb_is_refused_before_it_is_expanded():
    data = dictionary_bomb()
    assert len(data) < 64 << 10
    with pytest.raises(TooLargeError, match="strings expand to more than the budget") as info:
        read_batch_payload(data, TRANSACTION_SCHEMA, 8192)
    assert info.value.code == "too_large"


def test_the_bomb_never_allocates_its_expansion():
    # In a fresh process, so the peak resident size is this check's alone. Before the fix the
    # same payload went through pq.read_table and .cast: 512 MiB decoded, about 900 MiB peak.
    code = textwrap.dedent(f"""
        import resource, sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
        from test_payload_limits import dictionary_bomb
        from aml.enclave.payload import read_batch_payload
        from aml.core.schema import TRANSACTION_SCHEMA
        data = dictionary_bomb()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            read_batch_payload(data, TRANSACTION_SCHEMA, 8192)
            print("accepted")
        except Exception as exc:
            print(exc.code, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    code_, grown_mib = out.stdout.split()
    assert code_ == "too_large"
    assert int(grown_mib) < 64  # not the 512 MiB it would expand to


def test_a_lying_footer_is_caught_by_the_page_headers():
    plain = parquet(batch(2048, src_account=pa.array(["C" * (32 << 10)] * 2048)), use_dictionary=False)
    with pytest.raises(TooLargeError, match="footer declares"):
        read_batch_payload(plain, TRANSACTION_SCHEMA, 2048)
    lying = lie_about_sizes(plain)
    meta = pq.ParquetFile(io.BytesIO(lying)).metadata
    assert meta.row_group(0).column(3).total_uncompressed_size == 1000  # the footer now says small
    assert pq.read_table(io.BytesIO(lying)).num_rows == 2048  # and Arrow would still decode it all
    with pytest.raises(TooLargeError, match="pages hold more than"):
        read_batch_payload(lying, TRANSACTION_SCHEMA, 2048)


def test_unbounded_encodings_nested_columns_and_row_count_lies_are_refused():
    t = batch(300)
    delta = parquet(t, use_dictionary=False, column_encoding={"src_account": "DELTA_BYTE_ARRAY"})
    with pytest.raises(FormatError, match="DELTA_BYTE_ARRAY"):
        read_batch_payload(delta, TRANSACTION_SCHEMA, 300)
    nested = parquet(batch(300, src_account=pa.array([["x"] * 3] * 300)))
    with pytest.raises(FormatError, match="nested"):
        read_batch_payload(nested, TRANSACTION_SCHEMA, 300)
    with pytest.raises(FormatError, match="row count"):
        read_batch_payload(parquet(t), TRANSACTION_SCHEMA, 301)
    with pytest.raises(TooLargeError, match="more than 100 rows"):
        read_batch_payload(parquet(t), TRANSACTION_SCHEMA, 300, PayloadLimits(max_rows=100))
    with pytest.raises(TooLargeError, match="value over 3 bytes"):
        read_batch_payload(parquet(t), TRANSACTION_SCHEMA, 300, PayloadLimits(max_string_bytes=3))


def test_columns_outside_the_schema_are_never_decoded():
    t = batch(100)
    junk = pa.DictionaryArray.from_arrays(pa.array(np.zeros(100, np.int32)), pa.array(["D" * (1 << 20)]))
    got = read_batch_payload(parquet(t.append_column("junk", junk)), TRANSACTION_SCHEMA, 100)
    assert got.column_names == TRANSACTION_SCHEMA.names and got.num_rows == 100


def test_limits_come_from_the_config():
    assert PayloadLimits.from_config() == PayloadLimits()  # the shipped config states the defaults
    source = DetectionConfig.load().source.decode()
    custom = DetectionConfig.from_bytes(source.replace("max_row_bytes = 16_384", "max_row_bytes = 2_048").encode())
    assert PayloadLimits.from_config(custom).max_row_bytes == 2048
    bad = DetectionConfig.from_bytes((source + "\n").replace("[limits]", "[limits]\nmax_bombs = 1").encode())
    with pytest.raises(ConfigError, match="unknown"):
        PayloadLimits.from_config(bad)


def test_every_bomb_of_the_attack_suite_is_refused_in_time():
    base = batch(300).cast(TRANSACTION_SCHEMA)
    for p in bomb_payloads(base):
        start = time.perf_counter()
        try:
            read_batch_payload(p.data, TRANSACTION_SCHEMA, p.row_count)
            got = "accepted"
        except (TooLargeError, FormatError) as exc:
            got = exc.code
        assert got in p.expected, p.name
        assert time.perf_counter() - start < 2.0, p.name


def test_a_sealed_bomb_is_refused_by_open_batch_as_too_large():
    from aml.enclave.identity import open_batch

    bank, enclave = BankKeyPair.generate("B01"), BankKeyPair.generate()
    payload = dictionary_bomb()
    now = int(time.time())
    header = Header(kind="batch", sender="B01", recipient=ENCLAVE, batch_id="bomb1", sequence=1, created=now,
                    expires=now + 600, schema_version=1, row_count=8192, recipient_key_id=enclave.key_id,
                    sender_key_id=bank.key_id)
    sealed = seal_bytes(payload, header, enclave.public, bank)
    assert len(sealed) < 64 << 10  # a few dozen KiB standing for 512 MiB
    with pytest.raises(TooLargeError) as info:
        open_batch(sealed, enclave, bank.public)
    assert info.value.batch_id == "bomb1"
